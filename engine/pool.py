"""A pool: VMs over a block layer, with the one owner of every change and every commit.

A pool is a directory holding the sqlite catalog (catalog.db) and the slot files (blocks.dat,
hashes.dat); a cluster's coordinator is the same Pool over another block layer and catalog. Every
write is deduplicated inline: blocks of zeros take no slot; other blocks are fingerprinted with
xxh3-128, looked up in the index, and shared only when the bytes compare equal.

Changes, and who owns them (the model is LevelDB's VersionSet::LogAndApply):
- A data op (write, trim) is atomic in RAM: it takes every slot it needs before it changes anything,
  so it either happens whole or is refused (RefusedError) with nothing changed. It writes no sqlite.
- `_commit` is the only place anything becomes durable: snapshot the dirty block-table pages and
  seal the slots freed since the last commit, sync the slot files, then write the pages (and a
  structural edit's rows) in one sqlite transaction. If that fails it rolls back and RAM keeps
  every acknowledged write for the next commit (AbortedError); freed slots are reused only once the
  drop that freed them is durable, so a committed reference always points at durable bytes.
- A structural change (create, clone, delete, an import's registration) is a LayerEdit value:
  planned from the graph, committed, and only then applied to the graph, tables and block layer.

Thread-safe: every public method holds the pool's lock. After open, reads are served at once while
the RAM metadata is rebuilt; writes wait for the rebuild to finish.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from . import blockview, formats, fsck as fsck_mod, imageio, stats as stats_mod
from .actor import current as current_actor
from .blocklayer import BlockLayer
from .blockstore import BlockStore
from .blocktable import INHERIT, PAGE_ENTRIES, BlockTables
from .catalog import CATALOG_FILE, Catalog
from .errors import (AbortedError, BlockfoldError, CorruptBlockError, NotAPoolError,
                     OutOfRangeError, ReadOnlyError, RefusedError)
from .fingerprint import Fingerprinter, fingerprint
from .layergraph import VM, LayerEdit, LayerGraph
from .localblocks import LocalBlocks
from .lock import PoolLock
from .progress import Meter, ProgressCallback
from .rebuild import PageScan

DEFAULT_BLOCK_SIZE = 4096
BLOCK_SIZES = tuple(1 << n for n in range(12, 17))    # 4 KiB .. 64 KiB
SCRUB_BATCH = 4096          # blocks verified under the lock at a time
SCRUB_SAVE_S = 5.0          # how often a scrub commits where it got to


class Pool:
    # -- creation and opening -----------------------------------------------------------------

    @staticmethod
    def create(path, block_size: int = DEFAULT_BLOCK_SIZE) -> Path:
        path = Path(path)
        if block_size not in BLOCK_SIZES:
            raise RefusedError(f"bad block size {block_size}: use a power of two from 4096 to"
                               " 65536")
        if (path / CATALOG_FILE).exists():
            raise RefusedError(f"{path} is already a Blockfold pool")
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise RefusedError(f"{path} exists and is not an empty directory")
        path.mkdir(parents=True, exist_ok=True)
        catalog = Catalog(path / CATALOG_FILE)
        catalog.create_schema(block_size)
        catalog.close()
        BlockStore(path, block_size).close()
        return path

    @classmethod
    def open(cls, path, *, readonly: bool = False, rebuild: str | None = None,
             progress: ProgressCallback | None = None, wait: bool = True,
             actor: str = "cli", fingerprint=fingerprint) -> Pool:
        """Opens a pool and rebuilds its RAM metadata.

        rebuild: "fast" (stored fingerprints) or "full" (re-hash every block); by default fast.
        wait: False returns at once and serves reads while the rebuild runs in the background.
        fingerprint: the per-block fingerprint function (tests substitute one that collides).
        Raises NotAPoolError, PoolFormatError, PoolLockedError (another process writes it).
        """
        path = Path(path)
        if not path.is_dir():
            raise NotAPoolError(f"{path} is not a Blockfold pool (no such directory)")
        if not (path / CATALOG_FILE).is_file():
            raise NotAPoolError(f"{path} is not a Blockfold pool")
        lock = None if readonly else PoolLock(path)
        try:
            catalog = Catalog(path / CATALOG_FILE, readonly=readonly)
            catalog.check_format(path)
            block_size = int(catalog.get("block_size"))
            store = BlockStore(path, block_size, readonly=readonly)
        except BaseException:
            if lock:
                lock.release()
            raise
        blocks = LocalBlocks(store, Fingerprinter(block_size, fingerprint),
                             int(catalog.get("collisions") or 0))
        return cls.attach(path, catalog, blocks, lock=lock, readonly=readonly, rebuild=rebuild,
                          progress=progress, wait=wait, actor=actor)

    @classmethod
    def attach(cls, path, catalog: Catalog, blocks: BlockLayer, *, lock=None,
               readonly: bool = False, rebuild: str | None = None,
               progress: ProgressCallback | None = None, wait: bool = True,
               actor: str = "cli") -> Pool:
        """A pool over an open catalog and block layer (a local pool's, or a cluster's);
        marks it in use and rebuilds its RAM metadata."""
        pool = cls(path, catalog, blocks, lock, readonly, actor)
        crashed = catalog.get("state") == "dirty"
        if not readonly:
            catalog.ensure_tables()
            catalog.set("state", "dirty")
        reason = "crash" if crashed else ("requested" if rebuild else "open")
        pool._start_rebuild(rebuild == "full", reason, progress, background=not wait)
        return pool

    def __init__(self, path, catalog: Catalog, blocks: BlockLayer, lock, readonly: bool,
                 actor: str):
        self.path = path
        self.catalog = catalog
        self.blocks = blocks
        self.block_size = blocks.block_size
        self.readonly = readonly
        self.actor = actor
        self._lock = threading.RLock()
        self._lock_file = lock
        self._ready = threading.Event()
        self._rebuild_error: BaseException | None = None
        self.last_rebuild: dict = {}
        self.generation = 0          # bumped by every change; caches of derived views key on it
        self._corrupt_saved = catalog.corrupt_addresses()
        self._load()

    def _load(self) -> None:
        """The graph and tables as the catalog holds them (at open)."""
        self.graph = LayerGraph(self.catalog.vms(), self.catalog.layer_parents(),
                                int(self.catalog.get("next_layer")))
        self.tables = BlockTables(self.catalog.conn, self.graph)
        self.view = blockview.BlockView(self)

    def close(self) -> None:
        """Commits, marks the pool clean and releases it."""
        self._ready.wait()
        with self._lock:
            if self.catalog is None:
                return
            try:
                if not self.readonly and self._rebuild_error is None:
                    self._commit()
                    self.catalog.set("state", "clean")
            finally:
                self.catalog.close()
                if self.readonly:
                    self._remember_corrupt()
                self.blocks.close()
                if self._lock_file:
                    self._lock_file.release()
                self.catalog = None

    def _remember_corrupt(self) -> None:
        """A read-only opener that found rotten blocks records them if no writer holds the pool
        (a writer's service records what its own reads find)."""
        new = np.setdiff1d(self.blocks.corrupt, self._corrupt_saved)
        if not len(new) or not isinstance(self.blocks, LocalBlocks):
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
        # Its own connection: reads keep using the main one while this scans the tables.
        conn = self.catalog.reader()
        try:
            with self._lock:
                layers = set(self.graph.layers())
                # An import under way holds its pages in RAM only; they count too.
                extra = [(layer, 0, self.tables.layer_entries(layer).tobytes())
                         for layer in self.graph.provisional]
            scan = PageScan(self._chain_rows(self.catalog.scan_pages(conn), extra),
                            self.catalog.count_pages(conn) + len(extra), layers)
            figures = self.blocks.rebuild(scan, full=full, progress=progress, cancel=cancel,
                                          reclaim=not self.readonly,
                                          known_corrupt=self.catalog.corrupt_addresses())
        except BaseException as e:
            if not self.blocks.ready:   # nothing to fall back on; a live pool keeps what it had
                self._rebuild_error = e
            self._ready.set()
            raise
        finally:
            self.catalog.release_reader(conn)
        with self._lock:
            figures = dict(figures, reason=reason)
            self.last_rebuild = figures
            self.generation += 1
            try:
                if not self.readonly:
                    self._commit(rows=lambda catalog: catalog.record_rebuild(figures))
            finally:
                # RAM is rebuilt whether or not its record commits: waiters must not hang.
                self._ready.set()
        return figures

    @staticmethod
    def _chain_rows(rows, extra):
        yield from rows
        yield from extra

    def rebuild(self, full: bool = False, progress: ProgressCallback | None = None,
                cancel: threading.Event | None = None) -> dict:
        """Rebuilds the RAM metadata of an open pool; reads go on meanwhile, writes wait."""
        self._wait_ready()
        with self._lock:
            if not self.readonly:
                self._commit()
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
        """Runs a change under the pool's lock once the pool may be written.

        A change refuses (a BlockfoldError) before it touches anything. Any other error escaping
        it is a fault of ours with RAM possibly half-changed: the pool goes back to its last
        commit, as after a crash, and says so (AbortedError)."""
        if self.readonly:
            raise ReadOnlyError(f"pool {self.path} is open read-only")
        self._wait_ready()
        with self._lock:
            try:
                yield
            except BlockfoldError:
                raise               # ours: raised before anything changed
            except Exception as e:
                self._back_to_last_commit()
                raise AbortedError(f"internal error, back to the last commit: "
                                   f"{type(e).__name__}: {e}") from e
            finally:
                self.generation += 1

    def _back_to_last_commit(self) -> None:
        self._load()
        self._run_rebuild(False, "rollback", None, None)

    def _commit(self, edit: LayerEdit | None = None, rows=None) -> None:
        """Makes every change so far durable, with `edit` and `rows(catalog)` if given: all of it
        or none of it. On failure the catalog is rolled back, RAM keeps what it had (dirty pages
        stay dirty, freed slots wait) and AbortedError says why."""
        registering = frozenset(edit.registered) if edit is not None else frozenset()
        snap = self.tables.snapshot(exclude=self.graph.provisional - registering)
        if not snap.pages and edit is None and rows is None and not self.blocks.has_pending:
            return
        epoch = self.blocks.seal()
        try:
            self.blocks.sync()
            self.catalog.begin()
            self.catalog.write_pages(snap.pages)
            if edit is not None:
                self.catalog.apply(edit, current_actor(self.actor), self.graph.next_layer)
            if rows is not None:
                rows(self.catalog)
            self.catalog.set("collisions", self.blocks.collisions)
            corrupt = self.blocks.corrupt
            if not np.array_equal(corrupt, self._corrupt_saved):
                self.catalog.set_corrupt(corrupt)
            self.catalog.commit()
        except BaseException as e:
            self.catalog.rollback()
            self.blocks.unseal(epoch)
            if isinstance(e, Exception):
                raise AbortedError(str(e) or type(e).__name__) from e
            raise
        self.tables.end(snap)
        self._corrupt_saved = corrupt
        self.blocks.release(epoch)
        if edit is not None:
            self._apply(edit)

    def _apply(self, edit: LayerEdit) -> None:
        """Applies a committed edit to RAM: graph, tables, block references."""
        self.graph.apply(edit)
        self.tables.apply(edit)
        released = edit.released_addresses()
        if len(released):
            # Durable already: the slots are reusable at once (a delete on a full disk must
            # make room for what comes next).
            self.blocks.decref(released)
            self.blocks.release(self.blocks.seal())
        self.generation += 1

    @contextmanager
    def still(self):
        """Holds every change and commit back while the caller works beside the pool (a cluster
        catching a returning node up). Yields False if the pool is closed."""
        with self._lock:
            yield self.catalog is not None

    def flush(self) -> None:
        """Makes every change so far durable. Raises AbortedError if the commit failed."""
        if self.readonly:
            return
        self._wait_ready()
        with self._lock:
            self._commit()

    def log_event(self, kind: str, message: str, actor: str = "engine") -> None:
        """Records an event that no change describes (background work that failed). It is a
        commit: every change so far becomes durable with it. Raises AbortedError if the commit
        failed, ReadOnlyError on a read-only pool."""
        with self._changing():
            self._commit(rows=lambda catalog: catalog.log(actor, kind, message))

    # -- VMs ----------------------------------------------------------------------------------

    def vm(self, name: str) -> VM:
        return self.graph.vm(name)

    def vm_names(self) -> list[str]:
        return self.graph.names()

    def vm_size(self, name: str) -> int:
        return self.graph.vm(name).size

    def create_vm(self, name: str, size: int) -> None:
        """An empty VM of `size` bytes. Raises BadNameError, VMExistsError, OutOfRangeError."""
        if size <= 0:
            raise OutOfRangeError(f"bad VM size {size}: it must be positive")
        with self._changing():
            self._commit(self.graph.plan_create(name, size))

    @staticmethod
    def _check_range(vm: VM, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > vm.size:
            raise OutOfRangeError(f"range {offset}+{length} is outside VM {vm.name!r} "
                                  f"({vm.size} bytes)")

    # -- reads --------------------------------------------------------------------------------

    def read(self, name: str, offset: int, length: int) -> bytes:
        """`length` bytes from `offset` (bytes). Raises VMNotFoundError, OutOfRangeError."""
        with self._lock:
            vm = self.graph.vm(name)
            self._check_range(vm, offset, length)
            return self._read(vm, offset, length)

    def _read(self, vm: VM, offset: int, length: int) -> bytes:
        """Reads through the VM's chain; a rotten block raises CorruptBlockError naming the VM
        and the byte offset of the bad block (it is never returned as data)."""
        try:
            return self._read_top(vm.top, offset, length)
        except CorruptBlockError as e:
            bad = self._offset_of(vm.top, offset, length, e.address)
            raise CorruptBlockError(f"VM {vm.name}: the block at byte {bad} is corrupt (its bytes"
                                    " no longer match its fingerprint)", address=e.address,
                                    offset=bad) from None

    def _offset_of(self, top: int, offset: int, length: int, address: int) -> int:
        bs = self.block_size
        first = offset // bs
        addrs = self.tables.lookup_range(top, first, (offset + length - 1) // bs - first + 1)
        return (first + int(np.flatnonzero(addrs == address)[0])) * bs

    def _read_top(self, top: int, offset: int, length: int) -> bytes:
        if length == 0:
            return b""
        bs = self.block_size
        first = offset // bs
        count = (offset + length - 1) // bs - first + 1
        start = offset - first * bs
        if count == 1:          # the common small random read: no arrays to build
            addr = int(self.tables.lookup_range(top, first, 1)[0])
            return self.blocks.block_bytes(addr)[start:start + length] if addr else bytes(length)
        addrs = self.tables.lookup_range(top, first, count)
        mapped = addrs != 0
        if mapped.all():
            out = self.blocks.gather(addrs)
        else:
            out = np.zeros((count, bs), dtype=np.uint8)
            if mapped.any():
                out[mapped] = self.blocks.gather(addrs[mapped])
        return out.reshape(-1)[start:start + length].tobytes()

    def addresses(self, name: str, lbn: int, count: int) -> np.ndarray:
        """The block address behind each of `count` blocks from `lbn` (0: reads as zeros)."""
        with self._lock:
            return self.tables.lookup_range(self.graph.vm(name).top, lbn, count)

    def extents(self, name: str, offset: int, length: int) -> list[tuple[int, bool]]:
        """The byte range as runs of (length in bytes, hole), in order and covering it exactly:
        a hole has no block behind it and reads as zeros (NBD's base:allocation HOLE|ZERO).
        Runs start and end on block boundaries, except at the range's own ends.
        Raises VMNotFoundError, OutOfRangeError."""
        with self._lock:
            self._check_range(self.graph.vm(name), offset, length)
            if length == 0:
                return []
            bs = self.block_size
            first, end = offset // bs, -(-(offset + length) // bs)
            holes = self.addresses(name, first, end - first) == 0
        starts = np.concatenate(([0], np.flatnonzero(holes[1:] != holes[:-1]) + 1))
        bounds = [max(offset, (first + int(i)) * bs) for i in starts] + [offset + length]
        return [(bounds[k + 1] - bounds[k], bool(holes[i])) for k, i in enumerate(starts)]

    # -- writes -------------------------------------------------------------------------------

    def write(self, name: str, offset: int, data) -> None:
        """Writes `data` at `offset` (bytes), whole or not at all (RefusedError: no space, out
        of range, unknown VM). Durable once flushed."""
        data = memoryview(data).cast("B")
        with self._changing():
            vm = self.graph.vm(name)
            self._check_range(vm, offset, len(data))
            self._write(vm.top, offset, data)

    def trim(self, name: str, offset: int, length: int) -> None:
        """The range reads back as zeros and its blocks are freed; zeroing what already reads as
        zeros adds nothing."""
        with self._changing():
            vm = self.graph.vm(name)
            self._check_range(vm, offset, length)
            self._zero(vm.top, offset, length)

    def _write(self, top: int, offset: int, data: memoryview) -> None:
        if not len(data):
            return
        bs = self.block_size
        head = offset - offset % bs
        tail = -(-(offset + len(data)) // bs) * bs
        end = offset + len(data)
        if head != offset or tail != end:      # partial blocks: read, modify, write
            buf = bytearray(tail - head)
            if head != offset:
                buf[:bs] = self._read_block(top, head)
            if tail != end:
                buf[-bs:] = self._read_block(top, tail - bs)
            buf[offset - head:end - head] = data
            data, offset = memoryview(buf), head
        blocks = np.frombuffer(data, dtype=np.uint8).reshape(-1, bs)
        nonzero = np.flatnonzero(blocks.view(np.uint64).any(axis=1))
        addrs = np.zeros(len(blocks), dtype=np.uint64)
        if len(nonzero):
            # Every block is stored (or refused) before any table entry changes.
            addrs[nonzero] = self.blocks.store_blocks(blocks[nonzero])
        self._set_range(top, offset // bs, addrs)

    def _set_range(self, top: int, lbn: int, addrs: np.ndarray) -> None:
        """Points consecutive blocks from `lbn` at `addrs` (0: reads as zeros) and drops the
        references they replace. Cannot fail."""
        done = 0
        while done < len(addrs):
            n = min(len(addrs) - done, PAGE_ENTRIES - (lbn + done) % PAGE_ENTRIES)
            entries = addrs[done:done + n].copy()
            zeros = entries == INHERIT
            if zeros.any():
                entries[zeros] = self.tables.zero_fill(top, lbn + done, n)[zeros]
            self.blocks.decref(self.tables.set_entries(top, lbn + done, entries))
            done += n

    def _read_block(self, top: int, offset: int) -> bytes:
        bs = self.block_size
        addr = int(self.tables.lookup_range(top, offset // bs, 1)[0])
        return self.blocks.block_bytes(addr) if addr else bytes(bs)

    def _zero(self, top: int, offset: int, length: int) -> None:
        if length == 0:
            return
        bs = self.block_size
        first = -(-offset // bs)                  # first whole block inside the range
        last = (offset + length) // bs            # one past the last whole block
        if first >= last:
            self._write(top, offset, memoryview(bytes(length)))
            return
        # The partial blocks at either end are the only part that may need new slots: they go
        # first, so that a refusal leaves the whole range as it was.
        head = memoryview(bytes(first * bs - offset))
        tail = memoryview(bytes(offset + length - last * bs))
        if len(head) and len(tail):
            self._write_ends(top, offset, head, last * bs, tail)
        elif len(head):
            self._write(top, offset, head)
        elif len(tail):
            self._write(top, last * bs, tail)
        self._set_range(top, first, np.zeros(last - first, dtype=np.uint64))

    def _write_ends(self, top: int, head_at: int, head, tail_at: int, tail) -> None:
        """Zeroes the partial blocks at both ends of a range, stored together (all or none)."""
        bs = self.block_size
        lo, hi = head_at - head_at % bs, tail_at
        buf = bytearray(self._read_block(top, lo) + self._read_block(top, hi))
        buf[head_at - lo:bs] = head
        buf[bs:bs + len(tail)] = tail
        blocks = np.frombuffer(buf, dtype=np.uint8).reshape(2, bs)
        nonzero = np.flatnonzero(blocks.view(np.uint64).any(axis=1))
        addrs = np.zeros(2, dtype=np.uint64)
        if len(nonzero):
            addrs[nonzero] = self.blocks.store_blocks(blocks[nonzero])
        self._set_range(top, lo // bs, addrs[:1])
        self._set_range(top, hi // bs, addrs[1:])

    # -- clones and deletes -------------------------------------------------------------------

    def clone(self, source: str, new: str, count: int = 1) -> list[str]:
        """Links new VMs to `source`'s blocks: O(1) each, whatever the size.

        Makes `new`, or NEW-1 … NEW-count. The source's top layer is frozen and becomes the
        shared base; the source and every clone get an empty top layer of their own. If the
        source has written nothing since it was last frozen, its base is shared as it is.
        Raises VMNotFoundError, VMExistsError, BadNameError, RefusedError (count < 1).
        """
        if count < 1:
            raise RefusedError(f"bad clone count {count}: it must be at least 1")
        names = [new] if count == 1 else [f"{new}-{i}" for i in range(1, count + 1)]
        with self._changing():
            top = self.graph.vm(source).top
            edit = self.graph.plan_clone(source, names, self.tables.is_empty(top))
            label = names[0] if count == 1 else f"{names[0]} … {names[-1]}"
            edit.events.append(("clone", f"cloned {source} to {label}"))
            self._commit(edit)
        return names

    def delete(self, name: str) -> None:
        """Deletes a VM, frees what only it referenced, and collects layers nobody needs:
        a frozen layer left with no children goes too, one left with a single child merges
        into it. Raises VMNotFoundError."""
        with self._changing():
            edit, merges = self.graph.plan_delete(name)
            merged = {m.layer for m in merges}
            for layer in edit.dropped:
                if layer not in merged:
                    edit.released.append(self.tables.layer_entries(layer))
            for merge in merges:
                pages, shadowed = self.tables.merged_pages(merge, root=merge.parent is None)
                edit.pages.update(pages)
                edit.released.append(shadowed)
            edit.events.append(("delete", f"deleted {name}"))
            self._commit(edit)

    # -- images -------------------------------------------------------------------------------

    def import_image(self, name: str, source: str, progress: ProgressCallback | None = None) -> VM:
        """Imports a raw image file, or stdin for "-"; holes and zeros take no space.

        The image goes into a layer of its own that becomes the new VM only once it is whole:
        a failure or a refusal (no space, a bad image) leaves nothing behind.
        Raises BadNameError, VMExistsError, BadImageError, NoSpaceError, AbortedError.
        """
        with self._changing():
            layer = self.graph.begin_import(name)
        try:
            image = imageio.open_image(source)
            try:
                size = self._fill(layer, image, progress)
            finally:
                image.close()
            with self._changing():
                events = [("import", f"imported {name} ({formats.size(size)})")]
                self._commit(self.graph.plan_register(layer, size, events))
        except BaseException:
            with self._lock:
                if self.graph.has_layer(layer) and layer in self.graph.provisional:
                    self.blocks.decref(self.tables.forget_layer(layer))
            raise
        finally:
            with self._lock:
                self.graph.end_import(layer)
        return self.graph.vm(name)

    def _fill(self, layer: int, image, progress) -> int:
        """Writes an image's chunks into a provisional layer; returns its size in bytes."""
        meter = Meter(progress, "import", image.size, unit_bytes=1)
        size = image.size
        for offset, data in image.chunks(PAGE_ENTRIES * self.block_size):
            size = max(size, offset + len(data))       # stdin: grows as it comes
            with self._changing():
                self._write(layer, offset, memoryview(data))
            meter.done = offset + len(data)
            meter.advance(0)
        if size == 0:
            raise imageio.empty_image(image.name)
        meter.finish()
        return size

    def export(self, name: str, dest: str, progress: ProgressCallback | None = None) -> None:
        """Writes the VM byte for byte to a file (sparse where it has holes) or stdout ("-")."""
        with self._lock:
            size = self.graph.vm(name).size
        chunk = PAGE_ENTRIES * self.block_size
        meter = Meter(progress, "export", size, unit_bytes=1)
        with imageio.open_output(dest, size) as out:
            for offset in range(0, size, chunk):
                n = min(chunk, size - offset)
                with self._lock:
                    top = self.graph.vm(name).top
                    mapped = self.tables.lookup_range(top, offset // self.block_size,
                                                      -(-n // self.block_size)) != 0
                    data = self._read(self.graph.vm(name), offset, n) if mapped.any() else None
                if data is not None:
                    out.write_blocks(offset, data, mapped, self.block_size)
                meter.done = offset + n
                meter.advance(0)
        meter.finish()

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
        """Every broken promise, judged on the committed state (the pool commits first)."""
        self._wait_ready()
        with self._lock:
            if not self.readonly:
                self._commit()
            return fsck_mod.check(self, progress)

    def scrub(self, rate: float | None = None, progress: ProgressCallback | None = None,
              cancel: threading.Event | None = None) -> dict:
        """Verifies every live block against its fingerprint (the anchor is `zpool scrub`),
        SCRUB_BATCH blocks at a time under the lock, so reads and writes go on in between.

        rate: at most this many bytes a second (None: as fast as it goes). Where it got to is
        committed every few seconds, so a scrub cancelled (or a process killed) resumes there
        the next time; a scrub that reaches the end starts over the time after. Rotten blocks
        are remembered as corrupt. Returns {"blocks", "bytes", "corrupt" (addresses found),
        "seconds", "bytes_per_s", "finished"}. Raises ReadOnlyError.
        """
        if self.readonly:
            raise ReadOnlyError(f"pool {self.path} is open read-only: scrub records what it finds")
        self._wait_ready()
        started = time.monotonic()
        with self._lock:
            cursor = int(self.catalog.get("scrub_cursor") or 0)
            total = len(self.blocks.live())
        meter = Meter(progress, "scrub", total, unit_bytes=self.block_size)
        checked, found, saved, finished = 0, [], time.monotonic(), False
        while not (cancel is not None and cancel.is_set()):
            with self._lock:
                cursor, n, bad = self.blocks.scrub(cursor, SCRUB_BATCH)
            checked += n
            found.append(bad)
            meter.advance(n)
            if not n:
                finished = True
                break
            if rate:
                ahead = checked * self.block_size / rate - (time.monotonic() - started)
                if ahead > 0 and cancel is not None:
                    cancel.wait(ahead)
                elif ahead > 0:
                    time.sleep(ahead)
            if time.monotonic() - saved >= SCRUB_SAVE_S:
                self._save_scrub(cursor)
                saved = time.monotonic()
        self._save_scrub(cursor)
        meter.finish()
        seconds = time.monotonic() - started
        corrupt = np.concatenate(found) if found else np.zeros(0, np.uint64)
        return {"blocks": checked, "bytes": checked * self.block_size,
                "corrupt": [int(a) for a in corrupt], "seconds": round(seconds, 4),
                "bytes_per_s": int(checked * self.block_size / seconds) if seconds else 0,
                "finished": finished}

    def _save_scrub(self, cursor: int) -> None:
        with self._lock:
            self._commit(rows=lambda catalog: catalog.set("scrub_cursor", cursor))

    def events(self, limit: int = 100) -> list[dict]:
        with self._lock:
            return self.catalog.events(limit)
