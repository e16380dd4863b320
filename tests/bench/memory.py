"""Memory: RAM per unique block for the fingerprint index, refcounts and free space, at its peak.

Target (issue 11): <= 16 bytes per unique block over 10 M blocks, at any moment, growth included.
For comparison, bees keeps 16 B per entry and ZFS 150-320 B per dedup-table entry in core.

Over N unique blocks (10 M by default), each layout built in a fresh process of its own, so that
its peak is its own, through the native core's own calls (engine._native.Core):

  after rebuild    the core's rebuild (fast, as every open runs it) over N live slots: slot files
                   with the 25 % spare that growth can leave (blocks.dat sparse: a fast rebuild
                   reads no data; hashes.dat holding N fingerprints), and block-table pages that
                   reference each slot once, loaded before the measurement starts
  grown by writes  N unique blocks written through the core's data path (`Core.write`, 2 MiB
                   requests into one VM) into a pool that starts empty: the index, refcounts, free
                   space and slot files grow as writes need them. Blocks of 512 B, so that 10 M of
                   them take 5 GiB of disk, not 40: index, refcounts and free space cost the same
                   per slot whatever the block size

Each layout is measured at every moment it has grown to at least a tenth of N blocks (before
that, fixed minimum sizes make a block look expensive), and the worst moment counts:
  held   the core's own count (index + refcounts + free space, `metadata_bytes()`, as stats()
         shows it) between requests, over the blocks held then
  peak   the process's peak resident set since the moment before (VmHWM, reset through
         /proc/self/clear_refs after every request), less its resident set when the inputs
         existed, over the blocks held before: temporaries, and the moments when an old and a
         new table coexist, included. Left out, as they are not this metric: the mapped slot
         files (page cache: the growth of RssFile, which only grows here) and the block-table
         pages (4 KiB each, counted exactly; the LBN -> block map itself, 8 B per logical block).
The verdict is on the peak. Then a real pool: stats()["metadata_ram_bytes_per_block"] of a pool
holding REAL MiB of unique data, sampled after every 2 MiB write once a quarter is written, and
after a reopen.

    python -m tests.bench.memory [--data bench-data] [--blocks 10000000] [--real-mib 256]
"""

from __future__ import annotations

import multiprocessing
import re
import shutil
from pathlib import Path

import numpy as np

from engine import _native
from engine.options import positive
from engine.pool import Pool

from .common import MiB, arguments, parser, report, timer, verdict

TARGET = 16
SPARE = 0.25                 # a pool's slot files grow by a quarter of their capacity at a time
PAGE = _native.PAGE_ENTRIES
PAGE_BYTES = PAGE * 8
MAGIC = b"BLOCKFOLD-SLOTS\n"  # slot 0 of blocks.dat
REQUEST = 2 * MiB
PEERS = "bees 16 B per entry; ZFS DDT 150-320 B per entry in core"


def status(field: str) -> int:
    """A /proc/self/status figure, in bytes."""
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024


def digests(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**64 - 1, (n, 2), dtype=np.uint64,
                                                endpoint=True)


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
        self.base_file = status("RssFile")

    def _reset(self) -> None:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                   # VmHWM := the current resident set

    def sample(self, held: int, pages: int, blocks_before: int, blocks_after: int) -> None:
        """`pages`: block-table pages held beyond those at the start."""
        grown = (status("VmHWM") - self.base - (status("RssFile") - self.base_file)
                 - pages * PAGE_BYTES)
        self.highest = max(self.highest, grown)
        if blocks_before >= self.floor:
            self.peak = max(self.peak, grown / blocks_before)
        if blocks_after >= self.floor:
            self.held = max(self.held, held / blocks_after)
        self._reset()


def after_rebuild(n: int, seed: int, moments: Moments, where: Path) -> _native.Core:
    bs = 4096
    capacity = 1 + n + int(n * SPARE)
    with open(where / "blocks.dat", "wb") as f:
        f.write(MAGIC)
        f.truncate(capacity * bs)
    hashes = np.zeros((capacity, 2), np.uint64)
    hashes[1:n + 1] = digests(n, seed)
    hashes.tofile(where / "hashes.dat")
    del hashes
    core = _native.Core(str(where), bs)
    core.add_layer(1, None, True)

    def page(first: int) -> bytes:
        entries = np.zeros(PAGE, np.uint64)
        slots = np.arange(first, min(first + PAGE, n + 1), dtype=np.uint64)
        entries[:len(slots)] = slots
        return entries.tobytes()

    core.load_pages((1, pno, page(first)) for pno, first in enumerate(range(1, n + 1, PAGE)))
    # hashes.dat in the page cache and mapped, as after any open: a file's pages, not the heap's
    for first in range(0, capacity, 1 << 20):
        core.fingerprints_of(np.arange(first, min(first + (1 << 20), capacity), dtype=np.uint64))
    moments.start()
    core.rebuild()
    moments.sample(core.metadata_bytes(), 0, n, n)
    return core


def grown_by_writes(n: int, seed: int, moments: Moments, where: Path) -> _native.Core:
    bs = 512
    per = REQUEST // bs
    core = _native.Core(str(where), bs, create=True)
    core.rebuild()
    core.add_layer(1, None, True)
    core.set_vm("unique", 1, n * bs)
    blocks = np.zeros((per, bs // 8), np.uint64)
    blocks[:, 1] = seed
    moments.start()
    for first in range(0, n, per):
        count = min(per, n - first)
        blocks[:, 0] = np.arange(first + 1, first + per + 1, dtype=np.uint64)   # unique
        core.write("unique", first * bs, blocks[:count])
        pages = -(-(first + count) // PAGE)
        moments.sample(core.metadata_bytes(), pages, first, first + count)
    return core


LAYOUTS = {"after_rebuild": after_rebuild, "grown_by_writes": grown_by_writes}


def layout(kind: str, n: int, seed: int, where: str) -> dict:
    """Builds one layout in this (fresh) process and measures it; see the module docstring."""
    moments = Moments(max(1, n // 10))
    path = Path(where) / kind
    path.mkdir()
    try:
        with timer() as t:
            core = LAYOUTS[kind](n, seed, moments, path)
        summary = core.summary()
        core.close()
    finally:
        shutil.rmtree(path)
    return {"held_per_block": round(moments.held, 2), "peak_per_block": round(moments.peak, 2),
            "highest_bytes": moments.highest, "metadata_bytes": summary["metadata_ram_bytes"],
            "blocks": summary["unique_blocks"], "seconds": round(t(), 2)}


def real_pool(where, real_mib: int, seed: int) -> dict:
    """stats()' RAM per block while a real pool grows by writes of up to 2 MiB of unique data
    (`real_mib` MiB, 1 or more), and after a reopen. Samples before a quarter of the data is
    written are left out: the index's minimum size makes the first blocks look expensive. The
    last write ends the data, so there is always one (under 4 MiB, none was taken: a crash)."""
    pool_dir = where / "pool"
    Pool.create(pool_dir)
    rng = np.random.default_rng(seed)
    size = real_mib * MiB
    samples = []
    with Pool.open(pool_dir) as pool:
        pool.create_vm("unique", size)
        for off in range(0, size, 2 * MiB):
            end = min(off + 2 * MiB, size)      # an odd size's last write is 1 MiB
            pool.write("unique", off, rng.bytes(end - off))
            if end > size // 4:
                samples.append(pool.stats()["metadata_ram_bytes_per_block"])
    with Pool.open(pool_dir) as pool:
        stats = pool.stats()
    shutil.rmtree(where)
    return {"blocks": stats["unique_blocks"], "growing_peak": max(samples),
            "after_open": stats["metadata_ram_bytes_per_block"]}


def main(argv=None) -> None:
    p = parser(__doc__, seed=2)
    p.add_argument("--blocks", type=positive, default=10_000_000,
                   help="unique blocks (default 10 M)")
    p.add_argument("--real-mib", type=positive, default=256,
                   help="unique data in the real pool, MiB (default 256)")
    args, where = arguments(p, "memory", argv)
    n = args.blocks
    spawn = multiprocessing.get_context("spawn")
    layouts = {}
    for kind in LAYOUTS:
        with spawn.Pool(1) as child:
            layouts[kind] = child.apply(layout, (kind, n, args.seed, str(where)))
    real = real_pool(where, args.real_mib, args.seed)

    rows = [("layout (worst moment)", "index + refcounts + free space (at the end)",
             "held B/block", "peak B/block", f"target <= {TARGET} B (peak)")]
    figures: dict = {"blocks": n, "target": TARGET, "peers": PEERS}
    for kind, f in layouts.items():
        rows.append((f"{n:,} blocks, {kind.replace('_', ' ')}",
                     f"{f['metadata_bytes'] / MiB:.0f} MiB ({f['blocks']:,} blocks)",
                     f"{f['held_per_block']:.1f}", f"{f['peak_per_block']:.1f}",
                     verdict(f["peak_per_block"], TARGET, False)))
        figures[kind] = f
        figures[f"{kind}_peak_per_block"] = f["peak_per_block"]
        figures[f"verdict_{kind}"] = verdict(f["peak_per_block"], TARGET, False)
    rows.append((f"real pool, {real['blocks']:,} blocks: stats() while growing (largest) and "
                 "after a reopen", "", f"{real['growing_peak']:.1f} / "
                 f"{real['after_open']:.1f}", "",
                 verdict(max(real["growing_peak"], real["after_open"]), TARGET, False)))
    figures.update(real_pool=real, verdict_real=verdict(max(real["growing_peak"],
                                                             real["after_open"]), TARGET, False))
    rows.append(("peers", PEERS, "", "", ""))
    report("memory", "RAM per unique block: index + refcounts + free space", rows, figures)


if __name__ == "__main__":
    main()
