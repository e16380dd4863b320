"""NBD servers and fio for the benchmarks that go through a socket (nbd, bootstorm).

Every server listens on 127.0.0.1 over TCP, so each contender pays the same transport. A server
is a `Server` (its process, the NBD URI of each export); `stop` ends it, and `cpu_seconds` reads
its CPU time (user + system, of the process and its threads) from /proc, which depends much less
than throughput on how busy the shared machine is.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .common import blockfold_cli


@dataclass
class Server:
    procs: list[subprocess.Popen]
    uris: dict[str, str] = field(default_factory=dict)     # export name -> nbd:// URI

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.procs)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A port free now (for servers that cannot be told to pick one and say which)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args[0]} exited early ({proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port}")


def blockfold_nbd(pool: Path, names: list[str]) -> Server:
    """`blockfold -p POOL nbd serve` on a free port: one process exporting every VM."""
    proc = subprocess.Popen([blockfold_cli(), "-p", str(pool), "nbd", "serve", "--listen",
                             "127.0.0.1:0"], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("ready "):
        proc.kill()
        raise SystemExit(f"blockfold nbd serve did not start: {line!r}")
    address = line.split()[1]
    return Server([proc], {name: f"nbd://{address}/{name}" for name in names})


def nbdkit_memory(size: int) -> Server:
    port = free_port()
    proc = subprocess.Popen(["nbdkit", "--foreground", "--exit-with-parent", "-i", "127.0.0.1",
                             "-p", str(port), "memory", str(size)])
    wait_listening(port, proc)
    return Server([proc], {"memory": f"nbd://127.0.0.1:{port}/"})


def qemu_nbd(images: dict[str, Path], fmt: str = "qcow2") -> Server:
    """One `qemu-nbd` process per image (the way qemu-nbd serves: one image a process)."""
    procs, uris = [], {}
    try:
        for name, image in images.items():
            port = free_port()
            proc = subprocess.Popen(["qemu-nbd", "--persistent", "-f", fmt, "-b", "127.0.0.1",
                                     "-p", str(port), str(image)])
            procs.append(proc)
            wait_listening(port, proc)
            uris[name] = f"nbd://127.0.0.1:{port}/"
    except BaseException:
        Server(procs).stop()
        raise
    return Server(procs, uris)


def fio(jobs: dict[str, str], size: int, args: list[str], runtime: float | None = None) -> list:
    """Runs one fio process with a job per (name, NBD URI), ioengine=nbd; returns fio's job list.

    `args` apply to every job; `runtime` (seconds) makes the jobs time-based.
    """
    command = ["fio", "--ioengine=nbd", f"--size={size}", "--output-format=json", *args]
    if runtime:
        command += ["--time_based", f"--runtime={runtime}s"]
    for name, uri in jobs.items():
        command += [f"--name={name}", f"--uri={uri}"]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"fio failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
    return json.loads(proc.stdout[proc.stdout.index("{"):])["jobs"]


def side(job: dict) -> dict:
    """The read or the write half of a fio job's result, whichever did the I/O."""
    return job["read"] if job["read"]["io_bytes"] else job["write"]
