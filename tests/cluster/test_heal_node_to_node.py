"""Heal copies from node to node: the bytes go from a holder straight to the target, a rotten copy
is never passed on, and a copy a node cannot make goes through the coordinator, saying why."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncssh
import numpy as np

from engine import api, formats
from engine.blockids import block_ids
from engine.fingerprint import Fingerprinter
from engine.net import rpc
from engine.node import keys

from ..conftest import run_cli
from .conftest import image
from .test_loss_and_heal import _rot_every_copy

LATER = 3600.0      # repair delay: the coordinator's own healer leaves the heal to the test


def _io_bytes() -> int:
    """Bytes this process (the coordinator) has read and written, sockets included."""
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["rchar"]) + int(fields["wchar"])


async def _rpc(cluster, name: str, key: Path, kind: int, header=None, payload=b"",
               timeout: float = 5.0):
    """One request to a node with `key`: (reply type, header, payload)."""
    host, _, port = cluster.config.node(name).address.rpartition(":")
    async with asyncssh.connect(host, int(port), username="blockfold", known_hosts=None,
                                agent_path=None, config=None,
                                client_keys=[str(key)]) as conn:
        writer, reader, _ = await conn.open_session(subsystem=rpc.SUBSYSTEM, encoding=None)
        writer.write(rpc.encode(kind, 7, header, payload))
        head = await asyncio.wait_for(reader.readexactly(rpc.HEADER.size), timeout)
        got, _, n = rpc.parse_header(head)
        body, data = rpc.parse_body(await asyncio.wait_for(reader.readexactly(n), timeout))
        return got, body, bytes(data)


def _held(cluster, name: str) -> np.ndarray:
    """The ids a node holds (one page of its inventory is all a test cluster has)."""
    _, body, data = asyncio.run(_rpc(cluster, name, cluster.config.admin_key, rpc.INVENTORY,
                                     {"start": 0}))
    return np.frombuffer(data, "<u8")[:body["count"]].astype(np.uint64)


def test_a_heal_after_node_fail_goes_from_node_to_node(make_cluster, tmp_path):
    cluster = make_cluster(nodes=3, replicas=2, repair_delay=LATER)
    data = image(tmp_path / "a.raw", 16, seed=31)
    with cluster.open() as admin:
        admin.import_image("a", str(tmp_path / "a.raw"))
        admin.fail_node("node1")
        before = _io_bytes()
        figures = admin.heal(wait=True)
        through_here = _io_bytes() - before
        healed = figures.copied * 4096
        assert figures.under_replicated == 0 and figures.relayed == 0
        assert figures.relayed_why == ""
        assert healed > 8 << 20
        # Every healed byte through the coordinator would be twice `healed` (in, then out).
        assert through_here < healed / 20
        assert admin.fsck() == []
        assert admin.read("a", 0, len(data)) == data


def test_a_heal_that_waits_reports_the_copies_of_all_its_passes(make_cluster, tmp_path):
    """`heal --wait` that takes two passes (a node failed while it ran: the blocks it held are
    short only after the first pass chose its blocks) reports the copies every pass made; it
    reported its last pass's alone, fewer than the blocks it healed."""
    cluster = make_cluster(nodes=5, replicas=3, repair_delay=LATER)
    data = image(tmp_path / "a.raw", 8, seed=35)
    stay = ("node2", "node3", "node4")
    with cluster.open() as admin:
        admin.import_image("a", str(tmp_path / "a.raw"))
        admin.fail_node("node1")
        live = admin.pool.blocks.live()
        # With node5 gone too, every live block ends with a copy on each node left: the copies
        # the heal must make onto them, whichever pass makes them.
        needed = sum(int((~np.isin(live, _held(cluster, name))).sum()) for name in stay)
        failed = []

        def progress(_):
            if not failed:      # within the first pass
                failed.append(True)
                admin.fail_node("node5")

        figures = admin.heal(wait=True, progress=progress)
        assert failed and figures.under_replicated == 0 and figures.unreachable == 0
        assert all(np.isin(live, _held(cluster, name)).all() for name in stay)
        assert figures.copied >= needed > 0, (figures, needed)
        healed = [e["message"] for e in admin.pool.events() if e["kind"] == "heal"]   # newest first
        assert healed[0].startswith(f"heal ended: {formats.count(figures.copied)} copies made")
        assert admin.fsck() == []
        assert admin.read("a", 0, len(data)) == data


def test_the_peer_key_may_only_say_hello_and_put(make_cluster):
    cluster = make_cluster(nodes=2, replicas=1, min_replicas=1)
    peer = cluster.path / "nodes" / "node1" / keys.PEER_KEY
    assert peer.stat().st_mode & 0o777 == 0o600
    kind, body, _ = asyncio.run(_rpc(cluster, "node2", peer, rpc.HELLO))
    assert (kind, body["name"]) == (rpc.REPLY, "node2")
    for asked, header in ((rpc.DROP, {"n": 0}), (rpc.GET, {"n": 0}), (rpc.LEASE, {"holder": "x"}),
                          (rpc.COPY, {"targets": []}), (rpc.CATALOG_FETCH, {})):
        kind, body, _ = asyncio.run(_rpc(cluster, "node2", peer, asked, header))
        assert (kind, body["code"]) == (rpc.ERROR, rpc.Code.NOT_ALLOWED)


def test_the_peer_key_may_put_only_bytes_that_hash_to_their_ids(make_cluster):
    """A peer's PUT (another node's COPY) may name any id: bytes that are not the id's (junk
    under a live block's id, say) are refused (MISMATCH), the others stored; once any bytes
    went in under any id."""
    cluster = make_cluster(nodes=2, replicas=1, min_replicas=1)
    peer = cluster.path / "nodes" / "node1" / keys.PEER_KEY
    data = np.random.default_rng(7).integers(0, 256, (3, 4096), np.uint8)
    digests = Fingerprinter(4096).of(data)
    ids = block_ids(digests, np.array([0, 0, 3]))      # the last after 3 collisions
    ids[1] = ids[0] ^ np.uint64(1)                      # not the id of those bytes
    kind, _, status = asyncio.run(_rpc(cluster, "node2", peer, rpc.PUT, {"n": 3},
                                       ids.astype("<u8").tobytes() + data.tobytes()))
    assert (kind, list(status)) == (rpc.REPLY, [rpc.STORED, rpc.MISMATCH, rpc.STORED])
    kind, body, got = asyncio.run(_rpc(cluster, "node2", cluster.config.admin_key, rpc.GET,
                                       {"n": 3}, ids.astype("<u8").tobytes()))
    assert body["missing"] == [1] and got == data[[0, 2]].tobytes()


def test_a_rotten_copy_is_not_passed_on(make_cluster, tmp_path):
    cluster = make_cluster(nodes=3, replicas=2, repair_delay=LATER)
    image(tmp_path / "a.raw", 2, seed=32)
    with cluster.open() as admin:
        admin.import_image("a", str(tmp_path / "a.raw"))
        only_rotten = np.intersect1d(_held(cluster, "node1"), _held(cluster, "node2"))
        assert len(only_rotten)
        _rot_every_copy(Path(cluster.config.node("node1").data))
        admin.fail_node("node2")
        figures = admin.heal(wait=False)
        assert "node node1 holds rotten" in figures.relayed_why
        assert figures.unreachable == len(only_rotten)      # node1's are rotten: no sound copy
        # The target holds none of the blocks whose last copy is rotten.
        assert not np.isin(only_rotten, _held(cluster, "node3")).any()


def test_a_target_that_refuses_the_peer_key_is_healed_through_the_coordinator(
        make_cluster, tmp_path, capfd):
    cluster = make_cluster(nodes=3, replicas=2, repair_delay=LATER)
    data = image(tmp_path / "a.raw", 4, seed=33)
    (cluster.path / "nodes" / "node3" / keys.PEER_KEYS).write_text("")   # read at each login
    with cluster.open() as admin:
        admin.import_image("a", str(tmp_path / "a.raw"))
        admin.fail_node("node1")
        figures = admin.heal(wait=True)
        assert figures.under_replicated == 0
        # node2 -> node3 was refused and went through here; node3 -> node2 went direct.
        assert 0 < figures.relayed < figures.copied
        assert "node node2 to node3: node3 refused the peer key" in figures.relayed_why
        assert "went through the coordinator" in capfd.readouterr().err
        events = [e["message"] for e in admin.pool.events() if e["kind"] == "heal"]
        assert any("through the coordinator" in m and "refused the peer key" in m
                   for m in events)
        assert admin.fsck() == []
        assert admin.read("a", 0, len(data)) == data


def test_a_returning_node_is_refilled_from_node_to_node(make_cluster, tmp_path):
    """A RAM node comes back empty: the copies placement wants on it are misplaced on the
    others, and take the same path as a heal's."""
    cluster = make_cluster(nodes=3, replicas=2, memory=64 << 20, repair_delay=LATER)
    data = image(tmp_path / "a.raw", 8, seed=34)
    with cluster.open() as admin:
        admin.import_image("a", str(tmp_path / "a.raw"))
        share = {n.name: n.live_blocks for n in admin.nodes()}["node1"]
        assert share * 4096 > 4 << 20
        admin.fail_node("node1")
        admin.heal(wait=True)
        admin.restore_node("node1")             # back empty: RAM only; its catalog sent
        before = _io_bytes()                    # the healer thread's pass starts in 0.2 s
        admin.heal(wait=True)
        for _ in range(50):                     # heartbeats bring the count in
            if {n.name: n.live_blocks for n in admin.nodes()}["node1"] == share:
                break
            time.sleep(0.1)
        assert {n.name: n.live_blocks for n in admin.nodes()}["node1"] == share
        assert _io_bytes() - before < share * 4096 / 20
        told = [e["message"] for e in admin.pool.events() if e["kind"] == "heal"]
        assert not any("through the coordinator" in m for m in told)
        assert admin.fsck() == []
        assert admin.read("a", 0, len(data)) == data


def test_cluster_up_gives_an_older_clusters_nodes_the_peer_key(make_cluster, tmp_path):
    cluster = make_cluster(nodes=2, replicas=2)
    api.cluster_down(cluster.path)
    made = [cluster.path / "peer_key", cluster.path / "peer_key.pub"]
    for name in ("node1", "node2"):
        made += [cluster.path / "nodes" / name / f for f in (keys.PEER_KEY, keys.PEER_KEYS)]
    for path in made:
        path.unlink()                           # as a cluster made before there was a peer key
    api.cluster_up(cluster.path)
    assert all(path.is_file() for path in made)
    public = (cluster.path / "peer_key.pub").read_text().strip()
    assert (cluster.path / "nodes" / "node2" / keys.PEER_KEYS).read_text() == \
        f"restrict {public}\n"


def test_heal_wait_with_every_target_full_stops_and_says_so(make_cluster, tmp_path):
    """RAM nodes with room for 1,793 blocks each hold about 2,350 distinct blocks twice over
    three nodes; with one failed, the other two cannot hold every block twice. `heal --wait` waited
    for that forever, saying nothing."""
    cluster = make_cluster(nodes=3, replicas=2, memory=7 << 20, repair_delay=LATER)
    data = image(tmp_path / "a.raw", 12, seed=35)
    with cluster.open() as admin:
        admin.import_image("a", str(tmp_path / "a.raw"))
    assert run_cli("-c", cluster.path, "node", "fail", "node1", "-y").returncode == 0
    started = time.monotonic()
    proc = run_cli("-c", cluster.path, "heal", "--wait")
    assert time.monotonic() - started < 60
    assert proc.returncode == 1
    last = proc.stderr_text.strip().splitlines()[-1]
    assert last.startswith("blockfold: error: heal made no copy") and "node is full" in last
    with cluster.open() as admin:
        assert admin.read("a", 0, len(data)) == data     # short of copies, nothing lost


def _live_ids(admin) -> np.ndarray:
    blocks = admin.pool.blocks
    with blocks._rows.lock:
        return blocks._rows.ids_at(blocks._rows.live_rows())


def _copy_counted(admin, ids, have, need):
    """The heal's handoff.copy(ids, have, need) with the ids each COPY named counted (an id
    for two targets twice): (made, left, notes, [ids named per COPY])."""
    handoff = admin.pool.blocks._healer.handoff
    asked = []
    call_many = handoff.members.call_many

    def counted(requests, *args, **kw):     # heartbeats call it too, from their thread
        asked.extend(len(payload) // 8 for kind, _, payload in requests.values()
                     if kind == rpc.COPY)
        return call_many(requests, *args, **kw)

    handoff.members.call_many = counted
    try:
        return (*handoff.copy(ids, have, need), asked)
    finally:
        del handoff.members.call_many


def test_a_holder_with_more_than_one_copy_request_may_gather_is_asked_in_rounds(make_cluster,
                                                                              tmp_path):
    # One COPY naming over rpc.MAX_GATHER bytes of blocks is refused whole (BAD_REQUEST):
    # the handoff splits a holder's work into rounds.
    cluster = make_cluster(nodes=2, replicas=2, repair_delay=LATER)
    rng = np.random.default_rng(71)
    data = rng.integers(0, 256, ((rpc.MAX_GATHER >> 12) + 300) * 4096, np.uint8).tobytes()
    (tmp_path / "a.raw").write_bytes(data)
    with cluster.open() as admin:
        admin.import_image("a", str(tmp_path / "a.raw"))
        ids = _live_ids(admin)
        assert len(ids) * 4096 > rpc.MAX_GATHER
        # node1 sends every block to node2, which holds them already (SAME): one holder, one
        # target, more ids than one COPY may carry.
        have = np.zeros((len(ids), 2), bool)
        have[:, 0] = True
        made, left, notes, asked = _copy_counted(admin, ids, have, ~have)
        assert notes == []
        assert made[:, 1].all() and not left.any()
        assert asked == [rpc.MAX_GATHER >> 12, len(ids) - (rpc.MAX_GATHER >> 12)]


def test_a_copy_round_counts_an_id_for_two_targets_once_as_the_node_does(make_cluster,
                                                                        tmp_path):
    """The node reads an id named for two targets once, and bounds a COPY by its distinct ids:
    a round of MAX_GATHER bytes of distinct blocks for two targets each is taken whole (no
    BAD_REQUEST), and a heal to two targets takes the rounds its distinct ids need, not twice
    as many (it counted each id once per target)."""
    cluster = make_cluster(nodes=3, replicas=3, repair_delay=LATER)
    cap = rpc.MAX_GATHER >> 12
    rng = np.random.default_rng(72)
    (tmp_path / "a.raw").write_bytes(rng.integers(0, 256, (cap + 300) * 4096,
                                                  np.uint8).tobytes())
    with cluster.open() as admin:
        admin.import_image("a", str(tmp_path / "a.raw"))
        ids = _live_ids(admin)
        assert len(ids) > cap
        # node1 sends every block to node2 and node3, which hold them already (SAME).
        have = np.zeros((len(ids), 3), bool)
        have[:, 0] = True
        made, left, notes, asked = _copy_counted(admin, ids, have, ~have)
        assert notes == []
        assert made[:, 1:].all() and not left.any()
        assert asked == [2 * cap, 2 * (len(ids) - cap)]
