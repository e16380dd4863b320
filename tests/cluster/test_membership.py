"""Joining a node that runs elsewhere: its host key is pinned on first contact, and blocks
move onto it by placement."""

from __future__ import annotations

import re
import select
import socket
import subprocess
import sys
import time

import pytest

from engine import api

from ..conftest import cli_json, run_cli

from .conftest import image

READY_WAIT = 60.0       # seconds `node serve` may take to say ready


def test_cluster_add_pins_the_host_key_and_rebalances(make_cluster, tmp_path):
    cluster = make_cluster(nodes=2, replicas=2)
    data = image(tmp_path / "a.raw", 2, seed=8)
    with cluster.open() as admin:
        admin.import_image("a", str(tmp_path / "a.raw"))

    far = tmp_path / "far-node"
    far.mkdir()
    (far / "authorized_keys").write_text(cluster.config.admin_public_key())
    node = subprocess.Popen([sys.executable, "-m", "console", "node", "serve", "--data",
                             str(far), "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE,
                            text=True)
    try:
        # Ready, within a bound no loaded machine reaches; how soon is tests/bench/nodestart.py's
        # figure (about 0.45 s on an idle machine).
        said, _, _ = select.select([node.stdout], [], [], READY_WAIT)
        line = node.stdout.readline().strip() if said else ""
        assert line.startswith("ready 127.0.0.1:"), f"not ready within {READY_WAIT:.0f} s: {line!r}"
        address = line.split()[1]
        row = api.cluster_add(cluster.path, address, name="far")
        assert row["host_key"] == (far / "host_key.pub").read_text().strip()
        assert cluster.config.node("far").host_key == row["host_key"]
        with cluster.open() as admin:
            admin.heal(wait=True)
            nodes = {n.name: n for n in admin.nodes()}
            assert nodes["far"].state == "up" and nodes["far"].live_blocks > 0
            live = admin.stats().unique_blocks
            assert sum(n.live_blocks for n in nodes.values()) == 2 * live
            last = admin.events(limit=1)[0].id
            admin.fail_node("node1")
            assert admin.read("a", 0, len(data)) == data
            problems = admin.fsck()      # heal may not have caught up yet: only that is allowed
            assert all(p.kind == "replication" for p in problems), problems
            # far has no peer key yet: its copies go through here, and the reason names it as
            # the cluster does, not by its own name (far-node) nor a path relative to it. Read
            # from every heal's events since node1 failed: the healer starts at once (repair
            # delay 0) and may have made the copies before this heal, which then relays none,
            # and may commit its "heal ended" event only after this heal has returned.
            admin.heal(wait=True)
            reason = f"node far has no peer key ({far / 'peer_key'})"
            deadline = time.monotonic() + 30
            while True:
                why = "\n".join(e.message for e in admin.events(limit=1000)
                                 if e.id > last and e.kind == "heal")
                if reason in why or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert reason in why, why
            assert "far-node has" not in why
    finally:
        node.terminate()                  # SIGTERM: a clean exit
        assert node.wait(10) == 0


def test_a_node_added_gets_its_share_from_the_healer_unasked(make_cluster, tmp_path):
    # A node added held nothing until an operator ran `heal`: the healer moved copies only
    # when a node came back, and fsck and `node ls` called that clean.
    cluster = make_cluster(nodes=3, replicas=2, repair_delay=2)
    data = image(tmp_path / "a.raw", 2, seed=11)
    run_cli("-c", cluster.path, "vm", "import", "a", tmp_path / "a.raw", check=True)
    far = tmp_path / "far-node"
    far.mkdir()
    (far / "authorized_keys").write_text(cluster.config.admin_public_key())
    node = subprocess.Popen([sys.executable, "-m", "console", "node", "serve", "--data",
                             str(far), "--listen", "127.0.0.1:0"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, text=True)
    try:
        said, _, _ = select.select([node.stdout], [], [], READY_WAIT)
        line = node.stdout.readline().strip() if said else ""
        assert line.startswith("ready 127.0.0.1:"), f"not ready within {READY_WAIT:.0f} s: {line!r}"
        api.cluster_add(cluster.path, line.split()[1], name="far")
        # A writer that closes within the repair delay leaves the move to the next one.
        run_cli("-c", cluster.path, "vm", "clone", "a", "b", check=True)
        with cluster.open() as admin:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not any(
                    e.message.startswith("placement changed") for e in admin.events(limit=20)):
                time.sleep(0.2)
            nodes = {n.name: n for n in admin.nodes()}
            assert nodes["far"].live_blocks > 0, nodes["far"]
            assert sum(n.live_blocks for n in nodes.values()) == 2 * admin.stats().unique_blocks
            assert all(n.under_replicated == 0 for n in nodes.values()), nodes
            assert admin.fsck() == []
            assert admin.read("b", 0, len(data)) == data
    finally:
        node.terminate()                  # SIGTERM: a clean exit
        assert node.wait(10) == 0


def test_cluster_add_refuses_a_port_out_of_range_in_one_line(make_cluster):
    cluster = make_cluster(nodes=2, replicas=1, min_replicas=1)
    before = cluster.config.nodes
    proc = run_cli("cluster", "add", cluster.path, "127.0.0.1:99999")
    assert proc.returncode == 1
    assert proc.stderr_text == ("blockfold: error: bad node address '127.0.0.1:99999': use"
                                " HOST:PORT ([ADDR]:PORT for IPv6)\n")
    assert cluster.config.nodes == before


def test_cluster_add_refuses_a_node_that_refuses_the_clusters_key(make_cluster, tmp_path):
    # A node of another cluster joined as "added node4", down for good: the write majority
    # rose and nothing could remove it.
    cluster = make_cluster(nodes=2, replicas=1, min_replicas=1)
    other = make_cluster(nodes=1, replicas=1, min_replicas=1)
    before = (cluster.path / "cluster.json").read_text()
    address = other.config.node("node1").address
    proc = run_cli("cluster", "add", cluster.path, address)
    assert proc.returncode == 1, proc.stdout_text
    assert proc.stderr_text == (f"blockfold: error: the node at {address} refused the cluster's"
                                f" key: put {cluster.path / 'admin_key'}.pub in its"
                                " DATA/authorized_keys (a node of another cluster cannot join"
                                " this one); nothing was added\n")
    assert (cluster.path / "cluster.json").read_text() == before
    assert [n["state"] for n in cli_json("-c", cluster.path, "node", "ls")] == ["up", "up"]

    # A node set up with another cluster's key joins once its operator does as told.
    far = tmp_path / "far-node"
    far.mkdir()
    (far / "authorized_keys").write_text(other.config.admin_public_key())
    node = subprocess.Popen([sys.executable, "-m", "console", "node", "serve", "--data",
                             str(far), "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        address = node.stdout.readline().split()[1]
        proc = run_cli("cluster", "add", cluster.path, address, "--name", "far")
        assert proc.returncode == 1 and "refused the cluster's key" in proc.stderr_text
        assert (cluster.path / "cluster.json").read_text() == before
        with open(far / "authorized_keys", "a") as keys:    # read again at each login
            keys.write(cluster.config.admin_public_key())
        proc = run_cli("cluster", "add", cluster.path, address, "--name", "far")
        assert proc.returncode == 0, proc.stderr_text
        states = {n["name"]: n["state"] for n in cli_json("-c", cluster.path, "node", "ls")}
        assert states == {"node1": "up", "node2": "up", "far": "up"}
    finally:
        node.terminate()
        assert node.wait(10) == 0


def _far_node(data, admin_key: str, listen: str = "127.0.0.1:0", *options: str):
    """`node serve` on a new data dir `data` that lets `admin_key` in: (its process, its
    address once ready). Terminate it after."""
    data.mkdir()
    (data / "authorized_keys").write_text(admin_key)
    node = subprocess.Popen([sys.executable, "-m", "console", "node", "serve", "--data",
                             str(data), "--listen", listen, *options], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    said, _, _ = select.select([node.stdout], [], [], READY_WAIT)
    line = node.stdout.readline().strip() if said else ""
    if not line.startswith("ready "):
        node.kill()
        node.wait()
        raise AssertionError(f"not ready within {READY_WAIT:.0f} s: {line!r}")
    return node, line.split()[1]


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")
def test_cluster_add_takes_an_ipv6_address_in_brackets(make_cluster, tmp_path):
    # `cluster add DIR [::1]:PORT` looked "[::1]" up as a host name: "cannot reach a node at
    # [::1]:PORT: [Errno -2] Name or service not known".
    cluster = make_cluster(nodes=1, replicas=1, min_replicas=1)
    node, address = _far_node(tmp_path / "far", cluster.config.admin_public_key(), "[::1]:0")
    try:
        assert address.startswith("[::1]:")
        row = cli_json("cluster", "add", cluster.path, address, "--name", "far")
        assert row["address"] == address
        states = {n["name"]: n["state"] for n in cli_json("-c", cluster.path, "node", "ls")}
        assert states == {"node1": "up", "far": "up"}
    finally:
        node.terminate()
        assert node.wait(10) == 0


def test_cluster_add_refuses_a_node_of_another_cluster_in_one_line(make_cluster, tmp_path):
    # A node that held another cluster's blocks and catalog joined: the next open loaded that
    # cluster's catalog (its VMs showed in `vm ls`), and inventory would reclaim its blocks.
    cluster = make_cluster(nodes=1, replicas=1, min_replicas=1)
    other = make_cluster(nodes=1, replicas=1, min_replicas=1)
    image(tmp_path / "a.raw", 1)
    with other.open() as admin:
        admin.import_image("theirs", str(tmp_path / "a.raw"))
        blocks = admin.stats().unique_blocks
    data = other.config.node("node1").data
    with open(f"{data}/authorized_keys", "a") as keys:     # it lets this cluster in too
        keys.write(cluster.config.admin_public_key())
    before = (cluster.path / "cluster.json").read_text()
    address = other.config.node("node1").address
    proc = run_cli("cluster", "add", cluster.path, address)
    assert proc.returncode == 1, proc.stdout_text
    assert re.fullmatch(
        f"blockfold: error: the node at {re.escape(address)} holds {blocks} blocks and a catalog"
        r" \(epoch \d+, version \d+\): it is a node of another cluster, and a node joins empty"
        r" \(start it on a new data dir\); nothing was added\n", proc.stderr_text)
    assert (cluster.path / "cluster.json").read_text() == before
    assert cli_json("-c", cluster.path, "vm", "ls") == []


def test_cluster_add_refuses_a_node_of_another_block_size(make_cluster, tmp_path):
    cluster = make_cluster(nodes=1, replicas=1, min_replicas=1)
    before = (cluster.path / "cluster.json").read_text()
    node, address = _far_node(tmp_path / "far", cluster.config.admin_public_key(),
                              "127.0.0.1:0", "--block-size", "8192")
    try:
        proc = run_cli("cluster", "add", cluster.path, address)
        assert proc.returncode == 1
        assert proc.stderr_text == (f"blockfold: error: the node at {address} keeps 8192-byte"
                                    f" blocks, cluster {cluster.path} 4096-byte ones; nothing"
                                    " was added\n")
        assert (cluster.path / "cluster.json").read_text() == before
    finally:
        node.terminate()
        assert node.wait(10) == 0
