"""Admin: what an operator can see and do, whichever pool answers (embedded or a cluster).

The console, the CLI and the NBD server use this interface and nothing below it. Results are the
frozen dataclasses of engine.results, with the same fields in every implementation. Every error
meant for a user is a BlockfoldError (engine.errors) whose message is one line; the subclasses
named below are the ones a caller may branch on. A cluster adds ReplicationError (a
BlockfoldError) to every change: too few nodes are up to keep `min_replicas` copies.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod

from .errors import RefusedError
from .progress import ProgressCallback
from .results import (BlockPage, Event, Extent, HealFigures, ImportResult, Job, NodeRemoval,
                      NodeStatus, PoolStats, Problem, RebuildFigures, ScrubFigures, Snapshot,
                      VMInfo, VMSnapshot, VMStats, WriteQuorum)


class Admin(ABC):
    """The interface. Thread-safe: the console calls it from worker threads."""

    kind: str
    """"pool" (embedded) or "cluster"."""
    name: str
    """The pool or cluster directory."""
    served: bool = False
    """True when a service runs this Admin (engine/service): it may keep background jobs going
    after the caller has gone, and it knows which VMs NBD clients have attached."""

    @property
    @abstractmethod
    def block_size(self) -> int:
        """Bytes per block, fixed when the pool was made."""

    @property
    @abstractmethod
    def rebuild_phases(self) -> tuple[str, ...]:
        """The phases a rebuild reports through its progress callback, in order."""

    def fenced(self) -> str:
        """Empty while this Admin's state is the newest; else one line saying why it is not (a
        cluster writer that a newer one fenced: engine/cluster/admin.py). A pool is never
        fenced."""
        return ""

    # -- volumes: what the NBD export serves --------------------------------------------------

    @abstractmethod
    def vm_names(self) -> list[str]:
        """Every VM's name, sorted."""

    @abstractmethod
    def vm_size(self, name: str) -> int:
        """The VM's size, bytes. Raises VMNotFoundError."""

    @abstractmethod
    def read(self, name: str, offset: int, length: int) -> bytes:
        """`length` bytes from `offset`; never-written ranges read as zeros.
        Raises VMNotFoundError, OutOfRangeError (past the end), BlockfoldError (a cluster with
        no reachable copy of a block)."""

    @abstractmethod
    def write(self, name: str, offset: int, data, force: bool = False) -> None:
        """Writes a bytes-like object at `offset`, deduplicated inline; durable after flush().
        A served pool refuses to change a VM that NBD clients have attached (RefusedError naming
        them) unless `force`, which detaches them first; the NBD export itself writes without
        asking. Data, not an event: an operator's write is write_file.
        Raises VMNotFoundError, OutOfRangeError, ReadOnlyError, NoSpaceError (nothing written),
        RefusedError (attached)."""

    @abstractmethod
    def write_file(self, name: str, offset: int, source, force: bool = False,
                   progress: ProgressCallback | None = None,
                   cancel: threading.Event | None = None) -> int:
        """Writes all of `source` into the VM from `offset` (`vm write`), in bounded memory
        whatever its length, as one change: it lands whole once the source has ended, or not at
        all (too long for the VM from `offset`, unreadable, no space, cancelled); it is one
        event under the caller's actor, durable when this returns. Returns the bytes written.
        `source`: a path (a file or block device: holes write zeros without being read; a FIFO
        or character device, read to its end), "-" for stdin, or an open source
        (engine.imageio.open_source). Attached VMs as for write. Progress phase "write", in
        bytes. Raises VMNotFoundError, OutOfRangeError (too long: nothing written),
        BadImageError (unreadable), NoSpaceError, ReadOnlyError, AttachedError,
        CancelledError."""

    @abstractmethod
    def trim(self, name: str, offset: int, length: int) -> None:
        """The range reads as zeros from now on, and the blocks only it used are freed.
        Raises VMNotFoundError, OutOfRangeError, ReadOnlyError."""

    @abstractmethod
    def extents(self, name: str, offset: int, length: int) -> list[Extent]:
        """The range's allocation, in order and covering it exactly: holes (no block behind,
        reads as zeros) and data. Runs start and end on block boundaries, except at the range's
        own ends. Raises VMNotFoundError, OutOfRangeError."""

    @abstractmethod
    def flush(self) -> None:
        """Makes every write and trim so far durable (does nothing when read-only). Raises
        AbortedError if the commit failed, or (a cluster) left out a VM's writes whose copies
        were lost: they are not durable (an NBD export's flush is judged for its own VM)."""

    # -- VMs ----------------------------------------------------------------------------------

    @abstractmethod
    def vms(self) -> list[VMStats]:
        """Every VM's figures, by name."""

    @abstractmethod
    def import_image(self, name: str, source, progress: ProgressCallback | None = None,
                     cancel: threading.Event | None = None) -> ImportResult:
        """Imports a raw image as a new VM, in one transaction: if it fails or is cancelled, no
        VM is left behind. Holes and zero blocks take no space. `source`: a file's path, "-" for
        stdin, or an open image (engine.imageio.Image's size, name, chunks() and close()).
        Progress phase "import", in bytes. Raises VMExistsError, BadNameError, BadImageError
        (unreadable, empty, not a regular file), NoSpaceError, ReadOnlyError, CancelledError."""

    @abstractmethod
    def export(self, name: str, dest, progress: ProgressCallback | None = None,
               cancel: threading.Event | None = None, snapshot: str | None = None) -> None:
        """Writes the VM byte for byte to `dest`, as it was when the export began (its NBD
        clients' writes meanwhile are not in it): a file's path (sparse where the VM has holes),
        "-" for stdout, or an open output (engine.imageio's write_blocks() and finish()).
        `snapshot`: the VM's snapshot of that name instead (its size then). Progress phase
        "export", in bytes. Raises VMNotFoundError (the VM, or its snapshot), BadImageError
        (cannot write), CancelledError, RefusedError."""

    @abstractmethod
    def clone(self, source: str, new: str, count: int = 1,
              progress: ProgressCallback | None = None,
              cancel: threading.Event | None = None) -> list[str]:
        """Makes `count` linked clones of `source`, O(1) each, all of it as it is now; returns
        their names: `new`, or NEW-1 … NEW-count when count > 1. They are made a batch at a
        time (engine.pool.CLONE_BATCH, each one transaction and one event), and the pool is let
        go between batches, so a huge count never holds NBD clients or other calls back for
        long. Progress phase "clone", in VMs. Raises VMNotFoundError, VMExistsError (any of the
        names, with nothing made), BadNameError, ReadOnlyError, RefusedError (count < 1),
        CancelledError (before anything was made); a failure or a cancel after the first batch
        is a BlockfoldError naming the clones made before it, which are kept."""

    @abstractmethod
    def delete(self, name: str, force: bool = False) -> None:
        """Deletes the VM and frees every block only it referenced. A served pool refuses to
        delete a VM that NBD clients have attached (RefusedError naming them) unless `force`,
        which detaches them first. Raises VMNotFoundError, ReadOnlyError, RefusedError."""

    @abstractmethod
    def clones_of(self, name: str) -> list[str]:
        """The VMs cloned from `name` (or rebased onto it), by name. Raises VMNotFoundError."""

    @abstractmethod
    def vm_info(self, name: str) -> VMInfo:
        """Everything about one VM: figures, clones, snapshots, attached NBD clients.
        Raises VMNotFoundError."""

    # -- desktops' lifecycle (each one layer edit, O(1) per VM) -------------------------------
    # A served pool refuses to change a VM that NBD clients have attached (AttachedError naming
    # them) unless `force`, which detaches them first.

    @abstractmethod
    def refresh(self, name: str, force: bool = False) -> None:
        """Drops the VM's own writes: it reads as the golden state it was cloned from again, at
        that state's size (VMInfo.base_size; a VM cloned before Blockfold kept it keeps its
        size) (Horizon's refresh). Raises VMNotFoundError, RefusedError (not a clone),
        AttachedError."""

    @abstractmethod
    def rebase(self, names: list[str], golden: str, keep_writes: bool = False,
               force: bool = False, shrink: bool = False) -> None:
        """Moves the VMs onto `golden`'s current state in one edit (Horizon's recompose, MCS's
        catalog update), at golden's size; golden's top is frozen first if it wrote since it
        was last frozen. keep_writes: each VM keeps its own writes on top (only a VM whose top
        sits right on its golden state: no snapshot or clone of its own above); else they are
        dropped. A VM larger than golden keeping its writes is shrunk only with `shrink` (what
        lies past golden's end is cut off, as resize cuts it). Raises VMNotFoundError,
        RefusedError (also: it would shrink a VM keeping its writes, without `shrink`),
        AttachedError."""

    @abstractmethod
    def rename(self, old: str, new: str, force: bool = False) -> None:
        """Renames a VM; its snapshots and its clones' origin follow. Raises VMNotFoundError,
        VMExistsError, BadNameError, AttachedError."""

    @abstractmethod
    def resize(self, name: str, size: int, shrink: bool = False, force: bool = False) -> None:
        """Sets the VM's size, bytes: growing reads as zeros; shrinking (only with `shrink`)
        cuts off what lies past the new end. Raises VMNotFoundError, OutOfRangeError,
        RefusedError (smaller without `shrink`), AttachedError."""

    @abstractmethod
    def take_snapshot(self, name: str, snap: str) -> None:
        """Names the VM's state now, O(1). Raises VMNotFoundError, VMExistsError (a snapshot of
        that name), BadNameError."""

    @abstractmethod
    def snapshots(self, name: str) -> list[VMSnapshot]:
        """The VM's snapshots, oldest first. Raises VMNotFoundError."""

    @abstractmethod
    def rollback(self, name: str, snap: str, force: bool = False) -> None:
        """The VM reads as at the snapshot again (its size too); what it wrote since goes, the
        snapshot stays. Raises VMNotFoundError (the VM or the snapshot), AttachedError."""

    @abstractmethod
    def remove_snapshot(self, name: str, snap: str) -> None:
        """Forgets a snapshot; the blocks only it held are freed. Raises VMNotFoundError."""

    # -- the pool -----------------------------------------------------------------------------

    @abstractmethod
    def stats(self) -> PoolStats:
        """Pool-wide figures, with every VM's and node's."""

    def snapshot(self, events: int = 100) -> Snapshot:
        """The figures and the `events` newest events: what a console shows, in one call."""
        return Snapshot(self.stats(), self.events(events))

    @abstractmethod
    def known_blocks(self, fingerprints: bytes) -> bytes:
        """For each of n fingerprints (n × 16 bytes, canonical xxh3-128 digests), one byte: 1 if
        the pool holds a live block with it, else 0. Read-only (a dedup estimate,
        engine.estimate). Raises BlockfoldError (not a whole number of fingerprints; a cluster:
        not supported yet)."""

    @abstractmethod
    def blocks(self, vm: str | None = None, min_refs: int | None = None,
               max_refs: int | None = None, prefix: str | None = None, offset: int = 0,
               limit: int = 100) -> BlockPage:
        """A page of the block table: blocks `vm` reads, read by [min_refs, max_refs] VMs (their
        BlockRow.readers, not their refcount), whose fingerprint starts with the hex `prefix`;
        rows offset … offset + limit.
        Raises VMNotFoundError, BlockfoldError (a prefix that is not up to 32 hex digits)."""

    @abstractmethod
    def rebuild(self, full: bool = False, progress: ProgressCallback | None = None,
                cancel: threading.Event | None = None) -> RebuildFigures:
        """Rebuilds the RAM metadata from the block tables (and, when full, by re-reading and
        re-hashing every block); reads go on meanwhile, writes wait. Progress phases:
        `rebuild_phases`. Raises CancelledError once `cancel` is set (the pool keeps the
        metadata it had)."""

    @abstractmethod
    def last_rebuild(self) -> RebuildFigures:
        """The figures of the most recent rebuild (every open rebuilds)."""

    @abstractmethod
    def fsck(self, progress: ProgressCallback | None = None,
             cancel: threading.Event | None = None) -> list[Problem]:
        """Checks every promise the pool makes about its own state; [] when all hold. Progress
        phase "fsck". Raises CancelledError once `cancel` is set."""

    @abstractmethod
    def scrub(self, rate: float | None = None, progress: ProgressCallback | None = None,
              cancel: threading.Event | None = None) -> ScrubFigures:
        """Verifies every live block against its fingerprint beside reads and writes (the anchor
        is `zpool scrub`), at most `rate` bytes a second if given; rotten blocks are remembered
        as corrupt. A scrub cancelled resumes where it stopped the next time. Progress phase
        "scrub", in blocks. A cluster's nodes each re-read every copy they hold, and each rotten
        copy is rewritten from a sound replica (`repaired`); corrupt are the blocks with no
        sound copy left. Raises ReadOnlyError."""

    # -- background jobs: what a service runs, for whoever asked ------------------------------

    def jobs(self) -> list[Job]:
        """The long calls running in the service (and the last few that ended), oldest first;
        [] when no service runs this Admin."""
        return []

    def jobs_from_clients(self) -> list[Job]:
        """The running jobs that closing this Admin cancels although its own caller did not ask
        for them: those that other clients asked of the service this process runs for it (a
        console serving the pool it opened), oldest first. [] for every other Admin: an
        embedded pool serves nobody, and closing a service's client cancels its own calls
        only."""
        return []

    def start_scrub(self, rate: float | None = None) -> Job:
        """Starts a scrub (see scrub) in the background of the service and returns at once.
        Raises RefusedError when no service runs this Admin: nothing would outlive the caller."""
        raise RefusedError("background work needs a service: start `blockfold serve`, or wait"
                           " for the scrub (--wait)")

    def cancel_job(self, job: int) -> Job:
        """Cancels a running job; returns it. Raises RefusedError (no such job running)."""
        raise RefusedError(f"no job {job}: no service runs this pool")

    @abstractmethod
    def events(self, limit: int = 100, since: float | None = None) -> list[Event]:
        """The `limit` newest events, newest first; only those at or after `since` (seconds
        since the epoch) if given."""

    # -- nodes --------------------------------------------------------------------------------

    @abstractmethod
    def nodes(self) -> list[NodeStatus]:
        """Every node's health (an embedded pool: itself, as node "local")."""

    @abstractmethod
    def only_copies(self, name: str) -> int:
        """How many live blocks have their only reachable copies on node `name` (held by no
        other up or suspect node): what failing it would make unreadable. Raises BlockfoldError
        (an embedded pool, an unknown node)."""

    @abstractmethod
    def writes_without(self, name: str) -> WriteQuorum:
        """How many nodes would answer without node `name` (every node not down but it), and
        how many a write needs: whether failing it would leave writes refused. Raises
        BlockfoldError (an embedded pool, an unknown node)."""

    @abstractmethod
    def fail_node(self, name: str) -> str:
        """Kills a local node's process: a real loss, for drills. Its event is recorded first,
        while the node can still take it (after, a fail that leaves no write majority could
        not commit it). Returns "" when the event was recorded, else why not (the node was
        failed anyway: writes were refused already). Raises BlockfoldError (an embedded pool,
        an unknown node, a node running elsewhere, a node that does not run), with nothing
        done."""

    @abstractmethod
    def restore_node(self, name: str) -> None:
        """Restarts a failed local node; it catches up and rejoins. Raises BlockfoldError (as
        fail_node)."""

    @abstractmethod
    def removal(self, name: str, force: bool = False) -> NodeRemoval:
        """What removing node `name` would copy (or lose), and the write majority after.
        Raises BlockfoldError, with nothing changed: an embedded pool, read-only, an unknown
        node, fewer nodes left than R or min_replicas, fewer than R other nodes up, a node
        down with blocks no other node that answers holds (unless `force`)."""

    @abstractmethod
    def remove_node(self, name: str, force: bool = False, delete_data: bool = False,
                    progress: ProgressCallback | None = None,
                    cancel: threading.Event | None = None) -> NodeRemoval:
        """Removes node `name` (engine/cluster/removal.py names the phases): out of
        placement, its blocks copied (node to node, as heal's) until every live block has R
        copies on the other nodes (`force`: but those only it held, while down); its removal
        committed in the catalog while the majority still counts it; then it is gone: out of
        cluster.json, its etcd key revoked, a local node stopped and its data dir marked
        removed (deleted with `delete_data`), and this Admin runs on without it, writes
        needing a majority of the others. Progress phase "heal", in blocks. Raises as
        removal, and BlockfoldError (another removal running; the copies stopped: a drain
        that stalls), CancelledError; then the node stays, back in placement."""

    @abstractmethod
    def heal(self, wait: bool = True, progress: ProgressCallback | None = None,
             cancel: threading.Event | None = None) -> HealFigures:
        """Copies every block short of R copies (or off its place) to the nodes placement wants
        it on, then drops copies beyond R; with `wait`, until none is short. Progress phase
        "heal", in blocks. Raises BlockfoldError (an embedded pool; read-only; blocks with no
        reachable copy; fewer than R nodes up), CancelledError."""

    # -- lifetime -----------------------------------------------------------------------------

    @abstractmethod
    def close(self) -> None:
        """Flushes, marks the pool cleanly closed and lets it go."""

    def __enter__(self) -> Admin:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
