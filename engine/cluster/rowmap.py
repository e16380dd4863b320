"""The row map: what the coordinator keeps in RAM about each block id of the cluster.

Per id, a row: the id itself, its refcount (an engine.spacemap.SpaceMap over rows, so a row whose
last reference went is reused only after the commit that dropped it), the second 64-bit word of its
fingerprint (0 while no holder has told it), and which nodes hold a copy (a bool matrix rows ×
nodes). An engine.index.FingerprintIndex maps id -> row. Row 0 is never used: 0 means "no row".

Costs per unique block: 12-20 B of index, 4 B of refcount, 16 B of id and word, one byte per node.

Locking: every method assumes the caller holds `lock` (an RLock), and holds it across a step that
must see the map whole. The map never touches the network.
"""

from __future__ import annotations

import threading

import numpy as np

from ..index import REBUILD_LOAD, FingerprintIndex
from ..spacemap import SpaceMap
from ..stats import refcount_histogram

MIN_GROWTH = 1024


class RowMap:
    def __init__(self, nodes: int):
        self.lock = threading.RLock()
        self.nodes = nodes
        self._index: FingerprintIndex | None = None     # None until the first load
        self._space = SpaceMap(1)
        self._ids = np.zeros(1, np.uint64)
        self._words = np.zeros(1, np.uint64)
        self._holders = np.zeros((1, nodes), bool)

    @property
    def ready(self) -> bool:
        """A rebuild has loaded the map."""
        return self._index is not None

    def load(self, ids: np.ndarray, refcounts: np.ndarray, words: np.ndarray,
             holders: np.ndarray) -> None:
        """Replaces the whole map (a rebuild): distinct ids, their refcounts (clamped to
        uint32), hash words and holders (len(ids) × nodes)."""
        n = len(ids) + 1
        self._ids = np.concatenate([[np.uint64(0)], ids]).astype(np.uint64)
        self._words = np.concatenate([[np.uint64(0)], words]).astype(np.uint64)
        self._holders = np.concatenate([np.zeros((1, self.nodes), bool), holders])
        self._space = SpaceMap.from_refcounts(
            np.minimum(np.concatenate([[0], refcounts]), np.iinfo(np.uint32).max))
        self._index = FingerprintIndex(int(n / REBUILD_LOAD) + 1)
        if len(ids):
            self._index.insert(ids, np.arange(1, n, dtype=np.uint64))

    # -- rows ---------------------------------------------------------------------------------

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """The row of each id, or 0 where the id has none."""
        rows = self._index.lookup(ids)
        rows[self._ids[rows] != ids] = 0      # the index is advice: a stale cell names no row
        return rows

    def add(self, ids: np.ndarray, words: np.ndarray, holders: np.ndarray) -> np.ndarray:
        """New rows for distinct ids that have none, unreferenced; returns the rows. Grows the
        arrays by half (at least MIN_GROWTH rows) when no row is free."""
        rows = self._space.allocate(len(ids))
        if rows is None:
            grow = max(len(ids), len(self._ids) // 2, MIN_GROWTH)
            start = len(self._ids)
            self._space.add_slots(np.arange(start, start + grow, dtype=np.uint64))
            self._ids = np.concatenate([self._ids, np.zeros(grow, np.uint64)])
            self._words = np.concatenate([self._words, np.zeros(grow, np.uint64)])
            self._holders = np.concatenate([self._holders, np.zeros((grow, self.nodes), bool)])
            rows = self._space.allocate(len(ids))
        self._ids[rows] = ids
        self._words[rows] = words
        self._holders[rows] = holders
        self._index.insert(ids, rows, keep=lambda r: self._ids[r] != 0)
        return rows

    def ids_at(self, rows: np.ndarray) -> np.ndarray:
        """The id of each row (0 for a free row)."""
        return self._ids[rows]

    def words_at(self, rows: np.ndarray) -> np.ndarray:
        """The second fingerprint word of each row (0: not known yet)."""
        return self._words[rows]

    def set_words(self, rows: np.ndarray, words: np.ndarray) -> None:
        self._words[rows] = words

    def live_rows(self) -> np.ndarray:
        """Every referenced row, ascending."""
        return np.flatnonzero(self._space.refcounts)

    # -- refcounts ----------------------------------------------------------------------------

    def refcounts_at(self, rows: np.ndarray) -> np.ndarray:
        return self._space.refcounts[rows]

    def incref(self, rows: np.ndarray) -> None:
        self._space.incref(rows)

    def decref(self, rows: np.ndarray) -> None:
        """One reference less for each row (repeats count); the last makes a row pending."""
        self._space.decref(rows)

    @property
    def has_pending(self) -> bool:
        return self._space.has_pending

    def keep_pending(self, rows: np.ndarray) -> None:
        """Seals leave `rows` pending from now on, until called again (engine.spacemap)."""
        self._space.keep(rows)

    def seal(self) -> int:
        """Closes the epoch of rows that lost their last reference (but those kept pending);
        returns its number."""
        return self._space.seal()

    def unseal(self, epoch: int) -> None:
        """The commit that sealed `epoch` failed: its rows are pending again."""
        self._space.unseal(epoch)

    def release(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """The commit that sealed `epoch` is durable: its rows still unreferenced are freed.
        Returns their (ids, holders) as they were, for the copies to be dropped."""
        rows = self._space.release(epoch)
        ids, holders = self._ids[rows], self._holders[rows]
        self._ids[rows] = 0
        self._holders[rows] = False
        return ids, holders

    # -- holders ------------------------------------------------------------------------------

    def holders_at(self, rows: np.ndarray) -> np.ndarray:
        """Which nodes hold each row: a copy, len(rows) × nodes."""
        return self._holders[rows]

    def hold(self, rows: np.ndarray, holders: np.ndarray) -> None:
        """These nodes (len(rows) × nodes, or one row of nodes for all) hold copies too."""
        self._holders[rows] |= holders

    def unhold(self, rows: np.ndarray, holders: np.ndarray) -> None:
        """These nodes hold no copy of these rows any more."""
        self._holders[rows] &= ~holders

    def set_node(self, node: int, rows: np.ndarray) -> None:
        """What `node` holds is exactly `rows` (a returning node's inventory)."""
        self._holders[:, node] = False
        self._holders[rows, node] = True

    # -- views --------------------------------------------------------------------------------

    def live_ids(self) -> np.ndarray:
        """Every referenced id, ascending."""
        return np.sort(self._ids[self.live_rows()])

    def under_replicated(self, up: np.ndarray, replicas: int) -> int:
        """How many live rows have fewer than `replicas` copies on the `up` nodes."""
        if not self.ready:
            return 0
        copies = (self._holders[self.live_rows()] & up[None, :]).sum(axis=1)
        return int(np.count_nonzero(copies < replicas))

    def per_node(self, up: np.ndarray, replicas: int) -> tuple[np.ndarray, np.ndarray]:
        """For each node: live rows it holds, and how many of those have fewer than `replicas`
        copies on the `up` nodes."""
        if not self.ready:
            return np.zeros(self.nodes, np.int64), np.zeros(self.nodes, np.int64)
        held = self._holders[self.live_rows()]
        copies = (held & up[None, :]).sum(axis=1)
        return held.sum(axis=0), held[copies < replicas].sum(axis=0)

    def only_on(self, node: int, up: np.ndarray) -> int:
        """How many live rows `node` holds that no other `up` node holds: the blocks that have
        no reachable copy once `node` is gone."""
        if not self.ready or not up[node]:     # a node already down: nothing more is lost
            return 0
        others = up.copy()
        others[node] = False
        held = self._holders[self.live_rows()]
        return int(np.count_nonzero(held[:, node] & ~(held & others[None, :]).any(axis=1)))

    def bare_without(self, node: int, up: np.ndarray) -> int:
        """How many live rows no `up` node but `node` holds: without `node`, they have no
        reachable copy (held by it alone, or by down nodes alone, or by none)."""
        if not self.ready:
            return 0
        others = up.copy()
        others[node] = False
        return int(np.count_nonzero(~(self._holders[self.live_rows()]
                                      & others[None, :]).any(axis=1)))

    def short_without(self, node: int, up: np.ndarray, replicas: int) -> int:
        """How many live rows have fewer than `replicas` copies on the `up` nodes but `node`:
        what a removal of `node` has to copy."""
        others = up.copy()
        others[node] = False
        return self.under_replicated(others, replicas)

    @property
    def used_count(self) -> int:
        """Live rows: the unique blocks of the cluster."""
        return self._space.used_count

    @property
    def nbytes(self) -> int:
        """RAM of the map: index, refcounts and free rows, ids, words, holders."""
        return (self._index.nbytes + self._space.nbytes + self._ids.nbytes + self._words.nbytes
                + self._holders.nbytes)

    def refcount_histogram(self) -> dict:
        return refcount_histogram(self._space.refcounts)
