"""A request abandoned by its caller (a timeout cancels the wait) that fails afterwards is not
logged by asyncio as an error nobody read: stderr stays clean when a node dies mid-request."""

from __future__ import annotations

import asyncio
import gc

from engine.cluster.config import ClusterConfig, NodeEntry
from engine.cluster.members import Members, NodeState
from engine.net.client import NodeUnreachable


def test_a_request_failing_after_its_wait_was_cancelled_is_not_logged(tmp_path):
    config = ClusterConfig.create(tmp_path / "c", 2, 1, 4096, 0.0)
    config.nodes.append(NodeEntry("node1", "127.0.0.1:1"))
    members = Members(config)
    members.nodes[0].state = NodeState.UP   # as after its first heartbeat
    logged = []
    members.io.loop.call_soon_threadsafe(
        members.io.loop.set_exception_handler, lambda loop, context: logged.append(context))

    async def request():                    # a node's answer that fails once nobody waits
        await asyncio.sleep(0.2)
        raise NodeUnreachable("node node1: connection closed")

    async def caller():
        waiting = asyncio.ensure_future(members._unless_judged(0, request(), 5))
        await asyncio.sleep(0.05)
        waiting.cancel()                    # what io.run does when its timeout passes
        await asyncio.gather(waiting, return_exceptions=True)
        await asyncio.sleep(0.4)            # the request fails meanwhile
        gc.collect()                        # where asyncio reports an unread exception
        await asyncio.sleep(0)

    try:
        members.io.run(caller(), 10)
    finally:
        members.io.close()
    assert logged == []
