"""`cluster remove DIR NODE`: a node drained out of its cluster (every block copied until it has R
copies without it), then gone from cluster.json, etcd and this host's processes; the write
majority counted over the nodes left; refusals with nothing changed; a removed node that is
started again by hand never serves, and a cluster.json older than the removal is refused."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time

from engine import api

from engine.cluster import processes
from tests.conftest import ROOT, cli_json, run_cli
from tests.serviceproc import Served

from .conftest import image


def _copies(cluster) -> tuple[int, list]:
    """(unique blocks, the nodes' NodeStatus) as a fresh read-only open counts them."""
    with cluster.open(readonly=True) as admin:
        return admin.stats().unique_blocks, admin.nodes()


def _whole_on(cluster, names: list[str], data: bytes) -> None:
    """The cluster's nodes are `names`, holding every live block twice (R=2), and VM a reads
    back as `data`."""
    unique, nodes = _copies(cluster)
    assert [n.name for n in nodes] == names
    assert sum(n.live_blocks for n in nodes) == 2 * unique
    with cluster.open(readonly=True) as admin:
        assert admin.read("a", 0, len(data)) == data


def _only_line(proc) -> str:
    lines = proc.stderr_text.strip().splitlines()
    assert len(lines) == 1, proc.stderr_text
    return lines[0]


def test_removing_a_healthy_node_of_four_keeps_every_block_at_two_copies(make_cluster,
                                                                         tmp_path):
    cluster = make_cluster(nodes=4, replicas=2)
    data = image(tmp_path / "a.raw", 2, seed=3)
    run_cli("-c", cluster.path, "vm", "import", "a", tmp_path / "a.raw", check=True)
    node2 = cluster.config.node("node2")
    before = (cluster.path / "cluster.json").read_text()
    unique, nodes = _copies(cluster)
    held = {n.name: n.live_blocks for n in nodes}["node2"]
    assert held > 0

    done = cli_json("cluster", "remove", cluster.path, "node2", "-y")
    assert done["node"] == "node2" and done["blocks"] == held
    assert done["copied"] >= held and done["lost"] == 0
    assert (done["nodes_left"], done["need"]) == (3, 2)
    assert done["data"] == node2.data and not done["deleted"]
    assert not processes.is_running(node2)

    status = cli_json("cluster", "status", cluster.path)
    assert [n["name"] for n in status["nodes"]] == ["node1", "node3", "node4"]
    if status["etcd"] is not None:           # its key went as it stopped
        assert status["etcd"]["healthy"] and all(n["registered"] for n in status["nodes"])
        assert sorted(status["etcd"]["registered"]) == ["node1", "node3", "node4"]
    assert run_cli("-c", cluster.path, "fsck", check=True).stdout_text.strip() == "clean"
    with cluster.open(readonly=True) as admin:
        assert admin.stats().unique_blocks == unique
        nodes = admin.nodes()
        assert sum(n.live_blocks for n in nodes) == 2 * unique
        assert all(n.under_replicated == 0 for n in nodes)
        assert admin.read("a", 0, len(data)) == data
        events = [e.message for e in admin.events()]
    assert any(m.startswith("removed node2:") for m in events), events

    # Started again by hand, the removed node refuses to serve, saying where its data is.
    proc = subprocess.run([sys.executable, "-m", "engine.node", "--data", node2.data,
                           "--listen", "127.0.0.1:0"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0
    assert f"node node2 was removed from cluster {cluster.path}" in proc.stderr
    assert node2.data in proc.stderr

    # A copy of cluster.json from before the removal would count node2 in the majority again:
    # a writer refuses it, and `cluster remove` run on it only finishes the removal.
    after = (cluster.path / "cluster.json").read_text()
    (cluster.path / "cluster.json").write_text(before)
    refused = run_cli("-c", cluster.path, "vm", "clone", "a", "b")
    assert refused.returncode == 1
    assert "cluster.json names node node2, which was removed" in _only_line(refused)
    finished = cli_json("cluster", "remove", cluster.path, "node2", "-y")
    assert finished["copied"] == 0 and finished["drained"]
    assert json.loads((cluster.path / "cluster.json").read_text()) == json.loads(after)
    run_cli("-c", cluster.path, "vm", "clone", "a", "b", check=True)


def test_a_killed_node_is_removed_and_its_copies_healed_from_the_others(make_cluster,
                                                                        tmp_path):
    cluster = make_cluster(nodes=4, replicas=2)
    data = image(tmp_path / "a.raw", 4, seed=4)
    run_cli("-c", cluster.path, "vm", "import", "a", tmp_path / "a.raw", check=True)
    cluster.kill("node3")
    (cluster.path / "nodes" / "node3" / "blocks.dat").unlink(missing_ok=True)   # its disk gone

    done = cli_json("cluster", "remove", cluster.path, "node3", "-y")
    assert done["state"] == "down" and done["lost"] == 0 and done["copied"] > 0
    etcd = cli_json("cluster", "status", cluster.path)["etcd"]
    if etcd is not None:        # its lease revoked, not left to run out (10 s after the kill)
        assert sorted(etcd["registered"]) == ["node1", "node2", "node4"]
    _whole_on(cluster, ["node1", "node2", "node4"], data)
    assert run_cli("-c", cluster.path, "fsck", check=True).stdout_text.strip() == "clean"


def test_the_drains_progress_bar_says_which_node_it_drains(make_cluster, tmp_path):
    """On a terminal, `cluster remove` shows its drain's bar as "draining node2" (the drain
    runs heal passes, and its bar said "heal": an operator read it as another heal)."""
    cluster = make_cluster(nodes=3, replicas=2)
    image(tmp_path / "a.raw", 2, seed=10)
    run_cli("-c", cluster.path, "vm", "import", "a", tmp_path / "a.raw", check=True)
    master, slave = pty.openpty()               # its stderr a terminal: the bar is shown
    remover = subprocess.Popen([sys.executable, "-m", "console", "cluster", "remove",
                                str(cluster.path), "node2", "-y"], cwd=ROOT,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    shown = b""
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1)
            try:
                chunk = os.read(master, 65536) if ready else b""
            except OSError:                     # EIO: every writer of the terminal is gone
                break
            if ready and not chunk:
                break
            shown += chunk
        assert remover.wait(60) == 0, shown
    finally:
        remover.kill()
        remover.wait()
        os.close(master)
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown.decode(errors="replace"))
    bars = [line.strip() for line in re.split(r"[\r\n]+", plain) if "━" in line]
    assert bars and all(line.startswith("draining node2 ") for line in bars), plain


def test_writes_need_a_majority_of_the_nodes_left(make_cluster, tmp_path):
    cluster = make_cluster(nodes=4, replicas=2)
    image(tmp_path / "a.raw", 1, seed=5)
    run_cli("-c", cluster.path, "vm", "import", "a", tmp_path / "a.raw", check=True)
    cluster.kill("node3")
    cluster.kill("node4")
    refused = run_cli("-c", cluster.path, "vm", "clone", "a", "b")
    assert "2 of 4 nodes answer; writes need 3" in _only_line(refused)

    run_cli("node", "restore", "node3", "-c", cluster.path, check=True)
    cli_json("cluster", "remove", cluster.path, "node4", "-y")
    # Of 3 nodes, 2 are a majority: one more loss leaves writes going.
    cluster.kill("node3")
    run_cli("-c", cluster.path, "vm", "clone", "a", "b", check=True)
    cluster.kill("node2")
    refused = run_cli("-c", cluster.path, "vm", "clone", "a", "c")
    assert "1 of 3 nodes answer; writes need 2" in _only_line(refused)


def test_refusals_change_nothing(make_cluster, tmp_path):
    cluster = make_cluster(nodes=3, replicas=1, min_replicas=1)
    image(tmp_path / "a.raw", 2, seed=6)
    run_cli("-c", cluster.path, "vm", "import", "a", tmp_path / "a.raw", check=True)
    before = (cluster.path / "cluster.json").read_text()

    def refused(*args, says: str) -> str:
        proc = run_cli("cluster", "remove", cluster.path, *args, "-y")
        assert proc.returncode == 1 and says in _only_line(proc), proc.stderr_text
        assert (cluster.path / "cluster.json").read_text() == before
        return proc.stderr_text

    refused("node9", says=f"no node named 'node9' in cluster {cluster.path}")
    cluster.kill("node3")
    with cluster.open(readonly=True) as admin:
        alone = admin.stats().unique_blocks - sum(n.live_blocks or 0 for n in admin.nodes())
    assert alone > 0
    said = refused("node3", says=f"node node3 is down, and {alone:,} blocks")
    assert "--force to remove it anyway and lose them; nothing changed" in said

    forced = run_cli("cluster", "remove", cluster.path, "node3", "-y", "--force", check=True)
    assert f"{alone:,} blocks" in forced.stdout_text and "are lost" in forced.stdout_text
    assert [n["name"] for n in cli_json("cluster", "status", cluster.path)["nodes"]] == [
        "node1", "node2"]
    fsck = run_cli("-c", cluster.path, "fsck", "--json")
    assert fsck.returncode == 1
    # Lost, not missing: no node holds them any more, up or down (engine/cluster/losses.py).
    assert {p["kind"] for p in json.loads(fsck.stdout)["problems"]} == {"lost"}

    small = make_cluster(nodes=3, replicas=3)
    proc = run_cli("cluster", "remove", small.path, "node1", "-y")
    assert proc.returncode == 1
    assert ("removing node1 would leave 2 nodes in cluster" in _only_line(proc)
            and "R=3" in proc.stderr_text)
    assert processes.is_running(small.config.node("node1"))


def test_a_second_removal_is_refused_while_one_runs(make_cluster, tmp_path):
    cluster = make_cluster(nodes=4, replicas=2)
    image(tmp_path / "a.raw", 1, seed=7)
    run_cli("-c", cluster.path, "vm", "import", "a", tmp_path / "a.raw", check=True)
    # The first asks on a terminal, and waits there for an answer: it holds the removal.
    master, slave = pty.openpty()
    first = subprocess.Popen([sys.executable, "-m", "console", "cluster", "remove",
                              str(cluster.path), "node2"], cwd=ROOT, stdin=slave,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    os.close(slave)
    marker = cluster.path / "removing.json"
    try:
        said, _, _ = select.select([first.stdout], [], [], 60)
        assert said and first.stdout.read(len("Remove node2")) == "Remove node2"
        assert marker.exists()
        second = run_cli("cluster", "remove", cluster.path, "node3", "-y")
        assert second.returncode == 1
        assert (f"node node2 is being removed from cluster {cluster.path} (pid {first.pid})"
                in _only_line(second))
        os.write(master, b"y\n")
        out, err = first.communicate(timeout=60)
    finally:
        first.kill()
        os.close(master)
    assert first.returncode == 0, err
    assert not marker.exists()
    assert [n["name"] for n in cli_json("cluster", "status", cluster.path)["nodes"]] == [
        "node1", "node3", "node4"]
    assert run_cli("cluster", "remove", cluster.path, "node3", "-y").returncode == 0


def test_a_removal_killed_midway_is_run_again(make_cluster, tmp_path):
    cluster = make_cluster(nodes=4, replicas=2)
    data = image(tmp_path / "a.raw", 2, seed=9)
    run_cli("-c", cluster.path, "vm", "import", "a", tmp_path / "a.raw", check=True)
    first = subprocess.Popen([sys.executable, "-m", "console", "cluster", "remove",
                              str(cluster.path), "node2", "-y"], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = cluster.path / "removing.json"
    deadline = time.monotonic() + 30
    while not marker.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    first.kill()                # kill -9 while it drains: its lease and its marker stay
    first.wait()
    assert marker.exists()

    # Its lease is taken over (its process is gone), its marker replaced, and the drain done.
    done = cli_json("cluster", "remove", cluster.path, "node2", "-y")
    assert done["node"] == "node2" and not marker.exists()
    _whole_on(cluster, ["node1", "node3", "node4"], data)
    assert run_cli("-c", cluster.path, "fsck", check=True).stdout_text.strip() == "clean"


def test_a_service_removes_a_node_and_serves_on_with_the_others(make_cluster, tmp_path):
    cluster = make_cluster(nodes=4, replicas=2)
    data = image(tmp_path / "a.raw", 2, seed=8)
    served = Served(["-c", str(cluster.path)])
    try:
        run_cli("-c", cluster.path, "vm", "import", "a", tmp_path / "a.raw", check=True)
        done = cli_json("cluster", "remove", cluster.path, "node4", "-y")
        assert done["copied"] > 0 and (done["nodes_left"], done["need"]) == (3, 2)
        nodes = cli_json("-c", cluster.path, "node", "ls")
        assert [n["name"] for n in nodes] == ["node1", "node2", "node3"]
        assert all(n["under_replicated"] == 0 for n in nodes)
        # The service counts 3 nodes now: 2 of them answering are a majority (2 of the 4 it
        # opened with would not be).
        cluster.kill("node3")
        run_cli("-c", cluster.path, "vm", "clone", "a", "b", check=True)
        run_cli("-c", cluster.path, "vm", "export", "b", tmp_path / "b.raw", check=True)
        assert (tmp_path / "b.raw").read_bytes() == data
        events = [e["message"] for e in cli_json("-c", cluster.path, "events")]
        assert any(m.startswith("removed node4:") for m in events), events
    finally:
        served.stop()
    assert [e.name for e in cluster.config.nodes] == ["node1", "node2", "node3"]


def test_delete_data_removes_the_local_data_dir(make_cluster):
    cluster = make_cluster(nodes=3, replicas=2)
    done = cli_json("cluster", "remove", cluster.path, "node3", "-y", "--delete-data")
    assert done["deleted"] and done["data"] is None
    assert not (cluster.path / "nodes" / "node3").exists()


def test_a_node_that_runs_elsewhere_is_removed_and_told_to_be_stopped(make_cluster, tmp_path):
    cluster = make_cluster(nodes=2, replicas=2)
    far = tmp_path / "far-node"
    far.mkdir()
    (far / "authorized_keys").write_text(cluster.config.admin_public_key())
    node = subprocess.Popen([sys.executable, "-m", "console", "node", "serve", "--data",
                             str(far), "--listen", "127.0.0.1:0"], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        said, _, _ = select.select([node.stdout], [], [], 60)
        line = node.stdout.readline().strip() if said else ""
        assert line.startswith("ready 127.0.0.1:"), line
        address = line.split()[1]
        api.cluster_add(cluster.path, address, name="far")
        data = image(tmp_path / "a.raw", 1, seed=10)
        run_cli("-c", cluster.path, "vm", "import", "a", tmp_path / "a.raw", check=True)
        proc = run_cli("cluster", "remove", cluster.path, "far", "-y", check=True)
        assert f"stop it on its host ({address})" in proc.stdout_text
        assert node.poll() is None          # not ours to stop
        _whole_on(cluster, ["node1", "node2"], data)
    finally:
        node.terminate()
        node.wait(10)
