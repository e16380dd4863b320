"""The fingerprint index: fingerprint -> slot, in RAM, as a numpy open-addressing table.

The index is advice. It keys on 64 bits of the fingerprint and may point at a slot that has since
been freed or reused; callers check the slot's stored fingerprint and compare bytes before sharing
a block. Stale entries are dropped when the table grows. A cell costs 12 bytes (a 64-bit key, a
32-bit slot: up to 4 G slots, 16 TiB of 4 KiB blocks). The table may be any size, not just a power
of two (a key's home cell is 32 bits of it, mixed, scaled to the size), so a rebuilt index is
sized to 60 % full: 20 bytes an entry, against 100+ for a Python dict of ints.

Keys are mixed (this table's random seed, then splitmix64's finalizer) before their home is taken:
a node's keys are block ids a peer may pick, and unmixed, ids 1, 2, 3, … all had home cell 0, so
each put probed past every key before it (100 puts of 64 such ids: 21 s).
"""

from __future__ import annotations

import os

import numpy as np

EMPTY = np.uint64(0)
# Linear probing slows sharply past ~70 % full (each probe is a numpy pass over a batch), so the
# table grows 2x at 70 %; a rebuilt one starts at 60 %, 20 bytes an entry.
MAX_LOAD = 0.7
REBUILD_LOAD = 0.6
GROWTH = 2.0
MIN_CAPACITY = 1 << 10
SMALL = 8          # below this many keys, a plain loop beats numpy's per-call overhead
MIX1, MIX2 = 0xBF58_476D_1CE4_E5B9, 0x94D0_49BB_1331_11EB     # splitmix64's finalizer
MASK = (1 << 64) - 1


class FingerprintIndex:
    def __init__(self, capacity: int = MIN_CAPACITY):
        # Random per table: whoever picks the ids cannot aim them at one cell.
        self.seed = int.from_bytes(os.urandom(8), "little")
        self._alloc(capacity)

    def _alloc(self, capacity: int) -> None:
        size = max(MIN_CAPACITY, int(capacity))
        self.keys = np.zeros(size, dtype=np.uint64)
        self.slots = np.zeros(size, dtype=np.uint32)
        self.size = np.uint64(size)
        self.count = 0

    def _home(self, keys: np.ndarray) -> np.ndarray:
        """A key's first cell: the high 32 bits of the key mixed, scaled to the table size
        (the same as _find's, in scalars)."""
        z = keys ^ np.uint64(self.seed)
        z ^= z >> np.uint64(30)
        z *= np.uint64(MIX1)
        z ^= z >> np.uint64(27)
        z *= np.uint64(MIX2)
        z ^= z >> np.uint64(31)
        z >>= np.uint64(32)
        z *= self.size
        z >>= np.uint64(32)
        return z

    def _next(self, pos: np.ndarray) -> np.ndarray:
        pos = pos + np.uint64(1)
        pos[pos == self.size] = 0
        return pos

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.slots.nbytes

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """The slot each key points at, or 0 where it has none."""
        if len(keys) <= SMALL:
            return np.array([self.lookup_one(int(k)) for k in keys], dtype=np.uint64)
        found = np.zeros(len(keys), dtype=np.uint64)
        pos = self._home(keys)
        todo = np.arange(len(keys))
        while todo.size:
            cell = self.keys[pos[todo]]
            hit = cell == keys[todo]
            found[todo[hit]] = self.slots[pos[todo[hit]]]   # widened to uint64 on the way out
            todo = todo[~hit & (cell != EMPTY)]
            pos[todo] = self._next(pos[todo])
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
        pos = self._home(keys)
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
            pos[todo] = self._next(pos[todo])

    def lookup_one(self, key: int) -> int:
        """lookup() for one key, in scalars: the slot, or 0."""
        return self._find(key)[1]

    def _find(self, key: int) -> tuple[int, int]:
        """(cell, slot) of `key`, or (the empty cell where it would go, 0)."""
        size, keys = int(self.size), self.keys
        z = key ^ self.seed
        z = ((z ^ (z >> 30)) * MIX1) & MASK
        z = ((z ^ (z >> 27)) * MIX2) & MASK
        pos = (((z ^ (z >> 31)) >> 32) * size) >> 32
        while True:
            cell = keys.item(pos)
            if cell == key:
                return pos, self.slots.item(pos)
            if cell == 0:
                return pos, 0
            pos = pos + 1 if pos + 1 < size else 0

    def _grow(self, needed: int, keep) -> None:
        live = self.keys != EMPTY
        keys, slots = self.keys[live], self.slots[live]
        if keep is not None:
            alive = keep(slots)
            keys, slots = keys[alive], slots[alive]
        self._alloc(int(max(needed, len(keys)) / MAX_LOAD * GROWTH))
        if len(keys):
            self.insert(keys, slots)
