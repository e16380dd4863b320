"""Pool-wide and per-VM figures: logical and physical bytes, dedup ratio, sharing, chain depth.

Counts of blocks that read as data come from the core (cached for frozen layers, so a VM's
figures cost only its own top layer); refcounts and the pool-wide figures from the block layer.
"""

from __future__ import annotations

import numpy as np

from .reserve import Reserve

FINGERPRINT_BYTES = 16      # a slot's entry in hashes.dat, beside its block in blocks.dat
CATALOG_PAGE_BYTES = 5 << 10    # disk kept for one block-table page's row or delete (core.rs)
PAGE_ENTRIES = 512


def vm_stats(pool, vm) -> dict:
    bs = pool.block_size
    logical = pool.core.visible_blocks(vm.top)
    unique = own_lbns = 0
    if pool.blocks.ready and not pool.rebuilding:
        mine, own_lbns = held_only_by(pool, vm.top)
        unique = len(mine)
    return {
        "name": vm.name,
        "size": vm.size,
        "logical_bytes": logical * bs - _past_end(pool, vm, logical),
        "logical_blocks": logical,
        "unique_blocks": unique,
        "shared_blocks": logical - own_lbns,
        "depth": len(pool.graph.chain(vm.top)),
        "origin": vm.origin,
        "created": vm.created,
        "snapshots": len(pool.graph.snaps(vm.name)),
    }


def _past_end(pool, vm, logical: int) -> int:
    """The bytes of the VM's last block past its end, if that block reads as data: a VM whose
    size is not a whole number of blocks reads only its part (on a 64 KiB pool, 100 KiB of data
    counted 128 KiB)."""
    tail = vm.size % pool.block_size
    last = vm.size // pool.block_size
    if not tail or not logical or pool.core.next_mapped(vm.name, last) != last:
        return 0
    return pool.block_size - tail


def held_only_by(pool, layer: int) -> tuple[np.ndarray, int]:
    """The blocks every reference of which is one of `layer`'s LBNs, each once (a block at 100
    of its LBNs has refcount 100: it is still only this layer's), and how many of its LBNs
    hold them."""
    blocks, lbns = np.unique(pool.core.layer_entries(layer), return_counts=True)
    alone = pool.blocks.refcounts_of(blocks) == lbns
    return blocks[alone], int(lbns[alone].sum())


def held_alone(pool, layers) -> dict[int, int]:
    """How many blocks each snapshot layer of `layers` holds alone: referenced by it alone, and
    read by no VM (what removing the snapshot may free). The readers of all of them are counted
    in one call: the core builds who reads each block once per change of the layer graph, and a
    call costs O(VMs) whatever it asks (one per block took 16,384 calls for a 64 MiB snapshot)."""
    held = {layer: held_only_by(pool, layer)[0] for layer in layers}
    unread = pool.core.readers_of(np.concatenate([np.empty(0, np.uint64), *held.values()])) == 0
    counts, at = {}, 0
    for layer, blocks in held.items():
        counts[layer] = int(unread[at:at + len(blocks)].sum())
        at += len(blocks)
    return counts


def snapshot_blocks(pool) -> int:
    """Blocks that only snapshots hold, over every snapshot."""
    return sum(held_alone(pool, {s.layer for s in pool.graph.snaps()}).values())


def refcount_histogram(refcounts: np.ndarray) -> dict[str, int]:
    """Live blocks by a count (their refcount, or the VMs reading them), in power-of-two
    buckets: 1, 2, 3-4, 5-8, …"""
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


def pool_capacity(block_size: int, free_slots: int, hollow_slots: int,
                  disk_room: int) -> int:
    """Bytes of new blocks a local pool has room for: what a write can take now.

    free_slots: its free slots, of which hollow_slots are holes (their space went back to the
    filesystem: each takes a block of disk again when a write reserves it); disk_room: bytes its
    slot files may still take on their filesystem (free space less the slop growth never takes
    and the catalog's room, see native/src/slots.rs). A hole is filled before the files grow, a
    slot the files grow by takes a block in blocks.dat and a fingerprint in hashes.dat, and
    every PAGE_ENTRIES blocks take a new block-table page, for which the catalog keeps two
    CATALOG_PAGE_BYTES of that room (native/src/core.rs): the blocks of a write to where the
    VM has no page yet."""
    def blocks(room: int) -> int:
        room = max(room, 0)
        filled = min(hollow_slots, room // block_size)
        grown = (room - filled * block_size) // (block_size + FINGERPRINT_BYTES)
        return free_slots - hollow_slots + filled + grown

    def fits(n: int) -> bool:
        return blocks(disk_room - -(-n // PAGE_ENTRIES) * 2 * CATALOG_PAGE_BYTES) >= n

    n = blocks(disk_room - -(-blocks(disk_room) // PAGE_ENTRIES) * 2 * CATALOG_PAGE_BYTES)
    for _ in range(2 * CATALOG_PAGE_BYTES // block_size + 2):   # the pages' share, a block less
        if not fits(n + 1):
            break
        n += 1
    return n * block_size


def pool_stats(pool) -> dict:
    bs = pool.block_size
    vms = [vm_stats(pool, vm) for vm in pool.graph.vms()]
    logical = sum(v["logical_bytes"] for v in vms)
    # In blocks, as the physical side is: a VM's last block, read in part, is stored whole.
    logical_blocks = sum(v["logical_blocks"] for v in vms)
    known = pool.blocks.ready and not pool.rebuilding
    blocks = pool.blocks.summary() if known else {}
    if known:
        blocks["readers_histogram"] = refcount_histogram(pool.core.readers_of(pool.blocks.live()))
        if pool.local:
            room = blocks.pop("disk_room_bytes")
            hollow = blocks.pop("hollow_slots")
            blocks["capacity_bytes"] = (None if room is None else
                                        pool_capacity(bs, blocks["free_slots"], hollow, room))
            blocks["usable_bytes"] = blocks["capacity_bytes"]
            blocks["reserve_bytes"] = Reserve(pool.path).held_bytes()
    physical = blocks.get("unique_blocks", 0) * bs
    return {
        "path": str(pool.path),
        "block_size": bs,
        "state": "rebuilding" if pool.rebuilding else "ready",
        "logical_bytes": logical,
        "physical_bytes": physical,
        "dedup_ratio": round(logical_blocks * bs / physical, 3) if physical else 1.0,
        "unique_blocks": 0,
        **blocks,
        "rebuilds": pool.catalog.rebuilds(5),
        "vms": vms,
        "snapshots": len(pool.graph.snaps()),
        "snapshot_blocks": snapshot_blocks(pool) if known else None,
        "damage": pool.core.damage,
    }
