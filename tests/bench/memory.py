"""Memory: RAM per unique block for the fingerprint index, refcounts and free space, at its peak.

Target (issue 11): <= 16 bytes per unique block over 10 M blocks, at any moment, growth included.
For comparison, bees keeps 16 B per entry and ZFS 150-320 B per dedup-table entry in core.

Synthetic, over N unique blocks (10 M by default; a real pool of 10 M unique blocks would need
40 GiB of disk). Each layout is built in a fresh process of its own, so that its peak is its own:

  after rebuild    the engine's own rebuild (`engine.rebuild.rebuild`, fast mode, as every open
                   runs it) over N live slots: block-table pages that reference each slot once,
                   generated page by page as the catalog scan yields them, and a slot file with
                   the 25 % spare that BlockStore.grow can leave (its stored fingerprints stand
                   in for hashes.dat, allocated before the measurement starts, as a file mapping
                   would be outside the process's heap)
  grown by writes  what inline dedup does as new blocks arrive: batches of 512 (one block-table
                   page) allocated from the free space, the slot file grown as BlockStore.grow
                   grows it, inserted into an index that starts empty, referenced

Each layout is measured at every moment it has grown to at least a tenth of N blocks (before
that, fixed minimum sizes make a block look expensive), and the worst moment counts:
  held   the structures' bytes (index + refcounts + free space, as stats() counts them) between
         batches, over the blocks held then
  peak   the process's peak resident set since the moment before (VmHWM, reset through
         /proc/self/clear_refs after every batch), less its resident set when the inputs
         existed, over the blocks held before the batch: temporaries, and the moments when an
         old and a new table coexist, included, whatever allocated them (numpy or a native
         core). Checked against tracemalloc's peak of every Python and numpy allocation over a
         whole build: within 4 %.
The verdict is on the peak. Then a real pool: stats()["metadata_ram_bytes_per_block"] of a pool
holding REAL MiB of unique data, sampled after every 2 MiB write once a quarter is written, and
after a reopen.

    python -m tests.bench.memory [--data bench-data] [--blocks 10000000] [--real-mib 256]
"""

from __future__ import annotations

import multiprocessing
import re
import shutil
from dataclasses import dataclass

import numpy as np

from engine.blockstore import MIN_GROWTH_SLOTS
from engine.fingerprint import Fingerprinter, keys_of
from engine.index import FingerprintIndex
from engine.pool import Pool
from engine.rebuild import PageScan, rebuild
from engine.spacemap import SpaceMap

from .common import MiB, parser, report, scratch, timer, verdict

TARGET = 16
SPARE = 0.25                 # BlockStore.grow adds max(needed, capacity // 4) slots
PAGE = 512
PEERS = "bees 16 B per entry; ZFS DDT 150-320 B per entry in core"


def status(field: str) -> int:
    """A /proc/self/status figure, in bytes."""
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024


def digests(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**64 - 1, (n, 2), dtype=np.uint64,
                                                endpoint=True)


@dataclass
class SlotFile:
    """What the rebuild reads of a slot file: its size and the stored fingerprints."""
    capacity: int
    hashes: np.ndarray
    block_size: int = 4096

    def clear_hashes(self, slots) -> None:
        self.hashes[slots] = 0

    def sync(self) -> None:
        pass


class Moments:
    """The worst moment of a build: bytes per block held, and peak resident growth per block."""

    def __init__(self, floor: int):
        self.floor = floor
        self.held = self.peak = 0.0
        self.highest = 0

    def start(self) -> None:
        """The inputs exist: resident growth counts from here."""
        self._reset()
        self.base = status("VmRSS")

    def _reset(self) -> None:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                   # VmHWM := the current resident set

    def sample(self, held: int, blocks_before: int, blocks_after: int) -> None:
        grown = status("VmHWM") - self.base
        self.highest = max(self.highest, grown)
        if blocks_before >= self.floor:
            self.peak = max(self.peak, grown / blocks_before)
        if blocks_after >= self.floor:
            self.held = max(self.held, held / blocks_after)
        self._reset()


def after_rebuild(n: int, seed: int, moments: Moments) -> tuple:
    capacity = 1 + n + int(n * SPARE)
    store = SlotFile(capacity, np.zeros((capacity, 2), dtype=np.uint64))
    store.hashes[1:n + 1] = digests(n, seed)
    moments.start()

    def pages():
        for page, first in enumerate(range(1, n + 1, PAGE)):
            yield 0, page, np.arange(first, min(first + PAGE, n + 1), dtype=np.uint64).tobytes()

    scan = PageScan(pages(), -(-n // PAGE), {0})
    result = rebuild(scan, store, full=False, fingerprints=Fingerprinter(store.block_size),
                     reclaim=False)
    moments.sample(result.index.nbytes + result.space.nbytes, n, n)
    return result.index, result.space


def grown_by_writes(n: int, seed: int, moments: Moments) -> tuple:
    keys = keys_of(digests(n, seed))
    moments.start()
    index, space = FingerprintIndex(), SpaceMap(1)
    capacity = 1
    for first in range(0, n, PAGE):
        batch = keys[first:first + PAGE]
        taken = space.allocate(len(batch))
        if taken is None:              # as LocalBlocks._allocate and BlockStore.grow do
            extra = max(len(batch) - space.free_count, capacity // 4, MIN_GROWTH_SLOTS)
            space.add_slots(np.arange(capacity, capacity + extra, dtype=np.uint64))
            capacity += extra
            taken = space.allocate(len(batch))
        index.insert(batch, taken, keep=lambda s: space.refcounts[s] > 0)
        space.incref(taken)
        moments.sample(index.nbytes + space.nbytes, first, first + len(batch))
    return index, space


LAYOUTS = {"after_rebuild": after_rebuild, "grown_by_writes": grown_by_writes}


def layout(kind: str, n: int, seed: int) -> dict:
    """Builds one layout in this (fresh) process and measures it; see the module docstring."""
    moments = Moments(max(1, n // 10))
    with timer() as t:
        index, space = LAYOUTS[kind](n, seed, moments)
    return {"held_per_block": round(moments.held, 2), "peak_per_block": round(moments.peak, 2),
            "highest_bytes": moments.highest, "index_bytes": index.nbytes,
            "index_cells": len(index.keys), "index_load": round(index.count / len(index.keys), 3),
            "refcount_bytes": space.refcounts.nbytes,
            "free_bytes": space.nbytes - space.refcounts.nbytes, "seconds": round(t(), 2)}


def real_pool(where, real_mib: int, seed: int) -> dict:
    """stats()' RAM per block while a real pool grows by 2 MiB writes of unique data, and after
    a reopen. Samples before a quarter of the data is written are left out: the index's minimum
    size makes the first blocks look expensive."""
    pool_dir = where / "pool"
    Pool.create(pool_dir)
    rng = np.random.default_rng(seed)
    size = real_mib * MiB
    samples = []
    with Pool.open(pool_dir) as pool:
        pool.create_vm("unique", size)
        for off in range(0, size, 2 * MiB):
            pool.write("unique", off, rng.bytes(2 * MiB))
            if off >= size // 4:
                samples.append(pool.stats()["metadata_ram_bytes_per_block"])
    with Pool.open(pool_dir) as pool:
        stats = pool.stats()
    shutil.rmtree(where)
    return {"blocks": stats["unique_blocks"], "growing_peak": max(samples),
            "after_open": stats["metadata_ram_bytes_per_block"]}


def main(argv=None) -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--blocks", type=int, default=10_000_000, help="unique blocks (default 10 M)")
    p.add_argument("--real-mib", type=int, default=256,
                   help="unique data in the real pool (default 256)")
    p.add_argument("--seed", type=int, default=2)
    args = p.parse_args(argv)
    n = args.blocks
    spawn = multiprocessing.get_context("spawn")
    layouts = {}
    for kind in LAYOUTS:
        with spawn.Pool(1) as child:
            layouts[kind] = child.apply(layout, (kind, n, args.seed))
    real = real_pool(scratch(args.data, "memory"), args.real_mib, args.seed)

    rows = [("layout (worst moment)", "index (at the end)", "refcounts", "free space",
             "held B/block", "peak B/block",
             f"target <= {TARGET} B (peak)")]
    figures: dict = {"blocks": n, "target": TARGET, "peers": PEERS}
    for kind, f in layouts.items():
        rows.append((f"{n:,} blocks, {kind.replace('_', ' ')}",
                     f"{f['index_bytes'] / MiB:.0f} MiB ({f['index_cells']:,} cells, "
                     f"load {f['index_load']:.2f})",
                     f"{f['refcount_bytes'] / MiB:.0f} MiB", f"{f['free_bytes'] / MiB:.0f} MiB",
                     f"{f['held_per_block']:.1f}", f"{f['peak_per_block']:.1f}",
                     verdict(f["peak_per_block"], TARGET, False)))
        figures[kind] = f
        figures[f"{kind}_peak_per_block"] = f["peak_per_block"]
        figures[f"verdict_{kind}"] = verdict(f["peak_per_block"], TARGET, False)
    rows.append((f"real pool, {real['blocks']:,} blocks: stats() while growing (largest) and "
                 "after a reopen", "", "", "", f"{real['growing_peak']:.1f} / "
                 f"{real['after_open']:.1f}", "",
                 verdict(max(real["growing_peak"], real["after_open"]), TARGET, False)))
    figures.update(real_pool=real, verdict_real=verdict(max(real["growing_peak"],
                                                             real["after_open"]), TARGET, False))
    rows.append(("peers", PEERS, "", "", "", "", ""))
    report("memory", "RAM per unique block: index + refcounts + free space", rows, figures)


if __name__ == "__main__":
    main()
