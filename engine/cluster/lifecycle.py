"""`blockfold cluster up/down/add` and `node fail/restore`: make a local cluster directory,
start and stop its nodes, and join nodes that run elsewhere (pinning their host key on first
contact); and the directory's side of `cluster remove` (engine.cluster.removal): who may be
removed, one removal at a time, and the node's leaving once drained. All of it needs only the
cluster directory, never a reachable node.

A new cluster gets its own etcd member (etcd_member.py), started before the nodes and stopped
after them, unless `etcd` names one that runs elsewhere ("URL,URL…") or "none" (a cluster
made before etcd has none either). Local nodes are started with its endpoints and keep their
liveness keys there (engine.etcd).

Every local node gets the cluster's peer key (its private half as DATA/peer_key, its public half
in DATA/peer_keys, restricted), so nodes copy blocks to each other (engine.node.peers); a node
that runs elsewhere is given them by its operator (`add` says which files)."""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .. import formats, processid
from ..errors import BlockfoldError
from ..net import rpc
from ..net.client import KeyRefused, NodeClient, NodeUnreachable, fetch_host_key
from ..node import keys, settings
from ..options import MAX_LOCAL_NODES
from ..pool import check_block_size
from . import etcd_member, ports, processes
from .config import ClusterConfig, EtcdEntry, NodeEntry, is_cluster

if TYPE_CHECKING:
    from ..etcd import Etcd

NO_ETCD = "none"
REMOVING = "removing.json"      # a removal under way: {node, pid, process} (removing())
# The cluster whose removal this thread of control holds (removing()): its own checks and a
# nested removing() pass; another thread of the same process (a service's other call) waits.
_HELD: contextvars.ContextVar[str | None] = contextvars.ContextVar("removal_held", default=None)


def up(path, nodes: int | None = None, replicas: int | None = None,
       min_replicas: int | None = None, memory: int | None = None,
       block_size: int | None = None, repair_delay: float | None = None,
       etcd: str | None = None) -> list[dict]:
    """Creates the cluster if new (3 nodes, R=2, 4 KiB blocks, its own etcd member unless
    told), then starts its etcd member and every local node that is not running. `etcd`:
    None (a local member), "none", or the client URLs of an etcd that runs elsewhere,
    comma-separated. The shape of a cluster that exists is kept: an option that asks for
    another one is refused, with nothing started. A missing etcd binary, or an etcd given
    that does not answer, is refused with nothing made. Failed (a node that cannot start) or
    interrupted (KeyboardInterrupt), it stops what it started (its nodes, then its etcd
    member) and leaves the directory made: the next `up` starts that cluster."""
    path = Path(path)
    if is_cluster(path):
        config = ClusterConfig.load(path)
        _same_shape(config, nodes=nodes, replicas=replicas, min_replicas=min_replicas,
                    memory=memory, block_size=block_size, repair_delay=repair_delay,
                    etcd=etcd)
    else:
        nodes = 3 if nodes is None else nodes
        replicas = 2 if replicas is None else replicas
        block_size = 4096 if block_size is None else block_size
        repair_delay = 0.0 if repair_delay is None else repair_delay
        check_block_size(block_size)
        if not 1 <= nodes <= MAX_LOCAL_NODES:
            raise BlockfoldError(f"bad node count {formats.count(nodes)}: use 1 to"
                                 f" {MAX_LOCAL_NODES} (each local node is a process of its own"
                                 " on this machine; add nodes on other hosts with `cluster"
                                 " add`)")
        if not 1 <= replicas <= nodes:
            raise BlockfoldError(f"bad replica count {replicas}: use 1 to {nodes} (the nodes)")
        if min_replicas is None:
            min_replicas = min(2, replicas)
        if not 1 <= min_replicas <= replicas:
            raise BlockfoldError(f"bad min_replicas {min_replicas}: use 1 to {replicas}")
        if path.exists() and any(path.iterdir()):
            raise BlockfoldError(f"{path} exists and is not an empty directory")
        agreement = _new_etcd(path, etcd)
        config = ClusterConfig.create(path, replicas, min_replicas, block_size, repair_delay)
        config.etcd = agreement
        chosen: set[int] = set()    # ports given out here, not listened on yet
        if agreement and agreement.data:
            chosen = {urlsplit(agreement.endpoints[0]).port, urlsplit(agreement.peer).port}
        for k in range(1, nodes + 1):
            name = f"node{k}"
            data = path / "nodes" / name
            data.mkdir(parents=True)
            (data / keys.AUTHORIZED_KEYS).write_text(config.admin_public_key())
            settings.create(data, name, block_size)
            port = ports.free(chosen=frozenset(chosen))
            chosen.add(port)
            config.nodes.append(NodeEntry(name, f"127.0.0.1:{port}", data=str(data.resolve()),
                                          memory=memory))
        config.save()
    ours = bool(config.etcd and config.etcd.data and not etcd_member.is_running(config.etcd))
    if ours:
        etcd_member.start(path, config.etcd, fresh=not Path(config.etcd.data).exists())
    try:
        # Found running, a node keeps running (its pid found kept too: cluster.json may name
        # stale ones); only the others start.
        stopped = [e for e in config.nodes if e.data and not processes.is_running(e)]
        config.save()               # the pids found; the member's, and its ports if they moved
        install_peer_key(config)
        start_local(config, stopped)
    except BaseException as error:
        # Interrupted, it stops what it started: the nodes (processes.start), then its member,
        # after them (they end their leases there). Failed, the nodes that did start serve on
        # (a cluster serves with a node down), registered with the member; with none running
        # the member would run on alone (an `up` whose only node could not start left it so).
        alone = not any(processes.is_running(entry) for entry in config.nodes if entry.data)
        if ours and (isinstance(error, KeyboardInterrupt) or alone):
            etcd_member.stop(config.etcd)
        raise
    return [node_row(e) for e in config.nodes]


def _new_etcd(path: Path, etcd: str | None) -> EtcdEntry | None:
    """A new cluster's etcd entry, checked before anything is made: the binary is there for a
    local member; an etcd given answers."""
    if etcd is None:
        etcd_member.binary()
        return etcd_member.create(path)
    if etcd == NO_ETCD:
        return None
    from ..etcd import Etcd, EtcdError
    urls = _etcd_urls(etcd)
    client = Etcd(urls, etcd_member.prefix(path))      # a URL of another shape is refused
    try:
        client.check()
    except EtcdError as e:
        raise BlockfoldError(f"{e}; nothing made") from None
    finally:
        client.close()
    return EtcdEntry(endpoints=urls, prefix=client.prefix)


def _etcd_urls(etcd: str) -> list[str]:
    """The client URLs in --etcd's comma-separated list, blanks around and between them
    dropped ("http://a:2379, http://b:2379," is two)."""
    return [url.strip() for url in etcd.split(",") if url.strip()] or [etcd]


def etcd_names(config: ClusterConfig) -> dict[str, str]:
    """{a node's id in etcd (its host key's): its name in the cluster}, for the nodes whose host
    key is pinned (every node that ever started or was added)."""
    return {keys.host_key_id(e.host_key): e.name for e in config.nodes if e.host_key}


def etcd_of(config: ClusterConfig) -> Etcd | None:
    """A client of the cluster's etcd (close it after use); None for a cluster without one.
    engine.etcd is imported here, on use: its HTTP client takes 140 ms to import, which a CLI
    that never asks etcd (`vm ls`) need not pay."""
    from ..etcd import Etcd
    return config.etcd and Etcd(config.etcd.endpoints, config.etcd.prefix)


def node_id(entry: NodeEntry) -> str:
    """A node's identity as the catalog records a removed one: its id in etcd (its host key's),
    or for a node never started (no host key pinned) its name."""
    return keys.host_key_id(entry.host_key) if entry.host_key else f"name:{entry.name}"


def _same_shape(config: ClusterConfig, **asked) -> None:
    """Raises BlockfoldError naming each option given that differs from the existing cluster."""
    local = [e for e in config.nodes if e.data]
    has = {"nodes": len(local), "replicas": config.replicas,
           "min_replicas": config.min_replicas, "block_size": config.block_size,
           "repair_delay": config.repair_delay, "memory": local[0].memory if local else None,
           "etcd": (NO_ETCD if config.etcd is None else None if config.etcd.data
                    else ",".join(config.etcd.endpoints))}
    if asked.get("etcd") not in (None, NO_ETCD):
        # As a new cluster keeps it: the same list, spaced otherwise, is the same etcd.
        asked["etcd"] = ",".join(_etcd_urls(asked["etcd"]))
    wrong = [f"--{name.replace('_', '-')} {formats.size(value) if name == 'memory' else value}"
             for name, value in asked.items()
             if value is not None and value != has[name]]
    if wrong:
        from ..etcd import masked       # on use, as etcd_of says why
        raise BlockfoldError(
            f"cluster {config.path} exists ({has['nodes']} local nodes, R={config.replicas},"
            f" min_replicas={config.min_replicas}, {config.block_size}-byte blocks, repair"
            f" delay {has['repair_delay']:g} s, {'RAM' if has['memory'] else 'disk'} nodes):"
            f" {masked(' '.join(wrong))} would only apply to a new cluster; nothing started")


def install_peer_key(config: ClusterConfig) -> None:
    """Gives every local node the cluster's peer key where it lacks it (a cluster made before
    there was one gets it now): the private half as DATA/peer_key (mode 600), the public half
    in DATA/peer_keys with options that leave it nothing but the RPC (keys.PEER_OPTIONS)."""
    config.ensure_peer_key()
    private = config.peer_key.read_bytes()
    line = f"{keys.PEER_OPTIONS} {config.peer_public_key().strip()}\n"
    for entry in config.nodes:
        # A data dir gone is refused by the start, naming the node (here it was a bare
        # "No such file or directory: …/peer_key").
        if not entry.data or not Path(entry.data).is_dir():
            continue
        data = Path(entry.data)
        if not (data / keys.PEER_KEY).is_file():
            fd = os.open(data / keys.PEER_KEY, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(private)
        if not (data / keys.PEER_KEYS).is_file():
            (data / keys.PEER_KEYS).write_text(line)


def start_local(config: ClusterConfig, entries: list[NodeEntry]) -> None:
    """Starts `entries` (local nodes), recording each in cluster.json as its process starts
    (its pid) and as it is ready (its address): a start cut short (killed) leaves no running
    node that the file calls stopped, or that `cluster down` cannot find."""
    def started(entry: NodeEntry, pid: int, address: str | None) -> None:
        entry.pid = pid
        if address is not None:         # ready: no longer failed (a restore that fails still is)
            entry.address, entry.failed = address, False
            if not entry.host_key:
                entry.host_key = keys.host_public_key(Path(entry.data))
        config.save()

    if entries:
        processes.start(entries, config.etcd, started)


def fail_node(config: ClusterConfig, name: str) -> dict:
    """Kills a local node's process (kill -9: no goodbye), records it as failed, and ends its
    liveness lease in etcd; its row. A node that does not run is refused (BlockfoldError),
    with nothing done."""
    check_failable(config, name)
    entry = config.node(name)
    processes.stop(entry, signal.SIGKILL)
    entry.failed = True
    config.save()
    _unregister(config, name)
    return node_row(entry)


def check_failable(config: ClusterConfig, name: str) -> None:
    """Raises BlockfoldError if fail_node would refuse node `name`: unknown, running elsewhere,
    or not running."""
    entry = config.node(name)
    if not entry.data:
        raise BlockfoldError(f"node {name} runs elsewhere ({entry.address}): stop it on its host")
    if not processes.is_running(entry):
        raise BlockfoldError(f"node {name} is not running: nothing to fail (`node restore"
                             f" {name}` starts it)")


def _unregister(config: ClusterConfig, name: str) -> None:
    """Ends the liveness lease of a node whose death we saw, so etcd says so now, not a TTL
    later; an etcd that does not answer lets it run out on its own."""
    _revoke(config, config.node(name).host_key)


def _revoke(config: ClusterConfig, host_key: str) -> None:
    """Ends the liveness lease of the node with `host_key` (see _unregister)."""
    from ..etcd import EtcdError
    client = etcd_of(config)
    if client is None:
        return
    try:
        client.revoke_holder(f"nodes/{keys.host_key_id(host_key)}")
    except EtcdError:
        pass
    finally:
        client.close()


def restore_node(config: ClusterConfig, name: str) -> dict:
    """Restarts a local node on its data dir and address (another, if another process took
    its port: processes.start); its row. A running node is refused
    (BlockfoldError), with nothing done. A coordinator that has the cluster open sees it
    answer its next heartbeat and catches it up."""
    entry = config.node(name)
    if not entry.data:
        raise BlockfoldError(f"node {name} runs elsewhere ({entry.address}): start it on its"
                             " host")
    if processes.is_running(entry):
        raise BlockfoldError(f"node {name} is running (pid {entry.pid}, {entry.address}):"
                             " nothing to restore")
    start_local(config, [entry])
    return node_row(entry)


def node_row(entry: NodeEntry) -> dict:
    running = processes.is_running(entry) if entry.data else None
    return {"name": entry.name, "address": entry.address, "pid": entry.pid if running else None,
            "local": bool(entry.data), "running": running}


def down(path) -> list[dict]:
    """Stops the local nodes, then the cluster's own etcd member (the nodes end their leases
    on the way out); their rows."""
    config = ClusterConfig.load(path)
    processes.stop_all([entry for entry in config.nodes if entry.data], signal.SIGTERM)
    if config.etcd and config.etcd.data:
        etcd_member.stop(config.etcd)
    return [node_row(e) for e in config.nodes]


def status(path) -> dict:
    """What needs only the cluster directory and its etcd: {cluster, etcd: EtcdStatus or None
    (no etcd), nodes: [node_row + registered (bool; None: no etcd, or it does not answer)]}."""
    config = ClusterConfig.load(path)
    client = etcd_of(config)
    told = None
    if client is not None:
        try:
            told = client.status(etcd_names(config))
        finally:
            client.close()
    known = told is not None and told.healthy
    return {"cluster": str(config.path), "etcd": told,
            "nodes": [dict(node_row(e), registered=e.name in told.registered if known else None)
                      for e in config.nodes]}


def _log_in(config: ClusterConfig, name: str, address: str, host_key: str) -> dict:
    """Logs in to the node at `address` (host key `host_key`) with the cluster's admin key, as
    the coordinator will, asks its HELLO (engine.node.handler: blocks, block_size, the catalog
    replica's epoch, version and promised epoch, lease) and leaves; HELLO's reply. Raises
    BlockfoldError naming what to do if it refuses."""
    client = NodeClient(name, address, host_key, str(config.admin_key))

    async def attempt() -> dict:
        try:
            await client.connect()
            header, _ = await client.call(rpc.HELLO)
            return header
        finally:
            await client.close()

    try:
        return asyncio.run(attempt())
    except KeyRefused:
        raise BlockfoldError(f"the node at {address} refused the cluster's key: put"
                             f" {config.admin_key}.pub in its DATA/authorized_keys (a node of"
                             " another cluster cannot join this one); nothing was added"
                             ) from None
    except (NodeUnreachable, rpc.RemoteError) as e:
        raise BlockfoldError(f"cannot log in to the node at {address}: {e}; nothing was"
                             " added") from None


def _check_new(config: ClusterConfig, address: str, hello: dict) -> None:
    """Raises BlockfoldError unless the node's HELLO is a new node's of the cluster's block
    size: one that holds blocks, a catalog replica, a promised epoch or a write lease has been
    another cluster's. Joined, its catalog (of another lineage, maybe newer) was loaded in
    place of this cluster's at the next open, and its blocks were reclaimed as orphans."""
    if hello.get("block_size") != config.block_size:
        raise BlockfoldError(f"the node at {address} keeps {hello.get('block_size')}-byte"
                             f" blocks, cluster {config.path} {config.block_size}-byte ones;"
                             " nothing was added")
    held = []
    if hello.get("blocks"):
        held.append(formats.counted(hello["blocks"], "block"))
    if hello.get("version") or hello.get("epoch") or hello.get("promised"):
        held.append(f"a catalog (epoch {hello.get('epoch')}, version {hello.get('version')})")
    if hello.get("lease"):
        held.append(f"a write lease of {hello['lease'].get('holder')}")
    if held:
        raise BlockfoldError(f"the node at {address} holds {' and '.join(held)}: it is a node"
                             " of another cluster, and a node joins empty (start it on a new"
                             " data dir); nothing was added")


def add(path, address: str, name: str | None = None, weight: float = 1.0) -> dict:
    """Joins a node that runs elsewhere; its host key is pinned now, on first contact, once it
    has let the cluster's admin key log in. Returns {name, address, host_key, peer_key}: the
    node copies blocks to and from the others (heal) once its operator puts the private key
    `peer_key` in its DATA/peer_key (mode 600) and the line `restrict` + `peer_key`.pub in its
    DATA/peer_keys; until then those copies go through the coordinator, and each heal says why.
    Raises BlockfoldError, with cluster.json unchanged: a bad address, name or weight, a node
    already in the cluster, one that cannot be reached, one that refuses the admin key (a
    node of another cluster, or a wrong port: it would be down for good and raise the write
    majority), or one that is not new (_check_new: blocks, a catalog or a lease of another
    cluster, or another block size)."""
    config = ClusterConfig.load(path)
    if rpc.node_address(address) is None:
        raise BlockfoldError(f"bad node address {address!r}: use HOST:PORT ([ADDR]:PORT for"
                             " IPv6)")
    if any(e.address == address for e in config.nodes):
        raise BlockfoldError(f"a node at {address} is already in cluster {config.path}")
    name = name or f"node{len(config.nodes) + 1}"
    if any(e.name == name for e in config.nodes):
        raise BlockfoldError(f"a node named {name!r} is already in cluster {config.path}")
    if weight <= 0:
        raise BlockfoldError(f"bad weight {weight}: it must be positive")
    key = asyncio.run(fetch_host_key(address))
    for entry in config.nodes:
        if entry.host_key and entry.host_key.split()[:2] == key.split()[:2]:
            raise BlockfoldError(f"the node at {address} is {entry.name} ({entry.address}): same"
                                 " host key; a node joins a cluster once, or its copies would"
                                 " count twice")
    _check_new(config, address, _log_in(config, name, address, key))
    config.nodes.append(NodeEntry(name, address, host_key=key, weight=weight))
    config.ensure_peer_key()
    config.save()
    return {"name": name, "address": address, "host_key": key,
            "peer_key": str(config.peer_key.resolve())}


def check_removable(config: ClusterConfig, name: str) -> None:
    """Raises BlockfoldError if node `name` may not be removed whatever its blocks: unknown, or
    the nodes left would be fewer than R (every block's copies) or min_replicas."""
    config.node(name)
    left = len(config.nodes) - 1
    need = max(config.replicas, config.min_replicas)
    if left < need:
        raise BlockfoldError(
            f"removing {name} would leave {formats.counted(left, 'node')} in cluster"
            f" {config.path}: R={config.replicas} and min_replicas={config.min_replicas} need"
            f" {need}; nothing changed")


def check_no_removal(config: ClusterConfig) -> None:
    """Raises BlockfoldError while a removal runs (removing()): checked before a remover opens
    the cluster, whose lease that removal holds ("in use" would not say why)."""
    other = _removal_running(config)
    if other is not None and _HELD.get() != str(config.path.resolve()):
        raise BlockfoldError(f"node {other.get('node')} is being removed from cluster"
                             f" {config.path} (pid {other.get('pid')}): wait for that removal"
                             " to end; nothing changed")


def _removal_running(config: ClusterConfig) -> dict | None:
    """DIR/removing.json's {node, pid, process} if the remover it names still runs."""
    try:
        other = json.loads((config.path / REMOVING).read_text())
        return None if processid.gone(other["process"]) else other
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None         # half written or damaged: nobody's


@contextmanager
def removing(config: ClusterConfig, name: str):
    """One removal at a time: DIR/removing.json names the node and the remover's process while
    it runs, and goes at the end. Raises BlockfoldError while another remover that still runs
    holds it (check_no_removal); one whose process is gone (killed mid-drain) is replaced.
    Nested in the same thread of control (the CLI holds it from before its open to the end,
    the Admin's remove_node takes it again), it is the outer one's."""
    if _HELD.get() == str(config.path.resolve()):
        yield           # held already, by the caller (engine.cluster.removal around the Admin)
        return
    path = config.path / REMOVING
    mine = {"node": name, "pid": os.getpid(), "process": processid.this()}
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        check_no_removal(config)
        tmp = path.with_name(REMOVING + ".tmp")
        tmp.write_text(json.dumps(mine))
        os.replace(tmp, path)
    else:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(mine))
    token = _HELD.set(str(config.path.resolve()))
    try:
        yield
    finally:
        _HELD.reset(token)
        path.unlink(missing_ok=True)


def leave(path, name: str, delete_data: bool = False) -> dict:
    """The last step of `cluster remove`, once no block needs node `name` (its copies drained,
    the catalog's record of its removal committed): a local node's data dir is marked removed
    (engine.node.settings.retire: it never serves again) before its process is stopped
    (SIGTERM), so no moment leaves it free to start; the node leaves cluster.json, its liveness
    key in etcd goes, and with `delete_data` its data dir too. Returns {address, local, data:
    the data dir kept (None: none, or deleted), deleted: bool}."""
    config = ClusterConfig.load(path)
    entry = config.node(name)
    data = Path(entry.data) if entry.data and Path(entry.data).is_dir() else None
    if data is not None:
        settings.retire(data, str(config.path.resolve()))
    if entry.data and processes.is_running(entry):
        processes.stop(entry, signal.SIGTERM)   # it ends its own liveness lease on the way out
    config.nodes.remove(entry)
    config.save()
    if entry.host_key:
        _revoke(config, entry.host_key)
    if data is not None and delete_data:
        shutil.rmtree(data)
    return {"address": entry.address, "local": bool(entry.data),
            "data": None if data is None or delete_data else str(data),
            "deleted": data is not None and delete_data}
