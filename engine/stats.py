"""Pool-wide and per-VM figures: logical and physical bytes, dedup ratio, sharing, chain depth."""

from __future__ import annotations

import numpy as np

from .blocktable import INHERIT, ZERO, owned


def _count_visible(page: np.ndarray | None) -> int:
    if page is None:
        return 0
    return int(np.count_nonzero((page != INHERIT) & (page != ZERO)))


def visible_blocks(pool, layer: int) -> int:
    """How many blocks read as data through `layer`. Frozen layers never change: cached."""
    chain = []
    base = 0
    lid = layer
    while lid is not None:
        if lid not in pool.tops and lid in pool._visible_cache:
            base = pool._visible_cache[lid]
            break
        chain.append(lid)
        lid = pool.parents[lid]
    for lid in reversed(chain):
        parent = pool.parents[lid]
        for pno in pool.tables.page_numbers(lid):
            below = pool.tables.resolved(parent, pno) if parent is not None else None
            base += _count_visible(pool.tables.resolved(lid, pno)) - _count_visible(below)
        if lid not in pool.tops:
            pool._visible_cache[lid] = base
    return base


def vm_stats(pool, vm) -> dict:
    bs = pool.block_size
    logical = visible_blocks(pool, vm.top)
    unique = 0
    if pool.space is not None:
        mine = pool.tables.layer_entries(vm.top)
        unique = int(np.count_nonzero(pool.space.refcounts[mine] == 1))
    return {
        "name": vm.name,
        "size": vm.size,
        "logical_bytes": logical * bs,
        "logical_blocks": logical,
        "unique_blocks": unique,
        "shared_blocks": logical - unique,
        "depth": len(pool.chain(vm.top)),
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
    vms = [vm_stats(pool, vm) for vm in sorted(pool.vms.values(), key=lambda v: v.name)]
    logical = sum(v["logical_bytes"] for v in vms)
    space = pool.space
    used = space.used_count if space is not None else 0
    physical = used * bs
    memory = (pool.index.nbytes + space.nbytes) if space is not None else 0
    return {
        "path": str(pool.path),
        "block_size": bs,
        "state": "rebuilding" if pool.rebuilding else "ready",
        "logical_bytes": logical,
        "physical_bytes": physical,
        "dedup_ratio": round(logical / physical, 3) if physical else 1.0,
        "unique_blocks": used,
        "free_slots": space.free_count if space is not None else 0,
        "capacity_bytes": pool.store.capacity * bs,
        "collisions": pool.collisions,
        "corrupt_blocks": len(pool.corrupt),
        "refcount_histogram": refcount_histogram(space.refcounts) if space is not None else {},
        "metadata_ram_bytes": memory,
        "metadata_ram_bytes_per_block": round(memory / used, 2) if used else 0,
        "rebuilds": pool.catalog.rebuilds(5),
        "vms": vms,
    }
