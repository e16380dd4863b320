"""Writes: block ids, placement of new blocks, verification of known ones, collisions.

A block's id is the first 64 bits of its xxh3-128 fingerprint (variant 0) or, once that id is bound
to other bytes somewhere, a hash of the fingerprint and a variant number (engine.blockids). The
node that holds an id compares the bytes of any later PUT under it, so an id never names two
contents: a mismatch is a collision, and the block moves on to its next variant.

Placing a batch goes in rounds (at most MAX_ROUNDS), each of these phases:
  quorum   fewer than min_replicas nodes up: the whole batch is refused (ReplicationError)
  leads    equal ids in the batch: the first (the lead) goes out, the others follow it once
           their bytes compare equal; other bytes under the same id are a collision
  choose   a known id is verified by one up holder that has not failed it, in placement order;
           a new id (or one with no reachable holder) goes to its R placement targets among the
           healthy nodes (suspect ones only when too few are healthy)
  send     one PUT per node (engine.cluster.copies)
  judge    a refusal refuses the batch; an unreachable node is not asked again; a COLLISION
           moves the block to its next variant, dropping copies already made under the old id
  settle   a lead is done once verified, or held by all its up targets and by at least
           min_replicas nodes; its followers are done with it
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..blockids import VARIANTS, block_ids
from ..errors import NoSpaceError, ReplicationError
from ..fingerprint import Fingerprinter
from ..net import rpc
from . import placement
from .copies import Copies
from .rowmap import RowMap

MAX_ROUNDS = 32


@dataclass
class _Batch:
    """A batch being placed: per block, its id and variant, which nodes acknowledged it, whether
    it was already known (verified rather than stored), done, and holders that failed it."""
    data: np.ndarray
    digests: np.ndarray
    ids: np.ndarray
    variants: np.ndarray
    held: np.ndarray
    existing: np.ndarray
    done: np.ndarray
    tried: np.ndarray

    @classmethod
    def of(cls, data: np.ndarray, digests: np.ndarray, nodes: int) -> _Batch:
        n = len(data)
        variants = np.zeros(n, np.int64)
        return cls(data, digests, block_ids(digests, variants), variants,
                   np.zeros((n, nodes), bool), np.zeros(n, bool), np.zeros(n, bool),
                   np.zeros((n, nodes), bool))

    def next_variant(self, which: np.ndarray) -> None:
        self.variants[which] += 1
        if (self.variants[which] > VARIANTS).any():     # a node would not take the id
            raise ReplicationError(f"a block's id collided {VARIANTS + 1} times: refused")
        self.ids[which] = block_ids(self.digests[which], self.variants[which])


class Writer:
    def __init__(self, members, rows: RowMap, copies: Copies, fingerprints: Fingerprinter,
                 *, replicas: int, min_replicas: int, collisions: int = 0):
        self.members = members
        self.rows = rows
        self.copies = copies
        self.fingerprints = fingerprints
        self.replicas = replicas            # R
        self.min_replicas = min_replicas
        self.collisions = collisions        # since the cluster was made

    def store(self, blocks: np.ndarray, digests: np.ndarray | None = None) -> np.ndarray:
        """Stores each block (n × block_size uint8) on its nodes, or verifies it against a
        holder; returns their ids, referenced. `digests`: their fingerprints (n × 2 words), if
        the caller has them (the core hashes every block it stores).

        Nothing in RAM changes unless every block is acknowledged: on ReplicationError the blocks
        already sent are unreferenced orphans that the nodes drop at the next inventory.
        """
        if digests is None:
            digests = self.fingerprints.of(blocks)
        with self.rows.lock:
            ids, held = self._place(blocks, digests)
            rows = self.rows.rows_of(ids)
            known = np.flatnonzero(rows)
            self.rows.hold(rows[known], held[known])
            fresh = np.flatnonzero(rows == 0)
            if len(fresh):
                uniq, first, inverse = np.unique(ids[fresh], return_index=True,
                                                 return_inverse=True)
                made = self.rows.add(uniq, digests[fresh[first], 1], held[fresh[first]])
                rows[fresh] = made[inverse.reshape(-1)]
            self.rows.incref(rows)
            return ids

    def _place(self, data: np.ndarray, digests: np.ndarray):
        """(ids, which nodes acknowledged each block), after as many rounds as it takes."""
        k = len(self.members.nodes)
        b = _Batch.of(data, digests, k)
        for _ in range(MAX_ROUNDS):
            if b.done.all():
                return b.ids, b.held
            up = self.members.up_mask()
            if up.sum() < self.min_replicas:
                names = self.members.names()
                down = ", ".join(names[i] for i in self.members.present() if not up[i])
                raise ReplicationError(
                    f"only {int(up.sum())} of {self.members.count()} nodes are up (down:"
                    f" {down}); a write needs"
                    f" at least min_replicas={self.min_replicas} copies: refused")
            lead, followers = self._leads(b)
            want = self._choose(b, lead, self._writable())
            self._judge(b, lead, want, self.copies.put(b.ids[lead], b.data, want, rows=lead))
            self._settle(b, lead, followers)
        raise ReplicationError("could not place blocks on enough nodes: the cluster keeps"
                               " changing under the write")

    def _leads(self, b: _Batch) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """The blocks not done that go out this round, and (follower, its lead) pairs."""
        reps: dict[int, int] = {}
        followers = []
        for j in np.flatnonzero(~b.done).tolist():
            r = reps.setdefault(int(b.ids[j]), j)
            if r != j:
                followers.append((j, r))
        for j, r in followers:
            if not np.array_equal(b.data[j], b.data[r]):
                self.collisions += 1
                b.next_variant(np.array([j]))
        return np.array(sorted(reps.values()), dtype=np.int64), followers

    def _choose(self, b: _Batch, lead: np.ndarray, up: np.ndarray) -> np.ndarray:
        """Which nodes each lead goes to (len(lead) × nodes)."""
        want = np.zeros((len(lead), len(self.members.nodes)), bool)
        rows = self.rows.rows_of(b.ids[lead])
        live = rows != 0
        b.existing[lead] = live
        if live.any():
            li = np.flatnonzero(live)
            cand = self.rows.holders_at(rows[li]) & up[None, :] & ~b.tried[lead[li]]
            order = placement.ranking(b.ids[lead[li]], self.members.seeds, self.members.weights)
            ranked = np.take_along_axis(cand, order, axis=1)
            has = ranked.any(axis=1)
            pick = order[np.arange(len(li)), ranked.argmax(axis=1)]
            want[li[has], pick[has]] = True
            b.existing[lead[li[~has]]] = False       # no copy reachable: store it afresh
            live[li[~has]] = False
        new = np.flatnonzero(~live)
        if len(new):
            targets = placement.targets(b.ids[lead[new]], self.members.seeds,
                                        self.members.weights, up, self.replicas)
            want[new] = targets & ~b.held[lead[new]]
        return want

    def _judge(self, b: _Batch, lead: np.ndarray, want: np.ndarray, replies: dict) -> None:
        # Every node's answer is taken before any block moves on: a copy another node stored
        # under an id that collided is then known, and dropped, whatever order nodes answer in.
        collided = np.zeros(len(lead), bool)
        for node, status in replies.items():
            sent = np.flatnonzero(want[:, node])
            if isinstance(status, rpc.RemoteError):
                name = self.members.names()[node]
                if status.code == rpc.Code.NODE_FULL:
                    # ENOSPC over NBD, as a full local pool: a guest pauses (qemu's
                    # werror=enospc) until space is freed, where EIO fails its I/O.
                    raise NoSpaceError(f"out of space on node {name} ({status}): free some"
                                       " (vm rm, snapshot-rm) or add a node (cluster add)")
                raise ReplicationError(f"node {name} refused blocks: {status}")
            if isinstance(status, Exception):
                b.tried[lead[sent], node] = True
                continue
            ok = status != rpc.COLLISION
            b.held[lead[sent[ok]], node] = True
            collided[sent[~ok]] = True
        bad = lead[collided]
        if len(bad):
            self.collisions += len(bad)
            # Copies already made under the taken id must not linger there.
            orphaned = bad[~b.existing[bad] & b.held[bad].any(axis=1)]
            if len(orphaned):
                self.copies.drop(b.ids[orphaned], b.held[orphaned])
            b.next_variant(bad)
            b.held[bad] = False
            b.existing[bad] = False

    def _writable(self) -> np.ndarray:
        """The nodes a write goes to: the healthy ones, so no write waits on a node that missed
        a heartbeat (its blocks go to the next node in placement order, and heal moves them
        back); suspect ones too only when too few are healthy; never a node being removed."""
        placeable = self.members.placeable_mask()
        healthy = self.members.healthy_mask() & placeable
        return healthy if healthy.sum() >= self.min_replicas else placeable

    def _settle(self, b: _Batch, lead: np.ndarray, followers: list[tuple[int, int]]) -> None:
        up = self._writable()
        hl = b.held[lead]
        verified = b.existing[lead] & hl.any(axis=1)
        targets = placement.targets(b.ids[lead], self.members.seeds, self.members.weights, up,
                                    self.replicas)
        complete = (~(targets & ~hl).any(axis=1)
                    & ((hl & up[None, :]).sum(axis=1) >= self.min_replicas))
        b.done[lead[verified | (~b.existing[lead] & complete)]] = True
        for j, r in followers:
            if b.ids[j] == b.ids[r] and b.done[r]:
                b.done[j], b.held[j], b.existing[j] = True, b.held[r], b.existing[r]
