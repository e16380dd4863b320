"""The block layer: what a pool's tables point into.

`Pool` does the table work (layers, clones, deletes, partial blocks, commits) over a block layer
that stores, shares, reads and frees blocks by address. Two implement it: `LocalBlocks` (slots in
this pool's files, engine/localblocks.py) and `ClusterBlocks` (block ids kept on R nodes,
engine/cluster/blocks.py). Addresses are uint64, never 0 (0 means "no block" in a table).

Refcounts count table entries (layer references), not VMs. A block whose last reference goes is
*pending* until the commit that dropped it is durable: `seal()` closes the pending set when a commit
takes its snapshot; `release(epoch)` after the commit makes those blocks reusable (or drops them
from their nodes); `unseal(epoch)` hands them back to pending when the commit failed.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from .progress import ProgressCallback
from .rebuild import PageScan


class BlockLayer(Protocol):
    block_size: int
    collisions: int             # fingerprints that matched other bytes, since the pool was made
    corrupt: np.ndarray         # addresses known rotten (every copy, in a cluster), ascending

    # -- write path ---------------------------------------------------------------------------
    def store_blocks(self, blocks: np.ndarray) -> np.ndarray:
        """Stores or shares each of n blocks (n × block_size uint8, none all zeros); returns
        their n addresses, each referenced once more. A match is shared only if its bytes are
        equal. All or nothing: raises RefusedError (NoSpaceError; a cluster's ReplicationError)
        with no reference taken."""

    def decref(self, addrs: np.ndarray) -> None:
        """Drops one reference from each address (repeats count); the last one makes it pending."""

    # -- read path ----------------------------------------------------------------------------
    def gather(self, addrs: np.ndarray) -> np.ndarray:
        """The bytes of each (non-zero) address, as n × block_size uint8, each checked against
        its fingerprint. Raises CorruptBlockError (the address joins `corrupt`) rather than
        return rotten bytes."""

    def block_bytes(self, addr: int) -> bytes:
        """The bytes of one address, checked as gather() checks them."""

    # -- durability ---------------------------------------------------------------------------
    def sync(self) -> None:
        """Every block stored so far is durable (before the tables that point at it commit)."""

    @property
    def has_pending(self) -> bool:
        """Blocks lost their last reference since the last seal."""

    def seal(self) -> int:
        """Closes the current epoch of pending blocks; returns its number."""

    def release(self, epoch: int) -> None:
        """The commit that sealed `epoch` is durable: its blocks become free."""

    def unseal(self, epoch: int) -> None:
        """The commit that sealed `epoch` failed: its blocks are pending again."""

    # -- rebuild ------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """The RAM metadata exists (a rebuild has run)."""

    def rebuild(self, pages: PageScan, *, full: bool, progress: ProgressCallback | None,
                cancel, reclaim: bool, known_corrupt: np.ndarray) -> dict:
        """Rebuilds refcounts, the index and free space from the references in `pages`; full
        re-reads every block and reports those whose bytes no longer match their fingerprint,
        fast keeps `known_corrupt` (those still referenced) as corrupt.
        Returns the figures (see engine/rebuild.py). Raises CancelledError."""

    # -- views --------------------------------------------------------------------------------
    def live(self) -> np.ndarray:
        """Every referenced address, ascending."""

    def refcounts_of(self, addrs: np.ndarray) -> np.ndarray:
        """The refcount of each address (0 if unknown)."""

    def fingerprints_of(self, addrs: np.ndarray) -> np.ndarray:
        """Each address's fingerprint, as n × 2 uint64 words."""

    def summary(self) -> dict:
        """Pool-wide figures of the block layer (see engine/stats.py)."""

    def fsck(self, references: np.ndarray, report, progress) -> None:
        """Checks refcounts against `references` (every table entry) and every stored block;
        calls report(kind, message, **where) for each problem."""

    def close(self) -> None:
        """Releases files and connections."""
