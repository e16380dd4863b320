"""The coordinator's catalog image taken inside a transaction holds only what was committed:
what a node behind is given before the change, and what the inverse that undoes a refused
change where it landed is read from (engine/cluster/catalog.py). No nodes needed."""

from __future__ import annotations

import sqlite3

import pytest

from engine.cluster.catalog import ReplicatedCatalog


def _vms(image: bytes) -> list[str]:
    db = sqlite3.connect(":memory:")
    db.deserialize(image)
    return [name for (name,) in db.execute("SELECT name FROM vms ORDER BY name")]


def _add_vm(catalog: ReplicatedCatalog, name: str) -> None:
    catalog.conn.execute("INSERT INTO vms (name, size, top, created, origin)"
                         " VALUES (?, 0, 0, 0, NULL)", (name,))


@pytest.mark.parametrize("loaded", [False, True], ids=["new", "loaded"])
@pytest.mark.parametrize("pages", [1, 5000], ids=["small", "spilling"])
def test_an_image_inside_a_transaction_is_the_last_commit(loaded, pages):
    # A new cluster's catalog (a plain :memory: database) gave the uncommitted rows; a
    # transaction bigger than sqlite's page cache spilled pages into a loaded (memdb) one.
    catalog = ReplicatedCatalog(None, 2, None, 0, 4096)
    catalog.begin()
    _add_vm(catalog, "committed")
    catalog.conn.execute("CREATE TABLE filler (data BLOB)")
    catalog.conn.execute("COMMIT")
    if loaded:
        catalog = ReplicatedCatalog(None, 2, catalog.conn.serialize(), 1, 4096)
    committed = catalog.conn.serialize()
    catalog.begin()
    _add_vm(catalog, "pending")
    catalog.conn.executemany("INSERT INTO filler VALUES (?)",
                             ((bytes(4000),) for _ in range(pages)))
    image = catalog.conn.serialize()
    catalog.rollback()
    assert _vms(image) == ["committed"]
    assert image == committed
