"""The cluster's block layer: the same methods as engine.localblocks.LocalBlocks, over nodes.

A block's address is a cluster-wide id: the first 64 bits of its xxh3-128 fingerprint (variant 0),
or, when that id is already bound to other bytes somewhere, a hash of the fingerprint and a
variant number. The node that stores an id compares the bytes of any later put under it, so an
id never names two contents: a mismatch is a collision, and the block moves to its next variant.

In the coordinator's RAM, per id: a row (engine.index.FingerprintIndex maps id -> row), its
refcount (an engine.spacemap.SpaceMap over rows, so a row freed in a transaction is reused only
after the commit), the second word of its fingerprint, and which nodes hold a copy (a bool
matrix rows × nodes). Placement is weighted rendezvous hashing over the up nodes.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import xxhash

from ..errors import BlockfoldError, CancelledError, RefusedError
from ..fingerprint import Fingerprinter
from ..index import FingerprintIndex
from ..net import rpc
from ..progress import Meter
from ..rebuild import PageScan
from ..spacemap import SpaceMap
from ..stats import refcount_histogram
from . import placement
from .members import NodeState

FRAME_BYTES = 8 << 20      # block data per request: far under rpc.MAX_BODY, big enough to
                           # keep round trips few while copying
HEAL_STREAMS = 2
MAX_ROUNDS = 32
DROP_IDS = 1 << 20          # 8 MiB of ids a frame
MAX_ID = np.uint64(0xFFFF_FFFF_FFFF_FFFF)
READ_TIMEOUT = 5.0
WRITE_TIMEOUT = 20.0


class ReplicationError(RefusedError):
    """The cluster cannot keep a change safe (too few nodes, a node refusing blocks): the
    change is refused. (Raised by a commit, the pool turns it into an AbortedError.)"""


def block_ids(digests: np.ndarray, variants: np.ndarray) -> np.ndarray:
    """The id of each fingerprint (n × 2 words) at its variant; never 0 nor 2^64-1."""
    ids = digests[:, 0].copy()
    for i in np.flatnonzero(variants).tolist():
        seed = digests[i].tobytes() + int(variants[i]).to_bytes(4, "little")
        ids[i] = xxhash.xxh3_64_intdigest(seed)
    ids[ids == 0] = 1
    ids[ids == MAX_ID] = MAX_ID - np.uint64(1)
    return ids


def _payload(ids: np.ndarray, data: np.ndarray | None = None) -> bytes:
    head = ids.astype("<u8").tobytes()
    return head if data is None else head + data.tobytes()


class ClusterBlocks:
    def __init__(self, members, config, fingerprints: Fingerprinter, collisions: int = 0):
        self.members = members
        self.block_size = config.block_size
        self.replicas = config.replicas
        self.min_replicas = config.min_replicas
        self.fingerprints = fingerprints
        self.collisions = collisions
        self.lock = threading.RLock()
        self.index: FingerprintIndex | None = None
        self.space = SpaceMap(1)
        self.row_ids = np.zeros(1, np.uint64)
        self.row_words = np.zeros(1, np.uint64)
        self.holders = np.zeros((1, len(members.nodes)), bool)
        self.corrupt = np.zeros(0, np.uint64)
        self.frame_blocks = max(1, FRAME_BYTES // self.block_size)
        self._synced_nodes: set[int] = set()

    # -- rows ---------------------------------------------------------------------------------

    def _rows_of(self, ids: np.ndarray) -> np.ndarray:
        """The row of each id, or 0 if the id has none."""
        rows = self.index.lookup(ids)
        rows[self.row_ids[rows] != ids] = 0
        return rows

    def _new_rows(self, ids: np.ndarray, words: np.ndarray, held: np.ndarray) -> np.ndarray:
        rows = self.space.allocate(len(ids))
        if rows is None:
            grow = max(len(ids), len(self.row_ids) // 2, 1024)
            start = len(self.row_ids)
            self.space.add_slots(np.arange(start, start + grow, dtype=np.uint64))
            self.row_ids = np.concatenate([self.row_ids, np.zeros(grow, np.uint64)])
            self.row_words = np.concatenate([self.row_words, np.zeros(grow, np.uint64)])
            self.holders = np.concatenate([self.holders,
                                           np.zeros((grow, self.holders.shape[1]), bool)])
            rows = self.space.allocate(len(ids))
        self.row_ids[rows] = ids
        self.row_words[rows] = words
        self.holders[rows] = held
        self.index.insert(ids, rows, keep=lambda r: self.row_ids[r] != 0)
        return rows

    # -- write path ---------------------------------------------------------------------------

    def store_blocks(self, blocks: np.ndarray) -> np.ndarray:
        """Stores each block (n × block_size) on its nodes, or verifies it against a holder;
        returns their ids, referenced.

        Nothing in RAM changes unless every block is acknowledged: on ReplicationError the blocks
        already sent are unreferenced orphans that the nodes drop at the next inventory.
        """
        data = blocks
        digests = self.fingerprints.of(blocks)
        with self.lock:
            ids, held = self._place(data, digests)
            rows = self._rows_of(ids)
            known = np.flatnonzero(rows)
            self.holders[rows[known]] |= held[known]
            fresh = np.flatnonzero(rows == 0)
            if len(fresh):
                uniq, first, inverse = np.unique(ids[fresh], return_index=True,
                                                 return_inverse=True)
                made = self._new_rows(uniq, digests[fresh[first], 1], held[fresh[first]])
                rows[fresh] = made[inverse.reshape(-1)]
            self.space.incref(rows)
            return ids

    def _place(self, data: np.ndarray, digests: np.ndarray):
        """(ids, which nodes acknowledged each block)."""
        n, k = len(data), len(self.members.nodes)
        variants = np.zeros(n, np.int64)
        ids = block_ids(digests, variants)
        held = np.zeros((n, k), bool)
        existing = np.zeros(n, bool)
        done = np.zeros(n, bool)
        tried = np.zeros((n, k), bool)          # holders that failed to verify this round
        for _ in range(MAX_ROUNDS):
            todo = np.flatnonzero(~done)
            if not len(todo):
                return ids, held
            up = self.members.up_mask()
            if up.sum() < self.min_replicas:
                down = ", ".join(n for n, u in zip(self.members.names(), up) if not u)
                raise ReplicationError(
                    f"only {int(up.sum())} of {k} nodes are up (down: {down}); a write needs"
                    f" at least min_replicas={self.min_replicas} copies: refused")
            # Equal ids in one batch: the first goes out, the others follow it once their bytes
            # compare equal to its bytes; different bytes under one id is a collision.
            reps: dict[int, int] = {}
            followers = []
            for j in todo.tolist():
                r = reps.setdefault(int(ids[j]), j)
                if r != j:
                    followers.append((j, r))
            for j, r in followers:
                if not np.array_equal(data[j], data[r]):
                    self.collisions += 1
                    variants[j] += 1
                    ids[j] = block_ids(digests[j:j + 1], variants[j:j + 1])[0]
            lead = np.array(sorted(reps.values()), dtype=np.int64)
            rows = self._rows_of(ids[lead])
            live = rows != 0
            existing[lead] = live
            want = np.zeros((len(lead), k), bool)
            # A live id is verified by one up holder that has not failed it yet.
            if live.any():
                li = np.flatnonzero(live)
                cand = self.holders[rows[li]] & up[None, :] & ~tried[lead[li]]
                order = placement.ranking(ids[lead[li]], self.members.seeds,
                                          self.members.weights)
                ranked = np.take_along_axis(cand, order, axis=1)
                has = ranked.any(axis=1)
                pick = order[np.arange(len(li)), ranked.argmax(axis=1)]
                want[li[has], pick[has]] = True
                existing[lead[li[~has]]] = False       # no copy reachable: store it afresh
                live[li[~has]] = False
            new = np.flatnonzero(~live)
            if len(new):
                targets = placement.targets(ids[lead[new]], self.members.seeds,
                                            self.members.weights, up, self.replicas)
                want[new] = targets & ~held[lead[new]]
            replies = self._send_puts(ids[lead], data[lead], want)
            for node, status in replies.items():
                rows_sent = np.flatnonzero(want[:, node])
                if isinstance(status, rpc.RemoteError):
                    raise ReplicationError(f"node {self.members.names()[node]} refused blocks:"
                                         f" {status}")
                if isinstance(status, Exception):
                    tried[lead[rows_sent], node] = True
                    continue
                ok = status != rpc.COLLISION
                held[lead[rows_sent[ok]], node] = True
                bad = lead[rows_sent[~ok]]
                if len(bad):
                    self.collisions += len(bad)
                    # Copies already made under the taken id must not linger there.
                    orphaned = bad[~existing[bad] & held[bad].any(axis=1)]
                    if len(orphaned):
                        self._drop(ids[orphaned], held[orphaned])
                    variants[bad] += 1
                    ids[bad] = block_ids(digests[bad], variants[bad])
                    held[bad] = False
                    existing[bad] = False
            # A lead is done when verified, or held by all its live targets (and enough of them).
            up = self.members.up_mask()
            hl = held[lead]
            verified = existing[lead] & hl.any(axis=1)
            targets = placement.targets(ids[lead], self.members.seeds, self.members.weights,
                                        up, self.replicas)
            complete = (~(targets & ~hl).any(axis=1)
                        & ((hl & up[None, :]).sum(axis=1) >= self.min_replicas))
            done[lead[verified | (~existing[lead] & complete)]] = True
            for j, r in followers:
                if ids[j] == ids[r] and done[r]:
                    done[j], held[j], existing[j] = True, held[r], existing[r]
        raise ReplicationError("could not place blocks on enough nodes: the cluster keeps"
                             " changing under the write")

    def _send_puts(self, ids: np.ndarray, data: np.ndarray, want: np.ndarray) -> dict:
        """One PUT per node; {node: status array or exception}."""
        requests = {}
        for node in np.flatnonzero(want.any(axis=0)).tolist():
            sel = np.flatnonzero(want[:, node])
            requests[node] = (rpc.PUT, {"n": len(sel)}, _payload(ids[sel], data[sel]))
        if not requests:
            return {}
        with self.lock:
            self._synced_nodes.update(requests)
        replies = self.members.call_many(requests, WRITE_TIMEOUT)
        return {node: r if isinstance(r, Exception) else np.frombuffer(r[1], np.uint8)
                for node, r in replies.items()}

    def decref(self, addrs: np.ndarray) -> None:
        if len(addrs) == 0:
            return
        with self.lock:
            self.space.decref(self._rows_of(addrs))

    # -- read path ----------------------------------------------------------------------------

    def gather(self, addrs: np.ndarray) -> np.ndarray:
        """The bytes of each id, as n × block_size, from the first holder that answers."""
        uniq, inverse = np.unique(addrs, return_inverse=True)
        step = self.frame_blocks
        parts = [self._gather(uniq[i:i + step]) for i in range(0, len(uniq), step)]
        out = np.concatenate(parts) if parts else np.zeros((0, self.block_size), np.uint8)
        return out[inverse.reshape(-1)]

    def _gather(self, uniq: np.ndarray) -> np.ndarray:
        """gather() for distinct ids, few enough that any node's reply fits one frame."""
        out = np.zeros((len(uniq), self.block_size), np.uint8)
        k = len(self.members.nodes)
        with self.lock:
            rows = self._rows_of(uniq)
            cand = self.holders[rows].copy()
            expect = self.row_words[rows]
        tried = np.zeros((len(uniq), k), bool)
        todo = np.arange(len(uniq))
        order = placement.ranking(uniq, self.members.seeds, self.members.weights)
        while len(todo):
            up = self.members.up_mask()
            # Known holders first; then any other up node, in case the map is behind.
            options = np.where(cand[todo].any(axis=1)[:, None], cand[todo], True)
            options &= up[None, :] & ~tried[todo]
            # A node that missed a heartbeat (suspect) is asked only when no other can answer.
            healthy = options & self.members.healthy_mask()[None, :]
            options = np.where(healthy.any(axis=1)[:, None], healthy, options)
            ranked = np.take_along_axis(options, order[todo], axis=1)
            has = ranked.any(axis=1)
            if not has.all():
                options = self.members.reachable_mask()[None, :] & ~tried[todo]
                ranked = np.take_along_axis(options, order[todo], axis=1)
                has = ranked.any(axis=1)
                if not has.all():
                    lost = int(uniq[todo[~has][0]])
                    raise BlockfoldError(f"block {lost:016x} has no reachable copy:"
                                         " too many nodes are down")
            pick = order[todo, ranked.argmax(axis=1)]
            requests = {}
            for node in np.unique(pick).tolist():
                sel = todo[pick == node]
                requests[node] = (rpc.GET, {"n": len(sel)}, _payload(uniq[sel]))
            replies = self.members.call_many(requests, READ_TIMEOUT)
            left = []
            for node, reply in replies.items():
                sel = todo[pick == node]
                tried[sel, node] = True
                if isinstance(reply, Exception):
                    left.append(sel)
                    continue
                header, payload = reply
                missing = np.zeros(len(sel), bool)
                missing[np.array(header.get("missing", []), dtype=np.int64)] = True
                got = np.frombuffer(payload, np.uint8).reshape(-1, self.block_size)
                # A copy whose bytes do not hash to the block's word is rotten, or another
                # block under a colliding id: never served; the next replica is asked.
                fine = sel[~missing]
                words = self.fingerprints.of(got)[:, 1]
                rotten = (words != expect[fine]) & (expect[fine] != 0)
                out[fine[~rotten]] = got[~rotten]
                missing[np.flatnonzero(~missing)[rotten]] = True
                if missing.any():
                    cand[sel[missing], node] = False
                    left.append(sel[missing])
            todo = np.concatenate(left) if left else np.zeros(0, np.int64)
        return out

    def block_bytes(self, addr: int) -> bytes:
        return self.gather(np.array([addr], np.uint64))[0].tobytes()

    # -- durability ---------------------------------------------------------------------------

    def sync(self) -> None:
        """Before the block tables commit: every node that took blocks makes them durable."""
        with self.lock:
            nodes, self._synced_nodes = self._synced_nodes, set()
            if nodes:
                self.members.call_many({i: (rpc.SYNC, {}, b"") for i in nodes}, WRITE_TIMEOUT)

    @property
    def has_pending(self) -> bool:
        return self.space.has_pending

    def seal(self) -> int:
        with self.lock:
            return self.space.seal()

    def unseal(self, epoch: int) -> None:
        with self.lock:
            self.space.unseal(epoch)

    def release(self, epoch: int) -> None:
        """The commit that sealed `epoch` is durable: ids nobody references any more leave
        their nodes."""
        with self.lock:
            released = self.space.release(epoch)
            if not len(released):
                return
            ids, held = self.row_ids[released].copy(), self.holders[released].copy()
            self.row_ids[released] = 0
            self.holders[released] = False
            self._drop(ids, held)

    def _drop(self, ids: np.ndarray, held: np.ndarray) -> None:
        """Drops ids from the nodes marked in `held`; an unreachable node drops them on return."""
        if self.members.holder is None:
            return
        for start in range(0, len(ids), DROP_IDS):      # a VM's worth of ids: many frames
            part_ids, part_held = ids[start:start + DROP_IDS], held[start:start + DROP_IDS]
            requests = {}
            for node in np.flatnonzero(part_held.any(axis=0)).tolist():
                sel = part_ids[part_held[:, node]]
                requests[node] = (rpc.DROP, {"n": len(sel), "holder": self.members.holder},
                                  _payload(sel))
            if requests:
                self.members.call_many(requests, WRITE_TIMEOUT)

    # -- rebuild ------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.index is not None

    def rebuild(self, pages: PageScan, *, full: bool, progress, cancel, reclaim: bool,
                known_corrupt: np.ndarray) -> dict:
        """Refcounts from the replicated block tables, holders from every node's inventory."""
        started = time.monotonic()

        def check_cancel():
            if cancel is not None and cancel.is_set():
                raise CancelledError("rebuild cancelled")

        parts = list(pages.references(cancel, progress))
        refs = np.concatenate(parts) if parts else np.zeros(0, np.uint64)
        ids, counts = np.unique(refs, return_counts=True)

        k = len(self.members.nodes)
        self.members.probe_all()
        meter = Meter(progress, "inventory", k)
        held = np.zeros((len(ids), k), bool)
        words = np.zeros(len(ids), np.uint64)
        orphans = 0
        corrupt = []
        for node in range(k):
            meter.advance()
            check_cancel()
            if self.members.nodes[node].state == NodeState.DOWN:
                continue
            inv = self.inventory(node)
            if inv is None:
                continue
            node_ids, node_words = inv
            if full:
                bad = self._scrub(node)
                corrupt.append(bad)
                sound = ~np.isin(node_ids, bad)
                node_ids, node_words = node_ids[sound], node_words[sound]
            pos = np.minimum(np.searchsorted(ids, node_ids), max(len(ids) - 1, 0))
            hit = ids[pos] == node_ids if len(ids) else np.zeros(len(node_ids), bool)
            # The first holder seen fixes a block's hash word; a copy that disagrees is not one.
            first = hit & (words[pos] == 0)
            words[pos[first]] = node_words[first]
            match = hit & (words[pos] == node_words)
            held[pos[match], node] = True
            unwanted = node_ids[~match]
            if full:
                unwanted = np.concatenate([unwanted, corrupt[-1]])
            if reclaim and len(unwanted):
                orphans += len(unwanted)
                only_here = np.zeros((len(unwanted), k), bool)
                only_here[:, node] = True
                self._drop(unwanted, only_here)
        meter.finish()

        with self.lock:
            n = len(ids) + 1
            self.row_ids = np.concatenate([[np.uint64(0)], ids]).astype(np.uint64)
            self.row_words = np.concatenate([[np.uint64(0)], words]).astype(np.uint64)
            self.holders = np.concatenate([np.zeros((1, k), bool), held])
            self.space = SpaceMap.from_refcounts(
                np.minimum(np.concatenate([[0], counts]), np.iinfo(np.uint32).max))
            self.index = FingerprintIndex(int(n / 0.5) + 1)
            if len(ids):
                self.index.insert(ids, np.arange(1, n, dtype=np.uint64))
            bad = np.unique(np.concatenate(corrupt)) if corrupt else np.zeros(0, np.uint64)
            if not full:                # a full rebuild judges every copy afresh
                bad = np.union1d(bad, known_corrupt)
            self.corrupt = bad[np.isin(bad, ids)]
            missing = int(np.count_nonzero(~held.any(axis=1)))
        seconds = time.monotonic() - started
        bs = self.block_size
        return {
            "mode": "full" if full else "fast",
            "seconds": round(seconds, 4),
            "pages": pages.total,
            "references": int(len(refs)),
            "blocks": int(len(ids)),
            "bytes": int(len(ids)) * bs,
            "bytes_per_s": int(len(ids) * bs / seconds) if seconds > 0 else 0,
            "corrupt_blocks": [int(x) for x in self.corrupt],
            "bad_references": 0,
            "orphans_reclaimed": orphans,
            "missing_blocks": missing,
            "free_slots": 0,
            "capacity_slots": 0,
        }

    def inventory(self, node: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(ids, hash words) a node holds, or None if it cannot be reached."""
        id_parts, word_parts, start = [], [], 0
        while True:
            reply = self.members.call(node, rpc.INVENTORY, {"start": start}, timeout=30.0)
            if isinstance(reply, Exception):
                return None
            header, payload = reply
            n = header["count"]
            raw = np.frombuffer(payload, dtype="<u8").astype(np.uint64)
            id_parts.append(raw[:n])
            word_parts.append(raw[n:2 * n])
            start = header["next"]
            if not start:
                break
        ids, words = np.concatenate(id_parts), np.concatenate(word_parts)
        order = np.argsort(ids)
        return ids[order], words[order]

    def _scrub(self, node: int) -> np.ndarray:
        reply = self.members.call(node, rpc.SCRUB, {}, timeout=120.0)
        if isinstance(reply, Exception):
            return np.zeros(0, np.uint64)
        return np.array(reply[0]["bad"], dtype=np.uint64)

    def rejoin(self, node: int, reclaim: bool) -> None:
        """A returning node: its copies count again; what it should not hold, it drops."""
        inv = self.inventory(node)
        if inv is None:
            return
        node_ids, node_words = inv
        with self.lock:
            rows = self._rows_of(node_ids)
            # A block no reachable node held at rebuild has no hash word yet: this copy's.
            unknown = (rows != 0) & (self.row_words[rows] == 0)
            self.row_words[rows[unknown]] = node_words[unknown]
            ok = (rows != 0) & (self.row_words[rows] == node_words)
            ok &= self.space.refcounts[rows] > 0
            # What it holds now is all it holds: a RAM node comes back empty.
            self.holders[:, node] = False
            self.holders[rows[ok], node] = True
            unwanted = node_ids[~ok]
            if reclaim and len(unwanted):
                held = np.zeros((len(unwanted), len(self.members.nodes)), bool)
                held[:, node] = True
                self._drop(unwanted, held)

    # -- health and heal ----------------------------------------------------------------------

    def _live_rows(self) -> np.ndarray:
        return np.flatnonzero(self.space.refcounts)

    def under_replicated(self) -> int:
        with self.lock:
            if self.index is None:
                return 0
            rows = self._live_rows()
            copies = (self.holders[rows] & self.members.up_mask()[None, :]).sum(axis=1)
            return int(np.count_nonzero(copies < self.replicas))

    def per_node(self) -> tuple[np.ndarray, np.ndarray]:
        """For each node: live blocks it holds, and how many of those are under-replicated."""
        with self.lock:
            if self.index is None:
                k = len(self.members.nodes)
                return np.zeros(k, np.int64), np.zeros(k, np.int64)
            held = self.holders[self._live_rows()]
            copies = (held & self.members.up_mask()[None, :]).sum(axis=1)
            return held.sum(axis=0), held[copies < self.replicas].sum(axis=0)

    def heal(self, progress=None, cancel=None) -> dict:
        """Copies every id that its placement targets lack (it is under-replicated, or a node
        came back) from a holder, then trims copies beyond R off the nodes that are not
        targets. Returns what it did."""
        with self.lock:
            rows = self._live_rows()
            up = self.members.up_mask()
            have = self.holders[rows] & up[None, :]
            targets = placement.targets(self.row_ids[rows], self.members.seeds,
                                        self.members.weights, up, self.replicas)
            # Short of R copies, or not where placement wants them (a node came back).
            short = rows[(targets & ~have).any(axis=1)]
        meter = Meter(progress, "heal", len(short), unit_bytes=self.block_size)
        copied = missing = 0
        step = self.frame_blocks
        batches = [short[i:i + step] for i in range(0, len(short), step)]

        def one(batch):
            if cancel is not None and cancel.is_set():
                raise CancelledError("heal cancelled")
            return self._heal_batch(batch), len(batch)

        # Two batches in flight: one is read from its sources while the other is written.
        with ThreadPoolExecutor(HEAL_STREAMS, thread_name_prefix="blockfold-heal") as pool:
            for (c, m), n in pool.map(one, batches):
                copied += c
                missing += m
                meter.advance(n)
        self.sync()
        meter.finish()
        dropped = self._trim()
        return {"copied": copied, "unreachable": missing, "dropped": dropped,
                "under_replicated": self.under_replicated()}

    def _heal_batch(self, rows: np.ndarray) -> tuple[int, int]:
        """Copies one batch; (copies made, blocks with no reachable copy).

        The lock is held only to read and update the maps, never across the network, so reads
        and writes go on while a heal runs.
        """
        with self.lock:
            rows = rows[self.space.refcounts[rows] > 0]
            ids = self.row_ids[rows]
            up = self.members.up_mask()
            have = self.holders[rows] & up[None, :]
        targets = placement.targets(ids, self.members.seeds, self.members.weights, up,
                                    self.replicas)
        # Fewer copies than R but none missing from the targets: the targets are all taken.
        sources = have.any(axis=1)
        need = targets & ~have & sources[:, None]
        unreachable = int(np.count_nonzero(~sources))
        want = need.any(axis=1)
        if not want.any():
            return 0, unreachable
        rows, ids, need = rows[want], ids[want], need[want]
        try:
            data = self.gather(ids)
        except BlockfoldError:
            return 0, unreachable + len(ids)     # its last holder went meanwhile
        replies = self._send_puts(ids, data, need)
        copied = 0
        with self.lock:
            for node, status in replies.items():
                if isinstance(status, Exception):
                    continue
                sent = np.flatnonzero(need[:, node])
                sent = sent[status != rpc.COLLISION]
                # An id released while it was being copied: its drop missed this copy.
                gone = self.row_ids[rows[sent]] != ids[sent]
                self.holders[rows[sent[~gone]], node] = True
                copied += int(np.count_nonzero(~gone))
                if gone.any():
                    stale = np.zeros((int(gone.sum()), len(self.members.nodes)), bool)
                    stale[:, node] = True
                    self._drop(ids[sent[gone]], stale)
        return copied, unreachable

    def _trim(self) -> int:
        """Drops copies beyond R from nodes that are not among an id's placement targets."""
        with self.lock:
            rows = self._live_rows()
            up = self.members.up_mask()
            have = self.holders[rows] & up[None, :]
            over = np.flatnonzero(have.sum(axis=1) > self.replicas)
            if not len(over):
                return 0
            rows = rows[over]
            targets = placement.targets(self.row_ids[rows], self.members.seeds,
                                        self.members.weights, up, self.replicas)
            complete = ~(targets & ~have[over]).any(axis=1)
            extra = have[over] & ~targets & complete[:, None]
            if not extra.any():
                return 0
            self._drop(self.row_ids[rows], extra)
            self.holders[rows] &= ~extra
            return int(extra.sum())

    # -- views --------------------------------------------------------------------------------

    def live(self) -> np.ndarray:
        with self.lock:
            return np.sort(self.row_ids[self._live_rows()])

    def refcounts_of(self, addrs: np.ndarray) -> np.ndarray:
        with self.lock:
            return self.space.refcounts[self._rows_of(np.asarray(addrs, np.uint64))]

    def fingerprints_of(self, addrs: np.ndarray) -> np.ndarray:
        """(id, second fingerprint word): for variant 0, the block's xxh3-128 itself."""
        with self.lock:
            addrs = np.asarray(addrs, np.uint64)
            return np.stack([addrs, self.row_words[self._rows_of(addrs)]], axis=1)

    def summary(self) -> dict:
        with self.lock:
            space = self.space
            used = space.used_count
            memory = (self.index.nbytes + space.nbytes + self.row_ids.nbytes
                      + self.row_words.nbytes + self.holders.nbytes)
            capacity = sum(n.capacity_bytes for n, up in zip(self.members.nodes,
                                                             self.members.up_mask()) if up)
            return {
                "unique_blocks": used,
                "free_slots": 0,
                "capacity_bytes": capacity,
                "collisions": self.collisions,
                "corrupt_blocks": len(self.corrupt),
                "refcount_histogram": refcount_histogram(space.refcounts),
                "metadata_ram_bytes": memory,
                "metadata_ram_bytes_per_block": round(memory / used, 2) if used else 0,
                "replicas": self.replicas,
                "min_replicas": self.min_replicas,
                "under_replicated_blocks": self.under_replicated(),
            }

    def fsck(self, references: np.ndarray, report, progress) -> None:
        """Refcounts against references; every live id has R reachable, sound copies."""
        with self.lock:
            ids, counts = np.unique(references, return_counts=True)
            rows = self._rows_of(ids)
            for block_id in ids[rows == 0][:10].tolist():
                report("reference", f"block {block_id:016x} is referenced but unknown",
                       pbn=block_id)
            have = self.space.refcounts[rows].astype(np.int64)
            for j in np.flatnonzero((have != counts) & (rows != 0)).tolist():
                report("refcount", f"block {int(ids[j]):016x} has refcount {have[j]} but"
                       f" {counts[j]} references", pbn=int(ids[j]))
            live = self._live_rows()
            stray = live[~np.isin(self.row_ids[live], ids)]
            for row in stray[:10].tolist():
                report("refcount", f"block {int(self.row_ids[row]):016x} is counted but not"
                       " referenced", pbn=int(self.row_ids[row]))
            holders = self.holders.copy()
            row_ids = self.row_ids.copy()
        up = self.members.up_mask()
        meter = Meter(progress, "fsck", len(self.members.nodes))
        for node in range(len(self.members.nodes)):
            meter.advance()
            if not up[node]:
                continue
            inv = self.inventory(node)
            if inv is None:
                continue
            node_ids = inv[0]
            claimed = row_ids[live[holders[live, node]]]
            absent = claimed[~np.isin(claimed, node_ids)]
            name = self.members.names()[node]
            for block_id in absent[:10].tolist():
                report("replica", f"node {name} should hold block {block_id:016x} but does"
                       " not", pbn=block_id, node=name)
            for block_id in self._scrub(node)[:10].tolist():
                report("corrupt", f"node {name}: block {block_id:016x} no longer matches its"
                       " hash", pbn=block_id, node=name)
        meter.finish()
        copies = (holders[live] & up[None, :]).sum(axis=1)
        for row in live[copies == 0][:10].tolist():
            report("missing", f"block {int(row_ids[row]):016x} has no reachable copy",
                   pbn=int(row_ids[row]))
        short = live[(copies > 0) & (copies < self.replicas)]
        if len(short):
            report("replication", f"{len(short)} blocks have fewer than {self.replicas}"
                   " reachable copies: run heal")

    def close(self) -> None:
        pass
