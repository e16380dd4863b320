"""A cluster's figures mean what they say: which nodes hold each block, how many VMs read it,
what a snapshot alone holds, and capacity as room for new copies, each filesystem counted once
and not divided by R."""

from __future__ import annotations

import os
import time

import numpy as np

from .conftest import image

MiB = 1 << 20


def test_blocks_name_their_holders_and_capacity_counts_each_disk_once(make_cluster, tmp_path):
    cluster = make_cluster(nodes=3, replicas=2)
    image(tmp_path / "a.raw", 1, seed=3)
    with cluster.open() as admin:
        admin.import_image("golden", str(tmp_path / "a.raw"))
        admin.clone("golden", "desk", count=3)
        page = admin.blocks(limit=1000)
        names = {n.name for n in admin.nodes()}
        assert page.rows and all(len(r.nodes) == 2 and set(r.nodes) <= names for r in page.rows)
        assert {r.readers for r in page.rows} == {4} and {len(r.vms) for r in page.rows} == {4}
        s = admin.stats()
        # the three nodes keep their blocks on one filesystem: its free space, once
        st = os.statvfs(tmp_path)
        free = st.f_bavail * st.f_frsize
        assert abs(s.capacity_bytes - free) < 256 * MiB
        assert s.usable_bytes == s.capacity_bytes // 2
        assert all(abs(n.capacity_bytes - free) < 256 * MiB for n in admin.nodes())


def test_a_snapshot_counts_the_blocks_it_alone_holds(make_cluster, tmp_path):
    """What removing a snapshot may free, as stats and `vm snapshots` say it on a cluster: the
    blocks the VM overwrote since, not those it or another VM still reads."""
    cluster = make_cluster(nodes=3, replicas=2)
    image(tmp_path / "a.raw", 1, seed=6)
    rng = np.random.default_rng(7)
    with cluster.open() as admin:
        admin.import_image("golden", str(tmp_path / "a.raw"))
        admin.clone("golden", "desk", count=3)
        admin.write("desk-1", 0, rng.bytes(64 * 4096))
        admin.take_snapshot("desk-1", "s1")
        assert admin.stats().snapshot_blocks == 0                   # desk-1 reads them
        admin.write("desk-1", 16 * 4096, rng.bytes(48 * 4096))
        assert [s.blocks_alone for s in admin.snapshots("desk-1")] == [48]
        assert admin.stats().snapshot_blocks == 48


def test_ram_nodes_each_count_their_unused_memory(make_cluster, tmp_path):
    cluster = make_cluster(nodes=3, replicas=2, memory=64 * MiB)
    image(tmp_path / "a.raw", 1, seed=4)
    with cluster.open() as admin:
        admin.import_image("a", str(tmp_path / "a.raw"))
        admin.flush()
        deadline = time.monotonic() + 10
        while True:      # until a heartbeat after the import, and none between the figures
            s = admin.stats()
            stored = sum(n.blocks for n in s.nodes) * admin.block_size
            if ((stored and s.capacity_bytes == 3 * 64 * MiB - stored)
                    or time.monotonic() > deadline):
                break
            time.sleep(0.2)
        assert s.capacity_bytes == sum(n.capacity_bytes for n in s.nodes)
        assert s.capacity_bytes == 3 * 64 * MiB - stored and stored > 0
        assert s.usable_bytes == s.capacity_bytes // 2


def test_node_fail_restore_and_heal_are_events_with_their_actor(make_cluster, tmp_path):
    cluster = make_cluster(nodes=3, replicas=2)
    image(tmp_path / "a.raw", 1, seed=5)
    with cluster.open(actor="alice") as admin:
        admin.import_image("a", str(tmp_path / "a.raw"))
        admin.fail_node("node3")
        admin.heal(wait=True)
        admin.restore_node("node3")
        events = list(reversed(admin.events(50)))
    # the healer may heal beside alice's heal: its passes are the engine's
    mine = [(e.actor, e.kind, e.message.split(":")[0]) for e in events if e.actor == "alice"]
    assert mine == [("alice", "import", "imported a (1.0 MiB)"),
                    ("alice", "node", "failed node3 (its process killed)"),
                    ("alice", "heal", "heal started"), ("alice", "heal", "heal ended"),
                    ("alice", "node", "restored node3 (its process restarted)")]
    assert {(e.actor, e.kind) for e in events} <= {("alice", k) for k in ("import", "node",
                                                                           "heal")} | {
        ("engine", "heal"), ("engine", "node")}
    with cluster.open(actor="bob") as admin:      # an open's own rebuild is no event
        assert [e.actor for e in admin.events(20)].count("bob") == 0


def test_a_node_lost_behind_the_writers_back_is_an_event(make_cluster):
    cluster = make_cluster(nodes=3, replicas=2)
    with cluster.open() as admin:
        cluster.kill("node2")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            news = [e for e in admin.events(10) if e.kind == "node"]
            if news:
                break
            time.sleep(0.2)
        assert [(e.actor, e.message.split(":")[0]) for e in news] == [("engine",
                                                                        "node2 is down")]


def test_a_heal_that_cannot_make_r_copies_is_logged_once_not_every_round(make_cluster, tmp_path):
    # R=3 on 3 nodes with one down: no pass can make the third copies, so the healer's passes
    # change nothing; it says so once, not two events every 0.2 s, until a node comes back.
    cluster = make_cluster(nodes=3, replicas=3)
    image(tmp_path / "a.raw", 1, seed=6)
    with cluster.open() as admin:
        admin.import_image("a", str(tmp_path / "a.raw"))
        admin.fail_node("node3")
        time.sleep(3)
        heals = [e.message.split(":")[0] for e in admin.events(200)
                 if e.kind == "heal" and e.actor == "engine"]
        assert heals == ["heal ended", "heal started"]
        admin.restore_node("node3")
        deadline = time.monotonic() + 20
        while admin.stats().under_replicated_blocks and time.monotonic() < deadline:
            time.sleep(0.2)
        assert admin.stats().under_replicated_blocks == 0
