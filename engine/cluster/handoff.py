"""Heal's copies from node to node: a holder sends its copies straight to the targets, and the
coordinator carries only ids and statuses (COPY, engine.node.peers).

Phases of one handoff (heal decides which ids go to which targets):
  pick   each id's holder: the first up holder in placement order, healthy ones first
  ask    one COPY per holder, all holders at once, naming each target's address and the host
         key pinned in cluster.json (a holder trusts no other), and the ids for it; a holder
         with more than COPY_BYTES of blocks to send is asked again in further rounds, each
         COPY within it counting its distinct ids, as the node does (an id for two targets
         is read once, and counts once)
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
COPY_BYTES = rpc.MAX_GATHER     # blocks one COPY may name: a node refuses more (BAD_REQUEST)


class Handoff:
    def __init__(self, members, copies: Copies):
        self.members = members
        self.copies = copies

    def copy(self, ids: np.ndarray, have: np.ndarray,
             need: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Has a holder of each id (have: len(ids) × nodes, up holders) send it to every node
        marked in `need` (len(ids) × nodes), in rounds of one COPY per holder, each of at most
        COPY_BYTES of blocks (_parts). Returns (made, left: len(ids) × nodes bool, the copies
        the targets now hold and those to make another way; the reasons for `left`, one line
        each)."""
        made = np.zeros_like(need)
        left = need.copy()
        notes: set[str] = set()
        plans = self._plan(ids, have, need, notes)
        cap = max(1, COPY_BYTES // self.copies.block_size)
        rounds = {node: _parts(plan, cap) for node, plan in plans.items()}
        clients = [n.client for n in self.members.nodes]     # where and as whom we reach them
        for r in range(max(map(len, rounds.values()), default=0)):
            part = {node: parts[r] for node, parts in rounds.items() if r < len(parts)}
            requests = {
                node: (rpc.COPY,
                       {"targets": [{"name": clients[t].name, "address": clients[t].address,
                                     "host_key": clients[t].host_key, "n": len(sel)}
                                    for t, sel in plan]},
                       np.concatenate([ids[sel] for _, sel in plan]).astype("<u8").tobytes())
                for node, plan in part.items()}
            self._tell(ids, self.members.call_many(requests, COPY_TIMEOUT), part, made, left,
                       notes)
        return made, left, sorted(notes)

    def _plan(self, ids: np.ndarray, have: np.ndarray, need: np.ndarray,
              notes: set[str]) -> dict[int, list[tuple[int, np.ndarray]]]:
        """{holder: [(target, the indexes into ids it is to send there)]}; a target with no
        pinned host key is left out, noted."""
        source = self._pick(ids, have)
        clients = [n.client for n in self.members.nodes]
        plans = {}
        for node in np.unique(source[need.any(axis=1) & (source >= 0)]).tolist():
            mine = np.flatnonzero((source == node) & need.any(axis=1))
            plan = []
            for t in range(len(clients)):
                sel = mine[need[mine, t]]
                if not len(sel):
                    continue
                if not clients[t].host_key:
                    notes.add(f"node {clients[t].name} has no pinned host key")
                    continue
                plan.append((t, sel))
            if plan:
                plans[node] = plan
        return plans

    def _tell(self, ids: np.ndarray, replies: dict, plans: dict, made: np.ndarray,
              left: np.ndarray, notes: set[str]) -> None:
        """Marks in `made` and `left` what one round's COPY replies say, and notes why copies
        were not made."""
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

    def _pick(self, ids: np.ndarray, have: np.ndarray) -> np.ndarray:
        """Each id's holder to send it: the first in placement order among its healthy holders,
        else among all (suspect ones too); -1 for an id no up node holds."""
        order = placement.ranking(ids, self.members.seeds, self.members.weights)
        healthy = have & self.members.healthy_mask()[None, :]
        options = np.where(healthy.any(axis=1)[:, None], healthy, have)
        ranked = np.take_along_axis(options, order, axis=1)
        pick = order[np.arange(len(ids)), ranked.argmax(axis=1)]
        return np.where(ranked.any(axis=1), pick, -1)


def _parts(plan: list[tuple[int, np.ndarray]],
           cap: int) -> list[list[tuple[int, np.ndarray]]]:
    """A holder's plan, [(target, indexes)], cut into COPYs of at most `cap` distinct ids
    each, as the node counts them (it reads an id named for two targets once): the holder's
    ids in order, `cap` at a time, each part naming every target's among them. As few parts
    as the distinct ids need; a target's ids may span parts."""
    every = np.unique(np.concatenate([sel for _, sel in plan]))
    parts = []
    for start in range(0, len(every), cap):
        chunk = every[start:start + cap]
        part = [(t, sel[np.isin(sel, chunk)]) for t, sel in plan]
        parts.append([(t, sel) for t, sel in part if len(sel)])
    return parts
