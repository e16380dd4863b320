"""Stats with a snapshot: `blockfold -p POOL stats --json` against the number of VMs.

For each COUNT a fresh pool holds `golden` (GOLDEN MiB of seeded random data, imported) and COUNT
linked clones of it, d-1 … d-COUNT (Pool.clone, in-process). Timed from start to exit, median of
REPEATS, wall and CPU: `vm ls --json` (the floor: every VM's figures, nothing pool-wide), `stats
--json` with no snapshot, then, after d-1 is written whole with SNAP MiB of other data, snapshotted
as s1 and written whole again (so s1 holds SNAP MiB alone), `stats --json` and `vm snapshots d-1
--json`. The figure they report for s1 is checked: every block of it, alone.

    python -m tests.bench.snapstats [--data bench-data] [--counts 300,1000,3000] [--golden-mib 64]
                                    [--snap-mib 64] [--repeats 3]
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess

import numpy as np

from engine.pool import Pool

from .common import BLOCK, MiB, arguments, blockfold_cli, measure, parser, report


def timed(pool_dir, *words: str, repeats: int) -> tuple[float, float, dict | list]:
    """(median wall s, median CPU s, parsed JSON output) of `blockfold -p POOL WORDS`."""
    runs = [measure(subprocess.run, [blockfold_cli(), "-p", str(pool_dir), *words],
                    check=True, capture_output=True) for _ in range(repeats)]
    return (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs),
            json.loads(runs[-1][2].stdout))


def write_whole(pool: Pool, name: str, mib: int, rng: np.random.Generator) -> None:
    for off in range(0, mib * MiB, 4 * MiB):
        pool.write(name, off, rng.bytes(4 * MiB))


def main(argv=None) -> None:
    p = parser(__doc__, seed=8)
    p.add_argument("--counts", default="300,1000,3000",
                   help="VM counts, comma-separated (default 300,1000,3000)")
    p.add_argument("--golden-mib", type=int, default=64, help="MiB of golden (default 64)")
    p.add_argument("--snap-mib", type=int, default=64,
                   help="MiB the snapshot holds alone, at most GOLDEN (default 64)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each command (default 3)")
    args, where = arguments(p, "snapstats", argv)
    rng = np.random.default_rng(args.seed)
    golden = where / "golden.raw"
    golden.write_bytes(rng.bytes(args.golden_mib * MiB))
    counts = [int(c) for c in args.counts.split(",")]

    rows = [("VMs", "vm ls", "stats, no snapshot", "stats, 1 snapshot", "vm snapshots",
             "snapshot_blocks")]
    results = []
    for count in counts:
        pool_dir = where / f"pool-{count}"
        Pool.create(pool_dir)
        with Pool.open(pool_dir) as pool:
            pool.import_image("golden", str(golden))
            pool.clone("golden", "d", count)
        ls = timed(pool_dir, "vm", "ls", "--json", repeats=args.repeats)
        plain = timed(pool_dir, "stats", "--json", repeats=args.repeats)
        with Pool.open(pool_dir) as pool:
            write_whole(pool, "d-1", args.snap_mib, rng)
            pool.snapshot("d-1", "s1")
            write_whole(pool, "d-1", args.snap_mib, rng)
        snap = timed(pool_dir, "stats", "--json", repeats=args.repeats)
        snaps = timed(pool_dir, "vm", "snapshots", "d-1", "--json", repeats=args.repeats)
        shutil.rmtree(pool_dir)
        alone = snap[2]["snapshot_blocks"]
        right = alone == snaps[2][0]["blocks_alone"] == args.snap_mib * MiB // BLOCK
        rows.append((f"{count:,}", *(f"{t[0]:.2f} s ({t[1]:.2f} CPU)"
                                     for t in (ls, plain, snap, snaps)),
                     f"{alone:,}" + ("" if right else " WRONG")))
        results.append({"vms": count, "vm_ls_s": round(ls[0], 3), "vm_ls_cpu_s": round(ls[1], 3),
                        "stats_s": round(plain[0], 3), "stats_cpu_s": round(plain[1], 3),
                        "stats_snapshot_s": round(snap[0], 3),
                        "stats_snapshot_cpu_s": round(snap[1], 3),
                        "snapshots_s": round(snaps[0], 3), "snapshots_cpu_s": round(snaps[1], 3),
                        "snapshot_blocks": alone, "figures_right": right})
    shutil.rmtree(where)
    report("snapstats", f"stats --json against VMs, with a snapshot holding {args.snap_mib} MiB "
                        f"alone (median of {args.repeats}, wall and CPU)", rows,
           {"golden_mib": args.golden_mib, "snap_mib": args.snap_mib, "repeats": args.repeats,
            "runs": results})


if __name__ == "__main__":
    main()
