"""The coordinator's transport under bulk data: a node answers a heartbeat while megabytes of
PUTs queue on the other channel, and a write bigger than a frame lands whole."""

from __future__ import annotations

import asyncio

import numpy as np

from engine.cluster.copies import PUT_BYTES, payload
from engine.net import rpc
from engine.net.client import IoLoop, NodeClient


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

    io = IoLoop()
    try:
        io.run(run(), 120)
    finally:
        io.close()
    # Sent last, behind 48 MiB of PUTs; answered after a few of them, not after all.
    assert order.index("heartbeat") < frames // 2, order
