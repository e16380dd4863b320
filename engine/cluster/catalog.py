"""The cluster catalog: an engine.catalog.Catalog in the coordinator's RAM, replicated whole to
every node.

Each node keeps a full replica with a version number. The coordinator starts from the up node
with the highest version. Each commit ships one changeset (engine.changeset) from version v to v+1
to every up node before it commits locally; a node applies it only on top of v. A node that is
behind (it was down, or missed a changeset) gets the whole catalog image instead. A commit that
reaches fewer than min_replicas nodes is refused (ReplicationError) and rolled back.
"""

from __future__ import annotations

import json

from .. import changeset
from ..catalog import Catalog
from ..errors import BlockfoldError, ReplicationError
from ..net import rpc
from .members import NodeState


def rollback_journal(image: bytes) -> bytes:
    """A database image marked for a rollback journal: a WAL-mode image (a disk node's)
    cannot be opened in memory otherwise. Bytes 18-19 of the header hold the mode."""
    image = bytearray(image)
    image[18:20] = b"\x01\x01"
    return bytes(image)


class ReplicatedCatalog(Catalog):
    def __init__(self, members, min_replicas: int, image: bytes | None, version: int,
                 block_size: int):
        super().__init__(None)
        self.members = members
        self.min_replicas = min_replicas
        if image:
            self.conn.deserialize(rollback_journal(image))
            self.conn.execute("DROP TABLE IF EXISTS replica")
        else:
            self.create_schema(block_size)
        self.version = version
        changeset.install_capture(self.conn)

    @classmethod
    def load(cls, members, min_replicas: int, block_size: int) -> ReplicatedCatalog:
        """The catalog of the up node with the highest version (a fresh one if none has any)."""
        up = [i for i, n in enumerate(members.nodes) if n.state != NodeState.DOWN]
        replies = members.call_many({i: (rpc.CATALOG_VERSION, {}, b"") for i in up}, 10.0)
        versions = {i: r[0]["version"] for i, r in replies.items()
                    if not isinstance(r, Exception)}
        if not versions:
            raise BlockfoldError(f"no node of cluster {members.config.path} can be reached")
        best = max(versions, key=versions.get)
        if versions[best] == 0:
            return cls(members, min_replicas, None, 0, block_size)
        version, image = cls._fetch(members, best)
        return cls(members, min_replicas, image, version, block_size)

    @staticmethod
    def _fetch(members, node: int) -> tuple[int, bytes]:
        """A node's whole catalog, a part at a time; starts over if it changes meanwhile."""
        for _ in range(5):
            parts, offset, version = [], 0, None
            while True:
                reply = members.call(node, rpc.CATALOG_FETCH,
                                     {"offset": offset, "length": rpc.CATALOG_PART},
                                     timeout=60.0)
                if isinstance(reply, Exception):
                    raise BlockfoldError(f"cannot fetch the catalog from node "
                                         f"{members.names()[node]}: {reply}")
                header, data = reply
                if version is not None and header["version"] != version:
                    break
                version = header["version"]
                parts.append(bytes(data))
                offset += len(data)
                if offset >= header["size"] or not len(data):
                    return version, b"".join(parts)
        raise BlockfoldError(f"the catalog on node {members.names()[node]} keeps changing")

    def commit(self) -> None:
        """Ships the transaction's changes to the nodes first: if fewer than min_replicas take
        them, ReplicationError, and the pool rolls the transaction back. All or nothing."""
        self.ship()
        super().commit()

    def ship(self, also: tuple[int, ...] = ()) -> None:
        """Sends the changes committed since the last ship to every up node (and `also`)."""
        if self.members.holder is None or not changeset.pending(self.conn):
            return
        changes, blobs = changeset.encode(changeset.collect(self.conn))
        meta = json.dumps({"changes": changes}, separators=(",", ":")).encode()
        blob = rpc.BODY_HEADER.pack(len(meta)) + meta + blobs
        base, version = self.version, self.version + 1
        up = [i for i, n in enumerate(self.members.nodes)
              if n.state in (NodeState.UP, NodeState.SUSPECT) or i in also]
        header = {"holder": self.members.holder, "base": base, "version": version}
        replies = self._send_parts(rpc.CATALOG_APPLY, header, blob, up)
        done = [i for i, r in replies.items() if not isinstance(r, Exception)]
        behind = [i for i, r in replies.items()
                  if isinstance(r, rpc.RemoteError) and r.code == rpc.Code.CATALOG_BEHIND]
        if behind:
            done += self._install(behind, version)
        if len(done) < self.min_replicas:
            names = self.members.names()
            missed = ", ".join(names[i] for i in range(len(names)) if i not in done)
            raise ReplicationError(f"a catalog change reached {len(done)} nodes, fewer than"
                                   f" min_replicas={self.min_replicas} (not reached: {missed})")
        self.version = version
        changeset.forget(self.conn)

    def _install(self, nodes: list[int], version: int) -> list[int]:
        """Gives nodes the whole catalog at `version`; returns those that took it."""
        replies = self._send_parts(rpc.CATALOG_INSTALL,
                                   {"holder": self.members.holder, "version": version},
                                   self.conn.serialize(), nodes)
        return [i for i, r in replies.items() if not isinstance(r, Exception)]

    def _send_parts(self, kind: int, header: dict, blob: bytes, nodes: list[int]) -> dict:
        """Sends `blob` to every node in frames of at most rpc.CATALOG_PART bytes; a node
        applies it when the last part is in. {node: last reply or exception}"""
        parts = [blob[i:i + rpc.CATALOG_PART] for i in range(0, len(blob), rpc.CATALOG_PART)]
        parts = parts or [b""]
        replies: dict = {}
        live = list(nodes)
        for k, part in enumerate(parts):
            h = dict(header, part=k, more=k < len(parts) - 1)
            got = self.members.call_many(dict.fromkeys(live, (kind, h, part)), 60.0)
            replies.update(got)
            live = [i for i in live if not isinstance(got[i], Exception)]
        return replies

    def catch_up(self, node: int) -> bool:
        """Brings a returning node's replica to the current version; False if it failed."""
        if self.in_transaction or self.members.holder is None:
            return False
        if not self.members.lease_on(node):
            return False
        if changeset.pending(self.conn):
            self.ship(also=(node,))
        info = self.members.call(node, rpc.CATALOG_VERSION, {}, timeout=10.0)
        if isinstance(info, Exception):
            return False
        if info[0]["version"] == self.version:
            return True
        return bool(self._install([node], self.version))

    def publish(self) -> None:
        """A new cluster's first catalog, to every up node, as version 1."""
        up = [i for i, n in enumerate(self.members.nodes) if n.state != NodeState.DOWN]
        if len(self._install(up, 1)) < self.min_replicas:
            raise BlockfoldError("could not store the new cluster's catalog on enough nodes")
        self.version = 1
        changeset.forget(self.conn)

    def close(self) -> None:
        # Changes made outside a transaction (the pool's clean/dirty state) still ship.
        try:
            self.ship()
        finally:
            super().close()
