"""Block tables alone: chains resolve at any depth, zeros cost nothing, commits see every change."""

from __future__ import annotations

import numpy as np
import pytest

from engine.blocktable import INHERIT, PAGE_ENTRIES, ZERO, BlockTables
from engine.catalog import Catalog
from engine.layergraph import VM, LayerEdit, LayerGraph, Merge


@pytest.fixture
def catalog():
    c = Catalog(None)
    c.create_schema(4096)
    yield c
    c.close()


def graph_of(parents: dict, tops: dict) -> LayerGraph:
    vms = {name: VM(name, 1 << 30, top, 0.0, None) for name, top in tops.items()}
    return LayerGraph(vms, parents, max(parents) + 1)


def entries(*values) -> np.ndarray:
    return np.array(values, dtype=np.uint64)


def test_a_chain_resolves_top_down_and_zero_hides_what_is_beneath(catalog):
    # 1 <- 2 <- 3 (top of "a"); 1 <- 4 (top of "b")
    graph = graph_of({1: None, 2: 1, 3: 2, 4: 1}, {"a": 3, "b": 4})
    tables = BlockTables(catalog.conn, graph)
    tables.set_entries(1, 0, entries(10, 11, 12, 13))
    tables.set_entries(2, 1, entries(21, INHERIT, ZERO))
    tables.set_entries(3, 2, entries(32))
    assert tables.lookup_range(3, 0, 5).tolist() == [10, 21, 32, 0, 0]
    assert tables.lookup_range(4, 0, 5).tolist() == [10, 11, 12, 13, 0]
    # Two pages apart: the second page has nothing anywhere.
    assert tables.lookup_range(3, PAGE_ENTRIES - 1, 2).tolist() == [0, 0]


def test_zeroing_what_already_reads_as_zeros_adds_no_page(catalog):
    graph = graph_of({1: None, 2: 1}, {"a": 2})
    tables = BlockTables(catalog.conn, graph)
    tables.set_entries(1, 0, entries(10, 11))
    assert tables.zero_fill(2, 0, 4).tolist() == [ZERO, ZERO, 0, 0]
    assert tables.zero_fill(2, PAGE_ENTRIES, 4).tolist() == [0, 0, 0, 0]
    assert tables.set_entries(2, PAGE_ENTRIES, tables.zero_fill(2, PAGE_ENTRIES, 4)).size == 0
    assert tables.page(2, 1) is None
    assert tables.zero_fill(1, 0, 2).tolist() == [0, 0]      # a root: INHERIT means zeros


def test_a_commit_snapshot_sees_every_change_and_only_clean_pages_are_dropped(catalog):
    graph = graph_of({1: None}, {"a": 1})
    tables = BlockTables(catalog.conn, graph)
    tables.set_entries(1, 0, entries(5))
    snap = tables.snapshot()
    assert [(layer, p) for layer, p, _ in snap.pages] == [(1, 0)]
    tables.set_entries(1, 1, entries(6))        # changed again after the snapshot
    tables.end(snap)
    assert tables.dirty_count() == 1            # still dirty: the later change is not durable
    tables.set_entries(1, 0, entries(INHERIT, INHERIT))
    snap = tables.snapshot()
    assert snap.pages == [(1, 0, None)]         # nothing but INHERIT: the row goes


def test_provisional_layers_stay_out_of_snapshots(catalog):
    graph = graph_of({1: None}, {"a": 1})
    layer = graph.begin_import("b")
    tables = BlockTables(catalog.conn, graph)
    tables.set_entries(layer, 0, entries(9))
    assert tables.snapshot(exclude=graph.provisional).pages == []
    assert tables.forget_layer(layer).tolist() == [9]


def test_merging_into_the_only_child_keeps_the_child_view(catalog):
    graph = graph_of({1: None, 2: 1}, {"a": 2})
    tables = BlockTables(catalog.conn, graph)
    tables.set_entries(1, 0, entries(10, 11, 12))
    tables.set_entries(2, 0, entries(20, INHERIT, ZERO))
    before = tables.lookup_range(2, 0, 3).tolist()
    pages, shadowed = tables.merged_pages(Merge(1, 2, None), root=True)
    assert sorted(shadowed.tolist()) == [10, 12]
    edit = LayerEdit(dropped=[1], reparented={2: None}, pages=pages)
    graph.apply(edit)
    tables.apply(edit)
    assert tables.lookup_range(2, 0, 3).tolist() == before == [20, 11, 0]
    assert tables.page(2, 0)[:3].tolist() == [20, 11, 0]      # ZERO became INHERIT in a root
