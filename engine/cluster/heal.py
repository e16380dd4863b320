"""Heal: every live block back to R copies, on the nodes placement wants, and no more.

Phases:
  short  the live ids whose placement targets (the first R up nodes in rendezvous order, never
         a node being removed: engine.cluster.members) lack a copy: under-replicated, or
         misplaced because a node came back, or held by a node being removed (a drain)
  copy   in batches of BATCH_FRAMES frames, two in flight: a holder of each id sends it straight
         to the targets that lack it (engine.cluster.handoff: the bytes never cross the
         coordinator); what that could not copy (the holder lacked the copy or held it rotten,
         a target could not be given it) is *relayed*: read here from a holder
         (engine.cluster.reads, with its failover and read repair) and PUT to the targets, and
         the pass says how many and why; then one SYNC of the nodes that took copies
  trim   an id with more than R copies on up nodes, all its targets among them, loses the copies
         on nodes that are not targets (a node being removed: its copies, once drained)

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
from .handoff import Handoff
from .reads import Reader
from .rowmap import RowMap

HEAL_STREAMS = 2
BATCH_FRAMES = 4       # a batch's ids: only ids travel through here, so a batch may be big
TOLD_REASONS = 3       # reasons for relayed copies a pass names


class Healer:
    def __init__(self, members, rows: RowMap, copies: Copies, reader: Reader, *,
                 replicas: int, sync):
        self.members = members
        self.rows = rows
        self.copies = copies
        self.reader = reader
        self.replicas = replicas            # R
        self.sync = sync                    # the copies' sync, its losses kept for a commit
        self.handoff = Handoff(members, copies)

    def heal(self, progress=None, cancel=None) -> dict:
        """Copies every id its placement targets lack from a holder, then trims copies beyond
        R. Returns {copied, relayed (of those, copies made through the coordinator),
        relayed_why (why, one line; "" if none), unreachable (ids with no reachable copy),
        dropped, under_replicated (left after)}. Raises CancelledError when `cancel` is
        set."""
        with self.rows.lock:
            rows = self.rows.live_rows()
            have = self.rows.holders_at(rows) & self.members.up_mask()[None, :]
            targets = placement.targets(self.rows.ids_at(rows), self.members.seeds,
                                        self.members.weights, self.members.placeable_mask(),
                                        self.replicas)
            short = rows[(targets & ~have).any(axis=1)]
        meter = Meter(progress, "heal", len(short), unit_bytes=self.copies.block_size)
        copied = relayed = missing = 0
        why: set[str] = set()
        step = self.copies.frame_blocks * BATCH_FRAMES
        batches = [short[i:i + step] for i in range(0, len(short), step)]

        def one(batch):
            if cancel is not None and cancel.is_set():
                raise CancelledError("heal cancelled")
            return self._copy(batch), len(batch)

        with ThreadPoolExecutor(HEAL_STREAMS, thread_name_prefix="blockfold-heal") as pool:
            for (c, r, m, notes), n in pool.map(one, batches):
                copied += c
                relayed += r
                missing += m
                why.update(notes)
                meter.advance(n)
        self.sync()
        meter.finish()
        dropped = self._trim()
        with self.rows.lock:
            left = self.rows.under_replicated(self.members.placeable_mask(), self.replicas)
        told = sorted(why)[:TOLD_REASONS] + (["…"] if len(why) > TOLD_REASONS else [])
        return {"copied": copied, "relayed": relayed, "relayed_why": "; ".join(told),
                "unreachable": missing, "dropped": dropped, "under_replicated": left}

    def _copy(self, rows: np.ndarray) -> tuple[int, int, int, list[str]]:
        """Copies one batch of rows to the targets that lack them: node to node, and what that
        could not copy through here. Returns (copies made, of those relayed through here,
        blocks with no reachable copy, why copies were relayed)."""
        with self.rows.lock:
            rows = rows[self.rows.refcounts_at(rows) > 0]
            ids = self.rows.ids_at(rows)
            have = self.rows.holders_at(rows) & self.members.up_mask()[None, :]
        targets = placement.targets(ids, self.members.seeds, self.members.weights,
                                    self.members.placeable_mask(), self.replicas)
        # Fewer copies than R but none missing from the targets: the targets are all taken.
        sources = have.any(axis=1)
        need = targets & ~have & sources[:, None]
        unreachable = int(np.count_nonzero(~sources))
        want = need.any(axis=1)
        if not want.any():
            return 0, 0, unreachable, []
        rows, ids, need, have = rows[want], ids[want], need[want], have[want]
        made, left, notes = self.handoff.copy(ids, have, need)
        copied = self._hold(rows, ids, made)
        todo = np.flatnonzero(left.any(axis=1))
        relayed = 0
        step = self.copies.frame_blocks
        for start in range(0, len(todo), step):
            part = todo[start:start + step]
            got, lost = self._relay(rows[part], ids[part], left[part])
            relayed += got
            unreachable += lost
        return copied + relayed, relayed, unreachable, notes

    def _relay(self, rows: np.ndarray, ids: np.ndarray, need: np.ndarray) -> tuple[int, int]:
        """Copies rows (a frame's worth at most) through here: read from a holder, PUT to the
        nodes marked in `need`. Returns (copies made, blocks with no reachable sound copy)."""
        try:
            data = self.reader.gather(ids)
        except BlockfoldError:
            return 0, len(ids)      # its last holder went meanwhile, or its copies are rotten
        replies = self.copies.put(ids, data, need)
        made = np.zeros_like(need)
        for node, status in replies.items():
            if isinstance(status, Exception):
                continue
            sent = np.flatnonzero(need[:, node])
            made[sent[status != rpc.COLLISION], node] = True
        return self._hold(rows, ids, made), 0

    def _hold(self, rows: np.ndarray, ids: np.ndarray, made: np.ndarray) -> int:
        """Credits node i with its copy of rows[j] for every made[j, i]; returns how many. An
        id released while it was being copied (its drop missed this copy) is dropped there
        instead."""
        with self.rows.lock:
            gone = self.rows.ids_at(rows) != ids
            keep = made & ~gone[:, None]
            self.rows.hold(rows, keep)
            stale = made & gone[:, None]
            if stale.any():
                self.copies.drop(ids, stale)
        return int(keep.sum())

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
            targets = placement.targets(ids, self.members.seeds, self.members.weights,
                                        self.members.placeable_mask(), self.replicas)
            complete = ~(targets & ~have[over]).any(axis=1)
            extra = have[over] & ~targets & complete[:, None]
            if not extra.any():
                return 0
            self.copies.drop(ids, extra)
            self.rows.unhold(rows, extra)
            return int(extra.sum())
