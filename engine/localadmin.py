"""LocalAdmin: the Admin interface over a pool embedded in this process.

The pool answers in plain dicts; this is where they become engine.results, so that what the
console and the CLI see is the same whichever Admin answers.
"""

from __future__ import annotations

from . import _native, formats, imageio
from .admin import Admin
from .core import engine_error
from .errors import BlockfoldError, RefusedError
from .pool import Pool
from .progress import ProgressCallback, cancellable
from .results import (BlockPage, BlockRow, Event, Extent, HealFigures, ImportResult,
                      NodeStatus, PoolStats, Problem, RebuildFigures, RebuildRecord, ScrubFigures,
                      VMInfo, VMSnapshot, VMStats)


class LocalAdmin(Admin):
    kind = "pool"

    def __init__(self, pool: Pool):
        self.pool = pool
        self.name = str(pool.path)

    @classmethod
    def open(cls, path, *, readonly: bool = False, rebuild: str | None = None,
             progress: ProgressCallback | None = None, wait: bool = True,
             actor: str = "cli") -> LocalAdmin:
        """Opens the pool in `path` and rebuilds its RAM metadata.

        readonly: no write lock (it runs beside a writer), and every change is refused.
        rebuild: "fast" (stored fingerprints, the default) or "full" (re-hash every block).
        wait: False returns at once; reads are served while the rebuild runs behind.
        actor: who the event log names for this admin's changes.
        Raises NotAPoolError, PoolFormatError, PoolLockedError (another process writes).
        """
        return cls(Pool.open(path, readonly=readonly, rebuild=rebuild, progress=progress,
                             wait=wait, actor=actor))

    @property
    def block_size(self) -> int:
        return self.pool.block_size

    @property
    def rebuild_phases(self) -> tuple[str, ...]:
        return self.pool.blocks.rebuild_phases

    # -- volumes ------------------------------------------------------------------------------

    def vm_names(self): return self.pool.vm_names()
    def vm_size(self, name): return self.pool.vm_size(name)
    def read(self, name, offset, length): return self.pool.read(name, offset, length)
    def write(self, name, offset, data, force=False): self.pool.write(name, offset, data)

    def write_file(self, name, offset, source, force=False, progress=None, cancel=None):
        opened = imageio.open_source(source) if isinstance(source, str) else source
        try:
            return self.pool.write_from(name, offset, opened, cancellable(progress, cancel))
        finally:
            if opened is not source:
                opened.close()

    def trim(self, name, offset, length): self.pool.trim(name, offset, length)
    def flush(self): self.pool.flush()

    def extents(self, name, offset, length):
        return [Extent(n, hole) for n, hole in self.pool.extents(name, offset, length)]

    # -- VMs ----------------------------------------------------------------------------------

    def vms(self):
        known = not self.pool.rebuilding
        return [_vm(v, known) for v in self.pool.vm_list()]

    def import_image(self, name, source, progress=None, cancel=None):
        vm = self.pool.import_image(name, source, cancellable(progress, cancel))
        return ImportResult(vm.name, vm.size)

    def export(self, name, dest, progress=None, cancel=None, snapshot=None):
        self.pool.export(name, dest, cancellable(progress, cancel), snapshot)

    def clone(self, source, new, count=1, progress=None, cancel=None):
        return self.pool.clone(source, new, count, progress, cancel)

    def delete(self, name, force=False): self.pool.delete(name)
    def refresh(self, name, force=False): self.pool.refresh(name)
    def rename(self, old, new, force=False): self.pool.rename(old, new)

    def rebase(self, names, golden, keep_writes=False, force=False, shrink=False):
        if keep_writes and not shrink:
            shrunk = self.pool.graph.check_rebase(names, golden, keep_writes)
            if shrunk:
                raise RefusedError(formats.shrink_refused(
                    self.pool.vm_size(golden), [(vm.name, vm.size) for vm in shrunk],
                    "rebasing keeping its writes" if len(shrunk) == 1
                    else "rebasing them keeping their writes",
                    f"{golden} ({formats.exact_size(self.pool.vm_size(golden))})"))
        self.pool.rebase(names, golden, keep_writes)

    def clones_of(self, name):
        self.pool.vm(name)
        return self.pool.graph.clones_of(name)

    def resize(self, name, size, shrink=False, force=False):
        old = self.pool.vm_size(name)
        if size < old and not shrink:
            raise RefusedError(formats.shrink_refused(size, [(name, old)]))
        self.pool.resize(name, size)

    def vm_info(self, name):
        vm = self.pool.vm(name)
        stats = next(v for v in self.vms() if v.name == name)
        return VMInfo(stats=stats, clones=self.pool.graph.clones_of(name),
                      snapshots=self.snapshots(name), attached=[],
                      refreshable=vm.base is not None,
                      base_size=vm.base_size if vm.base is not None else None)

    def take_snapshot(self, name, snap): self.pool.snapshot(name, snap)
    def snapshots(self, name): return [VMSnapshot(**s) for s in self.pool.snapshots(name)]
    def rollback(self, name, snap, force=False): self.pool.rollback(name, snap)
    def remove_snapshot(self, name, snap): self.pool.snapshot_rm(name, snap)

    # -- the pool -----------------------------------------------------------------------------

    def stats(self):
        raw = self.pool.stats()
        known = raw["state"] == "ready"
        return PoolStats(
            path=raw["path"], block_size=raw["block_size"], state=raw["state"],
            logical_bytes=raw["logical_bytes"],
            physical_bytes=raw["physical_bytes"] if known else None,
            dedup_ratio=raw["dedup_ratio"] if known else None,
            unique_blocks=raw["unique_blocks"] if known else None,
            free_slots=raw.get("free_slots"), capacity_bytes=raw.get("capacity_bytes"),
            usable_bytes=raw.get("usable_bytes"),
            collisions=raw.get("collisions"),
            corrupt_blocks=raw.get("corrupt_blocks"),
            refcount_histogram=raw.get("refcount_histogram"),
            readers_histogram=raw.get("readers_histogram"),
            metadata_ram_bytes=raw.get("metadata_ram_bytes"),
            metadata_ram_bytes_per_block=raw.get("metadata_ram_bytes_per_block"),
            repaired_copies=raw.get("repaired_copies"),
            **self._replication(raw),
            rebuilds=[RebuildRecord(**r) for r in raw["rebuilds"]],
            vms=[_vm(v, known) for v in raw["vms"]],
            nodes=self._nodes(raw), snapshots=raw["snapshots"],
            snapshot_blocks=raw["snapshot_blocks"], reserve_bytes=raw.get("reserve_bytes"),
            damage=raw.get("damage"))

    def _replication(self, raw: dict) -> dict:
        """One copy of every block, in this pool's slot files."""
        return {"replicas": 1, "min_replicas": 1,
                "under_replicated_blocks": 0 if raw["state"] == "ready" else None,
                "lost_blocks": 0 if raw["state"] == "ready" else None}

    def known_blocks(self, fingerprints):
        if not self.pool.local:
            raise RefusedError("a dedup estimate looks fingerprints up in a pool's index: not"
                               " on a cluster yet")
        self.pool._wait_ready()
        try:
            return self.pool.core.known(fingerprints)
        except _native.NativeError as e:
            raise engine_error(e) from None

    def blocks(self, vm=None, min_refs=None, max_refs=None, prefix=None, offset=0, limit=100):
        page = self.pool.block_page(vm=vm, min_refs=min_refs, max_refs=max_refs, prefix=prefix,
                                    offset=offset, limit=limit)
        return BlockPage(page["total"], page["offset"], [BlockRow(**r) for r in page["rows"]])

    def rebuild(self, full=False, progress=None, cancel=None):
        return self._rebuild_figures(self.pool.rebuild(full, progress, cancel))

    def last_rebuild(self):
        return self._rebuild_figures(self.pool.last_rebuild)

    def _rebuild_figures(self, raw: dict) -> RebuildFigures:
        return RebuildFigures(
            mode=raw["mode"], reason=raw["reason"], seconds=raw["seconds"], pages=raw["pages"],
            references=raw["references"], blocks=raw["blocks"], bytes=raw["bytes"],
            bytes_per_s=raw["bytes_per_s"], corrupt_blocks=raw["corrupt_blocks"],
            bad_references=raw["bad_references"], orphans_reclaimed=raw["orphans_reclaimed"],
            missing_blocks=None, free_slots=raw["free_slots"],
            capacity_slots=raw["capacity_slots"], damage=raw.get("damage"))

    def fsck(self, progress=None, cancel=None):
        return [Problem(**p) for p in self.pool.fsck(cancellable(progress, cancel))]

    def scrub(self, rate=None, progress=None, cancel=None):
        return ScrubFigures(**self.pool.scrub(rate, progress, cancel), repaired=None)

    def events(self, limit=100, since=None):
        return [Event(**e) for e in self.pool.events(limit, since)]

    # -- nodes --------------------------------------------------------------------------------

    def nodes(self):
        return self._nodes(self.pool.stats())

    def _nodes(self, raw: dict) -> list[NodeStatus]:
        """The pool itself, as the one node that holds every block."""
        live = raw["unique_blocks"] if raw["state"] == "ready" else None
        return [NodeStatus(name="local", address=str(self.pool.path), state="up",
                           latency_ms=None, capacity_bytes=raw.get("capacity_bytes"),
                           blocks=live, live_blocks=live, under_replicated=0, weight=None,
                           catalog_version=None, last_seen=None, error="")]

    def only_copies(self, name):
        raise BlockfoldError("an embedded pool has no nodes: open a cluster")

    def writes_without(self, name):
        raise BlockfoldError("an embedded pool has no nodes: open a cluster")

    def fail_node(self, name):
        raise BlockfoldError("an embedded pool has no nodes to fail: open a cluster")

    def restore_node(self, name):
        raise BlockfoldError("an embedded pool has no nodes to restore: open a cluster")

    def removal(self, name, force=False):
        raise BlockfoldError("an embedded pool has no nodes to remove: open a cluster")

    def remove_node(self, name, force=False, delete_data=False, progress=None, cancel=None):
        raise BlockfoldError("an embedded pool has no nodes to remove: open a cluster")

    def heal(self, wait=True, progress=None, cancel=None) -> HealFigures:
        raise BlockfoldError("an embedded pool keeps one copy of each block: nothing to heal")

    def on_reopen(self, reopened) -> None:
        """Asks to be handed this pool's Admin opened afresh, should this one lose the right to
        write and win it back (a fenced cluster writer: engine/cluster/admin.py); reopened(new)
        is called from a thread of the engine's. A local pool's lock is never taken from it:
        nothing to do."""

    def on_fenced(self, fenced) -> None:
        """Asks to be told at once, fenced(line), should this Admin lose the right to write to a
        newer writer (engine/cluster/admin.py); called from a thread of the engine's, `line`
        being what fenced() says from then on. A local pool is never fenced: nothing to do."""

    def held_by(self, what: str, command: str, advice: str) -> None:
        """Names what holds this pool to the openers refused meanwhile: "pool P is held by
        `what` (pid N, `command`): `advice`" (engine/lock.py). Raises OSError."""
        self.pool.held_by(what, command, advice)

    def close(self): self.pool.close()


def _vm(raw: dict, known: bool) -> VMStats:
    """A VM's figures; which blocks are its own is known only once the refcounts are."""
    return VMStats(name=raw["name"], size=raw["size"], logical_bytes=raw["logical_bytes"],
                   logical_blocks=raw["logical_blocks"],
                   unique_blocks=raw["unique_blocks"] if known else None,
                   shared_blocks=raw["shared_blocks"] if known else None,
                   depth=raw["depth"], origin=raw["origin"], created=raw["created"],
                   snapshots=raw["snapshots"])
