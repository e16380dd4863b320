"""Runs every benchmark, each in its own process, then prints a summary of targets met or missed.

Each benchmark's own table and JSON line are passed through as they come; the summary ends with
one JSON line holding every benchmark's JSON line. A benchmark of a command still to come (scrub,
serve) reports "skipped" with its reason, and that is not a failure. `--quick` runs them all at
toy sizes, to check that they work (its figures mean nothing).

    python -m tests.bench.run_all [--data bench-data] [--quick] [--only NAME ...]
"""

from __future__ import annotations

import json
import subprocess
import sys

from .common import parser

BENCHMARKS = ("ingest", "clone", "chain", "rebuild", "memory", "nbd", "bootstorm", "verify",
              "scrub", "service")
QUICK = {
    "ingest": ["--golden-mib", "16", "--variants", "2", "--unique-mib", "1"],
    "clone": ["--count", "20", "--data-mib", "8"],
    "chain": ["--size-mib", "16", "--depth", "8", "--reads", "4000"],
    "rebuild": ["--unique-mib", "32", "--crash-gib", "1"],
    "memory": ["--blocks", "100000", "--real-mib", "8"],
    "nbd": ["--size-mib", "32", "--runtime", "1", "--repeats", "1"],
    "bootstorm": ["--golden-mib", "32", "--runtime", "1", "--repeats", "1"],
    "verify": ["--size-mib", "32", "--reads", "5000"],
    "scrub": ["--unique-mib", "32"],
    "service": ["--blocks", "100000", "--unique-mib", "16", "--repeats", "2"],
}
# What the summary shows of each benchmark's JSON line: (label, verdict field or None, figure).
VERDICTS = {
    "ingest": [("ingest >= 10x borg", "vs_borg_verdict", "vs_borg")],
    "clone": [("clone x1000 >= 100x qemu-img create", "ratio_verdict", "ratio"),
              ("clone metadata <= 2 KiB", "metadata_verdict", "metadata_bytes_per_clone")],
    "chain": [("depth-64 reads >= 90 % of depth 1", "verdict", "ratio")],
    "rebuild": [("full rebuild >= 5 GB/s", "rate_verdict", "full_rebuild_bytes_per_s"),
                ("crash: first read <= 1 s", "first_read_verdict", "first_read_s")],
    "memory": [("RAM <= 16 B/block, peak, after rebuild", "verdict_after_rebuild",
                "after_rebuild_peak_per_block"),
               ("RAM <= 16 B/block, peak, grown by writes", "verdict_grown_by_writes",
                "grown_by_writes_peak_per_block")],
    "nbd": [("NBD 4K random write >= 1x nbdkit", "randwrite_4k_verdict", "randwrite_4k_ratio"),
            ("NBD 4K random write, 80 % dup >= 1x", "randwrite_4k_dedup80_verdict",
             "randwrite_4k_dedup80_ratio"),
            ("NBD 4K random read >= 1x nbdkit", "randread_4k_verdict", "randread_4k_ratio"),
            ("NBD 1M sequential read >= 1x nbdkit", "seqread_1m_verdict", "seqread_1m_ratio")],
    "bootstorm": [("boot storm >= 2x qemu-nbd", "verdict", "ratio")],
    "verify": [("verified 4K random reads >= 90 %", "random_4k_verdict", "random_4k_ratio"),
               ("verified 1M sequential reads >= 90 %", "sequential_1m_verdict",
                "sequential_1m_ratio")],
    "scrub": [("scrub CLI, bytes/s (no target)", None, "scrub_bytes_per_s"),
              ("scrub in-process (Pool.scrub), bytes/s", None, "engine_bytes_per_s")],
    "service": [("service: vm ls < 100 ms", "vm_ls_verdict", "service_vm_ls_s"),
                ("service: stats < 100 ms", "stats_verdict", "service_stats_s"),
                ("vm ls without a service, s (before)", None, "direct_vm_ls_s"),
                ("stats without a service, s (before)", None, "direct_stats_s")],
}


def run(name: str, data, quick: bool) -> dict | None:
    command = [sys.executable, "-m", f"tests.bench.{name}", "--data", str(data)]
    if quick:
        command += QUICK[name]
    print(f"\n$ {' '.join(command[1:])}", flush=True)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    figures = None
    for line in proc.stdout:
        sys.stdout.write(line)
        if line.startswith('{"bench"'):
            figures = json.loads(line)
    if proc.wait() != 0:
        print(f"{name}: failed with exit code {proc.returncode}", flush=True)
        return None
    return figures


def main(argv=None) -> int:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="toy sizes: checks that all run")
    p.add_argument("--only", nargs="+", choices=BENCHMARKS, metavar="NAME",
                   help=f"run only these: {', '.join(BENCHMARKS)}")
    args = p.parse_args(argv)
    results = {name: run(name, args.data, args.quick) for name in args.only or BENCHMARKS}

    print("\nSummary" + (" (--quick: toy sizes, figures not meaningful)" if args.quick else ""))
    for name, figures in results.items():
        for label, field, value in VERDICTS[name]:
            if figures is None:
                print(f"  {label:42}  FAILED TO RUN")
            elif value not in figures and "skipped" in figures:
                print(f"  {label:42}  SKIPPED: {figures['skipped']}")
            else:
                judged = f"{figures.get(field, '-')}  " if field else ""
                print(f"  {label:42}  {judged}({figures.get(value)})")
    print(json.dumps({"bench": "all", "quick": args.quick, "results": results}))
    return 1 if any(f is None for f in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
