"""Local nodes found and started by what identifies them, not by what cluster.json last said:
a node whose port another process took moves to a free one (its host key pins it, not its
address), and a cluster.json restored from a backup (stale pids) still finds every node and
its etcd member. Real node and etcd processes."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from engine import api, lock
from engine.cluster import etcd_member, ports
from engine.cluster.config import ClusterConfig
from engine.cluster.members import NodeState
from engine.etcd import Etcd
from engine.node.keys import host_key_id
from tests.conftest import ROOT, run_cli

from .conftest import wait_for

EPHEMERAL_START = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


@contextmanager
def taken(address: str):
    """Another listener on `address` (HOST:PORT) while inside."""
    host, port = address.rsplit(":", 1)
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind((host, int(port)))
        squatter.listen()
        yield


def port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def moved_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "was taken by another process" in line]


def test_new_clusters_ports_are_below_the_ephemeral_range(make_cluster):
    """No outgoing connection (the kernel picks their local ports in that range) can take a
    node's port while it is down."""
    config = make_cluster(nodes=3, replicas=2).config
    chosen = [port(e.address) for e in config.nodes]
    assert len(set(chosen)) == 3
    assert all(ports.LOWEST <= p < EPHEMERAL_START for p in chosen)


def test_a_node_whose_port_was_taken_moves_on_restore(etcd, make_cluster):
    """`node restore` of a node whose port another process took starts it on a free one, says
    so in one line, keeps it in cluster.json; its etcd key and an open coordinator follow."""
    cluster = make_cluster(nodes=3, replicas=2)
    before = cluster.config.node("node1")
    admin = cluster.open()
    try:
        admin.fail_node("node1")
        with taken(before.address):
            done = run_cli("-c", cluster.path, "node", "restore", "node1")
            assert done.returncode == 0, done.stderr_text
            now = cluster.config.node("node1")
            assert now.address != before.address and now.host_key == before.host_key
            assert moved_lines(done.stderr_text) == [
                f"blockfold: node node1's port was taken by another process: moved"
                f" {before.address} -> {now.address} (in cluster.json)"]
            assert port(now.address) < EPHEMERAL_START
            keys = Etcd([etcd], cluster.config.etcd.prefix)
            try:
                told = keys.under("nodes/")[host_key_id(now.host_key)]
            finally:
                keys.close()
            assert told["name"] == "node1" and told["address"] == now.address

            def seen():
                row = next(n for n in admin.nodes() if n.name == "node1")
                return row.address == now.address and row.state == NodeState.UP
            assert wait_for(seen, 30)
            assert api.cluster_status(cluster.path)["nodes"][0]["running"]
    finally:
        admin.close()


def test_cluster_up_moves_a_node_whose_port_was_taken(etcd, make_cluster):
    cluster = make_cluster(nodes=3, replicas=2)
    api.cluster_down(cluster.path)
    before = cluster.config.node("node2").address
    with taken(before):
        done = run_cli("cluster", "up", cluster.path)
        assert done.returncode == 0, done.stderr_text
        assert len(moved_lines(done.stderr_text)) == 1
        rows = api.cluster_status(cluster.path)["nodes"]
        assert [(r["running"], r["registered"]) for r in rows] == [(True, True)] * 3
        assert rows[1]["address"] != before


def test_cluster_up_keeps_the_nodes_that_started(etcd, make_cluster):
    """A node that cannot start is one node down, which the cluster survives: `cluster up`
    says which and exits 1, and the others serve on (they were all stopped again)."""
    cluster = make_cluster(nodes=3, replicas=2)
    api.cluster_down(cluster.path)
    settings = Path(cluster.config.node("node1").data) / "node.json"
    kept = settings.read_text()
    settings.write_text("junk")
    done = run_cli("cluster", "up", cluster.path)
    assert done.returncode == 1 and "node node1 did not start" in done.stderr_text
    rows = api.cluster_status(cluster.path)["nodes"]
    assert [(r["running"], r["registered"]) for r in rows] == [
        (False, False), (True, True), (True, True)]
    settings.write_text(kept)
    assert run_cli("cluster", "up", cluster.path).returncode == 0
    assert [r["running"] for r in api.cluster_status(cluster.path)["nodes"]] == [True] * 3


def test_a_data_dir_serves_one_node(make_cluster):
    """A second node on a running node's data dir is refused, naming the one that serves it."""
    cluster = make_cluster(nodes=1, replicas=1)
    entry = cluster.config.node("node1")
    second = subprocess.run([sys.executable, "-m", "engine.node", "--data", entry.data,
                             "--listen", "127.0.0.1:0"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert second.returncode == 1
    assert (f"node data dir {entry.data} is served already (pid {cluster.pid('node1')})"
            in second.stderr)


@pytest.fixture
def own_cluster(etcd, tmp_path):
    """A 3-node cluster with its own etcd member (`cluster up` alone): its path; every process
    of it stopped after the test, found by its data dirs."""
    path = tmp_path / "c"
    api.cluster_up(path, nodes=3, replicas=2)
    try:
        yield path
    finally:
        api.cluster_down(path, force=True)
        config = ClusterConfig.load(path)
        left = [lock.holder(Path(e.data)) for e in config.nodes]
        assert left == [None] * 3


def test_a_restored_cluster_json_with_stale_pids_finds_the_running_nodes(own_cluster, tmp_path):
    """cluster.json put back from a backup while the cluster runs: status calls the nodes
    running (their true pids), `up` starts nothing and moves no port (its etcd member is not
    "another process"), and `down` stops every node and the member."""
    backup = tmp_path / "cluster.json.bak"
    shutil.copy(own_cluster / "cluster.json", backup)
    api.cluster_down(own_cluster)
    api.cluster_up(own_cluster)
    running = ClusterConfig.load(own_cluster)
    shutil.copy(backup, own_cluster / "cluster.json")
    stale = ClusterConfig.load(own_cluster)
    assert [e.pid for e in stale.nodes] != [e.pid for e in running.nodes]

    status = run_cli("cluster", "status", own_cluster, "--json")
    assert status.returncode == 0
    rows = api.cluster_status(own_cluster)["nodes"]
    assert [(r["running"], r["pid"]) for r in rows] == [(True, e.pid) for e in running.nodes]

    again = run_cli("cluster", "up", own_cluster)
    assert again.returncode == 0, again.stderr_text
    assert again.stderr_text == ""
    assert "3 of 3 local nodes running" in again.stdout_text
    after = ClusterConfig.load(own_cluster)
    assert after.etcd.endpoints == running.etcd.endpoints and after.etcd.peer == running.etcd.peer
    assert after.etcd.pid == running.etcd.pid
    assert [e.pid for e in after.nodes] == [e.pid for e in running.nodes]

    shutil.copy(backup, own_cluster / "cluster.json")
    down = run_cli("cluster", "down", own_cluster)
    assert down.returncode == 0 and "0 of 3 local nodes running" in down.stdout_text
    assert [lock.holder(Path(e.data)) for e in running.nodes] == [None] * 3
    assert not etcd_member.is_running(stale.etcd)        # found by its data dir: none


def test_nodes_start_whatever_the_current_directory_holds(etcd, tmp_path):
    """`cluster up` from a directory holding an engine/ of its own (a checkout of another
    version, say): the nodes ran `python -m engine.node`, which imported that one first, and
    every node failed to start."""
    decoy = tmp_path / "work"
    (decoy / "engine").mkdir(parents=True)
    (decoy / "engine" / "__init__.py").write_text("raise ImportError('not this engine')\n")
    path = tmp_path / "c"
    blockfold = Path(sys.executable).with_name("blockfold")
    try:
        done = subprocess.run([blockfold, "cluster", "up", path, "--nodes", "1", "--replicas",
                               "1", "--memory", "16M", "--etcd", etcd], cwd=decoy,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        assert all(node["running"] for node in api.cluster_status(path)["nodes"])
    finally:
        api.cluster_down(path)
