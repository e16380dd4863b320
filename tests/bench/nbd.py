"""NBD export vs `nbdkit memory`: the same fio jobs (ioengine=nbd, iodepth 16) against both.

Targets (issue 11), each as a ratio to nbdkit memory on the same machine in the same run:
  4 KiB random write of fresh data        >= 1.0x IOPS
  4 KiB random write, 80 % duplicate data >= 1.0x IOPS (fio's dedupe_percentage=80)
  4 KiB random read                       >= 1.0x IOPS
  1 MiB sequential read                   >= 1.0x MB/s
Blockfold fingerprints, verifies and deduplicates every block; nbdkit memory does none of that.

Both exports are first filled by one sequential write of random data, so reads return data rather
than holes. Every write job runs with randrepeat=0: with fio's default (randrepeat=1) its "random"
buffers are the same bytes on every run, so a repeat of a fresh-data job would write nothing but
duplicates of the one before. With dedupe_percentage=80, 80 % of a job's buffers repeat one the
job wrote before (fio's dedupe_mode=repeat) and the rest are fresh.

Each job runs --repeats times, alternating the two servers; the median counts. Server CPU per I/O
is read from /proc beside it, to show where the time goes.

    python -m tests.bench.nbd [--data bench-data] [--size-mib 256] [--runtime 5] [--repeats 3]
"""

from __future__ import annotations

import shutil
import statistics

from engine.pool import Pool

from . import servers
from .common import MiB, parser, report, scratch, verdict

DEPTH = "--iodepth=16"
FRESH = "--randrepeat=0"
JOBS = {   # name: (label, fio arguments, figure, target ratio)
    "randwrite_4k": ("4 KiB random write, fresh data",
                     ["--rw=randwrite", "--bs=4k", DEPTH, "--refill_buffers=1", FRESH],
                     "iops", 1.0),
    "randwrite_4k_dedup80": ("4 KiB random write, 80 % duplicates",
                             ["--rw=randwrite", "--bs=4k", DEPTH, "--dedupe_percentage=80", FRESH],
                             "iops", 1.0),
    "randread_4k": ("4 KiB random read", ["--rw=randread", "--bs=4k", DEPTH], "iops", 1.0),
    "seqread_1m": ("1 MiB sequential read", ["--rw=read", "--bs=1M", DEPTH], "mb_per_s", 1.0),
}
FILL = ["--rw=write", "--bs=1M", "--iodepth=8", "--refill_buffers=1", FRESH]


def figure(job: dict, kind: str) -> float:
    done = servers.side(job)
    return done["iops"] if kind == "iops" else done["bw_bytes"] / 1e6


def main(argv=None) -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--size-mib", type=int, default=256, help="export size (default 256)")
    p.add_argument("--runtime", type=float, default=5.0, help="seconds per fio run (default 5)")
    p.add_argument("--repeats", type=int, default=3, help="runs per job and server (default 3)")
    args = p.parse_args(argv)
    if not shutil.which("nbdkit") or not shutil.which("fio"):
        raise SystemExit("needs the Debian packages nbdkit and fio")
    size = args.size_mib * MiB
    where = scratch(args.data, "nbd")
    Pool.create(where / "pool")
    with Pool.open(where / "pool") as pool:
        pool.create_vm("bench", size)

    contenders = {}
    try:
        contenders["blockfold"] = servers.blockfold_nbd(where / "pool", ["bench"])
        contenders["nbdkit"] = servers.nbdkit_memory(size)
        for server in contenders.values():     # the same kind of data in both before any read
            servers.fio(server.uris, size, FILL)
        results = {name: {s: [] for s in contenders} for name in JOBS}
        cpu = {name: {s: [] for s in contenders} for name in JOBS}
        for _ in range(args.repeats):
            for name, (_, fio_args, kind, _) in JOBS.items():
                for who, server in contenders.items():
                    before = server.cpu_seconds()
                    (job,) = servers.fio(server.uris, size, fio_args, args.runtime)
                    ios = job["read"]["total_ios"] + job["write"]["total_ios"]
                    results[name][who].append(figure(job, kind))
                    cpu[name][who].append((server.cpu_seconds() - before) / max(ios, 1) * 1e6)
    finally:
        for server in contenders.values():
            server.stop()
        shutil.rmtree(where, ignore_errors=True)

    rows = [("job (iodepth 16)", "unit", "blockfold", "nbdkit memory", "ratio", "target",
             "verdict", "server CPU µs/IO (blockfold / nbdkit)")]
    figures: dict = {"size_mib": args.size_mib, "runtime_s": args.runtime,
                     "repeats": args.repeats}
    for name, (label, _, kind, target) in JOBS.items():
        ours = statistics.median(results[name]["blockfold"])
        peer = statistics.median(results[name]["nbdkit"])
        ratio = ours / peer
        ours_cpu = statistics.median(cpu[name]["blockfold"])
        peer_cpu = statistics.median(cpu[name]["nbdkit"])
        rows.append((label, "IOPS" if kind == "iops" else "MB/s", f"{ours:,.0f}", f"{peer:,.0f}",
                     f"{ratio:.2f}x", f">= {target:.1f}x", verdict(ratio, target),
                     f"{ours_cpu:.0f} / {peer_cpu:.0f}"))
        figures.update({f"{name}_{kind}": round(ours, 1), f"{name}_nbdkit_{kind}": round(peer, 1),
                        f"{name}_runs": [round(x, 1) for x in results[name]["blockfold"]],
                        f"{name}_nbdkit_runs": [round(x, 1) for x in results[name]["nbdkit"]],
                        f"{name}_ratio": round(ratio, 3), f"{name}_target": target,
                        f"{name}_verdict": verdict(ratio, target),
                        f"{name}_cpu_us_per_io": round(ours_cpu, 1),
                        f"{name}_nbdkit_cpu_us_per_io": round(peer_cpu, 1)})
    report("nbd", f"NBD export vs nbdkit memory ({args.size_mib} MiB, fio ioengine=nbd, "
                  f"median of {args.repeats} x {args.runtime:g} s)", rows, figures)


if __name__ == "__main__":
    main()
