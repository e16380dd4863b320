"""A standby service (issue 14, its first step): `serve -c --standby` on another host (here, run
from a copy of the cluster directory as that host would hold it) listens at once but serves no
export while another service holds the cluster, and says so where a fenced service does; once
that service dies (kill -9, alone or with its host's node) or stops (SIGTERM), the standby
takes the cluster over, and NBD clients read through it what was flushed through the first, and
write."""

from __future__ import annotations

import asyncio
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest


from engine import api
from engine.cluster import lifecycle
from tests.conftest import ROOT, cli_json, run_cli
from tests.nbdclient import REP_ERR_UNKNOWN, RawClient, tool
from tests.serviceproc import Served

from .conftest import console_overview, image, wait_until

MiB = 1 << 20
# A bound, not a figure (tests/bench/takeover.py measures it): the lease (10 s by default) runs
# out, then a retake (every 2 s) and a writable open.
TAKE_OVER_S = 60.0


def _no_export(served: Served) -> str:
    """The error a new NBD client of the service is given for VM 'disk' (it must get one)."""
    client = RawClient(int(served.nbd.rsplit(":", 1)[1]))
    try:
        client.handshake()
        kind, _, _ = client.go("disk")
        assert kind == REP_ERR_UNKNOWN, kind
        return client.error_text
    finally:
        client.close()


def _serves(served: Served) -> bool:
    """Whether the service's NBD serves VM 'disk' now."""
    return subprocess.run(["nbdinfo", served.uri("disk")], capture_output=True,
                          timeout=30).returncode == 0


def _metric(served: Served, name: str) -> str:
    text = urllib.request.urlopen(served.metrics, timeout=10).read().decode()
    return re.search(rf"^{name} (\S+)$", text, re.M)[1]


@pytest.mark.parametrize("end", ["kill -9", "kill -9 with its node", "SIGTERM"])
def test_a_standby_takes_the_cluster_over_when_its_service_dies_or_stops(make_cluster,
                                                                        tmp_path, end):
    cluster = make_cluster(nodes=3, replicas=2)
    image(tmp_path / "disk.raw", 2)
    run_cli("-c", cluster.path, "vm", "import", "disk", tmp_path / "disk.raw", check=True)
    host_b = cluster.host_copy(tmp_path / "host-b")
    active = Served(["-c", str(cluster.path)], "--nbd", "127.0.0.1:0")
    standby = None
    try:
        standby = Served(["-c", str(host_b)], "--standby", "--nbd", "127.0.0.1:0",
                         "--metrics", "127.0.0.1:0")
        assert standby.socket == host_b / "admin.sock"     # its own: the copy's

        # Waiting, and saying whose lease it waits for: stats, metrics; NBD has no export.
        said = cli_json("-c", host_b, "stats")["fenced"]
        holder = re.escape(f"{socket.gethostname()} pid {active.proc.pid} (")
        assert re.fullmatch(f"standby: cluster {re.escape(str(host_b))} is held by {holder}"
                            r"[0-9a-f]{6}\); taking it over when its lease runs out", said), said
        stats = run_cli("-c", host_b, "stats", check=True).stdout_text.splitlines()
        assert ["writer", said] in [line.split(None, 1) for line in stats]
        assert _metric(standby, "blockfold_fenced") == "1.0"
        title, summary = asyncio.run(console_overview(host_b))
        assert title == "pool · standby"
        assert f"STANDBY · {said.partition(': ')[2]}" in summary.replace("\n", " "), summary
        assert _no_export(standby) == f"VM 'disk' is not served now: {said}"
        assert cli_json("-c", cluster.path, "stats")["fenced"] == ""    # the active one's

        # Known data through the active service, flushed; then it dies, or stops.
        written = tmp_path / "written.raw"
        written.write_bytes(np.random.default_rng(7).bytes(2 * MiB))
        tool("nbdcopy", "--flush", written, active.uri("disk"))
        if end == "SIGTERM":
            active.stop()
        else:
            active.kill()
        if end == "kill -9 with its node":    # its host lost: the node there goes with it
            cluster.kill("node1")

        # The standby serves it, with every flushed byte; and writes.
        wait_until(lambda: _serves(standby), TAKE_OVER_S, "the standby never served the export")
        tool("qemu-img", "compare", "-f", "raw", "-F", "raw", written, standby.uri("disk"))
        tool("qemu-io", "-f", "raw", "-c", "write -P 0x77 64k 64k", "-c", "flush",
             standby.uri("disk"))
        tool("qemu-io", "-f", "raw", "-c", "read -P 0x77 64k 64k", standby.uri("disk"))
        assert cli_json("-c", host_b, "stats")["fenced"] == ""
        assert _metric(standby, "blockfold_fenced") == "0.0"
        took = [e["message"] for e in cli_json("-c", host_b, "events") if e["kind"] == "catalog"]
        assert took[0].startswith(f"took cluster {host_b} over after "), took
        err = standby.stop()
        assert err.splitlines()[0] == f"blockfold: {said}", err
        assert f"blockfold: serving {host_b}: this standby took it over" in err.splitlines()
    finally:
        active.kill()
        if standby is not None:
            standby.kill()
    # What it wrote was committed: the cluster reads it, with the rest as flushed through A.
    expected = bytearray(written.read_bytes())
    expected[64 << 10:128 << 10] = b"\x77" * (64 << 10)
    with cluster.open(readonly=True) as admin:
        assert admin.read("disk", 0, 2 * MiB) == expected


def test_a_standby_beside_its_service_leaves_it_the_admin_socket_until_it_takes_over(
        make_cluster, tmp_path):
    """Started from the same directory, a standby does not take DIR/admin.sock from the
    service that answers there (every command would have reached the one that refuses all but
    its reports); it binds it once it has the cluster."""
    cluster = make_cluster(nodes=3, replicas=2)
    active = Served(["-c", str(cluster.path)])
    standby = None
    try:
        data = image(tmp_path / "disk.raw", 1)
        run_cli("-c", cluster.path, "vm", "import", "disk", tmp_path / "disk.raw", check=True)
        standby = Served(["-c", str(cluster.path)], "--standby")
        assert api.service_pid(cluster.path) == active.proc.pid
        assert cli_json("-c", cluster.path, "stats")["fenced"] == ""
        active.kill()
        wait_until(lambda: api.service_pid(cluster.path) == standby.proc.pid, TAKE_OVER_S,
              "the standby never took DIR/admin.sock")
        assert [v["name"] for v in cli_json("-c", cluster.path, "vm", "ls")] == ["disk"]
        exported = tmp_path / "exported.raw"
        run_cli("-c", cluster.path, "vm", "export", "disk", exported, check=True)
        assert exported.read_bytes() == data
        err = standby.stop()
        assert (f"blockfold: {cluster.path / 'admin.sock'} is the serving writer's: this standby"
                " listens there once it takes the cluster over") in err.splitlines(), err
        assert not (cluster.path / "admin.sock").exists()
    finally:
        active.kill()
        if standby is not None:
            standby.kill()


def test_a_standby_started_on_a_minority_waits_for_its_nodes(make_cluster, tmp_path):
    """A standby started while too few nodes answer waits, saying why, and serves once they
    are back: it exited at once ("1 of 3 nodes answer; writes need 2"), a standby that would
    not stand by (verifier N7)."""
    cluster = make_cluster(nodes=3, replicas=2)
    cluster.kill("node2")
    cluster.kill("node3")
    proc = subprocess.Popen([sys.executable, "-m", "console", "-c", str(cluster.path), "serve",
                             "--standby"], cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: dict[str, queue.Queue] = {"out": queue.Queue(), "err": queue.Queue()}
    for name, stream in (("out", proc.stdout), ("err", proc.stderr)):
        threading.Thread(target=lambda q=lines[name], f=stream: [*map(q.put, f), q.put("")],
                         daemon=True).start()

    def line(name: str) -> str:
        return lines[name].get(timeout=TAKE_OVER_S)
    try:
        said = line("err")
        assert said.startswith(f"blockfold: standby: waiting: cluster {cluster.path}: 1 of 3"
                               " nodes answer; writes need 2"), said
        time.sleep(2)                   # two more tries of the open: it waits on
        assert proc.poll() is None
        for name in ("node2", "node3"):
            lifecycle.restore_node(cluster.config, name)
        assert line("out").startswith("admin "), "the standby never opened the cluster"
        assert cli_json("-c", cluster.path, "stats")["fenced"] == ""     # no one held it
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


@pytest.mark.parametrize("command", [["serve"], ["nbd", "serve", "--listen", "127.0.0.1:0"]])
def test_standby_is_for_a_cluster_only(tmp_path, command):
    refused = run_cli("-p", tmp_path / "pool", *command, "--standby")
    assert (refused.returncode, refused.stdout_text, refused.stderr_text) == (
        2, "", "blockfold: error: --standby waits for a cluster's write lease: use it with -c,"
               " not -p\n")
    assert not (tmp_path / "pool").exists()
