"""A dedup estimate before import (the anchors are `zdb -S` and VDO's estimator): how many blocks
each image would add to a pool, and the pool's dedup ratio once all of them are in, without
writing anything.

Each image is read as `vm import` reads it (engine.diskformats: any format, holes skipped), a
batch of blocks at a time: blocks of zeros are dropped (they take no slot), the others are
fingerprinted by the native core (xxh3-128, on every core) and looked up in the pool, one call a
batch (`Admin.known_blocks`: read-only, the GIL released); fingerprints new to the pool are
counted once across all the images, in order. So the figures are those an import of the images,
one after the other, would reach at the pool's block size: equal blocks share one slot, zero
blocks none. (The estimate trusts a fingerprint match; an import compares the bytes too, so only
an xxh3-128 collision, which it would store apart, could tell them apart.)
"""

from __future__ import annotations

import threading

import numpy as np

from . import _native, diskformats
from .errors import BlockfoldError, CancelledError
from .progress import Meter, ProgressCallback
from .results import Estimate, ImageEstimate

BATCH_BLOCKS = 4096         # blocks fingerprinted and looked up per call


def estimate(admin, sources: list, progress: ProgressCallback | None = None,
             cancel: threading.Event | None = None, format: str | None = None) -> Estimate:
    """The estimate for importing `sources` (paths, "-", or open images) into `admin`'s pool.
    Progress phase "estimate", in bytes over all the images. Raises BadImageError (as vm
    import), BlockfoldError (a pool rebuilding its RAM metadata; a cluster), CancelledError."""
    stats = admin.stats()
    if stats.unique_blocks is None:
        raise BlockfoldError("the pool is rebuilding its RAM metadata: estimate once it is ready")
    bs = admin.block_size
    images = [diskformats.open_disk(s, format) for s in sources]
    try:
        # A stream (stdin) has size 0: the total is not known until it ends.
        total = sum(i.size for i in images) if all(i.size for i in images) else None
        meter = Meter(progress, "estimate", total, unit_bytes=1)
        seen: set[bytes] = set()            # fingerprints new to the pool, over every image
        found = [_one(admin, image, bs, seen, meter, cancel) for image in images]
    finally:
        for image in images:
            image.close()
    meter.finish()
    pool_logical = sum(vm.logical_blocks for vm in stats.vms)
    logical = pool_logical + sum(f.data_blocks for f in found)
    unique = stats.unique_blocks + len(seen)
    return Estimate(
        block_size=bs, images=found, pool_logical_blocks=pool_logical,
        pool_unique_blocks=stats.unique_blocks, pool_dedup_ratio=stats.dedup_ratio,
        new_blocks=len(seen), logical_blocks=logical, unique_blocks=unique,
        dedup_ratio=round(logical / unique, 3) if unique else 1.0)


def _one(admin, image, bs: int, seen: set, meter: Meter, cancel) -> ImageEstimate:
    data_blocks = known = new = 0
    size = image.size
    before = meter.done                 # the images before this one, in bytes
    for offset, data in image.chunks(BATCH_BLOCKS * bs):
        if cancel is not None and cancel.is_set():
            raise CancelledError("estimate cancelled")
        size = max(size, offset + len(data))
        if len(data) % bs:
            data = bytes(data) + bytes(-len(data) % bs)       # the last block, as import pads it
        blocks = np.frombuffer(data, np.uint64).reshape(-1, bs // 8)
        nonzero = np.flatnonzero(blocks.any(axis=1))
        if len(nonzero):
            digests = np.frombuffer(_native.fingerprints(data, bs), np.uint8).reshape(-1, 16)
            digests = digests[nonzero]
            hit = np.frombuffer(admin.known_blocks(digests.tobytes()), np.uint8).astype(bool)
            data_blocks += len(nonzero)
            known += int(hit.sum())
            for digest in digests[~hit]:
                key = digest.tobytes()
                if key not in seen:
                    seen.add(key)
                    new += 1
        meter.done = before + offset + len(data)
        meter.advance(0)
    return ImageEstimate(image=image.name, size=size, data_blocks=data_blocks,
                         known_blocks=known, new_blocks=new)
