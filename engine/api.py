"""The one admin interface that the console and the CLI use, whether the pool is embedded or not.

`Admin` is the interface; `LocalAdmin` runs it over an embedded pool in this process. A cluster
implementation provides the same methods. Everything returned is plain data (dicts, lists, bytes),
so callers never reach inside the engine.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from .errors import BlockfoldError, CancelledError, VMNotFoundError  # noqa: F401  (re-exported)
from .pool import DEFAULT_BLOCK_SIZE, Pool
from .progress import Progress, ProgressCallback  # noqa: F401
from .units import human_bytes, parse_size  # noqa: F401


def default_pool_path() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "blockfold" / "pool"


def create_pool(path, block_size: int = DEFAULT_BLOCK_SIZE) -> Path:
    return Pool.create(path, block_size)


def serve_nbd(admin: "Admin", host: str, port: int, *, read_only: bool = False, ready=None) -> None:
    """Exports every VM of `admin` over NBD until SIGTERM/SIGINT (see engine/nbd)."""
    from .nbd.server import serve     # asyncio is only imported when serving
    serve(admin, host, port, read_only=read_only, ready=ready)


class Admin:
    """What an operator can see and do. Every method may raise BlockfoldError."""

    kind = "abstract"
    name = ""

    # volumes (also what the NBD export serves)
    def vm_names(self) -> list[str]: raise NotImplementedError
    def vm_size(self, name: str) -> int: raise NotImplementedError
    def read(self, name: str, offset: int, length: int) -> bytes: raise NotImplementedError
    def write(self, name: str, offset: int, data) -> None: raise NotImplementedError
    def trim(self, name: str, offset: int, length: int) -> None: raise NotImplementedError
    def extents(self, name: str, offset: int, length: int) -> list[tuple[int, bool]]: raise NotImplementedError
    def flush(self) -> None: raise NotImplementedError

    # VMs
    def vms(self) -> list[dict]: raise NotImplementedError
    def import_image(self, name: str, source: str, progress: ProgressCallback | None = None) -> dict: raise NotImplementedError
    def export(self, name: str, dest: str, progress: ProgressCallback | None = None) -> None: raise NotImplementedError
    def clone(self, source: str, new: str, count: int = 1) -> list[str]: raise NotImplementedError
    def delete(self, name: str) -> None: raise NotImplementedError

    # pool
    def stats(self) -> dict: raise NotImplementedError
    def blocks(self, vm: str | None = None, min_refs: int | None = None, max_refs: int | None = None,
               prefix: str | None = None, offset: int = 0, limit: int = 100) -> dict: raise NotImplementedError
    def rebuild(self, full: bool = False, progress: ProgressCallback | None = None,
                cancel: threading.Event | None = None) -> dict: raise NotImplementedError
    def fsck(self, progress: ProgressCallback | None = None) -> list[dict]: raise NotImplementedError
    def events(self, limit: int = 100) -> list[dict]: raise NotImplementedError

    # nodes
    def nodes(self) -> list[dict]: raise NotImplementedError
    def fail_node(self, name: str) -> None: raise NotImplementedError
    def restore_node(self, name: str) -> None: raise NotImplementedError
    def heal(self, wait: bool = True, progress: ProgressCallback | None = None) -> dict: raise NotImplementedError

    def close(self) -> None: raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class LocalAdmin(Admin):
    """The admin interface over a pool embedded in this process."""

    kind = "pool"

    def __init__(self, pool: Pool):
        self.pool = pool
        self.name = str(pool.path)

    @classmethod
    def open(cls, path, *, readonly: bool = False, rebuild: str | None = None,
             progress: ProgressCallback | None = None, wait: bool = True,
             actor: str = "cli") -> "LocalAdmin":
        return cls(Pool.open(path, readonly=readonly, rebuild=rebuild, progress=progress,
                             wait=wait, actor=actor))

    def vm_names(self): return self.pool.vm_names()
    def vm_size(self, name): return self.pool.vm_size(name)
    def read(self, name, offset, length): return self.pool.read(name, offset, length)
    def write(self, name, offset, data): self.pool.write(name, offset, data)
    def trim(self, name, offset, length): self.pool.trim(name, offset, length)
    def extents(self, name, offset, length): return self.pool.extents(name, offset, length)
    def flush(self): self.pool.flush()

    def vms(self): return self.pool.vm_list()

    def import_image(self, name, source, progress=None):
        vm = self.pool.import_image(name, source, progress)
        return {"name": vm.name, "size": vm.size}

    def export(self, name, dest, progress=None): self.pool.export(name, dest, progress)
    def clone(self, source, new, count=1): return self.pool.clone(source, new, count)
    def delete(self, name): self.pool.delete(name)

    def stats(self): return self.pool.stats()
    def blocks(self, vm=None, min_refs=None, max_refs=None, prefix=None, offset=0, limit=100):
        return self.pool.block_page(vm=vm, min_refs=min_refs, max_refs=max_refs, prefix=prefix,
                                     offset=offset, limit=limit)
    def rebuild(self, full=False, progress=None, cancel=None):
        return self.pool.rebuild(full, progress, cancel)
    def last_rebuild(self) -> dict: return self.pool.last_rebuild
    def fsck(self, progress=None): return self.pool.fsck(progress)
    def events(self, limit=100): return self.pool.events(limit)

    def nodes(self):
        stats = self.pool.stats()
        return [{"name": "local", "address": str(self.pool.path), "state": "up",
                 "latency_ms": 0.0, "capacity_bytes": stats["capacity_bytes"],
                 "blocks": stats["unique_blocks"], "under_replicated": 0}]

    def fail_node(self, name):
        raise BlockfoldError("an embedded pool has no nodes to fail: open a cluster")

    def restore_node(self, name):
        raise BlockfoldError("an embedded pool has no nodes to restore: open a cluster")

    def heal(self, wait=True, progress=None):
        raise BlockfoldError("an embedded pool keeps one copy of each block: nothing to heal")

    def close(self): self.pool.close()


# -- clusters (engine.cluster): imported on use, so a local pool never loads asyncssh ------------

def open_cluster(path, **kwargs) -> Admin:
    """The admin interface over a cluster directory; same keywords as LocalAdmin.open."""
    from .cluster.admin import ClusterAdmin
    return ClusterAdmin.open(path, **kwargs)


def cluster_up(path, **kwargs) -> list[dict]:
    from .cluster import lifecycle
    return lifecycle.up(path, **kwargs)


def cluster_down(path) -> list[dict]:
    from .cluster import lifecycle
    return lifecycle.down(path)


def cluster_add(path, address: str, **kwargs) -> dict:
    from .cluster import lifecycle
    return lifecycle.add(path, address, **kwargs)


def serve_node(data: str, host: str, port: int, memory: int | None = None,
               block_size: int | None = None, cluster: str | None = None, ready=None) -> None:
    from .node import server
    server.run(data, host, port, memory, block_size, cluster, ready)
