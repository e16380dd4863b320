"""The sqlite catalog: pool state, VMs, layers, block-table pages, events and rebuild history.

One connection, in WAL mode with synchronous=FULL so that a commit survives power loss. The engine
opens a transaction on its first change and commits it on flush; everything it writes in between
becomes durable together.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from .errors import NotAPoolError, PoolFormatError

CATALOG_FILE = "catalog.db"
FORMAT_VERSION = 1


class Catalog:
    def __init__(self, path: Path | None, readonly: bool = False):
        """Opens the catalog at `path` (None: in RAM)."""
        if path is None:
            conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        elif readonly:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False,
                                   isolation_level=None)
        else:
            conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.conn = conn
        self.path = path
        self.readonly = readonly
        if path is not None and not readonly:
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        self.in_transaction = False

    @property
    def db(self):
        """sqlite-utils over the same connection; imported on first use to keep the CLI fast."""
        import sqlite_utils
        return sqlite_utils.Database(self.conn)

    # -- schema -------------------------------------------------------------------------------

    def create_schema(self, block_size: int) -> None:
        db = self.db
        db["meta"].create({"key": str, "value": str}, pk="key")
        db["vms"].create({"name": str, "size": int, "top": int, "created": float,
                          "origin": str}, pk="name")
        db["layers"].create({"id": int, "parent": int}, pk="id")
        db.execute("CREATE TABLE bmap (layer INTEGER, page INTEGER, entries BLOB,"
                   " PRIMARY KEY (layer, page)) WITHOUT ROWID")
        db["events"].create({"id": int, "ts": float, "actor": str, "kind": str,
                             "message": str}, pk="id")
        db["rebuilds"].create({"id": int, "ts": float, "reason": str, "mode": str,
                               "seconds": float, "blocks": int, "bytes": int, "corrupt": int,
                               "orphans": int}, pk="id")
        db["meta"].insert_all([
            {"key": "format_version", "value": str(FORMAT_VERSION)},
            {"key": "block_size", "value": str(block_size)},
            {"key": "state", "value": "clean"},
            {"key": "created", "value": str(time.time())},
            {"key": "collisions", "value": "0"},
            {"key": "next_layer", "value": "1"},
        ])

    def check_format(self, where: Path) -> None:
        if self.conn.execute("SELECT 1 FROM sqlite_master WHERE name='meta'").fetchone() is None:
            raise NotAPoolError(f"{where} is not a Blockfold pool")
        version = int(self.get("format_version"))
        if version > FORMAT_VERSION:
            raise PoolFormatError(f"{where} has pool format {version}; this Blockfold reads up to "
                                  f"{FORMAT_VERSION}: upgrade Blockfold")

    # -- meta ---------------------------------------------------------------------------------

    def get(self, key: str) -> str:
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else ""

    def set(self, key: str, value) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                          (key, str(value)))

    # -- transactions -------------------------------------------------------------------------

    def begin(self) -> None:
        if not self.in_transaction:
            self.conn.execute("BEGIN IMMEDIATE")
            self.in_transaction = True

    def commit(self) -> None:
        if self.in_transaction:
            self.conn.execute("COMMIT")
            self.in_transaction = False

    def rollback(self) -> None:
        if self.in_transaction:
            self.conn.execute("ROLLBACK")
            self.in_transaction = False

    # -- rows ---------------------------------------------------------------------------------

    def vms(self) -> dict[str, dict]:
        cols = ("name", "size", "top", "created", "origin")
        rows = self.conn.execute(f"SELECT {', '.join(cols)} FROM vms").fetchall()
        return {r[0]: dict(zip(cols, r)) for r in rows}

    def layer_parents(self) -> dict[int, int | None]:
        return dict(self.conn.execute("SELECT id, parent FROM layers"))

    def new_layers(self, parent: int | None, count: int) -> list[int]:
        first = int(self.get("next_layer"))
        self.set("next_layer", first + count)
        ids = list(range(first, first + count))
        self.conn.executemany("INSERT INTO layers (id, parent) VALUES (?, ?)",
                              [(lid, parent) for lid in ids])
        return ids

    def reparent(self, layer: int, parent: int | None) -> None:
        self.conn.execute("UPDATE layers SET parent=? WHERE id=?", (parent, layer))

    def delete_layer(self, layer: int) -> None:
        self.conn.execute("DELETE FROM layers WHERE id=?", (layer,))

    def put_vm(self, vm) -> None:
        self.put_vms([vm])

    def put_vms(self, vms) -> None:
        self.conn.executemany(
            "INSERT OR REPLACE INTO vms (name, size, top, created, origin) VALUES (?,?,?,?,?)",
            [(vm.name, vm.size, vm.top, vm.created, vm.origin) for vm in vms])

    def delete_vm(self, name: str) -> None:
        self.conn.execute("DELETE FROM vms WHERE name=?", (name,))

    def record_rebuild(self, figures: dict) -> None:
        self.conn.execute(
            "INSERT INTO rebuilds (ts, reason, mode, seconds, blocks, bytes, corrupt, orphans)"
            " VALUES (?,?,?,?,?,?,?,?)",
            (time.time(), figures["reason"], figures["mode"], figures["seconds"],
             figures["blocks"], figures["bytes"], len(figures["corrupt_blocks"]),
             figures["orphans_reclaimed"]))
        self.log("engine", "rebuild",
                 f"{figures['mode']} rebuild ({figures['reason']}): {figures['blocks']} blocks,"
                 f" {len(figures['corrupt_blocks'])} corrupt,"
                 f" {figures['orphans_reclaimed']} orphans reclaimed")

    def rebuilds(self, limit: int = 10) -> list[dict]:
        cols = ("ts", "reason", "mode", "seconds", "blocks", "bytes", "corrupt", "orphans")
        rows = self.conn.execute(f"SELECT {', '.join(cols)} FROM rebuilds ORDER BY id DESC"
                                 " LIMIT ?", (limit,)).fetchall()
        return [dict(zip(cols, r)) for r in rows]

    def reader(self) -> sqlite3.Connection:
        """A second connection for a scan that runs beside the main one (the same one in RAM)."""
        if self.path is None:
            return self.conn
        return sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)

    def release_reader(self, conn: sqlite3.Connection) -> None:
        if conn is not self.conn:
            conn.close()

    def log(self, actor: str, kind: str, message: str) -> None:
        self.conn.execute("INSERT INTO events (ts, actor, kind, message) VALUES (?, ?, ?, ?)",
                          (time.time(), actor, kind, message))

    def events(self, limit: int) -> list[dict]:
        rows = self.conn.execute("SELECT id, ts, actor, kind, message FROM events"
                                 " ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [dict(zip(("id", "ts", "actor", "kind", "message"), r)) for r in rows]

    def close(self) -> None:
        self.conn.close()
