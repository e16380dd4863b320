"""A node bounds what a request makes it do, whatever ids it names. Ids cost 8 bytes each, so a GET
or COPY of one id repeated asked a node for a reply (or copies) thousands of times the request's
size: 64 MiB of ids is 32 GiB of 4 KiB blocks. And ids a peer picks (1, 2, 3, …) once all fell
in one cell of the node's index. Real nodes, real SSH."""

from __future__ import annotations

import asyncio

import asyncssh
import numpy as np

from engine.fingerprint import Fingerprinter
from engine.net import rpc

from .test_heal_node_to_node import _rpc

BS = 4096
BLOCK = bytes([7]) * BS
ID = int(Fingerprinter(BS).of(BLOCK)[0, 0])      # its id: a peer's PUT of it is checked


def _ids(n: int, value: int = ID) -> bytes:
    return np.full(n, value, "<u8").tobytes()


def _call(cluster, name: str, kind: int, header: dict, payload=b""):
    # A frame of 8 M ids takes the node a few seconds of sorting on a loaded machine.
    return asyncio.run(_rpc(cluster, name, cluster.config.admin_key, kind, header, payload,
                            timeout=60.0))


def _put_one(cluster, name: str) -> None:
    kind, _, status = _call(cluster, name, rpc.PUT, {"n": 1}, _ids(1) + BLOCK)
    assert (kind, status) == (rpc.REPLY, bytes([rpc.STORED]))


def test_a_get_whose_reply_would_be_over_the_cap_is_refused_in_one_line(make_cluster):
    cluster = make_cluster(nodes=1, replicas=1, min_replicas=1)
    _put_one(cluster, "node1")
    # 64 MiB of reply: the node built it, then failed to frame it (an INTERNAL fault).
    kind, body, _ = _call(cluster, "node1", rpc.GET, {"n": 16384}, _ids(16384))
    assert (kind, body["code"]) == (rpc.ERROR, rpc.Code.BAD_REQUEST)
    assert body["error"] == ("GET of 16384 blocks of 4096 bytes is over the 32 MiB one request"
                             " may gather: ask in parts")
    # A frame full of one id: 32 GiB asked back. Refused before anything is read.
    peak = cluster.peak_memory("node1")
    n = (rpc.MAX_BODY - 64) // 8
    kind, body, _ = _call(cluster, "node1", rpc.GET, {"n": n}, _ids(n))
    assert (kind, body["code"]) == (rpc.ERROR, rpc.Code.BAD_REQUEST)
    assert cluster.peak_memory("node1") - peak < 1 << 30
    kind, _, data = _call(cluster, "node1", rpc.GET, {"n": 2}, _ids(2))     # still answers
    assert (kind, data) == (rpc.REPLY, BLOCK * 2)


def test_a_copy_of_one_id_repeated_sends_it_once(make_cluster):
    cluster = make_cluster(nodes=2, replicas=1, min_replicas=1)
    _put_one(cluster, "node1")
    node2 = cluster.config.node("node2")
    target = {"name": "node2", "address": node2.address, "host_key": node2.host_key}

    def copy(n: int) -> tuple[int, dict, bytes]:
        return _call(cluster, "node1", rpc.COPY, {"targets": [dict(target, n=n)]}, _ids(n))

    before = cluster.received("node2")
    kind, body, status = copy(16384)        # 64 MiB of copies went to node2
    assert kind == rpc.REPLY and body["targets"][0]["error"] is None
    assert status == bytes([rpc.STORED]) * 16384
    assert cluster.received("node2") - before < 1 << 20
    # A frame full of one id: the node read 32 GiB of copies to send.
    peak = cluster.peak_memory("node1")
    n = (rpc.MAX_BODY - 1024) // 8
    kind, _, status = copy(n)
    assert kind == rpc.REPLY and status == bytes([rpc.SAME]) * n
    assert cluster.peak_memory("node1") - peak < 1 << 30
    # Distinct ids over the cap are refused in one line.
    many = np.arange(1, 8193, dtype="<u8").tobytes() + _ids(1)
    kind, body, _ = _call(cluster, "node1", rpc.COPY, {"targets": [dict(target, n=8193)]},
                          many)
    assert (kind, body["code"]) == (rpc.ERROR, rpc.Code.BAD_REQUEST)
    assert body["error"].startswith("COPY of 8193 blocks of 4096 bytes is over the 32 MiB")


def test_ids_counting_up_are_all_stored(make_cluster):
    # They once all had home cell 0 of the node's index: 100 such PUTs took 13 s. How long they
    # take now is a figure of tests/bench/nodeids.py; here, every one of them is stored.
    cluster = make_cluster(nodes=1, replicas=1, min_replicas=1)
    data = bytes([9]) * BS * 64

    async def puts(first_ids) -> None:
        host, _, port = cluster.config.node("node1").address.rpartition(":")
        async with asyncssh.connect(host, int(port), username="blockfold", known_hosts=None,
                                    agent_path=None, config=None,
                                    client_keys=[str(cluster.config.admin_key)]) as conn:
            writer, reader, _ = await conn.open_session(subsystem=rpc.SUBSYSTEM, encoding=None)
            for first in first_ids:
                ids = np.arange(first, first + 64, dtype="<u8").tobytes()
                writer.write(rpc.encode(rpc.PUT, 1, {"n": 64}, ids + data))
                kind, _, n = rpc.parse_header(await reader.readexactly(rpc.HEADER.size))
                _, status = rpc.parse_body(await reader.readexactly(n))
                assert (kind, bytes(status)) == (rpc.REPLY, bytes([rpc.STORED]) * 64)

    asyncio.run(asyncio.wait_for(puts(range(1, 6401, 64)), 60))
    kind, hello, _ = _call(cluster, "node1", rpc.HELLO, {})
    assert kind == rpc.REPLY and hello["blocks"] == 6400
