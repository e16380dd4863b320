"""A cluster directory: cluster.json (the nodes, their pinned host keys, R, min_replicas, the
repair delay, the write lease's length, where its etcd is), the admin key pair every node
authorises, the peer key pair every node holds and authorises (for copies from node to node:
engine.node.peers), and the data dirs of local nodes (and of its etcd member).

cluster.json is rewritten whole through a temporary file and a rename, so a crash never leaves
half of it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import asyncssh

from ..errors import BlockfoldError
from ..options import BLOCK_SIZES

CONFIG_FILE = "cluster.json"
ADMIN_KEY = "admin_key"
PEER_KEY = "peer_key"
LEASE_SECONDS = 10.0
# A shorter lease than heartbeats can keep (every 0.5 s) fails every write; a longer one lets a
# writer that died hold the cluster's writes that long.
LEASE_RANGE = (2.0, 600.0)


@dataclass
class NodeEntry:
    name: str
    address: str
    host_key: str = ""
    weight: float = 1.0
    data: str | None = None        # local nodes only: their data dir
    pid: int | None = None
    memory: int | None = None
    failed: bool = False           # stopped by `node fail`


@dataclass
class EtcdEntry:
    """Where the cluster's etcd is (engine.etcd), and its key prefix (/blockfold/ID/, ID unique
    to this cluster, so clusters can share one etcd)."""
    endpoints: list[str]           # client URLs, http://HOST:PORT
    prefix: str
    data: str | None = None        # a local member (`cluster up` runs it): its data dir
    pid: int | None = None
    peer: str | None = None        # a local member's peer URL


@dataclass
class ClusterConfig:
    path: Path
    block_size: int = 4096
    replicas: int = 2
    min_replicas: int = 1
    repair_delay: float = 0.0
    # Seconds a writer's lease outlives its last heartbeat: how long a writer that stopped
    # (SIGSTOP, a partition) keeps another out. Shorter fails over sooner, and risks a writer
    # that a loaded host kept from its heartbeats losing its lease (heartbeats every 0.5 s).
    lease_seconds: float = LEASE_SECONDS
    nodes: list[NodeEntry] = field(default_factory=list)
    etcd: EtcdEntry | None = None   # None: a cluster without etcd (made before it, or --etcd none)

    @property
    def admin_key(self) -> Path:
        return self.path / ADMIN_KEY

    @property
    def peer_key(self) -> Path:
        return self.path / PEER_KEY

    def node(self, name: str) -> NodeEntry:
        for entry in self.nodes:
            if entry.name == name:
                return entry
        raise BlockfoldError(f"no node named {name!r} in cluster {self.path}")

    def save(self) -> None:
        data = {k: v for k, v in asdict(self).items() if k != "path"}
        tmp = self.path / (CONFIG_FILE + ".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self.path / CONFIG_FILE)

    @classmethod
    def load(cls, path) -> ClusterConfig:
        path = Path(path)
        try:
            data = json.loads((path / CONFIG_FILE).read_text())
        except FileNotFoundError:
            raise BlockfoldError(f"{path} is not a Blockfold cluster (no {CONFIG_FILE})") from None
        except ValueError as e:
            raise BlockfoldError(f"{path / CONFIG_FILE} is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise BlockfoldError(f"{path / CONFIG_FILE} is not a cluster file: not a JSON object")
        # Every cluster.json written has its nodes: `{}` made a cluster of defaults, no node.
        if not isinstance(data.get("nodes"), list) or not all(isinstance(n, dict)
                                                              for n in data["nodes"]):
            raise BlockfoldError(f"{path / CONFIG_FILE} is not a cluster file: nodes must be a"
                                 " list of objects")
        try:
            nodes = [NodeEntry(**n) for n in data.pop("nodes")]
            etcd = data.pop("etcd", None)
            config = cls(path=path, nodes=nodes, etcd=etcd and EtcdEntry(**etcd), **data)
        except (AttributeError, TypeError) as e:    # a list, a number, an unknown field…
            raise BlockfoldError(f"{path / CONFIG_FILE} is not a cluster file: {e}") from None
        bad = _bad_field(config)
        if bad:
            raise BlockfoldError(f"{path / CONFIG_FILE} is not a cluster file: {bad}")
        return config

    @classmethod
    def create(cls, path, replicas: int, min_replicas: int, block_size: int,
               repair_delay: float) -> ClusterConfig:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        _key_pair(path / ADMIN_KEY, "blockfold-admin")
        config = cls(path, block_size, replicas, min_replicas, repair_delay)
        config.ensure_peer_key()
        config.save()
        return config

    def admin_public_key(self) -> str:
        return (self.path / (ADMIN_KEY + ".pub")).read_text()

    def ensure_peer_key(self) -> None:
        """The peer key pair, made once (a cluster made before there was one gets it now)."""
        if not self.peer_key.is_file():
            _key_pair(self.peer_key, "blockfold-peer")

    def peer_public_key(self) -> str:
        return (self.path / (PEER_KEY + ".pub")).read_text()


def _whole(value) -> bool:
    return type(value) is int          # bool is an int, and true is no count


def _number(value) -> bool:
    """A finite number (json reads NaN and Infinity, which pass every comparison or none)."""
    return type(value) in (int, float) and math.isfinite(value)


def _bad_field(config: ClusterConfig) -> str | None:
    """What is wrong with a cluster.json's fields, read as they are (hand-edited, or another
    version's): the field and what it may be; None when nothing. A bad one was taken as is, and
    `replicas: "two"` ended `stats` in an internal TypeError. R is not held to the nodes here:
    a cluster of remote nodes is made empty and grows by `cluster add`."""
    low, high = LEASE_RANGE
    replicas = config.replicas
    checks = [
        ("block_size", config.block_size in BLOCK_SIZES and _whole(config.block_size),
         "a power of two from 4096 to 65536"),
        ("replicas", _whole(replicas) and replicas >= 1, "a whole number, 1 or more"),
        ("min_replicas", _whole(config.min_replicas) and _whole(replicas)
         and 1 <= config.min_replicas <= replicas, "a whole number from 1 to replicas"),
        ("repair_delay", _number(config.repair_delay) and config.repair_delay >= 0,
         "a number of seconds, 0 or more"),
        ("lease_seconds", _number(config.lease_seconds) and low <= config.lease_seconds <= high,
         f"from {low:g} to {high:g} seconds"),
    ]
    for field_name, good, allowed in checks:
        if not good:
            return f"{field_name} must be {allowed}, not {getattr(config, field_name)!r}"
    names = set()
    for node in config.nodes:
        if not isinstance(node.name, str) or not isinstance(node.address, str):
            return "a node without a name or address"
        for field_name, good, allowed in (
                ("weight", _number(node.weight) and node.weight > 0, "a number above 0"),
                ("memory", node.memory is None or (_whole(node.memory) and node.memory > 0),
                 "a number of bytes above 0, or null"),
                ("host_key", isinstance(node.host_key, str), "a string"),
                ("data", node.data is None or isinstance(node.data, str), "a path, or null"),
                ("pid", node.pid is None or _whole(node.pid), "a process id, or null"),
                ("failed", type(node.failed) is bool, "true or false")):
            if not good:
                return (f"node {node.name}'s {field_name} must be {allowed}, not"
                        f" {getattr(node, field_name)!r}")
        if node.name in names:
            return f"node {node.name} is named twice"
        names.add(node.name)
    etcd = config.etcd
    if etcd is not None and not (isinstance(etcd.endpoints, list) and etcd.endpoints
                                 and all(isinstance(e, str) for e in etcd.endpoints)
                                 and isinstance(etcd.prefix, str)):
        return ("etcd must have endpoints (a list of URLs) and a prefix (a string), not"
                f" {etcd.endpoints!r} and {etcd.prefix!r}")
    return None


def _key_pair(path: Path, comment: str) -> None:
    """An ed25519 key pair: the private key at `path` (mode 600), the public one beside it."""
    key = asyncssh.generate_private_key("ssh-ed25519", comment=comment)
    key.write_private_key(str(path))
    os.chmod(path, 0o600)
    key.write_public_key(str(path) + ".pub")


def is_cluster(path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()
