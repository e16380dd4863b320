"""The cluster catalog: an engine.catalog.Catalog in the coordinator's RAM, replicated whole to
every node.

Each node keeps a full replica stamped (epoch, version) with its lineage (engine.lineage). A
writable coordinator takes a new epoch from a majority of the configured nodes and starts from the
newest of their replicas. Each commit ships one changeset (engine.changeset) from the last stamp
to (our epoch, next counter) to every up node before it commits locally; a node applies it only on
top of that stamp. A node that is behind (it was down, or missed a changeset) gets the whole
catalog image instead, and keeps its replica aside if it was from another lineage; so does every
node after a schema change (an older cluster's catalog given its newer tables at a writable
open), which no changeset can carry. A commit that
reaches fewer than a majority of the nodes (or min_replicas) is refused (ReplicationError) and
rolled back, and undone on the nodes that took it by its inverse; its counter is never reused.
"""

from __future__ import annotations

import json
import sqlite3
import sys

from .. import changeset, lineage
from ..catalog import Catalog
from ..errors import BlockfoldError, NoMajorityError, ReplicationError
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
                 block_size: int, epoch: int = 0, line: list | None = None):
        super().__init__(None)
        self.members = members
        self.min_replicas = min_replicas
        if image:
            self.conn.deserialize(rollback_journal(image))
            self.conn.execute("DROP TABLE IF EXISTS replica")
        else:
            # Made aside: deserialize leaves temporary triggers on the tables it replaces
            # dead, and our ensure_tables installs the capture.
            new = Catalog(None)
            new.create_schema(block_size)
            # In sqlite's memdb like a loaded one: only there does an image taken inside a
            # transaction hold just what was committed (a plain :memory: one shows the rest)…
            self.conn.deserialize(new.conn.serialize())
            new.close()
        # … as long as no page of a big transaction is spilled into it before the commit.
        self.conn.execute("PRAGMA cache_spill = OFF")
        self.epoch, self.version = epoch, version   # the last commit the nodes took
        self.lineage = line or []
        self.writer_epoch = 0           # ours, promised by a majority; 0 when read-only
        self._next = version + 1        # the next commit's counter: a failed one's is not reused
        self.asides: list[str] = []     # replicas from another lineage, kept aside by nodes
        changeset.install_capture(self.conn)

    def ensure_tables(self) -> None:
        """The newer tables and columns, made where missing, and captured: a row written to a
        table made here must reach the nodes too. The next ship sends the whole image."""
        super().ensure_tables()
        changeset.install_capture(self.conn)

    @property
    def stamp(self) -> tuple[int, int]:
        """(epoch, version) of the last commit the nodes took."""
        return self.epoch, self.version

    @property
    def needed(self) -> int:
        """Nodes a catalog change must reach: a majority of the configured nodes (so every
        writable open, which reads a majority, sees it), and at least min_replicas."""
        return max(self.min_replicas, lineage.majority(self.members.count()))

    @property
    def fenced(self) -> bool:
        """Whether no commit of ours can reach enough nodes again: a node answering our
        heartbeats holds a replica from a newer epoch (another writer took the cluster, across a
        partition, say: it had a majority's promise), or so many nodes promised a newer epoch
        that those left cannot make `needed` (a writer that died after its promises, before
        its first commit: every flush of ours was refused, and nothing said fenced). False when
        read-only."""
        if not self.writer_epoch:
            return False
        nodes = [self.members.nodes[i] for i in self.members.present()]
        return (any(n.epoch > self.writer_epoch for n in nodes)
                or sum(n.promised > self.writer_epoch for n in nodes) > len(nodes) - self.needed)

    def fenced_line(self) -> str:
        return (f"a newer writer has cluster {self.members.config.path}: this one's epoch"
                f" {self.writer_epoch} is refused")

    @staticmethod
    def require_majority(members, min_replicas: int, answering: int) -> int:
        """How many nodes a writer needs (a majority of the configured nodes, and
        min_replicas); NoMajorityError in one line if `answering` nodes are fewer."""
        total = members.count()
        need = max(min_replicas, lineage.majority(total))
        if answering < need:
            raise NoMajorityError(
                f"cluster {members.config.path}: {answering} of {total} nodes answer; writes"
                f" need {need} (a majority): restore nodes (commands that only read still"
                " work)")
        return need

    @classmethod
    def load(cls, members, min_replicas: int, block_size: int,
             writable: bool = False) -> ReplicatedCatalog:
        """The newest catalog (highest (epoch, version)) of the nodes that answer (a fresh one
        if none has any). Writable: a majority of the configured nodes must answer and promise
        a new epoch, above any they promised before; the newest of their replicas is then the
        newest any writer committed (engine.lineage). Else BlockfoldError, in one line naming
        how many nodes answer and how many it needs."""
        path, total = members.config.path, members.count()
        up = [i for i, n in enumerate(members.nodes) if n.state != NodeState.DOWN]
        replies = members.call_many({i: (rpc.CATALOG_VERSION, {}, b"") for i in up}, 10.0)
        versions = {i: r[0] for i, r in replies.items() if not isinstance(r, Exception)}
        if not versions:
            raise BlockfoldError(f"no node of cluster {path} can be reached: start them"
                                 f" (`blockfold cluster up {path}` starts its local nodes,"
                                 " `node restore NAME` one of them)")
        epoch = 0
        if writable:
            need = cls.require_majority(members, min_replicas, len(versions))
            epoch = 1 + max(max(v["promised"], v["epoch"]) for v in versions.values())
            replies = members.call_many(
                {i: (rpc.CATALOG_PROMISE, {"holder": members.holder, "epoch": epoch}, b"")
                 for i in versions}, 10.0)
            versions = {i: r[0] for i, r in replies.items() if not isinstance(r, Exception)}
            if len(versions) < need:
                raise BlockfoldError(
                    f"cluster {path}: {len(versions)} of {total} nodes took this writer's epoch"
                    f" {epoch}; writes need {need} (a majority): another writer may have come"
                    " first, try again")
        best = max(versions, key=lambda i: (versions[i]["epoch"], versions[i]["version"]))
        if versions[best]["version"] == 0:
            catalog = cls(members, min_replicas, None, 0, block_size)
        else:
            (stamp, image), line = cls._fetch(members, best), versions[best]["lineage"]
            if stamp != (versions[best]["epoch"], versions[best]["version"]):
                line = members.call(best, rpc.CATALOG_VERSION, {}, timeout=10.0)[0]["lineage"]
            catalog = cls(members, min_replicas, image, stamp[1], block_size, stamp[0], line)
        catalog.writer_epoch = epoch
        return catalog

    @staticmethod
    def _fetch(members, node: int) -> tuple[tuple[int, int], bytes]:
        """A node's whole catalog, a part at a time, and its (epoch, version); starts over if
        it changes meanwhile."""
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
                stamp = (header.get("epoch", 0), header["version"])
                if version is not None and stamp != version:
                    break
                version = stamp
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
        """Sends the changes committed since the last ship to every up node (and `also`), as
        (our epoch, the next counter) on top of the last stamp the nodes took. After a schema
        change, the whole image goes first."""
        if self.members.holder is None:
            return
        if changeset.schema_changed(self.conn):
            self._ship_whole(also)
        if not changeset.pending(self.conn):
            return
        blob = _encode(changeset.collect(self.conn))
        epoch, version = self.writer_epoch, self._next
        self._next += 1
        line = lineage.extend(self.lineage or [[self.epoch, 0]], epoch, self.version)
        up = [i for i, n in enumerate(self.members.nodes)
              if n.state in (NodeState.UP, NodeState.SUSPECT) or i in also]
        header = {"holder": self.members.holder, "base": self.version, "base_epoch": self.epoch,
                  "version": version, "epoch": epoch}
        replies = self._send_parts(rpc.CATALOG_APPLY, header, blob, up)
        done = [i for i, r in replies.items() if not isinstance(r, Exception)]
        behind = [i for i, r in replies.items()
                  if isinstance(r, rpc.RemoteError) and r.code == rpc.Code.CATALOG_BEHIND]
        if behind:
            done += self._catch_up(behind, header, blob, (epoch, version), line)
        if len(done) < self.needed:
            if done and self.in_transaction:
                # Undone where it landed, before the refusal is told: the pool rolls back,
                # and no replica may show a change no majority took (a read-only open loads
                # the newest it reaches).
                self._undo(done, (epoch, version))
            raise ReplicationError(self._short(done, replies))
        self.epoch, self.version, self.lineage = epoch, version, line
        changeset.forget(self.conn)

    def _ship_whole(self, also: tuple[int, ...]) -> None:
        """Gives every up node (and `also`) the whole image as a commit of its own: the schema
        changed since the nodes' (ensure_tables gave an older cluster's catalog its newer tables
        and columns), and a changeset with the new columns was refused by every node. Inside a
        transaction the image holds what was committed (memdb, see __init__), the schema change
        included (made outside any transaction); the transaction's changes follow on top."""
        image = self.conn.serialize()
        epoch, version = self.writer_epoch, self._next
        self._next += 1
        line = lineage.extend(self.lineage or [[self.epoch, 0]], epoch, self.version)
        up = [i for i, n in enumerate(self.members.nodes)
              if n.state in (NodeState.UP, NodeState.SUSPECT) or i in also]
        took = self._install(up, (epoch, version), line, image)
        if len(took) < self.needed:
            raise ReplicationError(self._short(took, {}))
        self.epoch, self.version, self.lineage = epoch, version, line
        changeset.rebase(self.conn, changeset.image_schema_version(image))

    def _undo(self, nodes: list[int], refused: tuple[int, int]) -> None:
        """Takes `nodes`, which took the change stamped `refused` in this transaction, back to
        the last commit and its stamp with the change's inverse: the rows it changed as they
        were at the last commit (the image inside the transaction holds only that, memdb: see
        __init__), so the bytes sent grow with the change, not with the catalog (the whole
        image went to a partitioned minority at every refused flush)."""
        before = sqlite3.connect(":memory:")
        try:
            before.deserialize(self.conn.serialize())
            blob = _encode(changeset.collect(self.conn, before))
        finally:
            before.close()
        line = self.lineage or [[self.epoch, 0]]
        header = {"holder": self.members.holder, "base": refused[1], "base_epoch": refused[0],
                  "version": self.version, "epoch": self.epoch, "writer": self.writer_epoch,
                  "lineage": line}
        replies = self._send_parts(rpc.CATALOG_APPLY, header, blob, nodes)
        # A node that answered but could not take the inverse (not at the refused stamp, so
        # what it holds is not known) is the one case for the whole image.
        whole = [i for i, r in replies.items() if isinstance(r, rpc.RemoteError)]
        if whole:
            self._install(whole, self.stamp, line)

    def _catch_up(self, nodes: list[int], header: dict, blob: bytes, stamp: tuple[int, int],
                  line: list) -> list[int]:
        """Nodes not at the base of a change being shipped: those that take it. Outside a
        transaction the local catalog already holds the change, and is installed whole at
        `stamp`. Inside one, the image held only what was committed (seen in the node logs of
        tests/cluster/test_repair.py: labelled `stamp`, it made two replicas part ways under one
        stamp, and a reopen could load the one without the change); so the base is installed at
        its own stamp and the change applied on top (changeset.apply upserts: right either
        way)."""
        if not self.in_transaction:
            return self._install(nodes, stamp, line)
        based = self._install(nodes, self.stamp, self.lineage or [[self.epoch, 0]])
        replies = self._send_parts(rpc.CATALOG_APPLY, header, blob, based)
        return [i for i, r in replies.items() if not isinstance(r, Exception)]

    def _short(self, done: list[int], replies: dict) -> str:
        """The one line of a catalog change that reached too few nodes."""
        names, total = self.members.names(), self.members.count()
        if self.fenced or any(isinstance(r, rpc.RemoteError) and r.code == rpc.Code.STALE_EPOCH
                              for r in replies.values()):
            return f"{self.fenced_line()}, and its change is not committed"
        missed = ", ".join(names[i] for i in self.members.present() if i not in done)
        return (f"a catalog change reached {len(done)} of {total} nodes; it needs {self.needed}"
                f" (a majority, and min_replicas={self.min_replicas}) (not reached: {missed})")

    def _install(self, nodes: list[int], stamp: tuple[int, int], line: list,
                 image: bytes | None = None) -> list[int]:
        """Gives nodes the whole catalog (`image`, by default the catalog's now) at `stamp`
        (epoch, version) with lineage `line`; returns those that took it. A node whose replica
        was from another lineage keeps it aside: told on stderr, and in `asides`."""
        header = {"holder": self.members.holder, "epoch": stamp[0], "version": stamp[1],
                  "lineage": line, "writer": self.writer_epoch}
        image = self.conn.serialize() if image is None else image
        replies = self._send_parts(rpc.CATALOG_INSTALL, header, image, nodes)
        took = [i for i, r in replies.items() if not isinstance(r, Exception)]
        for i in took:
            aside = replies[i][0].get("aside")
            if aside:
                told = (f"node {self.members.names()[i]} held a catalog replica from another"
                        f" lineage (epoch {aside['epoch']}, version {aside['version']}), changes"
                        f" no majority took: kept aside as {aside['kept']}")
                self.asides.append(told)
                print(f"blockfold: {told}", file=sys.stderr, flush=True)
        return took

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
        if self.in_transaction or self.members.holder is None or self.fenced:
            return False        # fenced: the lease is the newer writer's to take
        if not self.members.lease_on(node):
            return False
        self.ship(also=(node,))
        info = self.members.call(node, rpc.CATALOG_VERSION, {}, timeout=10.0)
        if isinstance(info, Exception):
            return False
        if (info[0]["epoch"], info[0]["version"]) == self.stamp:
            return True
        return bool(self._install([node], self.stamp, self.lineage or [[self.epoch, 0]]))

    def publish(self) -> None:
        """A new cluster's first catalog, to every up node, as version 1 of our epoch."""
        up = [i for i, n in enumerate(self.members.nodes) if n.state != NodeState.DOWN]
        line = [[self.writer_epoch, 0]]
        if len(self._install(up, (self.writer_epoch, 1), line)) < self.needed:
            raise BlockfoldError("could not store the new cluster's catalog on enough nodes")
        self.epoch, self.version, self.lineage, self._next = self.writer_epoch, 1, line, 2
        changeset.forget(self.conn)

    def close(self) -> None:
        # Changes made outside a transaction (the pool's clean/dirty state) still ship, unless
        # fenced: the nodes refuse our epoch.
        try:
            if not self.fenced:
                self.ship()
        finally:
            super().close()


def _encode(changes: list[dict]) -> bytes:
    """A changeset as CATALOG_APPLY carries it: its JSON body, then its blobs."""
    changes, blobs = changeset.encode(changes)
    meta = json.dumps({"changes": changes}, separators=(",", ":")).encode()
    return rpc.BODY_HEADER.pack(len(meta)) + meta + blobs
