"""A fenced service comes back by itself (issue 14): a service cut off long enough for a newer
writer to take its cluster says so wherever its health shows, and once that writer closes it takes
the cluster back, reopened from the newest catalog; NBD connections are dropped at the fencing,
new ones read what the newer writer committed and write again.

The service is cut off with SIGSTOP (its lease runs out on every node, as across a partition),
and the newer writer is this test's own process, as an operator's console or a CLI would be."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import weakref
from contextlib import contextmanager
from functools import partial

import pytest

from console.commands import console_admin
from engine import api
from engine.api import PoolLockedError
from engine.cluster.catalog import ReplicatedCatalog
from engine.errors import RefusedError
from engine.service.service import Service
from engine.cluster.members import Members
from tests.conftest import ROOT
from tests.nbdclient import CMD_FLUSH, EIO, REP_ERR_UNKNOWN, RawClient, tool
from tests.serviceproc import Served

from .conftest import console_overview, image, wait_until

BLOCK = 4096
# The clusters' write lease (cluster.json; 10 s by default): every test here waits for a stopped
# writer's lease to run out, once or twice. Eight heartbeats' worth: a loaded host still renews it.
LEASE = 4.0


def _cli(cluster, *args) -> str:
    done = subprocess.run([sys.executable, "-m", "console", "-c", str(cluster.path), *args],
                          cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _fenced(cluster) -> str:
    return json.loads(_cli(cluster, "stats", "--json"))["fenced"]


def _taken_back(cluster) -> bool:
    """Whether the cluster's events say its service took it back."""
    return any(e["kind"] == "catalog" and e["message"].startswith(f"took cluster {cluster.path}"
                                                                  " back")
               for e in json.loads(_cli(cluster, "events", "--json")))


def _writers(cluster) -> list[str]:
    """The writers etcd has a session of, each as "pid N ("."""
    writers = api.cluster_status(str(cluster.path))["etcd"].writers
    return [w[w.index("pid "):w.index("(") + 1] for w in writers]


def _unfenced(service) -> bool:
    """Whether the service says it is no longer fenced; a stats call that reached the replaced
    coordinator during the take-back is refused ("try again"), and means not yet."""
    try:
        return not service.stats().fenced
    except RefusedError as e:
        assert "back: try again" in str(e), e
        return False


def _stop(served: Served) -> str:
    """SIGTERM (SIGKILL after 60 s); its stderr. Its exit status is the caller's to check, once
    whatever failed before is told."""
    served.proc.terminate()
    try:
        return served.proc.communicate(timeout=60)[1]
    except subprocess.TimeoutExpired:
        served.proc.kill()
        return served.proc.communicate(timeout=30)[1]


def _take_over(cluster, seconds: float = 30.0):
    """The cluster opened for writing here, once the stopped service's lease has run out."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return cluster.open(actor="operator")
        except PoolLockedError:
            assert time.monotonic() < deadline, "the stopped service's lease never ran out"
            time.sleep(0.25)


@contextmanager
def _newer_writer(cluster, served):
    """A newer writer, as in every test here: the service stopped (SIGSTOP) until its lease runs
    out, the cluster opened here and 0x33 written to block 0 of "disk" and flushed, the service
    continued (whatever failed) and waited for until it says it is fenced. Yields the newer
    writer, closed on leaving."""
    os.kill(served.proc.pid, signal.SIGSTOP)
    try:
        newer = _take_over(cluster)
        with newer:
            newer.write("disk", 0, b"\x33" * BLOCK)
            newer.flush()
            os.kill(served.proc.pid, signal.SIGCONT)
            wait_until(lambda: _fenced(cluster), 30, "the service never said it was fenced")
            yield newer
    finally:
        # A no-op once it runs, or once it exited (a caller may stop it while fenced).
        served.proc.send_signal(signal.SIGCONT)


def _cluster_with_disk(make_cluster, tmp_path, mib: int, seed: int):
    """A 3-node R=2 cluster (leases of LEASE s) holding VM "disk" (`mib` MiB of random bytes);
    (cluster, bytes)."""
    cluster = make_cluster(nodes=3, replicas=2, lease_seconds=LEASE)
    disk = image(tmp_path / "disk.raw", mib, seed=seed)
    with cluster.open() as admin:
        admin.import_image("disk", str(tmp_path / "disk.raw"))
    return cluster, disk


def test_a_fenced_service_says_so_and_takes_its_cluster_back_once_the_newer_writer_closes(
        make_cluster, tmp_path, capsys):
    cluster, disk = _cluster_with_disk(make_cluster, tmp_path, 1, 41)
    served = Served(["-c", str(cluster.path)], "--nbd", "127.0.0.1:0", "--metrics",
                    "127.0.0.1:0")
    port = int(served.nbd.rsplit(":", 1)[1])
    old = new = newer = None
    stopped = False
    try:
        old = RawClient(port)
        old.connect("disk")
        assert old.write(0, b"\x11" * BLOCK) == 0 and old.simple(CMD_FLUSH) == 0

        os.kill(served.proc.pid, signal.SIGSTOP)
        stopped = True
        newer = _take_over(cluster)
        newer.write("disk", BLOCK, b"\x33" * BLOCK)
        newer.flush()
        os.kill(served.proc.pid, signal.SIGCONT)
        stopped = False
        woke = time.monotonic()

        # (a) Fenced, and told so: status, metrics; its old connection's flush fails.
        said = wait_until(lambda: _fenced(cluster), 30, "the service never said it was fenced")
        fenced_s = time.monotonic() - woke
        assert said.startswith(f"fenced: a newer writer has cluster {cluster.path} (")
        assert f"pid {os.getpid()} (" in said and said.endswith("; waiting to take it back")
        assert any(line.split(None, 1) == ["writer", said]
                   for line in _cli(cluster, "stats").splitlines())
        metrics = urllib.request.urlopen(served.metrics, timeout=10).read().decode()
        assert "blockfold_fenced 1.0" in metrics
        title, summary = asyncio.run(console_overview(cluster.path))
        assert title == "pool · fenced"
        assert f"FENCED · a newer writer has cluster {cluster.path}" in summary, summary
        # Its old connection is dropped at the fencing: it would read a state older than the
        # newer writer's commits (recv waits 10 s at most).
        assert old.closed_by_server()
        # A new client gets no export while fenced: it would read a state older than the
        # newer writer's commits (block 1 as the import left it, not 0x33).
        late = RawClient(port)
        try:
            late.handshake()
            kind, _, _ = late.go("disk")
            text = late.error_text
            assert kind == REP_ERR_UNKNOWN and text.startswith("VM 'disk' is not served now:"
                                                               " fenced: "), (kind, text)
        finally:
            late.close()
        assert _writers(cluster) == [f"pid {os.getpid()} ("]     # etcd names only the newer

        # (b) The newer writer closes: the service takes the cluster back by itself.
        newer.close()
        newer = None
        closed = time.monotonic()
        wait_until(lambda: not _fenced(cluster), 30, "the service never took the cluster back")
        status_s = time.monotonic() - closed
        new = RawClient(port)
        new.connect("disk")
        assert new.read(0, 3 * BLOCK) == (0, b"\x11" * BLOCK + b"\x33" * BLOCK
                                          + disk[2 * BLOCK:3 * BLOCK])
        assert new.write(3 * BLOCK, b"\x44" * BLOCK) == 0 and new.simple(CMD_FLUSH) == 0
        writes_s = time.monotonic() - closed
        tool("qemu-io", "-f", "raw", "-c", f"read -P 0x33 {BLOCK} {BLOCK}", "-c",
             f"read -P 0x44 {3 * BLOCK} {BLOCK}", served.uri("disk"))
        assert "blockfold_fenced 0.0" in urllib.request.urlopen(served.metrics,
                                                                 timeout=10).read().decode()
        title, summary = asyncio.run(console_overview(cluster.path))
        assert title == "pool" and "healthy" in summary, (title, summary)
        assert _writers(cluster) == [f"pid {served.proc.pid} ("]

        # (c) The events tell the fencing and the take-back.
        events = [e["message"] for e in json.loads(_cli(cluster, "events", "--json"))
                  if e["kind"] == "catalog"]
        assert any(m.startswith("fenced for ") and f"pid {os.getpid()} (" in m
                   for m in events), events
        assert _taken_back(cluster), events
    finally:
        for client in (old, new):
            if client is not None:
                client.close()
        if stopped:
            os.kill(served.proc.pid, signal.SIGCONT)
        if newer is not None:
            newer.close()
        err = _stop(served)
    assert served.proc.returncode == 0, err
    assert f"fenced: a newer writer has cluster {cluster.path}" in err
    assert "at the fencing: 1 NBD connection dropped" in err, err
    with cluster.open(readonly=True) as admin:
        assert admin.read("disk", 0, 4 * BLOCK) == (b"\x11" * BLOCK + b"\x33" * BLOCK
                                                  + disk[2 * BLOCK:3 * BLOCK] + b"\x44" * BLOCK)
        assert admin.read("disk", 4 * BLOCK, len(disk) - 4 * BLOCK) == disk[4 * BLOCK:]
    with cluster.open() as admin:
        assert admin.fsck() == []
    with capsys.disabled():
        print(f"\nfenced service: status said fenced {fenced_s:.2f} s after SIGCONT; writable"
              f" {status_s:.2f} s and a new NBD connection wrote+flushed {writes_s:.2f} s after"
              " the newer writer closed")


def test_a_fenced_service_that_reaches_a_minority_waits_saying_why_then_comes_back(
        make_cluster, tmp_path):
    """Fenced, and once the newer writer closes only 1 of 3 nodes answers: the service cannot
    take the cluster back and its status says why, in the same line; once the nodes are back it
    takes it, caught up from their newest catalog, without a restart."""
    cluster, disk = _cluster_with_disk(make_cluster, tmp_path, 1, 42)
    served = Served(["-c", str(cluster.path)], "--nbd", "127.0.0.1:0")
    try:
        with _newer_writer(cluster, served):
            pass
        for name in ("node2", "node3"):
            cluster.kill(name)
        said = wait_until(lambda: "cannot take it back" in (f := _fenced(cluster)) and f, 30,
                     "the service never said why it cannot take the cluster back")
        assert said.endswith("cannot take it back: cluster"
                             f" {cluster.path}: 1 of 3 nodes answer; writes need 2 (a majority):"
                             " restore nodes (commands that only read still work)"), said
        for name in ("node2", "node3"):
            api.restore_node(cluster.path, name)
        wait_until(lambda: not _fenced(cluster), 30, "the service never took the cluster back")
        tool("qemu-io", "-f", "raw", "-c", f"read -P 0x33 0 {BLOCK}", "-c",
             f"write -P 0x44 {BLOCK} {BLOCK}", "-c", "flush", served.uri("disk"))
    finally:
        err = _stop(served)
    assert served.proc.returncode == 0, err
    assert err.count("cannot take cluster") == 1, err      # told once, not every 2 s
    with cluster.open() as admin:
        assert admin.read("disk", 0, 2 * BLOCK) == b"\x33" * BLOCK + b"\x44" * BLOCK
        assert admin.read("disk", 2 * BLOCK, len(disk) - 2 * BLOCK) == disk[2 * BLOCK:]
        assert admin.fsck() == []


def _promise_and_die(cluster) -> None:
    """What a writable open that died after its nodes promised it a new epoch, before its first
    commit (Ctrl-C in its rebuild, say), leaves: every node promised an epoch that no replica
    has. Done by that open's own code, once the stopped service's lease has run out."""
    deadline = time.monotonic() + 30
    while True:
        members = Members(cluster.config)
        try:
            members.probe_all()
            members.take_lease()
            break
        except PoolLockedError:
            members.close()
            assert time.monotonic() < deadline, "the stopped service's lease never ran out"
            time.sleep(0.25)
    try:
        ReplicatedCatalog.load(members, cluster.config.min_replicas, BLOCK, writable=True)
    finally:
        members.close()


def test_a_service_refused_by_an_epoch_no_writer_committed_is_fenced_and_comes_back(
        make_cluster, tmp_path):
    """A newer writer was promised an epoch by every node and died before it committed
    anything: no replica is newer, yet every commit of the service is refused (STALE_EPOCH).
    It must count as fenced, so that it takes the cluster back with an epoch of its own, not
    fail every flush for as long as it runs."""
    cluster, disk = _cluster_with_disk(make_cluster, tmp_path, 1, 43)
    served = Served(["-c", str(cluster.path)], "--nbd", "127.0.0.1:0")
    port = int(served.nbd.rsplit(":", 1)[1])
    old = None
    stopped = False
    try:
        old = RawClient(port)
        old.connect("disk")
        assert old.write(0, b"\x11" * BLOCK) == 0 and old.simple(CMD_FLUSH) == 0
        assert old.write(BLOCK, b"\x22" * BLOCK) == 0
        os.kill(served.proc.pid, signal.SIGSTOP)
        stopped = True
        _promise_and_die(cluster)
        os.kill(served.proc.pid, signal.SIGCONT)
        stopped = False
        # Its flush fails, or its connection is dropped first, at the fencing: either way the
        # write is never acknowledged as durable.
        try:
            flushed = old.simple(CMD_FLUSH)
        except (EOFError, ConnectionError):
            flushed = None
        assert flushed in (EIO, None), flushed
        # Fenced, it drops its connection (recv waits 10 s at most). No newer writer holds the
        # cluster, so it takes it back at its first try, within RETAKE_S: too short a while to
        # catch its status saying fenced by running CLIs on a busy machine; its events tell.
        assert old.closed_by_server()
        wait_until(lambda: _taken_back(cluster), 30, "the service never took the cluster back")
        tool("qemu-io", "-f", "raw", "-c", f"read -P 0x11 0 {BLOCK}", "-c",
             f"write -P 0x44 {BLOCK} {BLOCK}", "-c", "flush", served.uri("disk"))
    finally:
        if old is not None:
            old.close()
        if stopped:
            os.kill(served.proc.pid, signal.SIGCONT)
        err = _stop(served)
    assert served.proc.returncode == 0, err
    assert "at the fencing: 1 NBD connection dropped" in err, err
    with cluster.open() as admin:
        assert admin.read("disk", 0, 2 * BLOCK) == b"\x11" * BLOCK + b"\x44" * BLOCK
        assert admin.read("disk", 2 * BLOCK, len(disk) - 2 * BLOCK) == disk[2 * BLOCK:]
        assert admin.fsck() == []


def _write_from_silence(cluster) -> subprocess.Popen:
    """`vm write disk --offset 0 -` from a stdin that sends nothing: its job in the service waits
    for bytes until it is cancelled."""
    return subprocess.Popen([sys.executable, "-m", "console", "-c", str(cluster.path), "vm",
                             "write", "disk", "--offset", "0", "-"], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_a_fenced_service_refuses_every_call_but_its_reporting(make_cluster, tmp_path):
    """While fenced, a call that would read the fenced state (older than the newer writer's
    commits) or change it is refused in one line, the fenced one; stats (which lists no VM
    then), events, jobs and the nodes' health still answer, and nothing the refused calls asked
    for is done."""
    cluster, _ = _cluster_with_disk(make_cluster, tmp_path, 1, 47)
    served = Served(["-c", str(cluster.path)])
    try:
        with _newer_writer(cluster, served):
            said = _fenced(cluster)
            for args in (["vm", "clone", "disk", "desk1"], ["vm", "ls"]):
                done = subprocess.run([sys.executable, "-m", "console", "-c",
                                       str(cluster.path), *args], cwd=ROOT,
                                      stdin=subprocess.DEVNULL, capture_output=True,
                                      text=True, timeout=60)
                method = "clone" if args[1] == "clone" else "vms"
                assert done.returncode != 0 and f"{method} refused: {said}" in done.stderr, (
                    args, done.returncode, done.stderr)
            assert any(line.split(None, 1) == ["writer", said]
                       for line in _cli(cluster, "stats").splitlines())
            # No VM is listed: the list would be the fenced state's, older than the newer
            # writer's commits.
            assert json.loads(_cli(cluster, "stats", "--json"))["vms"] == []
            _cli(cluster, "events")
            _cli(cluster, "job", "ls")
            # The nodes' health answers, as they answer now (it was refused: what an operator
            # needs most then), without the coordinator's counts of its fenced state.
            nodes = json.loads(_cli(cluster, "node", "ls", "--json"))
            assert [(n["name"], n["state"], n["live_blocks"], n["under_replicated"])
                    for n in nodes] == [(f"node{i}", "up", None, None) for i in (1, 2, 3)]
            assert all(n["blocks"] > 0 and n["latency_ms"] is not None for n in nodes), nodes
            assert _cli(cluster, "node", "ls").splitlines()[1].split()[:3] == [
                "node1", nodes[0]["address"], "up"]
        wait_until(lambda: not _fenced(cluster), 30, "the service never took the cluster back")
        assert [v["name"] for v in json.loads(_cli(cluster, "stats", "--json"))["vms"]] == [
            "disk"]
        assert all(n["live_blocks"] > 0 and n["under_replicated"] == 0
                   for n in json.loads(_cli(cluster, "node", "ls", "--json")))
        assert _cli(cluster, "vm", "ls").split().count("desk1") == 0
    finally:
        err = _stop(served)
    assert served.proc.returncode == 0, err
    with cluster.open(readonly=True) as admin:
        assert admin.vm_names() == ["disk"]


def test_a_job_running_at_the_fencing_is_cancelled_and_none_starts_while_fenced(
        make_cluster, tmp_path):
    """A job running on the service when it is fenced works from the fenced state: it is
    cancelled at once, not left running until the take-back (nor over the state released then:
    a scrub did, and failed with "the core is closed"); while fenced no job starts, and once the
    cluster is taken back a scrub reads it to its end."""
    cluster, _ = _cluster_with_disk(make_cluster, tmp_path, 1, 44)
    served = Served(["-c", str(cluster.path)])
    service = writer = None
    try:
        service = api.find_service(cluster.path, actor="operator")
        writer = _write_from_silence(cluster)
        job = wait_until(lambda: next((j for j in service.jobs() if j.kind == "write"), None), 30,
                    "the write from stdin never started")
        with _newer_writer(cluster, served):
            try:
                service.start_scrub()
            except RefusedError as e:
                assert str(e) == f"start_scrub refused: {service.stats().fenced}", e
            else:
                raise AssertionError("a fenced service started a scrub")
            ended = wait_until(lambda: next((j for j in service.jobs() if j.id == job.id
                                        and j.state != "running"), None), 15,
                          "the write of the fenced state still runs while fenced")
            assert ended.state == "cancelled", ended
            # Its state, then why: "cancelled" is said once (and once to its client, below).
            assert ended.message.startswith("the service was fenced: it worked from"), ended
        wait_until(lambda: _unfenced(service), 30, "the service never took the cluster back")
        writer.stdin.close()            # the CLI reads its stdin until it ends
        assert writer.wait(30) != 0
        said = writer.stderr.read()
        assert said.startswith("blockfold: error: write of stdin cancelled: the service was fenced:"
                               " it worked from"), said
        assert service.scrub().finished
    finally:
        if writer is not None:
            if writer.poll() is None:
                writer.kill()
            writer.wait(30)
            for pipe in (writer.stdin, writer.stdout, writer.stderr):
                pipe.close()
        if service is not None:
            service.close()
        err = _stop(served)
    assert served.proc.returncode == 0, err
    assert "at the fencing: 0 NBD connections dropped, 1 job cancelled" in err, err
    assert "internal error" not in err, err


def _metric_fenced(served: Served) -> bool:
    """The service's own blockfold_fenced (DIR/admin.sock may be another service's)."""
    text = urllib.request.urlopen(served.metrics, timeout=10).read().decode()
    return "blockfold_fenced 1.0" in text


def test_a_service_that_takes_its_cluster_back_from_another_service_answers_on_the_socket(
        make_cluster, tmp_path):
    """The newer writer is a second service B (a standby that took over while A was stopped),
    which made DIR/admin.sock its own. Once A takes the cluster back, commands reach A there: not
    B, stopped or fenced, nor no service at all once B has exited (A then held the lease with
    no socket, and every command that writes was refused as locked by A)."""
    cluster, _ = _cluster_with_disk(make_cluster, tmp_path, 1, 45)
    first = Served(["-c", str(cluster.path)], "--metrics", "127.0.0.1:0")
    second = None
    stopped = []
    try:
        os.kill(first.proc.pid, signal.SIGSTOP)
        stopped.append(first)
        second = Served(["-c", str(cluster.path)], "--metrics", "127.0.0.1:0")   # a standby
        os.kill(first.proc.pid, signal.SIGCONT)
        stopped.remove(first)
        wait_until(lambda: _metric_fenced(first), 30, "A never said it was fenced")

        os.kill(second.proc.pid, signal.SIGSTOP)
        stopped.append(second)
        wait_until(lambda: not _metric_fenced(first), 60, "A never took the cluster back from B")
        assert _fenced(cluster) == ""           # A answers, not B (stopped)
        os.kill(second.proc.pid, signal.SIGCONT)
        stopped.remove(second)
        wait_until(lambda: _metric_fenced(second), 30, "B never said it was fenced")
        assert _fenced(cluster) == ""           # A still, not B (fenced now)
        second.proc.terminate()
        second.proc.communicate(timeout=60)     # fenced: exits non-zero, documented
        _cli(cluster, "vm", "clone", "disk", "desk1")
        assert "desk1" in _cli(cluster, "vm", "ls")
    finally:
        for served in stopped:
            os.kill(served.proc.pid, signal.SIGCONT)
        if second is not None and second.proc.poll() is None:
            _stop(second)
        err = _stop(first)
    assert first.proc.returncode == 0, err
    with cluster.open(readonly=True) as admin:
        assert "desk1" in admin.vm_names()


def test_a_fenced_service_stopped_before_it_took_its_cluster_back_commits_nothing(
        make_cluster, tmp_path):
    """SIGTERM while fenced: the service exits at once, and what its NBD client wrote and never
    flushed before the fencing is not committed over the newer writer's data; it exits non-zero
    saying so. With nothing written since its last commit, it exits 0. (The client cannot write
    once the service says it is fenced: its connection is dropped then.)"""
    cluster, disk = _cluster_with_disk(make_cluster, tmp_path, 1, 46)
    for wrote in (True, False):
        served = Served(["-c", str(cluster.path)], "--nbd", "127.0.0.1:0")
        client = err = None
        try:
            client = RawClient(int(served.nbd.rsplit(":", 1)[1]))
            client.connect("disk")
            if wrote:
                assert client.write(0, b"\x22" * BLOCK) == 0
            with _newer_writer(cluster, served):
                assert client.closed_by_server()
                # SIGTERM while the newer writer still holds the cluster: once that writer
                # closes, the service takes the cluster back within RETAKE_S, dropping the
                # change, which on a busy machine came before a SIGTERM sent after (exit 0).
                err = _stop(served)
        finally:
            if client is not None:
                client.close()
            if err is None:
                err = _stop(served)
        assert "Traceback" not in err, err
        if wrote:
            assert served.proc.returncode == 1, err
            assert "its change is not committed" in err, err
        else:
            assert served.proc.returncode == 0, err
        with cluster.open(readonly=True) as admin:
            assert admin.read("disk", 0, BLOCK) == b"\x33" * BLOCK
            assert admin.read("disk", BLOCK, len(disk) - BLOCK) == disk[BLOCK:]
    with cluster.open() as admin:
        assert admin.fsck() == []


def test_a_console_serving_its_cluster_is_refused_as_the_socket_is_while_fenced(make_cluster,
                                                                               tmp_path):
    """A console that serves the cluster it opened calls the service's Admin in its own
    process, not through the socket: while fenced it is refused the same calls, in the same
    line (it read the fenced state: the VMs as they were before the newer writer's commits),
    and its reporting still answers. Fenced and taken back by the coordinator's own code, its
    healer held still so that it does not race the test."""
    cluster, disk = _cluster_with_disk(make_cluster, tmp_path, 1, 49)
    args = argparse.Namespace(cluster=str(cluster.path), pool=None, service=None,
                              read_only=False)
    with console_admin(args, "console") as admin:
        first = admin.inner
        first._stop.set()
        first._healer.join(10)
        first._stop.clear()
        first._give_up_lease()
        said = admin.fenced()
        assert said.startswith("fenced: ")
        for name, call in (("vms", admin.vms), ("read", partial(admin.read, "disk", 0, BLOCK)),
                           ("clone", partial(admin.clone, "disk", "copy")),
                           ("start_scrub", admin.start_scrub)):
            with pytest.raises(RefusedError) as refused:
                call()
            assert str(refused.value) == f"{name} refused: {said}"
        assert admin.stats().fenced == said and admin.stats().vms == []
        assert [n.state for n in admin.nodes()] == ["up"] * 3
        assert admin.jobs() == []
        first._hand_over(first._retake())
        assert admin.fenced() == "" and admin.vm_names() == ["disk"]
        assert admin.read("disk", 0, len(disk)) == disk
    with cluster.open() as admin:
        assert admin.vm_names() == ["disk"] and admin.fsck() == []


def test_a_take_back_lets_the_replaced_coordinator_go_and_the_service_closes_the_new_one(
        make_cluster, tmp_path):
    """After a take-back the service holds the reopened Admin, and nothing holds the replaced
    one's pool: no chain of old Admins and their pools grows with each take-back. Closing the
    service closes the Admin it holds, once, which lets the cluster go.

    In this process (the memory held is what is checked): the service's coordinator is fenced
    and takes the cluster back by its own code (_give_up_lease, _retake, _hand_over), its healer
    held still so that it does not race the test."""
    cluster, disk = _cluster_with_disk(make_cluster, tmp_path, 1, 48)
    first = cluster.open(actor="service")
    service = Service(first, cluster.path, actor="service", log=lambda message: None)
    try:
        service.start_in_thread()
        first._stop.set()
        first._healer.join(10)
        first._stop.clear()
        for _ in range(2):
            replaced = service.inner
            old_pool = weakref.ref(replaced.pool)
            replaced._give_up_lease()
            assert service.admin.fenced().startswith("fenced: ")
            reopened = replaced._retake()
            replaced._hand_over(reopened)
            assert service.inner is reopened and service.admin.fenced() == ""
            # A call that reaches the replaced Admin from now on (one begun as it was handed
            # over: a status read) is refused in one line, and does nothing; it failed with an
            # AttributeError on the pool it had let go.
            said = f"the service is taking cluster {cluster.path} back: try again"
            for call in (replaced.stats, replaced.nodes, partial(replaced.read, "disk", 0, BLOCK),
                         partial(replaced.fail_node, "node1")):
                with pytest.raises(RefusedError) as refused:
                    call()
                assert str(refused.value) == said
            assert [n.state for n in service.admin.nodes()] == ["up"] * 3
            replaced.close()            # stops its threads only: the cluster is the new one's
            del replaced
            gc.collect()
            assert old_pool() is None, gc.get_referrers(old_pool())
            if service.inner is not first:
                service.inner._stop.set()
                service.inner._healer.join(10)
                service.inner._stop.clear()
        assert service.admin.read("disk", 0, len(disk)) == disk
    finally:
        service.stop()
        service.close()
        service.close()                 # once closed, nothing more
    with cluster.open() as admin:       # the lease was let go: writable at once
        assert admin.read("disk", 0, len(disk)) == disk
        assert admin.fsck() == []
