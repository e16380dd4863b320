"""Memory: RAM bytes per unique block for the fingerprint index, refcounts and free map.

Synthetic, over N unique blocks (10 M by default): the structures the pool keeps in RAM,
engine.index.FingerprintIndex and engine.spacemap.SpaceMap, are filled with N random 128-bit
digests, sized the two ways a pool sizes them:

  after rebuild   as every open does: the index is made for N / REBUILD_LOAD entries; the slot
                  file has 25 % more slots than are used (BlockStore.grow adds a quarter at a
                  time, so a real pool has 0-25 % spare), and those free slots sit on the free
                  stack
  grown by writes as inline dedup grows it: inserts of 512 (one block-table page) at a time into
                  an index that starts empty, and a slot file exactly full

"B per unique block" counts the arrays' bytes (what stats() reports); "RSS growth" is the process's
resident growth while building them, a cross-check that also holds temporaries and allocator slack.

Real pool: stats()["metadata_ram_bytes_per_block"] of a pool holding REAL MiB of unique data,
freshly opened. Target: <= 32 B per unique block. For comparison, ZFS keeps 150-320 B per
dedup-table entry in core and bees 16 B.

    python -m tests.bench.memory [--data bench-data] [--blocks 10000000] [--real-mib 256]
"""

from __future__ import annotations

import shutil

import numpy as np

from engine.fingerprint import keys_of
from engine.index import REBUILD_LOAD, FingerprintIndex
from engine.pool import Pool
from engine.spacemap import SpaceMap

from .common import MiB, parser, report, scratch, timer, verdict

TARGET = 32
GROWTH_SLACK = 0.25          # BlockStore.grow adds max(needed, capacity // 4) slots
PAGE = 512
PEERS = "ZFS DDT 150-320 B per entry in core; bees 16 B per entry"


def resident() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def after_rebuild(keys: np.ndarray) -> dict:
    n = len(keys)
    before = resident()
    slots = np.arange(1, n + 1, dtype=np.uint64)
    index = FingerprintIndex(int(n / REBUILD_LOAD) + 1)  # as engine.rebuild sizes it
    for start in range(0, n, 1 << 20):
        index.insert(keys[start:start + (1 << 20)], slots[start:start + (1 << 20)])
    capacity = 1 + n + int(n * GROWTH_SLACK)
    refcounts = np.zeros(capacity, dtype=np.int64)
    refcounts[1:n + 1] = 1
    space = SpaceMap.from_refcounts(refcounts)
    del refcounts, slots
    return parts(index, space, n, resident() - before)


def grown_by_writes(keys: np.ndarray) -> dict:
    n = len(keys)
    before = resident()
    index = FingerprintIndex()
    space = SpaceMap(1)
    space.add_slots(np.arange(1, n + 1, dtype=np.uint64))
    for start in range(0, n, PAGE):
        taken = space.allocate(min(PAGE, n - start))
        space.incref(taken)
        index.insert(keys[start:start + PAGE], taken,
                     keep=lambda s: space.refcounts[s] > 0)
    return parts(index, space, n, resident() - before)


def parts(index: FingerprintIndex, space: SpaceMap, n: int, rss: int) -> dict:
    free = space.nbytes - space.refcounts.nbytes          # the free stack, as held
    return {"index_bytes": index.nbytes, "index_cells": len(index.keys),
            "index_load": round(index.count / len(index.keys), 3),
            "refcount_bytes": space.refcounts.nbytes, "free_map_bytes": free,
            "total_bytes": index.nbytes + space.nbytes,
            "per_block": (index.nbytes + space.nbytes) / n, "rss_per_block": rss / n}


def real_pool(where, real_mib: int, seed: int) -> dict:
    pool_dir = where / "pool"
    Pool.create(pool_dir)
    rng = np.random.default_rng(seed)
    with Pool.open(pool_dir) as pool:
        pool.create_vm("unique", real_mib * MiB)
        for off in range(0, real_mib * MiB, 2 * MiB):
            pool.write("unique", off, rng.bytes(2 * MiB))
    with Pool.open(pool_dir) as pool:
        stats = pool.stats()
    shutil.rmtree(where)
    return stats


def main(argv=None) -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--blocks", type=int, default=10_000_000, help="unique blocks (default 10 M)")
    p.add_argument("--real-mib", type=int, default=256,
                   help="unique data in the real pool (default 256)")
    p.add_argument("--seed", type=int, default=2)
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    keys = keys_of(rng.integers(0, 2**64 - 1, (args.blocks, 2), dtype=np.uint64,
                                endpoint=True))
    with timer() as t1:
        rebuilt = after_rebuild(keys)
    with timer() as t2:
        grown = grown_by_writes(keys)
    stats = real_pool(scratch(args.data, "memory"), args.real_mib, args.seed)
    real = stats["metadata_ram_bytes_per_block"]

    rows = [("layout", "index", "refcounts", "free map", "B per unique block",
             "RSS growth per block", "target <= 32 B")]
    for label, f in ((f"{args.blocks:,} blocks, after rebuild", rebuilt),
                     (f"{args.blocks:,} blocks, grown by writes", grown)):
        rows.append((label,
                     f"{f['index_bytes'] / MiB:.0f} MiB ({f['index_cells']:,} cells,"
                     f" load {f['index_load']:.2f})",
                     f"{f['refcount_bytes'] / MiB:.0f} MiB", f"{f['free_map_bytes'] / MiB:.0f} MiB",
                     f"{f['per_block']:.1f}", f"{f['rss_per_block']:.1f}",
                     verdict(f["per_block"], TARGET, False)))
    rows.append((f"real pool, {stats['unique_blocks']:,} blocks (stats())", "", "", "",
                 f"{real:.1f}", "", verdict(real, TARGET, False)))
    rows.append(("peers", PEERS, "", "", "", "", ""))
    report("memory", "RAM per unique block: index + refcounts + free map", rows,
           {"blocks": args.blocks, "after_rebuild": rebuilt, "grown_by_writes": grown,
            "build_s": [round(t1(), 2), round(t2(), 2)],
            "real_pool_blocks": stats["unique_blocks"], "real_pool_per_block": real,
            "target": TARGET, "verdict_after_rebuild": verdict(rebuilt["per_block"], TARGET, False),
            "verdict_grown": verdict(grown["per_block"], TARGET, False),
            "verdict_real": verdict(real, TARGET, False), "peers": PEERS})


if __name__ == "__main__":
    main()
