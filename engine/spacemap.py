"""Refcounts and free slots, in RAM.

A slot whose last reference goes is not reusable at once: until a commit makes the drop durable, a
crash would bring the old reference back, so the slot waits in *pending*. A commit `seal()`s the
pending slots of its epoch when it takes its snapshot, `release()`s them once it is durable, or
`unseal()`s them if it failed: they wait for the next commit. Slots `keep()` names are left pending
by every seal meanwhile: a committed page still names them (a cluster commit that leaves a VM's
top out, engine.pool.Pool._commit).
"""

from __future__ import annotations

import numpy as np

SMALL = 8          # below this many slots, a plain loop beats numpy's per-call overhead


class SpaceMap:
    def __init__(self, capacity: int = 1):
        self.refcounts = np.zeros(capacity, dtype=np.uint32)
        self._free = np.zeros(0, dtype=np.uint32)   # a stack: the top (end) is reused first
        self._pending: list[np.ndarray] = []
        self._sealed: dict[int, list[np.ndarray]] = {}
        self._epoch = 0
        self._kept = np.zeros(0, np.uint64)         # ascending: slots no seal takes

    @classmethod
    def from_refcounts(cls, refcounts: np.ndarray) -> SpaceMap:
        space = cls(0)
        space.refcounts = refcounts.astype(np.uint32)
        free = np.flatnonzero(space.refcounts == 0).astype(np.uint32)
        space._free = free[free != 0][::-1].copy()     # slot 0 is the header; lowest on top
        return space

    @property
    def capacity(self) -> int:
        return len(self.refcounts)

    @property
    def free_count(self) -> int:
        return len(self._free)

    @property
    def used_count(self) -> int:
        return int(np.count_nonzero(self.refcounts))

    @property
    def nbytes(self) -> int:
        return self.refcounts.nbytes + self._free.nbytes

    def free_slots(self) -> np.ndarray:
        return self._free.astype(np.uint64)

    def pending_slots(self) -> np.ndarray:
        """Slots whose last reference went and whose release waits for a commit."""
        parts = self._pending + [p for sealed in self._sealed.values() for p in sealed]
        return np.concatenate(parts) if parts else np.zeros(0, np.uint64)

    @property
    def has_pending(self) -> bool:
        """Some pending slot would be sealed (one kept does not count)."""
        if not len(self._kept) or not self._pending:
            return bool(self._pending)
        return not self._is_kept(np.concatenate(self._pending)).all()

    def _is_kept(self, slots: np.ndarray) -> np.ndarray:
        """Which of `slots` are kept (a binary search each: the kept may be millions)."""
        at = np.minimum(np.searchsorted(self._kept, slots), len(self._kept) - 1)
        return self._kept[at] == slots

    def keep(self, slots: np.ndarray) -> None:
        """From now on, until called again, seals leave `slots` pending (a commit that leaves
        out the layers naming them must not free them)."""
        self._kept = np.unique(np.asarray(slots, np.uint64))

    def add_slots(self, slots: np.ndarray) -> None:
        """New slots from a grown store join the bottom of the free stack: reuse comes first."""
        self.refcounts = np.concatenate(
            [self.refcounts, np.zeros(int(slots.max()) + 1 - len(self.refcounts), np.uint32)])
        self._free = np.concatenate([slots[::-1].astype(np.uint32), self._free])

    def allocate(self, n: int) -> np.ndarray | None:
        """n free slots, or None if there are fewer than n."""
        if n > len(self._free):
            return None
        taken = self._free[len(self._free) - n:][::-1].astype(np.uint64)
        self._free = self._free[:len(self._free) - n]
        return taken

    def incref(self, slots: np.ndarray) -> None:
        if len(slots) <= SMALL:
            for slot in slots.tolist():
                self.refcounts[slot] += 1
        else:
            np.add.at(self.refcounts, slots, 1)

    def decref(self, slots: np.ndarray) -> None:
        if len(slots) == 0:
            return
        if len(slots) <= SMALL:
            for slot in slots.tolist():
                self.refcounts[slot] -= 1
                if self.refcounts[slot] == 0:
                    self._pending.append(np.array([slot], dtype=np.uint64))
            return
        np.subtract.at(self.refcounts, slots, 1)
        touched = np.unique(slots)
        released = touched[self.refcounts[touched] == 0]
        if len(released):
            self._pending.append(released.astype(np.uint64))

    def seal(self) -> int:
        """Closes the current epoch of pending slots (a commit's snapshot); returns its number."""
        self._epoch += 1
        if len(self._kept) and self._pending:
            pending = np.concatenate(self._pending).astype(np.uint64)
            kept = self._is_kept(pending)
            self._sealed[self._epoch] = [pending[~kept]]
            self._pending = [pending[kept]] if kept.any() else []
        else:
            self._sealed[self._epoch] = self._pending
            self._pending = []
        return self._epoch

    def unseal(self, epoch: int) -> None:
        """The commit failed: its slots wait for the next one."""
        self._pending = self._sealed.pop(epoch) + self._pending

    def release(self, epoch: int) -> np.ndarray:
        """The commit is durable: its slots become reusable; returns them."""
        parts = self._sealed.pop(epoch)
        released = np.concatenate(parts) if parts else np.zeros(0, np.uint64)
        # A released slot may have been shared again before the commit: it is no longer free.
        released = np.unique(released[self.refcounts[released] == 0])
        self._free = np.concatenate([self._free, released[::-1].astype(np.uint32)])
        return released
