"""Heal at network speed (issue 14): a heal after a node loss against one SSH stream over loopback.

    python -m tests.bench.heal [--mib 1024] [--data bench-data]

In one run:
  heal      3 nodes on 127.0.0.1 (disk nodes), R=2, MIB MiB of unique blocks imported; node1 is
            failed (kill -9) and `heal --wait` timed from the kill to nothing under-replicated.
            Its rate is the bytes it copied (the lost node's copies, about 2/3 of the data) over
            that time; the rate over the unique data is shown beside it.
  OpenSSH   the same number of bytes through one `ssh -c aes128-gcm@openssh.com` stream to
            `cat >/dev/null`, on a private sshd (Debian's openssh-server: a bench-only tool)
            started on 127.0.0.1 with a temporary config, host key and authorized_keys
  asyncssh  the same bytes through one asyncssh channel (the nodes' transport, same cipher,
            window and packet size) to a sink server in another process
The target: heal >= 50 % of the OpenSSH stream. Also shown: the CPU seconds each process spent
during the heal (the nodes', the coordinator's), which say what bounds it. Prints a table and one
JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import asyncssh
import numpy as np

from engine import api
from engine.cluster.config import ClusterConfig
from engine.net import rpc

from .common import MiB, mb_per_s, parser, report, scratch, verdict

SSHD = "/usr/sbin/sshd"
CIPHER = "aes128-gcm@openssh.com"
TARGET = 0.5
LATER = 3600.0          # repair delay: only the timed heal copies
CHUNK = 1 * MiB         # what the stream writers write at a time
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def bench_heal(work: Path, mib: int) -> dict:
    path = work / "cluster"
    api.cluster_up(path, nodes=3, replicas=2, repair_delay=LATER)
    try:
        image = work / "unique.raw"
        rng = np.random.default_rng(3)
        with open(image, "wb") as f:
            for _ in range(mib // 64):
                f.write(rng.integers(0, 256, size=64 << 20, dtype=np.uint8).tobytes())
        with api.open_cluster(path) as admin:
            admin.import_image("unique", str(image))
            image.unlink()
            pids = {e.name: e.pid for e in ClusterConfig.load(path).nodes
                    if e.name != "node1"}
            before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            mine = os.times()
            started = time.monotonic()
            admin.fail_node("node1")
            figures = admin.heal(wait=True)
            seconds = time.monotonic() - started
            used = os.times()
            node_cpu = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
        assert figures.under_replicated == 0
        return {"unique_bytes": mib * MiB, "copied_bytes": figures.copied * 4096,
                "relayed": figures.relayed, "heal_s": seconds,
                "node_cpu_s": {k: round(v, 2) for k, v in node_cpu.items()},
                "coordinator_cpu_s": round(used.user + used.system - mine.user - mine.system,
                                           2)}
    finally:
        api.cluster_down(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_file(path: Path, proc: subprocess.Popen, what: str) -> None:
    """Waits until `proc` made `path` (sshd writes its pid file once it listens)."""
    for _ in range(100):          # 10 s at most
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        if path.exists():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not start: no {path}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def openssh_stream(work: Path, nbytes: int) -> float:
    """Seconds for one OpenSSH stream to carry `nbytes` to `cat >/dev/null` over loopback,
    connection set-up included (as the heal's time includes its own)."""
    if not Path(SSHD).exists():
        raise SystemExit(f"{SSHD} is missing: `apt-get install openssh-server` (bench only)")
    home = work / "sshd"
    home.mkdir()
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / name)],
                       check=True)
    shutil.copy(home / "client_key.pub", home / "authorized_keys")
    port = free_port()
    (home / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {home / 'host_key'}\n"
        f"AuthorizedKeysFile {home / 'authorized_keys'}\nPidFile {home / 'sshd.pid'}\n"
        "UsePAM no\nStrictModes no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        f"Ciphers {CIPHER}\nLogLevel ERROR\n")
    Path("/run/sshd").mkdir(exist_ok=True)        # sshd's privilege separation directory
    sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", str(home / "sshd_config")])
    try:
        wait_for_file(home / "sshd.pid", sshd, "sshd")
        ssh = (f"ssh -F /dev/null -i {home / 'client_key'} -o BatchMode=yes"
               f" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
               f" -c {CIPHER} -p {port} 127.0.0.1 'cat >/dev/null'")
        started = time.monotonic()
        subprocess.run(f"head -c {nbytes} /dev/zero | {ssh}", shell=True, check=True)
        return time.monotonic() - started
    finally:
        stop(sshd)


class _Sink(asyncssh.SSHServerSession):
    """A session that takes whatever comes and closes at EOF."""

    def connection_made(self, chan):
        self.chan = chan

    def data_received(self, data, datatype):
        pass

    def eof_received(self):
        self.chan.exit(0)
        return False

    def subsystem_requested(self, subsystem):
        return True


class _Open(asyncssh.SSHServer):
    def begin_auth(self, username):
        return False            # a loopback sink for the bench: no auth

    def session_requested(self):
        return _Sink()


async def _serve_sink() -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.create_server(
        _Open, "127.0.0.1", 0, server_host_keys=[key], encoding=None,
        encryption_algs=[CIPHER], window=rpc.WINDOW, max_pktsize=rpc.PACKET)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()


async def _stream(port: int, nbytes: int) -> None:
    async with asyncssh.connect("127.0.0.1", port, username="bench", known_hosts=None,
                                agent_path=None, config=None, client_keys=None,
                                encryption_algs=[CIPHER], window=rpc.WINDOW,
                                max_pktsize=rpc.PACKET) as conn:
        writer, _, _ = await conn.open_session(subsystem="sink", encoding=None)
        chunk = bytes(CHUNK)
        for _ in range(nbytes // CHUNK):
            writer.write(chunk)
            await writer.drain()
        writer.write_eof()
        await writer.channel.wait_closed()


def asyncssh_stream(nbytes: int) -> float:
    """Seconds for one asyncssh channel to carry `nbytes` to a sink in another process."""
    sink = subprocess.Popen([sys.executable, "-m", "tests.bench.heal", "--sink"],
                            stdout=subprocess.PIPE, text=True)
    try:
        port = int(sink.stdout.readline())
        started = time.monotonic()
        asyncio.run(_stream(port, nbytes))
        return time.monotonic() - started
    finally:
        stop(sink)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--mib", type=int, default=1024, help="unique data to heal (default 1024)")
    p.add_argument("--sink", action="store_true", help=argparse.SUPPRESS)   # the asyncssh sink
    args = p.parse_args()
    if args.sink:
        asyncio.run(_serve_sink())
        return
    work = scratch(args.data, "heal")
    try:
        r = bench_heal(work, args.mib)
        moved = r["copied_bytes"] // CHUNK * CHUNK
        r["openssh_s"] = openssh_stream(work, moved)
        r["asyncssh_s"] = asyncssh_stream(moved)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    heal = mb_per_s(r["copied_bytes"], r["heal_s"])
    openssh = mb_per_s(moved, r["openssh_s"])
    ours = mb_per_s(moved, r["asyncssh_s"])
    r.update({"heal_mb_s": heal, "heal_unique_mb_s": mb_per_s(r["unique_bytes"], r["heal_s"]),
              "openssh_mb_s": openssh, "asyncssh_mb_s": ours, "heal_vs_openssh": heal / openssh,
              "verdict": verdict(heal / openssh, TARGET)})
    rows = [("what", "time", "rate", ""),
            (f"heal after a node loss ({args.mib} MiB unique, {r['copied_bytes'] >> 20} MiB"
             " copied)", f"{r['heal_s']:.1f} s", f"{heal:.0f} MB/s",
             f"{r['heal_unique_mb_s']:.0f} MB/s of unique data"),
            (f"one OpenSSH stream ({CIPHER})", f"{r['openssh_s']:.1f} s", f"{openssh:.0f} MB/s",
             ""),
            ("one asyncssh stream (same cipher)", f"{r['asyncssh_s']:.1f} s", f"{ours:.0f} MB/s",
             ""),
            ("heal / OpenSSH", "", f"{r['heal_vs_openssh']:.2f}",
             f"target >= {TARGET}: {r['verdict']}"),
            ("CPU during the heal", "", "", ", ".join(
                [f"{k} {v:.1f} s" for k, v in r["node_cpu_s"].items()]
                + [f"coordinator {r['coordinator_cpu_s']:.1f} s"]))]
    report("heal", "Heal from node to node against one SSH stream over loopback", rows,
           {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()})


if __name__ == "__main__":
    main()
