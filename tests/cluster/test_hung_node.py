"""A hung node (issue 14, failure 2): SIGSTOP one node of three under an NBD client's writes.
The node stays connected and silent; a guest's 30 s I/O timeout must never fire for it. How long
a write or an open takes with a hung node is a speed figure: tests/bench/silent.py."""

from __future__ import annotations

import os
import signal
import time

import numpy as np

from tests.cluster.conftest import image
from tests.conftest import cli_json
from tests.nbdclient import CMD_FLUSH, RawClient, Server

KiB = 1 << 10
# What a guest waits for one I/O before it gives up on the disk (Linux's SCSI and virtio-blk
# default): a contract, not a speed figure; the write and flush take about 2.6 s in all.
GUEST_IO_TIMEOUT = 30


def states(cluster) -> dict[str, str]:
    """Each node's state as the cluster's service (the NBD server) judges it."""
    return {n["name"]: n["state"] for n in cli_json("-c", cluster.path, "node", "ls")}


def test_a_hung_node_holds_no_write_up_and_heals_once_it_wakes(make_cluster, tmp_path):
    cluster = make_cluster(nodes=3, replicas=2)
    image(tmp_path / "golden.raw", 2, seed=41)
    with cluster.open() as admin:
        admin.import_image("desk", str(tmp_path / "golden.raw"))
    fresh = np.random.default_rng(42).integers(0, 256, 2 << 20, dtype=np.uint8).tobytes()
    s = Server(cluster.path, cluster=True)
    # Every reply within the guest's I/O timeout (the socket's): none waits the node out.
    client = RawClient(s.port, timeout=GUEST_IO_TIMEOUT)
    pid = cluster.pid("node3")
    stopped = False
    try:
        client.connect("desk")
        os.kill(pid, signal.SIGSTOP)        # alive, connected, silent: in the middle of it all
        stopped = True
        for offset in range(0, len(fresh), 256 * KiB):
            assert client.write(offset, fresh[offset:offset + 256 * KiB]) == 0
        assert client.simple(CMD_FLUSH) == 0    # durable on the others, the node still mute
        # Judged down, not waited on: it missed its heartbeats, and what was in flight to it
        # was given up (the write and flush did not need it).
        deadline = time.monotonic() + GUEST_IO_TIMEOUT
        while (seen := states(cluster))["node3"] != "down":
            assert time.monotonic() < deadline, seen
            time.sleep(0.2)
        assert seen["node1"] == seen["node2"] == "up"
        error, back = client.read(0, len(fresh))
        assert error == 0 and back == fresh
        os.kill(pid, signal.SIGCONT)
        stopped = False
    finally:
        if stopped:
            os.kill(pid, signal.SIGCONT)
        client.close()
        s.stop()
    with cluster.open() as admin:           # back: caught up, and its copies put back
        admin.heal(wait=True)
        nodes = {n.name: n for n in admin.nodes()}
        assert nodes["node3"].state == "up" and nodes["node3"].live_blocks > 0
        assert admin.read("desk", 0, len(fresh)) == fresh
        assert admin.fsck() == []


def test_an_open_with_a_hung_node_reads_and_writes_on_the_others(make_cluster, tmp_path):
    # An open waits for a silent node once (its first heartbeat's connect timeout): how long
    # is a figure of tests/bench/silent.py (it asked again in its rebuild: 6 s, not 3).
    cluster = make_cluster(nodes=3, replicas=2)
    data = image(tmp_path / "golden.raw", 1, seed=43)
    with cluster.open() as admin:
        admin.import_image("desk", str(tmp_path / "golden.raw"))
    pid = cluster.pid("node3")
    os.kill(pid, signal.SIGSTOP)
    try:
        for readonly in (True, False):
            with cluster.open(readonly=readonly) as admin:
                assert admin.vm_names() == ["desk"]
                assert {n.name: n.state for n in admin.nodes()}["node3"] != "up"
                assert admin.read("desk", 0, len(data)) == data
                if not readonly:
                    admin.clone("desk", "desk2")
        with cluster.open(readonly=True) as admin:
            assert admin.vm_names() == ["desk", "desk2"]
    finally:
        os.kill(pid, signal.SIGCONT)
