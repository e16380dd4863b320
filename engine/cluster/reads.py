"""Reads: the bytes of block ids, from the first holder that answers with a sound copy.

Holders are asked in placement order, healthy ones (up, not suspect) before suspect ones; when no
known holder is left, any reachable node is asked, in case the row map is behind. Every copy that
comes back is hashed: one whose second fingerprint word differs from the row's is rotten (or another
block under a colliding id) and is never served; the next replica is asked instead. A node that
errs, times out or lacks a copy is not asked again for that block.
"""

from __future__ import annotations

import numpy as np

from ..errors import BlockfoldError
from ..fingerprint import Fingerprinter
from . import placement
from .copies import Copies
from .rowmap import RowMap


class Reader:
    def __init__(self, members, rows: RowMap, copies: Copies, fingerprints: Fingerprinter):
        self.members = members
        self.rows = rows
        self.copies = copies
        self.fingerprints = fingerprints
        self.block_size = fingerprints.block_size

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
                missing[np.flatnonzero(~missing)[rotten]] = True
                if missing.any():
                    cand[sel[missing], node] = False
                    left.append(sel[missing])
            todo = np.concatenate(left) if left else np.zeros(0, np.int64)
        return out

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
                raise BlockfoldError(f"block {lost:016x} has no reachable copy:"
                                     " too many nodes are down")
        return order[todo, ranked.argmax(axis=1)]
