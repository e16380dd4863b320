"""Catalog changesets (engine/changeset.py) on real sqlite in RAM: what one catalog captured,
shipped as the wire carries it (JSON + raw bytes), makes another catalog equal; anything malformed
is refused before it touches a row."""

from __future__ import annotations

import json
import sqlite3

import pytest

from engine import changeset
from engine.changeset import ChangesetError

SCHEMA = [
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)",
    "CREATE TABLE vms (name TEXT PRIMARY KEY, size INTEGER NOT NULL, top INTEGER, origin TEXT)",
    "CREATE TABLE bmap (layer INTEGER, page INTEGER, entries BLOB, PRIMARY KEY (layer, page))"
    " WITHOUT ROWID",
    "CREATE TABLE events (id INTEGER PRIMARY KEY, ts REAL, message TEXT)",
]


def catalog() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    for sql in SCHEMA:
        conn.execute(sql)
    return conn


def rows(conn) -> dict:
    return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr)
            for t in ("meta", "vms", "bmap", "events")}


def ship(src, dst) -> None:
    """collect -> encode -> JSON and bytes, as a frame carries them -> decode -> apply."""
    changes, blobs = changeset.encode(changeset.collect(src))
    wire = json.loads(json.dumps({"changes": changes}))
    dst.execute("BEGIN IMMEDIATE")
    changeset.apply(dst, changeset.decode(wire["changes"], memoryview(blobs)))
    dst.execute("COMMIT")
    changeset.forget(src)


def transaction(conn, *statements) -> None:
    conn.execute("BEGIN IMMEDIATE")
    for sql, args in statements:
        conn.execute(sql, args)
    conn.execute("COMMIT")


@pytest.fixture
def pair():
    src, dst = catalog(), catalog()
    changeset.install_capture(src)
    return src, dst


def test_inserts_updates_deletes_and_blobs_make_the_replica_equal(pair):
    src, dst = pair
    page = bytes(range(256)) * 16
    transaction(src,
                ("INSERT INTO meta VALUES (?, ?)", ("state", "clean")),
                ("INSERT INTO vms VALUES (?, ?, ?, ?)", ("golden", 1 << 30, 1, None)),
                ("INSERT INTO vms VALUES (?, ?, ?, ?)", ("desk-1", 1 << 30, 2, "golden")),
                ("INSERT INTO bmap VALUES (?, ?, ?)", (1, 0, page)),
                ("INSERT INTO bmap VALUES (?, ?, ?)", (1, 1, b"")),
                ("INSERT INTO bmap VALUES (?, ?, ?)", (2, 0, b"\0" * 4096)),
                ("INSERT INTO events VALUES (?, ?, ?)", (1, 1.5, "imported golden")))
    ship(src, dst)
    assert rows(dst) == rows(src)

    transaction(src,
                ("UPDATE meta SET value=? WHERE key=?", ("dirty", "state")),
                ("UPDATE bmap SET entries=? WHERE layer=1 AND page=0", (page[::-1],)),
                ("DELETE FROM vms WHERE name=?", ("desk-1",)),
                ("DELETE FROM bmap WHERE layer=2", ()),
                ("INSERT INTO events VALUES (?, ?, ?)", (2, 2.5, "deleted desk-1")))
    ship(src, dst)
    assert rows(dst) == rows(src)
    assert dst.execute("SELECT entries FROM bmap WHERE layer=1 AND page=0").fetchone()[0] \
        == page[::-1]


def test_the_inverse_read_from_the_catalog_before_takes_a_replica_back(pair):
    """How a refused commit is undone where it landed (engine.cluster.catalog): the changed
    rows as a copy of the catalog before the change holds them, the new ones deleted."""
    src, dst = pair
    page = bytes(range(256)) * 16
    transaction(src, ("INSERT INTO vms VALUES (?, ?, ?, ?)", ("golden", 1 << 30, 1, None)),
                ("INSERT INTO vms VALUES (?, ?, ?, ?)", ("desk-1", 1 << 30, 2, "golden")),
                ("INSERT INTO bmap VALUES (?, ?, ?)", (1, 0, page)))
    ship(src, dst)
    before = sqlite3.connect(":memory:")
    before.deserialize(src.serialize())
    transaction(src, ("UPDATE bmap SET entries=? WHERE layer=1 AND page=0", (page[::-1],)),
                ("DELETE FROM vms WHERE name=?", ("desk-1",)),
                ("INSERT INTO vms VALUES (?, ?, ?, ?)", ("desk-2", 1 << 30, 3, "golden")),
                ("INSERT INTO events VALUES (?, ?, ?)", (1, 2.5, "cloned desk-2")))
    was = rows(before)
    inverse = changeset.collect(src, before)
    ship(src, dst)
    assert rows(dst) == rows(src) != was
    changes, blobs = changeset.encode(inverse)
    dst.execute("BEGIN IMMEDIATE")
    changeset.apply(dst, changeset.decode(changes, blobs))
    dst.execute("COMMIT")
    assert rows(dst) == was


def test_a_row_inserted_and_deleted_in_one_transaction_ships_as_a_delete(pair):
    src, dst = pair
    transaction(src, ("INSERT INTO vms VALUES (?, ?, ?, ?)", ("tmp", 1, 1, None)),
                ("DELETE FROM vms WHERE name=?", ("tmp",)))
    changes = changeset.collect(src)
    assert [(c["table"], c["upsert"], c["delete"]) for c in changes] == [("vms", [], [["tmp"]])]
    ship(src, dst)
    assert rows(dst) == rows(src)


def test_a_rolled_back_transaction_leaves_nothing_to_ship(pair):
    src, _ = pair
    src.execute("BEGIN IMMEDIATE")
    src.execute("INSERT INTO meta VALUES ('a', 'b')")
    src.execute("ROLLBACK")
    assert not changeset.pending(src) and changeset.collect(src) == []


def test_forget_starts_the_next_changeset_empty(pair):
    src, _ = pair
    transaction(src, ("INSERT INTO meta VALUES ('a', 'b')", ()))
    assert changeset.pending(src)
    changeset.forget(src)
    assert not changeset.pending(src)


def test_collect_refuses_across_a_schema_change_until_the_image_went(pair):
    # The receivers' tables lack the new column: a changeset with it was refused by every node
    # (a cluster made by an older Blockfold, given vms.base at a writable open).
    src, dst = pair
    transaction(src, ("INSERT INTO vms VALUES (?, ?, ?, ?)", ("a", 1, 1, None)))
    src.execute("ALTER TABLE vms ADD COLUMN base INTEGER")
    with pytest.raises(ChangesetError, match="schema changed"):
        changeset.collect(src)
    image = src.serialize()
    dst.deserialize(image)                  # what the whole image gives the receivers
    changeset.rebase(src, changeset.image_schema_version(image))
    transaction(src, ("UPDATE vms SET base = 7 WHERE name = 'a'", ()))
    ship(src, dst)
    assert dst.execute("SELECT name, base FROM vms").fetchall() == [("a", 7)]


def test_blobs_travel_as_raw_bytes_after_the_json(pair):
    src, _ = pair
    transaction(src, ("INSERT INTO bmap VALUES (1, 0, ?)", (b"abc",)),
                ("INSERT INTO bmap VALUES (1, 1, ?)", (b"defg",)))
    changes, blobs = changeset.encode(changeset.collect(src))
    assert blobs in (b"abcdefg", b"defgabc")
    refs = [v for c in changes for r in c["upsert"] for v in r if isinstance(v, dict)]
    assert sorted(blobs[r["$b"][0]:sum(r["$b"])] for r in refs) == [b"abc", b"defg"]


GOOD = {"table": "bmap", "cols": ["layer", "page", "entries"], "pk": ["layer", "page"],
        "upsert": [[1, 0, {"$b": [0, 4]}]], "delete": []}


@pytest.mark.parametrize("ref", [[0, 5], [1, 4], [-1, 2], [2, -1], [10, 0], [0], [0, 1, 2],
                                 ["0", 4], [0.0, 4], [True, 3], None, "0,4"])
def test_a_blob_reference_outside_the_payload_or_malformed_is_refused(ref):
    bad = dict(GOOD, upsert=[[1, 0, {"$b": ref}]])
    with pytest.raises(ChangesetError):
        changeset.decode([bad], b"\1\2\3\4")


def test_a_blob_reference_inside_the_payload_is_cut_out():
    assert changeset.decode([GOOD], b"\1\2\3\4xx")[0]["upsert"] == [[1, 0, b"\1\2\3\4"]]


@pytest.mark.parametrize("changes", [
    None, {}, "x", [None], [[]], [{}],
    [dict(GOOD, table=None)], [dict(GOOD, cols="layer")], [dict(GOOD, cols=[])],
    [dict(GOOD, cols=["layer", "layer", "entries"])], [dict(GOOD, pk=[1])],
    [dict(GOOD, upsert=None)], [dict(GOOD, upsert=[[1, 0]])], [dict(GOOD, upsert=[1])],
    [dict(GOOD, delete=[[1]])], [dict(GOOD, delete=None)],
    [dict(GOOD, upsert=[[1, [0], b""]])], [dict(GOOD, upsert=[[1, {"x": 1}, b""]])],
    [dict(GOOD, upsert=[[1, 1 << 64, b""]])],
])
def test_a_malformed_changeset_is_refused(changes):
    with pytest.raises(ChangesetError):
        changeset.decode(changes, b"\1\2\3\4")


@pytest.mark.parametrize("change, message", [
    (dict(GOOD, table="nope"), "unknown table"),
    (dict(GOOD, cols=["layer", "page", "nope"]), "columns do not match"),
    (dict(GOOD, pk=["layer"], delete=[]), "columns do not match"),
    (dict(GOOD, pk=["page", "layer"]), "columns do not match"),
    ({"table": "vms", "cols": ["name", "size"], "pk": ["name"], "upsert": [["x", None]],
      "delete": []}, "does not fit"),
])
def test_changes_that_do_not_fit_the_catalog_are_refused_and_roll_back(change, message):
    dst = catalog()
    dst.execute("INSERT INTO bmap VALUES (9, 9, x'00')")
    before = rows(dst)
    decoded = changeset.decode([{"table": "meta", "cols": ["key", "value"], "pk": ["key"],
                                 "upsert": [["k", "v"]], "delete": []}, change], b"\1\2\3\4")
    dst.execute("BEGIN IMMEDIATE")
    with pytest.raises(ChangesetError, match=message):
        changeset.apply(dst, decoded)
    dst.execute("ROLLBACK")
    assert rows(dst) == before
