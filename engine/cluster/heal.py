"""Heal: every live block back to R copies, on the nodes placement wants, and no more.

Phases:
  short  the live ids whose placement targets (the first R up nodes in rendezvous order) lack a
         copy: under-replicated, or misplaced because a node came back
  copy   in batches of a frame, each read from a holder (engine.cluster.reads, with its failover)
         and PUT to the targets that lack it, two batches in flight (one read while the other is
         written), then one SYNC of the nodes that took copies
  trim   an id with more than R copies on up nodes, all its targets among them, loses the copies
         on nodes that are not targets

The row map's lock is held to read and update the map, and across the DROPs that go with an
update, but never across the copying: reads and writes go on while a heal runs.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import BlockfoldError, CancelledError
from ..net import rpc
from ..progress import Meter
from . import placement
from .copies import Copies
from .reads import Reader
from .rowmap import RowMap

HEAL_STREAMS = 2


class Healer:
    def __init__(self, members, rows: RowMap, copies: Copies, reader: Reader, *,
                 replicas: int, sync):
        self.members = members
        self.rows = rows
        self.copies = copies
        self.reader = reader
        self.replicas = replicas            # R
        self.sync = sync                    # the copies' sync, its losses kept for a commit

    def heal(self, progress=None, cancel=None) -> dict:
        """Copies every id its placement targets lack from a holder, then trims copies beyond
        R. Returns {copied, unreachable (ids with no reachable copy), dropped,
        under_replicated (left after)}. Raises CancelledError when `cancel` is set."""
        with self.rows.lock:
            rows = self.rows.live_rows()
            up = self.members.up_mask()
            have = self.rows.holders_at(rows) & up[None, :]
            targets = placement.targets(self.rows.ids_at(rows), self.members.seeds,
                                        self.members.weights, up, self.replicas)
            short = rows[(targets & ~have).any(axis=1)]
        meter = Meter(progress, "heal", len(short), unit_bytes=self.copies.block_size)
        copied = missing = 0
        step = self.copies.frame_blocks
        batches = [short[i:i + step] for i in range(0, len(short), step)]

        def one(batch):
            if cancel is not None and cancel.is_set():
                raise CancelledError("heal cancelled")
            return self._copy(batch), len(batch)

        with ThreadPoolExecutor(HEAL_STREAMS, thread_name_prefix="blockfold-heal") as pool:
            for (c, m), n in pool.map(one, batches):
                copied += c
                missing += m
                meter.advance(n)
        self.sync()
        meter.finish()
        dropped = self._trim()
        with self.rows.lock:
            left = self.rows.under_replicated(self.members.up_mask(), self.replicas)
        return {"copied": copied, "unreachable": missing, "dropped": dropped,
                "under_replicated": left}

    def _copy(self, rows: np.ndarray) -> tuple[int, int]:
        """Copies one batch of rows to the targets that lack them; (copies made, blocks with no
        reachable copy)."""
        with self.rows.lock:
            rows = rows[self.rows.refcounts_at(rows) > 0]
            ids = self.rows.ids_at(rows)
            up = self.members.up_mask()
            have = self.rows.holders_at(rows) & up[None, :]
        targets = placement.targets(ids, self.members.seeds, self.members.weights, up,
                                    self.replicas)
        # Fewer copies than R but none missing from the targets: the targets are all taken.
        sources = have.any(axis=1)
        need = targets & ~have & sources[:, None]
        unreachable = int(np.count_nonzero(~sources))
        want = need.any(axis=1)
        if not want.any():
            return 0, unreachable
        rows, ids, need = rows[want], ids[want], need[want]
        try:
            data = self.reader.gather(ids)
        except BlockfoldError:
            return 0, unreachable + len(ids)     # its last holder went meanwhile
        replies = self.copies.put(ids, data, need)
        copied = 0
        k = len(self.members.nodes)
        with self.rows.lock:
            for node, status in replies.items():
                if isinstance(status, Exception):
                    continue
                sent = np.flatnonzero(need[:, node])
                sent = sent[status != rpc.COLLISION]
                # An id released while it was being copied: its drop missed this copy.
                gone = self.rows.ids_at(rows[sent]) != ids[sent]
                on_node = np.zeros(k, bool)
                on_node[node] = True
                self.rows.hold(rows[sent[~gone]], on_node)
                copied += int(np.count_nonzero(~gone))
                if gone.any():
                    stale = np.zeros((int(gone.sum()), k), bool)
                    stale[:, node] = True
                    self.copies.drop(ids[sent[gone]], stale)
        return copied, unreachable

    def _trim(self) -> int:
        """Drops copies beyond R from nodes that are not among an id's placement targets;
        returns how many."""
        with self.rows.lock:
            rows = self.rows.live_rows()
            up = self.members.up_mask()
            have = self.rows.holders_at(rows) & up[None, :]
            over = np.flatnonzero(have.sum(axis=1) > self.replicas)
            if not len(over):
                return 0
            rows = rows[over]
            ids = self.rows.ids_at(rows)
            targets = placement.targets(ids, self.members.seeds, self.members.weights, up,
                                        self.replicas)
            complete = ~(targets & ~have[over]).any(axis=1)
            extra = have[over] & ~targets & complete[:, None]
            if not extra.any():
                return 0
            self.copies.drop(ids, extra)
            self.rows.unhold(rows, extra)
            return int(extra.sum())
