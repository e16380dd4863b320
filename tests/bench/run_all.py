"""Runs every benchmark, each in its own process, then prints a summary of targets met or missed.

Each benchmark's own table and JSON line are passed through as they come; the summary ends with
one JSON line holding every benchmark's JSON line. `--quick` runs them all at toy sizes, to check
that they work (its figures mean nothing).

    python -m tests.bench.run_all [--data bench-data] [--quick] [--only NAME ...]
"""

from __future__ import annotations

import json
import subprocess
import sys

from .common import parser

BENCHMARKS = ("ingest", "clone", "chain", "rebuild", "memory")
QUICK = {
    "ingest": ["--golden-mib", "16", "--variants", "2", "--unique-mib", "1"],
    "clone": ["--count", "20", "--data-mib", "8"],
    "chain": ["--size-mib", "16", "--depth", "8", "--reads", "4000"],
    "rebuild": ["--unique-mib", "32", "--crash-gib", "1"],
    "memory": ["--blocks", "100000", "--real-mib", "8"],
}
# The verdict fields of each benchmark's JSON line, with what they measure.
VERDICTS = {
    "ingest": [("vs_borg_verdict", "ingest >= 5x borg", "vs_borg"),
               ("vs_bare_verdict", "ingest >= 35 % of bare xxh3 loop", "vs_bare")],
    "clone": [("ratio_verdict", "clone >= 20x qemu-img", "ratio"),
              ("metadata_verdict", "clone metadata <= 2 KiB", "metadata_bytes_per_clone")],
    "chain": [("verdict", "depth-64 reads >= 90 % of depth 1", "ratio")],
    "rebuild": [("rate_verdict", "full rebuild >= 1 GB/s", "full_rebuild_bytes_per_s"),
                ("first_read_verdict", "crash: first read <= 1 s", "first_read_s")],
    "memory": [("verdict_after_rebuild", "RAM <= 32 B/block (after rebuild)", None),
               ("verdict_grown", "RAM <= 32 B/block (grown by writes)", None),
               ("verdict_real", "RAM <= 32 B/block (real pool stats)", "real_pool_per_block")],
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
        for field, label, value in VERDICTS[name]:
            if figures is None:
                print(f"  {label:40}  FAILED TO RUN")
            elif field in figures:
                shown = f"  ({figures[value]})" if value else ""
                print(f"  {label:40}  {figures[field]}{shown}")
    print(json.dumps({"bench": "all", "quick": args.quick, "results": results}))
    return 1 if any(f is None for f in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
