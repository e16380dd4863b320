"""The engine's front door: everything the console and the CLI use, and nothing else of it.

`Admin` (engine.admin) is the interface; its results are the dataclasses of engine.results.
`LocalAdmin` runs it over a pool embedded in this process, `open_cluster` over a cluster. The
cluster, the node server and the NBD server are imported on use, so a local pool never loads
asyncssh.
"""

from __future__ import annotations

import os
from pathlib import Path

from .admin import Admin
from .errors import BlockfoldError, CancelledError, VMNotFoundError
from .localadmin import LocalAdmin
from .pool import DEFAULT_BLOCK_SIZE, Pool
from .progress import Progress, ProgressCallback
from .results import (BlockPage, BlockRow, Event, HealFigures, ImportResult, NodeStatus,
                      PoolStats, Problem, RebuildFigures, RebuildRecord, Snapshot, VMStats,
                      plain)
from .units import human_bytes, parse_size

__all__ = [
    "Admin", "BlockPage", "BlockRow", "BlockfoldError", "CancelledError", "Event",
    "HealFigures", "ImportResult", "LocalAdmin", "NodeStatus", "PoolStats", "Problem",
    "Progress", "ProgressCallback", "RebuildFigures", "RebuildRecord", "Snapshot",
    "VMNotFoundError", "VMStats", "cluster_add", "cluster_down", "cluster_up", "create_pool",
    "default_pool_path", "human_bytes", "open_cluster", "parse_size", "plain", "serve_nbd",
    "serve_node",
]


def default_pool_path() -> Path:
    base = (os.environ.get("XDG_DATA_HOME")
            or os.path.join(os.path.expanduser("~"), ".local", "share"))
    return Path(base) / "blockfold" / "pool"


def create_pool(path, block_size: int = DEFAULT_BLOCK_SIZE) -> Path:
    return Pool.create(path, block_size)


def serve_nbd(admin: Admin, host: str, port: int, *, read_only: bool = False, ready=None) -> None:
    """Exports every VM of `admin` over NBD until SIGTERM/SIGINT (see engine/nbd)."""
    from .nbd.server import serve     # asyncio is only imported when serving
    serve(admin, host, port, read_only=read_only, ready=ready)


# -- clusters (engine.cluster): imported on use, so a local pool never loads asyncssh ------------

def open_cluster(path, **kwargs) -> Admin:
    """The Admin over a cluster directory; same keywords as LocalAdmin.open. Raises
    BlockfoldError (no nodes, none reachable, the write lease held by another writer)."""
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


def fail_node(path, name: str) -> dict:
    """Kills the local node `name` of the cluster in `path` and records it failed; needs the
    cluster directory only. Its row (name, address, pid, local, running). Raises BlockfoldError
    (no such node, a node running elsewhere)."""
    from .cluster import lifecycle
    from .cluster.config import ClusterConfig
    return lifecycle.fail_node(ClusterConfig.load(path), name)


def restore_node(path, name: str) -> dict:
    """Restarts the local node `name` of the cluster in `path` unless it runs; needs the cluster
    directory only, so it works with every node down. Its row, as fail_node. Raises
    BlockfoldError (no such node, a node running elsewhere, a node that does not start)."""
    from .cluster import lifecycle
    from .cluster.config import ClusterConfig
    return lifecycle.restore_node(ClusterConfig.load(path), name)


def serve_node(data: str, host: str, port: int, memory: int | None = None,
               block_size: int | None = None, cluster: str | None = None, ready=None) -> None:
    from .node import server
    server.run(data, host, port, memory, block_size, cluster, ready)
