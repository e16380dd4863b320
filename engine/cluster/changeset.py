"""Catalog changesets: which rows a transaction touched, shipped as one frame, applied anywhere.

Capture is generic: temporary triggers on every catalog table record the primary key of each row
inserted, updated or deleted into a temporary `_dirty` table (it lives and rolls back with the
transaction). At commit the dirty keys are read back as their current rows (an upsert) or as
gone (a delete). The same encoding serves every table; blobs travel as raw bytes after the JSON.
"""

from __future__ import annotations

import json
import sqlite3

DIRTY = "_dirty"


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
    """Temporary triggers that note the key of every changed row in temp._dirty."""
    conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {DIRTY} (tbl TEXT, key TEXT,"
                 " PRIMARY KEY (tbl, key))")
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


def pending(conn: sqlite3.Connection) -> bool:
    return conn.execute(f"SELECT 1 FROM {DIRTY} LIMIT 1").fetchone() is not None


def collect(conn: sqlite3.Connection) -> list[dict]:
    """The changes noted so far: per table, rows to upsert and keys to delete."""
    keys = table_keys(conn)
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
            row = conn.execute(sel, key).fetchone()
            if row is None:
                delete.append(key)
            else:
                upsert.append(list(row))
        out.append({"table": tbl, "cols": cols, "pk": pk, "upsert": upsert, "delete": delete})
    return out


def forget(conn: sqlite3.Connection) -> None:
    conn.execute(f"DELETE FROM {DIRTY}")


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


def decode(changes: list, payload) -> list[dict]:
    payload = bytes(payload)

    def value(v):
        if isinstance(v, dict):
            start, n = v["$b"]
            if not (start >= 0 and start + n <= len(payload)):
                raise ValueError("blob reference outside the payload")
            return payload[start:start + n]
        return v

    return [dict(ch, upsert=[[value(v) for v in row] for row in ch["upsert"]]) for ch in changes]


def apply(conn: sqlite3.Connection, changes: list[dict]) -> None:
    """Applies decoded changes inside the caller's transaction; names must exist here."""
    keys = table_keys(conn)
    for ch in changes:
        tbl = ch["table"]
        if tbl not in keys:
            raise ValueError(f"changeset names unknown table {tbl!r}")
        cols, pk = keys[tbl]
        if not set(ch["cols"]) <= set(cols) or list(ch["pk"]) != pk:
            raise ValueError(f"changeset columns do not match table {tbl!r}")
        where = " AND ".join(f"{_quote(c)} IS ?" for c in pk)
        conn.executemany(f"DELETE FROM {_quote(tbl)} WHERE {where}",
                         [list(k) for k in ch["delete"]])
        marks = ", ".join("?" for _ in ch["cols"])
        conn.executemany(f"INSERT OR REPLACE INTO {_quote(tbl)}"
                         f" ({', '.join(_quote(c) for c in ch['cols'])}) VALUES ({marks})",
                         [list(r) for r in ch["upsert"]])
