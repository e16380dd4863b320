"""CLI round trip against a running service (issue 10): `vm ls` and `stats` on 10 M blocks.

The pool: VMS VMs that together hold BLOCKS block references (10 M by default: 40 GB logical),
written with UNIQUE MiB of seeded random data repeated (1 GiB: 262 144 unique blocks), so every
block-table page is real. Building it through the engine takes minutes in today's Python engine,
so it is kept under DATA/pools/ and reused while its parameters match (DATA/pools/NAME.json).

Timed from start to exit, each command REPEATS times, the median counts:
  blockfold -p POOL vm ls --json
  blockfold -p POOL stats --json
  - with `blockfold -p POOL serve` running (the service owns the pool; the CLI asks it through
    POOL/admin.sock). Target: each under 100 ms.
  - without a service, as today: each command opens the pool itself and rebuilds its RAM view.
    That is the peer (the "before" figure); the ratio is how much faster the service answers.
  - and two floors: `blockfold --help`, which opens no pool (interpreter start-up and the CLI's
    imports), and `python -c pass` (the interpreter alone, with the venv's site).
`blockfold serve` is still to come: until it exists the benchmark says so and reports the rest.

    python -m tests.bench.service [--data bench-data] [--blocks 10000000] [--unique-mib 1024]
"""

from __future__ import annotations

import json
import shutil
import signal
import statistics
import subprocess
import sys
import time

import numpy as np

from engine.pool import Pool

from .common import BLOCK, MiB, blockfold_cli, has_command, measure, parser, report, timer, \
    verdict

TARGET = 0.100
VMS = 10
CHUNK = 32 * MiB
READY_TIMEOUT = 600


def build(pool_dir, blocks: int, unique_mib: int, seed: int) -> dict:
    """The pool, built unless DATA/pools/ already holds one made with the same parameters."""
    params = {"blocks": blocks, "unique_mib": unique_mib, "vms": VMS, "seed": seed}
    manifest = pool_dir.with_suffix(".json")
    if manifest.exists() and json.loads(manifest.read_text()) == params:
        return {**params, "cached": True, "build_s": 0.0}
    shutil.rmtree(pool_dir, ignore_errors=True)
    manifest.unlink(missing_ok=True)
    pool_dir.parent.mkdir(parents=True, exist_ok=True)
    pattern = np.random.default_rng(seed).bytes(unique_mib * MiB)
    with timer() as t:
        Pool.create(pool_dir)
        with Pool.open(pool_dir) as pool:
            for k in range(VMS):
                size = (blocks // VMS + (k < blocks % VMS)) * BLOCK
                name = f"desk-{k + 1}"
                pool.create_vm(name, size)
                for off in range(0, size, CHUNK):
                    at = (off + k * CHUNK) % len(pattern)
                    piece = pattern[at:at + min(CHUNK, size - off)]
                    if len(piece) < min(CHUNK, size - off):      # wraps around the pattern
                        piece += pattern[:min(CHUNK, size - off) - len(piece)]
                    pool.write(name, off, piece)
    manifest.write_text(json.dumps(params))
    return {**params, "cached": False, "build_s": round(t(), 1)}


def cli(*words: str) -> list[str]:
    return [blockfold_cli(), *words]


def round_trips(commands: dict[str, list[str]], repeats: int) -> dict[str, dict]:
    """Median and all wall seconds of each command, run `repeats` times in turn."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeats):
        for name, command in commands.items():
            wall, _, proc = measure(subprocess.run, command, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"{' '.join(command[1:])} failed: {proc.stderr.strip()}")
            times[name].append(wall)
    return {name: {"median_s": statistics.median(ts), "runs_s": [round(t, 4) for t in ts]}
            for name, ts in times.items()}


def serve(pool_dir, probe: list[str]) -> tuple[subprocess.Popen, float]:
    """Starts the service and waits until the CLI gets an answer through it."""
    with timer() as t:
        proc = subprocess.Popen(cli("-p", str(pool_dir), "serve"), stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + READY_TIMEOUT
        while not ((pool_dir / "admin.sock").exists()
                   and subprocess.run(probe, capture_output=True).returncode == 0):
            if proc.poll() is not None:
                raise SystemExit(f"blockfold serve exited early ({proc.returncode})")
            if time.monotonic() > deadline:
                proc.kill()
                raise SystemExit(f"blockfold serve not ready after {READY_TIMEOUT} s")
            time.sleep(0.2)
    return proc, t()


def floor_rows(floors: dict) -> list[tuple]:
    return [("floor: blockfold --help (opens no pool)", "", "", "",
             f"{floors['--help']['median_s'] * 1e3:.0f} ms", ""),
            ("floor: python -c pass", "", "", "", f"{floors['python']['median_s'] * 1e3:.0f} ms",
             "")]


def main(argv=None) -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--blocks", type=int, default=10_000_000,
                   help="block references in the pool (default 10 M)")
    p.add_argument("--unique-mib", type=int, default=1024,
                   help="unique data the VMs repeat (default 1024)")
    p.add_argument("--repeats", type=int, default=5, help="runs of each command (default 5)")
    p.add_argument("--seed", type=int, default=2)
    args = p.parse_args(argv)
    pool_dir = (args.data / "pools" / f"service-{args.blocks}-{args.unique_mib}").resolve()
    built = build(pool_dir, args.blocks, args.unique_mib, args.seed)
    with Pool.open(pool_dir, readonly=True) as pool:
        stats = pool.stats()
    pool_flag = ["-p", str(pool_dir)]
    commands = {"vm ls": cli(*pool_flag, "vm", "ls", "--json"),
                "stats": cli(*pool_flag, "stats", "--json")}
    floors = round_trips({"--help": cli("--help"), "python": [sys.executable, "-c", "pass"]},
                         args.repeats)
    direct = round_trips(commands, args.repeats)
    figures = {**built, "references": stats["logical_bytes"] // BLOCK,
               "unique_blocks": stats["unique_blocks"], "repeats": args.repeats,
               "floor_help_s": round(floors["--help"]["median_s"], 4),
               "floor_python_s": round(floors["python"]["median_s"], 4),
               **{f"direct_{name.replace(' ', '_')}_s": round(r["median_s"], 4)
                  for name, r in direct.items()}}
    title = (f"CLI round trip on a pool of {figures['references']:,} block references "
             f"({stats['unique_blocks']:,} unique, {VMS} VMs)")
    rows = [("command", "through the service", "target", "verdict", "without a service (today)",
             "without / through")]
    if not has_command("serve"):
        why = "`blockfold serve` does not exist yet (issue 10): only the figures without a service"
        for name, r in direct.items():
            rows.append((name, "skipped", f"< {TARGET * 1e3:.0f} ms", "",
                         f"{r['median_s'] * 1e3:.0f} ms", ""))
        rows += floor_rows(floors)
        report("service", f"{title}\n  skipped: {why}", rows, {**figures, "skipped": why})
        return

    server, ready_s = serve(pool_dir, commands["vm ls"])
    try:
        served = round_trips(commands, max(args.repeats, 10))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
    figures["service_ready_s"] = round(ready_s, 2)
    for name, r in served.items():
        key = name.replace(" ", "_")
        ours, before = r["median_s"], direct[name]["median_s"]
        rows.append((name, f"{ours * 1e3:.0f} ms", f"< {TARGET * 1e3:.0f} ms",
                     verdict(ours, TARGET, False), f"{before * 1e3:.0f} ms",
                     f"{before / ours:.1f}x"))
        figures.update({f"service_{key}_s": round(ours, 4), f"service_{key}_runs_s": r["runs_s"],
                        f"{key}_ratio": round(before / ours, 2), f"{key}_target_s": TARGET,
                        f"{key}_verdict": verdict(ours, TARGET, False)})
    rows += floor_rows(floors)
    report("service", title, rows, figures)


if __name__ == "__main__":
    main()
