"""Local nodes found by what identifies them, not by what cluster.json last said: a
cluster.json restored from a backup (stale pids) still finds every node and its etcd member.
Real node and etcd processes."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine import api, lock
from engine.cluster import etcd_member
from engine.cluster.config import ClusterConfig
from tests.conftest import ROOT, run_cli

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
