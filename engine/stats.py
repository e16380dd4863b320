"""Pool-wide and per-VM figures: logical and physical bytes, dedup ratio, sharing, chain depth."""

from __future__ import annotations

import numpy as np

from .blocktable import INHERIT, ZERO


def _count_visible(page: np.ndarray | None) -> int:
    if page is None:
        return 0
    return int(np.count_nonzero((page != INHERIT) & (page != ZERO)))


def visible_blocks(pool, layer: int) -> int:
    """How many blocks read as data through `layer`. Frozen layers never change: the graph
    caches their counts."""
    graph, tables = pool.graph, pool.tables
    chain = []
    base = 0
    lid = layer
    while lid is not None:
        cached = graph.visible_cached(lid)
        if cached is not None:
            base = cached
            break
        chain.append(lid)
        lid = graph.parent(lid)
    for lid in reversed(chain):
        parent = graph.parent(lid)
        for pno in tables.page_numbers(lid):
            below = tables.resolved(parent, pno) if parent is not None else None
            base += _count_visible(tables.resolved(lid, pno)) - _count_visible(below)
        graph.remember_visible(lid, base)
    return base


def vm_stats(pool, vm) -> dict:
    bs = pool.block_size
    logical = visible_blocks(pool, vm.top)
    unique = 0
    if pool.blocks.ready and not pool.rebuilding:
        mine = pool.tables.layer_entries(vm.top)
        unique = int(np.count_nonzero(pool.blocks.refcounts_of(mine) == 1))
    return {
        "name": vm.name,
        "size": vm.size,
        "logical_bytes": logical * bs,
        "logical_blocks": logical,
        "unique_blocks": unique,
        "shared_blocks": logical - unique,
        "depth": len(pool.graph.chain(vm.top)),
        "origin": vm.origin,
        "created": vm.created,
    }


def refcount_histogram(refcounts: np.ndarray) -> dict[str, int]:
    """Live slots by refcount, in power-of-two buckets: 1, 2, 3-4, 5-8, …"""
    live = refcounts[refcounts > 0].astype(np.int64)
    if not len(live):
        return {}
    buckets = np.ceil(np.log2(live)).astype(np.int64)
    out = {}
    for b, n in enumerate(np.bincount(buckets)):
        if n:
            lo, hi = (1 << (b - 1)) + 1 if b else 1, 1 << b
            out[str(hi) if lo == hi else f"{lo}-{hi}"] = int(n)
    return out


def pool_stats(pool) -> dict:
    bs = pool.block_size
    vms = [vm_stats(pool, vm) for vm in pool.graph.vms()]
    logical = sum(v["logical_bytes"] for v in vms)
    blocks = pool.blocks.summary() if pool.blocks.ready and not pool.rebuilding else {}
    physical = blocks.get("unique_blocks", 0) * bs
    return {
        "path": str(pool.path),
        "block_size": bs,
        "state": "rebuilding" if pool.rebuilding else "ready",
        "logical_bytes": logical,
        "physical_bytes": physical,
        "dedup_ratio": round(logical / physical, 3) if physical else 1.0,
        "unique_blocks": 0,
        **blocks,
        "rebuilds": pool.catalog.rebuilds(5),
        "vms": vms,
    }
