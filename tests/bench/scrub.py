"""Scrub: how fast `blockfold scrub` verifies every live block (issue 13), in GB/s.

A pool holding UNIQUE MiB of seeded random data (every block unique, so every block is a slot to
verify) is scrubbed from the command line, as an operator would, and timed from start to exit:

    blockfold -p POOL scrub --wait --json [--scrub-args ...]

and by the engine's own call, `Pool.scrub()` on the pool opened in this process (no CLI start-up,
no pool open). Each rate is the pool's live bytes (stats: physical_bytes) over the wall time; the
scrub's own figure is shown beside it when its result has one. Peers on
the same slot file in the same run, page cache warm for all: the bare Python loop (xxh3-128 of
every 4 KiB block of blocks.dat) and `xxhsum -H2 blocks.dat` (the same hash in C, one thread).

To prove that a scrub reads every block, one byte of a live block near the end is flipped before
each one runs; it must report it (`Pool.scrub`: the slot among "corrupt"; the CLI: a "corrupt"
figure in its JSON that is a non-empty list or above zero). Issue 13 sets no rate target; the
anchor is `zpool scrub`. `blockfold scrub` is still to come: until it exists the benchmark says so
and reports the rest.

    python -m tests.bench.scrub [--data bench-data] [--unique-mib 1536] [--scrub-args ARGS]
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess

import numpy as np

from engine.blockstore import DATA_FILE
from engine.pool import Pool

from .common import BLOCK, MiB, bare_hash, blockfold_cli, has_command, mb_per_s, measure, \
    parser, report, scratch, warm, xxhsum


def fill(pool_dir, size: int, seed: int) -> dict:
    Pool.create(pool_dir)
    rng = np.random.default_rng(seed)
    with Pool.open(pool_dir) as pool:
        pool.create_vm("unique", size)
        for off in range(0, size, 2 * MiB):
            pool.write("unique", off, rng.bytes(2 * MiB))
        last = int(pool.addresses("unique", size // BLOCK - 1, 1)[0])
        return {"physical_bytes": pool.stats()["physical_bytes"], "last_slot": last}


def rot(pool_dir, slot: int) -> None:
    fd = os.open(pool_dir / DATA_FILE, os.O_RDWR)
    try:
        at = slot * BLOCK + 7
        os.pwrite(fd, bytes([os.pread(fd, 1, at)[0] ^ 0xFF]), at)
    finally:
        os.close(fd)


def found_corruption(figures) -> bool:
    """Whether any "corrupt..." figure in the scrub's JSON is a non-empty list or above zero."""
    if isinstance(figures, dict):
        return any(("corrupt" in key and (value if isinstance(value, (list, int)) else False))
                   or found_corruption(value) for key, value in figures.items())
    if isinstance(figures, list):
        return any(found_corruption(item) for item in figures)
    return False


def own_rate(figures) -> float | None:
    """The scrub's own bytes per second, if its JSON gives one (bytes_per_s, or bytes/seconds)."""
    if not isinstance(figures, dict):
        return None
    if isinstance(figures.get("bytes_per_s"), (int, float)):
        return float(figures["bytes_per_s"])
    if isinstance(figures.get("bytes"), int) and figures.get("seconds"):
        return figures["bytes"] / figures["seconds"]
    return None


def main(argv=None) -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--unique-mib", type=int, default=1536,
                   help="unique random data in the pool (default 1536)")
    p.add_argument("--scrub-args", default="", metavar="ARGS",
                   help="more arguments for `blockfold scrub`, e.g. to lift a rate limit")
    p.add_argument("--seed", type=int, default=2)
    args = p.parse_args(argv)
    where = scratch(args.data, "scrub")
    pool_dir = where / "pool"
    pool = fill(pool_dir, args.unique_mib * MiB, args.seed)
    data_file = pool_dir / DATA_FILE
    warm([data_file])
    bare_s, _, hashed = min(measure(bare_hash, [data_file]) for _ in range(3))
    native_s = xxhsum([data_file])
    file_bytes = data_file.stat().st_size
    live = pool["physical_bytes"]
    figures = {"unique_mib": args.unique_mib, "live_bytes": live,
               "bare_bytes_per_s": round(mb_per_s(hashed, bare_s) * 1e6),
               "xxhsum_bytes_per_s": round(mb_per_s(file_bytes, native_s) * 1e6)
               if native_s else None}
    peers = [("bare xxh3-128 loop over blocks.dat (Python)", figures["bare_bytes_per_s"], bare_s)]
    if native_s:
        peers.append(("xxhsum -H2 blocks.dat (C, one thread)", figures["xxhsum_bytes_per_s"],
                      native_s))
    title = f"Scrub of {live / MiB:.0f} MiB of unique live blocks"
    rows = [("contender", "GB/s", "seconds", "note", "the planted rotten block")]
    scrubs = {}
    if hasattr(Pool, "scrub"):
        rot(pool_dir, pool["last_slot"])
        with Pool.open(pool_dir) as opened:
            wall, cpu, result = measure(opened.scrub)
        scrubs["engine"] = ("Pool.scrub() in-process (the engine, no CLI)", wall, cpu, result,
                            pool["last_slot"] in result.get("corrupt", []), None)
    why = None
    if has_command("scrub"):
        rot(pool_dir, pool["last_slot"] - 1)
        command = [blockfold_cli(), "-p", str(pool_dir), "scrub", "--wait", "--json",
                   *shlex.split(args.scrub_args)]
        wall, cpu, proc = measure(subprocess.run, command, capture_output=True, text=True)
        if proc.returncode not in (0, 1):
            raise SystemExit(f"blockfold scrub failed ({proc.returncode}): {proc.stderr.strip()}")
        try:
            result = json.loads(proc.stdout)
        except ValueError:
            result = None
        scrubs["scrub"] = ("blockfold scrub --wait (CLI, start to exit)", wall, cpu, result,
                           found_corruption(result), shlex.join(command[1:]))
    else:
        why = "`blockfold scrub` does not exist yet (issue 13)"
        figures["skipped"] = why
    shutil.rmtree(where)

    for key, (label, wall, cpu, result, found, command) in scrubs.items():
        rate = mb_per_s(live, wall) * 1e6
        own = own_rate(result)
        rows.append((label, f"{rate / 1e9:.2f}", f"{wall:.2f}",
                     f"its own figure: {own / 1e9:.2f} GB/s" if own else "",
                     "found" if found else "NOT FOUND"))
        figures.update({f"{key}_s": round(wall, 3), f"{key}_cpu_s": round(cpu, 3),
                        f"{key}_bytes_per_s": round(rate), f"{key}_own_bytes_per_s": own,
                        f"{key}_found_rotten_block": found})
        if command:
            figures[f"{key}_command"] = command
    if why:
        rows.append(("blockfold scrub --wait (CLI)", "skipped", "", why, ""))
    judged = "scrub" if "scrub" in scrubs else "engine" if scrubs else None
    for label, peer, seconds in peers:
        note = f"{scrubs[judged][0].split(' (')[0]} is " \
            f"{figures[f'{judged}_bytes_per_s'] / peer:.0%} of it" if judged else ""
        rows.append((label, f"{peer / 1e9:.2f}", f"{seconds:.2f}", note, ""))
    report("scrub", title, rows, figures)


if __name__ == "__main__":
    main()
