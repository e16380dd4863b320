"""A cluster whose catalog replicas were made before the newer tables and columns (`snapshots`,
`vms.base`, `vms.base_size`): the writable open that adds them ships the whole image, since a
changeset cannot carry a schema change; every commit after it was refused by every node
("changeset columns do not match table 'vms'")."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from engine import api
from engine.node.store import CATALOG_FILE

from .conftest import image


def _make_old(cluster) -> None:
    """Every node's replica as an older Blockfold left it: no `snapshots`, no `vms.base` nor
    `vms.base_size`."""
    for node in cluster.config.nodes:
        cluster.kill(node.name)
        db = sqlite3.connect(Path(node.data) / CATALOG_FILE)
        db.execute("DROP TABLE snapshots")
        db.execute("ALTER TABLE vms DROP COLUMN base")
        db.execute("ALTER TABLE vms DROP COLUMN base_size")
        db.commit()
        db.close()
        api.restore_node(cluster.path, node.name)


def _schema(cluster) -> list[tuple[bool, bool, bool]]:
    """Per node: whether its replica has `snapshots`, `vms.base` and `vms.base_size`."""
    out = []
    for node in cluster.config.nodes:
        db = sqlite3.connect(f"file:{Path(node.data) / CATALOG_FILE}?mode=ro", uri=True)
        tables = {n for (n,) in db.execute("SELECT name FROM sqlite_master")}
        columns = {row[1] for row in db.execute("PRAGMA table_info(vms)")}
        out.append(("snapshots" in tables, "base" in columns, "base_size" in columns))
        db.close()
    return out


def test_commits_after_the_schema_upgrade_reach_the_nodes(make_cluster, tmp_path):
    cluster = make_cluster(nodes=3, replicas=2)
    data = image(tmp_path / "a.raw", 1, seed=61)
    with cluster.open() as admin:
        admin.import_image("a", str(tmp_path / "a.raw"))
    _make_old(cluster)
    assert _schema(cluster) == [(False, False, False)] * 3
    with cluster.open() as admin:
        admin.clone("a", "b")
        admin.take_snapshot("a", "first")
        admin.write("b", 4096, b"clone's own")
        admin.clone("a", "c")
        admin.resize("c", 4096, shrink=True)
        admin.refresh("c")         # back at a's size, which c's row keeps
    assert _schema(cluster) == [(True, True, True)] * 3
    with cluster.open(readonly=True) as admin:
        assert sorted(admin.vm_names()) == ["a", "b", "c"]
        assert [s.name for s in admin.snapshots("a")] == ["first"]
        assert admin.read("a", 0, len(data)) == data
        assert admin.read("b", 0, 4096) == data[:4096]
        assert admin.read("b", 4096, 11) == b"clone's own"
        assert admin.read("c", 0, len(data)) == data
