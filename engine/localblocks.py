"""Where a local pool's blocks live: slots on disk, with the fingerprint index, refcounts and free
slots in RAM. This is the block layer under a pool's block tables; a cluster provides another with
the same methods, so that the pool's clone, delete and read/write paths serve both.
"""

from __future__ import annotations

import numpy as np

from . import fsck as fsck_mod
from .blockstore import BlockStore
from .index import FingerprintIndex, keys_of
from .rebuild import PHASES, rebuild
from .stats import refcount_histogram


class LocalBlocks:
    rebuild_phases = PHASES

    def __init__(self, store: BlockStore, fingerprint, collisions: int = 0):
        self.store = store
        self.block_size = store.block_size
        self.fingerprint = fingerprint
        self.collisions = collisions
        self.index: FingerprintIndex | None = None   # None until the first rebuild
        self.space = None
        self.corrupt = np.zeros(0, dtype=np.uint64)

    # -- write path ---------------------------------------------------------------------------

    def store_blocks(self, chunk: memoryview, words: np.ndarray, which: np.ndarray) -> np.ndarray:
        """Stores or shares each chosen block of `chunk`; returns their addresses, referenced."""
        if len(which) == 1:
            return self._store_one(chunk, int(which[0]))
        bs = self.block_size
        digest_list = [self.fingerprint(chunk[i * bs:(i + 1) * bs]) for i in which.tolist()]
        digests = np.frombuffer(b"".join(digest_list), dtype=np.uint64).reshape(-1, 2)
        keys = keys_of(digests)
        found = self.index.lookup(keys)
        slots = np.zeros(len(which), dtype=np.uint64)
        store, refcounts = self.store, self.space.refcounts

        # An index hit is only advice: the slot must be live, hold the same fingerprint, and the
        # same bytes (compared for the whole batch at once, as 64-bit words). Same fingerprint but
        # other bytes is a collision: the block is stored apart.
        hit = np.flatnonzero(found)
        if len(hit):
            cand = found[hit]
            same = (refcounts[cand] > 0) & (store.hashes[cand] == digests[hit]).all(axis=1)
            hit, cand = hit[same], cand[same]
            equal = (store.words[cand] == words[which[hit]]).all(axis=1)
            slots[hit[equal]] = cand[equal]
            self.collisions += int(np.count_nonzero(~equal))

        # Blocks not in the pool yet; equal ones within this batch share one new slot.
        new = np.flatnonzero(slots == 0)
        if len(new):
            first_of: dict[bytes, int] = {}
            fresh, copies = [], []
            for j in new.tolist():
                k = first_of.setdefault(digest_list[j], j)
                if k == j:
                    fresh.append(j)
                elif np.array_equal(words[which[k]], words[which[j]]):
                    copies.append((j, k))
                else:
                    self.collisions += 1
                    fresh.append(j)
            fresh = np.array(fresh, dtype=np.int64)
            taken = self._allocate(len(fresh))
            store.write(taken, words[which[fresh]].view(np.uint8), digests[fresh])
            slots[fresh] = taken
            self.index.insert(keys[fresh], taken, keep=self._live)
            for j, k in copies:
                slots[j] = slots[k]
        self.space.incref(slots)
        return slots

    def _store_one(self, chunk: memoryview, i: int) -> np.ndarray:
        """store_blocks for one block (a small random write), in scalars: numpy's per-call cost
        is most of the time of a one-block batch."""
        bs = self.block_size
        block = chunk[i * bs:(i + 1) * bs]
        digest = self.fingerprint(block)
        key = int.from_bytes(digest[:8], "little") or 1          # as keys_of does
        slot = self.index.lookup_one(key)
        store = self.store
        if slot and self.space.refcounts[slot] and store.hashes[slot].tobytes() == digest:
            if store.block(slot) != bytes(block):
                self.collisions += 1
                slot = 0
        else:
            slot = 0
        if not slot:
            slot = int(self._allocate(1)[0])
            store.data[slot] = np.frombuffer(block, dtype=np.uint8)
            store.hashes[slot] = np.frombuffer(digest, dtype=np.uint64)
            self.index.insert(np.array([key], dtype=np.uint64), np.array([slot], dtype=np.uint64),
                              keep=self._live)
        self.space.refcounts[slot] += 1
        return np.array([slot], dtype=np.uint64)

    def _allocate(self, n: int) -> np.ndarray:
        slots = self.space.allocate(n)
        if slots is None:
            self.space.add_slots(self.store.grow(n - self.space.free_count))
            slots = self.space.allocate(n)
        return slots

    def _live(self, slots: np.ndarray) -> np.ndarray:
        return self.space.refcounts[slots] > 0

    def decref(self, addrs: np.ndarray) -> None:
        self.space.decref(addrs)

    # -- read path ----------------------------------------------------------------------------

    def gather(self, addrs: np.ndarray) -> np.ndarray:
        """The bytes of each (non-zero) address, as n × block_size."""
        return self.store.data[addrs]

    def block_bytes(self, addr: int) -> bytes:
        return self.store.block(addr)

    # -- durability ---------------------------------------------------------------------------

    def sync(self) -> None:
        """Before the block tables commit: the blocks they point at must be on disk."""
        self.store.sync()

    def committed(self) -> None:
        """After the block tables commit: slots they no longer reference become reusable."""
        released = self.space.commit()
        if len(released):
            self.store.clear_hashes(released)

    # -- rebuild ------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.index is not None

    def rebuild(self, conn, layers: set[int], *, full: bool, progress, cancel,
                reclaim: bool) -> dict:
        result = rebuild(conn, self.store, layers, full=full, fingerprint=self.fingerprint,
                         progress=progress, cancel=cancel, reclaim=reclaim)
        self.index, self.space, self.corrupt = result.index, result.space, result.corrupt
        return result.figures

    # -- views --------------------------------------------------------------------------------

    def live(self) -> np.ndarray:
        return np.flatnonzero(self.space.refcounts).astype(np.uint64)

    def refcounts_of(self, addrs: np.ndarray) -> np.ndarray:
        return self.space.refcounts[addrs]

    def fingerprints_of(self, addrs: np.ndarray) -> np.ndarray:
        return self.store.hashes[addrs]

    def summary(self) -> dict:
        space = self.space
        used = space.used_count
        memory = self.index.nbytes + space.nbytes
        return {
            "unique_blocks": used,
            "free_slots": space.free_count,
            "capacity_bytes": self.store.capacity * self.block_size,
            "collisions": self.collisions,
            "corrupt_blocks": len(self.corrupt),
            "refcount_histogram": refcount_histogram(space.refcounts),
            "metadata_ram_bytes": memory,
            "metadata_ram_bytes_per_block": round(memory / used, 2) if used else 0,
        }

    def fsck(self, references: np.ndarray, report, progress) -> None:
        fsck_mod.check_slots(self, references, report, progress)

    def close(self) -> None:
        self.store.close()
