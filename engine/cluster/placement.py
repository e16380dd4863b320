"""Weighted rendezvous hashing (highest random weight): which nodes should hold a block.

Every (block id, node) pair gets a pseudo-random score, scaled by the node's weight as
-weight / ln(u) for u uniform in (0, 1); a block's nodes are those with the highest scores.
Adding or losing a node moves only the blocks that node wins or held. Vectorised over ids.
"""

from __future__ import annotations

import numpy as np
import xxhash

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def node_seed(name: str) -> int:
    return xxhash.xxh3_64_intdigest(name.encode())


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a good 64-bit mix, in numpy."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def ranking(ids: np.ndarray, seeds: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """For each id, every node index from most to least preferred: len(ids) × len(seeds)."""
    h = _mix(ids.astype(np.uint64)[:, None] ^ seeds.astype(np.uint64)[None, :])
    u = ((h >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)
    score = -weights.astype(np.float64)[None, :] / np.log(u)
    return np.argsort(-score, axis=1, kind="stable")


def targets(ids: np.ndarray, seeds: np.ndarray, weights: np.ndarray, up: np.ndarray,
            replicas: int, order: np.ndarray | None = None) -> np.ndarray:
    """The first `replicas` up nodes of each id, as a bool matrix len(ids) × nodes. `order`:
    ranking(ids, seeds, weights), if the caller has it already."""
    order = ranking(ids, seeds, weights) if order is None else order
    up_ranked = up[order]
    rank_among_up = np.cumsum(up_ranked, axis=1)
    chosen = up_ranked & (rank_among_up <= replicas)
    out = np.zeros_like(chosen)
    np.put_along_axis(out, order, chosen, axis=1)
    return out
