"""Block ids: a block's cluster-wide address, from its fingerprint (engine.fingerprint).

A block's id is the first word of its xxh3-128 (variant 0) or, once that id is bound to other
bytes somewhere, xxh3-64 of the fingerprint's 16 bytes and the variant number (4 bytes,
little-endian), for variants 1 to VARIANTS. 0 and 2^64-1 are never ids: 0 becomes 1, 2^64-1
becomes 2^64-2. The coordinator names blocks this way (engine.cluster.writes); a node checks that
a peer's PUT brings bytes that hash to the ids they come under (engine.node.store).
"""

from __future__ import annotations

import numpy as np
import xxhash

# A write moves a block to its next variant at each collision, at most this far: far past any
# real run of 64-bit collisions, and a bound on what a node tries before it calls an id wrong.
VARIANTS = 64
MAX_ID = np.uint64(0xFFFF_FFFF_FFFF_FFFF)


def block_ids(digests: np.ndarray, variants: np.ndarray) -> np.ndarray:
    """The id of each fingerprint (n × 2 words) at its variant (n, 0 to VARIANTS)."""
    ids = digests[:, 0].copy()
    ids[ids == 0] = 1
    ids[ids == MAX_ID] = MAX_ID - np.uint64(1)
    for i in np.flatnonzero(variants).tolist():
        ids[i] = _variant(digests[i], int(variants[i]))
    return ids


def belong(ids: np.ndarray, digests: np.ndarray) -> np.ndarray:
    """Whether each id (n) is the id of its fingerprint (n × 2 words) at some variant. Ids of
    variant 0, all real ones but for a collision, cost one compare; any other tries every
    variant."""
    ok = ids == block_ids(digests, np.zeros(len(ids), np.int64))
    for i in np.flatnonzero(~ok).tolist():
        ok[i] = int(ids[i]) in {_variant(digests[i], v) for v in range(1, VARIANTS + 1)}
    return ok


def _variant(digest: np.ndarray, variant: int) -> int:
    """The id of a fingerprint (2 words) at a variant above 0."""
    got = xxhash.xxh3_64_intdigest(digest.tobytes() + variant.to_bytes(4, "little"))
    return 1 if got == 0 else got - 1 if got == int(MAX_ID) else got
