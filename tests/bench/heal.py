"""Heal at network speed (issue 14): a heal after a node loss against one SSH stream over loopback.

    python -m tests.bench.heal [--mib 1024] [--rounds 3] [--data bench-data]

In one run, ROUNDS times over, interleaved so each contender meets the same shared machine:
  heal      3 nodes on 127.0.0.1 (disk nodes), R=2, MIB MiB of unique blocks imported; a node
            is failed (kill -9: node1, then node2, …) and `heal --wait` timed from the kill to
            nothing under-replicated. Its rate is the bytes it copied (the lost node's copies,
            about 2/3 of the data) over that time. The node is then restored and a heal trims
            what it brought back (not timed).
  OpenSSH   the same number of bytes through one `ssh -c aes128-gcm@openssh.com` stream to
            `cat >/dev/null`, on a private sshd (Debian's openssh-server: a bench-only tool)
            started on 127.0.0.1 with a temporary config, host key and authorized_keys
  asyncssh  the same bytes through one asyncssh channel (the nodes' transport, same cipher,
            window and packet size) to a sink server in another process
The medians are reported. The target: heal >= 50 % of the OpenSSH stream. Also shown: the CPU
seconds the nodes and the coordinator spent during a heal, which say what bounds it. Prints a
table and one JSON line.
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
from contextlib import ExitStack
from pathlib import Path

import asyncssh
import numpy as np

from engine import api
from engine.cluster.config import ClusterConfig
from engine.net import rpc

from .common import MiB, mb_per_s, parser, report, scratch, verdict, write_unique

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


class Cluster:
    """3 nodes on 127.0.0.1, R=2, holding `mib` MiB of unique blocks, open for writing."""

    def __init__(self, work: Path, mib: int):
        self.path = work / "cluster"
        self.mib = mib
        api.cluster_up(self.path, nodes=3, replicas=2, repair_delay=LATER)
        try:
            image = write_unique(work / "unique.raw", mib)
            self.admin = api.open_cluster(self.path)
            self.admin.import_image("unique", str(image))
            image.unlink()
        except BaseException:
            self.close()
            raise

    def heal_after_loss(self, victim: str) -> dict:
        """Fails `victim`, times the heal from the kill to nothing under-replicated, then
        restores it and lets a heal trim what it brought back (not timed)."""
        pids = {e.name: e.pid for e in ClusterConfig.load(self.path).nodes if e.name != victim}
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        mine = os.times()
        started = time.monotonic()
        self.admin.fail_node(victim)
        figures = self.admin.heal(wait=True)
        seconds = time.monotonic() - started
        used = os.times()
        node_cpu = sum(cpu_seconds(pid) - before[name] for name, pid in pids.items())
        assert figures.under_replicated == 0 and figures.relayed == 0, figures
        self.admin.restore_node(victim)
        self.admin.heal(wait=True)
        return {"copied_bytes": figures.copied * 4096, "heal_s": seconds,
                "node_cpu_s": node_cpu,
                "coordinator_cpu_s": used.user + used.system - mine.user - mine.system}

    def close(self) -> None:
        try:
            if getattr(self, "admin", None) is not None:
                self.admin.close()
        finally:
            api.cluster_down(self.path)


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


class OpenSSH:
    """A private sshd on 127.0.0.1 (temporary config, host key, authorized_keys) and one
    `ssh -c aes128-gcm@openssh.com` stream to `cat >/dev/null` at a time."""

    def __init__(self, work: Path):
        if not Path(SSHD).exists():
            raise SystemExit(f"{SSHD} is missing: `apt-get install openssh-server` (bench only)")
        home = work / "sshd"
        home.mkdir()
        for name in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                            str(home / name)], check=True)
        shutil.copy(home / "client_key.pub", home / "authorized_keys")
        port = free_port()
        (home / "sshd_config").write_text(
            f"Port {port}\nListenAddress 127.0.0.1\nHostKey {home / 'host_key'}\n"
            f"AuthorizedKeysFile {home / 'authorized_keys'}\nPidFile {home / 'sshd.pid'}\n"
            "UsePAM no\nStrictModes no\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
            f"Ciphers {CIPHER}\nLogLevel ERROR\n")
        if os.geteuid() == 0:                     # sshd's privilege separation directory
            Path("/run/sshd").mkdir(exist_ok=True)
        self.sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", str(home / "sshd_config")])
        try:
            wait_for_file(home / "sshd.pid", self.sshd, "sshd")
        except BaseException:
            stop(self.sshd)
            raise
        self.ssh = (f"ssh -F /dev/null -i {home / 'client_key'} -o BatchMode=yes"
                    f" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
                    f" -o LogLevel=ERROR -c {CIPHER} -p {port} 127.0.0.1 'cat >/dev/null'")

    def stream(self, nbytes: int) -> float:
        """Seconds for one stream to carry `nbytes`, connection set-up included (as the heal's
        time includes its own)."""
        started = time.monotonic()
        subprocess.run(f"head -c {nbytes} /dev/zero | {self.ssh}", shell=True, check=True)
        return time.monotonic() - started

    def close(self) -> None:
        stop(self.sshd)


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


class AsyncSSH:
    """A sink server in another process, and one asyncssh channel to it at a time."""

    def __init__(self):
        self.sink = subprocess.Popen([sys.executable, "-m", "tests.bench.heal", "--sink"],
                                     stdout=subprocess.PIPE, text=True)
        self.port = int(self.sink.stdout.readline())

    def stream(self, nbytes: int) -> float:
        started = time.monotonic()
        asyncio.run(_stream(self.port, nbytes))
        return time.monotonic() - started

    def close(self) -> None:
        stop(self.sink)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--mib", type=int, default=1024, help="unique data to heal (default 1024)")
    p.add_argument("--rounds", type=int, default=3, help="node losses, each followed by the"
                   " two streams (default 3; medians are reported)")
    p.add_argument("--sink", action="store_true", help=argparse.SUPPRESS)  # the asyncssh sink
    args = p.parse_args()
    if args.sink:
        asyncio.run(_serve_sink())
        return
    work = scratch(args.data, "heal")
    rounds = []
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        openssh = OpenSSH(work)
        stack.callback(openssh.close)
        ours = AsyncSSH()
        stack.callback(ours.close)
        cluster = Cluster(work, args.mib)
        stack.callback(cluster.close)
        # Interleaved, so that each contender meets the same shared machine.
        for k in range(args.rounds):
            r = cluster.heal_after_loss(f"node{k % 3 + 1}")
            moved = r["copied_bytes"] // CHUNK * CHUNK
            r["heal_mb_s"] = mb_per_s(r["copied_bytes"], r["heal_s"])
            r["openssh_mb_s"] = mb_per_s(moved, openssh.stream(moved))
            r["asyncssh_mb_s"] = mb_per_s(moved, ours.stream(moved))
            rounds.append(r)
    med = {k: float(np.median([r[k] for r in rounds])) for k in rounds[0]}
    ratio = med["heal_mb_s"] / med["openssh_mb_s"]
    figures = {"unique_bytes": args.mib * MiB, "rounds": len(rounds),
               "copied_bytes": int(med["copied_bytes"]), "heal_s": med["heal_s"],
               "heal_mb_s": med["heal_mb_s"], "openssh_mb_s": med["openssh_mb_s"],
               "asyncssh_mb_s": med["asyncssh_mb_s"], "heal_vs_openssh": ratio,
               "verdict": verdict(ratio, TARGET),
               "node_cpu_s": med["node_cpu_s"], "coordinator_cpu_s": med["coordinator_cpu_s"],
               "per_round": [{k: round(v, 3) for k, v in r.items()} for r in rounds]}
    each = lambda key: ", ".join(f"{r[key]:.0f}" for r in rounds)     # noqa: E731
    rows = [("what (median of the rounds)", "rate", "each round"),
            (f"heal after a node loss ({args.mib} MiB unique, {med['copied_bytes'] / MiB:.0f}"
             f" MiB copied in {med['heal_s']:.1f} s)", f"{med['heal_mb_s']:.0f} MB/s",
             each("heal_mb_s")),
            (f"one OpenSSH stream ({CIPHER}), as many bytes", f"{med['openssh_mb_s']:.0f} MB/s",
             each("openssh_mb_s")),
            ("one asyncssh stream (same cipher)", f"{med['asyncssh_mb_s']:.0f} MB/s",
             each("asyncssh_mb_s")),
            ("heal / OpenSSH", f"{ratio:.2f}", f"target >= {TARGET}: {figures['verdict']}"),
            ("CPU during a heal: nodes (sum), coordinator",
             f"{med['node_cpu_s']:.1f} s, {med['coordinator_cpu_s']:.1f} s", "")]
    report("heal", "Heal from node to node against one SSH stream over loopback", rows,
           {k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()})


if __name__ == "__main__":
    main()
