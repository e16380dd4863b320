"""The fingerprint index: fingerprint -> slot, in RAM, as a numpy open-addressing table.

The index is advice. It keys on 64 bits of the fingerprint and may point at a slot that has since
been freed or reused; callers check the slot's stored fingerprint and compare bytes before sharing
a block. Stale entries are dropped when the table grows. A cell costs 12 bytes (a 64-bit key, a
32-bit slot: up to 4 G slots, 16 TiB of 4 KiB blocks), and the table is 35-70 % full, against
100+ bytes an entry for a Python dict of ints.
"""

from __future__ import annotations

import numpy as np

EMPTY = np.uint64(0)
MAX_LOAD = 0.7
MIN_CAPACITY = 1 << 10
SMALL = 8          # below this many keys, a plain loop beats numpy's per-call overhead


def keys_of(digests: np.ndarray) -> np.ndarray:
    """The 64-bit index keys of n × 2-word digests; 0 marks an empty cell, so it maps to 1."""
    keys = digests[:, 0].copy()
    keys[keys == EMPTY] = 1
    return keys


class FingerprintIndex:
    def __init__(self, capacity: int = MIN_CAPACITY):
        self._alloc(capacity)

    def _alloc(self, capacity: int) -> None:
        size = MIN_CAPACITY
        while size < capacity:
            size <<= 1
        self.keys = np.zeros(size, dtype=np.uint64)
        self.slots = np.zeros(size, dtype=np.uint32)
        self.mask = np.uint64(size - 1)
        self.count = 0

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.slots.nbytes

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """The slot each key points at, or 0 where it has none."""
        if len(keys) <= SMALL:
            return np.array([self._find(int(k))[1] for k in keys], dtype=np.uint64)
        found = np.zeros(len(keys), dtype=np.uint64)
        pos = keys & self.mask
        todo = np.arange(len(keys))
        while todo.size:
            cell = self.keys[pos[todo]]
            hit = cell == keys[todo]
            found[todo[hit]] = self.slots[pos[todo[hit]]]   # widened to uint64 on the way out
            todo = todo[~hit & (cell != EMPTY)]
            pos[todo] = (pos[todo] + np.uint64(1)) & self.mask
        return found

    def insert(self, keys: np.ndarray, slots: np.ndarray, keep=None) -> None:
        """Points each key at its slot, replacing what the key pointed at before.

        `keep(slots) -> bool array` says which existing entries are still live; it is used when the
        table grows, to drop stale ones.
        """
        if self.count + len(keys) > MAX_LOAD * len(self.keys):
            self._grow(self.count + len(keys), keep)
        if len(keys) <= SMALL:
            for key, slot in zip(keys.tolist(), slots.tolist()):
                pos, _ = self._find(key)
                self.count += self.keys.item(pos) == 0
                self.keys[pos] = key
                self.slots[pos] = slot
            return
        keys, first = np.unique(keys, return_index=True)
        slots = slots[first]
        pos = keys & self.mask
        todo = np.arange(len(keys))
        while todo.size:
            cell = self.keys[pos[todo]]
            free = (cell == EMPTY) | (cell == keys[todo])
            candidates = todo[free]
            # Two keys may probe the same empty cell in one round: the first one takes it.
            _, winner_at = np.unique(pos[candidates], return_index=True)
            winners = candidates[winner_at]
            self.count += int(np.count_nonzero(self.keys[pos[winners]] == EMPTY))
            self.keys[pos[winners]] = keys[winners]
            self.slots[pos[winners]] = slots[winners]
            placed = np.zeros(len(keys), dtype=bool)
            placed[winners] = True
            todo = todo[~placed[todo]]
            pos[todo] = (pos[todo] + np.uint64(1)) & self.mask

    def _find(self, key: int) -> tuple[int, int]:
        """(cell, slot) of `key`, or (the empty cell where it would go, 0)."""
        mask, keys = int(self.mask), self.keys
        pos = key & mask
        while True:
            cell = keys.item(pos)
            if cell == key:
                return pos, self.slots.item(pos)
            if cell == 0:
                return pos, 0
            pos = (pos + 1) & mask

    def _grow(self, needed: int, keep) -> None:
        live = self.keys != EMPTY
        keys, slots = self.keys[live], self.slots[live]
        if keep is not None:
            alive = keep(slots)
            keys, slots = keys[alive], slots[alive]
        self._alloc(int(max(needed, len(keys)) / MAX_LOAD * 2))
        if len(keys):
            self.insert(keys, slots)
