"""Chain depth: random 4 KiB reads through Pool.read at clone-chain depth 1 and depth 64.

`flat` is a VM of SIZE MiB written once with seeded random data: depth 1. The chain starts from a
VM with the same data; each level clones the previous level and writes 64 KiB at a random place,
so the last VM reads through 64 layers. Both VMs are read whole once first (page cache and the
engine's resolved pages warm alike), then the same seeded random offsets are read in alternating
rounds, depth 1 then depth 64, and each side's median round is reported, in wall time and in
CPU time (the machine is shared; CPU time leaves out waiting for a core).

Target: depth 64 >= 90 % of depth 1.

    python -m tests.bench.chain [--data bench-data] [--size-mib 512] [--depth 64] [--reads 200000]
"""

from __future__ import annotations

import shutil
import statistics
import time

import numpy as np

from engine.pool import Pool

from .common import BLOCK, MiB, parser, report, scratch, timer, verdict

TARGET = 0.90
ROUNDS = 10
WRITE_CHUNK = 2 * MiB


def build(pool: Pool, size: int, depth: int, rng: np.random.Generator) -> tuple[str, str]:
    """Returns the names of the depth-1 VM and the depth-`depth` VM."""
    data = rng.bytes(size)
    for name in ("flat", "level-1"):
        pool.create_vm(name, size)
        for off in range(0, size, WRITE_CHUNK):
            pool.write(name, off, data[off:off + WRITE_CHUNK])
    top = "level-1"
    for level in range(2, depth + 1):
        (top,) = pool.clone(top, f"level-{level}")
        at = int(rng.integers(0, size // BLOCK - 16)) * BLOCK
        pool.write(top, at, rng.bytes(16 * BLOCK))
    pool.flush()
    return "flat", top


def read_all(pool: Pool, name: str, size: int) -> None:
    for off in range(0, size, WRITE_CHUNK):
        pool.read(name, off, WRITE_CHUNK)


def timed_reads(pool: Pool, name: str, offsets: list[int]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of reading 4 KiB at each offset."""
    read = pool.read
    cpu = time.process_time()
    with timer() as t:
        for off in offsets:
            read(name, off, BLOCK)
    return t(), time.process_time() - cpu


def main(argv=None) -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--size-mib", type=int, default=512, help="VM size, all written (default 512)")
    p.add_argument("--depth", type=int, default=64, help="chain depth (default 64)")
    p.add_argument("--reads", type=int, default=200_000,
                   help="random reads per VM, over all rounds (default 200000)")
    p.add_argument("--seed", type=int, default=2)
    args = p.parse_args(argv)
    size = args.size_mib * MiB
    rng = np.random.default_rng(args.seed)
    where = scratch(args.data, "chain")
    Pool.create(where / "pool")
    with Pool.open(where / "pool") as pool:
        shallow, deep = build(pool, size, args.depth, rng)
        depths = {vm["name"]: vm["depth"] for vm in pool.vm_list()}
        offsets = (rng.integers(0, size // BLOCK, args.reads) * BLOCK).tolist()
        per_round = len(offsets) // ROUNDS
        for name in (shallow, deep):
            read_all(pool, name, size)
            timed_reads(pool, name, offsets[:per_round])
        times = {shallow: [], deep: []}
        for r in range(ROUNDS):
            part = offsets[r * per_round:(r + 1) * per_round]
            for name in (shallow, deep):
                times[name].append(timed_reads(pool, name, part))
    shutil.rmtree(where)

    def median_rate(name, which):      # which: 0 wall, 1 CPU
        return per_round / statistics.median(t[which] for t in times[name])

    rate = {name: median_rate(name, 0) for name in times}
    cpu_rate = {name: median_rate(name, 1) for name in times}
    walls = {name: [t[0] for t in ts] for name, ts in times.items()}
    spread = {name: (max(w) - min(w)) / statistics.median(w) for name, w in walls.items()}
    ratio, cpu_ratio = rate[deep] / rate[shallow], cpu_rate[deep] / cpu_rate[shallow]
    rows = [("VM", "chain depth", "reads/s (median round)", "µs per read", "round spread",
             "reads per CPU s")]
    for name in (shallow, deep):
        rows.append((name, str(depths[name]), f"{rate[name]:,.0f}", f"{1e6 / rate[name]:.1f}",
                     f"{spread[name]:.1%}", f"{cpu_rate[name]:,.0f}"))
    rows.append((f"depth {depths[deep]} / depth {depths[shallow]}", "", f"{ratio:.1%}",
                 f"target >= {TARGET:.0%}", verdict(ratio, TARGET), f"{cpu_ratio:.1%}"))
    report("chain", f"Random 4 KiB reads, {ROUNDS} rounds of {per_round} per VM "
                    f"({args.size_mib} MiB VM)", rows,
           {"size_mib": args.size_mib, "reads_per_round": per_round, "rounds": ROUNDS,
            "depth_shallow": depths[shallow], "depth_deep": depths[deep],
            "reads_per_s_shallow": round(rate[shallow]), "reads_per_s_deep": round(rate[deep]),
            "reads_per_cpu_s_shallow": round(cpu_rate[shallow]),
            "reads_per_cpu_s_deep": round(cpu_rate[deep]),
            "ratio": round(ratio, 4), "cpu_ratio": round(cpu_ratio, 4), "target": TARGET,
            "verdict": verdict(ratio, TARGET)})


if __name__ == "__main__":
    main()
