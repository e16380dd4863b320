"""Heal's copies from node to node: a holder sends its copies straight to the targets, and the
coordinator carries only ids and statuses (COPY, engine.node.peers).

Phases of one handoff (heal decides which ids go to which targets):
  pick   each id's holder: the first up holder in placement order, healthy ones first
  ask    one COPY per holder, all holders at once, naming each target's address and the host
         key pinned in cluster.json (a holder trusts no other), and the ids for it
  tell   per id and target: made (the target stored it or held it already), or left for
         another path (the holder lacked it or held it rotten, or the target could not be given
         it), with one line per distinct reason; a COLLISION is neither, as for a PUT

The targets that took copies are noted for the next sync (engine.cluster.copies), with the
incarnation their replies named, as for the coordinator's own PUTs.
"""

from __future__ import annotations

import numpy as np

from ..net import rpc
from . import placement
from .copies import Copies

COPY_TIMEOUT = 60.0       # a COPY carries a heal batch: many PUTs, each with its own 10 s


class Handoff:
    def __init__(self, members, copies: Copies):
        self.members = members
        self.copies = copies

    def copy(self, ids: np.ndarray, have: np.ndarray,
             need: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Has a holder of each id (have: len(ids) × nodes, up holders) send it to every node
        marked in `need` (len(ids) × nodes). Returns (made, left: len(ids) × nodes bool, the
        copies the targets now hold and those to make another way; the reasons for `left`,
        one line each)."""
        k = len(self.members.nodes)
        made = np.zeros_like(need)
        left = need.copy()
        notes: set[str] = set()
        source = self._pick(ids, have)
        clients = [n.client for n in self.members.nodes]     # where and as whom we reach them
        requests, plans = {}, {}
        for node in np.unique(source[need.any(axis=1) & (source >= 0)]).tolist():
            mine = np.flatnonzero((source == node) & need.any(axis=1))
            targets, parts, plan = [], [], []
            for t in range(k):
                sel = mine[need[mine, t]]
                if not len(sel):
                    continue
                if not clients[t].host_key:
                    notes.add(f"node {clients[t].name} has no pinned host key")
                    continue
                targets.append({"name": clients[t].name, "address": clients[t].address,
                                "host_key": clients[t].host_key, "n": len(sel)})
                parts.append(ids[sel])
                plan.append((t, sel))
            if targets:
                requests[node] = (rpc.COPY, {"targets": targets},
                                  np.concatenate(parts).astype("<u8").tobytes())
                plans[node] = plan
        replies = self.members.call_many(requests, COPY_TIMEOUT) if requests else {}
        names = self.members.names()
        for node, reply in replies.items():
            if isinstance(reply, Exception):
                notes.add(f"node {names[node]}: {reply}")
                continue
            header, body = reply
            status = np.frombuffer(body, np.uint8)
            start = 0
            for (t, sel), told in zip(plans[node], header["targets"]):
                got = status[start:start + len(sel)]
                start += len(sel)
                answered = got <= rpc.COLLISION
                if answered.any():
                    self.copies.noted(t, told.get("incarnation"), ids[sel[answered]])
                ok = (got == rpc.STORED) | (got == rpc.SAME)
                made[sel[ok], t] = True
                left[sel[answered], t] = False
                if told.get("error"):       # the holder's line, under the name we know it by
                    notes.add(f"node {names[node]} {told['error']}")
                for code, what in ((rpc.MISSING, "has no copy of"), (rpc.ROTTEN, "holds rotten")):
                    n = int(np.count_nonzero(got == code))
                    if n:
                        notes.add(f"node {names[node]} {what} {n} of the blocks it was to"
                                  " send: not sent")
                n = int(np.count_nonzero(got == rpc.MISMATCH))
                if n:
                    notes.add(f"node {names[t]} refused {n} blocks from node {names[node]}"
                              " whose bytes do not hash to their ids")
        return made, left, sorted(notes)

    def _pick(self, ids: np.ndarray, have: np.ndarray) -> np.ndarray:
        """Each id's holder to send it: the first in placement order among its healthy holders,
        else among all (suspect ones too); -1 for an id no up node holds."""
        order = placement.ranking(ids, self.members.seeds, self.members.weights)
        healthy = have & self.members.healthy_mask()[None, :]
        options = np.where(healthy.any(axis=1)[:, None], healthy, have)
        ranked = np.take_along_axis(options, order, axis=1)
        pick = order[np.arange(len(ids)), ranked.argmax(axis=1)]
        return np.where(ranked.any(axis=1), pick, -1)
