"""NBD export vs `nbdkit memory`: the same fio jobs (ioengine=nbd) against both, in one run.

Targets: 4 KiB random read IOPS >= 50 % of nbdkit's, 4 KiB random write IOPS >= 30 %,
sequential 1 MiB read MB/s >= 50 %. Both exports are filled with the same sequential write
first, so reads return data rather than holes. Writes carry fresh random bytes every time
(refill_buffers): the worst case for a dedup pool, where every block is new.

Each job runs --repeats times, alternating the two servers, and the median counts. Server CPU
per I/O is read from /proc, to show where the time goes.

    python -m tests.bench.nbd [--data bench-data] [--size-mib 256] [--runtime 5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]
JOBS = {   # name: (fio arguments, figure, target ratio)
    "randread-4k": (["--rw=randread", "--bs=4k", "--iodepth=16"], "iops", 0.50),
    "randwrite-4k": (["--rw=randwrite", "--bs=4k", "--iodepth=16", "--refill_buffers=1"],
                     "iops", 0.30),
    "seqread-1m": (["--rw=read", "--bs=1M", "--iodepth=8"], "mb_per_s", 0.50),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early ({proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fio(uri: str, size: int, args: list[str], runtime: float | None) -> dict:
    command = ["fio", "--name=bench", "--ioengine=nbd", f"--uri={uri}", f"--size={size}",
               "--output-format=json", *args]
    if runtime:
        command += ["--time_based", f"--runtime={runtime}s"]
    proc = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout[proc.stdout.index("{"):])["jobs"][0]


def start_blockfold(work: Path, size: int) -> tuple[subprocess.Popen, str]:
    pool = work / "pool"
    blockfold = [sys.executable, "-m", "console"]
    subprocess.run([*blockfold, "pool", "init", str(pool)], cwd=ROOT, check=True,
                   capture_output=True)
    image = work / "empty.raw"
    with open(image, "wb") as f:
        f.truncate(size)
    subprocess.run([*blockfold, "-p", str(pool), "vm", "import", "bench", str(image)], cwd=ROOT,
                   check=True, capture_output=True)
    proc = subprocess.Popen([*blockfold, "-p", str(pool), "nbd", "serve", "--listen",
                             "127.0.0.1:0"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("ready "):
        raise SystemExit(f"blockfold nbd serve did not start: {line!r}")
    return proc, f"nbd://{line.split()[1]}/bench"


def start_nbdkit(size: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(["nbdkit", "--foreground", "--exit-with-parent", "-i", "127.0.0.1",
                             "-p", str(port), "memory", str(size)])
    wait_listening(port, proc)
    return proc, f"nbd://127.0.0.1:{port}/"


def figure(job: dict, kind: str) -> float:
    side = job["read"] if job["read"]["io_bytes"] else job["write"]
    return side["iops"] if kind == "iops" else side["bw_bytes"] / 1e6


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=Path("bench-data"), metavar="DIR")
    p.add_argument("--size-mib", type=int, default=256)
    p.add_argument("--runtime", type=float, default=5.0, help="seconds per fio run")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    if not shutil.which("nbdkit") or not shutil.which("fio"):
        raise SystemExit("needs the Debian packages nbdkit and fio")
    size = args.size_mib * MiB
    work = (args.data / "scratch" / "nbd").resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    servers = {"blockfold": start_blockfold(work, size), "nbdkit": start_nbdkit(size)}
    results: dict[str, dict[str, list]] = {name: {s: [] for s in servers} for name in JOBS}
    cpu: dict[str, dict[str, list]] = {name: {s: [] for s in servers} for name in JOBS}
    try:
        for _proc, uri in servers.values():     # the same data in both before any read
            fio(uri, size, ["--rw=write", "--bs=1M", "--iodepth=8", "--refill_buffers=1"], None)
        for _ in range(args.repeats):
            for name, (fio_args, kind, _) in JOBS.items():
                for server, (proc, uri) in servers.items():
                    before = cpu_seconds(proc.pid)
                    job = fio(uri, size, fio_args, args.runtime)
                    ios = job["read"]["total_ios"] + job["write"]["total_ios"]
                    results[name][server].append(figure(job, kind))
                    cpu[name][server].append((cpu_seconds(proc.pid) - before) / max(ios, 1) * 1e6)
    finally:
        for proc, _ in servers.values():
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)

    rows = [("job", "unit", "blockfold", "nbdkit memory", "ratio", "target", "verdict",
             "server CPU µs/IO (blockfold / nbdkit)")]
    figures: dict = {"size_mib": args.size_mib, "runtime_s": args.runtime,
                     "repeats": args.repeats}
    for name, (_, kind, target) in JOBS.items():
        ours = statistics.median(results[name]["blockfold"])
        peer = statistics.median(results[name]["nbdkit"])
        ratio = ours / peer
        verdict = "met" if ratio >= target else "MISSED"
        ours_cpu = statistics.median(cpu[name]["blockfold"])
        peer_cpu = statistics.median(cpu[name]["nbdkit"])
        unit = "IOPS" if kind == "iops" else "MB/s"
        rows.append((name, unit, f"{ours:,.0f}", f"{peer:,.0f}", f"{ratio:.0%}", f"{target:.0%}",
                     verdict, f"{ours_cpu:.0f} / {peer_cpu:.0f}"))
        key = name.replace("-", "_")
        figures.update({f"{key}_{kind}": round(ours, 1), f"{key}_nbdkit_{kind}": round(peer, 1),
                        f"{key}_ratio": round(ratio, 3), f"{key}_verdict": verdict,
                        f"{key}_cpu_us_per_io": round(ours_cpu, 1),
                        f"{key}_nbdkit_cpu_us_per_io": round(peer_cpu, 1)})

    print(f"\nNBD export vs nbdkit memory ({args.size_mib} MiB, fio ioengine=nbd, "
          f"median of {args.repeats} x {args.runtime:g} s)")
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))
    print(json.dumps({"bench": "nbd", **figures,
                      "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                  "load_1m": os.getloadavg()[0]}}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
