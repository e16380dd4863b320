"""The cluster catalog: an engine.catalog.Catalog in the coordinator's RAM, replicated whole to
every node.

Each node keeps a full replica with a version number. The coordinator starts from the up node
with the highest version. Each commit ships one changeset (engine.cluster.changeset) from version
v to v+1 to every up node; a node applies it only on top of v. A node that is behind (it was down,
or missed a changeset) gets the whole catalog image instead. A commit that reaches fewer than
min_replicas nodes is an error.
"""

from __future__ import annotations

from ..catalog import Catalog
from ..errors import BlockfoldError
from ..net import rpc
from . import changeset
from .blocks import ReplicationError

BEHIND = "catalog replica is at version"


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
    def load(cls, members, min_replicas: int, block_size: int) -> "ReplicatedCatalog":
        """The catalog of the up node with the highest version (a fresh one if none has any)."""
        up = [i for i, n in enumerate(members.nodes) if n.state != "down"]
        replies = members.call_many({i: (rpc.CATALOG_VERSION, {}, b"") for i in up}, 10.0)
        versions = {i: r[0]["version"] for i, r in replies.items()
                    if not isinstance(r, Exception)}
        if not versions:
            raise BlockfoldError(f"no node of cluster {members.config.path} can be reached")
        best = max(versions, key=versions.get)
        if versions[best] == 0:
            return cls(members, min_replicas, None, 0, block_size)
        reply = members.call(best, rpc.CATALOG_FETCH, {}, timeout=60.0)
        if isinstance(reply, Exception):
            raise BlockfoldError(f"cannot fetch the catalog from node "
                                 f"{members.names()[best]}: {reply}")
        return cls(members, min_replicas, bytes(reply[1]), reply[0]["version"], block_size)

    def commit(self) -> None:
        if self.in_transaction:
            super().commit()
            self.ship()

    def ship(self, also: tuple[int, ...] = ()) -> None:
        """Sends the changes committed since the last ship to every up node (and `also`)."""
        if self.members.holder is None or not changeset.pending(self.conn):
            return
        changes, payload = changeset.encode(changeset.collect(self.conn))
        base, version = self.version, self.version + 1
        up = [i for i, n in enumerate(self.members.nodes)
              if n.state in ("up", "suspect") or i in also]
        header = {"holder": self.members.holder, "base": base, "version": version,
                  "changes": changes}
        replies = self.members.call_many({i: (rpc.CATALOG_APPLY, header, payload) for i in up})
        done = [i for i, r in replies.items() if not isinstance(r, Exception)]
        behind = [i for i, r in replies.items()
                  if isinstance(r, rpc.RemoteError) and BEHIND in str(r)]
        if behind:
            done += self._install(behind, version)
        if len(done) < self.min_replicas:
            raise ReplicationError(f"a catalog change reached {len(done)} nodes, fewer than"
                                 f" min_replicas={self.min_replicas}")
        self.version = version
        changeset.forget(self.conn)

    def _install(self, nodes: list[int], version: int) -> list[int]:
        """Gives nodes the whole catalog at `version`; returns those that took it."""
        image = self.conn.serialize()
        replies = self.members.call_many(
            {i: (rpc.CATALOG_INSTALL, {"holder": self.members.holder, "version": version}, image)
             for i in nodes}, 60.0)
        return [i for i, r in replies.items() if not isinstance(r, Exception)]

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
        up = [i for i, n in enumerate(self.members.nodes) if n.state != "down"]
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
