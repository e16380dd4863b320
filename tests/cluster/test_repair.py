"""Rotten copies in a cluster: a read serves a sound replica and rewrites the rotten copy (read
repair), `blockfold -c C scrub` has every node re-read its copies and repairs them, and a write
acknowledged over NBD outlives the nodes that took it being killed and restored."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from engine.cluster import placement
from engine.fingerprint import Fingerprinter
from engine.remoteadmin import RemoteAdmin
from tests.conftest import cli_json, run_cli
from tests.nbdclient import CMD_FLUSH, RawClient, Server
from tests.serviceproc import Served

from .conftest import image

EIO = 5


def held(node_dir: Path) -> dict[int, int]:
    """{block id: slot} of the copies a node holds, from its hash file."""
    hashes = np.fromfile(node_dir / "hashes.dat", dtype=np.uint64).reshape(-1, 2)
    slots = np.flatnonzero(hashes[:, 0])
    slots = slots[slots != 0]
    return dict(zip(hashes[slots, 0].tolist(), slots.tolist()))


def flip(node_dir: Path, slot: int) -> None:
    """Flips one byte of a slot on disk, under the running node."""
    with open(node_dir / "blocks.dat", "r+b") as f:
        f.seek(slot * 4096 + 100)
        byte = f.read(1)[0]
        f.seek(slot * 4096 + 100)
        f.write(bytes([byte ^ 0xFF]))


def fsck(cluster) -> list[dict]:
    """The problems `blockfold -c C fsck` reports (it exits 1 when there are any)."""
    proc = run_cli("-c", cluster.path, "fsck", "--json")
    problems = json.loads(proc.stdout)["problems"]
    assert proc.returncode == (1 if problems else 0), proc.stderr_text
    return problems


def node_dirs(cluster) -> list[Path]:
    return [Path(entry.data) for entry in cluster.config.nodes]


def ranking(cluster, block_id: int) -> list[int]:
    """The nodes in a block's placement order: its first R hold it, a read asks them so."""
    config = cluster.config
    seeds = np.array([placement.node_seed(e.name) for e in config.nodes], dtype=np.uint64)
    weights = np.array([e.weight for e in config.nodes], dtype=np.float64)
    return placement.ranking(np.array([block_id], np.uint64), seeds, weights)[0].tolist()


def first_holder(cluster, block_id: int, holders: list[int]) -> int:
    """The holder a read asks first."""
    return next(i for i in ranking(cluster, block_id) if i in holders)


def test_a_read_serves_a_sound_replica_and_repairs_the_rotten_copy(make_cluster, tmp_path):
    cluster = make_cluster(nodes=3, replicas=2)
    data = image(tmp_path / "a.raw", 1, seed=31)
    run_cli("-c", cluster.path, "vm", "import", "a", tmp_path / "a.raw", check=True)
    dirs = node_dirs(cluster)
    copies = [held(d) for d in dirs]
    block_id = sorted(copies[0])[0]
    holders = [i for i, c in enumerate(copies) if block_id in c]
    assert len(holders) == 2
    rotten = first_holder(cluster, block_id, holders)
    flip(dirs[rotten], copies[rotten][block_id])
    name = cluster.config.nodes[rotten].name
    assert any(p["kind"] == "corrupt" and p["node"] == name
               for p in fsck(cluster))

    s = Served(["-c", str(cluster.path)], "--nbd", "127.0.0.1:0")
    try:
        run_cli("-c", cluster.path, "vm", "export", "a", tmp_path / "out.raw", check=True)
        assert (tmp_path / "out.raw").read_bytes() == data          # the sound replica
        assert cli_json("-c", cluster.path, "stats")["repaired_copies"] == 1
        admin = RemoteAdmin.find(cluster.path)
        deadline = time.monotonic() + 10        # the healer thread logs what reads repaired
        while not (events := [e for e in admin.events(50) if e.kind == "repair"]):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        imported = next(e for e in admin.events(50) if e.kind == "import")
        admin.close()
        assert len(events) == 1 and f"node {name}:" in events[0].message
        assert f"{block_id:016x}" in events[0].message
        assert events[0].actor == imported.actor        # who read it, as who imported it
    finally:
        s.stop()
    # The node's own copy is sound again: it re-hashes every block it holds.
    assert fsck(cluster) == []


def test_cluster_scrub_repairs_every_rotten_copy_and_names_the_lost_block(make_cluster,
                                                                          tmp_path):
    cluster = make_cluster(nodes=3, replicas=2)
    image(tmp_path / "a.raw", 1, seed=37)
    run_cli("-c", cluster.path, "vm", "import", "a", tmp_path / "a.raw", check=True)
    dirs = node_dirs(cluster)
    copies = [held(d) for d in dirs]
    for slot in copies[0].values():                     # every copy node1 holds
        flip(dirs[0], slot)
    lost = sorted(copies[0])[0]                         # and one block's every copy
    for i in (1, 2):
        if lost in copies[i]:
            flip(dirs[i], copies[i][lost])

    proc = run_cli("-c", cluster.path, "scrub", "--wait", "--json")
    assert proc.returncode == 1, proc.stderr_text        # a block is lost: exit 1
    figures = json.loads(proc.stdout)
    assert figures["finished"] and figures["corrupt"] == [lost]
    assert figures["repaired"] == len(copies[0]) - 1
    assert figures["blocks"] == sum(len(c) for c in copies)     # every copy, on every node
    stats = cli_json("-c", cluster.path, "stats")
    assert stats["corrupt_blocks"] == 1
    # Only the lost block is left rotten; every other copy is sound again.
    problems = fsck(cluster)
    assert problems and {p["pbn"] for p in problems} == {lost}
    # Through a service, a scrub is a job; with --wait it reports like the CLI's own.
    s = Served(["-c", str(cluster.path)])
    try:
        proc = run_cli("-c", cluster.path, "scrub", "--wait", "--rate", "100M", "--json")
        again = json.loads(proc.stdout)
        assert again["repaired"] == 0 and again["corrupt"] == [lost]
        assert any(j["kind"] == "scrub" and j["state"] == "done"
                   for j in cli_json("-c", cluster.path, "job", "ls"))
        text = run_cli("-c", cluster.path, "scrub", "--wait").stdout_text
        assert "0 repaired" in text and "1 corrupt" in text
    finally:
        s.stop()


@pytest.mark.parametrize("memory", [None, 64 << 20], ids=["disk", "ram"])
def test_an_acknowledged_write_survives_its_nodes_killed_and_restored(make_cluster, tmp_path,
                                                                      memory):
    """Issue 13 case 1 in a cluster: m1 written over NBD (acknowledged), both nodes holding it
    kill -9'd and restored, then FLUSH: it fails with EIO, or it succeeds and m1 reads back;
    and once flushed, m1 outlives a kill -9 of the server."""
    cluster = make_cluster(nodes=3, replicas=2, memory=memory)
    with cluster.open() as admin:
        admin.pool.create_vm("a", 1 << 20)
    m1 = os.urandom(4096)
    server = Server(cluster.path, cluster=True)
    try:
        client = RawClient(server.port)
        client.connect("a")
        assert client.write(8192, m1) == 0
        names = [e.name for e in cluster.config.nodes]
        # Its id is the first word of its xxh3-128 (engine.cluster.writes).
        block_id = int(Fingerprinter(4096).of(m1)[0, 0])
        block_holders = [names[i] for i in ranking(cluster, block_id)[:2]]
        for name in block_holders:
            cluster.kill(name)
        for name in block_holders:
            run_cli("-c", cluster.path, "node", "restore", name, check=True)
        error = client.simple(CMD_FLUSH)
        # A disk node's copies outlive its process (page cache); a RAM node's do not.
        assert error == (0 if memory is None else EIO)
        if error == 0:
            assert client.read(8192, 4096) == (0, m1)
        else:                       # m1 is gone, and the client was told: never other bytes
            assert client.read(8192, 4096)[0] == EIO
        client.close()
    finally:
        server.kill()
    if memory is None:
        # Replicas under one stamp hold one catalog (a node caught up inside a commit once got
        # the base labelled as the change, and a reopen could load that one).
        stamps = {}
        for d in node_dirs(cluster):
            with sqlite3.connect(d / "catalog.db") as db:
                stamp = db.execute("SELECT epoch, version FROM replica").fetchone()
                rows = db.execute("SELECT * FROM bmap ORDER BY 1, 2").fetchall() + \
                    db.execute("SELECT id, kind, message FROM events ORDER BY id").fetchall()
            stamps.setdefault(stamp, set()).add(repr(rows))
        assert all(len(contents) == 1 for contents in stamps.values()), stamps.keys()
    if error == 0:
        assert fsck(cluster) == []
        proc = run_cli("-c", cluster.path, "vm", "export", "a", tmp_path / "a.raw", check=True)
        assert proc.returncode == 0
        assert (tmp_path / "a.raw").read_bytes()[8192:12288] == m1


def test_a_cluster_scrub_and_fsck_say_what_they_count(make_cluster, tmp_path):
    # A scrub reads every copy on every node: it said "scrubbed 2,713 blocks" of a pool of
    # 2,048 blocks. And fsck's count of short blocks had no thousands separator.
    cluster = make_cluster(nodes=3, replicas=2)
    image(tmp_path / "a.raw", 12, seed=41)
    run_cli("-c", cluster.path, "vm", "import", "a", tmp_path / "a.raw", check=True)
    copies = sum(len(held(d)) for d in node_dirs(cluster))
    said = run_cli("-c", cluster.path, "scrub", "--wait", check=True).stdout_text
    assert said.startswith(f"scrubbed {copies:,} copies (")
    [event] = [e["message"] for e in cli_json("-c", cluster.path, "events")
               if e["kind"] == "scrub"]
    assert event.startswith(f"scrub finished: {copies:,} copies (")
    run_cli("-c", cluster.path, "node", "fail", "node1", "-y", check=True)
    short = len(held(node_dirs(cluster)[0]))
    assert short > 999
    proc = run_cli("-c", cluster.path, "fsck")
    assert proc.returncode == 1
    assert (f"replication: {short:,} blocks have fewer than 2 reachable copies: run heal"
            in proc.stdout_text + proc.stderr_text)


def test_a_full_rebuild_rewrites_rotten_copies_and_calls_corrupt_only_a_lost_block(
        make_cluster, tmp_path):
    # It called every rotten copy a corrupt block (exit 1) although each had a sound replica,
    # and counted the copies it dropped as orphans reclaimed; scrub called them repaired.
    cluster = make_cluster(nodes=3, replicas=2)
    data = {name: image(tmp_path / f"{name}.raw", 1, seed=seed)
            for name, seed in (("a", 43), ("b", 47))}
    for name in data:
        run_cli("-c", cluster.path, "vm", "import", name, tmp_path / f"{name}.raw", check=True)
    dirs = node_dirs(cluster)
    copies = [held(d) for d in dirs]
    rotten = sorted(copies[2])[::5]                      # a fifth of node3's copies
    for block_id in rotten:
        flip(dirs[2], copies[2][block_id])

    proc = run_cli("-c", cluster.path, "rebuild", "--full", "--json")
    assert proc.returncode == 0, proc.stderr_text        # nothing is lost
    figures = json.loads(proc.stdout)
    assert figures["corrupt_blocks"] == [] and figures["missing_blocks"] == 0
    assert figures["repaired_copies"] == len(rotten) and figures["orphans_reclaimed"] == 0
    assert held(dirs[2]) == copies[2]                    # rewritten in place, none dropped
    assert fsck(cluster) == []                           # every copy sound again
    assert cli_json("-c", cluster.path, "stats")["corrupt_blocks"] == 0
    event = next(e for e in cli_json("-c", cluster.path, "events", "--limit", "20")
                 if e["kind"] == "rebuild")
    assert (f"0 corrupt, 0 orphans reclaimed, {len(rotten)} rotten copies rewritten from a"
            " sound replica") in event["message"]

    # A block whose every copy is rotten is the one corrupt block: exit 1, named.
    lost = sorted(copies[0])[0]
    for i, node_copies in enumerate(copies):
        if lost in node_copies:
            flip(dirs[i], node_copies[lost])
    other = next(b for b in sorted(copies[1]) if b != lost)
    flip(dirs[1], copies[1][other])
    proc = run_cli("-c", cluster.path, "rebuild", "--full")
    assert proc.returncode == 1, proc.stderr_text
    assert ("1 corrupt, 0 orphans reclaimed, 1 rotten copy rewritten from a sound replica"
            in proc.stdout_text)
    assert cli_json("-c", cluster.path, "stats")["corrupt_blocks"] == 1
    # The VM holding the lost block names it; every other block reads back as imported.
    failed = []
    for name, raw in data.items():
        out = tmp_path / f"{name}.out"
        proc = run_cli("-c", cluster.path, "vm", "export", name, out)
        if proc.returncode == 0:
            assert out.read_bytes() == raw
        else:
            assert f"{lost:016x}" in proc.stderr_text
            failed.append(name)
    assert len(failed) == 1
