"""The block layer: what a pool's tables point into.

A pool's data path (block tables, partial blocks, zero handling, atomicity per request, commits)
is the native core's, written once over a block layer (native/src/backend.rs). A local pool's
layer is native too: its slots, index, refcounts and free space, inside the core, which then
answers the views below itself (`Pool.blocks is Pool.core`). A block layer written in Python (a
cluster's ClusterBlocks, engine/cluster/blocks.py, keeping each block on R nodes) implements this
Protocol; the core calls its write-path, read-path, durability and rebuild methods with the core's
lock held and the GIL taken, and such a layer never calls back into the core. Addresses are
uint64, never 0 (0 means "no block" in a table) nor 2^64-1.

Refcounts count table entries (layer references), not VMs. A block whose last reference goes is
*pending* until the commit that dropped it is durable: `seal()` closes the pending set when a commit
takes its snapshot; `release(epoch)` after the commit makes those blocks reusable (or drops them
from their nodes); `unseal(epoch)` hands them back to pending when the commit failed.

Progress callbacks passed by the core take four arguments: (phase, done, total, bytes_per_s).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class BlockLayer(Protocol):
    block_size: int
    collisions: int             # fingerprints that matched other bytes, since the pool was made
    corrupt: np.ndarray         # addresses known rotten (every copy, in a cluster), ascending
    rebuild_phases: tuple[str, ...]   # the phases rebuild() reports, in order
    import_blocks: int          # blocks an import writes at a time: the layer's best batch

    # -- write path (called by the core) ------------------------------------------------------
    def store_blocks(self, blocks: np.ndarray, digests: np.ndarray | None = None) -> np.ndarray:
        """Stores or shares each of n blocks (n × block_size uint8, none all zeros; digests: their
        xxh3-128 as n × 2 uint64 words, the canonical digest bytes viewed as native words);
        returns their n addresses, each referenced once more. A match is shared only if its
        bytes are equal. All or nothing: raises RefusedError (a cluster's ReplicationError) with
        no reference taken."""

    def decref(self, addrs: np.ndarray) -> None:
        """Drops one reference from each address (repeats count); the last one makes it pending.
        Cannot fail for addresses the layer handed out."""

    # -- read path (called by the core) -------------------------------------------------------
    def gather(self, addrs: np.ndarray) -> np.ndarray:
        """The bytes of each address, as n × block_size uint8, each checked against its
        fingerprint: rotten bytes are never returned (a cluster asks another replica). Raises
        BlockfoldError naming a block with no sound copy left."""

    # -- durability (called by the core) ------------------------------------------------------
    def sync(self) -> None:
        """Every block stored so far is durable (before the tables that point at it commit).
        Called without the core's lock."""

    @property
    def has_pending(self) -> bool:
        """Blocks lost their last reference since the last seal."""

    def seal(self) -> int:
        """Closes the current epoch of pending blocks; returns its number."""

    def release(self, epoch: int) -> None:
        """The commit that sealed `epoch` is durable: its blocks become free."""

    def unseal(self, epoch: int) -> None:
        """The commit that sealed `epoch` failed: its blocks are pending again."""

    # -- rebuild and checks (called by the core, with the block tables' references) ----------
    @property
    def ready(self) -> bool:
        """The RAM metadata exists (a rebuild has run)."""

    def rebuild(self, references: np.ndarray, *, pages: int, full: bool, progress, cancel,
                reclaim: bool) -> dict:
        """Rebuilds refcounts and whatever finds blocks from `references` (every table entry
        naming a block, with repeats, out of `pages` pages); full re-reads every block and
        reports those whose bytes no longer match their fingerprint, fast keeps `corrupt` (those
        still referenced). Returns the figures (the keys of native rebuild's, see API.md).
        Raises CancelledError."""

    def fsck(self, references: np.ndarray, progress=None) -> list[dict]:
        """Checks refcounts against `references` (every table entry, taken while no change can
        happen) and every stored block; returns problem dicts (kind, message, pbn, …)."""

    # -- views (called by the pool) -----------------------------------------------------------
    def mark_corrupt(self, addrs: np.ndarray) -> None:
        """Remembers addresses as corrupt (restored from the catalog at open)."""

    def live(self) -> np.ndarray:
        """Every referenced address, ascending."""

    def live_page(self, offset: int, limit: int) -> tuple[int, np.ndarray]:
        """How many addresses are referenced, and `limit` of them from the `offset`-th on,
        ascending: a page of live() without building it whole."""

    def refcounts_of(self, addrs: np.ndarray) -> np.ndarray:
        """The refcount of each address (0 if unknown)."""

    def fingerprints_of(self, addrs: np.ndarray) -> np.ndarray:
        """Each address's fingerprint, as n × 2 uint64 words."""

    def holders_of(self, addrs: np.ndarray) -> list[list[str]]:
        """The names of the nodes holding a copy of each address."""

    def summary(self) -> dict:
        """Pool-wide figures of the block layer (see engine/stats.py)."""

    def close(self) -> None:
        """Releases files and connections."""
