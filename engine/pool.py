"""A pool: VMs over the native core, with the one owner of every change and every commit.

A pool is a directory holding the sqlite catalog (catalog.db) and the slot files (blocks.dat,
hashes.dat); a cluster's coordinator is the same Pool over another block layer and catalog. Every
per-block step runs in the native core (`engine._native.Core`, native/API.md): the block-table
pages of every layer, the data path (writes deduplicated inline, reads verified), and, for a local
pool, the slots, index, refcounts and free space. A cluster's core stores its blocks through its
Python block layer (engine/blocklayer.py) instead. This module keeps the catalog and decisions.

Changes, and who owns them (the model is LevelDB's VersionSet::LogAndApply):
- A data op (write, trim) goes straight to the core, with no Python lock around it: it is atomic
  there, happens whole or is refused (RefusedError) with nothing changed, and writes no sqlite.
- `_commit` is the only place anything becomes durable: snapshot the dirty block-table pages and
  seal the blocks freed since the last commit, sync the blocks, then write the pages (and a
  structural edit's rows) in one sqlite transaction. If that fails it rolls back and RAM keeps
  every acknowledged write for the next commit (AbortedError); freed blocks are reused only once
  the drop that freed them is durable, so a committed reference always points at durable bytes.
- A structural change (create, clone, delete, an import's registration) is a LayerEdit value:
  planned from the graph while the core's gate holds data ops back, committed, and only then
  applied to the graph and the core.

Thread-safe. Data ops run in parallel (the core serialises writes); commits and structural edits
take the pool's lock. After open, reads are served at once while the RAM metadata is rebuilt;
writes wait for the rebuild to finish.
"""

from __future__ import annotations

import itertools
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np

from . import (_native, blockview, diskformats, formats, fsck as fsck_mod, imageio,
               processid, stats as stats_mod)
from .actor import current as current_actor
from .blocklayer import BlockLayer
from .blockstore import DATA_FILE, HASH_FILE
from .catalog import CATALOG_FILE, Catalog, unreadable
from .core import engine_error, import_vm
from .errors import (AbortedError, BlockfoldError, CancelledError, LostWritesError,
                     NoSpaceError, NotAPoolError, NotDurableError, OutOfRangeError,
                     PoolFormatError, PoolLockedError, ReadOnlyError, RefusedError)
from .layergraph import VM, LayerEdit, LayerGraph, Relinked
from .lock import LOCK_FILE, PoolLock, ReadLock
from .names import check_vm_size
from .options import BLOCK_SIZES
from .progress import Meter, ProgressCallback, core_callback
from .reserve import (COMMIT_FAILED, OPEN_FAILED, Reserve, disk_full, filesystem_full,
                      filesystem_nearly_full)

DEFAULT_BLOCK_SIZE = 4096
WRITER = "writer"       # catalog meta: the identity (engine.processid) of a local pool's writer
POOL_ID = "pool_id"     # catalog meta: 32 hex digits, stamped in the slot files too


def _refuse_other_pools_files(path: Path, catalog: Catalog, core) -> None:
    """PoolFormatError if a slot file is stamped with another pool's id than the catalog's: it
    was copied or moved here from another pool. Its blocks match their own fingerprints, so
    nothing else notices: the pool served the other pool's data as its own, and fsck said
    clean. Files not stamped yet (older pools) pass."""
    want = catalog.get(POOL_ID)
    for file, stamp in zip((DATA_FILE, HASH_FILE), core.slot_owner()):
        if not any(stamp) or stamp.hex() == want:
            continue
        if want:
            raise PoolFormatError(
                f"{path / file} is another pool's file (stamped with pool id {stamp.hex()},"
                f" this pool's is {want}): it was copied or moved here; put this pool's own"
                f" {DATA_FILE} and {HASH_FILE} back (nothing was changed)")
        # A catalog older than ids never had stamped files beside it (it gets its id before
        # they are stamped): one of the two is another pool's.
        raise PoolFormatError(
            f"{path / file} is stamped with pool id {stamp.hex()}, but {path / CATALOG_FILE}"
            " names no pool id: one of them is another pool's; put this pool's own files back,"
            " or, if the catalog is this pool's own restored from a backup made before pool"
            f" ids, give it the id: sqlite3 {path / CATALOG_FILE} \"INSERT INTO meta VALUES"
            f" ('{POOL_ID}', '{stamp.hex()}')\" (nothing was changed)")


def _refuse_live_writer(path: Path, catalog: Catalog) -> None:
    """PoolLockedError if the catalog names a writer that still runs: DIR/lock was removed or
    replaced under it (a "stale lock" cleanup, a tmp reaper), and our lock on the new file
    would make two writers, each handing out the same free slots."""
    writer = catalog.get(WRITER)
    if catalog.get("state") != "dirty" or not writer or writer == processid.this():
        return
    if processid.running(writer):
        raise PoolLockedError(
            f"pool {path} is in use by another process (pid {writer.split(' ')[2]}), though its"
            f" lock file {path / LOCK_FILE} was removed or replaced while it ran: stop that"
            " process first")


def check_block_size(block_size: int) -> None:
    """RefusedError in one line unless `block_size` (bytes) is one a pool takes (BLOCK_SIZES):
    a pool's, and a node's store's, which holds blocks the same way."""
    if block_size not in BLOCK_SIZES:
        raise RefusedError(f"bad block size {block_size}: use a power of two from 4096 to"
                           " 65536")
SCRUB_BATCH = 4096          # blocks verified under the lock at a time
CLONE_BATCH = 1000          # clones made under the lock at a time (~20 ms; ~0.2 s on a cluster)
# Clones one command may make: every VM costs RAM in every open of the pool (100 M asked made
# 29 M in 9.5 min, and then no open of the pool fit in 24 GiB).
MAX_CLONES = 1_000_000
SCRUB_SAVE_S = 5.0          # how often a scrub commits where it got to
SCRUB_PACE_S = 0.1          # under a rate, a scrub reads this long's worth of blocks at a time
IMPORT_CHUNK_BLOCKS = _native.PAGE_ENTRIES
IMPORT_SIZE = 1 << 62       # an import's provisional VM in the core: any image fits


def _unopened(path: Path, e: Exception) -> BlockfoldError:
    """Why a catalog could not be opened: its filesystem is full (sqlite cannot make its WAL
    there: "disk I/O error", not damage), or what `unreadable` says."""
    if isinstance(e, sqlite3.OperationalError) and (disk_full(e) or filesystem_nearly_full(path)):
        return NoSpaceError(filesystem_full(path, COMMIT_FAILED if disk_full(e) else OPEN_FAILED))
    return unreadable(path / CATALOG_FILE, e)


def _no_catalog(path: Path) -> BlockfoldError | None:
    """Why `path` has no catalog to open, if it has none: a directory holding slot files is a
    pool whose catalog.db was lost (removed, or left empty by a crash on a filesystem that does
    not order data), said naming the file (PoolFormatError); any other is not a pool. An empty
    file is never handed to sqlite, which would take it for a new database (and delete the WAL
    beside it). None: there is a catalog to open."""
    catalog = path / CATALOG_FILE
    try:
        size = catalog.stat().st_size
    except FileNotFoundError:
        size = None
    if size:
        return None
    slots = [name for name in (DATA_FILE, HASH_FILE) if (path / name).exists()]
    if not slots:
        return NotAPoolError(f"{path} is not a Blockfold pool")
    return PoolFormatError(f"{catalog} is {'missing' if size is None else 'empty (0 bytes)'},"
                           f" but {' and '.join(slots)} beside it hold a pool's blocks: restore"
                           " catalog.db from a backup; nothing was changed")


class Pool:
    # -- creation and opening -----------------------------------------------------------------

    @staticmethod
    def create(path, block_size: int = DEFAULT_BLOCK_SIZE) -> Path:
        path = Path(path)
        check_block_size(block_size)
        if path.is_dir():
            lost = _no_catalog(path)
            if lost is None:
                raise RefusedError(f"{path} is already a Blockfold pool")
            if isinstance(lost, PoolFormatError):   # a pool whose catalog was lost
                raise lost
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise RefusedError(f"{path} exists and is not an empty directory")
        path.mkdir(parents=True, exist_ok=True)
        catalog = Catalog(path / CATALOG_FILE)
        catalog.create_schema(block_size)
        pool_id = uuid.uuid4()
        catalog.set(POOL_ID, pool_id.hex)
        catalog.close()
        core = _native.Core(str(path), block_size, create=True)
        core.stamp_owner(pool_id.bytes)
        core.close()
        Reserve(path).hold()
        return path

    @classmethod
    def open(cls, path, *, readonly: bool = False, rebuild: str | None = None,
             progress: ProgressCallback | None = None, wait: bool = True,
             actor: str = "cli", colliding_fingerprint: bytes | None = None) -> Pool:
        """Opens a pool and rebuilds its RAM metadata.

        rebuild: "fast" (stored fingerprints) or "full" (re-hash every block); by default fast.
        "repair": full, after repairing what a truncated, deleted or replaced slot file left
        (`Core.repair`: fingerprints computed again from the data; references past the end of
        the data file get a slot, known corrupt), and a damaged blocks.dat header once the file
        shows it is this pool's (`_native.repair_header`).
        wait: False returns at once and serves reads while the rebuild runs in the background.
        colliding_fingerprint: 16 bytes that every block gets as its fingerprint (collision
        tests only).
        Raises NotAPoolError, PoolFormatError, PoolLockedError (another process writes it).
        """
        path = Path(path)
        if not path.is_dir():
            raise NotAPoolError(f"{path} is not a Blockfold pool (no such directory): make one"
                                f" with `blockfold pool init {path}`")
        if (lost := _no_catalog(path)) is not None:
            raise lost
        lock = None if readonly else PoolLock(path)
        reserve = None if readonly else Reserve(path)
        try:
            if reserve is not None:
                reserve.release_if_full()
            catalog = Catalog(path / CATALOG_FILE, readonly=readonly)
            catalog.check_format(path)
            if lock:
                _refuse_live_writer(path, catalog)
            block_size = int(catalog.get("block_size"))
            # Slot files are made with the pool; a catalog that holds no block may lose them.
            create = not readonly and (rebuild == "repair" or not catalog.has_pages())
            header_rewritten = False
            if rebuild == "repair" and not readonly:
                try:
                    header_rewritten = _native.repair_header(str(path), block_size)
                except _native.NativeError as e:
                    raise engine_error(e) from None

            def new_core():
                try:
                    core = _native.Core(str(path), block_size, readonly=readonly, create=create,
                                        colliding_fingerprint=colliding_fingerprint)
                except _native.NativeError as e:
                    raise engine_error(e) from None
                try:
                    _refuse_other_pools_files(path, catalog, core)
                except BaseException:
                    core.close()
                    raise
                return core

            pool = cls(path, catalog, new_core, None, lock, readonly, actor)
            pool._reserve = reserve
            pool._header_rewritten = header_rewritten
        except BaseException as e:
            if lock:
                lock.release()
            # What the catalog holds cannot be loaded: a damaged file, or rows of the wrong
            # type or shape (the core refuses pages and layers that make no pool).
            if isinstance(e, (sqlite3.DatabaseError, ValueError, TypeError, OverflowError,
                              _native.NativeError)):
                raise _unopened(path, e) from None
            raise
        try:
            return pool._start(rebuild, progress, wait)
        except sqlite3.DatabaseError as e:
            raise _unopened(path, e) from None

    @classmethod
    def attach(cls, path, catalog: Catalog, blocks: BlockLayer, *, readonly: bool = False,
               rebuild: str | None = None, progress: ProgressCallback | None = None,
               wait: bool = True, actor: str = "cli") -> Pool:
        """A pool over an open catalog and a block layer written in Python (a cluster's): the
        core stores its blocks through `blocks`. Marks it in use and rebuilds its RAM metadata."""
        def new_core():
            return _native.Core.over(blocks, blocks.block_size, readonly=readonly)
        return cls(path, catalog, new_core, blocks, None, readonly, actor)._start(
            rebuild, progress, wait)

    def __init__(self, path, catalog: Catalog, new_core, blocks: BlockLayer | None, lock,
                 readonly: bool, actor: str):
        self.path = path
        self.catalog = catalog
        self.readonly = readonly
        self.actor = actor
        # The catalog as this pool loads it, for a read-only one's long read (_unwritten).
        self._loaded_version = catalog.data_version() if readonly and blocks is None else None
        self._new_core = new_core
        self._lock = threading.RLock()        # commits and structural edits, one at a time
        self._lock_file = lock
        self._reserve: Reserve | None = None    # a local pool's, when writable
        self._repaired: str | None = None       # a repair's event, until a commit logs it
        self._header_rewritten = False          # the repair rewrote blocks.dat's header
        self._ready = threading.Event()
        self._rebuild_error: BaseException | None = None
        self._commits = 0                     # commits begun
        self._committed = 0                   # the number of the last one that succeeded
        self._left_out: dict[int, str] = {}   # the last commit's: VMs' tops left out, and why
        self._kept: dict[int, np.ndarray] = {}  # left-out layers: what their committed pages name
        self._keeping: frozenset[int] = frozenset()     # the layers whose _kept the blocks keep
        self.last_rebuild: dict = {}
        self._corrupt_saved = catalog.corrupt_addresses()
        self._views = itertools.count(1)      # frozen()'s names in the core
        self._load(blocks)
        self.block_size = self.core.block_size

    def _load(self, blocks: BlockLayer | None) -> None:
        """A core with the graph and the pages as the catalog holds them (at open)."""
        self.graph = LayerGraph(self.catalog.vms(), self.catalog.layer_parents(),
                                self._next_layer(), self.catalog.snaps())
        if unsound := self.graph.unsound():
            # Said here, as the rows that are wrong: the core would only say which VM it
            # could not place (its top, never reached from a root).
            raise ValueError("; ".join(unsound))
        core = self._new_core()
        self._left_out, self._kept = {}, {}     # RAM is the catalog again: nothing left out
        # The core is a local pool's block layer: it answers the views a Python one answers.
        self.blocks = core if blocks is None else blocks
        tops = {vm.top for vm in self.graph.vms()}
        for layer in self.graph.parents_first():
            core.add_layer(layer, self.graph.parent(layer), layer in tops)
        core.load_pages(self.catalog.scan_pages())
        for vm in self.graph.vms():
            core.set_vm(vm.name, vm.top, vm.size)
        if blocks is None:
            core.collisions = int(self.catalog.get("collisions") or 0)
        self.blocks.mark_corrupt(self._corrupt_saved)
        self.core = core
        self.view = blockview.BlockView(self)

    def _next_layer(self) -> int:
        """The id the next new layer takes: meta `next_layer`, or past every id in use if it
        lags them (a catalog restored in part): a clone took id 1 again and replaced the
        golden's base row, and no open of the pool worked after. fsck reports the lag."""
        return max(int(self.catalog.get("next_layer")), self.catalog.layer_ids_end())

    def _start(self, rebuild: str | None, progress, wait: bool) -> Pool:
        crashed = self.catalog.get("state") == "dirty"
        if not self.readonly:
            self.catalog.ensure_tables()
            # Who writes it, for an opener whose lock says nothing (_refuse_live_writer).
            writer = processid.this() if self._lock_file else None
            self._durably(lambda: self.catalog.mark_dirty(writer))
            if self._lock_file:
                self._stamp_slot_files()
        reason = "crash" if crashed else ("requested" if rebuild else "open")
        if rebuild == "repair":
            self._repair()
            reason = "repair"
        self._start_rebuild(rebuild in ("full", "repair"), reason, progress,
                            background=not wait)
        return self

    def _stamp_slot_files(self) -> None:
        """Stamps the slot files that lack it with the pool's id (`_refuse_other_pools_files`),
        giving a pool older than ids one first: the catalog's, durable before any file names
        it, so a crash between the two leaves files that are merely not stamped yet."""
        pool_id = self.catalog.get(POOL_ID)
        if not pool_id:     # its files are not stamped either: the open refused them
            pool_id = uuid.uuid4().hex
            self._durably(lambda: self.catalog.set(POOL_ID, pool_id))
        if not all(any(stamp) for stamp in self.core.slot_owner()):
            self.core.stamp_owner(bytes.fromhex(pool_id))

    def _repair(self) -> None:
        """The core's repair, told in the event log (committed with the rebuild after it)."""
        try:
            computed, lost = self.core.repair()
        except _native.NativeError as e:
            raise engine_error(e) from None
        header = "blocks.dat's damaged header rewritten; " if self._header_rewritten else ""
        message = f"repair: {header}{computed} fingerprints computed again from the data"
        if len(lost):
            shown = ", ".join(map(str, lost[:10])) + (" …" if len(lost) > 10 else "")
            message += (f"; {formats.count(len(lost))} blocks whose data is gone are corrupt"
                        f" (slots {shown})")
        self._repaired = message

    @property
    def local(self) -> bool:
        """The pool keeps its blocks in its own slot files (not a cluster's nodes)."""
        return self.blocks is self.core

    def held_by(self, what: str, command: str, advice: str) -> None:
        """Names what holds the pool to the openers it refuses (engine/lock.py PoolLock.held_by);
        nothing for a read-only pool, which holds no lock."""
        if self._lock_file:
            self._lock_file.held_by(what, command, advice)

    def close(self, commit: bool = True) -> None:
        """Commits, marks the pool clean and releases it. `commit` False: releases it only (a
        fenced cluster writer's pool, whose commits a newer writer's epoch refuses)."""
        self._ready.wait()
        with self._lock:
            if self.catalog is None:
                return
            try:
                if commit and not self.readonly and self._rebuild_error is None:
                    self._commit()
                    self._refuse_left_out()     # not clean: those writes are not in it
                    self._durably(lambda: self.catalog.set("state", "clean"))
            finally:
                self.catalog.close()
                if self.readonly:
                    self._remember_corrupt()
                self.core.close()
                if not self.local:
                    self.blocks.close()
                if self._lock_file:
                    self._lock_file.release()
                self.catalog = None

    def _remember_corrupt(self) -> None:
        """A read-only opener that found rotten blocks records them if no writer holds the pool
        (a writer's service records what its own reads find)."""
        new = np.setdiff1d(self.blocks.corrupt, self._corrupt_saved)
        if not len(new) or not self.local:
            return
        try:
            lock = PoolLock(self.path)
        except (BlockfoldError, OSError):
            return
        try:
            catalog = Catalog(self.path / CATALOG_FILE)
            try:
                catalog.ensure_tables()
                catalog.begin()
                catalog.set_corrupt(np.union1d(catalog.corrupt_addresses(), new))
                catalog.commit()
            finally:
                catalog.close()
        finally:
            lock.release()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- rebuild ------------------------------------------------------------------------------

    def _start_rebuild(self, full: bool, reason: str, progress, background: bool) -> None:
        self._ready.clear()
        if not background:
            self._run_rebuild(full, reason, progress, None)
            return

        def run():
            try:
                self._run_rebuild(full, reason, progress, None)
            except BaseException:      # noqa: BLE001 - kept in _rebuild_error:
                pass                   # the next write reports it

        threading.Thread(target=run, name="blockfold-rebuild", daemon=True).start()

    def _run_rebuild(self, full: bool, reason: str, progress, cancel) -> dict:
        """The core rebuilds from the pages in RAM (reads go on, writes wait); the figures are
        recorded in the catalog."""
        self._keeping = frozenset()     # a rebuild's row map keeps nothing pending
        try:
            try:
                figures = self.core.rebuild(full=full, reclaim=not self.readonly,
                                            progress=core_callback(progress), cancel=cancel)
            except _native.NativeError as e:
                raise engine_error(e) from None
        except BaseException as e:
            if not self.core.ready:     # nothing to fall back on; a live pool keeps what it had
                self._rebuild_error = e
            self._ready.set()
            if isinstance(e, CancelledError) and not self.readonly:
                self.log_event("rebuild", f"{'full' if full else 'fast'} rebuild ({reason})"
                                          " cancelled: the metadata it had is kept",
                               current_actor(self.actor))
            raise
        with self._lock:
            figures = dict(figures, reason=reason, damage=self.core.damage)
            self.last_rebuild = figures
            repaired, self._repaired = self._repaired, None
            actor = current_actor(self.actor)

            def rows(catalog) -> None:
                catalog.record_rebuild(figures, actor)
                if repaired:
                    catalog.log(actor, "repair", repaired)
            try:
                if not self.readonly:
                    self._commit(rows=rows)
            finally:
                # RAM is rebuilt whether or not its record commits: waiters must not hang.
                self._ready.set()
        if reason == "crash" and not self.readonly:
            self._fold_back()
        return figures

    def _fold_back(self) -> None:
        """After a crash: the frozen layers exports held when it came (frozen) are folded back
        as the exports' ends would have folded them (LayerGraph.plan_fold_back), in one
        commit, so a VM is not left one layer deeper (and refused `rebase --keep-writes`)
        until its next delete, refresh or rollback. A tidy-up: on a failure they stay."""
        try:
            with self._changing(), self._paused():
                edit = self.graph.plan_fold_back()
                if edit.dropped:
                    self._commit(self._with_merges(edit, []))
        except BlockfoldError:
            pass

    def rebuild(self, full: bool = False, progress: ProgressCallback | None = None,
                cancel: threading.Event | None = None) -> dict:
        """Rebuilds the RAM metadata of an open pool; reads go on meanwhile, writes wait."""
        self._wait_ready()
        with self._lock:
            if not self.readonly:
                self._commit()
                # A rebuild counts RAM's references: the blocks only the committed pages of a
                # VM left out name would be dropped as orphans.
                self._refuse_left_out()
            self._ready.clear()
        return self._run_rebuild(full, "requested", progress, cancel)

    def _wait_ready(self) -> None:
        self._ready.wait()
        if self._rebuild_error is not None:
            raise BlockfoldError(f"rebuild failed: {self._rebuild_error}")

    @property
    def rebuilding(self) -> bool:
        return not self._ready.is_set()

    # -- changes and commits ------------------------------------------------------------------

    @contextmanager
    def _changing(self):
        """Runs a structural change or commit under the pool's lock once the pool may be written.

        A change refuses (a BlockfoldError) before it touches anything. Any other error escaping
        it is a fault of ours with RAM possibly half-changed: the pool goes back to its last
        commit, as after a crash, and says so (AbortedError)."""
        if self.readonly:
            raise ReadOnlyError(f"pool {self.path} is open read-only")
        self._wait_ready()
        if damage := self.core.damage:
            raise PoolFormatError(damage)
        with self._lock:
            try:
                yield
            except BlockfoldError:
                raise               # ours: raised before anything changed
            except Exception as e:
                self._back_to_last_commit()
                raise AbortedError(f"internal error, back to the last commit: "
                                   f"{type(e).__name__}: {e}") from e

    def _back_to_last_commit(self) -> None:
        old = self.core
        self._load(None if self.local else self.blocks)
        old.close()
        self._ready.clear()
        self._run_rebuild(False, "rollback", None, None)

    @contextmanager
    def _paused(self):
        """Data ops wait (the core's gate) while a structural edit is planned, logged and
        applied, so that it sees, and changes, one state."""
        self.core.close_gate()
        try:
            yield
        finally:
            self.core.open_gate()

    def _commit(self, edit: LayerEdit | None = None, rows=None) -> None:
        """Makes every change so far durable, with `edit` and `rows(catalog)` if given: all of it
        or none of it, but for the VMs whose change references blocks with no durable copy (a
        cluster's, _refuse_lost): their top layers are left out, dirty, for a later commit to
        take whole, and their flushes fail meanwhile (`_left_out`, _refuse_left_out). On
        failure the catalog is rolled back, RAM keeps what it had (dirty pages stay dirty,
        freed blocks wait) and AbortedError says why. Caller holds the lock."""
        self._commits += 1
        number = self._commits
        registering = set(edit.registered) if edit is not None else set()
        token, pages, frees, left_out, news = self._snapshot(
            self.graph.provisional - registering, edit)
        corrupt = self.blocks.corrupt
        idle = (not pages and not frees and edit is None and rows is None and news is None
                and np.array_equal(corrupt, self._corrupt_saved))
        actor = current_actor(self.actor)

        def write() -> None:
            try:
                self.catalog.begin()
                self.catalog.write_pages(pages)
                if edit is not None:
                    self.catalog.apply(edit, actor, self.graph.next_layer)
                if rows is not None:
                    rows(self.catalog)
                if news is not None:
                    self.catalog.log("engine", "lost", news)
                self.catalog.set("collisions", self.blocks.collisions)
                if not np.array_equal(corrupt, self._corrupt_saved):
                    self.catalog.set_corrupt(corrupt)
                self.catalog.commit()
            except BaseException:
                self.catalog.rollback()
                raise

        try:
            if not idle:
                self._durably(write)
        except BaseException as e:
            self.core.abort(token)
            if isinstance(e, Exception):
                raise AbortedError(str(e) or type(e).__name__) from e
            raise
        self.core.end(token)
        self._corrupt_saved = corrupt
        self._committed = number
        self._left_out = left_out
        # Taken whole, a layer's committed pages changed: what they name is read again if it is
        # left out again.
        self._kept = {layer: ids for layer, ids in self._kept.items() if layer in left_out}
        if edit is not None:
            self._apply(edit)
            if edit.dropped:
                self.catalog.give_back_wal()
        if self._reserve is not None:       # after the edit: a delete's room counts
            self._reserve.hold()

    def _snapshot(self, provisional: set[int], edit: LayerEdit | None):
        """A commit's snapshot, its blocks synced: (token, pages, frees, left_out, news).
        left_out: {layer: why} for the VMs' tops the commit leaves out (_refuse_lost): each found
        means a new snapshot without it (one more sync), so the loop ends within one round a
        VM. Until a commit takes them, the blocks their committed pages name are not freed
        (they would be reused under a catalog that still names them): those of the layers the
        last commit left out too, so a VM that stays out costs no new list, and one taken again
        has its frees wait one commit more. news: what the sync found lost (LostWritesError),
        for the event log: judged here, VM by VM, not failed whole. AbortedError (nothing
        taken) if the sync fails or the change cannot leave them out."""
        left_out: dict[int, str] = {}
        news = None
        while True:
            keeping = frozenset(self._left_out) | frozenset(left_out)
            if not self.local and keeping != self._keeping:
                self.blocks.keep_pending(self._kept_for(keeping))
                self._keeping = keeping
            try:
                token, pages, frees = self.core.snapshot(sorted(provisional | left_out.keys()))
            except _native.NativeError as e:
                raise AbortedError(str(e)) from None
            try:
                # Even with nothing to write: a cluster's copies lost since the last commit (a
                # node back empty) are told by its sync, and a flush must learn of them.
                try:
                    self.core.sync()
                except LostWritesError as e:
                    news = str(e)   # every node synced: _refuse_lost tells whose writes they were
                more = self._refuse_lost(pages, edit)
            except BaseException as e:
                self.core.abort(token)
                if isinstance(e, Exception):
                    raise AbortedError(str(e) or type(e).__name__) from e
                raise
            if not more:
                return token, pages, frees, left_out, news
            self.core.abort(token)
            left_out.update(more)

    def _kept_for(self, layers) -> np.ndarray:
        """The blocks the committed pages of `layers` name (cached: a layer left out keeps its
        committed pages until a commit takes it)."""
        for layer in layers:
            if layer not in self._kept:
                self._kept[layer] = self.catalog.layer_blocks(layer)
        parts = [self._kept[layer] for layer in layers]
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.uint64)

    def _refuse_left_out(self, name: str | None = None) -> None:
        """AbortedError (from NotDurableError) if the last commit left out VM `name`'s writes
        (any VM's if None): its flush promises what is not durable."""
        top = self.graph.vm(name).top if name is not None and name in self.graph else None
        why = [text for layer, text in self._left_out.items() if name is None or layer == top]
        if why:
            text = "; ".join(why)
            raise AbortedError(text) from NotDurableError(text)

    def _refuse_lost(self, pages, edit: LayerEdit | None) -> dict[int, str]:
        """The VMs' top layers whose changed entries name a block whose copies are all lost (a
        cluster's nodes restarted before it was durable), or are only on nodes that went down
        before syncing them (judged once they answer), each with why: the commit leaves them
        out, so no flush of theirs covers data that is gone, until the VM's client overwrites
        or trims those blocks (or the VM is refreshed, rolled back or deleted), and every other
        VM's commits go on. NotDurableError, the whole commit refused, if such a layer is not a
        VM's top (its pages are not one VM's own) or `edit` touches it or its VM (the edit
        would be committed without the pages it goes with). Only changed entries count: what
        the last commit references is not this change's to answer for. Nothing to do while no
        copy is in doubt."""
        if self.local or not self.blocks.copies_in_doubt():
            return {}
        dropped = set(edit.dropped) if edit is not None else set()
        at: dict[int, list[int]] = {}     # layer -> the LBNs whose new entry has no durable copy
        lost: dict[int, list[int]] = {}   # layer -> the ids of those no node holds
        waiting: dict[int, list[int]] = {}  # layer -> those only on nodes down before a sync

        def judge(layer: int, page: int, new: np.ndarray, *committed: int) -> None:
            changed = np.ones(len(new), bool)
            for was in committed:       # an entry some committed page has there is not new
                old = self.catalog.page(was, page)
                changed &= new != (0 if old is None else np.frombuffer(old, np.uint64))
            changed = np.flatnonzero(changed)
            gone, unsure = self.blocks.without_durable_copy(new[changed])
            bad = changed[np.isin(new[changed], np.concatenate([gone, unsure]))]
            if len(bad):
                at.setdefault(layer, []).extend((page * _native.PAGE_ENTRIES + bad).tolist())
                lost.setdefault(layer, []).extend(gone.tolist())
                waiting.setdefault(layer, []).extend(unsure.tolist())

        for layer, page, blob in pages:
            if blob is not None and layer not in dropped:
                judge(layer, page, np.frombuffer(blob, np.uint64), layer)
        # A fold's pages are the edit's: the top's entries, committed or not, folded down.
        for top, layer in (edit.folded.items() if edit is not None else ()):
            for (target, page), blob in edit.pages.items():
                if target == layer and blob is not None:
                    judge(layer, page, np.frombuffer(blob, np.uint64), layer, top)
        if not at:
            return {}
        tops = {vm.top: vm.name for vm in self.graph.vms()}
        if edit is not None:        # a fold's layer is its VM's top once the edit is applied
            tops.update({vm.top: vm.name for vm in edit.put_vms if vm.top in at})
        layers, names = edit.touches() if edit is not None else (set(), set())
        if all(layer in tops and layer not in layers and tops[layer] not in names
               for layer in at):
            return {layer: self._not_durable({layer: at[layer]}, lost[layer], waiting[layer],
                                             f"flushes of {tops[layer]} fail", tops)
                    for layer in at}
        vms = ", ".join(sorted({tops[layer] for layer in at if layer in tops},
                               key=formats.natural_key))
        raise NotDurableError(self._not_durable(
            at, [*itertools.chain(*lost.values())], [*itertools.chain(*waiting.values())],
            f"flushes of {vms} and this change fail" if all(layer in tops for layer in at)
            else "every flush fails", tops))

    def _not_durable(self, at: dict[int, list[int]], lost: list[int], waiting: list[int],
                     failing: str, tops: dict[int, str]) -> str:
        """'desk: 17 blocks at bytes 0-4095, … have no durable copy: its copies were lost: …;
        `failing` until they are written again or trimmed (or their writes are dropped: …)'.
        tops: the VMs' names by their top layers."""
        where = "; ".join(f"{tops.get(layer, f'layer {layer}')}: {formats.count(len(lbns))}"
                          f" blocks at bytes {self._byte_ranges(sorted(lbns))}"
                          for layer, lbns in at.items())
        why = self.blocks.why_lost((lost or waiting)[0])
        until = "" if lost else ", or those nodes answer"
        # The operator's way out, when the client that could write them again is gone, is to
        # drop those writes.
        vms = ", ".join(sorted((tops[layer] for layer in at if layer in tops),
                               key=formats.natural_key))
        out = (f" (or their writes are dropped: `vm refresh`, `vm rollback` or `vm rm` of"
               f" {vms})" if vms else "")
        return (f"{where} have no durable copy: {why}; {failing} until they are written again"
                f" or trimmed{until}{out}")

    def _byte_ranges(self, lbns: list[int], shown: int = 5) -> str:
        """'0-4095, 12288-20479 and 3 more ranges': the byte ranges of ascending LBNs."""
        ranges: list[list[int]] = []
        for lbn in lbns:
            if ranges and ranges[-1][1] == lbn - 1:
                ranges[-1][1] = lbn
            else:
                ranges.append([lbn, lbn])
        bs = self.block_size
        text = ", ".join(f"{a * bs}-{(b + 1) * bs - 1}" for a, b in ranges[:shown])
        return text + (f" and {len(ranges) - shown} more ranges" if len(ranges) > shown else "")

    def _durably(self, write) -> None:
        """Runs `write()`, a catalog write that rolls itself back if it fails; if it failed for
        a full disk, gives it the reserve's space (engine/reserve.py) and runs it once more.
        Raises AbortedError naming the full filesystem and what frees it if it still cannot."""
        try:
            write()
        except Exception as e:
            if not disk_full(e):
                raise
            if self._reserve is None or not self._reserve.release():
                raise self._disk_full() from e
        else:
            return
        try:
            write()
        except Exception as e:
            if disk_full(e):
                raise self._disk_full() from e
            raise

    def _disk_full(self) -> AbortedError:
        """A catalog commit found its filesystem full, the reserve spent."""
        return AbortedError(filesystem_full(self.path))

    def _apply(self, edit: LayerEdit) -> None:
        """Applies a committed edit to RAM: the graph, then the core (which frees at once the
        blocks the edit stopped referencing: its commit made that durable)."""
        graph = self.graph
        frozen = [graph.vm(vm.name).top for vm in edit.put_vms
                  if vm.name in graph and graph.vm(vm.name).top != vm.top
                  and graph.vm(vm.name).top not in edit.dropped]
        merged_into = {graph.parent(child): child for child in edit.reparented}
        removed = list(edit.deleted_vms)
        removed += [import_vm(layer) for layer in edit.registered]
        graph.apply(edit)
        for layer, parent in edit.moved.items():      # before their old parents may go
            self.core.set_parent(layer, parent)
        self.core.apply_edit(
            removed_vms=removed,
            drops=[(layer, merged_into.get(layer)) for layer in edit.dropped
                   if layer not in edit.folded],
            folds=list(edit.folded.items()),
            new_layers=list(edit.new_layers.items()),
            frozen=frozen,
            vms=[(vm.name, vm.top, vm.size) for vm in edit.put_vms])

    def _edit(self, plan) -> None:
        """A structural edit: `plan()` computes it (a LayerEdit) while data ops wait; it is
        committed, and applied only once it is durable. Caller is in `_changing`."""
        with self._paused():
            self._commit(plan())

    @contextmanager
    def still(self):
        """Holds every change, commit and data op back while the caller works beside the pool (a
        cluster catching a returning node up). Yields False if the pool is closed."""
        with self._lock:
            if self.catalog is None:
                yield False
                return
            with self._paused():
                yield True

    def flush(self, name: str | None = None) -> None:
        """Makes every change so far durable. Raises AbortedError if the commit failed, or if
        it left out writes whose copies were lost (_refuse_lost): any VM's, or only VM `name`'s
        if given (an NBD export's flush: another VM's loss is not its own).

        Group commit: a flush returns at once if a commit that began after it was called has
        succeeded meanwhile (that commit covered every write acknowledged before)."""
        if self.readonly:
            return
        self._wait_ready()
        called = self._commits
        with self._lock:
            if self._committed <= called:
                self._commit()
            self._refuse_left_out(name)

    def log_event(self, kind: str, message: str, actor: str = "engine",
                  meta: dict | None = None) -> None:
        """Records an event that no change describes (background work that failed), with the
        catalog's `meta` keys set to their values in the same commit (a cluster's removed
        nodes). It is a commit: every change so far becomes durable with it. Raises
        AbortedError if the commit failed, ReadOnlyError on a read-only pool."""
        def rows(catalog) -> None:
            for key, value in (meta or {}).items():
                catalog.set(key, value)
            catalog.log(actor, kind, message)

        with self._changing():
            self._commit(rows=rows)

    # -- VMs ----------------------------------------------------------------------------------

    def vm(self, name: str) -> VM:
        return self.graph.vm(name)

    def vm_names(self) -> list[str]:
        return self.graph.names()

    def vm_size(self, name: str) -> int:
        return self.graph.vm(name).size

    def create_vm(self, name: str, size: int) -> None:
        """An empty VM of `size` bytes. Raises BadNameError, VMExistsError, OutOfRangeError."""
        check_vm_size(size)
        with self._changing():
            self._edit(lambda: self.graph.plan_create(name, size))

    def _check_range(self, name: str, offset: int, length: int) -> None:
        """What the core cannot be handed (it counts in unsigned bytes)."""
        if offset < 0 or length < 0:
            raise OutOfRangeError(f"range {offset}+{length} is outside VM {name!r} "
                                  f"({self.graph.vm(name).size} bytes)")

    def data_error(self, e: Exception) -> BlockfoldError:
        """The engine's error for a data op's native one (nothing changed by it)."""
        if isinstance(e, OSError):
            return RefusedError(f"I/O error in pool {self.path}: {e}")
        if self._rebuild_error is not None and isinstance(e, _native.StateError):
            return BlockfoldError(f"rebuild failed: {self._rebuild_error}")
        if isinstance(e, _native.ReadOnlyError):
            return ReadOnlyError(f"pool {self.path} is open read-only")
        return engine_error(e)

    # -- the data path ------------------------------------------------------------------------

    def read(self, name: str, offset: int, length: int) -> bytes:
        """`length` bytes from `offset` (bytes), every block checked against its fingerprint.
        Raises VMNotFoundError, OutOfRangeError, CorruptBlockError (naming the VM and the byte
        offset of the bad block: a rotten block is never returned as data)."""
        self._check_range(name, offset, length)
        try:
            return self.core.read(name, offset, length)
        except (_native.NativeError, OSError) as e:
            raise self.data_error(e) from None

    def write(self, name: str, offset: int, data) -> None:
        """Writes `data` at `offset` (bytes), whole or not at all (RefusedError: no space, out
        of range, unknown VM). Durable once flushed."""
        self._check_range(name, offset, 0)
        try:
            self.core.write(name, offset, data)
        except (_native.NativeError, OSError) as e:
            raise self.data_error(e) from None

    def trim(self, name: str, offset: int, length: int) -> None:
        """The range reads back as zeros and its blocks are freed; zeroing what already reads as
        zeros adds nothing."""
        self._check_range(name, offset, length)
        try:
            self.core.trim(name, offset, length)
        except (_native.NativeError, OSError) as e:
            raise self.data_error(e) from None

    def extents(self, name: str, offset: int, length: int) -> list[tuple[int, bool]]:
        """The byte range as runs of (length in bytes, hole), in order and covering it exactly:
        a hole has no block behind it and reads as zeros (NBD's base:allocation HOLE|ZERO).
        Runs start and end on block boundaries, except at the range's own ends.
        Raises VMNotFoundError, OutOfRangeError."""
        self._check_range(name, offset, length)
        try:
            return self.core.extents(name, offset, length)
        except (_native.NativeError, OSError) as e:
            raise self.data_error(e) from None

    def next_mapped(self, name: str, lbn: int) -> int | None:
        """The first LBN at or after `lbn` whose block is stored (None: none, to the end), in
        time proportional to the table pages of the VM's layers, not to the LBNs skipped.
        Raises VMNotFoundError."""
        self.graph.vm(name)
        return self._next_mapped(name, lbn)

    def addresses(self, name: str, lbn: int, count: int) -> np.ndarray:
        """The block address behind each of `count` blocks from `lbn` (0: reads as zeros)."""
        return self.core.lookup(self.graph.vm(name).top, lbn, count)

    # -- clones and deletes -------------------------------------------------------------------

    def clone(self, source: str, new: str, count: int = 1,
              progress: ProgressCallback | None = None, cancel=None) -> list[str]:
        """Links new VMs to `source`'s blocks: O(1) each, whatever the size.

        Makes `new`, or NEW-1 … NEW-count. The source's top layer is frozen and becomes the
        shared base; the source and every clone get an empty top layer of their own. If the
        source has written nothing since it was last frozen, its base is shared as it is.
        Clones are made CLONE_BATCH at a time, each batch one edit, commit and event, and the
        pool's lock is let go between batches (NBD and other calls go on); every batch after
        the first is made as the first was, on the same base, whatever the source did since.
        Every name is checked first: a clash refuses with nothing made. Progress phase "clone",
        in VMs; `cancel` (a threading.Event) stops it between batches.
        Raises VMNotFoundError, VMExistsError, BadNameError, RefusedError (count < 1 or over
        MAX_CLONES), or, if the first batch fails, its error with nothing made; a later failure
        or a cancel is a BlockfoldError that names the clones made before it, which are kept.
        """
        if count < 1:
            raise RefusedError(f"bad clone count {count}: it must be at least 1")
        if count > MAX_CLONES:
            raise RefusedError(f"bad clone count {count:,}: at most {MAX_CLONES:,} a command")
        names = [new] if count == 1 else [f"{new}-{i}" for i in range(1, count + 1)]
        meter = Meter(progress, "clone", count)
        like: VM | None = None

        def plan(batch: list[str]) -> LayerEdit:
            if like is None:            # the first batch: every later name is checked too
                for name in names[len(batch):]:
                    self.graph.check_new_name(name)
                top = self.graph.vm(source).top
                edit = self.graph.plan_clone(source, batch, self.core.is_empty(top))
            else:
                edit = self.graph.plan_clone(source, batch, False, like)
            label = batch[0] if len(batch) == 1 else f"{batch[0]} … {batch[-1]}"
            edit.events.append(("clone", f"cloned {source} to {label}"))
            return edit

        for start in range(0, count, CLONE_BATCH):
            batch = names[start:start + CLONE_BATCH]
            try:
                if cancel is not None and cancel.is_set():
                    raise CancelledError("clone cancelled")
                with self._changing():
                    self._edit(partial(plan, batch))
                    like = like or self.graph.vm(batch[0])
            except Exception as e:
                if start == 0:
                    raise
                raise BlockfoldError(f"clone of {source} stopped after {start:,} of {count:,}"
                                     f" VMs: {e}; {names[0]} … {names[start - 1]} are made"
                                     " and kept") from e
            meter.done = start + len(batch)
            meter.advance(0)
        meter.finish()
        return names

    def delete(self, name: str) -> None:
        """Deletes a VM and its snapshots, frees what only it referenced, and collects layers
        nobody needs: a frozen layer left with no children goes too, one left with a single
        child merges into it. Raises VMNotFoundError.

        A golden image's clones lose their origin and base in the same edit, all or nothing;
        their new rows are built before the edit takes the lock (the graph's rows are copied
        under it), so data ops and flushes wait for its commit, not for work per clone."""
        with self._lock:
            clones = self.graph.cloned_from(name)
        unlinked = Relinked.of(name, None, *clones)
        self._collecting(lambda: self.graph.plan_delete(name, unlinked), "delete",
                         f"deleted {name}")

    def _collecting(self, plan, kind: str, message: str) -> None:
        """A structural edit whose plan (a LayerEdit, and merges) collects layers: the merges'
        pages come from the core."""
        def planned() -> LayerEdit:
            edit = self._with_merges(*plan())
            edit.events.append((kind, message))
            return edit

        with self._changing():
            self._edit(planned)

    def _with_merges(self, edit: LayerEdit, merges) -> LayerEdit:
        """`edit` with its merges' and its folds' pages, from the core."""
        for merge in merges:
            pages, _ = self.core.merged(merge.layer, merge.child)
            edit.pages.update({(merge.child, pno): blob for pno, blob in pages})
        for top, layer in edit.folded.items():
            pages, _ = self.core.folded(top, layer)
            edit.pages.update({(layer, pno): blob for pno, blob in pages})
        return edit

    # -- desktops' lifecycle: refresh, rebase, snapshots, rename, resize ----------------------

    def refresh(self, name: str) -> None:
        """Drops the VM's own writes: it reads as the golden image it was cloned from again,
        at its size then, O(1) (Horizon's refresh). Raises VMNotFoundError, RefusedError (not
        a clone)."""
        vm = self.graph.vm(name)
        back = vm.base_size if vm.base_size not in (None, vm.size) else None

        def planned() -> LayerEdit:
            edit = self._with_merges(*self.graph.plan_refresh(name))
            edit.events.append(("refresh", f"refreshed {name} to its golden image"
                                + (f", {formats.exact_size(back)} again" if back else "")))
            return edit

        with self._changing():
            self._edit(planned)
            if vm.base_size is None:
                # It keeps its own size over a golden state that may be larger (it was shrunk
                # since): what lies past its end is trimmed, as its shrink trimmed it, so a
                # later grow shows zeros there and `logical` counts only its disk.
                try:
                    self.core.cut_past_end(name)
                except (_native.NativeError, OSError) as e:
                    raise self.data_error(e) from None
                self._commit()

    def rebase(self, names: list[str], golden: str, keep_writes: bool = False) -> None:
        """Moves the VMs onto `golden`'s current state in one edit, O(1) each (Horizon's
        recompose, MCS's catalog update), at golden's size: golden's top is frozen if it wrote
        since it was last frozen; each VM keeps its own writes on top (`keep_writes`: only a
        VM whose top sits right on its base) or starts empty. A VM it shrinks, keeping its
        writes, has what lies past golden's end trimmed first (as resize does), so growing it
        later shows zeros there. Raises VMNotFoundError, RefusedError."""
        if not names:
            raise RefusedError("nothing to rebase")
        if keep_writes:
            with self._lock:
                shrunk = self.graph.check_rebase(names, golden, keep_writes)
                end = self.graph.vm(golden).size
            for vm in shrunk:
                self.trim(vm.name, end, vm.size - end)

        def plan():
            empty = self.core.is_empty(self.graph.vm(golden).top)
            return self.graph.plan_rebase(names, golden, empty, keep_writes)
        label = names[0] if len(names) == 1 else f"{formats.count(len(names))} VMs"
        self._collecting(plan, "rebase", f"rebased {label} onto {golden}"
                         + (" keeping their writes" if keep_writes else ""))

    def snapshot(self, name: str, snap: str) -> None:
        """Names the VM's state now, O(1): a frozen layer kept until snapshot_rm.
        Raises VMNotFoundError, VMExistsError (the VM has a snapshot of that name), BadNameError."""
        def plan():
            edit = self.graph.plan_snapshot(name, snap,
                                            self.core.is_empty(self.graph.vm(name).top))
            edit.events.append(("snapshot", f"snapshot {snap} of {name}"))
            return edit

        with self._changing():
            self._edit(plan)

    def rollback(self, name: str, snap: str) -> None:
        """The VM reads as it did at the snapshot again (its size too); what it wrote since is
        dropped, the snapshot stays. Raises VMNotFoundError (the VM, or its snapshot)."""
        self._collecting(lambda: self.graph.plan_rollback(name, snap), "rollback",
                         f"rolled {name} back to {snap}")

    def snapshot_rm(self, name: str, snap: str) -> None:
        """Forgets a snapshot; the blocks only it held are freed. Raises VMNotFoundError."""
        self._collecting(lambda: self.graph.plan_snapshot_rm(name, snap), "snapshot",
                         f"removed snapshot {snap} of {name}")

    def rename(self, old: str, new: str) -> None:
        """Renames a VM (its snapshots and its clones' origin follow). Raises VMNotFoundError,
        VMExistsError, BadNameError.

        A golden image's clones take the new origin in the same edit, all or nothing, built
        before it takes the lock as a delete's are, so data ops and flushes wait for its
        commit, not for work per clone."""
        with self._lock:
            clones = self.graph.cloned_from(old)
        relinked = Relinked.of(old, new, *clones)

        def plan():
            edit = self.graph.plan_rename(old, new, relinked)
            edit.events.append(("rename", f"renamed {old} to {new}"))
            return edit

        with self._changing():
            self._edit(plan)

    def resize(self, name: str, size: int) -> None:
        """Grows the VM to `size` bytes (the new part reads as zeros), or shrinks it: what lies
        past the new end is trimmed first, so growing again later shows zeros there.
        Raises VMNotFoundError, OutOfRangeError (size not positive, or past MAX_VM_BYTES)."""
        check_vm_size(size)
        old = self.graph.vm(name).size
        if size < old:
            self.trim(name, size, old - size)

        def plan():
            edit = self.graph.plan_resize(name, size)
            edit.events.append(("resize", f"resized {name} from {formats.exact_size(old)}"
                                           f" to {formats.exact_size(size)}"))
            return edit

        with self._changing():
            self._edit(plan)

    def snapshots(self, name: str | None = None) -> list[dict]:
        """The snapshots of `name` (every VM's if None), each with the blocks it holds alone
        (engine.stats.held_alone: what removing it may free)."""
        with self._lock:
            if name is not None:
                self.graph.vm(name)
            snaps = self.graph.snaps(name)
            alone = {}
            if self.blocks.ready and not self.rebuilding:
                alone = stats_mod.held_alone(self, {s.layer for s in snaps})
            return [{"vm": s.vm, "name": s.name, "created": s.created, "size": s.size,
                     "origin": s.origin, "blocks_alone": alone.get(s.layer)} for s in snaps]

    # -- images -------------------------------------------------------------------------------

    def import_image(self, name: str, source: str, progress: ProgressCallback | None = None) -> VM:
        """Imports a raw image file, or stdin for "-"; holes and zeros take no space.

        The image goes into a layer of its own that becomes the new VM only once it is whole:
        a failure or a refusal (no space, a bad image) leaves nothing behind.
        Raises BadNameError, VMExistsError, BadImageError, NoSpaceError, AbortedError.
        """
        with self._changing():
            layer = self.graph.begin_import(name)
            self.core.add_layer(layer, None, True)
            self.core.set_vm(import_vm(layer), layer, IMPORT_SIZE)
        try:
            image = diskformats.open_disk(source)
            try:
                size = self._fill(import_vm(layer), image, progress)
            finally:
                image.close()
            with self._changing():
                events = [("import", f"imported {name} ({formats.size(size)})")]
                self._edit(lambda: self.graph.plan_register(layer, size, events))
        except BaseException:
            with self._lock:
                if layer in self.graph.provisional:
                    self.core.remove_vm(import_vm(layer))
                    self.core.decref(self.core.drop_layer(layer))
                    self._give_back_dropped()
            raise
        finally:
            with self._lock:
                self.graph.end_import(layer)
        return self.graph.vm(name)

    def _fill(self, target: str, image, progress) -> int:
        """Writes an image's chunks into an import's provisional VM; returns its size in bytes."""
        # A stream's size is 0: not known until it ends.
        meter = Meter(progress, "import", image.size or None, unit_bytes=1)
        size = image.size
        chunk = IMPORT_CHUNK_BLOCKS if self.local else self.blocks.import_blocks
        for offset, data in imageio.read_ahead(image, chunk * self.block_size):
            size = max(size, offset + len(data))       # stdin: grows as it comes
            self.write(target, offset, data)
            meter.done = offset + len(data)
            meter.advance(0)
        if size == 0:
            raise imageio.empty_image(image.name)
        meter.finish()
        return size

    def write_from(self, name: str, offset: int, source,
                   progress: ProgressCallback | None = None) -> int:
        """Writes every byte of `source` into VM `name` from `offset` (bytes), as one change with
        one event, durable when it returns; returns the bytes written (the source's length).

        `source` is an open image (engine.imageio.Image's size, seekable, name, chunks()): its
        size is its exact length when seekable, else it is read to its end. Memory stays
        bounded whatever its length: the bytes go, piece by piece, into a provisional layer of
        their own (as an import's), and only once the source has ended inside the VM are its
        blocks moved onto the VM's top, with data ops held, and committed with the event. So a
        source too long for the VM (found at once when its size is known, else when it passes
        the end), an unreadable one, no space or a cancel leave the VM as it was. A file's
        holes are not read: they write zeros. Progress phase "write", in bytes (total None for a
        stream of unknown length); the first report comes before any byte is read.
        Raises VMNotFoundError, OutOfRangeError, BadImageError, NoSpaceError, CancelledError,
        AbortedError."""
        size = self.graph.vm(name).size
        length = source.size if source.seekable else None
        if offset < 0 or offset > size or (length is not None and offset + length > size):
            raise _too_long(source.name, name, size, offset)
        with self._changing():
            layer = self.graph.begin_import(None)
            self.core.add_layer(layer, None, True)
            self.core.set_vm(import_vm(layer), layer, IMPORT_SIZE)
        moved = False
        try:
            end = self._stream(import_vm(layer), name, size, offset, source, progress)
            if length is not None:
                end = offset + length           # a file's holes at its end write zeros too
            with self._changing():
                self._land(layer, name, offset, end)
                moved = True
                self._drop_scratch(layer, moved)
                message = (f"wrote {formats.size(end - offset)} to {name} at byte"
                           f" {formats.count(offset)}")
                self._commit(rows=lambda catalog: catalog.log(
                    current_actor(self.actor), "write", message))
        finally:
            with self._lock:
                self._drop_scratch(layer, moved)
        return end - offset

    def _stream(self, target: str, name: str, size: int, offset: int, source, progress) -> int:
        """Writes the source's pieces into the provisional VM `target` at `offset` on; returns
        where they ended. Raises OutOfRangeError past the end of VM `name` (`size` bytes)."""
        meter = Meter(progress, "write", source.size if source.seekable else None, unit_bytes=1)
        meter.advance(0)        # a service's client sends its bytes only after this report
        end = offset
        chunk = IMPORT_CHUNK_BLOCKS if self.local else self.blocks.import_blocks
        for at, data in imageio.read_ahead(source, chunk * self.block_size):
            end = max(end, offset + at + len(data))
            if end > size:
                raise _too_long(source.name, name, size, offset)
            self.write(target, offset + at, data)
            meter.done = end - offset
            meter.advance(0)
        meter.finish()
        return end

    def _land(self, layer: int, name: str, offset: int, end: int) -> None:
        """Moves the blocks of [offset, end) from a streamed write's `layer` onto VM `name`'s
        top, with data ops held: where the layer has no block, the top reads zeros. The partial
        blocks at either end get the VM's own bytes around the range first. Refuses (nothing
        moved) if the VM went or shrank meanwhile. Caller is in `_changing`."""
        vm = self.graph.vm(name)
        if end > vm.size:
            raise _too_long(f"{end - offset} bytes", name, vm.size, offset)
        if end == offset:
            return
        bs, target = self.block_size, import_vm(layer)
        head, tail = offset - offset % bs, min(-(-end // bs) * bs, vm.size)
        if head < offset:
            self.write(target, head, self.read(name, head, offset - head))
        if end < tail:
            self.write(target, end, self.read(name, end, tail - end))
        parent = self.graph.parent(vm.top)
        per_page = _native.PAGE_ENTRIES
        lbn, last = head // bs, -(-end // bs)
        with self._paused():
            while lbn < last:
                n = min(per_page - lbn % per_page, last - lbn)
                page = self.core.page(layer, lbn // per_page)
                moved = (np.zeros(n, np.uint64) if page is None
                         else page[lbn % per_page:lbn % per_page + n])
                # What reads as zeros is INHERIT where the layers beneath read zeros too.
                zero = (np.full(n, _native.INHERIT, np.uint64) if parent is None else
                        np.where(self.core.lookup(parent, lbn, n) == 0, np.uint64(_native.INHERIT),
                                 np.uint64(_native.ZERO)))
                data = (moved != _native.INHERIT) & (moved != _native.ZERO)
                entries = np.where(data, moved, zero).astype(np.uint64)
                self.core.decref(self.core.set_entries(vm.top, lbn, entries))
                lbn += n

    def _drop_scratch(self, layer: int, moved: bool) -> None:
        """Drops a streamed write's provisional layer, if still there; its blocks' references
        go with it unless they `moved` onto the VM. Caller holds the lock."""
        if layer not in self.graph.provisional:
            return
        self.core.remove_vm(import_vm(layer))
        held = self.core.drop_layer(layer)
        self.graph.end_import(layer)
        if not moved:
            self.core.decref(held)
            self._give_back_dropped()

    def _give_back_dropped(self) -> None:
        """The slots of a dropped provisional layer wait for a commit, as every freed slot does
        (the core cannot tell them apart): commits, so that a refused or failed import or write
        gives its room back at once, not at the next flush. A commit that fails leaves them to
        the next one. Caller holds the lock."""
        try:
            self._commit()
        except AbortedError:
            pass

    def export(self, name: str, dest: str, progress: ProgressCallback | None = None,
               snapshot: str | None = None) -> None:
        """Writes the VM byte for byte to a file (sparse where it has holes) or stdout ("-"), as
        it was when the export began (frozen), or as it was at its `snapshot`: an NBD client
        writing meanwhile changes nothing in the image. Raises VMNotFoundError, BadImageError,
        CorruptBlockError, RefusedError."""
        with self.frozen(name, snapshot) as (view, size):
            bs = self.block_size
            chunk = IMPORT_CHUNK_BLOCKS * bs
            meter = Meter(progress, "export", size, unit_bytes=1)
            with imageio.open_output(dest, size) as out:
                offset = 0
                while offset < size:
                    # Chunks with no block behind them are jumped, all at once: a hole of any
                    # size costs what the pages around it do, not its length.
                    lbn = self._next_mapped(view, offset // bs)
                    if lbn is None or lbn * bs >= size:
                        break
                    offset = max(offset, lbn * bs - lbn * bs % chunk)
                    n = min(chunk, size - offset)
                    data = self.read(view, offset, n)
                    # What reads as zeros is a hole: zero blocks never take a slot.
                    whole = np.frombuffer(data + bytes(-n % bs), np.uint64)
                    out.write_blocks(offset, data, whole.reshape(-1, bs // 8).any(axis=1), bs)
                    offset += n
                    meter.done = offset
                    meter.advance(0)
            meter.finish()

    @contextmanager
    def frozen(self, name: str, snapshot: str | None = None):
        """VM `name` as it is now (or at its `snapshot`), for a long read (an export): yields
        (view, size), the name the core reads that state through (not a VM: nobody else sees
        it) and its size in bytes. Writes, resizes and rollbacks of the VM meanwhile change
        nothing in it.

        The VM's top is frozen under the pool's lock (one commit; nothing if it wrote nothing
        since it was last frozen, as a snapshot does) and the layer held while the `with`
        lasts (LayerGraph.hold: in RAM, so a crash leaves an ordinary layer); an edit that would
        drop it meanwhile (deleting or refreshing the VM) is refused. At the end, even on an
        error or a cancel, the layer is the VM's top again with what the VM wrote meanwhile
        folded into it (at a cost in those writes), or, if something else reads it now (a
        clone, a snapshot), it merges as a snapshot's layer does (plan_unfreeze). A read-only
        pool's view is the VM's top, which its shared lock on DIR/lock keeps as it is: writers'
        opens are refused meanwhile (_unwritten); so is a damaged pool's, which refuses every
        write (Core.damage). A snapshot is frozen already: its layer is
        held as it is. Raises VMNotFoundError (the VM, or its snapshot), AbortedError (the
        freeze's commit failed), PoolLockedError (read-only: a writer holds the pool),
        RefusedError (read-only: a writer wrote it after this pool was opened)."""
        # Read in errors ("VM desk (export 1): the block at byte 0 is corrupt").
        which = f"snapshot {snapshot}, " if snapshot else ""
        view = f"{name} ({which}export {next(self._views)})"
        # A damaged pool refuses every write, so the top stays as it is without a freeze (an
        # edit, refused too): what can still be read is saved, the rest named.
        still = self.readonly or bool(self.core.damage)
        with self._unwritten():
            with self._lock if still or snapshot else self._changing():
                vm = self.graph.vm(name)
                if snapshot is not None:
                    snap = self.graph.snap(name, snapshot)
                    layer, size = snap.layer, snap.size
                else:
                    layer, size = vm.top if still else self._freeze(vm), vm.size
                self.graph.hold(view, layer, name)
                self.core.set_vm(view, layer, size)
            try:
                yield view, size
            finally:
                self._unfreeze(view, layer)

    @contextmanager
    def _unwritten(self):
        """Keeps writers out of a local read-only pool for a long read (frozen): nothing else
        holds its state still, and a writer opening meanwhile could change the VM or reuse its
        slots (an export was torn, verifier finding N2). Its shared lock (lock.ReadLock) refuses
        a writer's open while it lasts. Nothing for a writable pool (its own lock keeps others
        out) or a cluster's. Raises PoolLockedError (a writer holds the pool now), RefusedError
        (one wrote it after this pool loaded it: what is loaded here is not the pool now)."""
        if self._loaded_version is None:
            yield
            return
        lock = ReadLock.take(self.path)
        try:
            if self.catalog.data_version() != self._loaded_version:
                raise RefusedError(f"pool {self.path} was written by another process after"
                                   f" this one opened it: run the export again")
            yield
        finally:
            lock.release()

    def _freeze(self, vm: VM) -> int:
        """The frozen layer showing `vm` now, frozen and committed if need be. Caller is in
        `_changing`."""
        with self._paused():
            edit, layer = self.graph.plan_freeze(vm.name, self.core.is_empty(vm.top))
            if edit.new_layers:
                self._commit(edit)
        return layer

    def _unfreeze(self, view: str, layer: int) -> None:
        """Ends frozen()'s read of `layer` through `view`, and collects the layer."""
        with self._lock:
            self.graph.release(view)
            try:
                self.core.remove_vm(view)
            except _native.NativeError:
                return          # gone with the core, loaded again from the last commit
        if self.readonly:
            return
        try:
            with self._changing(), self._paused():
                if self.graph.has_layer(layer) and not self.graph.is_top(layer):
                    edit, merges = self.graph.plan_unfreeze(layer)
                    if edit.dropped:
                        self._commit(self._with_merges(edit, merges))
        except BlockfoldError:
            pass        # a tidy-up: the layer stays, read one layer deeper, until a later edit

    def _next_mapped(self, name: str, lbn: int) -> int | None:
        """next_mapped for a name the core reads through (a VM or a frozen() view)."""
        try:
            return self.core.next_mapped(name, lbn)
        except (_native.NativeError, OSError) as e:
            raise self.data_error(e) from None

    # -- views --------------------------------------------------------------------------------

    def stats(self) -> dict:
        with self._lock:
            return stats_mod.pool_stats(self)

    def vm_list(self) -> list[dict]:
        with self._lock:
            return [stats_mod.vm_stats(self, vm) for vm in self.graph.vms()]

    def block_page(self, **filters) -> dict:
        """A page of the block table; see engine.blockview.BlockView.page for the filters."""
        self._wait_ready()
        with self._lock:
            return self.view.page(**filters)

    def fsck(self, progress: ProgressCallback | None = None) -> list[dict]:
        """Every broken promise, judged on the committed state (the pool commits first). A
        commit refused for writes whose copies were lost is reported (kind "lost"), not raised:
        that is what an operator runs fsck to see."""
        self._wait_ready()
        with self._lock:
            refused = []
            if not self.readonly:
                try:
                    self._commit()
                    self._refuse_left_out()
                except AbortedError as e:
                    if not isinstance(e.__cause__, NotDurableError):
                        raise
                    refused = [{"kind": "lost", "message": f"not committed: {e}"}]
            return refused + fsck_mod.check(self, progress)

    def scrub(self, rate: float | None = None, progress: ProgressCallback | None = None,
              cancel: threading.Event | None = None) -> dict:
        """Verifies every live block against its fingerprint (the anchor is `zpool scrub`),
        SCRUB_BATCH blocks at a time, so reads and writes go on in between.

        rate: at most this many bytes a second (None: as fast as it goes), from the first
        block: SCRUB_PACE_S worth of blocks at a time, each read once the rate allows it,
        never ahead. Where it got to is committed every few seconds, so a scrub cancelled (or
        a process killed) resumes there the next time; a scrub that reaches the end starts
        over the time after. Rotten blocks are remembered as corrupt. Returns {"blocks",
        "bytes", "corrupt" (addresses found), "seconds", "bytes_per_s", "finished"}. Raises
        ReadOnlyError.
        """
        if self.readonly:
            raise ReadOnlyError(f"pool {self.path} is open read-only: scrub records what it finds")
        self._wait_ready()
        started = time.monotonic()
        with self._lock:
            cursor = int(self.catalog.get("scrub_cursor") or 0)
        # A pool reads each live block once; a cluster every copy on every node.
        total = len(self.blocks.live()) if self.local else self.blocks.scrub_total()
        meter = Meter(progress, "scrub", total, unit_bytes=self.block_size)
        checked, found, saved, finished = 0, [], time.monotonic(), False
        batch = SCRUB_BATCH if not rate else max(1, min(
            SCRUB_BATCH, int(rate * SCRUB_PACE_S) // self.block_size))
        while not (cancel is not None and cancel.is_set()):
            # Paced before each read, so the rate holds from the first block: read first, a
            # pool smaller than a batch went at 2,220 MB/s under `--rate 8M`. No pause once
            # every block there was has been read: it held a finished scrub as "running" at
            # 100 % for as long as its rate would have taken (hours at 1K/s).
            if rate and checked < total:
                ahead = ((checked + min(batch, total - checked)) * self.block_size / rate
                         - (time.monotonic() - started))
                if ahead > 0 and cancel is not None:
                    if cancel.wait(ahead):
                        break
                elif ahead > 0:
                    time.sleep(ahead)
            cursor, n, bad = self.blocks.scrub(cursor, batch)
            checked += n
            found.append(bad)
            meter.advance(n)
            if not n:
                finished = True
                break
            if time.monotonic() - saved >= SCRUB_SAVE_S:
                self._save_scrub(cursor)
                saved = time.monotonic()
        seconds = time.monotonic() - started
        # np.unique: a cluster finds a lost block once on each node that holds it.
        corrupt = np.unique(np.concatenate(found)) if found else np.zeros(0, np.uint64)
        self._save_scrub(cursor, event=(
            f"scrub {'finished' if finished else 'stopped'}:"
            f" {formats.counted(checked, *getattr(self.blocks, 'scrub_unit', ('block',)))}"
            f" ({formats.size(checked * self.block_size)}) verified in {formats.duration(seconds)},"
            f" {formats.count(len(corrupt))} corrupt"))
        if finished:
            meter.finish()
        else:
            meter.stopped()
        return {"blocks": checked, "bytes": checked * self.block_size,
                "corrupt": [int(a) for a in corrupt], "seconds": round(seconds, 4),
                "bytes_per_s": int(checked * self.block_size / seconds) if seconds else 0,
                "finished": finished}

    def _save_scrub(self, cursor: int, event: str | None = None) -> None:
        """Where the scrub got to, and at its end its event (under the caller's actor)."""
        actor = current_actor(self.actor)

        def rows(catalog):
            catalog.set("scrub_cursor", cursor)
            if event:
                catalog.log(actor, "scrub", event)
        with self._lock:
            self._commit(rows=rows)

    def events(self, limit: int = 100, since: float | None = None) -> list[dict]:
        """The `limit` newest events (at or after `since`, seconds since the epoch), newest
        first."""
        with self._lock:
            return self.catalog.events(limit, since)


def _too_long(source: str, name: str, size: int, offset: int) -> OutOfRangeError:
    return OutOfRangeError(f"{source} would write past the end of VM {name} ({size} bytes) from"
                           f" offset {offset}: nothing written")
