"""The one fingerprint: a block's xxh3-128, as its canonical 16-byte digest.

Everything that names a block by its content (the index, stored fingerprints, cluster block ids,
fsck, scrub) takes it from here. A pool may be opened with another per-block function (tests use one
that always collides); `Fingerprinter` applies whichever was chosen to whole batches.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import xxhash

from . import _native

DIGEST_BYTES = 16

fingerprint: Callable[[bytes], bytes] = xxhash.xxh3_128_digest


class Fingerprinter:
    """Fingerprints of blocks in batches: n × block_size bytes in, n × 2 uint64 words out."""

    def __init__(self, block_size: int, one: Callable[[bytes], bytes] = fingerprint):
        self.block_size = block_size
        self.one = one

    def of(self, data) -> np.ndarray:
        """The digests of each block of `data` (a bytes-like of n whole blocks, contiguous), as
        n × 2 words."""
        view = memoryview(data)
        if not view.nbytes:     # an empty n-d array's view cannot be cast (TypeError)
            return np.zeros((0, 2), np.uint64)
        view = view.cast("B")
        bs = self.block_size
        one = self.one
        if one is fingerprint:          # the native core's: one call, without the GIL
            return np.frombuffer(_native.fingerprints(view, bs), dtype=np.uint64).reshape(-1, 2)
        joined = b"".join([one(view[i:i + bs]) for i in range(0, len(view), bs)])
        return np.frombuffer(joined, dtype=np.uint64).reshape(-1, 2)

    def of_slots(self, view: memoryview, slots: np.ndarray) -> np.ndarray:
        """The digests of the blocks at `slots` of a whole data file's view, as n × 2 words."""
        bs = self.block_size
        one = self.one
        joined = b"".join([one(view[s * bs:(s + 1) * bs]) for s in slots.tolist()])
        return np.frombuffer(joined, dtype=np.uint64).reshape(-1, 2)


def keys_of(digests: np.ndarray) -> np.ndarray:
    """The 64-bit index keys of n × 2-word digests; 0 marks an empty cell, so it maps to 1."""
    keys = digests[:, 0].copy()
    keys[keys == 0] = 1
    return keys
