"""The Admin interface over an embedded pool: typed results, one figure pass per snapshot, None
for what is not known, and the rebuild phases it promises."""

from __future__ import annotations

import ast
import dataclasses
import os
import threading
from pathlib import Path

import pytest

from engine import api, results
from engine.api import LocalAdmin

BS = 4096


@pytest.fixture
def admin(pool_dir):
    with LocalAdmin.open(pool_dir, actor="test") as admin:
        admin.pool.create_vm("a", 64 * BS)
        admin.write("a", 0, bytes(range(256)) * 16 * 8)      # 8 blocks, one distinct
        admin.write("a", 8 * BS, b"x" * BS)
        admin.clone("a", "b")
        yield admin


def test_every_result_field_says_what_it_is():
    """Each field of engine.results is documented where it is declared (meaning and unit)."""
    tree = ast.parse(Path(results.__file__).read_text())
    undocumented = []
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        body = cls.body
        for i, node in enumerate(body):
            if isinstance(node, ast.AnnAssign):
                following = body[i + 1] if i + 1 < len(body) else None
                if not (isinstance(following, ast.Expr)
                        and isinstance(following.value, ast.Constant)
                        and isinstance(following.value.value, str)):
                    undocumented.append(f"{cls.name}.{node.target.id}")
    assert undocumented == []


def test_results_are_typed_and_their_json_is_the_fields(admin):
    s = admin.stats()
    assert isinstance(s, api.PoolStats) and s.state == "ready"
    assert (s.unique_blocks, s.replicas, s.under_replicated_blocks) == (2, 1, 0)
    assert [v.name for v in s.vms] == ["a", "b"] and s.vms[1].origin == "a"
    assert [n.name for n in s.nodes] == ["local"] and s.nodes[0].latency_ms is None
    data = api.plain(s)
    assert list(data) == [f.name for f in dataclasses.fields(api.PoolStats)]
    assert data["vms"][0]["name"] == "a" and data["nodes"][0]["live_blocks"] == 2
    figures = admin.last_rebuild()
    assert figures.missing_blocks is None and figures.free_slots is not None
    page = admin.blocks(min_refs=2)
    assert [(r.readers, r.refcount, r.vms, r.nodes) for r in page.rows] == [
        (2, 8, ["a", "b"], None), (2, 1, ["a", "b"], None)]
    assert s.readers_histogram == {"2": 2} and s.refcount_histogram == {"1": 1, "5-8": 1}
    assert admin.events(1)[0].kind == "clone"
    assert admin.fsck() == []


def test_sharing_counts_the_vms_that_read_a_block_not_its_references(pool_dir):
    """A golden's block read by 51 clones through one frozen layer: 52 VMs, refcount 1; the
    filters and the histogram count VMs; a clone that writes over it no longer reads it."""
    with LocalAdmin.open(pool_dir, actor="test") as admin:
        admin.pool.create_vm("golden", 4 * BS)
        admin.write("golden", 0, b"g" * BS + b"h" * BS)
        admin.clone("golden", "desk", count=51)
        admin.write("desk-7", 0, b"mine" * (BS // 4))
        admin.write("desk-9", 2 * BS, b"h" * BS)       # desk-9 reads h twice: still one VM
        rows = admin.blocks().rows
        by_count = sorted((r.readers, r.refcount, len(r.vms)) for r in rows)
        assert by_count == [(1, 1, 1), (51, 1, 51), (52, 2, 52)]
        assert [r.readers for r in admin.blocks(min_refs=52).rows] == [52]
        assert admin.blocks(min_refs=2, max_refs=51).total == 1
        assert admin.blocks(max_refs=1).rows[0].vms == ["desk-7"]
        assert admin.stats().readers_histogram == {"1": 1, "33-64": 2}


def test_pages_of_the_block_table_cover_every_live_block_once(pool_dir):
    """The unfiltered page (a slice the core cuts) and a filtered one agree, at every offset."""
    with LocalAdmin.open(pool_dir, actor="test") as admin:
        admin.pool.create_vm("a", 32 * BS)
        admin.write("a", 0, b"".join(bytes([i]) * BS for i in range(1, 24)))
        admin.write("a", 5 * BS, b"\0" * BS)       # one block freed: a gap in the slots
        seen = []
        for offset in range(0, 30, 5):
            page = admin.blocks(offset=offset, limit=5)
            assert page.total == 22
            seen += [r.pbn for r in page.rows]
            assert [r.pbn for r in admin.blocks(vm="a", offset=offset, limit=5).rows] == \
                [r.pbn for r in page.rows]
        assert seen == sorted(admin.pool.blocks.live().tolist()) and len(seen) == 22


def test_capacity_is_room_for_new_blocks(admin, pool_dir):
    """An embedded pool's capacity: its free slots plus what its slot files may still grow by on
    their filesystem, less the slop growth never takes (1/32, 1 MiB to 1 GiB); usable is the
    same (one copy)."""
    s = admin.stats()
    st = os.statvfs(pool_dir)
    slop = min(max(st.f_blocks * st.f_frsize // 32, 1 << 20), 1 << 30)
    grow = max(st.f_bavail * st.f_frsize - slop, 0) // (BS + 16) * BS
    assert s.free_slots * BS <= s.capacity_bytes
    assert abs(s.capacity_bytes - s.free_slots * BS - grow) < 256 << 20
    assert s.usable_bytes == s.capacity_bytes and s.nodes[0].capacity_bytes == s.capacity_bytes


def test_one_snapshot_computes_the_figures_once(admin, monkeypatch):
    """A console poll costs one pass over the pool, not one for stats, VMs and nodes each."""
    passes = []
    stats = admin.pool.stats
    monkeypatch.setattr(admin.pool, "stats", lambda: passes.append(1) or stats())
    snap = admin.snapshot(events=5)
    assert len(passes) == 1
    assert [v.name for v in snap.vms] == ["a", "b"] and snap.nodes[0].name == "local"
    assert snap.events[0].kind == "clone" and len(snap.events) <= 5


def test_the_rebuild_reports_the_phases_the_admin_names(admin):
    phases = []
    admin.rebuild(full=True, progress=lambda p: phases.append(p.phase))
    assert tuple(dict.fromkeys(phases)) == admin.rebuild_phases


def test_figures_not_known_during_a_rebuild_are_none_not_zero(admin):
    """While the RAM metadata is rebuilt, the block figures are unknown: None, never a 0 that a
    console would draw as an empty pool."""
    inside, go_on = threading.Event(), threading.Event()

    def progress(p):
        inside.set()
        go_on.wait(10)

    worker = threading.Thread(target=admin.rebuild, kwargs={"progress": progress})
    worker.start()
    try:
        assert inside.wait(10)
        s = admin.stats()
        assert s.state == "rebuilding"
        assert (s.unique_blocks, s.physical_bytes, s.dedup_ratio, s.free_slots) == (None,) * 4
        assert s.logical_bytes == 9 * BS * 2             # the tables are read as ever
        assert all(v.unique_blocks is None and v.shared_blocks is None for v in s.vms)
        assert s.nodes[0].blocks is None
    finally:
        go_on.set()
        worker.join(10)
    assert admin.stats().unique_blocks == 2
