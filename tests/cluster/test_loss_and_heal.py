"""Losing nodes loses no acknowledged byte; reads fail over; heal restores R copies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from engine.api import BlockfoldError
from engine.cluster.blocks import ClusterBlocks

from .conftest import image

# Three of an import's batches: a kill at 30 % of the import lands between two of them.
MID_IMPORT_MIB = 3 * ClusterBlocks.import_bytes >> 20


def test_kill_a_node_mid_import_then_heal(make_cluster, tmp_path):
    cluster = make_cluster(nodes=3, replicas=2)
    data = image(tmp_path / "golden.raw", MID_IMPORT_MIB)
    killed = threading.Event()

    def progress(p):
        if p.phase == "import" and p.fraction > 0.3 and not killed.is_set():
            killed.set()
            cluster.kill("node2")

    with cluster.open() as admin:
        admin.import_image("golden", str(tmp_path / "golden.raw"), progress)
        assert killed.is_set()
        assert admin.read("golden", 0, len(data)) == data
        figures = admin.heal(wait=False)
        assert figures.under_replicated == 0
        down = [n.name for n in admin.nodes() if n.state == "down"]
        assert down == ["node2"]
        assert admin.fsck() == []
    # A fresh coordinator sees the same VM, every byte, fully replicated on the two nodes left.
    with cluster.open(readonly=True) as admin:
        assert admin.read("golden", 0, len(data)) == data
        assert admin.stats().under_replicated_blocks == 0


def test_r3_on_5_nodes_survives_two_kills(make_cluster, tmp_path):
    cluster = make_cluster(nodes=5, replicas=3)
    data = image(tmp_path / "a.raw", 4, seed=2)
    with cluster.open() as admin:
        admin.import_image("a", str(tmp_path / "a.raw"))
        admin.clone("a", "b")
        admin.write("b", 12345, b"written after the clone" * 100)
        expect_b = bytearray(data)
        expect_b[12345:12345 + 2300] = b"written after the clone" * 100
        cluster.kill("node1")
        cluster.kill("node4")
        assert admin.read("a", 0, len(data)) == data
        assert admin.read("b", 0, len(data)) == bytes(expect_b)
    with cluster.open(readonly=True) as admin:
        assert sorted(admin.vm_names()) == ["a", "b"]
        assert admin.read("b", 0, len(data)) == bytes(expect_b)


def test_returning_node_catches_up_and_drops_what_it_should_not_hold(make_cluster, tmp_path):
    cluster = make_cluster(nodes=3, replicas=2)
    image(tmp_path / "a.raw", 2, seed=3)
    with cluster.open() as admin:
        admin.import_image("a", str(tmp_path / "a.raw"))
        admin.fail_node("node3")
        admin.delete("a")                      # node3 misses this: it still holds a's blocks
        image(tmp_path / "b.raw", 2, seed=4)
        admin.import_image("b", str(tmp_path / "b.raw"))
        admin.restore_node("node3")
        admin.heal(wait=True)
        nodes = {n.name: n for n in admin.nodes()}
        assert nodes["node3"].state == "up"
        assert admin.fsck() == []
        live = admin.stats().unique_blocks
        # Exactly R copies of every live block, across the nodes: nothing stale kept.
        assert sum(n.live_blocks for n in nodes.values()) == 2 * live
        assert admin.vm_names() == ["b"]
    with cluster.open(readonly=True) as admin:
        assert admin.vm_names() == ["b"]


def test_ram_nodes_refill_after_a_restart(make_cluster, tmp_path):
    cluster = make_cluster(nodes=3, replicas=2, memory=64 << 20)
    data = image(tmp_path / "a.raw", 4, seed=5)
    with cluster.open() as admin:
        admin.import_image("a", str(tmp_path / "a.raw"))
        before = {n.name: n.live_blocks for n in admin.nodes()}
        admin.fail_node("node1")
        admin.restore_node("node1")            # back empty: RAM only
        admin.heal(wait=True)
        assert admin.stats().under_replicated_blocks == 0
        after = {n.name: n.live_blocks for n in admin.nodes()}
        assert after["node1"] == before["node1"]
        assert admin.read("a", 0, len(data)) == data
        assert admin.fsck() == []


def test_write_refused_below_min_replicas_changes_nothing(make_cluster, tmp_path):
    cluster = make_cluster(nodes=3, replicas=2)
    data = image(tmp_path / "a.raw", 1, seed=6)
    with cluster.open() as admin:
        admin.import_image("a", str(tmp_path / "a.raw"))
        cluster.kill("node1")
        cluster.kill("node2")
        with pytest.raises(BlockfoldError, match="min_replicas=2"):
            admin.write("a", 0, bytes(range(256)) * 32)
        with pytest.raises(BlockfoldError, match="only 1 of 3 nodes are up"):
            admin.import_image("b", str(tmp_path / "a.raw"))
        assert admin.vm_names() == ["a"]
        admin.restore_node("node1")
        admin.restore_node("node2")
        assert admin.read("a", 0, len(data)) == data


def test_reads_keep_flowing_while_a_node_is_killed(make_cluster, tmp_path):
    # Every read answers, right, from the other replicas. How long the longest waited (the
    # stall, 0.1-0.2 s) is a figure of tests/bench/cluster.py ("read stall during a node kill").
    cluster = make_cluster(nodes=3, replicas=2)
    data = image(tmp_path / "a.raw", 2, seed=7)
    with cluster.open() as admin:
        admin.import_image("a", str(tmp_path / "a.raw"))
        for i in range(40):
            if i == 10:
                cluster.kill("node1")
            off = (i * 65536) % len(data)
            assert admin.read("a", off, 65536) == data[off:off + 65536]


def _rot_every_copy(node_dir: Path) -> None:
    """Flips one byte of every block a node holds, on disk, under the running node."""
    hashes = np.fromfile(node_dir / "hashes.dat", dtype=np.uint64).reshape(-1, 2)
    with open(node_dir / "blocks.dat", "r+b") as f:
        for slot in np.flatnonzero(hashes[:, 0]).tolist():
            f.seek(slot * 4096 + 100)
            byte = f.read(1)[0]
            f.seek(slot * 4096 + 100)
            f.write(bytes([byte ^ 0xFF]))


def test_a_rotten_copy_is_never_served_and_fsck_names_it(make_cluster, tmp_path):
    cluster = make_cluster(nodes=3, replicas=2)
    data = image(tmp_path / "a.raw", 1, seed=9)
    with cluster.open() as admin:
        admin.import_image("a", str(tmp_path / "a.raw"))
        _rot_every_copy(Path(cluster.config.node("node1").data))
        assert admin.read("a", 0, len(data)) == data
        kinds = {p.kind for p in admin.fsck()}
        assert "corrupt" in kinds
        # A full rebuild re-hashes every copy and rewrites the rotten ones from a sound
        # replica: none is a corrupt block (it named each one, and dropped it for heal).
        phases = []
        figures = admin.rebuild(full=True, progress=lambda p: phases.append(p.phase))
        assert figures.corrupt_blocks == [] and figures.repaired_copies > 0
        assert admin.fsck() == []       # none rotten, none short: each rewritten in place
        assert tuple(dict.fromkeys(phases)) == admin.rebuild_phases     # as the console shows
        # What a cluster has no use for is None, not a stand-in 0.
        assert figures.free_slots is None and figures.capacity_slots is None
        assert figures.bad_references is None and figures.missing_blocks is not None
        assert len(admin.pool.blocks.corrupt) == 0      # a sound copy of each is left: none lost
        admin.heal(wait=True)
        assert admin.fsck() == []
        assert admin.read("a", 0, len(data)) == data


def test_a_block_rotten_on_every_node_is_remembered_as_corrupt(make_cluster, tmp_path):
    """No sound copy left: reads say so, a full rebuild names the blocks corrupt, and the
    catalog remembers them (ids of all 64 bits) for the next coordinator's fast rebuild."""
    cluster = make_cluster(nodes=2, replicas=2)
    image(tmp_path / "a.raw", 1, seed=23)
    with cluster.open() as admin:
        admin.import_image("a", str(tmp_path / "a.raw"))
        for name in ("node1", "node2"):
            _rot_every_copy(Path(cluster.config.node(name).data))
        with pytest.raises(BlockfoldError):                # never rotten bytes
            admin.read("a", 0, 4096)
        figures = admin.rebuild(full=True)
        lost = admin.pool.blocks.corrupt.tolist()
        assert lost and lost == sorted(figures.corrupt_blocks)
        assert any(block_id >= 2**63 for block_id in lost)
    with cluster.open() as admin:                           # a fast rebuild: nothing re-read
        assert admin.pool.blocks.corrupt.tolist() == lost


def test_a_hung_node_turns_suspect_then_down_and_comes_back(make_cluster, tmp_path):
    cluster = make_cluster(nodes=3, replicas=2)
    data = image(tmp_path / "a.raw", 1, seed=10)
    with cluster.open() as admin:
        admin.import_image("a", str(tmp_path / "a.raw"))
        pid = cluster.pid("node3")
        os.kill(pid, signal.SIGSTOP)              # alive, connected, silent
        try:
            seen = set()
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and "down" not in seen:
                seen.add({n.name: n.state for n in admin.nodes()}["node3"])
                time.sleep(0.1)
            assert {"suspect", "down"} <= seen
            assert admin.read("a", 0, len(data)) == data
        finally:
            os.kill(pid, signal.SIGCONT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if {n.name: n.state for n in admin.nodes()}["node3"] == "up":
                break
            time.sleep(0.1)
        assert {n.name: n.state for n in admin.nodes()}["node3"] == "up"
        admin.heal(wait=True)
        assert admin.fsck() == []


def test_catalogs_bigger_than_a_frame_travel_in_parts(make_cluster, tmp_path, monkeypatch):
    from engine.net import rpc
    monkeypatch.setattr(rpc, "CATALOG_PART", 16 << 10)    # the coordinator's side only
    cluster = make_cluster(nodes=3, replicas=2)
    data = image(tmp_path / "a.raw", 4, seed=13)
    with cluster.open() as admin:
        admin.import_image("a", str(tmp_path / "a.raw"))   # a changeset of many parts
        admin.fail_node("node2")
        admin.clone("a", "b")
        admin.restore_node("node2")                          # catches up by a whole image
        assert {n.name: n.state for n in admin.nodes()}["node2"] == "up"
    with cluster.open(readonly=True) as admin:               # fetched in parts
        assert admin.vm_names() == ["a", "b"]
        assert admin.read("b", 0, len(data)) == data


def test_big_blocks_and_big_reads_stay_within_frames(make_cluster, tmp_path, monkeypatch):
    from engine.cluster import copies
    monkeypatch.setattr(copies, "FRAME_BYTES", 256 << 10)     # 4 blocks of 64 KiB a frame
    cluster = make_cluster(nodes=3, replicas=2, block_size=65536)
    data = image(tmp_path / "a.raw", 8, seed=14)
    with cluster.open() as admin:
        admin.import_image("a", str(tmp_path / "a.raw"))
        assert admin.read("a", 0, len(data)) == data          # one read, many frames
        admin.fail_node("node1")
        admin.heal(wait=True)
        assert admin.read("a", 0, len(data)) == data
        assert admin.fsck() == []


def test_losing_r_nodes_mid_import_rolls_it_back_whole(make_cluster, tmp_path):
    """A replication failure mid-import goes through the pool's own abort: no half-made VM, an
    error naming the lost nodes, and the cluster works again once they are back."""
    cluster = make_cluster(nodes=3, replicas=2)
    first = image(tmp_path / "first.raw", 1, seed=11)
    image(tmp_path / "big.raw", MID_IMPORT_MIB, seed=12)
    killed = threading.Event()

    def progress(p):
        if p.phase == "import" and p.fraction > 0.3 and not killed.is_set():
            killed.set()
            cluster.kill("node1")
            cluster.kill("node2")

    with cluster.open() as admin:
        admin.import_image("first", str(tmp_path / "first.raw"))
        with pytest.raises(BlockfoldError) as refused:
            admin.import_image("big", str(tmp_path / "big.raw"), progress)
        assert killed.is_set()
        assert "node1" in str(refused.value) and "node2" in str(refused.value)
        assert admin.vm_names() == ["first"]
        admin.restore_node("node1")
        admin.restore_node("node2")
        admin.heal(wait=True)
        assert admin.fsck() == []
        assert admin.read("first", 0, len(first)) == first
        big = admin.import_image("big", str(tmp_path / "big.raw"))
        assert big.name == "big"
        assert admin.fsck() == []
    with cluster.open(readonly=True) as admin:
        assert admin.vm_names() == ["big", "first"]
        assert admin.read("first", 0, len(first)) == first


def _wait_for(condition, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)
    return condition()


def test_a_failing_healer_says_so_once_and_goes_on_healing(make_cluster, tmp_path, monkeypatch,
                                                            capfd):
    """A fault in every round of the healer (injected in-process) is one line on stderr and one
    `heal` event, not one per round; once it is gone the healer heals a lost node unasked."""
    cluster = make_cluster(nodes=3, replicas=2)
    data = image(tmp_path / "a.raw", 1, seed=21)
    with cluster.open() as admin:
        admin.import_image("a", str(tmp_path / "a.raw"))
        blocks = admin.pool.blocks

        def broken():
            raise RuntimeError("row map unreadable")

        def heal_events():
            return [e for e in admin.pool.events() if e["kind"] == "heal"]

        monkeypatch.setattr(blocks, "under_replicated", broken)
        assert _wait_for(heal_events)
        time.sleep(1.0)                                     # five more failing rounds
        monkeypatch.undo()
        err = capfd.readouterr().err
        assert err.count("heal failed") == 1
        assert "blockfold: heal failed: RuntimeError: row map unreadable" in err
        assert [e["message"] for e in heal_events()] == [
            "heal failed: RuntimeError: row map unreadable"]

        admin.fail_node("node1")
        assert blocks.under_replicated() > 0                 # marked down at once
        assert _wait_for(lambda: blocks.under_replicated() == 0)
        assert admin.read("a", 0, len(data)) == data
        assert admin.fsck() == []


def test_a_rebuild_whose_record_cannot_commit_leaves_the_pool_usable(make_cluster, tmp_path):
    """The rebuild itself succeeds on the one node left, but its record cannot reach
    min_replicas nodes: the caller is told, and reads, writes and flushes go on (they must not
    wait for ever on a rebuild that never says it is done)."""
    cluster = make_cluster(nodes=3, replicas=2)
    data = image(tmp_path / "a.raw", 1, seed=22)
    with cluster.open() as admin:
        admin.import_image("a", str(tmp_path / "a.raw"))
        admin.fail_node("node1")
        admin.fail_node("node2")
        with pytest.raises(BlockfoldError, match="min_replicas"):
            admin.rebuild()
        admin.restore_node("node1")
        admin.restore_node("node2")
        flushed = threading.Thread(target=lambda: (admin.write("a", 0, b"x" * 4096),
                                                   admin.flush()), daemon=True)
        flushed.start()
        flushed.join(30)
        assert not flushed.is_alive(), "a write waits for ever on the failed rebuild"
        assert admin.read("a", 0, len(data)) == b"x" * 4096 + data[4096:]


def test_node_restore_works_with_every_node_down(make_cluster, tmp_path):
    cluster = make_cluster(nodes=2, replicas=2)
    data = image(tmp_path / "a.raw", 1, seed=21)
    with cluster.open() as admin:
        admin.import_image("a", str(tmp_path / "a.raw"))

    def bf(*args):
        return subprocess.run([sys.executable, "-m", "console", "-c", str(cluster.path), *args],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=60)

    cluster.kill("node1")
    cluster.kill("node2")
    # With nothing to reach, opening the cluster fails; restoring needs only its directory.
    told = bf("node", "ls").stderr
    assert told.startswith(f"blockfold: error: no node of cluster {cluster.path} can be"
                           f" reached: start them (`blockfold cluster up {cluster.path}`")
    done = bf("node", "restore", "node1")
    assert done.returncode == 0, done.stderr
    address = cluster.config.node("node1").address
    assert done.stdout == f"restored node1 (pid {cluster.pid('node1')}, {address})\n"
    assert json.loads(bf("node", "restore", "node2", "--json").stdout)["restored"] == "node2"
    with cluster.open() as admin:
        assert {n.state for n in admin.nodes()} == {"up"}
        assert admin.read("a", 0, len(data)) == data
        assert admin.fsck() == []
    wrong = bf("node", "restore", "node9")
    assert wrong.returncode == 1
    assert wrong.stderr == f"blockfold: error: no node named 'node9' in cluster {cluster.path}\n"


def test_a_node_back_with_copies_of_an_emptied_pool_breaks_nothing(make_cluster, tmp_path):
    # The last VM removed while node1 was down; node1 back with its copies: every command that
    # opened the cluster read-only said "internal error: IndexError: index 0 is out of bounds".
    cluster = make_cluster(nodes=3, replicas=2)
    image(tmp_path / "a.raw", 1, seed=51)

    def bf(*args, check=True):
        done = subprocess.run([sys.executable, "-m", "console", "-c", str(cluster.path), *args],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=60)
        assert not check or done.returncode == 0, done.stderr
        return done

    bf("vm", "import", "a", str(tmp_path / "a.raw"))
    bf("node", "fail", "node1", "-y")
    bf("vm", "rm", "a", "-y")
    bf("node", "restore", "node1")
    assert bf("vm", "ls").stdout.splitlines()[1:] == []
    assert json.loads(bf("stats", "--json").stdout)["unique_blocks"] == 0
    with cluster.open() as admin:            # a writer drops the copies nobody references
        assert admin.fsck() == []
