"""The coordinator's transport under bulk data: a node answers a heartbeat while megabytes of
PUTs queue on the other channel, and a write bigger than a frame lands whole."""

from __future__ import annotations

import asyncio
import time

import asyncssh
import numpy as np

from engine.cluster import placement
from engine.cluster.copies import PUT_BYTES, payload
from engine.fingerprint import Fingerprinter
from engine.net import rpc
from engine.net.client import IoLoop, NodeClient, NodeUnreachable


def test_a_heartbeat_is_answered_between_bulk_puts(make_cluster):
    cluster = make_cluster(nodes=1, replicas=1)
    entry = cluster.config.nodes[0]
    client = NodeClient(entry.name, entry.address, entry.host_key, str(cluster.config.admin_key))
    rng = np.random.default_rng(5)
    n = PUT_BYTES // 4096
    frames = 12
    puts = [payload(rng.integers(1, 2**63, n, dtype=np.uint64),
                    rng.integers(0, 256, (n, 4096), dtype=np.uint8)) for _ in range(frames)]
    order = []

    async def one(label, kind, header, body):
        await client.call(kind, header, body, timeout=60)
        order.append(label)

    async def run():
        await client.connect()
        calls = [one(f"put{k}", rpc.PUT, {"n": n}, body) for k, body in enumerate(puts)]
        calls.append(one("heartbeat", rpc.HEARTBEAT, {}, b""))
        await asyncio.gather(*calls)
        await client.close()

    _run(run())
    # Sent last, behind 48 MiB of PUTs; answered after a few of them, not after all.
    assert order.index("heartbeat") < frames // 2, order


def test_a_write_over_many_frames_lands_whole_with_a_collision_in_a_later_frame(
        make_cluster, tmp_path):
    """The first of the two nodes the image's last block goes to already holds other bytes
    under its id: it answers COLLISION in the third frame of its PUT while the other node
    stores the block. The block moves to its next id, the copy made under the taken one is
    dropped, and every byte reads back, each copy where the coordinator counts it."""
    cluster = make_cluster(nodes=3, replicas=2)
    rng = np.random.default_rng(6)
    blocks = rng.integers(0, 256, (3 * PUT_BYTES // 4096 * 3 // 2, 4096), dtype=np.uint8)
    data = blocks.tobytes()
    (tmp_path / "a.raw").write_bytes(data)
    taken = np.array([Fingerprinter(4096).of(blocks[-1])[0, 0]], dtype=np.uint64)
    entries = cluster.config.nodes
    seeds = np.array([placement.node_seed(e.name) for e in entries], dtype=np.uint64)
    weights = np.array([e.weight for e in entries], dtype=np.float64)
    first = int(np.flatnonzero(placement.targets(taken, seeds, weights, np.ones(3, bool), 2)[0])[0])
    other = rng.integers(0, 256, (1, 4096), dtype=np.uint8)
    with cluster.open() as admin:
        entry = entries[first]          # planted behind the coordinator's back
        client = NodeClient(entry.name, entry.address, entry.host_key,
                            str(cluster.config.admin_key))
        io = IoLoop()
        try:
            io.run(client.call(rpc.PUT, {"n": 1}, payload(taken, other)), 30)
            io.run(client.close(), 10)
        finally:
            io.close()
        admin.import_image("a", str(tmp_path / "a.raw"))
        assert admin.read("a", 0, len(data)) == data
        assert admin.stats().collisions == 1
        assert admin.fsck() == []


def test_requests_before_a_corrupt_frame_are_answered_before_the_channel_closes(make_cluster):
    """Two HELLOs and a header with a bad magic arrive in one write: the HELLOs were dropped
    unanswered with the rest of that read."""
    cluster = make_cluster(nodes=1, replicas=1)
    host, _, port = cluster.config.nodes[0].address.rpartition(":")

    async def talk():
        async with asyncssh.connect(host, int(port), username="blockfold", known_hosts=None,
                                    agent_path=None, config=None,
                                    client_keys=[str(cluster.config.admin_key)]) as conn:
            writer, reader, _ = await conn.open_session(subsystem=rpc.SUBSYSTEM, encoding=None)
            writer.write(rpc.encode(rpc.HELLO, 1) + rpc.encode(rpc.HELLO, 2) + b"XXXX" * 4)
            got = []
            for _ in range(3):
                kind, request_id, n = rpc.parse_header(
                    await asyncio.wait_for(reader.readexactly(rpc.HEADER.size), 10))
                header, _ = rpc.parse_body(await asyncio.wait_for(reader.readexactly(n), 10))
                got.append((kind, request_id, header.get("code")))
            assert await asyncio.wait_for(reader.read(), 10) == b""     # then it closes
            return got

    assert asyncio.run(talk()) == [(rpc.REPLY, 1, None), (rpc.REPLY, 2, None),
                                   (rpc.ERROR, 0, rpc.Code.BAD_REQUEST)]


def test_puts_to_a_node_killed_unnoticed_fail_without_a_flood_of_socket_warnings(
        make_cluster, caplog):
    """PUTs sent to a node that died before its close was read: each fails as NodeUnreachable,
    and stderr does not fill with asyncio's "socket.send() raised exception.", which it logged
    once per SSH packet written after the loss (hundreds a second)."""
    cluster = make_cluster(nodes=1, replicas=1)
    entry = cluster.config.nodes[0]
    client = NodeClient(entry.name, entry.address, entry.host_key, str(cluster.config.admin_key))
    rng = np.random.default_rng(7)
    n = PUT_BYTES // 4096
    body = payload(rng.integers(1, 2**63, n, dtype=np.uint64),
                   rng.integers(0, 256, (n, 4096), dtype=np.uint8))
    failed = []

    async def one():
        try:
            await client.call(rpc.PUT, {"n": n}, body, timeout=60)
        except NodeUnreachable:
            failed.append(1)

    async def run():
        await client.connect()
        cluster.kill(entry.name)
        time.sleep(0.5)     # blocks the loop: the node is gone before its close is read
        await asyncio.gather(*(one() for _ in range(4)))
        await client.close()

    _run(run())
    assert len(failed) == 4, f"{len(failed)} of 4 PUTs to a killed node failed"
    floods = [r for r in caplog.records if "socket.send() raised exception" in r.getMessage()]
    assert not floods, f"{len(floods)} asyncio socket warnings"


def _run(coroutine, timeout: float = 120) -> None:
    """Runs `coroutine` on an IoLoop of its own, as the coordinator does."""
    io = IoLoop()
    try:
        io.run(coroutine, timeout)
    finally:
        io.close()
