"""A pool: the read, write, clone and delete paths over slots, index, refcounts and block tables.

A pool is a directory holding the sqlite catalog (catalog.db) and the slot files (blocks.dat,
hashes.dat). Every write is deduplicated inline: blocks of zeros take no slot; other blocks are
fingerprinted with xxh3-128, looked up in the index, and shared only when the bytes compare equal.

Changes accumulate in one open transaction and become durable together on flush(): the slot files
are synced first, then the block-table pages and catalog rows commit, so a committed reference
never points at data that is not on disk.

Thread-safe: every public method holds the pool's lock. After open, reads are served at once while
the RAM metadata is rebuilt; writes wait for the rebuild to finish.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import xxhash

from . import fsck as fsck_mod
from . import blockview, imageio, stats as stats_mod
from .blockstore import BlockStore
from .blocktable import INHERIT, PAGE_ENTRIES, ZERO, BlockTables
from .catalog import CATALOG_FILE, Catalog
from .errors import (BlockfoldError, NoSpaceError, NotAPoolError, OutOfRangeError,
                     ReadOnlyError, VMExistsError, VMNotFoundError)
from .localblocks import LocalBlocks
from .lock import PoolLock
from .names import check_vm_name
from .progress import Meter, ProgressCallback

DEFAULT_BLOCK_SIZE = 4096
BLOCK_SIZES = tuple(1 << n for n in range(12, 17))    # 4 KiB .. 64 KiB


fingerprint = xxhash.xxh3_128_digest     # a block's 16-byte fingerprint


class VM:
    __slots__ = ("name", "size", "top", "created", "origin")

    def __init__(self, name: str, size: int, top: int, created: float, origin: str | None):
        self.name, self.size, self.top, self.created, self.origin = name, size, top, created, origin


class Pool:
    # -- creation and opening -----------------------------------------------------------------

    @staticmethod
    def create(path, block_size: int = DEFAULT_BLOCK_SIZE) -> Path:
        path = Path(path)
        if block_size not in BLOCK_SIZES:
            raise BlockfoldError(f"bad block size {block_size}: use a power of two from 4096 to"
                                 " 65536")
        if (path / CATALOG_FILE).exists():
            raise BlockfoldError(f"{path} is already a Blockfold pool")
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise BlockfoldError(f"{path} exists and is not an empty directory")
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
            store = BlockStore(path, int(catalog.get("block_size")), readonly=readonly)
        except BaseException:
            if lock:
                lock.release()
            raise
        blocks = LocalBlocks(store, fingerprint, int(catalog.get("collisions") or 0))
        return cls.attach(path, catalog, blocks, lock=lock, readonly=readonly, rebuild=rebuild,
                          progress=progress, wait=wait, actor=actor)

    @classmethod
    def attach(cls, path, catalog: Catalog, blocks, *, lock=None, readonly: bool = False,
               rebuild: str | None = None, progress: ProgressCallback | None = None,
               wait: bool = True, actor: str = "cli") -> Pool:
        """A pool over an open catalog and block layer (a local pool's, or a cluster's);
        marks it in use and rebuilds its RAM metadata."""
        pool = cls(path, catalog, blocks, lock, readonly, actor)
        crashed = catalog.get("state") == "dirty"
        if not readonly:
            catalog.set("state", "dirty")
        reason = "crash" if crashed else ("requested" if rebuild else "open")
        pool._start_rebuild(rebuild == "full", reason, progress, background=not wait)
        return pool

    def __init__(self, path, catalog: Catalog, blocks, lock, readonly: bool, actor: str):
        """`blocks` is the block layer: LocalBlocks here, or a cluster's."""
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
        self.generation = 0          # bumped on every change; caches of derived views key on it
        self._load_catalog()

    def _load_catalog(self) -> None:
        self.vms = {name: VM(name, r["size"], r["top"], r["created"], r["origin"])
                    for name, r in self.catalog.vms().items()}
        self.parents = self.catalog.layer_parents()
        self.tops = {vm.top for vm in self.vms.values()}
        self.tables = BlockTables(self.catalog.conn, self.parents, self.tops)
        self._visible_cache: dict[int, int] = {}

    def close(self) -> None:
        """Flushes, marks the pool clean and releases it."""
        self._ready.wait()
        with self._lock:
            if self.catalog is None:
                return
            if not self.readonly and self._rebuild_error is None:
                self._commit()
                self.catalog.set("state", "clean")
            self.catalog.close()
            self.blocks.close()
            if self._lock_file:
                self._lock_file.release()
            self.catalog = None

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
                layers = set(self.parents)
            figures = self.blocks.rebuild(conn, layers, full=full, progress=progress,
                                          cancel=cancel, reclaim=not self.readonly)
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
            if not self.readonly:
                self.catalog.record_rebuild(figures)
            self._ready.set()
        return figures

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

    # -- transactions -------------------------------------------------------------------------

    @contextmanager
    def _change(self):
        """Runs a change inside the open transaction; an unexpected error rolls it all back."""
        if self.readonly:
            raise ReadOnlyError(f"pool {self.path} is open read-only")
        self._wait_ready()
        with self._lock:
            self.catalog.begin()
            try:
                yield
            except NoSpaceError:
                self._abort()       # a write cut short by a full disk must not commit half-done
                raise
            except BlockfoldError:
                raise               # refused before anything changed
            except BaseException:
                self._abort()
                raise
            self.generation += 1

    def _abort(self) -> None:
        """Back to the last durable state: roll back, reload, rebuild the RAM metadata."""
        self.catalog.rollback()
        self._load_catalog()
        self._run_rebuild(False, "rollback", None, None)

    def flush(self) -> None:
        """Makes every change so far durable."""
        if self.readonly:
            return
        self._wait_ready()
        with self._lock:
            self._commit()

    def _commit(self) -> None:
        if not self.catalog.in_transaction:
            return
        self.blocks.sync()
        self.tables.flush()
        self.catalog.set("collisions", self.blocks.collisions)
        self.catalog.commit()
        self.blocks.committed()

    # -- VMs ----------------------------------------------------------------------------------

    def vm(self, name: str) -> VM:
        try:
            return self.vms[name]
        except KeyError:
            raise VMNotFoundError(f"no VM named {name!r}") from None

    def vm_names(self) -> list[str]:
        return sorted(self.vms)

    def vm_size(self, name: str) -> int:
        return self.vm(name).size

    def _check_new_name(self, name: str) -> None:
        check_vm_name(name)
        if name in self.vms:
            raise VMExistsError(f"a VM named {name!r} already exists")

    def create_vm(self, name: str, size: int) -> None:
        self._check_new_name(name)
        if size <= 0:
            raise OutOfRangeError(f"bad VM size {size}: it must be positive")
        with self._change():
            self._add_vm(name, size, None, None)
            self._commit()

    def _add_vm(self, name: str, size: int, parent: int | None, origin: str | None) -> VM:
        layer = self.catalog.new_layers(parent, 1)[0]
        self.parents[layer] = parent
        self.tops.add(layer)
        vm = VM(name, size, layer, time.time(), origin)
        self.catalog.put_vm(vm)
        self.vms[name] = vm
        return vm

    def _check_range(self, vm: VM, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > vm.size:
            raise OutOfRangeError(f"range {offset}+{length} is outside VM {vm.name!r} "
                                  f"({vm.size} bytes)")

    # -- reads --------------------------------------------------------------------------------

    def read(self, name: str, offset: int, length: int) -> bytes:
        with self._lock:
            vm = self.vm(name)
            self._check_range(vm, offset, length)
            return self._read(vm, offset, length)

    def _read(self, vm: VM, offset: int, length: int) -> bytes:
        if length == 0:
            return b""
        bs = self.block_size
        first = offset // bs
        count = (offset + length - 1) // bs - first + 1
        start = offset - first * bs
        if count == 1:          # the common small random read: no arrays to build
            addr = int(self.tables.lookup_range(vm.top, first, 1)[0])
            return self.blocks.block_bytes(addr)[start:start + length] if addr else bytes(length)
        addrs = self.tables.lookup_range(vm.top, first, count)
        mapped = addrs != 0
        if mapped.all():
            out = self.blocks.gather(addrs)
        else:
            out = np.zeros((count, bs), dtype=np.uint8)
            if mapped.any():
                out[mapped] = self.blocks.gather(addrs[mapped])
        return out.reshape(-1)[start:start + length].tobytes()

    def addresses(self, name: str, lbn: int, count: int) -> np.ndarray:
        """The slot behind each of `count` blocks from `lbn` (0: reads as zeros)."""
        with self._lock:
            return self.tables.lookup_range(self.vm(name).top, lbn, count)

    # -- writes -------------------------------------------------------------------------------

    def write(self, name: str, offset: int, data) -> None:
        data = memoryview(data).cast("B")
        with self._change():
            vm = self.vm(name)
            self._check_range(vm, offset, len(data))
            self._write(vm, offset, data)

    def trim(self, name: str, offset: int, length: int) -> None:
        """Frees the range; it reads back as zeros."""
        with self._change():
            vm = self.vm(name)
            self._check_range(vm, offset, length)
            self._zero(vm, offset, length)

    def _write(self, vm: VM, offset: int, data: memoryview) -> None:
        bs = self.block_size
        head = offset - offset % bs
        tail = -(-(offset + len(data)) // bs) * bs
        end = offset + len(data)
        if head != offset or tail != end:      # partial blocks: read, modify, write
            buf = bytearray(tail - head)
            if head != offset:
                buf[:bs] = self._read_block(vm, head)
            if tail != end:
                buf[-bs:] = self._read_block(vm, tail - bs)
            buf[offset - head:end - head] = data
            data, offset = memoryview(buf), head
        lbn, nblocks = offset // bs, len(data) // bs
        done = 0
        while done < nblocks:
            n = min(nblocks - done, PAGE_ENTRIES - (lbn + done) % PAGE_ENTRIES)
            self._write_blocks(vm.top, lbn + done, data[done * bs:(done + n) * bs])
            done += n

    def _read_block(self, vm: VM, offset: int) -> bytes:
        bs = self.block_size
        addr = int(self.tables.lookup_range(vm.top, offset // bs, 1)[0])
        return self.blocks.block_bytes(addr) if addr else bytes(bs)

    def _zero(self, vm: VM, offset: int, length: int) -> None:
        if length == 0:
            return
        bs = self.block_size
        first = -(-offset // bs)                  # first whole block inside the range
        last = (offset + length) // bs            # one past the last whole block
        if first >= last:
            self._write(vm, offset, memoryview(bytes(length)))
            return
        if offset < first * bs:
            self._write(vm, offset, memoryview(bytes(first * bs - offset)))
        if (offset + length) > last * bs:
            self._write(vm, last * bs, memoryview(bytes(offset + length - last * bs)))
        fill = INHERIT if self.parents[vm.top] is None else ZERO
        lbn = first
        while lbn < last:
            n = min(last - lbn, PAGE_ENTRIES - lbn % PAGE_ENTRIES)
            self.blocks.decref(self.tables.set_entries(vm.top, lbn, np.full(n, fill, np.uint64)))
            lbn += n

    def _write_blocks(self, top: int, lbn0: int, chunk: memoryview) -> None:
        """Writes whole blocks that fall within one block-table page."""
        bs = self.block_size
        n = len(chunk) // bs
        words = np.frombuffer(chunk, dtype=np.uint64).reshape(n, bs // 8)
        nonzero = np.flatnonzero(words.any(axis=1))
        entries = np.full(n, INHERIT if self.parents[top] is None else ZERO, dtype=np.uint64)
        if len(nonzero):
            entries[nonzero] = self.blocks.store_blocks(chunk, words, nonzero)
        self.blocks.decref(self.tables.set_entries(top, lbn0, entries))

    # -- clones and deletes -------------------------------------------------------------------

    def clone(self, source: str, new: str, count: int = 1) -> list[str]:
        """Links new VMs to `source`'s blocks: O(1) each, whatever the size.

        The source's top layer is frozen and becomes the shared base; the source and every clone
        get an empty top layer of their own. If the source has written nothing since it was last
        frozen, its base is shared as it is and no layer is frozen.
        """
        if count < 1:
            raise BlockfoldError(f"bad clone count {count}: it must be at least 1")
        names = [new] if count == 1 else [f"{new}-{i}" for i in range(1, count + 1)]
        for name in names:
            self._check_new_name(name)
        with self._change():
            vm = self.vm(source)
            base = self.parents[vm.top]
            if base is None or not self.tables.is_empty(vm.top):
                base = vm.top
                vm.top = self.catalog.new_layers(base, 1)[0]
                self.parents[vm.top] = base
                self.tops.discard(base)
                self.tops.add(vm.top)
                self.catalog.put_vm(vm)
            layers = self.catalog.new_layers(base, len(names))
            now = time.time()
            for name, layer in zip(names, layers):
                self.parents[layer] = base
                self.tops.add(layer)
                self.vms[name] = VM(name, vm.size, layer, now, source)
            self.catalog.put_vms([self.vms[n] for n in names])
            label = names[0] if count == 1 else f"{names[0]} … {names[-1]}"
            self.catalog.log(self.actor, "clone", f"cloned {source} to {label}")
            self._commit()
        return names

    def delete(self, name: str) -> None:
        """Deletes a VM, frees what only it referenced, and collects layers nobody needs."""
        with self._change():
            vm = self.vm(name)
            del self.vms[name]
            self.catalog.delete_vm(name)
            self.tops.discard(vm.top)
            self._drop_layer(vm.top)
            self.catalog.log(self.actor, "delete", f"deleted {name}")
            self._commit()

    def _drop_layer(self, layer: int) -> None:
        """Drops a layer nobody reads any more, then collects upwards: a frozen layer left with
        no children goes too, and one left with a single child merges into it."""
        while True:
            self.blocks.decref(self.tables.layer_entries(layer))
            self.tables.drop_layer(layer)
            parent = self.parents.pop(layer)
            self.catalog.delete_layer(layer)
            self._layers_changed()
            if parent is None or parent in self.tops:
                return
            children = [lid for lid, p in self.parents.items() if p == parent]
            if not children:
                layer = parent
                continue
            if len(children) == 1:
                self._merge_into_child(parent, children[0])
            return

    def _merge_into_child(self, layer: int, child: int) -> None:
        grandparent = self.parents[layer]
        self.blocks.decref(self.tables.merge_into_child(layer, child, grandparent is None))
        self.parents[child] = grandparent
        del self.parents[layer]
        self.catalog.reparent(child, grandparent)
        self.catalog.delete_layer(layer)
        self._layers_changed()

    def _layers_changed(self) -> None:
        self.tables.forget_resolved()
        self._visible_cache.clear()

    def chain(self, layer: int) -> list[int]:
        out = []
        while layer is not None:
            out.append(layer)
            layer = self.parents[layer]
        return out

    # -- images -------------------------------------------------------------------------------

    def import_image(self, name: str, source: str, progress: ProgressCallback | None = None) -> VM:
        """Imports a raw image file, or stdin for "-"; holes and zeros take no space."""
        self._check_new_name(name)
        image = imageio.open_image(source)
        try:
            with self._change():
                vm = self._add_vm(name, image.size, None, None)
                meter = Meter(progress, "import", image.size)
                try:
                    for offset, data in image.chunks(PAGE_ENTRIES * self.block_size):
                        vm.size = max(vm.size, offset + len(data))   # stdin: grows as it comes
                        self._write(vm, offset, memoryview(data))
                        meter.done = offset + len(data)
                        meter.advance(0)
                    if vm.size == 0:
                        raise imageio.empty_image(source)
                except BaseException:
                    self._discard(vm)
                    raise
                self.catalog.put_vm(vm)
                self.catalog.log(self.actor, "import", f"imported {name} ({vm.size} bytes)")
                self._commit()
                meter.finish()
                return vm
        finally:
            image.close()

    def _discard(self, vm: VM) -> None:
        """Undoes a half-made VM inside the open transaction."""
        self.vms.pop(vm.name, None)
        self.catalog.delete_vm(vm.name)
        self.tops.discard(vm.top)
        self._drop_layer(vm.top)
        self._commit()

    def export(self, name: str, dest: str, progress: ProgressCallback | None = None) -> None:
        """Writes the VM byte for byte to a file (sparse where it has holes) or stdout ("-")."""
        with self._lock:
            size = self.vm(name).size
        chunk = PAGE_ENTRIES * self.block_size
        meter = Meter(progress, "export", size)
        with imageio.open_output(dest, size) as out:
            for offset in range(0, size, chunk):
                n = min(chunk, size - offset)
                with self._lock:
                    vm = self.vm(name)
                    mapped = self.tables.lookup_range(vm.top, offset // self.block_size,
                                                      -(-n // self.block_size)) != 0
                    data = self._read(vm, offset, n) if mapped.any() else None
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
            return [stats_mod.vm_stats(self, vm) for vm in sorted(self.vms.values(),
                                                                  key=lambda v: v.name)]

    def block_page(self, **filters) -> dict:
        """A page of the block table; see engine.blockview.block_page for the filters."""
        self._wait_ready()
        with self._lock:
            return blockview.block_page(self, **filters)

    def fsck(self, progress: ProgressCallback | None = None) -> list[dict]:
        self._wait_ready()
        with self._lock:
            return fsck_mod.check(self, progress)

    def events(self, limit: int = 100) -> list[dict]:
        with self._lock:
            return self.catalog.events(limit)

    def log_event(self, kind: str, message: str) -> None:
        with self._change():
            self.catalog.log(self.actor, kind, message)
            self._commit()
