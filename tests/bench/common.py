"""What every benchmark shares: argument parsing, timing, the bare hashing peer, output.

Each benchmark prints a table for people and then exactly one JSON line for scripts
(`{"bench": NAME, ...}`), so `run_all` and BENCHMARKS.md can quote the same figures. The JSON line
carries the machine's load average when the benchmark started and when it reported: the machine has
2 cores and is shared, and a figure means little without it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import xxhash

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
BLOCK = 4096
READ_CHUNK = 2 * MiB          # what `vm import` reads at a time: one block-table page of 4 KiB
DEFAULT_DATA = Path("bench-data")
LOAD_AT_START = os.getloadavg()
STARTED = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


def parser(description: str, seed: int | None = None) -> argparse.ArgumentParser:
    """The options every benchmark takes: --data DIR and, given a `seed`, --seed N (that its
    default). `description`: the module's docstring, or its first line (the one shown)."""
    p = argparse.ArgumentParser(description=description.split("\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, metavar="DIR",
                   help=f"where image sets and scratch pools go (default {DEFAULT_DATA}/)")
    if seed is not None:
        p.add_argument("--seed", type=int, default=seed,
                       help=f"seed of the random data (default {seed})")
    return p


def arguments(p: argparse.ArgumentParser, name: str,
              argv: list[str] | None = None) -> tuple[argparse.Namespace, Path]:
    """The values of `p` from argv (None: the command line), and the benchmark's fresh scratch
    directory, DATA/scratch/NAME (scratch)."""
    args = p.parse_args(argv)
    return args, scratch(args.data, name)


def scratch(data: Path, name: str) -> Path:
    """A fresh, empty scratch directory under the data directory."""
    path = (data / "scratch" / name).resolve()
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


@contextmanager
def timer():
    """`with timer() as t: ...` then t() is the elapsed seconds (frozen at exit)."""
    start = time.perf_counter()
    end = None

    def elapsed() -> float:
        return (end if end is not None else time.perf_counter()) - start

    yield elapsed
    end = time.perf_counter()


@contextmanager
def cpu_timer():
    """Like timer(), but CPU seconds (user + system) of this process and its finished children.

    On a shared machine wall time includes waiting for a core; CPU time does not.
    """
    def used() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    start = used()
    end = None
    yield lambda: (end if end is not None else used()) - start
    end = used()


def measure(fn, *args, **kwargs):
    """(wall seconds, CPU seconds, result) of fn(*args, **kwargs)."""
    with timer() as wall, cpu_timer() as cpu:
        result = fn(*args, **kwargs)
    return wall(), cpu(), result


def data_extents(fd: int, size: int):
    """(start, end) of every data extent of a file; holes are skipped, as `vm import` does."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:       # ENXIO: nothing but a hole after pos
            return
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, end
        pos = end


def bare_hash(paths, chunk: int = READ_CHUNK) -> int:
    """The peer: read the files' data extents and xxh3-128 every 4 KiB block, nothing else.

    Returns the bytes hashed.
    """
    digest = xxhash.xxh3_128_digest
    hashed = 0
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            for start, end in data_extents(fd, os.fstat(fd).st_size):
                offset = start - start % BLOCK
                while offset < end:
                    view = memoryview(os.pread(fd, min(chunk, end - offset), offset))
                    for i in range(0, len(view), BLOCK):
                        digest(view[i:i + BLOCK])
                    hashed += len(view)
                    offset += len(view)
        finally:
            os.close(fd)
    return hashed


def xxhsum(paths) -> float | None:
    """The native peer: wall seconds (best of three) of `xxhsum -H2 PATHS`, xxh3-128 in C over the
    whole files with read(), one thread; None without the xxhash package's xxhsum."""
    if not shutil.which("xxhsum"):
        return None
    command = ["xxhsum", "-H2", *map(str, paths)]
    return min(measure(subprocess.run, command, check=True, stdout=subprocess.DEVNULL)[0]
               for _ in range(3))


def warm(paths) -> None:
    """Reads files once so that every contender starts from the same warm page cache."""
    for path in paths:
        with open(path, "rb") as f:
            while f.read(8 * MiB):
                pass


def blockfold_cli() -> str:
    """The `blockfold` command of the interpreter running the benchmark (the project's venv)."""
    return str(Path(sys.executable).parent / "blockfold")


def has_command(*words: str) -> bool:
    """Whether `blockfold WORDS --help` exists (benchmarks of commands still to come skip)."""
    return subprocess.run([blockfold_cli(), *words, "--help"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode == 0


def write_unique(path: Path, mib: int, seed: int = 3) -> Path:
    """A raw image of `mib` MiB (a multiple of 64) of seeded random bytes: no block repeats."""
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        for _ in range(mib // 64):
            f.write(rng.integers(0, 256, size=64 << 20, dtype=np.uint8).tobytes())
    return path


def mb_per_s(nbytes: int, seconds: float) -> float:
    return nbytes / 1e6 / seconds if seconds > 0 else float("inf")


def verdict(value: float, target: float, higher_is_better: bool = True) -> str:
    met = value >= target if higher_is_better else value <= target
    return "met" if met else "MISSED"


def machine() -> dict:
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "started": STARTED, "load_start": [round(x, 2) for x in LOAD_AT_START],
            "load_end": [round(x, 2) for x in os.getloadavg()]}


def report(name: str, title: str, rows: list[tuple], figures: dict) -> None:
    """Prints a two-or-more-column table, then the one JSON line."""
    load = machine()
    print(f"\n{title}\n  [started {load['started']}, load average {load['load_start'][0]:.1f} "
          f"at the start, {load['load_end'][0]:.1f} at the end, on {load['cpus']} cores]")
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        print("  " + "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))
    print(json.dumps({"bench": name, **figures, "machine": load}, sort_keys=False),
          flush=True)
