"""A node's outgoing copies: COPY, a holder handing its copies of blocks straight to other nodes.

The coordinator decides (heal: which ids, from which holder, to which targets); the bytes go from
node to node and never through it. Phases of one COPY:

  check  every id's copy is read and hashed against this node's record: one not held is
         rpc.MISSING, one whose bytes no longer hash to it is rpc.ROTTEN; neither is sent
  send   the sound copies go to every target at once, as PUTs of CHUNK_BYTES, IN_FLIGHT of them
         in flight on one SSH connection per target; a target checks them as it checks any PUT
  reply  a status byte per id (the target's PUT status, or MISSING, ROTTEN, UNSENT), and per
         target the incarnation its PUT replies named (null if two) and the error that stopped
         it (null if none; a line that names the target, not this node); the ids after a
         failed PUT are not sent

A node connects with the cluster's peer key (DATA/peer_key) to the address and pinned host key the
coordinator names: it trusts no host key it was not told. A target lets the peer key make HELLO
and PUT only (engine.node.keys, rpc.PEER_REQUESTS). Connections are kept for the next COPY.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass

import numpy as np

from ..errors import BlockfoldError
from ..net import rpc
from ..net.client import HostKeyMismatch, NodeClient, NodeUnreachable
from . import keys
from .store import NodeStore

CHUNK_BYTES = 4 << 20       # block data a PUT carries: big enough that round trips are few
IN_FLIGHT = 4               # PUTs in flight to one target: the target stores one while the
                            # next ones are on the wire
PUT_TIMEOUT = 10.0          # as the coordinator's own PUTs (engine.cluster.copies)


@dataclass(frozen=True)
class Target:
    """Where a COPY's ids go: a node's name, address (HOST:PORT) and pinned host key (OpenSSH
    one-line form), and how many of the request's ids are for it."""

    name: str
    address: str
    host_key: str
    n: int


class Peers:
    """The connections this node opened to other nodes, over one NodeStore."""

    def __init__(self, store: NodeStore):
        self.store = store
        self.key = store.directory / keys.PEER_KEY
        self.clients: dict[tuple[str, str], NodeClient] = {}

    async def copy(self, targets: list[Target], ids: np.ndarray) -> tuple[dict, bytes]:
        """Sends this node's sound copies of `ids` (target by target, t.n each) to the targets.
        Returns ({targets: [{incarnation, error}] in order}, a status byte per id)."""
        # Each distinct id read once: an id for two targets is one copy in `data`, and the
        # first target's rows stay consecutive.
        firsts, of = _firsts(ids)
        data, once = self.store.sound(ids[firsts])
        rows = np.full(len(once), -1, np.int64)
        rows[once == 0] = np.arange(len(data))
        status, row = once[of], rows[of]
        starts = np.cumsum([0] + [t.n for t in targets])
        sent = await asyncio.gather(*(
            self._send(t, ids[lo:hi], data, row[lo:hi])
            for t, lo, hi in zip(targets, starts[:-1], starts[1:])))
        told = []
        for (lo, hi), (out, run, error) in zip(itertools.pairwise(starts), sent):
            part = status[lo:hi]
            sound = part == 0
            part[sound] = out[sound]
            told.append({"incarnation": run, "error": error})
        return {"targets": told}, status.tobytes()

    async def _send(self, target: Target, ids: np.ndarray, data: np.ndarray,
                    row: np.ndarray) -> tuple[np.ndarray, str | None, str | None]:
        """PUTs the ids with a row in `data` to `target`: (a status per id, UNSENT where no PUT
        answered; the incarnation the replies named, None if none or two; the error)."""
        out = np.full(len(ids), rpc.UNSENT, np.uint8)
        todo = np.flatnonzero(row >= 0)
        if not len(todo):
            return out, None, None
        # An id named twice for one target goes once, and each naming gets its status:
        # repeats never multiply what crosses the wire.
        firsts, of = _firsts(ids[todo])
        sent = todo[firsts]
        if not self.key.is_file():
            return out, None, (f"has no peer key ({self.key.resolve()}): copy the cluster's"
                               " peer_key there (see `blockfold cluster add --help`)")
        client = self._client(target)
        step = max(1, CHUNK_BYTES // self.store.block_size)
        gate = asyncio.Semaphore(IN_FLIGHT)
        runs: set[str | None] = set()
        errors: list[str] = []

        async def put(part: np.ndarray) -> None:
            async with gate:
                if errors:              # a target that failed once is not sent more
                    return
                # Consecutive rows of `data` (as a target's usually are) go as a view, not a
                # copy.
                rows = row[part]
                run = rows[-1] - rows[0] == len(rows) - 1 and (np.diff(rows) == 1).all()
                blocks = data[rows[0]:rows[-1] + 1] if run else data[rows]
                body = (ids[part].astype("<u8").tobytes(), blocks)    # written one after the other
                try:
                    head, reply = await client.call(rpc.PUT, {"n": len(part)}, body,
                                                    PUT_TIMEOUT)
                except (NodeUnreachable, rpc.RemoteError, BlockfoldError, ValueError) as e:
                    errors.append(self._why(target, e))
                    return
                out[part] = np.frombuffer(reply, np.uint8)
                runs.add(head.get("incarnation"))

        await asyncio.gather(*(put(sent[i:i + step]) for i in range(0, len(sent), step)))
        out[todo] = out[sent][of]
        run = runs.pop() if len(runs) == 1 else None
        return out, run, errors[0] if errors else None

    def _client(self, target: Target) -> NodeClient:
        """The connection to `target` at its address with its host key, made on first use."""
        key = (target.address, target.host_key)
        client = self.clients.get(key)
        if client is None:
            client = NodeClient(target.name, target.address, target.host_key, str(self.key))
            self.clients[key] = client
        return client

    def _why(self, target: Target, e: Exception) -> str:
        """One line for a failed copy from this node to `target`, naming the target as the
        request did and not this node: the coordinator puts the name its cluster knows this
        node by before it (a node added with `cluster add --name` has another of its own)."""
        where = f"to {target.name}"
        if isinstance(e, HostKeyMismatch):
            return f"{where}: {e}"
        if isinstance(e, BlockfoldError):      # the target refused the peer key
            return (f"{where}: {target.name} refused the peer key: add the cluster's"
                    f" peer_key.pub to its {keys.PEER_KEYS}")
        if isinstance(e, ValueError):          # the key file is not a key asyncssh can read
            return f"{where}: cannot use {self.key.resolve()}: {e}"
        return f"{where}: {e}"

    async def close(self) -> None:
        """Closes every connection this node opened."""
        clients, self.clients = self.clients, {}
        for client in clients.values():
            await client.close()


def _firsts(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the position where each distinct id first comes, in that order; for each position,
    the index into those of the id it holds)."""
    _, first, back = np.unique(ids, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return first[order], rank[back.reshape(-1)]
