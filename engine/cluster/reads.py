"""Reads: the bytes of block ids, from the first holder that answers with a sound copy.

Holders are asked in placement order, healthy ones (up, not suspect) before suspect ones; when no
known holder is left, any reachable node is asked, in case the row map is behind. Every copy that
comes back is hashed: one whose second fingerprint word differs from the row's is rotten (or another
block under a colliding id) and is never served; the next replica is asked instead. A node that
errs, times out or lacks a copy is not asked again for that block.

Read repair: a rotten copy found on the way is rewritten on its node with the sound replica's
bytes (a repairing PUT: the node takes them only in place of a copy it holds rotten, and only if
they hash to its record), then made durable. Each repair is counted and kept for the event log
(`repairs`, with the actor of the read), so the healer thread records it: a read never commits.
`repair` does the same for the rotten copies a node's scrub names.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from ..actor import current as current_actor
from ..errors import BlockfoldError
from ..fingerprint import Fingerprinter
from ..net import rpc
from . import placement
from .copies import WRITE_TIMEOUT, Copies
from .rowmap import RowMap


class Reader:
    def __init__(self, members, rows: RowMap, copies: Copies, fingerprints: Fingerprinter,
                 why_lost: Callable[[int], str]):
        self.members = members
        self.why_lost = why_lost    # why no node holds an id (engine.cluster.losses)
        self.rows = rows
        self.copies = copies
        self.fingerprints = fingerprints
        self.block_size = fingerprints.block_size
        self.repaired = 0           # rotten copies rewritten since the coordinator opened
        self.repairs: list[tuple[int, str, str]] = []   # (id, node, actor), not yet logged
        self._repairs_lock = threading.Lock()

    def gather(self, ids: np.ndarray) -> np.ndarray:
        """The bytes of each id, as n × block_size uint8. Raises BlockfoldError naming a block
        that has no reachable sound copy."""
        uniq, inverse = np.unique(ids, return_inverse=True)
        step = self.copies.frame_blocks
        parts = [self._gather(uniq[i:i + step]) for i in range(0, len(uniq), step)]
        out = np.concatenate(parts) if parts else np.zeros((0, self.block_size), np.uint8)
        return out[inverse.reshape(-1)]

    def _gather(self, uniq: np.ndarray) -> np.ndarray:
        """gather() for distinct ids, few enough that any node's reply fits one frame. The row
        map is read once, under its lock; the requests go out without it."""
        out = np.zeros((len(uniq), self.block_size), np.uint8)
        k = len(self.members.nodes)
        with self.rows.lock:
            rows = self.rows.rows_of(uniq)
            cand = self.rows.holders_at(rows)
            expect = self.rows.words_at(rows)
        tried = np.zeros((len(uniq), k), bool)
        rotten_on = np.zeros((len(uniq), k), bool)
        todo = np.arange(len(uniq))
        order = placement.ranking(uniq, self.members.seeds, self.members.weights)
        while len(todo):
            pick = self._pick(uniq, todo, cand, tried, order)
            replies = self.copies.get({node: uniq[todo[pick == node]]
                                         for node in np.unique(pick).tolist()})
            left = []
            for node, reply in replies.items():
                sel = todo[pick == node]
                tried[sel, node] = True
                if isinstance(reply, Exception):
                    left.append(sel)
                    continue
                missing, got = reply
                fine = sel[~missing]
                words = self.fingerprints.of(got)[:, 1] if len(got) else expect[fine]
                rotten = (words != expect[fine]) & (expect[fine] != 0)
                out[fine[~rotten]] = got[~rotten]
                rotten_on[fine[rotten], node] = True
                missing[np.flatnonzero(~missing)[rotten]] = True
                if missing.any():
                    cand[sel[missing], node] = False
                    left.append(sel[missing])
            todo = np.concatenate(left) if left else np.zeros(0, np.int64)
        if rotten_on.any():
            self._rewrite(uniq, out, rotten_on)
        return out

    def repair(self, node: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rewrites the copies of `ids` that `node` holds rotten (a scrub found them) from a
        sound replica on another node, asking known holders in placement order. Returns (the
        ids repaired, the ids with no sound copy on any other reachable holder)."""
        ids = np.unique(np.asarray(ids, np.uint64))
        k = len(self.members.nodes)
        with self.rows.lock:
            rows = self.rows.rows_of(ids)
            cand = self.rows.holders_at(rows)
            expect = self.rows.words_at(rows)
        cand[:, node] = False
        order = placement.ranking(ids, self.members.seeds, self.members.weights)
        out = np.zeros((len(ids), self.block_size), np.uint8)
        found = np.zeros(len(ids), bool)
        tried = np.zeros((len(ids), k), bool)
        tried[:, node] = True
        up = self.members.up_mask()
        todo = np.arange(len(ids))
        while True:
            options = cand[todo] & ~tried[todo] & up[None, :]
            has = options.any(axis=1)
            todo, options = todo[has], options[has]
            if not len(todo):
                break
            ranked = np.take_along_axis(options, order[todo], axis=1)
            pick = order[todo, ranked.argmax(axis=1)]
            replies = self.copies.get({n: ids[todo[pick == n]] for n in np.unique(pick).tolist()})
            for n, reply in replies.items():
                sel = todo[pick == n]
                tried[sel, n] = True
                if isinstance(reply, Exception):
                    continue
                missing, got = reply
                fine = sel[~missing]
                sound = self.fingerprints.of(got)[:, 1] == expect[fine]
                out[fine[sound]] = got[sound]
                found[fine[sound]] = True
            todo = todo[~found[todo]]
        on_node = np.zeros((len(ids), k), bool)
        on_node[found, node] = True
        fixed = self._rewrite(ids, out, on_node)
        # A row with no hash word yet (no node held it at rebuild) cannot be judged lost.
        return fixed, ids[~found & (expect != 0)]

    def _rewrite(self, ids: np.ndarray, data: np.ndarray, on: np.ndarray) -> np.ndarray:
        """Sends block j's sound bytes to every node i with on[j, i] (it holds j rotten), then
        has those nodes make them durable; counts and keeps each repair. Returns the ids
        repaired on some node."""
        replies = self.copies.put(ids, data, on, repair=True)
        names = self.members.names()
        actor = current_actor("")
        fixed, done = [], []
        for node, status in replies.items():
            if isinstance(status, Exception):
                continue
            sent = ids[np.flatnonzero(on[:, node])][status == rpc.STORED]
            if len(sent):
                done.append(node)
                fixed.append(sent)
                with self._repairs_lock:
                    self.repaired += len(sent)
                    self.repairs.extend((int(i), names[node], actor) for i in sent.tolist())
        if done:
            self.members.call_many({n: (rpc.SYNC, {}, b"") for n in done}, WRITE_TIMEOUT)
        return np.unique(np.concatenate(fixed)) if fixed else np.zeros(0, np.uint64)

    def _unreachable_why(self, block_id: int) -> str:
        """Why no node answered for `block_id`: its holders are down, or no node holds it."""
        with self.rows.lock:
            held = self.rows.holders_at(self.rows.rows_of(np.array([block_id], np.uint64)))
        if held.any():
            return "has no reachable copy: too many nodes are down"
        return f"has no copy left: {self.why_lost(block_id)}"

    def take_repairs(self) -> list[tuple[int, str, str]]:
        """The repairs not yet logged, (id, node, actor) each; they are handed over once."""
        with self._repairs_lock:
            taken, self.repairs = self.repairs, []
        return taken

    def _pick(self, uniq, todo, cand, tried, order) -> np.ndarray:
        """The node to ask for each block of `todo`: the first in placement order among its
        known up holders not tried yet, healthy ones first; else any reachable node."""
        up = self.members.up_mask()
        options = np.where(cand[todo].any(axis=1)[:, None], cand[todo], True)
        options &= up[None, :] & ~tried[todo]
        # A node that missed a heartbeat (suspect) is asked only when no other can answer.
        healthy = options & self.members.healthy_mask()[None, :]
        options = np.where(healthy.any(axis=1)[:, None], healthy, options)
        ranked = np.take_along_axis(options, order[todo], axis=1)
        has = ranked.any(axis=1)
        if not has.all():
            options = self.members.reachable_mask()[None, :] & ~tried[todo]
            ranked = np.take_along_axis(options, order[todo], axis=1)
            has = ranked.any(axis=1)
            if not has.all():
                lost = int(uniq[todo[~has][0]])
                raise BlockfoldError(f"block {lost:016x} {self._unreachable_why(lost)}")
        return order[todo, ranked.argmax(axis=1)]
