"""The sqlite catalog: pool state, VMs, layers, block-table pages, events and rebuild history.

One connection, in WAL mode with synchronous=FULL so that a commit survives power loss. Only the
pool's commit writes (engine/pool.py): it opens a transaction, writes the dirty block-table pages
and the rows of a layer edit, and commits them together.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import numpy as np

from . import formats
from .errors import NotAPoolError, PoolFormatError
from .layergraph import VM, LayerEdit, Relinked, Snap

CATALOG_FILE = "catalog.db"
FORMAT_VERSION = 1
BUSY_MS = 5000      # sqlite3.connect's default timeout: how long a commit waits for a lock


def unreadable(path: Path, e: Exception) -> PoolFormatError:
    """The one line for a catalog that cannot be opened: damaged (not a database, a malformed
    image, rows that make no pool: a value of the wrong type, a layer that is not there), or
    another reason sqlite gives."""
    # Garbage quoted back from a damaged row must not break the one line.
    said = "".join(c if c.isprintable() else "?" for c in str(e))
    if isinstance(e, sqlite3.DatabaseError):
        # No sqlite error code: Python's own reading failed (text that is not UTF-8): damage.
        code = getattr(e, "sqlite_errorcode", sqlite3.SQLITE_CORRUPT) & 0xFF
        if code not in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
            return PoolFormatError(f"cannot use {path}: {said}")
        what = said
    else:
        what = f"its rows make no pool: {said}"
    return PoolFormatError(f"{path} is damaged ({what}): restore it from a backup (`sqlite3 "
                           f"{path} .recover` saves what can still be read); nothing was "
                           "changed")


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
        self.ensure_tables()
        db["meta"].insert_all([
            {"key": "format_version", "value": str(FORMAT_VERSION)},
            {"key": "block_size", "value": str(block_size)},
            {"key": "state", "value": "clean"},
            {"key": "created", "value": str(time.time())},
            {"key": "collisions", "value": "0"},
            {"key": "next_layer", "value": "1"},
        ])

    def ensure_tables(self) -> None:
        """Tables and columns added since format 1 began, made where missing (a writable
        open): `corrupt`; `snapshots`; `vms.base` (the layer a clone was cloned onto);
        `vms.base_size` and `snapshots.base_size` (that layer's size, bytes: NULL for a clone
        made before it was kept)."""
        self.conn.execute("CREATE TABLE IF NOT EXISTS corrupt (address INTEGER PRIMARY KEY,"
                          " found REAL)")
        self.conn.execute("CREATE TABLE IF NOT EXISTS snapshots (vm TEXT, name TEXT,"
                          " layer INTEGER, created REAL, size INTEGER, origin TEXT,"
                          " base INTEGER, base_size INTEGER, PRIMARY KEY (vm, name))")
        for table, column in (("vms", "base"), ("vms", "base_size"),
                              ("snapshots", "base_size")):
            if column not in self._columns(table):
                self.conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} INTEGER")

    def _columns(self, table: str) -> set[str]:
        return {row[1] for row in self.conn.execute(f"PRAGMA table_info({table})")}

    def _or_null(self, table: str, *columns: str) -> str:
        """The columns to select, NULL for those an older pool opened read-only lacks."""
        have = self._columns(table)
        return ", ".join(c if c in have else "NULL" for c in columns)

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

    def mark_dirty(self, writer: str | None) -> None:
        """State "dirty" (a writer has the pool open: a close marks it "clean") and, if given,
        meta `writer`, the writer's identity (engine.processid): one statement, so both or
        neither."""
        rows = [("state", "dirty")] + ([("writer", writer)] if writer is not None else [])
        self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES "
                          + ", ".join(["(?, ?)"] * len(rows)), [v for row in rows for v in row])

    # -- transactions -------------------------------------------------------------------------

    def data_version(self) -> int:
        """sqlite's PRAGMA data_version: changes whenever another connection commits to the
        database (never for this connection's own commits)."""
        return self.conn.execute("PRAGMA data_version").fetchone()[0]

    def begin(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.conn.execute("COMMIT")

    def rollback(self) -> None:
        """Back to the last commit; a no-op if sqlite already rolled back (a failed COMMIT on a
        full disk may have)."""
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def give_back_wal(self) -> None:
        """Truncates the WAL once all of it is in the database file: a delete writes as much WAL
        as the pages it deletes, space the filesystem gets back at once this way (sqlite keeps a
        WAL at its largest while the catalog is open). Waits for no reader: one still reading an
        older state leaves the WAL as it is."""
        if self.path is None or self.readonly:
            return
        self.conn.execute("PRAGMA busy_timeout=0")
        try:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.OperationalError:
            pass        # the commit is durable; the WAL is given back by the next checkpoint
        finally:
            self.conn.execute(f"PRAGMA busy_timeout={BUSY_MS}")

    @property
    def in_transaction(self) -> bool:
        return self.conn.in_transaction

    # -- rows ---------------------------------------------------------------------------------

    def vms(self) -> dict[str, VM]:
        newer = self._or_null("vms", "base", "base_size")
        rows = self.conn.execute(f"SELECT name, size, top, created, origin, {newer}"
                                 " FROM vms").fetchall()
        return {r[0]: VM(*r) for r in rows}

    def snaps(self) -> list[Snap]:
        """Every VM's snapshots ([] for an older pool opened read-only)."""
        if not self._columns("snapshots"):
            return []
        newer = self._or_null("snapshots", "base_size")
        rows = self.conn.execute("SELECT vm, name, layer, created, size, origin, base,"
                                 f" {newer} FROM snapshots").fetchall()
        return [Snap(*r) for r in rows]

    def layer_parents(self) -> dict[int, int | None]:
        return dict(self.conn.execute("SELECT id, parent FROM layers"))

    # -- writing, inside the pool's commit ----------------------------------------------------

    def write_pages(self, pages) -> None:
        """Block-table pages (layer, page, entries bytes, or None to drop the row)."""
        self.conn.executemany("INSERT OR REPLACE INTO bmap (layer, page, entries) VALUES (?,?,?)",
                              [p for p in pages if p[2] is not None])
        self.conn.executemany("DELETE FROM bmap WHERE layer=? AND page=?",
                              [p[:2] for p in pages if p[2] is None])

    def layer_ids_end(self) -> int:
        """1 + the largest layer id any row uses (a layer, a block-table page), 1 if none: the
        first id a new layer may take whatever meta `next_layer` says."""
        used = self.conn.execute("SELECT max(m) FROM (SELECT max(id) AS m FROM layers"
                                 " UNION ALL SELECT max(layer) FROM bmap)").fetchone()[0]
        return 1 + (used or 0)

    def apply(self, edit: LayerEdit, actor: str, next_layer: int) -> None:
        """Writes the rows of a layer edit (see engine.layergraph.LayerEdit)."""
        c = self.conn
        c.executemany("DELETE FROM bmap WHERE layer=?", [(lid,) for lid in edit.dropped])
        c.executemany("DELETE FROM layers WHERE id=?", [(lid,) for lid in edit.dropped])
        c.executemany("INSERT OR REPLACE INTO layers (id, parent) VALUES (?, ?)",
                      list(edit.new_layers.items()) + list(edit.reparented.items())
                      + list(edit.moved.items()))
        c.executemany("DELETE FROM vms WHERE name=?", [(name,) for name in edit.deleted_vms])
        c.executemany("DELETE FROM snapshots WHERE vm=? AND name=?", edit.deleted_snaps)
        if edit.relinked is not None:   # before the rows put: a renamed golden keeps its origin
            self._relink(edit.relinked)
        c.executemany(
            "INSERT OR REPLACE INTO vms (name, size, top, created, origin, base, base_size)"
            " VALUES (?,?,?,?,?,?,?)",
            [(vm.name, vm.size, vm.top, vm.created, vm.origin, vm.base, vm.base_size)
             for vm in edit.put_vms])
        c.executemany(
            "INSERT OR REPLACE INTO snapshots (vm, name, layer, created, size, origin, base,"
            " base_size) VALUES (?,?,?,?,?,?,?,?)",
            [(s.vm, s.name, s.layer, s.created, s.size, s.origin, s.base, s.base_size)
             for s in edit.put_snaps])
        self.write_pages([(layer, pno, page) for (layer, pno), page in edit.pages.items()])
        for kind, message in edit.events:
            self.log(actor, kind, message)
        self.set("next_layer", next_layer)

    def _relink(self, relinked: Relinked) -> None:
        """A golden's clones take their new origin (a rename), or lose it and their base (a
        delete): one statement a table, not a row written per clone (40,000 clones: 1.1 s).
        Raises ValueError if it finds other rows than the graph's (the edit's commit then
        fails, nothing changed)."""
        golden, origin = relinked.golden, relinked.origin
        sets, args = (("origin=NULL, base=NULL, base_size=NULL", ()) if origin is None
                      else ("origin=?", (origin,)))
        vms = self.conn.execute(f"UPDATE vms SET {sets} WHERE origin=? AND name<>?",
                                (*args, golden, golden)).rowcount
        snaps = self.conn.execute(f"UPDATE snapshots SET {sets} WHERE origin=? AND vm<>?",
                                  (*args, golden, golden)).rowcount
        if (vms, snaps) != (len(relinked.vms), len(relinked.snaps)):
            raise ValueError(f"the catalog holds {vms} VMs and {snaps} snapshots cloned from"
                             f" {golden}, the layer graph {len(relinked.vms)} and"
                             f" {len(relinked.snaps)}")

    # -- reading block tables -----------------------------------------------------------------

    def has_pages(self) -> bool:
        return self.conn.execute("SELECT 1 FROM bmap LIMIT 1").fetchone() is not None

    def page(self, layer: int, page: int) -> bytes | None:
        """One block-table page's entries as committed (None: no such page)."""
        row = self.conn.execute("SELECT entries FROM bmap WHERE layer=? AND page=?",
                                (layer, page)).fetchone()
        return None if row is None else bytes(row[0])

    def layer_blocks(self, layer: int) -> np.ndarray:
        """The distinct blocks the committed pages of `layer` name (no INHERIT or ZERO)."""
        parts = [np.frombuffer(bytes(row[0]), np.uint64) for row in self.conn.execute(
            "SELECT entries FROM bmap WHERE layer=?", (layer,))]
        ids = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.uint64)
        return ids[(ids != 0) & (ids != np.iinfo(np.uint64).max)]

    def scan_pages(self):
        """Every block-table page, as (layer, page number, entries bytes): the one scan of the
        block tables, which the native core loads at open (rebuild, fsck and the block view
        then work on its pages in RAM)."""
        return self.conn.execute("SELECT layer, page, entries FROM bmap")

    def stale_page_layers(self) -> list[int]:
        """Layers that have block-table pages but no row in `layers`."""
        return [lid for (lid,) in self.conn.execute(
            "SELECT DISTINCT layer FROM bmap WHERE layer NOT IN (SELECT id FROM layers)")]

    def record_rebuild(self, figures: dict, actor: str) -> None:
        """The rebuild history row, and its event when the rebuild is news: one asked for, one
        after a crash or a rollback, or one that found something (corrupt blocks, orphans, bad
        references, missing blocks, rotten copies rewritten). The rebuild every open does is
        not, or each CLI call would log one. Inside a commit."""
        self.conn.execute(
            "INSERT INTO rebuilds (ts, reason, mode, seconds, blocks, bytes, corrupt, orphans)"
            " VALUES (?,?,?,?,?,?,?,?)",
            (time.time(), figures["reason"], figures["mode"], figures["seconds"],
             figures["blocks"], figures["bytes"], len(figures["corrupt_blocks"]),
             figures["orphans_reclaimed"]))
        # A fast rebuild reads no block: the corrupt ones it counts were known before.
        corrupt = figures["corrupt_blocks"] if figures["mode"] == "full" else []
        found = (corrupt or figures["orphans_reclaimed"]
                 or figures.get("bad_references") or figures.get("missing_blocks"))
        rewritten = figures.get("repaired_copies")     # a cluster's full rebuild
        if figures["reason"] != "open" or found or rewritten:
            self.log(actor if figures["reason"] == "requested" else "engine", "rebuild",
                     f"{figures['mode']} rebuild ({figures['reason']}):"
                     f" {formats.counted(figures['blocks'], 'block')},"
                     f" {formats.count(len(figures['corrupt_blocks']))} corrupt,"
                     f" {formats.counted(figures['orphans_reclaimed'], 'orphan')} reclaimed"
                     + (f", {formats.counted(rewritten, 'rotten copy', 'rotten copies')}"
                        " rewritten from a sound replica" if rewritten else ""))

    def rebuilds(self, limit: int = 10) -> list[dict]:
        cols = ("ts", "reason", "mode", "seconds", "blocks", "bytes", "corrupt", "orphans")
        rows = self.conn.execute(f"SELECT {', '.join(cols)} FROM rebuilds ORDER BY id DESC"
                                 " LIMIT ?", (limit,)).fetchall()
        return [dict(zip(cols, r)) for r in rows]

    def corrupt_addresses(self) -> np.ndarray:
        """Blocks found rotten (by a read, a full rebuild, fsck or scrub) and still referenced,
        ascending."""
        try:
            rows = self.conn.execute("SELECT address FROM corrupt").fetchall()
        except sqlite3.OperationalError:        # an older pool opened read-only: none known
            return np.zeros(0, np.uint64)
        return np.sort(np.array([r[0] for r in rows], dtype=np.int64).view(np.uint64))

    def set_corrupt(self, addresses: np.ndarray) -> None:
        """The corrupt set as it is now; inside a commit. Addresses are stored as signed 64-bit
        integers (sqlite's INTEGER): a cluster's block ids use all 64 bits."""
        known = set(self.corrupt_addresses().view(np.int64).tolist())
        now = set(np.asarray(addresses, np.uint64).view(np.int64).tolist())
        self.conn.executemany("DELETE FROM corrupt WHERE address=?", [(a,) for a in known - now])
        self.conn.executemany("INSERT INTO corrupt (address, found) VALUES (?, ?)",
                              [(a, time.time()) for a in sorted(now - known)])

    def log(self, actor: str, kind: str, message: str) -> None:
        self.conn.execute("INSERT INTO events (ts, actor, kind, message) VALUES (?, ?, ?, ?)",
                          (time.time(), actor, kind, message))

    def events(self, limit: int, since: float | None = None) -> list[dict]:
        rows = self.conn.execute("SELECT id, ts, actor, kind, message FROM events WHERE ts >= ?"
                                 " ORDER BY id DESC LIMIT ?",
                                 (since if since is not None else float("-inf"), limit)
                                 ).fetchall()
        return [dict(zip(("id", "ts", "actor", "kind", "message"), r)) for r in rows]

    def close(self) -> None:
        self.conn.close()
