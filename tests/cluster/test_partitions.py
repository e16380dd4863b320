"""Partitions (issue 14): every node and every coordinator in its own network namespace, on its
own address behind a veth pair to one bridge (tests/netns.py), and links cut and healed under
running writers. No acknowledged write is lost, no VM has two writers that both acknowledge
writes, and a partitioned minority refuses writes in one line.

Each coordinator host has its own copy of the cluster directory, as separate machines would.
Writers are `blockfold -c DIR nbd serve` in their host's namespace, written by qemu-io there: a
write is acknowledged when qemu-io's write and the flush after it both succeed."""

from __future__ import annotations

import json
import re
import select
import shutil
import subprocess
import sys
import threading
import time
from itertools import combinations

import numpy as np
import pytest

from engine.cluster.config import ClusterConfig
from engine.node import keys
from tests import netns
from tests.conftest import ROOT

PORT = 7000             # every node listens on its own address, so all on one port
KiB = 1024
# What a guest waits for one I/O before it gives up on the disk (Linux's SCSI and virtio-blk
# default): a refusal must reach it before that, a contract, not a speed figure.
GUEST_IO_TIMEOUT = 30
MINORITY = (r"blockfold: error: cluster \S+: 2 of 5 nodes answer; writes need 3 \(a majority\):"
            r" restore nodes \(commands that only read still work\)\n")


class Served:
    """`blockfold -c DIR nbd serve` on 127.0.0.1 inside a host's namespace; `port` is None when it
    refused to start (its stderr in `err()`)."""

    def __init__(self, net: netns.Network, host: str, cluster, log):
        self.host, self.log = host, log
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(
                net.command(host, sys.executable, "-m", "console", "-c", cluster, "nbd",
                            "serve", "--listen", "127.0.0.1:0"),
                cwd=ROOT, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline().decode() if ready else ""
        self.port = int(line.rsplit(":", 1)[1]) if line.startswith("ready 127.0.0.1:") else None
        if self.port is None:
            self.proc.kill()
            self.proc.wait(10)

    def uri(self, vm: str) -> str:
        return f"nbd://127.0.0.1:{self.port}/{vm}"

    def err(self) -> str:
        return self.log.read_text()

    def stop(self) -> int:
        """SIGTERM; its exit status."""
        self.proc.terminate()
        try:
            return self.proc.wait(30)
        finally:
            self.proc.kill()


class Site:
    """A cluster of nodes n1..nN (node1..nodeN) and coordinator hosts on one test network."""

    def __init__(self, net: netns.Network, tmp_path):
        self.net, self.tmp = net, tmp_path
        self.procs: list[subprocess.Popen] = []
        self.served: list[Served] = []

    def start(self, nodes: int, replicas: int, hosts: tuple[str, ...],
              lease_seconds: float | None = None) -> None:
        """`lease_seconds`: the writers' leases (cluster.json's; 10 s unless given)."""
        net, tmp_path = self.net, self.tmp
        for host in (*[f"n{k}" for k in range(1, nodes + 1)], *hosts):
            net.add(host)
        self.config = ClusterConfig.create(tmp_path / "cluster", replicas, min(2, replicas),
                                           4096, 0.0)
        if lease_seconds is not None:
            self.config.lease_seconds = lease_seconds
            self.config.save()
        started = [self._start_node(k) for k in range(1, nodes + 1)]   # all at once
        for k, proc in enumerate(started, 1):
            ready, _, _ = select.select([proc.stdout], [], [], 30)
            line = proc.stdout.readline().decode() if ready else ""
            assert line.startswith("ready "), \
                f"node{k}: {(self.tmp / 'nodes' / f'node{k}' / 'node.log').read_text()}"
        for k in range(1, nodes + 1):       # joined from the first coordinator host
            self.ok(hosts[0], "cluster", "add", self.config.path,
                    f"{net.hosts[f'n{k}']}:{PORT}", "--name", f"node{k}")

    def _start_node(self, k: int) -> subprocess.Popen:
        """Node k's process, started (its "ready" line not yet read)."""
        data = self.tmp / "nodes" / f"node{k}"
        data.mkdir(parents=True)
        (data / "authorized_keys").write_text(self.config.admin_public_key())
        # What an operator gives a node started elsewhere (`cluster add --help`): the peer key,
        # so heals go from node to node here too.
        shutil.copy(self.config.peer_key, data / keys.PEER_KEY)
        (data / keys.PEER_KEYS).write_text(
            f"{keys.PEER_OPTIONS} {self.config.peer_public_key()}")
        with open(data / "node.log", "wb") as log:
            proc = subprocess.Popen(
                self.net.command(f"n{k}", sys.executable, "-m", "engine.node", "--data", data,
                                 "--listen", f"{self.net.hosts[f'n{k}']}:{PORT}"),
                cwd=ROOT, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def cluster(self, name: str):
        """A copy of the cluster directory: what another machine (or admin) has."""
        path = self.tmp / f"cluster-{name}"
        shutil.copytree(self.config.path, path)
        return path

    def cli(self, host: str, *args) -> subprocess.CompletedProcess:
        return subprocess.run(self.net.command(host, sys.executable, "-m", "console", *args),
                              cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=90)

    def ok(self, host: str, *args) -> str:
        done = self.cli(host, *args)
        assert done.returncode == 0, f"{args}: {done.stderr}"
        return done.stdout

    def serve(self, host: str, cluster) -> Served:
        served = Served(self.net, host, cluster, self.tmp / f"serve-{len(self.served)}.log")
        self.served.append(served)
        return served

    def write(self, server: Served, vm: str, pattern: int, offset: int, length: int) -> bool:
        """A write and a flush by qemu-io on the server's host: True when both succeed."""
        done = subprocess.run(self.net.command(
            server.host, "qemu-io", "-f", "raw", "-c", f"write -P {pattern} {offset} {length}",
            "-c", "flush", server.uri(vm)), capture_output=True, text=True, timeout=90)
        return done.returncode == 0

    def read(self, host: str, cluster, vm: str) -> bytes:
        out = self.tmp / f"{vm}-{time.monotonic_ns()}.raw"
        self.ok(host, "-c", cluster, "vm", "export", vm, out)
        data = out.read_bytes()
        out.unlink()
        return data

    def close(self) -> None:
        for served in self.served:
            served.proc.kill()
            served.proc.wait(30)
        for proc in self.procs:
            proc.kill()
            proc.wait(30)


@pytest.fixture
def site(tmp_path):
    reason = netns.unavailable()
    if reason:
        pytest.skip(reason)
    net = netns.Network()
    made = []

    def make(**kw) -> Site:
        made.append(Site(net, tmp_path))        # stopped after, even if it fails to start
        made[-1].start(**kw)
        return made[-1]

    try:
        yield make
    finally:
        try:
            for s in made:
                s.close()
        finally:
            net.close()


def few_blocks(path, seed: int, distinct: int = 4, blocks: int = 64) -> bytes:
    """A raw image of `blocks` 4 KiB blocks: `distinct` random ones repeated, and holes."""
    rng = np.random.default_rng(seed)
    kinds = rng.integers(0, 256, size=(distinct + 1, 4096), dtype=np.uint8)
    kinds[-1] = 0
    data = kinds[rng.integers(0, distinct + 1, size=blocks)].tobytes()
    path.write_bytes(data)
    return data


# The leases of the tests that wait for a cut-off writer's lease to run out on the other side:
# the same path as with the default 10 s, sooner. (The flapping link keeps 10 s: its cuts of up
# to 4.5 s must not let its writer's lease lapse.)
LEASE = 4.0

# What the writer w cannot reach, and for how long (s): single links and two at once (w in a
# minority), some shorter than the 2 s a node gets before it is judged, some longer; the last
# minority lasts long enough that a flush must fail in it.
FLAPS = [(("n3",), 1.0), ((), 0.4), (("n1", "n2"), 2.5), ((), 0.4), (("n2",), 2.0), ((), 0.3),
         (("n1", "n3"), 0.8), ((), 0.6), (("n2", "n3"), 4.5), ((), 0.5), (("n1",), 1.0)]


def test_a_flapping_link_loses_no_write_a_flush_acknowledged(site, tmp_path):
    """Links between the writer and its nodes cut and healed under qemu-io's writes, each to
    its own region, each followed by a flush: every write whose flush succeeded reads back
    after (one whose flush failed may or may not), writes go on once the links are back, and
    fsck is clean."""
    s = site(nodes=3, replicas=2, hosts=("w",))
    c = s.cluster("w")
    region, regions = 16 * KiB, 150
    with open(tmp_path / "disk.raw", "wb") as f:
        f.truncate(region * (regions + 1))
    w = s.serve("w", c)
    assert w.port, w.err()
    s.ok("w", "-c", c, "vm", "import", "disk", tmp_path / "disk.raw")
    flapped = threading.Event()

    def flap():
        try:
            for nodes, seconds in FLAPS:
                for node in nodes:
                    s.net.cut("w", node)
                time.sleep(seconds)
                s.net.heal_all()
        finally:
            flapped.set()

    flapper = threading.Thread(target=flap)
    flapper.start()
    acked = []
    try:
        while not flapped.is_set() and len(acked) < regions - 1:
            k = len(acked)
            acked.append(s.write(w, "disk", k % 255 + 1, k * region, region))
            flapped.wait(0.1)
    finally:
        flapper.join(60)
    # Whether a flush fell inside a double cut above depends on timing; this one does: the
    # writer cut off from 2 of its 3 nodes until its write and flush end is refused.
    for node in ("n1", "n2"):
        s.net.cut("w", node)
    k = len(acked)
    acked.append(s.write(w, "disk", k % 255 + 1, k * region, region))
    s.net.heal_all()
    assert acked[-1] is False, "a writer that reaches 1 of 3 nodes acknowledged a flush"
    deadline = time.monotonic() + 30        # healed: writes go on
    while not s.write(w, "disk", 0xEE, regions * region, region):
        assert time.monotonic() < deadline, w.err()
        time.sleep(0.5)
    assert w.stop() == 0, w.err()
    s.ok("w", "-c", c, "heal", "--wait")
    got = s.read("w", c, "disk")
    assert got[regions * region:] == b"\xee" * region
    for k, ack in enumerate(acked):
        part = got[k * region:(k + 1) * region]
        assert part == bytes([k % 255 + 1]) * region or (not ack and not any(part)), (k, ack)
    assert not any(got[len(acked) * region:regions * region])
    done = s.cli("w", "-c", c, "fsck")
    assert done.returncode == 0, done.stdout


def test_a_cut_off_writer_is_fenced_and_the_majority_keeps_every_acknowledged_write(
        site, tmp_path):
    """Issue 14's split brain over a real partition: writer A and two nodes on one side, writer
    B and three nodes on the other. A's flushes fail, a new writer on its side is refused in
    one line, a reader there still reads; B writes; after the heal A stays fenced, and a fresh
    open finds every write either acknowledged, and fsck clean."""
    s = site(nodes=5, replicas=3, hosts=("a", "b"), lease_seconds=LEASE)
    ca, ca2, cb = s.cluster("a"), s.cluster("a2"), s.cluster("b")
    vm1 = bytearray(few_blocks(tmp_path / "vm1.raw", seed=1))
    vm2 = few_blocks(tmp_path / "vm2.raw", seed=2)
    acks: list[tuple[str, bool]] = []        # (writer, acknowledged), in time order

    def write(server: Served, pattern: int, offset: int, length: int) -> bool:
        acked = s.write(server, "vm1", pattern, offset, length)
        acks.append((server.host, acked))
        if acked:
            vm1[offset:offset + length] = bytes([pattern]) * length
        return acked

    a = s.serve("a", ca)
    assert a.port, a.err()
    s.ok("a", "-c", ca, "vm", "import", "vm1", tmp_path / "vm1.raw")
    assert write(a, 0x11, 64 * KiB, 16 * KiB)

    # The minority: two nodes that hold a copy of every block so far, so it can still read.
    rows = json.loads(s.ok("a", "-c", ca, "blocks", "--json", "--limit", "1000"))["rows"]
    minority = next(pair for pair in combinations(range(1, 6), 2)
                    if all({f"node{k}" for k in pair} & set(r["nodes"]) for r in rows))
    for k in range(1, 6):
        s.net.cut("b" if k in minority else "a", f"n{k}")

    started = time.monotonic()
    assert not write(a, 0x22, 128 * KiB, 16 * KiB)
    # EIO, not a hang: qemu-io's write and flush both end before one guest I/O would time out.
    assert time.monotonic() - started < GUEST_IO_TIMEOUT
    assert "a catalog change reached 2 of 5 nodes; it needs 3" in a.err()
    done = s.cli("a", "-c", ca2, "vm", "clone", "vm1", "x")      # another writer, A's side
    assert done.returncode == 1 and re.fullmatch(MINORITY, done.stderr), done.stderr
    assert s.read("a", ca2, "vm1") == vm1           # a reader there: the last commit

    deadline = time.monotonic() + 30                # A's lease runs out on B's side
    while (b := s.serve("b", cb)).port is None:
        assert "is in use by" in b.err() and time.monotonic() < deadline, b.err()
        time.sleep(1)
    assert write(b, 0x33, 0, 8 * KiB)              # over what A wrote and had acknowledged
    s.ok("b", "-c", cb, "vm", "import", "vm2", tmp_path / "vm2.raw")
    assert not write(a, 0x44, 192 * KiB, 16 * KiB)

    s.net.heal_all()
    assert write(b, 0x55, 32 * KiB, 8 * KiB)
    healed = time.monotonic()       # A reaches every node again: fenced, and told so
    told = len(a.err().splitlines())
    while not any("a newer writer has cluster" in line for line in a.err().splitlines()[told:]):
        assert not write(a, 0x66, 200 * KiB, 16 * KiB)
        assert time.monotonic() < healed + 30, a.err()
    # ... and it gives its lease up, so B catches up the nodes A held (they stayed "returning"
    # to B for as long as A ran), A still running.
    while {n["state"] for n in json.loads(s.ok("b", "-c", cb, "node", "ls", "--json"))} != {"up"}:
        assert time.monotonic() < healed + 30, a.err()
        time.sleep(0.5)
    assert "; waiting to take it back" in a.err()
    assert a.proc.poll() is None
    assert not write(a, 0x77, 200 * KiB, 16 * KiB)
    # No VM had two writers that both acknowledged writes: A's last precedes B's first.
    assert [w for w, acked in acks if acked] == ["a", "b", "b"]
    assert a.stop() != 0                            # its "clean" mark is refused too
    assert b.stop() == 0, b.err()
    s.ok("a", "-c", ca, "heal", "--wait")
    assert s.read("a", ca, "vm1") == vm1
    assert s.read("a", ca, "vm2") == vm2
    done = s.cli("a", "-c", ca, "fsck")
    assert done.returncode == 0, done.stdout


def test_a_fenced_writer_takes_the_cluster_back_once_the_newer_writer_closes(site, tmp_path):
    """The sequel of the split brain a VDI farm lives through: A is cut off from a majority, B
    takes the cluster and writes, the partition heals and A is fenced; once B closes, A takes
    the cluster back by itself, within a bounded time, reopened from the newest catalog: it
    serves B's writes, and writes again, with nobody restarting it."""
    s = site(nodes=5, replicas=3, hosts=("a", "b"), lease_seconds=LEASE)
    ca, cb = s.cluster("a"), s.cluster("b")
    vm1 = bytearray(few_blocks(tmp_path / "vm1.raw", seed=3))
    a = s.serve("a", ca)
    assert a.port, a.err()
    s.ok("a", "-c", ca, "vm", "import", "vm1", tmp_path / "vm1.raw")
    assert s.write(a, "vm1", 0x11, 0, 8 * KiB)
    vm1[0:8 * KiB] = b"\x11" * 8 * KiB
    for k in range(1, 6):
        s.net.cut("b" if k <= 2 else "a", f"n{k}")
    assert not s.write(a, "vm1", 0x22, 8 * KiB, 8 * KiB)
    deadline = time.monotonic() + 30                # A's lease runs out on B's side
    while (b := s.serve("b", cb)).port is None:
        assert "is in use by" in b.err() and time.monotonic() < deadline, b.err()
        time.sleep(1)
    assert s.write(b, "vm1", 0x33, 16 * KiB, 8 * KiB)
    vm1[16 * KiB:24 * KiB] = b"\x33" * 8 * KiB
    s.net.heal_all()
    healed = time.monotonic()
    while "; waiting to take it back" not in a.err():
        assert time.monotonic() < healed + 30, a.err()
        time.sleep(0.5)
    fenced = json.loads(s.ok("a", "-c", ca, "stats", "--json"))["fenced"]
    assert fenced.startswith("fenced: a newer writer has cluster"), fenced
    assert not s.write(a, "vm1", 0x44, 8 * KiB, 8 * KiB)
    assert b.stop() == 0, b.err()
    closed = time.monotonic()
    # A bound (it comes back by itself, unasked), not a speed figure: the time is printed.
    while not s.write(a, "vm1", 0x55, 24 * KiB, 8 * KiB):
        assert time.monotonic() < closed + 30, a.err()
        time.sleep(0.5)
    back = time.monotonic() - closed
    vm1[24 * KiB:32 * KiB] = b"\x55" * 8 * KiB
    assert json.loads(s.ok("a", "-c", ca, "stats", "--json"))["fenced"] == ""
    assert s.read("a", ca, "vm1") == vm1            # B's write kept, A's unflushed ones gone
    assert a.stop() == 0, a.err()
    assert "took cluster" in a.err() and " back: reopened from the newest catalog" in a.err()
    done = s.cli("a", "-c", ca, "fsck")
    assert done.returncode == 0, done.stdout
    print(f"\nA wrote again {back:.2f} s after B closed (qemu-io write+flush, retried every"
          " 0.5 s)")
