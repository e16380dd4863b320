"""The copies on the nodes: every block request the coordinator sends them.

PUT (store, compare with the copy held, or rewrite a rotten one), GET, DROP, SYNC, INVENTORY and
SCRUB, each fanned out as one request per node, to every node at once
(engine.cluster.members.Members.call_many); a PUT goes in frames of up to PUT_BYTES, all in flight
together (call_each). A payload is the ids as little-endian uint64, then the blocks' bytes, if
any, built with one copy of the bytes. Nothing here decides where a copy goes or what a reply
means for the row map: callers do.
"""

from __future__ import annotations

import threading

import numpy as np

from ..net import rpc

FRAME_BYTES = 8 << 20      # block data per request: far under rpc.MAX_BODY, big enough to
                           # keep round trips few while copying
PUT_BYTES = 4 << 20        # a node's PUT goes in frames of this much, all in flight at once:
                           # it stores one while the next is on its way (smaller frames cost
                           # the node more per byte)
DROP_IDS = 1 << 20          # 8 MiB of ids a frame
READ_TIMEOUT = 5.0
WRITE_TIMEOUT = 10.0     # a backstop far under a guest's 30 s I/O timeout: a node that turns
                         # suspect is given up on at once (engine.cluster.members)
INVENTORY_TIMEOUT = 30.0
SCRUB_TIMEOUT = 120.0


def payload(ids: np.ndarray, data: np.ndarray | None = None,
            rows: np.ndarray | None = None) -> bytes | np.ndarray:
    """The ids, then the blocks data[rows] (n × block_size; all of data if rows is None), as
    one flat uint8 array: the blocks' bytes are copied once, straight into it."""
    if data is None:
        return ids.astype("<u8").tobytes()
    n, bs = len(ids), data.shape[1]
    out = np.empty(8 * n + n * bs, np.uint8)
    out[:8 * n].view("<u8")[:] = ids
    blocks = out[8 * n:].reshape(n, bs)
    if rows is None:
        blocks[:] = data
    else:
        np.take(data, rows, axis=0, out=blocks, mode="clip")    # "raise" would copy twice
    return out


class Copies:
    def __init__(self, members, block_size: int):
        self.members = members
        self.block_size = block_size
        self.frame_blocks = max(1, FRAME_BYTES // block_size)   # blocks a GET or PUT may carry
        self.put_blocks = max(1, PUT_BYTES // block_size)       # blocks a PUT frame carries
        self._sync_lock = threading.Lock()
        # Nodes that took blocks since the last sync: {node: (the incarnation their PUTs'
        # replies named, or None if they named two; the ids sent)}.
        self._unsynced: dict[int, tuple[str | None, list[np.ndarray]]] = {}

    def put(self, ids: np.ndarray, data: np.ndarray, want: np.ndarray,
            repair: bool = False, rows: np.ndarray | None = None) -> dict:
        """Sends block j to every node i with want[j, i]: one PUT per node, in frames of
        PUT_BYTES sent all at once (several in flight to each node). Block j's bytes are
        data[rows[j]] (data[j] if rows is None). Returns {node: a status per block sent
        (rpc.STORED, SAME or COLLISION), or the exception}. With `repair`, a node only rewrites
        copies it holds rotten (STORED) and stores nothing new."""
        requests = {}
        head = {"repair": True} if repair else {}
        step = self.put_blocks
        for node in np.flatnonzero(want.any(axis=0)).tolist():
            sel = np.flatnonzero(want[:, node])
            at = sel if rows is None else rows[sel]
            requests[node] = [(rpc.PUT, {"n": len(sel[k:k + step]), **head},
                               payload(ids[sel[k:k + step]], data, at[k:k + step]))
                              for k in range(0, len(sel), step)]
        if not requests:
            return {}
        replies = self.members.call_each(requests, WRITE_TIMEOUT)
        # Noted once answered: a sync that ran meanwhile may have overtaken the PUT on its node.
        for node in requests:
            reply = replies[node]
            runs = set() if isinstance(reply, Exception) else {
                r[0].get("incarnation") for r in reply}
            run = runs.pop() if len(runs) == 1 else None    # two: it restarted between
            self.noted(node, run, ids[want[:, node]])
        return {node: r if isinstance(r, Exception) else
                np.concatenate([np.frombuffer(part[1], np.uint8) for part in r])
                for node, r in replies.items()}

    def noted(self, node: int, run: str | None, ids: np.ndarray) -> None:
        """Notes for the next sync that `node` took `ids` (from us, or from another node:
        engine.cluster.handoff), its replies naming incarnation `run` (None if none or two)."""
        with self._sync_lock:
            seen, sent = self._unsynced.get(node, (run, []))
            sent.append(ids)
            self._unsynced[node] = (seen if seen == run else None, sent)

    def unsynced_down(self) -> dict[int, np.ndarray]:
        """The ids each node took that it has not made durable, for the nodes down since (a
        sync passes them by): {node: ids ascending}."""
        up = self.members.reachable_mask()
        with self._sync_lock:
            return {node: np.unique(np.concatenate(sent))
                    for node, (_, sent) in self._unsynced.items() if sent and not up[node]}

    def any_unsynced_down(self) -> bool:
        """Some node down holds copies it has not made durable."""
        up = self.members.reachable_mask()
        with self._sync_lock:
            return any(sent and not up[node] for node, (_, sent) in self._unsynced.items())

    def get(self, asked: dict[int, np.ndarray]) -> dict:
        """Asks each node for its ids ({node: ids}, at most frame_blocks each). Returns {node:
        (a bool per id: the node has no copy, the bytes as n × block_size with a row per id it
        has), or the exception}."""
        requests = {node: (rpc.GET, {"n": len(ids)}, payload(ids)) for node, ids in asked.items()}
        out = {}
        for node, reply in self.members.call_many(requests, READ_TIMEOUT).items():
            if isinstance(reply, Exception):
                out[node] = reply
                continue
            header, body = reply
            missing = np.zeros(len(asked[node]), bool)
            missing[np.array(header.get("missing", []), dtype=np.int64)] = True
            out[node] = missing, np.frombuffer(body, np.uint8).reshape(-1, self.block_size)
        return out

    def drop(self, ids: np.ndarray, held: np.ndarray) -> None:
        """Drops ids from the nodes marked in `held` (len(ids) × nodes); a node that cannot be
        reached drops them when it returns (its inventory shows them unwanted). Only the lease
        holder drops: a read-only coordinator leaves the copies alone."""
        if self.members.holder is None:
            return
        held = held & self.members.reachable_mask()[None, :]   # no waiting on a node down
        for start in range(0, len(ids), DROP_IDS):      # a VM's worth of ids: many frames
            part_ids, part_held = ids[start:start + DROP_IDS], held[start:start + DROP_IDS]
            requests = {}
            for node in np.flatnonzero(part_held.any(axis=0)).tolist():
                sel = part_ids[part_held[:, node]]
                requests[node] = (rpc.DROP, {"n": len(sel), "holder": self.members.holder},
                                  payload(sel))
            if requests:
                self.members.call_many(requests, WRITE_TIMEOUT)

    def sync(self) -> dict[int, np.ndarray]:
        """Every node that took blocks since the last sync makes them durable. Returns, for
        each node that restarted since (another incarnation answers), the ids it took and no
        longer holds: a disk node's page cache usually kept them all, a RAM node none. What
        that loses is the caller's to judge (engine.cluster.blocks). A node unreachable now is
        judged when it answers again.

        The lock is held across the SYNCs, so a concurrent caller (a commit beside a heal)
        returns only once the copies it counts on are durable."""
        with self._sync_lock:
            # A node judged down is not waited on: it syncs at a later call, once back.
            up = self.members.reachable_mask()
            nodes = {i: v for i, v in self._unsynced.items() if up[i]}
            self._unsynced = {i: v for i, v in self._unsynced.items() if not up[i]}
            replies = (self.members.call_many({i: (rpc.SYNC, {}, b"") for i in nodes},
                                              WRITE_TIMEOUT) if nodes else {})
            gone = {}
            for node, reply in replies.items():
                run, sent = nodes[node]
                if isinstance(reply, Exception):
                    self._unsynced[node] = (run, sent)
                elif reply[0].get("incarnation") != run:
                    missing = self._missing(node, np.unique(np.concatenate(sent)))
                    if len(missing):
                        gone[node] = missing
            return gone

    def _missing(self, node: int, ids: np.ndarray) -> np.ndarray:
        """The `ids` that `node` does not hold (all, if it cannot be asked)."""
        out = []
        for start in range(0, len(ids), self.frame_blocks):
            part = ids[start:start + self.frame_blocks]
            reply = self.get({node: part})[node]
            out.append(part if isinstance(reply, Exception) else part[reply[0]])
        return np.concatenate(out) if out else np.zeros(0, np.uint64)

    def inventory(self, node: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(ids, second fingerprint words) of every copy a node holds, ascending by id, in as
        many requests as it takes; None if the node cannot be reached."""
        id_parts, word_parts, start = [], [], 0
        while True:
            reply = self.members.call(node, rpc.INVENTORY, {"start": start},
                                      timeout=INVENTORY_TIMEOUT)
            if isinstance(reply, Exception):
                return None
            header, body = reply
            n = header["count"]
            raw = np.frombuffer(body, dtype="<u8").astype(np.uint64)
            id_parts.append(raw[:n])
            word_parts.append(raw[n:2 * n])
            start = header["next"]
            if not start:
                break
        ids, words = np.concatenate(id_parts), np.concatenate(word_parts)
        order = np.argsort(ids)
        return ids[order], words[order]

    def scrub(self, node: int) -> np.ndarray:
        """The ids whose copies on `node` no longer match their fingerprint (the node re-reads
        every block); none if it cannot be reached."""
        reply = self.members.call(node, rpc.SCRUB, {}, timeout=SCRUB_TIMEOUT)
        if isinstance(reply, Exception):
            return np.zeros(0, np.uint64)
        return np.array(reply[0]["bad"], dtype=np.uint64)

    def scrub_part(self, node: int, start: int, count: int) -> tuple[np.ndarray, int, int] | None:
        """Has `node` re-read the blocks in `count` of its slots from `start`: (the ids whose
        copies no longer match their fingerprint, blocks read, the next start or 0 at the
        end); None if it cannot be reached."""
        reply = self.members.call(node, rpc.SCRUB, {"start": start, "count": count},
                                  timeout=SCRUB_TIMEOUT)
        if isinstance(reply, Exception):
            return None
        header = reply[0]
        return np.array(header["bad"], dtype=np.uint64), header["blocks"], header["next"]
