"""Membership and health: every node's connection, its state, and what its heartbeats said.

States (NodeState): up (answers), suspect (missed a heartbeat), down (missed several, or
unreachable), returning (answers again after being down: it must catch up before it counts as
up). A failed request marks its node down at once, so the next request goes to another replica.
A request in flight to a node that turns suspect or down is abandoned at once (a hung node
holds no write up), and one sent to a node already judged so waits SUSPECT_TIMEOUT at most.

    up --missed heartbeat--> suspect --answers--> up
    up, suspect --DOWN_AFTER_MISSES misses, refused connection, failed request--> down
    down --answers a heartbeat--> returning --caught up (ClusterAdmin)--> up

A node being removed (`cluster remove`: ClusterAdmin.remove_node) is *leaving*, whatever its
state: it still serves reads and gives its copies away, but no placement names it (new blocks,
heal's targets), so every block it holds is short until R other nodes hold it. Once removed
(retire) it stays in `nodes`, so every index and matrix keeps its shape while the coordinator
runs on, but down for good: never asked again, and not counted among the configured nodes
(count), so the write majority is a majority of the others.
"""

from __future__ import annotations

import asyncio
import enum
import sys
import threading
import time

import numpy as np

from .. import processid
from ..errors import BlockfoldError, PoolLockedError
from ..net import rpc
from ..net.client import IoLoop, NodeClient, NodeUnreachable
from . import holder
from .config import CONFIG_FILE, ClusterConfig
from .placement import node_seed

HEARTBEAT_INTERVAL = 0.5
DOWN_AFTER_MISSES = 3
SUSPECT_TIMEOUT = 2.0       # a request to a node already judged suspect or down waits this long


class NodeState(enum.StrEnum):
    """A node's health as the coordinator sees it; the value is the word users see (CLI, JSON,
    console)."""

    UP = "up"
    SUSPECT = "suspect"
    DOWN = "down"
    RETURNING = "returning"


class Member:
    """One node: its connection, state, and what its last heartbeat said."""

    def __init__(self, client: NodeClient):
        self.client = client
        self.state = NodeState.DOWN
        self.misses = 0
        self.latency_ms = 0.0
        self.capacity_bytes = 0
        self.disk: str | None = None
        self.blocks = 0
        self.version = 0                # the catalog replica's (epoch, version)
        self.epoch = 0
        self.promised = 0               # the highest epoch the node promised a writer
        self.seen = 0.0
        self.error = ""
        # Why an operator failed it (`node fail`): its `error` while it stays down, not the
        # refused heartbeats that follow; cleared once it is up again (caught up), not at its
        # first answer, which may be one sent before the kill.
        self.failed = ""
        self.was_up = False     # up at least once since we opened: its going down is news
        self.incarnation: str | None = None     # its last heartbeat's: another is a restart


class Members:
    def __init__(self, config: ClusterConfig):
        self.config = config
        self.io = IoLoop()
        self.holder: str | None = None  # the write lease we hold, if any (holder.name())
        self.process = ""               # our identity in it (processid.this())
        self.nodes = [Member(NodeClient(e.name, e.address, e.host_key or None,
                                           str(config.admin_key))) for e in config.nodes]
        for node, entry in zip(self.nodes, config.nodes):
            if entry.failed:            # by another process, before we opened
                node.failed = node.error = "failed by an operator: its process was killed"
        # Per node, set while it is judged suspect or down: requests in flight give up on it.
        self._judged = [asyncio.Event() for _ in self.nodes]
        self.seeds = np.array([node_seed(e.name) for e in config.nodes], dtype=np.uint64)
        self.weights = np.array([e.weight for e in config.nodes], dtype=np.float64)
        self.lock = threading.Lock()
        self._news: list[str] = []
        self.leaving: int | None = None     # the node being removed (placeable_mask)
        self.removed: set[int] = set()      # nodes removed since we opened (retire)
        self._stop = threading.Event()
        self._thread = None
        self._config_read = _stamp(config)     # cluster.json as we last read it (follow)

    def names(self) -> list[str]:
        return [n.client.name for n in self.nodes]

    def count(self) -> int:
        """The configured nodes: every one but those removed since we opened (the write
        majority is a majority of these)."""
        return len(self.nodes) - len(self.removed)

    def present(self) -> list[int]:
        """The indexes of the configured nodes (every one but those removed)."""
        return [i for i in range(len(self.nodes)) if i not in self.removed]

    def retire(self, i: int) -> None:
        """Node i was removed from the cluster: our lease on it goes (if it answers), its
        connection is closed, and it is down for good, never asked again."""
        if self.holder and self.nodes[i].state != NodeState.DOWN:
            self.call(i, rpc.RELEASE, {"holder": self.holder}, timeout=2.0)
        with self.lock:
            self.removed.add(i)
            self.leaving = None
            self._judge(i, NodeState.DOWN)
            self.nodes[i].error = "removed from the cluster"
        try:
            self.io.run(self.nodes[i].client.close(), 5)
        except Exception:   # noqa: BLE001 - it is never asked again either way
            pass

    def index(self, name: str) -> int:
        for i, n in enumerate(self.nodes):
            if n.client.name == name:
                return i
        raise BlockfoldError(f"no node named {name!r} in cluster {self.config.path}")

    def up_mask(self) -> np.ndarray:
        """Nodes that serve requests (up or suspect)."""
        return np.array([n.state in (NodeState.UP, NodeState.SUSPECT) for n in self.nodes],
                        dtype=bool)

    def placeable_mask(self) -> np.ndarray:
        """Nodes that may be given copies (new blocks, heal's targets): the up ones but a
        node being removed."""
        mask = self.up_mask()
        if self.leaving is not None:
            mask[self.leaving] = False
        return mask

    def healthy_mask(self) -> np.ndarray:
        """Nodes that answered their last heartbeat (up, not suspect)."""
        return np.array([n.state == NodeState.UP for n in self.nodes], dtype=bool)

    def reachable_mask(self) -> np.ndarray:
        """Nodes that may answer: everything not down (returning nodes too)."""
        return np.array([n.state != NodeState.DOWN for n in self.nodes], dtype=bool)

    # -- requests -----------------------------------------------------------------------------

    def call(self, i: int, kind: int, header: dict | None = None, payload=b"", *,
             timeout: float = 10.0):
        return self.call_many({i: (kind, header, payload)}, timeout)[i]

    def call_many(self, requests: dict, timeout: float = 10.0, mark: bool = True) -> dict:
        """Sends requests {node: (kind, header, payload)} at once; {node: reply or exception}.

        A node that cannot be reached is marked down (unless `mark` is False: heartbeats
        judge for themselves); a node's error reply is returned as rpc.RemoteError and leaves
        it up.
        """
        replies = self.call_each({i: [req] for i, req in requests.items()}, timeout, mark)
        return {i: r if isinstance(r, Exception) else r[0] for i, r in replies.items()}

    def call_each(self, requests: dict, timeout: float = 10.0, mark: bool = True) -> dict:
        """Sends every request {node: [(kind, header, payload), ...]} at once, all of a node's
        in flight together (it answers them in order, working on one while the next arrives);
        {node: [its replies, in order], or the first exception}. Marking as call_many."""
        async def one(i, node_requests):
            started = time.monotonic()
            client = self.nodes[i].client
            try:
                call = _all(client.call(kind, header, payload, timeout)
                            for kind, header, payload in node_requests)
                reply = await (self._unless_judged(i, call, timeout) if mark else call)
                self._answered(i, time.monotonic() - started)
                return reply
            except rpc.RemoteError as e:
                return e
            except (NodeUnreachable, BlockfoldError) as e:
                if mark:
                    self.mark_down(i, str(e))
                return e

        async def all_of():
            items = list(requests.items())
            results = await asyncio.gather(*(one(i, reqs) for i, reqs in items))
            return dict(zip((i for i, _ in items), results))

        try:
            return self.io.run(all_of(), timeout + 5)
        except NodeUnreachable as e:
            for i in requests:
                self.mark_down(i, str(e))
            return dict.fromkeys(requests, e)

    async def _unless_judged(self, i: int, call, timeout: float):
        """The request `call` to node i, abandoned at once if the heartbeats judge the node
        suspect or down meanwhile; a node judged so already gets SUSPECT_TIMEOUT at most.
        Raises NodeUnreachable(timed_out=True) when abandoned."""
        name = self.nodes[i].client.name
        if self.nodes[i].state in (NodeState.SUSPECT, NodeState.DOWN):
            try:
                return await asyncio.wait_for(call, min(timeout, SUSPECT_TIMEOUT))
            except TimeoutError:
                raise NodeUnreachable(f"node {name}: timed out", timed_out=True) from None
        request = asyncio.ensure_future(call)
        judged = asyncio.ensure_future(self._judged[i].wait())
        try:
            await asyncio.wait({request, judged}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            judged.cancel()
            abandoned = not request.done()
            if abandoned:
                # Judged, or this wait was cancelled (a caller's timeout): how the request ends
                # is nobody's to read, and unread it would be logged as an error.
                request.cancel()
                request.add_done_callback(_unread)
        if abandoned:
            raise NodeUnreachable(f"node {name}: stopped answering heartbeats; request"
                                  " abandoned", timed_out=True)
        return request.result()

    def _judge(self, i: int, state: NodeState) -> None:
        """Sets node i's state (under self.lock); requests in flight to it are abandoned when it
        turns suspect or down, and wait again once it answers. A removed node stays down (a
        heartbeat sent before its removal may still answer)."""
        if i in self.removed:
            state = NodeState.DOWN
        self.nodes[i].state = state
        event = self._judged[i]
        judged = state in (NodeState.SUSPECT, NodeState.DOWN)
        self.io.loop.call_soon_threadsafe(event.set if judged else event.clear)

    def _answered(self, i: int, seconds: float) -> None:
        node = self.nodes[i]
        with self.lock:
            node.misses = 0
            node.latency_ms = round(seconds * 1000, 3)
            node.seen = time.time()
            if node.state == NodeState.SUSPECT:
                self._judge(i, NodeState.UP)

    def mark_down(self, i: int, error: str = "", told: bool = False) -> None:
        """The node is down, for `error` (unless an operator failed it: that stays the why);
        `told`: whoever made it so records the event."""
        with self.lock:
            self._went_down(i, error, told)
            self.nodes[i].error = self.nodes[i].failed or error

    def mark_failed(self, i: int, why: str) -> None:
        """An operator failed node i (its process killed): down, for `why`, until it is up
        again. The operator records the event."""
        with self.lock:
            self._went_down(i, why, told=True)
            self.nodes[i].error = self.nodes[i].failed = why

    def mark(self, i: int, state: NodeState) -> None:
        with self.lock:
            node = self.nodes[i]
            if state == NodeState.UP and node.state != NodeState.UP:
                if node.was_up:
                    self._news.append(f"{node.client.name} is back up: caught up")
                node.was_up = True
                node.failed = ""
            self._judge(i, state)

    def _went_down(self, i: int, error: str, told: bool = False) -> None:
        node = self.nodes[i]
        if node.state != NodeState.DOWN and node.was_up and not told:
            self._news.append(f"{node.client.name} is down: {error or 'no answer'}")
        self._judge(i, NodeState.DOWN)

    def news(self) -> list[str]:
        """What happened to the nodes since the last call (a node that went down, one back up
        after being down), for the event log: the heartbeats never wait for the pool to log it."""
        with self.lock:
            news, self._news = self._news, []
        return news

    # -- heartbeats ---------------------------------------------------------------------------

    def probe(self, i: int) -> dict | Exception:
        """One heartbeat to one node; see probe_all."""
        return self.probe_all([i])[i]

    def probe_all(self, nodes=None) -> dict:
        """Heartbeats, all at once: a node that does not answer delays no other. Refreshes the
        figures; a down node that answers becomes returning. {node: figures or exception}"""
        nodes = self.present() if nodes is None else [i for i in nodes
                                                      if i not in self.removed]
        header = {"holder": self.holder, "lease": self.config.lease_seconds} if self.holder else {}
        replies = self.call_many(dict.fromkeys(nodes, (rpc.HEARTBEAT, header, b"")),
                                 timeout=2.0, mark=False)
        return {i: self._beat(i, reply) for i, reply in replies.items()}

    def _beat(self, i: int, reply) -> dict | Exception:
        node = self.nodes[i]
        if isinstance(reply, rpc.RemoteError):
            return reply
        if isinstance(reply, Exception):
            # A refused connection is a node gone; a slow answer makes it suspect first.
            if not getattr(reply, "timed_out", False):
                self.follow()
                self.mark_down(i, str(reply))
                return reply
            with self.lock:
                node.misses += 1
                if node.state in (NodeState.UP, NodeState.SUSPECT):
                    if node.misses < DOWN_AFTER_MISSES:
                        self._judge(i, NodeState.SUSPECT)
                    else:
                        self._went_down(i, f"{node.misses} heartbeats missed")
                silent = node.misses >= DOWN_AFTER_MISSES
            if silent:      # however it went down: its connection is not trusted to wake
                self.io.loop.call_soon_threadsafe(node.client.disconnect, "heartbeats missed")
            return reply
        info = reply[0]
        if info.get("block_size") != self.config.block_size:
            self.mark_down(i, f"node block size {info.get('block_size')} is not the cluster's"
                              f" {self.config.block_size}")
            return BlockfoldError(self.nodes[i].error)
        with self.lock:
            node.capacity_bytes = info["capacity_bytes"]
            node.disk = info.get("disk")
            node.blocks = info["blocks"]
            node.version, node.epoch = info["version"], info.get("epoch", 0)
            node.promised = info.get("promised", 0)
            run = info.get("incarnation")
            if node.state == NodeState.DOWN:
                self._judge(i, NodeState.RETURNING)
            elif (node.state in (NodeState.UP, NodeState.SUSPECT)
                  and None not in (run, node.incarnation) and run != node.incarnation):
                # Restarted between two heartbeats: what it held may be gone (a RAM node's
                # all), and the row map still credits it. Caught up as any returning node.
                self._judge(i, NodeState.RETURNING)
            node.incarnation = run
        return info

    def follow(self) -> None:
        """Takes the addresses of nodes that moved from cluster.json, if it changed since we
        read it: a local node whose port another process took while it was down starts on
        another (engine.cluster.processes). Its pinned host key, not its name or address,
        says which entry is it; the next connection goes to the new address."""
        stamp = _stamp(self.config)
        if stamp is None or stamp == self._config_read:
            return
        try:
            now = ClusterConfig.load(self.config.path)
        except (BlockfoldError, OSError, ValueError):
            return          # half a change (it is replaced whole) or none: the next refusal
        self._config_read = stamp
        moved = {(tuple(e.host_key.split()[:2]) if e.host_key else e.name): e.address
                 for e in now.nodes}
        for node, entry in zip(self.nodes, self.config.nodes):
            key = node.client.host_key
            address = moved.get(tuple(key.split()[:2]) if key else entry.name)
            if address and address != node.client.address:
                node.client.address = entry.address = address

    def start_heartbeats(self) -> None:
        def beat():
            while not self._stop.wait(HEARTBEAT_INTERVAL):
                self.probe_all()

        self._thread = threading.Thread(target=beat, name="blockfold-heartbeat", daemon=True)
        self._thread.start()

    # -- the write lease ----------------------------------------------------------------------

    def take_lease(self) -> None:
        """The write lease on every node that answers; another writer's lease is an error,
        unless that writer was on this host and its process is gone (engine.cluster.holder):
        then the lease is taken over at once, and a line on stderr says so."""
        self.holder, self.process = holder.name(), processid.this()
        refused = self._lease([i for i, n in enumerate(self.nodes) if n.state != NodeState.DOWN])
        if refused:
            leases = self._leases(list(refused))
            gone = {i: lease["holder"] for i, lease in leases.items()
                    if processid.gone(lease["process"])}
            if len(gone) == len(refused):
                refused = self._lease(list(refused), gone)    # empty unless another came first
                if not refused:
                    for name in sorted(set(gone.values())):
                        print(f"blockfold: took over the write lease of {name}: that process no"
                              " longer runs", file=sys.stderr, flush=True)
                    return
            self.release_lease()
            # The holder in its own words if it gave them (a console: waiting would not help).
            told = holder.said(self.config.path, {lease["holder"] for lease in leases.values()})
            if told is not None:
                raise PoolLockedError(told[1], held_by=told[0])
            raise PoolLockedError(f"cluster {self.config.path} is {refused[min(refused)]}")

    def _leases(self, nodes: list[int]) -> dict[int, dict]:
        """{node: its running lease, {holder, process}}, of those of `nodes` that answer and
        have one."""
        replies = self.call_many(dict.fromkeys(nodes, (rpc.HELLO, {}, b"")), timeout=5.0)
        leases = {i: r[0].get("lease") for i, r in replies.items() if not isinstance(r, Exception)}
        return {i: lease for i, lease in leases.items() if lease}

    def _lease(self, nodes: list[int], replace: dict | None = None) -> dict:
        """Sends LEASE to `nodes` (replacing the holder `replace` names per node);
        {node: RemoteError} of those where another writer holds it."""
        header = {"holder": self.holder, "process": self.process,
                  "seconds": self.config.lease_seconds}
        replies = self.call_many({i: (rpc.LEASE, dict(header, replace=(replace or {}).get(i)),
                                      b"") for i in nodes})
        return {i: r for i, r in replies.items()
                if isinstance(r, rpc.RemoteError) and r.code == rpc.Code.LEASE_HELD}

    def lease_on(self, i: int) -> bool:
        """Takes our lease on one node (a node that restarted has forgotten it)."""
        reply = self.call(i, rpc.LEASE, {"holder": self.holder, "process": self.process,
                                         "seconds": self.config.lease_seconds}, timeout=5.0)
        return not isinstance(reply, Exception)

    def release_lease(self) -> None:
        if self.holder:
            live = [i for i, n in enumerate(self.nodes) if n.state != NodeState.DOWN]
            self.call_many({i: (rpc.RELEASE, {"holder": self.holder}, b"") for i in live},
                           timeout=2.0)

    def close(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        if self.holder:
            self.release_lease()
        async def close_all():
            await asyncio.gather(*(n.client.close() for n in self.nodes))

        try:
            self.io.run(close_all(), 5)
        except Exception:   # noqa: BLE001 - closing anyway
            pass
        self.io.close()


def _stamp(config: ClusterConfig) -> int | None:
    """When cluster.json last changed (None: it cannot be read)."""
    try:
        return (config.path / CONFIG_FILE).stat().st_mtime_ns
    except OSError:
        return None


def _unread(task: asyncio.Task) -> None:
    """Takes an abandoned request's outcome, so that asyncio does not log it as lost."""
    if not task.cancelled():
        task.exception()


async def _all(calls) -> list:
    """The results of `calls`, run at once; cancelling this cancels them all."""
    return await asyncio.gather(*calls)
