"""A commit refused inside its transaction is undone where it landed by its inverse, not by the
whole catalog: with a big catalog, every refused flush during a partition shipped the whole
image to the minority's nodes (engine/cluster/catalog.py, ReplicatedCatalog._undo)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from engine.api import BlockfoldError

from .conftest import image


def _content(conn: sqlite3.Connection) -> dict[str, list]:
    """Every catalog table's rows, sorted (the node's own `replica` table aside)."""
    names = [n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'"
                                        " AND name NOT LIKE 'sqlite_%' AND name != 'replica'")]
    return {n: sorted(conn.execute(f'SELECT * FROM "{n}"').fetchall(), key=repr)
            for n in sorted(names)}


def test_a_refused_change_is_undone_with_bytes_that_grow_with_the_change(make_cluster,
                                                                        tmp_path):
    cluster = make_cluster(nodes=3, replicas=2)
    image(tmp_path / "a.raw", 64, seed=41)
    admin = cluster.open()
    try:
        admin.import_image("a", str(tmp_path / "a.raw"))
        admin.clone("a", "desk", count=1000)             # a catalog of many VMs
        catalog = admin.pool.catalog
        size = len(catalog.conn.serialize())
        assert size > 200 << 10
        for name in ("node2", "node3"):
            cluster.kill(name)
        before = cluster.received("node1")
        with pytest.raises(BlockfoldError, match="reached 1 of 3 nodes; it needs 2"):
            admin.clone("a", "one-more")
        sent = cluster.received("node1") - before
        # The refused change and its inverse, a few KiB with SSH's framing and the
        # heartbeats meanwhile; the whole image was `size`.
        print(f"undo: {sent} bytes received by node1; the catalog image: {size} bytes")
        assert sent < 64 << 10, (sent, size)
        # With no commit under way: the healer records events (node3 down, say) in commits of
        # its own, and the coordinator's catalog shows such a commit's rows before it is
        # refused, rolled back and undone on node1.
        with admin.pool.still():
            db = sqlite3.connect(Path(cluster.config.node("node1").data) / "catalog.db")
            try:
                assert _content(db) == _content(catalog.conn)
                epoch, version, line = db.execute(
                    "SELECT epoch, version, lineage FROM replica").fetchone()
            finally:
                db.close()
            assert (epoch, version) == catalog.stamp
            assert json.loads(line) == catalog.lineage
        assert "one-more" not in admin.vm_names()
    finally:
        with pytest.raises(BlockfoldError, match="reached 1 of 3 nodes"):
            admin.close()       # its "clean" mark, outside a transaction: refused too
