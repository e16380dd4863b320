"""Where a local pool's blocks live: slots on disk, with the fingerprint index, refcounts and free
slots in RAM. This is the block layer (engine.blocklayer.BlockLayer) of a pool on this machine.
"""

from __future__ import annotations

import numpy as np

from . import fsck as fsck_mod
from .blockstore import BlockStore
from .errors import CorruptBlockError
from .fingerprint import Fingerprinter, keys_of
from .index import FingerprintIndex
from .progress import ProgressCallback
from .rebuild import PHASES, PageScan, rebuild
from .stats import refcount_histogram


class LocalBlocks:
    rebuild_phases = PHASES

    def __init__(self, store: BlockStore, fingerprints: Fingerprinter, collisions: int = 0):
        self.store = store
        self.block_size = store.block_size
        self.fingerprints = fingerprints
        self.collisions = collisions
        self.index: FingerprintIndex | None = None   # None until the first rebuild
        self.space = None
        self.corrupt = np.zeros(0, dtype=np.uint64)

    # -- write path ---------------------------------------------------------------------------

    def store_blocks(self, blocks: np.ndarray) -> np.ndarray:
        """Stores or shares each of n blocks (n × block_size uint8); returns their addresses,
        referenced. All or nothing: the slots it needs are taken before anything is written, so
        NoSpaceError leaves everything as it was."""
        if len(blocks) == 1:
            return self._store_one(blocks[0])
        digests = self.fingerprints.of(blocks)
        words = blocks.view(np.uint64)
        keys = keys_of(digests)
        found = self.index.lookup(keys)
        slots = np.zeros(len(blocks), dtype=np.uint64)
        store, refcounts = self.store, self.space.refcounts

        # An index hit is only advice: the slot must be live, hold the same fingerprint, and the
        # same bytes (compared for the whole batch at once, as 64-bit words). Same fingerprint but
        # other bytes is a collision: the block is stored apart.
        collisions = 0
        hit = np.flatnonzero(found)
        if len(hit):
            cand = found[hit]
            same = (refcounts[cand] > 0) & (store.hashes[cand] == digests[hit]).all(axis=1)
            same &= ~np.isin(cand, self.corrupt)        # a rotten slot is never shared
            hit, cand = hit[same], cand[same]
            equal = (store.words[cand] == words[hit]).all(axis=1)
            slots[hit[equal]] = cand[equal]
            collisions += int(np.count_nonzero(~equal))

        # Blocks not in the pool yet; equal ones within this batch share one new slot.
        new = np.flatnonzero(slots == 0)
        if len(new):
            first_of: dict[bytes, int] = {}
            fresh, copies = [], []
            for j in new.tolist():
                k = first_of.setdefault(digests[j].tobytes(), j)
                if k == j:
                    fresh.append(j)
                elif np.array_equal(words[k], words[j]):
                    copies.append((j, k))
                else:
                    collisions += 1
                    fresh.append(j)
            fresh = np.array(fresh, dtype=np.int64)
            taken = self._allocate(len(fresh))          # the only step that may fail
            store.write(taken, blocks[fresh], digests[fresh])
            slots[fresh] = taken
            self.index.insert(keys[fresh], taken, keep=self._live)
            for j, k in copies:
                slots[j] = slots[k]
        self.collisions += collisions
        self.space.incref(slots)
        return slots

    def _store_one(self, block: np.ndarray) -> np.ndarray:
        """store_blocks for one block (a small random write), in scalars: numpy's per-call cost
        is most of the time of a one-block batch."""
        digest = self.fingerprints.one(block)
        key = int.from_bytes(digest[:8], "little") or 1          # as keys_of does
        slot = self.index.lookup_one(key)
        store = self.store
        if (slot and self.space.refcounts[slot] and store.hashes[slot].tobytes() == digest
                and slot not in self.corrupt):
            if store.block(slot) != block.tobytes():
                self.collisions += 1
                slot = 0
        else:
            slot = 0
        if not slot:
            slot = int(self._allocate(1)[0])
            store.data[slot] = block
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
        """The bytes of each (non-zero) address, as n × block_size, each checked against its
        stored fingerprint (as ZFS checks every read). Raises CorruptBlockError for the first
        block that does not match, which is remembered as corrupt."""
        data = self.store.data[addrs]
        bad = (self.fingerprints.of(data) != self.store.hashes[addrs]).any(axis=1)
        if bad.any():
            self._corrupt_read(addrs[np.flatnonzero(bad)])
        return data

    def block_bytes(self, addr: int) -> bytes:
        """One block's bytes, checked as gather() checks them."""
        data = self.store.block(addr)
        if self.fingerprints.one(data) != self.store.hashes[addr].tobytes():
            self._corrupt_read(np.array([addr], np.uint64))
        return data

    def _corrupt_read(self, addrs: np.ndarray) -> None:
        self.corrupt = np.union1d(self.corrupt, addrs.astype(np.uint64))
        first = int(addrs[0])
        raise CorruptBlockError(f"slot {first} is corrupt: its bytes no longer match its"
                                " fingerprint", address=first)

    def scrub(self, after: int, limit: int) -> tuple[int, int, np.ndarray]:
        """Verifies up to `limit` live blocks with addresses above `after` against their
        fingerprints: (the last address checked, or 0 when none was left; how many were
        checked; those found rotten, which join `corrupt`)."""
        live = np.flatnonzero(self.space.refcounts[after + 1:]) + after + 1
        slots = live[:limit].astype(np.uint64)
        if not len(slots):
            return 0, 0, np.zeros(0, np.uint64)
        fresh = self.fingerprints.of_slots(self.store.view(), slots)
        bad = slots[(fresh != self.store.hashes[slots]).any(axis=1)]
        if len(bad):
            self.corrupt = np.union1d(self.corrupt, bad)
        return int(slots[-1]), len(slots), bad

    # -- durability ---------------------------------------------------------------------------

    def sync(self) -> None:
        """Before the block tables commit: the blocks they point at must be on disk."""
        self.store.sync()

    @property
    def has_pending(self) -> bool:
        return self.space.has_pending

    def seal(self) -> int:
        return self.space.seal()

    def unseal(self, epoch: int) -> None:
        self.space.unseal(epoch)

    def release(self, epoch: int) -> None:
        """The commit of `epoch` is durable: the slots it stopped referencing become reusable."""
        released = self.space.release(epoch)
        if len(released):
            self.store.clear_hashes(released)
            self.corrupt = np.setdiff1d(self.corrupt, released)

    # -- rebuild ------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.index is not None

    def rebuild(self, pages: PageScan, *, full: bool, progress: ProgressCallback | None,
                cancel, reclaim: bool, known_corrupt: np.ndarray) -> dict:
        result = rebuild(pages, self.store, full=full, fingerprints=self.fingerprints,
                         progress=progress, cancel=cancel, reclaim=reclaim,
                         known_corrupt=known_corrupt)
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
