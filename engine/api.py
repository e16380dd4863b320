"""The engine's front door: everything the console and the CLI use, and nothing else of it.

`Admin` (engine.admin) is the interface; its results are the dataclasses of engine.results, and
`formats` says how each kind of figure reads for people (the CLI and the console share it).
`LocalAdmin` runs it over a pool embedded in this process, `open_cluster` over a cluster,
`find_service` and `connect_service` over a running service (engine/service), which `serve` and
`Service` run. What is heavy is imported on use: the storage engine (numpy) only when a pool is
opened here, so a CLI that only asks a service starts fast; the cluster, the node server and the
NBD server only when used, so a local pool never loads asyncssh.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from . import formats, options
from .admin import Admin
from .errors import (AttachedError, BlockfoldError, CancelledError, NoMajorityError,
                     PoolLockedError, VMNotFoundError)
from .progress import Progress, ProgressCallback
from .results import (BlockPage, BlockRow, EtcdStatus, Event, HealFigures, ImportResult, Job,
                      NodeRemoval, NodeStatus, PoolStats, Problem, RebuildFigures,
                      RebuildRecord, ScrubFigures, Snapshot, VMInfo, VMSnapshot, VMStats,
                      WriteQuorum, plain)
from .formats import parse_size
from .names import check_vm_size

IMPORT_FORMATS = ("qcow2", "vmdk", "vhdx", "vdi", "raw")    # engine.diskformats's, kept in step
EXPORT_FORMATS = ("raw", "qcow2", "vmdk")

if TYPE_CHECKING:
    from .localadmin import LocalAdmin
    from .service.service import Service

__all__ = [
    "EXPORT_FORMATS", "IMPORT_FORMATS", "Admin", "AttachedError", "BlockPage", "BlockRow",
    "BlockfoldError", "CancelledError", "EtcdStatus", "Event", "HealFigures", "ImportResult",
    "Job", "LocalAdmin", "NoMajorityError", "NodeRemoval", "NodeStatus", "PoolLockedError",
    "PoolStats", "Problem",
    "Progress", "ProgressCallback", "RebuildFigures", "RebuildRecord", "ScrubFigures", "Service",
    "Snapshot", "VMInfo", "VMNotFoundError", "VMSnapshot", "VMStats", "WriteQuorum",
    "check_vm_size", "cluster_add",
    "cluster_down", "cluster_status", "cluster_up", "connect_service", "create_pool",
    "default_pool_path", "export_disk", "find_service", "formats", "open_cluster", "open_disk",
    "open_source", "options", "parse_size", "plain", "serve_node",
]


def __getattr__(name: str):
    """LocalAdmin and Service, imported on first use (they load the storage engine)."""
    if name == "LocalAdmin":
        from .localadmin import LocalAdmin
        return LocalAdmin
    if name == "Service":
        from .service.service import Service
        return Service
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_disk(source, format: str | None = None):
    """The disk an image holds, to pass to Admin.import_image (engine.diskformats.open_disk)."""
    from .diskformats import open_disk as open_
    return open_(source, format)


def open_source(source: str):
    """What Admin.write_file writes, opened (engine.imageio.open_source): a path or "-"."""
    from .imageio import open_source as open_
    return open_(source)


def export_disk(admin: Admin, name: str, dest: str, format: str = "raw", progress=None,
                cancel=None, home: str | None = None, snapshot: str | None = None) -> None:
    """VM `name` (or its `snapshot`) written to `dest` as a `format` image
    (engine.diskformats.export_disk)."""
    from .diskformats import export_disk as export
    export(admin, name, dest, format, progress, cancel, home, snapshot)


def estimate(admin: Admin, sources: list, progress=None, cancel=None, format=None):
    """A dedup estimate before importing `sources` (engine.estimate.estimate)."""
    from .estimate import estimate as estimate_
    return estimate_(admin, sources, progress, cancel, format)


def default_pool_path() -> Path:
    base = (os.environ.get("XDG_DATA_HOME")
            or os.path.join(os.path.expanduser("~"), ".local", "share"))
    return Path(base) / "blockfold" / "pool"


def create_pool(path, block_size: int | None = None) -> Path:
    from .pool import DEFAULT_BLOCK_SIZE, Pool
    return Pool.create(path, block_size or DEFAULT_BLOCK_SIZE)


# -- services (engine.service): one process serves a pool, everyone else asks it ------------------

def find_service(directory, *, actor: str | None = None, read_only: bool = False) -> Admin | None:
    """The Admin of the service that serves the pool or cluster in `directory`, through its
    admin.sock; None when no service runs. `actor` names the caller in events (taken only from
    the service's own user); `read_only` limits the connection to the methods that look.
    Raises BlockfoldError (the socket's mode keeps this user out)."""
    from .remoteadmin import RemoteAdmin
    return RemoteAdmin.find(directory, actor=actor, read_only=read_only)


def service_pid(directory) -> int | None:
    """The pid of the process serving the pool or cluster in `directory` (a service, or a
    console serving what it opened), from its admin.sock; None when none serves it. Raises
    BlockfoldError (the socket's mode keeps this user out: it cannot be told)."""
    from .net import adminwire
    path = Path(directory) / adminwire.SOCKET
    try:
        return adminwire.server_pid(path)
    except PermissionError:
        raise BlockfoldError(f"cannot tell whether a service serves {directory}: {path} is not"
                             " open to this user") from None


def unreachable(directory, refused: PoolLockedError) -> PoolLockedError:
    """`refused`, an open of the pool in `directory` that its holder refused, said anew when
    that holder serves the pool (a service, a console) and yet no service answers on its
    admin.sock: whoever removed the socket left every command nowhere to go, where the refusal
    says they all go through it. The holder makes its socket again within a second
    (Service._keep_socket); this is for one that has not. Raises BlockfoldError (the socket's
    mode keeps this user out)."""
    from .net import adminwire
    if not refused.holder or service_pid(directory) is not None:
        return refused
    path = Path(directory) / adminwire.SOCKET
    what = refused.held_by.removeprefix("a ")
    state = "does not answer" if path.exists() else "is missing"
    return PoolLockedError(f"pool {directory} is held by {refused.holder}, but its admin socket"
                           f" {path} {state} and the {what} has not made it again: no command"
                           f" reaches the {what} until it does; restart the {what} (its log"
                           " says what went wrong)", held_by=refused.held_by,
                           holder=refused.holder)


def nbd_handshake_deadline() -> float:
    """The seconds an NBD client has to choose its export (engine/nbd/server.py), as the
    environment sets it: asked before a service opens its pool, so a bad setting starts
    nothing. Raises BlockfoldError (not a number of seconds within bounds)."""
    from .nbd.server import handshake_deadline
    return handshake_deadline()


def connect_service(url: str, *, read_only: bool = False) -> Admin:
    """The Admin of the service behind a node's SSH admin subsystem, ssh://USER@HOST:PORT (the
    user's SSH keys and known_hosts). Raises BlockfoldError."""
    from .remoteadmin import RemoteAdmin
    return RemoteAdmin.over_ssh(url, read_only=read_only)


# -- clusters (engine.cluster): imported on use, so a local pool never loads asyncssh ------------

def open_cluster(path, **kwargs) -> Admin:
    """The Admin over a cluster directory; same keywords as LocalAdmin.open. Raises
    BlockfoldError (no nodes, none reachable, the write lease held by another writer)."""
    from .cluster.admin import ClusterAdmin
    return ClusterAdmin.open(path, **kwargs)


def standby_cluster(path, *, actor: str = "cli") -> Admin:
    """The cluster for a standby service: writable if no one holds it, else read-only and
    waiting to take it over once the holder's lease runs out (ClusterAdmin.standby; fenced()
    says so meanwhile). Raises BlockfoldError, as open_cluster does."""
    from .cluster.admin import ClusterAdmin
    return ClusterAdmin.standby(path, actor=actor)


def cluster_up(path, **kwargs) -> list[dict]:
    from .cluster import lifecycle
    return lifecycle.up(path, **kwargs)


def cluster_down(path, force: bool = False) -> list[dict]:
    """Stops the local nodes of the cluster in `path`, then its own etcd member; their rows
    (name, address, pid, local, running). Refused while a service (or a console) serves the
    cluster, unless `force`: it would go on serving a cluster with no nodes, and every call
    would fail. Raises BlockfoldError (not a cluster, served: nothing stopped)."""
    from .cluster import lifecycle
    if not force:
        pid = service_pid(path)
        if pid is not None:
            raise BlockfoldError(f"cluster {path} is served by pid {pid}: stop that service"
                                 " first, or give --force")
    return lifecycle.down(path)


def cluster_status(path) -> dict:
    """What the cluster directory and its etcd say, reaching no node: {cluster, etcd:
    EtcdStatus or None (a cluster without etcd), nodes: [{name, address, pid, local, running,
    registered}]}; `registered` is None when etcd does not answer or there is none. Raises
    BlockfoldError (not a cluster)."""
    from .cluster import lifecycle
    return lifecycle.status(path)


def cluster_add(path, address: str, **kwargs) -> dict:
    from .cluster import lifecycle
    return lifecycle.add(path, address, **kwargs)


def remove_node(path, name: str, *, force: bool = False, delete_data: bool = False,
                confirm=None, progress=None, cancel=None,
                actor: str = "cli") -> NodeRemoval | None:
    """Removes node `name` from the cluster in `path` (Admin.remove_node): through its service
    when one runs, else opened here (engine.cluster.removal). `confirm(plan)` (a NodeRemoval:
    what it copies and loses) is asked once the checks have passed, before anything changes;
    None when it says no. Raises BlockfoldError (a refusal, with nothing changed),
    CancelledError."""
    served = find_service(path, actor=actor)
    if served is None:
        from .cluster import removal
        return removal.remove(path, name, force=force, delete_data=delete_data,
                              confirm=confirm, progress=progress, cancel=cancel, actor=actor)
    with served:
        plan = served.removal(name, force)
        if confirm is not None and not confirm(plan):
            return None
        return served.remove_node(name, force, delete_data, progress, cancel)


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
    BlockfoldError (no such node, a node that runs already, a node running elsewhere, a node
    that does not start)."""
    from .cluster import lifecycle
    from .cluster.config import ClusterConfig
    return lifecycle.restore_node(ClusterConfig.load(path), name)


def node_row(path, name: str) -> dict:
    """The node `name` of the cluster in `path` as cluster.json and its process say now: its
    row, as fail_node."""
    from .cluster import lifecycle
    from .cluster.config import ClusterConfig
    return lifecycle.node_row(ClusterConfig.load(path).node(name))


def serve_node(data: str, host: str, port: int, memory: int | None = None,
               block_size: int | None = None, cluster: str | None = None, ready=None,
               etcd: tuple[list[str], str] | None = None) -> None:
    from .node import server
    server.run(data, host, port, memory, block_size, cluster, ready, etcd)
