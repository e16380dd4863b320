"""etcd in a cluster (issue 14, step 1): `cluster up` runs the cluster's own member and `cluster
down` stops it; nodes keep liveness keys under their own leases; a writable coordinator keeps a
session; `cluster status`, the Nodes data and the CLI say what etcd says. Real etcd processes
(Debian's etcd-server); skipped without the binary."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine import api
from engine.cluster import etcd_member
from engine.cluster.config import ClusterConfig
from engine.etcd import KEEPALIVE, TTL, Etcd, KeptKey
from engine.node.keys import host_key_id
from tests.conftest import ROOT, cli_json, run_cli

from .conftest import image, wait_for

# A killed node's key lasts until its lease runs out: TTL after its last keepalive.
EXPIRY = TTL + 5


def status(path) -> dict:
    return cli_json("cluster", "status", path)


def registered(path) -> dict:
    """Each node's word in `cluster status --json`, asked in this process (a CLI costs 0.8 s)."""
    return {n["name"]: n["registered"] for n in api.cluster_status(path)["nodes"]}


def etcd_processes(data: str) -> list[int]:
    """The pids of the processes whose command line names this etcd data dir."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if data.encode() in f.read().split(b"\0"):
                    found.append(int(pid))
        except OSError:
            continue
    return found


@pytest.fixture
def own_etcd(etcd, tmp_path):
    """An etcd member of the test's own, for a test that stops it (the worker's member serves
    its other tests): its entry; stopped after the test."""
    place = tmp_path / "own-etcd"
    place.mkdir()
    member = etcd_member.create(place)
    etcd_member.start(place, member, fresh=True)
    try:
        yield member
    finally:
        etcd_member.stop(member)


@pytest.fixture
def resting_cluster(etcd, tmp_path):
    """A one-node cluster made by `cluster up` alone (so with its own etcd member), down again:
    its path. Down after the test, whatever the test started. Made and stopped in this process:
    the CLI's `cluster up` and `down` are the first test's; three CLIs cost seconds a test."""
    path = tmp_path / "c"
    api.cluster_up(path, nodes=1, replicas=1, memory=64 << 20)
    api.cluster_down(path)
    try:
        yield path
    finally:
        api.cluster_down(path)


def test_cluster_up_runs_its_own_etcd_and_down_stops_it(etcd, tmp_path):
    path = tmp_path / "c"
    try:
        run_cli("cluster", "up", path, "--nodes", "2", "--memory", "64M", check=True)
        member = ClusterConfig.load(path).etcd
        assert member.data == str(path.resolve() / "etcd")
        assert etcd_processes(member.data) == [member.pid]
        told = status(path)
        assert told["etcd"]["healthy"] and told["etcd"]["members"] == 1
        assert told["etcd"]["endpoints"] == member.endpoints
        assert [n["registered"] for n in told["nodes"]] == [True, True]
        said = run_cli("cluster", "status", path, check=True).stdout_text
        assert f"etcd: {member.endpoints[0]}: healthy, 1 member; 2 of 2 nodes registered" in said
        assert said.splitlines()[1].split()[-1] == "registered"
    finally:
        run_cli("cluster", "down", path, check=True)
    assert etcd_processes(member.data) == []
    after = status(path)
    assert not after["etcd"]["healthy"] and "connection refused" in after["etcd"]["error"]
    assert [n["registered"] for n in after["nodes"]] == [None, None]


def _seen(find, seconds: float = 60) -> list[int]:
    """find()'s first non-empty answer, asked every 10 ms (a member answers 0.7 s after it
    starts); fails after `seconds`."""
    deadline = time.monotonic() + seconds
    while not (found := find()):
        assert time.monotonic() < deadline, f"nothing found in {seconds} s"
        time.sleep(0.01)
    return found


@pytest.mark.parametrize("stage", ["its etcd member", "its nodes"])
def test_a_first_cluster_up_interrupted_while_starting_leaves_nothing_running(etcd, tmp_path,
                                                                               stage):
    """SIGTERM (taken as Ctrl-C) while a new cluster starts: the nodes it started are stopped,
    and its etcd member too (it ran on alone; interrupted before it answered, its pid was not
    even in cluster.json, so `cluster down` could not stop it). The directory stays, and the
    next `up` starts that cluster."""
    path = tmp_path / "c"
    member = str(path.resolve() / "etcd")
    nodes = [str(path.resolve() / "nodes" / f"node{k}") for k in (1, 2)]

    def running() -> list[int]:
        return etcd_processes(member) + [pid for n in nodes for pid in etcd_processes(n)]

    up = subprocess.Popen([sys.executable, "-m", "console", "cluster", "up", str(path),
                           "--nodes", "2", "--memory", "64M"], cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        if stage == "its etcd member":
            (pid,) = _seen(lambda: etcd_processes(member))
            os.kill(pid, signal.SIGSTOP)        # it never answers: cluster up waits for it
        else:
            _seen(lambda: etcd_processes(nodes[0]))
        up.send_signal(signal.SIGTERM)
        _, err = up.communicate(timeout=60)
        assert up.returncode == 130 and err.decode() == "blockfold: interrupted\n"
        assert running() == []
        assert (path / "cluster.json").is_file()
    finally:
        up.kill()
        up.wait()
        for pid in running():
            os.kill(pid, signal.SIGKILL)
    try:
        run_cli("cluster", "up", path, check=True)
        assert registered(path) == {"node1": True, "node2": True}
    finally:
        api.cluster_down(path)
    assert running() == []


def test_a_killed_node_is_unregistered_once_its_lease_runs_out_and_back_when_restored(
        etcd, make_cluster):
    cluster = make_cluster(nodes=2, replicas=2)
    assert registered(cluster.path) == {"node1": True, "node2": True}
    cluster.kill("node2")                       # kill -9: no goodbye, the lease runs on
    assert registered(cluster.path)["node2"]
    started = time.monotonic()
    assert wait_for(lambda: not registered(cluster.path)["node2"], EXPIRY)
    assert time.monotonic() - started > TTL - 3      # etcd let the lease run out, not sooner
    assert registered(cluster.path)["node1"]
    run_cli("node", "restore", "node2", "-c", cluster.path, check=True)
    assert registered(cluster.path) == {"node1": True, "node2": True}
    with cluster.open(readonly=True) as admin:      # the Nodes data says the same
        assert [n.registered for n in admin.nodes()] == [True, True]
    run_cli("node", "fail", "node1", "-y", "-c", cluster.path, check=True)
    assert registered(cluster.path)["node1"] is False     # its death was seen: at once


def test_a_writer_is_in_etcd_while_it_holds_the_cluster_and_gone_after(etcd, make_cluster):
    cluster = make_cluster(nodes=2, replicas=2)
    assert status(cluster.path)["etcd"]["writers"] == []
    with cluster.open() as admin:
        holder = admin.members.holder
        assert status(cluster.path)["etcd"]["writers"] == [holder]
        said = run_cli("cluster", "status", cluster.path, check=True).stdout_text
        assert f"writer: {holder}" in said.splitlines()
        shown = admin.snapshot().stats.etcd            # what the console shows
        assert shown.healthy and shown.writers == [holder] and shown.members == 1
        assert sorted(shown.registered) == ["node1", "node2"]
    assert status(cluster.path)["etcd"]["writers"] == []       # closed: its lease revoked
    with cluster.open(readonly=True):
        assert status(cluster.path)["etcd"]["writers"] == []   # a reader is no writer


def test_without_the_etcd_binary_cluster_up_is_one_line_with_nothing_made(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    done = run_cli("cluster", "up", tmp_path / "c", env={"PATH": str(empty)})
    assert done.returncode == 1
    assert done.stderr_text.startswith("blockfold: error: no `etcd` binary on PATH: install"
                                       " Debian's etcd-server")
    assert done.stderr_text.count("\n") == 1
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("url, said", [
    ("http://127.0.0.1:1", "etcd does not answer (http://127.0.0.1:1: connection refused);"
                           " nothing made"),
    ("127.0.0.1:2379", "bad etcd endpoint '127.0.0.1:2379': use http://HOST:PORT"),
    ("http://[::1", "bad etcd endpoint 'http://[::1': use http://HOST:PORT"),   # not a URL
    ("http://root:s3cret@127.0.0.1:2379", "etcd endpoint 'http://root:***@127.0.0.1:2379' names"
                                          " a user: etcd's authentication is not supported; use"
                                          " http://HOST:PORT"),
    ("http://root:s3cret@[::1", "etcd endpoint 'http://root:***@[::1' names a user: etcd's"
                                " authentication is not supported; use http://HOST:PORT"),
    ("http://127.0.0.1:1,http://root:s3/cret@127.0.0.1:2", "etcd endpoint"
     " 'http://root:***@127.0.0.1:2' names a user: etcd's authentication is not supported; use"
     " http://HOST:PORT"),
    # The rest of the URL was dropped without a word: etcd3gw asks http://HOST:PORT/v3/...
    ("http://127.0.0.1:2379?x", "etcd endpoint 'http://127.0.0.1:2379?x' has a query: use"
                                " http://HOST:PORT"),
    ("http://127.0.0.1:2379/?", "etcd endpoint 'http://127.0.0.1:2379/?' has a query: use"
                                " http://HOST:PORT"),
    ("http://127.0.0.1:2379#frag", "etcd endpoint 'http://127.0.0.1:2379#frag' has a fragment:"
                                   " use http://HOST:PORT"),
    ("http://127.0.0.1:2379/v3?x#y", "etcd endpoint 'http://127.0.0.1:2379/v3?x#y' has a path,"
                                     " a query and a fragment: use http://HOST:PORT"),
    ("http://127.0.0.1:1,http://127.0.0.1:2/etcd", "etcd endpoint 'http://127.0.0.1:2/etcd'"
                                                   " has a path: use http://HOST:PORT"),
])
def test_an_etcd_that_does_not_answer_or_a_bad_url_is_one_line_with_nothing_made(
        tmp_path, url, said):
    done = run_cli("cluster", "up", tmp_path / "c", "--etcd", url)
    assert done.returncode == 1
    assert done.stderr_text == f"blockfold: error: {said}\n"
    assert not (tmp_path / "c").exists()


def test_an_etcd_list_given_again_with_other_spacing_is_the_same_etcd(etcd_url, tmp_path):
    """`cluster up --etcd " URL, "` keeps [URL]; the same words again started the cluster no
    more ("--etcd  URL,  would only apply to a new cluster")."""
    if etcd_url is None:
        pytest.skip("no etcd binary")
    given = f" {etcd_url} , "
    try:
        run_cli("cluster", "up", tmp_path / "c", "--nodes", "1", "--replicas", "1", "--etcd",
                given, check=True)
        assert ClusterConfig.load(tmp_path / "c").etcd.endpoints == [etcd_url]
        for again in (given, etcd_url):
            run_cli("cluster", "up", tmp_path / "c", "--etcd", again, check=True)
        done = run_cli("cluster", "up", tmp_path / "c", "--etcd", f"{etcd_url},{etcd_url}")
        assert done.returncode == 1 and "would only apply to a new cluster" in done.stderr_text
    finally:
        api.cluster_down(tmp_path / "c")


def test_a_cluster_made_before_etcd_still_opens_and_shows_none(make_cluster, etcd_url,
                                                                 tmp_path):
    cluster = make_cluster(nodes=2, replicas=2)
    api.cluster_down(cluster.path)
    made = json.loads((cluster.path / "cluster.json").read_text())
    del made["etcd"]                                    # as cluster.json was before etcd
    (cluster.path / "cluster.json").write_text(json.dumps(made))
    run_cli("cluster", "up", cluster.path, check=True)  # no etcd member made for it now
    assert ClusterConfig.load(cluster.path).etcd is None
    told = status(cluster.path)
    assert told["etcd"] is None and [n["registered"] for n in told["nodes"]] == [None, None]
    assert "etcd: none (this cluster has no etcd)" in run_cli(
        "cluster", "status", cluster.path, check=True).stdout_text
    data = image(tmp_path / "a.raw", 1)
    run_cli("-c", cluster.path, "vm", "import", "a", tmp_path / "a.raw", check=True)
    with cluster.open(readonly=True) as admin:
        assert admin.read("a", 0, len(data)) == data
        assert admin.stats().etcd is None
        assert [n.registered for n in admin.nodes()] == [None, None]
    if etcd_url is not None:
        done = run_cli("cluster", "up", cluster.path, "--etcd", etcd_url)
        assert done.returncode == 1
        assert f"--etcd {etcd_url} would only apply to a new cluster" in done.stderr_text
        done = run_cli("cluster", "up", cluster.path, "--etcd", "http://root:s3cret@127.0.0.1:1")
        assert done.returncode == 1 and "s3cret" not in done.stderr_text
        assert "--etcd http://root:***@127.0.0.1:1 would only apply" in done.stderr_text


def test_a_node_that_loses_etcd_serves_on_says_so_once_and_registers_again(
        own_etcd, make_cluster, tmp_path):
    cluster = make_cluster(nodes=2, replicas=2, etcd=own_etcd.endpoints[0])
    data = image(tmp_path / "a.raw", 1)
    with cluster.open() as admin:
        admin.import_image("a", str(tmp_path / "a.raw"))
    etcd_member.stop(own_etcd)
    log = cluster.path / "nodes" / "node1" / "node.log"
    assert wait_for(lambda: "not registered in etcd" in log.read_text(), 10)
    with cluster.open() as admin:           # etcd is not on the data path
        assert admin.read("a", 0, len(data)) == data
    time.sleep(3)                           # more failed keepalives: still one line
    assert log.read_text().count("not registered in etcd") == 1
    etcd_member.start(Path(own_etcd.data).parent, own_etcd, fresh=False)
    assert wait_for(lambda: "registered in etcd again" in log.read_text(), 10)
    assert wait_for(lambda: registered(cluster.path) == {"node1": True, "node2": True}, 5)


def test_a_kept_key_starts_and_closes_while_etcd_does_not_answer(own_etcd):
    """Starting and closing a liveness or session key return while etcd does not answer (a
    writer's open and close waited on it: how long they wait now, WAIT at most, is a figure of
    tests/bench/silent.py), a keepalive in flight at close included; the key still comes, and
    still goes, once etcd answers."""
    keys = Etcd(own_etcd.endpoints, "/blockfold/kept-test/")
    try:
        os.kill(own_etcd.pid, signal.SIGSTOP)
        try:                                # returns with etcd still stopped
            kept = KeptKey(own_etcd.endpoints, "/blockfold/kept-test/", "k", {"a": 1},
                           "test").start()
        finally:
            os.kill(own_etcd.pid, signal.SIGCONT)
        assert wait_for(lambda: keys.under("") == {"k": {"a": 1}}, EXPIRY)
        time.sleep(KEEPALIVE - 0.3)
        os.kill(own_etcd.pid, signal.SIGSTOP)
        try:
            time.sleep(0.6)                 # the next keepalive is in flight
            kept.close()                    # returns with etcd still stopped
        finally:
            os.kill(own_etcd.pid, signal.SIGCONT)
        # Gone before its lease could have run out (TTL after its last keepalive answered,
        # which came before the stop: over 6 s from here): the close's thread ended it once
        # etcd answered. A bound that tells the two apart, not a speed figure.
        assert wait_for(lambda: keys.under("") == {}, TTL / 2)
    finally:
        keys.close()


def test_a_node_started_elsewhere_with_the_clusters_etcd_registers(etcd, tmp_path):
    data = tmp_path / "node"
    data.mkdir()
    (data / "authorized_keys").write_text("")
    usage = run_cli("node", "serve", "--data", data, "--listen", "127.0.0.1:0", "--etcd", etcd)
    assert usage.returncode == 2 and "give --etcd and --etcd-prefix together" in usage.stderr_text
    node = subprocess.Popen([sys.executable, "-m", "console", "node", "serve", "--data",
                             str(data), "--listen", "127.0.0.1:0", "--etcd", etcd,
                             "--etcd-prefix", "/blockfold/far-test/"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    keys = Etcd([etcd], "/blockfold/far-test/")
    try:
        address = node.stdout.readline().split()[1]       # `ready HOST:PORT`: registered
        told = keys.under("nodes/")
        name = json.loads((data / "node.json").read_text())["name"]
        key = host_key_id((data / "host_key.pub").read_text())
        assert list(told) == [key]
        assert told[key]["name"] == name and told[key]["address"] == address
        node.terminate()
        assert node.wait(30) == 0
        assert keys.under("nodes/") == {}                  # its lease ended with it
    finally:
        node.kill()
        node.communicate()
        keys.close()


def test_nodes_added_with_names_of_their_own_are_registered_under_the_clusters_names(
        etcd, make_cluster, tmp_path):
    """A node that runs elsewhere names itself after its data dir (node.json), and two hosts'
    data dirs are often named alike; `cluster add --name` gives it the cluster's name. Each is
    registered as the cluster knows it, neither hides the other, and `node fail` of a local
    node leaves them be."""
    cluster = make_cluster(nodes=1, replicas=1)
    member = cluster.config.etcd
    far, names = [], ["left", "right"]
    try:
        for host in ("a", "b"):
            data = tmp_path / host / "node1"        # the same name as the local node
            data.mkdir(parents=True)
            (data / "authorized_keys").write_text(cluster.config.admin_public_key())
            far.append(subprocess.Popen(
                [sys.executable, "-m", "console", "node", "serve", "--data", str(data),
                 "--listen", "127.0.0.1:0", "--etcd", ",".join(member.endpoints),
                 "--etcd-prefix", member.prefix],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        for node, name in zip(far, names):
            address = node.stdout.readline().split()[1]
            run_cli("cluster", "add", cluster.path, address, "--name", name, check=True)
        assert registered(cluster.path) == {"node1": True, "left": True, "right": True}
        said = run_cli("cluster", "status", cluster.path, check=True).stdout_text
        assert "3 of 3 nodes registered" in said
        assert [line.split()[-1] for line in said.splitlines()[1:4]] == ["registered"] * 3
        with cluster.open(readonly=True) as admin:
            assert [n.registered for n in admin.nodes()] == [True, True, True]
        run_cli("node", "fail", "node1", "-y", "-c", cluster.path, check=True)
        assert registered(cluster.path) == {"node1": False, "left": True, "right": True}
        far[0].terminate()
        assert far[0].wait(30) == 0
        assert registered(cluster.path) == {"node1": False, "left": False, "right": True}
    finally:
        for node in far:
            node.kill()
            node.communicate()


@pytest.mark.parametrize("gone", [["node1"], ["node1", "node2", "node3"]])
def test_a_cluster_up_whose_nodes_cannot_start_leaves_no_member_alone(etcd, tmp_path, gone):
    """A failed `up` keeps the nodes that started, and the member they register with; with
    none started it stops the member too, as an interrupted one does: it ran on alone, with no
    node of the cluster."""
    path = tmp_path / "c"
    api.cluster_up(path, nodes=3, replicas=2, memory=64 << 20)
    api.cluster_down(path)
    try:
        config = ClusterConfig.load(path)
        for name in gone:
            os.rename(config.node(name).data, f"{config.node(name).data}.moved")
        done = run_cli("cluster", "up", path)
        assert done.returncode == 1, done.stderr_text
        assert "node node1 cannot start" in done.stderr_text
        if len(gone) == len(config.nodes):
            assert etcd_processes(config.etcd.data) == []
        else:
            assert etcd_processes(config.etcd.data) != []
            assert registered(path) == {"node1": False, "node2": True, "node3": True}
        for name in gone:
            os.rename(f"{config.node(name).data}.moved", config.node(name).data)
        run_cli("cluster", "up", path, check=True)     # the fault gone, it starts as it was
        assert registered(path) == {"node1": True, "node2": True, "node3": True}
    finally:
        api.cluster_down(path)


@pytest.mark.parametrize("damage", ["junk in its files", "a file in its place"])
def test_a_damaged_etcd_data_dir_is_set_aside_and_a_new_member_started(resting_cluster,
                                                                       damage):
    """Its keys are leases that nodes and writers put again, so a data dir etcd cannot start
    from costs nothing: `cluster up` moves it aside (the first free name) and says so once."""
    path = resting_cluster
    data = path / "etcd"
    if damage == "junk in its files":
        for f in [*data.rglob("*.wal"), *data.rglob("db")]:
            f.write_bytes(b"junk" * 1024)
    else:
        shutil.rmtree(data)
        data.write_bytes(b"junk")
    (path / "etcd.damaged-1").mkdir()           # an earlier one: this one is the next
    done = run_cli("cluster", "up", path, check=True)
    said = [line for line in done.stderr_text.splitlines() if "etcd" in line]
    assert len(said) == 1 and said[0].startswith(f"blockfold: etcd did not start from {data}")
    assert said[0].endswith(f": set it aside as {path / 'etcd.damaged-2'} and started a new"
                            " member (nodes and writers register again)")
    assert (path / "etcd.damaged-2").exists() and data.is_dir()
    assert registered(path) == {"node1": True}


@pytest.mark.parametrize("kind", ["client", "peer"])
def test_a_taken_etcd_port_moves_to_a_free_one_kept_in_cluster_json(resting_cluster, kind):
    path = resting_cluster
    before = ClusterConfig.load(path).etcd
    url = before.endpoints[0] if kind == "client" else before.peer
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", int(url.rsplit(":", 1)[1])))
        taken.listen()
        done = run_cli("cluster", "up", path, check=True)
    after = ClusterConfig.load(path).etcd
    now = after.endpoints[0] if kind == "client" else after.peer
    assert now != url
    assert [line for line in done.stderr_text.splitlines() if "etcd" in line] == [
        f"blockfold: etcd's port was taken by another process: moved {kind} {url} -> {now}"
        " (in cluster.json)"]
    assert (after.peer if kind == "client" else after.endpoints[0]) == (
        before.peer if kind == "client" else before.endpoints[0])       # the other kept
    assert status(path)["etcd"]["healthy"] and registered(path) == {"node1": True}
