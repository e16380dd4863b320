"""Catalog changesets: which rows a transaction touched, shipped as one frame, applied anywhere.

Capture is generic: temporary triggers on every catalog table record the primary key of each row
inserted, updated or deleted into a temporary `_dirty` table (it lives and rolls back with the
transaction). At commit the dirty keys are read back as their current rows (an upsert) or as
gone (a delete). The same encoding serves every table; blobs travel as raw bytes after the JSON.
A changeset carries rows, never a schema change: the capture notes the schema version its
receivers hold (`_schema`), and `collect` refuses across a change of it (the whole image must
go instead; its receivers then hold the new schema: `rebase`).

The coordinator captures, collects and encodes (engine.cluster.catalog); a node decodes and
applies (engine.node.store). Encoded, a changeset is JSON plus one byte string:

    changes := [change, ...]
    change  := {"table": name, "cols": [column, ...], "pk": [column, ...],
                "upsert": [[value, ...] (one per column), ...], "delete": [[value, ...] (one per
                pk column), ...]}
    value   := null | number | string | {"$b": [offset, length]}  (a blob: bytes of the payload)
"""

from __future__ import annotations

import json
import sqlite3

DIRTY = "_dirty"
SCHEMA = "_schema"
SCALARS = (type(None), bool, int, float, str, bytes)


class ChangesetError(ValueError):
    """A changeset that is malformed or does not fit the catalog it is applied to."""


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def table_keys(conn: sqlite3.Connection, schema: str = "main") -> dict[str, tuple[list, list]]:
    """Every ordinary table: (its columns, its primary-key columns)."""
    out = {}
    for (name,) in conn.execute(f"SELECT name FROM {schema}.sqlite_master WHERE type='table'"
                                " AND name NOT LIKE 'sqlite_%'"):
        info = conn.execute(f"PRAGMA {schema}.table_info({_quote(name)})").fetchall()
        cols = [row[1] for row in info]
        pk = [row[1] for row in sorted(info, key=lambda r: r[5]) if row[5]] or ["rowid"]
        out[name] = (cols, pk)
    return out


def install_capture(conn: sqlite3.Connection, skip=("replica",)) -> None:
    """Temporary triggers that note the key of every changed row in temp._dirty. Run again
    after tables are added, it adds theirs and keeps the schema version the changes are based
    on (temp._schema, first noted here)."""
    conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {DIRTY} (tbl TEXT, key TEXT,"
                 " PRIMARY KEY (tbl, key))")
    conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {SCHEMA} (version INTEGER)")
    if conn.execute(f"SELECT 1 FROM {SCHEMA}").fetchone() is None:
        conn.execute(f"INSERT INTO {SCHEMA} VALUES (?)", (schema_version(conn),))
    for name, (_cols, pk) in table_keys(conn).items():
        if name in skip:
            continue
        for event, rows in (("INSERT", ("NEW",)), ("UPDATE", ("OLD", "NEW")),
                            ("DELETE", ("OLD",))):
            body = " ".join(
                f"INSERT OR IGNORE INTO {DIRTY} VALUES ('{name}', json_array("
                + ", ".join(f"{r}.{_quote(c)}" for c in pk) + "));" for r in rows)
            conn.execute(f"CREATE TEMP TRIGGER IF NOT EXISTS {_quote('cap_' + name + '_' + event)}"
                         f" AFTER {event} ON main.{_quote(name)} BEGIN {body} END")


def schema_version(conn: sqlite3.Connection) -> int:
    """sqlite's schema cookie of the main database: it changes with every table or column made
    or dropped (temporary ones aside)."""
    return conn.execute("PRAGMA main.schema_version").fetchone()[0]


def image_schema_version(image: bytes) -> int:
    """The schema cookie of a serialized database (big-endian, bytes 40-43 of its header)."""
    return int.from_bytes(image[40:44], "big")


def schema_changed(conn: sqlite3.Connection) -> bool:
    """Whether the schema changed since the one the noted changes are based on."""
    return schema_version(conn) != conn.execute(f"SELECT version FROM {SCHEMA}").fetchone()[0]


def rebase(conn: sqlite3.Connection, version: int) -> None:
    """The receivers now hold schema `version` (they were given the whole image): the changes
    noted stay, to be collected on top of it."""
    conn.execute(f"UPDATE {SCHEMA} SET version = ?", (version,))


def pending(conn: sqlite3.Connection) -> bool:
    return conn.execute(f"SELECT 1 FROM {DIRTY} LIMIT 1").fetchone() is not None


def collect(conn: sqlite3.Connection, source: sqlite3.Connection | None = None) -> list[dict]:
    """The changes noted so far in `conn`: per table, rows to upsert and keys to delete, as the
    rows are in `source` (by default `conn` itself). With `source` a copy of the catalog before
    the changes, that is their inverse: the changed rows as they were, the new ones deleted.
    Raises ChangesetError if the schema changed since the changes' base (a table or column
    added): rows in the new schema do not fit the receivers' tables, which would refuse them."""
    if schema_changed(conn):
        raise ChangesetError("the catalog's schema changed since its changes were based:"
                             " a changeset cannot carry that, the whole image must go")
    source = conn if source is None else source
    keys = table_keys(source)
    by_table: dict[str, list] = {}
    for tbl, key in conn.execute(f"SELECT tbl, key FROM {DIRTY}"):
        by_table.setdefault(tbl, []).append(json.loads(key))
    out = []
    for tbl, pks in by_table.items():
        cols, pk = keys[tbl]
        where = " AND ".join(f"{_quote(c)} IS ?" for c in pk)
        sel = f"SELECT {', '.join(_quote(c) for c in cols)} FROM {_quote(tbl)} WHERE {where}"
        upsert, delete = [], []
        for key in pks:
            row = source.execute(sel, key).fetchone()
            if row is None:
                delete.append(key)
            else:
                upsert.append(list(row))
        out.append({"table": tbl, "cols": cols, "pk": pk, "upsert": upsert, "delete": delete})
    return out


def forget(conn: sqlite3.Connection) -> None:
    """The receivers hold every change noted, and the schema as it is."""
    conn.execute(f"DELETE FROM {DIRTY}")
    rebase(conn, schema_version(conn))


def encode(changes: list[dict]) -> tuple[list, bytes]:
    """Changes as JSON-able data plus the raw bytes their blobs point into."""
    blobs: list[bytes] = []
    offset = 0

    def value(v):
        nonlocal offset
        if isinstance(v, bytes):
            blobs.append(v)
            offset += len(v)
            return {"$b": [offset - len(v), len(v)]}
        return v

    out = []
    for ch in changes:
        out.append(dict(ch, upsert=[[value(v) for v in row] for row in ch["upsert"]]))
    return out, b"".join(blobs)


def decode(changes, payload) -> list[dict]:
    """The changes encode() made, blobs cut back out of `payload` (bytes-like). Checks every
    shape before anything is trusted: raises ChangesetError for anything malformed, a blob that
    points outside the payload included."""
    payload = bytes(payload)

    def value(v):
        if isinstance(v, dict):
            ref = v.get("$b")
            if (not isinstance(ref, list) or len(ref) != 2
                    or not all(type(x) is int for x in ref)):
                raise ChangesetError("changeset value is neither a scalar nor a blob reference")
            start, n = ref
            if not (start >= 0 and n >= 0 and start + n <= len(payload)):
                raise ChangesetError("blob reference outside the payload")
            return payload[start:start + n]
        if not isinstance(v, SCALARS):
            raise ChangesetError("changeset value is neither a scalar nor a blob reference")
        if type(v) is int and not -(1 << 63) <= v < 1 << 63:
            raise ChangesetError("changeset integer does not fit in 64 bits")
        return v

    def rows(ch, field: str, width: int) -> list[list]:
        got = ch.get(field)
        if not isinstance(got, list) or not all(isinstance(r, list) and len(r) == width
                                                for r in got):
            raise ChangesetError(f"changeset {field} rows do not match table"
                                 f" {ch.get('table')!r}")
        return [[value(v) for v in r] for r in got]

    if not isinstance(changes, list):
        raise ChangesetError("changeset is not a list of changes")
    out = []
    for ch in changes:
        if not (isinstance(ch, dict) and isinstance(ch.get("table"), str)
                and _names(ch.get("cols")) and _names(ch.get("pk"))):
            raise ChangesetError("changeset entry lacks its table, columns or key")
        out.append({"table": ch["table"], "cols": ch["cols"], "pk": ch["pk"],
                    "upsert": rows(ch, "upsert", len(ch["cols"])),
                    "delete": rows(ch, "delete", len(ch["pk"]))})
    return out


def _names(v) -> bool:
    """A non-empty list of distinct column names."""
    return (isinstance(v, list) and len(v) > 0 and all(isinstance(c, str) for c in v)
            and len(set(v)) == len(v))


def apply(conn: sqlite3.Connection, changes: list[dict]) -> None:
    """Applies decoded changes inside the caller's transaction. Raises ChangesetError if a table
    or column is not in this catalog, or a row breaks one of its constraints."""
    keys = table_keys(conn)
    for ch in changes:
        tbl = ch["table"]
        if tbl not in keys:
            raise ChangesetError(f"changeset names unknown table {tbl!r}")
        cols, pk = keys[tbl]
        if not set(ch["cols"]) <= set(cols) or list(ch["pk"]) != pk:
            raise ChangesetError(f"changeset columns do not match table {tbl!r}")
        where = " AND ".join(f"{_quote(c)} IS ?" for c in pk)
        marks = ", ".join("?" for _ in ch["cols"])
        try:
            conn.executemany(f"DELETE FROM {_quote(tbl)} WHERE {where}", ch["delete"])
            conn.executemany(f"INSERT OR REPLACE INTO {_quote(tbl)}"
                             f" ({', '.join(_quote(c) for c in ch['cols'])}) VALUES ({marks})",
                             ch["upsert"])
        except sqlite3.IntegrityError as e:
            raise ChangesetError(f"changeset does not fit table {tbl!r}: {e}") from None
