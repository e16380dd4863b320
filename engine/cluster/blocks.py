"""The cluster's block layer (engine.blocklayer.BlockLayer): block ids kept on R nodes.

The coordinator's pool is the native core over this layer (engine._native.Core.over): the core
keeps the block tables and does the data path, and calls store_blocks, decref, gather, sync and
seal/release/unseal here, with its lock held and the GIL taken (see native/src/pybackend.rs).
A block's address is a cluster-wide id (engine.cluster.writes). ClusterBlocks only composes the
rooms that do the work, all over the one row map of the coordinator's RAM:

  rowmap     id -> row, refcounts, hash words, holders; the lock every room takes to use them
  copies     the block requests to the nodes (PUT, GET, DROP, SYNC, INVENTORY, SCRUB)
  writes     ids, placement, verification, collisions
  reads      gather with failover past unreachable nodes and rotten copies, and read repair
  inventory  rebuild from the nodes' inventories, and a returning node's rejoin
  heal       copies back to R on the placement targets, and trims copies beyond R
  check      the cluster's fsck
"""

from __future__ import annotations

import numpy as np

from ..errors import LostWritesError
from ..fingerprint import Fingerprinter
from ..fsck import Problems
from ..progress import engine_callback
from . import check
from .copies import Copies
from .heal import Healer
from .inventory import Inventory
from .losses import BEFORE_DURABLE, CAME_BACK_WITHOUT, LostCopies
from .reads import Reader
from .rowmap import RowMap
from .writes import Writer

SCRUB_NODE_SHIFT = 48       # a scrub's cursor: the node's index above, its slot below


class ClusterBlocks:
    rebuild_phases = ("tables", "inventory")     # as rebuild() reports them
    scrub_unit = ("copy", "copies")     # a scrub reads every copy on every node, not each once
    import_bytes = 16 << 20     # an import's batch: few round trips, several frames per node

    def __init__(self, members, config, fingerprints: Fingerprinter, collisions: int = 0):
        self.members = members
        self.block_size = config.block_size
        self.replicas = config.replicas
        self.min_replicas = config.min_replicas
        self.import_blocks = self.import_bytes // config.block_size
        self._rows = RowMap(len(members.nodes))
        self._copies = Copies(members, config.block_size)
        self._writer = Writer(members, self._rows, self._copies, fingerprints,
                              replicas=config.replicas, min_replicas=config.min_replicas,
                              collisions=collisions)
        self.lost_copies = LostCopies()
        self._reader = Reader(members, self._rows, self._copies, fingerprints, self.why_lost)
        self._inventory = Inventory(members, self._rows, self._copies, self._reader)
        self._healer = Healer(members, self._rows, self._copies, self._reader,
                              replicas=config.replicas, sync=self._note_losses)
        self.corrupt = np.zeros(0, np.uint64)     # ids with no sound copy, ascending
        self.scrub_repaired = 0                   # copies a scrub rewrote, since open
        self._lost: list[str] = []     # losses a sync found, for the next commit to raise

    @property
    def collisions(self) -> int:
        return self._writer.collisions

    # -- write path ---------------------------------------------------------------------------

    def store_blocks(self, blocks: np.ndarray, digests: np.ndarray | None = None) -> np.ndarray:
        """Stores each block (n × block_size) on its nodes, or verifies it against a holder;
        returns their ids, referenced. `digests`: their fingerprints (n × 2 words) if known.
        Raises ReplicationError with nothing referenced."""
        return self._writer.store(blocks, digests)

    def decref(self, addrs: np.ndarray) -> None:
        if len(addrs) == 0:
            return
        with self._rows.lock:
            self._rows.decref(self._rows.rows_of(addrs))

    # -- read path ----------------------------------------------------------------------------

    def gather(self, addrs: np.ndarray) -> np.ndarray:
        """The bytes of each id, as n × block_size, from the first holder with a sound copy."""
        return self._reader.gather(addrs)

    @property
    def repaired(self) -> int:
        """Rotten copies rewritten from a sound replica (reads and scrubs), since open."""
        return self._reader.repaired

    def take_repairs(self) -> list[tuple[int, str, str]]:
        """The repairs not yet logged as events: (id, node, actor) each, handed over once."""
        return self._reader.take_repairs()

    # -- scrub --------------------------------------------------------------------------------

    def scrub_total(self) -> int:
        """Copies a scrub reads: every block every reachable node holds."""
        reachable = self.members.reachable_mask()
        return sum(n.blocks for n, r in zip(self.members.nodes, reachable) if r)

    def scrub(self, cursor: int, count: int) -> tuple[int, int, np.ndarray]:
        """Has the nodes re-read their copies, node by node, `count` slots at a time from
        `cursor` (node << SCRUB_NODE_SHIFT | slot) until some copies were read, and repairs
        each rotten copy of a live block from a sound replica (engine.cluster.reads). Returns
        (the next cursor; copies read, 0 once past the last node, and the cursor is then 0;
        the live ids found with no sound copy left, now known corrupt). An unreachable node is
        passed over."""
        k = len(self.members.nodes)
        node, slot = cursor >> SCRUB_NODE_SHIFT, cursor & ((1 << SCRUB_NODE_SHIFT) - 1)
        while node < k:
            part = (self._copies.scrub_part(node, slot, count)
                    if self.members.reachable_mask()[node] else None)
            if part is None:
                node, slot = node + 1, 0
                continue
            bad, read, nxt = part
            lost = self._repair_scrubbed(node, bad)
            node, slot = (node, nxt) if nxt else (node + 1, 0)
            if read:
                return node << SCRUB_NODE_SHIFT | slot, read, lost
        return 0, 0, np.zeros(0, np.uint64)

    def _repair_scrubbed(self, node: int, bad: np.ndarray) -> np.ndarray:
        """Rewrites `node`'s rotten copies of live ids from sound replicas; returns the ids
        with none left (now known corrupt)."""
        with self._rows.lock:
            bad = bad[self._rows.refcounts_at(self._rows.rows_of(bad)) > 0]
        step = self._copies.frame_blocks            # a frame's worth at a time
        lost = [np.zeros(0, np.uint64)]
        for start in range(0, len(bad), step):
            fixed, gone = self._reader.repair(node, bad[start:start + step])
            self.scrub_repaired += len(fixed)
            lost.append(gone)
        lost = np.concatenate(lost)
        if len(lost):
            self.corrupt = np.union1d(self.corrupt, lost)
        return lost

    # -- durability ---------------------------------------------------------------------------

    def sync(self) -> None:
        """Before the block tables commit: every node that took blocks makes them durable.
        Raises LostWritesError, once every node is synced, if a node restarted meanwhile and
        lost blocks still referenced that no other node holds (found here or by a heal's sync
        since): the commit logs it, and leaves out the VMs whose change references them
        (engine.pool.Pool._refuse_lost)."""
        self._note_losses()
        if self._lost:
            told, self._lost = self._lost, []
            raise LostWritesError("; ".join(told) + ": those writes are not durable")

    def _note_losses(self) -> None:
        """Syncs the nodes, and notes what restarted nodes lost: the ids still referenced with
        no holder left but them."""
        gone = self._copies.sync()
        if not gone:
            return
        names = self.members.names()
        with self._rows.lock:
            self._forget_mended()       # a loss told now is this one, not one made good since
            # A restarted node is no longer credited with what it lost: when its other holders
            # come back empty too (or are gone), no copy is left and that is told.
            for node, ids in gone.items():
                rows = self._rows.rows_of(ids)
                self._rows.unhold(rows[rows != 0], np.arange(len(names)) == node)
                self.lost_copies.note(BEFORE_DURABLE, node, ids)
            for node, ids in gone.items():
                rows = self._rows.rows_of(ids)
                lost = ((self._rows.refcounts_at(rows) > 0)
                        & ~self._rows.holders_at(rows).any(axis=1))
                if lost.any():
                    self._lost.append(f"node {names[node]} restarted and lost"
                                      f" {int(lost.sum())} blocks written since the last flush")

    @property
    def has_pending(self) -> bool:
        return self._rows.has_pending

    def keep_pending(self, ids: np.ndarray) -> None:
        """Until called again, a commit leaves `ids` unfreed even once nothing in RAM names
        them: a committed page still does, of a layer the commits leave out (a VM whose writes
        were lost, engine.pool.Pool._commit); their rows and copies stay."""
        with self._rows.lock:
            rows = self._rows.rows_of(np.asarray(ids, np.uint64))
            self._rows.keep_pending(rows[rows != 0])

    def seal(self) -> int:
        with self._rows.lock:
            return self._rows.seal()

    def unseal(self, epoch: int) -> None:
        with self._rows.lock:
            self._rows.unseal(epoch)

    def release(self, epoch: int) -> None:
        """The commit that sealed `epoch` is durable: ids nobody references any more leave
        their nodes."""
        with self._rows.lock:
            ids, held = self._rows.release(epoch)
            if len(ids):
                self._copies.drop(ids, held)

    # -- rebuild and returning nodes ----------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._rows.ready

    def rebuild(self, references: np.ndarray, *, pages: int, full: bool, progress, cancel,
                reclaim: bool) -> dict:
        """Refcounts from the block tables' references (every entry naming a block, from the
        core), holders from every node's inventory; `corrupt` as it was is kept in a fast rebuild.
        `progress` is called as the core calls it: (phase, done, total, bytes_per_s)."""
        figures, self.corrupt = self._inventory.rebuild(
            references, pages=pages, full=full, progress=engine_callback(progress),
            cancel=cancel, reclaim=reclaim, known_corrupt=self.corrupt)
        return figures

    def rejoin(self, node: int, reclaim: bool) -> None:
        """A returning node: its copies count again; what it should not hold, it drops. The
        live blocks it came back without that no up node holds now are noted (a read of one
        left with no copy says who lost it); those with copies elsewhere are not: a RAM node
        comes back without millions."""
        with self._rows.lock:
            self._forget_mended()
            live = self._rows.live_rows()
            credited = live[self._rows.holders_at(live)[:, node]]
        self._inventory.rejoin(node, reclaim)
        up = self.members.up_mask()
        with self._rows.lock:
            held = self._rows.holders_at(credited)
            gone = credited[~held[:, node] & ~(held & up[None, :]).any(axis=1)
                            & (self._rows.refcounts_at(credited) > 0)]
            self.lost_copies.note(CAME_BACK_WITHOUT, node, self._rows.ids_at(gone))

    # -- health and heal ----------------------------------------------------------------------

    def under_replicated(self) -> int:
        """Live ids with fewer than R copies on up nodes (a node being removed not counted)."""
        with self._rows.lock:
            return self._rows.under_replicated(self.members.placeable_mask(), self.replicas)

    def copies_in_doubt(self) -> bool:
        """Nodes lost copies of blocks not yet mended, or hold some they have not made durable
        and are down: a commit must check what it references (without_durable_copy)."""
        with self._rows.lock:
            self._forget_mended()
            lost = bool(self.lost_copies)
        return lost or self._copies.any_unsynced_down()

    def _forget_mended(self) -> None:
        """Forgets who lost the blocks now referenced by nobody (trimmed, written over, their
        writes dropped) or held by R nodes again (written again, healed, a holder back with its
        copy): their losses are over, and a read or fsck that named them later named the old
        loss, not the new one. Caller holds the row map's lock."""
        noted = self.lost_copies.ids()
        if not len(noted):
            return
        rows = self._rows.rows_of(noted)
        live = (rows != 0) & (self._rows.refcounts_at(rows) > 0)
        whole = self._rows.holders_at(rows).sum(axis=1) >= self.replicas
        self.lost_copies.forget(noted[~live | whole])

    def without_durable_copy(self, addrs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(lost, waiting): the distinct ids of `addrs` the row map knows that no node holds,
        up or not (their copies were lost), and those held only by nodes that went down before
        making them durable (a sync judges them once those answer). Both ascending."""
        ids = np.unique(np.asarray(addrs, np.uint64))
        with self._rows.lock:
            rows = self._rows.rows_of(ids)
            held = self._rows.holders_at(rows).copy()
        known = rows != 0
        lost = known & ~held.any(axis=1)
        for node, sent in self._copies.unsynced_down().items():
            held[:, node] &= ~np.isin(ids, sent)
        return ids[lost], ids[known & ~lost & ~held.any(axis=1)]

    def lost_blocks(self) -> int:
        """Live ids that no node holds a copy of, up or not."""
        with self._rows.lock:
            return int((~self._rows.holders_at(self._rows.live_rows()).any(axis=1)).sum())

    def why_lost(self, block_id: int) -> str:
        """Why `block_id` has no durable copy: its holders went down before making it durable,
        or (no node holds it) who lost it (engine.cluster.losses)."""
        names = self.members.names()
        with self._rows.lock:       # the record changes under it (noted, forgotten)
            held = self._rows.holders_at(self._rows.rows_of(np.array([block_id], np.uint64)))[0]
            if not held.any():
                return self.lost_copies.why(block_id, names)
        nodes = [names[n] for n in np.flatnonzero(held)]
        which = "nodes " if len(nodes) > 1 else "node "
        return (f"its only copies are on {which}{', '.join(nodes)}, down before it was made"
                " durable there")

    def per_node(self) -> tuple[np.ndarray, np.ndarray]:
        """For each node: live blocks it holds, and how many of those are under-replicated."""
        with self._rows.lock:
            return self._rows.per_node(self.members.placeable_mask(), self.replicas)

    def only_on(self, node: int) -> int:
        """Live blocks whose only copy on an up node is on `node`."""
        with self._rows.lock:
            return self._rows.only_on(node, self.members.up_mask())

    def without(self, node: int) -> tuple[int, int]:
        """What removing `node` means to the live blocks: (how many have fewer than R copies
        on the up nodes but it: the drain's copies, how many have no copy on them at all: held
        by it alone, or lost already)."""
        with self._rows.lock:
            up = self.members.up_mask()
            return (self._rows.short_without(node, up, self.replicas),
                    self._rows.bare_without(node, up))

    def forget(self, node: int) -> None:
        """A node removed from the cluster: it is credited with no copy any more."""
        with self._rows.lock:
            self._rows.set_node(node, np.zeros(0, np.int64))

    def heal(self, progress=None, cancel=None) -> dict:
        """Back to R copies on the placement targets; see engine.cluster.heal."""
        return self._healer.heal(progress, cancel)

    # -- views --------------------------------------------------------------------------------

    def live(self) -> np.ndarray:
        with self._rows.lock:
            return self._rows.live_ids()

    def live_page(self, offset: int, limit: int) -> tuple[int, np.ndarray]:
        live = self.live()
        return len(live), live[offset:offset + limit]

    def refcounts_of(self, addrs: np.ndarray) -> np.ndarray:
        with self._rows.lock:
            return self._rows.refcounts_at(self._rows.rows_of(np.asarray(addrs, np.uint64)))

    def holders_of(self, addrs: np.ndarray) -> list[list[str]]:
        """The names of the nodes holding a copy of each id, in the cluster's order (up or not:
        what the row map credits them with)."""
        names = self.members.names()
        with self._rows.lock:
            held = self._rows.holders_at(self._rows.rows_of(np.asarray(addrs, np.uint64)))
        return [[names[i] for i in np.flatnonzero(row)] for row in held]

    def fingerprints_of(self, addrs: np.ndarray) -> np.ndarray:
        """(id, second fingerprint word): for variant 0, the block's xxh3-128 itself."""
        addrs = np.asarray(addrs, np.uint64)
        with self._rows.lock:
            return np.stack([addrs, self._rows.words_at(self._rows.rows_of(addrs))], axis=1)

    def capacity(self) -> int:
        """Room for new block copies on the nodes that are up: each filesystem's free space
        counted once, however many nodes keep their blocks on it (a RAM node's unused memory is
        its own)."""
        room: dict = {}
        for i, (node, up) in enumerate(zip(self.members.nodes, self.members.up_mask())):
            if up:
                room[node.disk or i] = node.capacity_bytes
        return sum(room.values())

    def summary(self) -> dict:
        rows = self._rows
        with rows.lock:
            used = rows.used_count
            memory = rows.nbytes
            capacity = self.capacity()
            return {
                "unique_blocks": used,
                "free_slots": 0,
                "capacity_bytes": capacity,
                "usable_bytes": capacity // self.replicas,
                "collisions": self.collisions,
                "corrupt_blocks": len(self.corrupt),
                "refcount_histogram": rows.refcount_histogram(),
                "metadata_ram_bytes": memory,
                "metadata_ram_bytes_per_block": round(memory / used, 2) if used else 0,
                "replicas": self.replicas,
                "min_replicas": self.min_replicas,
                "under_replicated_blocks": self.under_replicated(),
                "lost_blocks": self.lost_blocks(),
                "repaired_copies": self.repaired,
            }

    def mark_corrupt(self, addrs: np.ndarray) -> None:
        """Ids known to have no sound copy (restored from the catalog at open)."""
        self.corrupt = np.union1d(self.corrupt, np.asarray(addrs, np.uint64))

    def fsck(self, references: np.ndarray, progress=None) -> list[dict]:
        """Refcounts against `references` (every table entry, from the core); every live id has
        R reachable, sound copies. Problem dicts, as engine.fsck reports them."""
        problems = Problems()
        check.check(self.members, self._rows, self._copies, self.replicas, references,
                    problems.report, engine_callback(progress), self.why_lost)
        return problems.found

    def close(self) -> None:
        pass
