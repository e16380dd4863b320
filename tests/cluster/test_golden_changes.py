"""A golden image's rename and delete on a cluster: the clones' rows, rewritten with one
statement a table in the coordinator's catalog (engine.catalog.Catalog._relink), reach every
node's replica as rows of the changeset, and a cluster opened again (its catalog from the nodes'
replicas) reads every clone as before, following the golden's new name or none."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from .conftest import image

BS = 4096
NODES = ("node1", "node2", "node3")
CLONES = [f"d-{i}" for i in range(1, 101)]


def _rows(conn: sqlite3.Connection) -> dict[str, list]:
    """The rows a golden's change rewrites: VMs, snapshots, layers, sorted."""
    return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr)
            for t in ("vms", "snapshots", "layers")}


def _same_on_every_node(cluster, admin) -> None:
    with admin.pool.still():
        want = _rows(admin.pool.catalog.conn)
        for name in NODES:
            db = sqlite3.connect(Path(cluster.config.node(name).data) / "catalog.db")
            try:
                assert _rows(db) == want, name
            finally:
                db.close()


def test_a_golden_rename_and_delete_reach_every_node(make_cluster, tmp_path):
    cluster = make_cluster(nodes=3, replicas=2)
    data = image(tmp_path / "g.raw", 1, seed=47)
    own = bytes([9]) * BS
    admin = cluster.open()
    try:
        admin.import_image("g", str(tmp_path / "g.raw"))
        admin.clone("g", "d", count=len(CLONES))
        admin.write("d-2", 0, own)
        admin.take_snapshot("d-2", "s")
        admin.rename("g", "h")
        assert admin.clones_of("h") == sorted(CLONES) and "g" not in admin.vm_names()
        _same_on_every_node(cluster, admin)
    finally:
        admin.close()

    admin = cluster.open()
    try:
        assert admin.clones_of("h") == sorted(CLONES)
        assert [(s.name, s.origin) for s in admin.snapshots("d-2")] == [("s", "h")]
        assert admin.read("d-2", 0, len(data)) == own + data[BS:]
        assert admin.read("d-77", 0, len(data)) == data
        admin.delete("h")
        assert admin.vm_names() == sorted(CLONES)
        _same_on_every_node(cluster, admin)
    finally:
        admin.close()

    admin = cluster.open()
    try:
        assert admin.vm_names() == sorted(CLONES)
        assert [(s.name, s.origin) for s in admin.snapshots("d-2")] == [("s", None)]
        assert admin.read("d-2", 0, len(data)) == own + data[BS:]
        assert admin.read("d-77", 0, len(data)) == data
    finally:
        admin.close()
