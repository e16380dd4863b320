"""Mechanism 1: rebuild the RAM dedup metadata from what is persistent.

Phases, each reported through the progress callback:
  tables  read every block-table page; count references per slot (the refcounts)
  hashes  get each live slot's fingerprint once, using the reconstruction map of slots already
          seen: fast mode takes the stored one, full mode re-reads and re-hashes the data and
          reports a mismatch as a corrupt block
  index   insert the live fingerprints into a fresh index
  space   free every unreferenced slot, and reclaim orphans: slots that hold data (a stored
          fingerprint) but that no table references, as a crash mid-write leaves behind
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from collections.abc import Iterable

import numpy as np

from .blocktable import owned
from .blockstore import BlockStore
from .errors import CancelledError
from .fingerprint import Fingerprinter, keys_of
from .index import REBUILD_LOAD, FingerprintIndex
from .progress import Meter, ProgressCallback
from .spacemap import SpaceMap

PHASES = ("tables", "hashes", "index", "space")     # as reported to the progress callback
HASH_BATCH = 4096
INDEX_BATCH = 1 << 20


@dataclass
class PageScan:
    """The block-table pages a rebuild counts: rows of (layer, page number, entries bytes) over
    `total` rows, of which only those of `layers` (the live ones) count."""
    rows: Iterable[tuple[int, int, bytes]]
    total: int
    layers: set[int]

    def references(self, cancel=None, progress=None, batch: int = 1 << 20):
        """The block addresses the live pages hold, in arrays of about `batch`."""
        meter = Meter(progress, "tables", self.total)
        pending, pending_n = [], 0
        for layer, _pno, blob in self.rows:
            meter.advance()
            if layer not in self.layers:
                continue
            addrs = owned(np.frombuffer(blob, dtype=np.uint64))
            pending.append(addrs)
            pending_n += len(addrs)
            if pending_n >= batch:
                yield np.concatenate(pending)
                pending, pending_n = [], 0
                if cancel is not None and cancel.is_set():
                    raise CancelledError("rebuild cancelled")
        if pending:
            yield np.concatenate(pending)
        meter.finish()


@dataclass
class Rebuilt:
    index: FingerprintIndex
    space: SpaceMap
    corrupt: np.ndarray
    figures: dict = field(default_factory=dict)


def rebuild(pages: PageScan, store: BlockStore, *, full: bool, fingerprints: Fingerprinter,
            progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
            reclaim: bool = True, known_corrupt: np.ndarray | None = None) -> Rebuilt:
    """Rebuilds the RAM metadata from the references in `pages`. `known_corrupt`: slots found
    rotten before (remembered in the catalog); those still referenced stay corrupt."""
    started = time.monotonic()
    bs = store.block_size
    capacity = store.capacity

    def check_cancel():
        if cancel is not None and cancel.is_set():
            raise CancelledError("rebuild cancelled")

    # tables: refcounts from every page of every live layer
    refcounts = np.zeros(capacity, dtype=np.int64)
    bad_refs, references = 0, 0
    for addrs in pages.references(cancel, progress, INDEX_BATCH):
        bad_refs += _count(refcounts, addrs)
        references += len(addrs)
    refcounts[0] = 0
    live = np.flatnonzero(refcounts).astype(np.uint64)  # the reconstruction map: each slot once

    # hashes: stored (fast) or recomputed from the data (full)
    digests = store.hashes[live].copy()
    corrupt = np.zeros(0, dtype=np.uint64)
    meter = Meter(progress, "hashes", len(live), unit_bytes=bs)
    if full:
        bad = []
        data = store.view()      # slices of a memoryview: no copy per block
        for start in range(0, len(live), HASH_BATCH):
            check_cancel()
            chunk = live[start:start + HASH_BATCH]
            fresh = fingerprints.of_slots(data, chunk)
            mismatch = (fresh != digests[start:start + HASH_BATCH]).any(axis=1)
            bad.append(chunk[mismatch])
            meter.advance(len(chunk))
        corrupt = np.concatenate(bad) if bad else corrupt
    else:
        meter.advance(len(live))
    meter.finish()
    if not full and known_corrupt is not None and len(known_corrupt):
        # A full rebuild judges every block afresh; a fast one keeps what was found before.
        corrupt = known_corrupt[np.isin(known_corrupt, live)]

    # index: every live, sound fingerprint
    sound = ~np.isin(live, corrupt)
    keys, slots = keys_of(digests[sound]), live[sound]
    index = FingerprintIndex(int(len(keys) / REBUILD_LOAD) + 1)
    meter = Meter(progress, "index", len(keys))
    for start in range(0, len(keys), INDEX_BATCH):
        check_cancel()
        index.insert(keys[start:start + INDEX_BATCH], slots[start:start + INDEX_BATCH])
        meter.advance(min(INDEX_BATCH, len(keys) - start))
    meter.finish()

    # space: free map, orphans
    meter = Meter(progress, "space", 1)
    space = SpaceMap.from_refcounts(np.minimum(refcounts, np.iinfo(np.uint32).max))
    free = space.free_slots()
    orphans = free[(store.hashes[free] != 0).any(axis=1)] if len(free) else free
    if reclaim and len(orphans):
        store.clear_hashes(orphans)
        store.sync()
    meter.finish()

    seconds = time.monotonic() - started
    figures = {
        "mode": "full" if full else "fast",
        "seconds": round(seconds, 4),
        "pages": pages.total,
        "references": references,
        "blocks": len(live),
        "bytes": len(live) * bs,
        "bytes_per_s": int(len(live) * bs / seconds) if seconds > 0 else 0,
        "corrupt_blocks": [int(x) for x in corrupt],
        "bad_references": bad_refs,
        "orphans_reclaimed": len(orphans),
        "free_slots": len(free),
        "capacity_slots": capacity,
    }
    return Rebuilt(index, space, corrupt, figures)


def _count(refcounts: np.ndarray, addrs: np.ndarray) -> int:
    """Adds references to refcounts; returns how many pointed past the end of the data file."""
    inside = addrs < len(refcounts)
    refcounts += np.bincount(addrs[inside].astype(np.int64), minlength=len(refcounts))
    return int(np.count_nonzero(~inside))
