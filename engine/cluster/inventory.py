"""Who holds what, from the nodes' own inventories: the rebuild, and a returning node's rejoin.

Refcounts come from the block tables' references (the core's); holders and hash words from what
each reachable node says it holds. The first holder seen fixes an id's hash word; a copy whose word
disagrees is not a copy of that block. A full rebuild also scrubs every node (it re-reads and
re-hashes each copy), as a scrub does: with `reclaim`, a rotten copy of a live block is rewritten
from a sound replica on another node (engine.cluster.reads, counted as a repaired copy), and only a
block with no sound copy left is corrupt. With `reclaim`, each node drops what no table references
(the orphans), what disagrees, and the rotten copies it could not have rewritten (heal copies a
sound one back where a replica is left).
"""

from __future__ import annotations

import time

import numpy as np

from ..errors import CancelledError
from ..progress import Meter
from .copies import Copies
from .reads import Reader
from .rowmap import RowMap


class Inventory:
    def __init__(self, members, rows: RowMap, copies: Copies, reader: Reader):
        self.members = members
        self.rows = rows
        self.copies = copies
        self.reader = reader

    def rebuild(self, references: np.ndarray, *, pages: int, full: bool, progress, cancel,
                reclaim: bool, known_corrupt: np.ndarray) -> tuple[dict, np.ndarray]:
        """Reloads the row map from `references` (every table entry naming a block, with
        repeats, out of `pages` block-table pages). Returns the figures of the core's rebuild
        (free and capacity slots are 0: nodes keep their own space; missing_blocks: ids no
        reachable node holds a sound copy of; corrupt_blocks: the corrupt ids below;
        orphans_reclaimed: copies of ids no table references, dropped; repaired_copies: rotten
        copies rewritten from a sound replica, full only), and the corrupt ids in the sense of
        engine.blocklayer: those with no sound copy left on a reachable node (full), or
        `known_corrupt` still referenced (fast: copies are not re-read). Raises
        CancelledError."""
        started = time.monotonic()
        meter = Meter(progress, "tables", len(references))
        ids, counts = np.unique(references, return_counts=True)
        meter.finish()

        k = len(self.members.nodes)
        # Fresh figures from the nodes that answer; a down one is not asked again (a silent
        # one cost every open a second connect timeout): heartbeats find it when it returns.
        self.members.probe_all(np.flatnonzero(self.members.reachable_mask()).tolist())
        meter = Meter(progress, "inventory", k)
        held = np.zeros((len(ids), k), bool)
        words = np.zeros(len(ids), np.uint64)
        orphans = 0
        rotten: dict[int, np.ndarray] = {}     # node: the live ids it holds rotten (full)
        for node in range(k):
            meter.advance()
            if cancel is not None and cancel.is_set():
                raise CancelledError("rebuild cancelled")
            if not self.members.reachable_mask()[node]:
                continue
            inv = self.copies.inventory(node)
            if inv is None:
                continue
            node_ids, node_words = inv
            if full:
                bad = self.copies.scrub(node)
                rotten[node] = bad[np.isin(bad, ids)]
                sound = ~np.isin(node_ids, bad)
                node_ids, node_words = node_ids[sound], node_words[sound]
            match = np.zeros(len(node_ids), bool)
            if len(ids):        # else nothing is referenced: every copy is unwanted
                pos = np.minimum(np.searchsorted(ids, node_ids), len(ids) - 1)
                hit = ids[pos] == node_ids
                first = hit & (words[pos] == 0)
                words[pos[first]] = node_words[first]
                match = hit & (words[pos] == node_words)
                held[pos[match], node] = True
            unwanted = node_ids[~match]
            if full:        # rotten copies of unreferenced ids are orphans too
                unwanted = np.concatenate([unwanted, bad[~np.isin(bad, ids)]])
            if reclaim and len(unwanted):
                orphans += int(np.count_nonzero(~np.isin(unwanted, ids)))
                self._drop(node, unwanted)
        meter.finish()

        with self.rows.lock:
            self.rows.load(ids, counts, words, held)
        repaired = 0
        for node, bad in rotten.items():
            if not reclaim or not len(bad):
                continue
            fixed, _ = self.reader.repair(node, bad)
            repaired += len(fixed)
            with self.rows.lock:
                self.rows.hold(self.rows.rows_of(fixed), np.arange(k) == node)
            held[np.searchsorted(ids, fixed), node] = True
            # Not rewritten (no sound replica, or the node refused it): not a copy to keep.
            self._drop(node, bad[~np.isin(bad, fixed)])
        if full:                    # a full rebuild judges every copy afresh
            bad = np.unique(np.concatenate(list(rotten.values()))) if rotten else ids[:0]
            lost = bad[~held[np.searchsorted(ids, bad)].any(axis=1)]
        else:
            lost = known_corrupt[np.isin(known_corrupt, ids)]
        seconds = time.monotonic() - started
        bs = self.copies.block_size
        return {
            "mode": "full" if full else "fast",
            "seconds": round(seconds, 4),
            "pages": pages,
            "references": len(references),
            "blocks": len(ids),
            "bytes": len(ids) * bs,
            "bytes_per_s": int(len(ids) * bs / seconds) if seconds > 0 else 0,
            "corrupt_blocks": [int(x) for x in lost],
            "bad_references": 0,
            "orphans_reclaimed": orphans,
            "repaired_copies": repaired if full else None,
            "missing_blocks": int(np.count_nonzero(~held.any(axis=1))),
            "free_slots": 0,
            "capacity_slots": 0,
        }, lost

    def _drop(self, node: int, unwanted: np.ndarray) -> None:
        """`node` drops its copies of `unwanted` ids."""
        if len(unwanted):
            only_here = np.zeros((len(unwanted), len(self.members.nodes)), bool)
            only_here[:, node] = True
            self.copies.drop(unwanted, only_here)

    def rejoin(self, node: int, reclaim: bool) -> None:
        """A returning node: its copies count again; with `reclaim`, what it should not hold
        (an id the row map has no row for, or another block's bytes) it drops. Nothing if it
        cannot be reached."""
        inv = self.copies.inventory(node)
        if inv is None:
            return
        node_ids, node_words = inv
        rows = self.rows
        with rows.lock:
            at = rows.rows_of(node_ids)
            # A block no reachable node held at rebuild has no hash word yet: this copy's.
            unknown = (at != 0) & (rows.words_at(at) == 0)
            rows.set_words(at[unknown], node_words[unknown])
            # A row with no reference left is still wanted until its release (which drops its
            # copies): the catalog may name it yet (a commit not done, or a VM left out of
            # the commits, engine.pool.Pool._kept_for).
            ok = (at != 0) & (rows.words_at(at) == node_words)
            # What it holds now is all it holds: a RAM node comes back empty.
            rows.set_node(node, at[ok])
            unwanted = node_ids[~ok]
            if reclaim and len(unwanted):
                held = np.zeros((len(unwanted), len(self.members.nodes)), bool)
                held[:, node] = True
                self.copies.drop(unwanted, held)
