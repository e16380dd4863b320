"""The layer graph alone: edits as values, applied in one place."""

from __future__ import annotations

from collections import Counter

import pytest

from engine.errors import BadNameError, RefusedError, VMExistsError, VMNotFoundError
from engine.layergraph import VM, LayerGraph, Merge, Relinked


def graph(**tops) -> LayerGraph:
    parents = dict.fromkeys(tops.values())
    vms = {name: VM(name, 4096, top, 0.0, None) for name, top in tops.items()}
    return LayerGraph(vms, parents, max(parents, default=0) + 1)


def test_planning_changes_nothing_until_applied():
    g = graph(a=1)
    edit = g.plan_clone("a", ["b"], source_top_empty=False)
    assert g.names() == ["a"] and g.vm("a").top == 1
    g.apply(edit)
    assert g.names() == ["a", "b"]
    assert g.parent(g.vm("a").top) == 1 and g.parent(g.vm("b").top) == 1
    assert not g.is_top(1) and g.children(1) == {g.vm("a").top, g.vm("b").top}


def test_cloning_an_unchanged_clone_freezes_nothing_new():
    g = graph(a=1)
    g.apply(g.plan_clone("a", ["b"], source_top_empty=False))
    layers = len(g.layers())
    g.apply(g.plan_clone("a", ["c"], source_top_empty=True))
    assert len(g.layers()) == layers + 1          # only c's top
    assert g.parent(g.vm("c").top) == 1


def test_delete_collects_upwards_and_merges_a_single_child():
    g = graph(a=1)
    g.apply(g.plan_clone("a", ["b", "c"], source_top_empty=False))
    edit, merges = g.plan_delete("b")
    assert edit.dropped == [g.vm("b").top] and merges == []
    g.apply(edit)
    edit, merges = g.plan_delete("c")
    top_a = g.vm("a").top
    assert [(m.layer, m.child, m.parent) for m in merges] == [(1, top_a, None)]
    assert edit.dropped == [g.vm("c").top, 1] and edit.reparented == {top_a: None}
    g.apply(edit)
    assert g.chain(g.vm("a").top) == [top_a] and g.names() == ["a"]


class CountedLooks(dict):
    """A graph's layer -> children map that counts, per layer, how often its children are
    looked up."""

    def __init__(self, *args):
        super().__init__(*args)
        self.looks: Counter[int] = Counter()

    def get(self, layer, default=None):
        self.looks[layer] += 1
        return super().get(layer, default)


@pytest.mark.parametrize("plan, layers_after", [
    # The golden goes: every clone's base loses its pin, and stays (1000 children); b's top.
    (lambda g, clones: g.plan_delete("a"), 1 + 1 + 1000),
    # Every clone moves onto b: each top goes and each base loses its pin, so a's old base
    # merges into a's top; b's top is frozen under a new one; 1000 new tops.
    (lambda g, clones: g.plan_rebase(clones, "b", False, keep_writes=False), 1 + 2 + 1000),
])
def test_collection_looks_at_each_layer_once_however_many_clones_name_it(plan, layers_after):
    """A golden's 1000 clones name its base 1000 times (each lost a pin, or its top went): the
    collection looks at its children once, not once per clone (which made it quadratic)."""
    g = graph(a=1, b=2)
    clones = [f"d-{i}" for i in range(1000)]
    g.apply(g.plan_clone("a", clones, source_top_empty=False))
    g._children = CountedLooks(g._children)
    edit, _ = plan(g, clones)
    assert g._children.looks[1] == 1 and max(g._children.looks.values()) == 1
    g.apply(edit)
    assert len(g.layers()) == layers_after


def test_names_are_checked_and_reserved_by_imports():
    g = graph(a=1)
    with pytest.raises(VMExistsError):
        g.plan_create("a", 4096)
    with pytest.raises(BadNameError):
        g.plan_create("-x", 4096)
    with pytest.raises(VMNotFoundError):
        g.plan_delete("nope")
    layer = g.begin_import("imp")
    with pytest.raises(VMExistsError):
        g.plan_create("imp", 4096)
    g.apply(g.plan_register(layer, 8192))
    g.end_import(layer)
    assert g.vm("imp").top == layer and g.vm("imp").size == 8192 and g.is_top(layer)


def test_readers_follow_edits():
    g = graph(a=1)

    def readers(layer):
        return sorted(vm.name for vm in g.vms() if layer in g.chain(vm.top))

    g.apply(g.plan_clone("a", ["b"], source_top_empty=False))
    assert readers(1) == ["a", "b"]
    edit, _ = g.plan_delete("b")
    g.apply(edit)
    assert readers(g.vm("a").top) == ["a"]


def test_a_golden_delete_takes_its_clones_rows_built_ahead_unless_an_edit_landed_since():
    """The clones' new rows are built before the pool's lock is taken: used as they are while
    the graph is unchanged, built again when an edit landed meanwhile (a clone made since would
    keep its golden otherwise)."""
    g = graph(a=1, b=2)
    g.apply(g.plan_clone("a", ["d-1", "d-2"], source_top_empty=False))
    g.apply(g.plan_snapshot("d-1", "s", top_empty=True))
    ahead = Relinked.of("a", None, *g.cloned_from("a"))
    edit, _ = g.plan_delete("a", ahead)
    assert edit.relinked is ahead and sorted(ahead.vms) == ["d-1", "d-2"]
    g.apply(g.plan_clone("a", ["late"], source_top_empty=True))
    edit, _ = g.plan_delete("a", ahead)
    assert edit.relinked is not ahead and sorted(edit.relinked.vms) == ["d-1", "d-2", "late"]
    g.apply(edit)
    assert all(vm.origin is None and vm.base is None and vm.base_size is None
               for vm in g.vms() if vm.name != "b")
    assert [(s.origin, s.base, s.base_size) for s in g.snaps()] == [(None, None, None)]
    assert g.pinned() == {g.snap("d-1", "s").layer}


def test_a_golden_rename_takes_its_clones_rows_built_ahead_unless_stale():
    """As a delete's: the rows built for this rename while the graph is unchanged, built again
    for another new name or once an edit landed; the clones keep their bases and pins."""
    g = graph(a=1, b=2)
    g.apply(g.plan_clone("a", ["d-1", "d-2"], source_top_empty=False))
    g.apply(g.plan_snapshot("d-1", "s", top_empty=True))
    ahead = Relinked.of("a", "z", *g.cloned_from("a"))
    assert g.plan_rename("a", "z", ahead).relinked is ahead
    assert g.plan_rename("a", "y", ahead).relinked.origin == "y"
    g.apply(g.plan_clone("a", ["late"], source_top_empty=True))
    edit = g.plan_rename("a", "z", ahead)
    assert edit.relinked is not ahead and sorted(edit.relinked.vms) == ["d-1", "d-2", "late"]
    bases, pinned = {vm.name: vm.base for vm in g.vms()}, g.pinned()
    g.apply(edit)
    assert g.clones_of("z") == ["d-1", "d-2", "late"] and g.clones_of("a") == []
    assert {vm.name: vm.base for vm in g.vms()} == {("z" if n == "a" else n): b
                                                    for n, b in bases.items()}
    assert [(s.vm, s.origin, s.base) for s in g.snaps()] == [("d-1", "z", bases["d-1"])]
    assert g.pinned() == pinned


@pytest.mark.parametrize("parents, tops, said", [
    ({1: None, 2: 1, 3: 1}, {"a": 2, "b": 3}, []),
    ({2: 1, 3: 1}, {"a": 2, "b": 3}, ["layers 2 and 3 have parent 1, which does not exist"]),
    ({1: 3, 2: 1, 3: 1}, {"a": 2}, ["layers 1 and 3 form a cycle of parents, 1 -> 3 -> 1"]),
    ({1: 5, 5: 6, 6: 1, 2: 6}, {"a": 2},
     ["layers 1, 5 and 6 form a cycle of parents, 1 -> 5 -> 6 -> 1"]),
    ({1: None, 3: 3}, {"a": 3}, ["layer 3 is its own parent"]),
    ({1: None}, {"a": 9}, ["VM a has top layer 9, which does not exist"]),
])
def test_rows_that_make_no_graph_are_named_as_the_rows_that_are_wrong(parents, tops, said):
    vms = {name: VM(name, 4096, top, 0.0, None) for name, top in tops.items()}
    assert LayerGraph(vms, parents, 10).unsound() == said


def test_a_top_shared_or_read_through_is_named():
    g = graph(a=1)
    g.apply(g.plan_clone("a", ["b"], source_top_empty=False))
    assert g.shared_tops() == []
    vms = {"a": VM("a", 4096, 2, 0.0, None), "b": VM("b", 4096, 2, 0.0, "a", 1),
           "c": VM("c", 4096, 1, 0.0, None)}
    shared = LayerGraph(vms, {1: None, 2: 1, 3: 1}, 4).shared_tops()
    assert [m for m, _ in shared] == [
        "VM c's top layer 1 is the parent of layers 2 and 3: a write to c changes what they"
        " show",
        "VMs a and b share top layer 2: a write to one changes the other"]


def test_a_held_layer_never_merges_and_what_would_drop_it_is_refused():
    g = graph(golden=1)
    g.apply(g.plan_clone("golden", ["desk"], source_top_empty=False))
    edit, frozen = g.plan_freeze("desk", top_empty=False)
    g.apply(edit)
    g.hold("desk@export-1", frozen, "desk")
    for plan in (lambda: g.plan_delete("desk"), lambda: g.plan_refresh("desk"),
                 lambda: g.plan_rebase(["desk"], "golden", True, keep_writes=False),
                 lambda: g.plan_rebase(["desk"], "golden", True, keep_writes=True)):
        with pytest.raises(RefusedError, match="VM desk is being exported"):
            plan()
    assert g.plan_unfreeze(frozen)[0].dropped == []         # held: no merge
    g.release("desk@export-1")
    edit, merges = g.plan_unfreeze(frozen)
    assert merges == [] and edit.folded == {g.vm("desk").top: frozen}
    g.apply(edit)
    assert g.chain(g.vm("desk").top) == [frozen, g.vm("desk").base]


def test_an_export_ends_by_folding_the_top_into_its_layer_unless_another_reads_it():
    # Nothing else reads the frozen layer: the VM's top (what it wrote during the export)
    # folds into it, and it is the VM's top again, writable; the top alone goes.
    g = graph(desk=1)
    edit, frozen = g.plan_freeze("desk", top_empty=False)
    g.apply(edit)
    top = g.vm("desk").top
    g.hold("desk@export-1", frozen, "desk")
    g.hold("desk@export-2", frozen, "desk")     # a second export began before it was written
    g.release("desk@export-1")
    assert g.plan_unfreeze(frozen)[0].dropped == []         # still read by the second
    g.release("desk@export-2")
    edit, merges = g.plan_unfreeze(frozen)
    assert (merges, edit.folded, edit.dropped) == ([], {top: frozen}, [top])
    assert [(vm.name, vm.top) for vm in edit.put_vms] == [("desk", frozen)]
    assert edit.new_layers == {} and edit.reparented == {}
    g.apply(edit)
    assert g.layers() == [frozen] and g.is_top(frozen) and g.vm("desk").top == frozen
    # A snapshot taken during the export froze the top over the layer: the layer merges into
    # the snapshot's, as before (the snapshot's layer keeps its id and its pin).
    edit, frozen = g.plan_freeze("desk", top_empty=False)
    g.apply(edit)
    g.hold("desk@export-3", frozen, "desk")
    g.apply(g.plan_snapshot("desk", "s1", top_empty=False))
    snap = g.snap("desk", "s1").layer
    g.release("desk@export-3")
    edit, merges = g.plan_unfreeze(frozen)
    assert merges == [Merge(frozen, snap, None)] and edit.folded == {}
    g.apply(edit)
    assert g.chain(g.vm("desk").top) == [g.vm("desk").top, snap]
    # A clone made during the export reads the layer too: it stays, nothing folds.
    edit, frozen = g.plan_freeze("desk", top_empty=False)
    g.apply(edit)
    g.hold("desk@export-4", frozen, "desk")
    g.apply(g.plan_clone("desk", ["copy"], source_top_empty=True))
    g.release("desk@export-4")
    edit, merges = g.plan_unfreeze(frozen)
    assert (edit.dropped, edit.folded, merges) == ([], {}, [])


def test_the_golden_states_size_goes_with_clone_rebase_snapshot_and_rename():
    """The size a refresh brings back: the golden's when cloned or rebased onto, kept by a
    snapshot (for a rollback) and by a golden's rename; a rebase names the VMs it shrinks."""
    g = graph(a=1, big=2)
    g.apply(g.plan_resize("big", 8192))
    g.apply(g.plan_clone("a", ["d"], source_top_empty=False))
    g.apply(g.plan_resize("d", 1024))
    g.apply(g.plan_snapshot("d", "small", top_empty=True))
    g.apply(g.plan_rename("a", "z"))
    assert (g.vm("d").base_size, g.snap("d", "small").base_size) == (4096, 4096)
    g.apply(g.plan_refresh("d")[0])
    assert g.vm("d").size == 4096
    g.apply(g.plan_rebase(["d"], "big", golden_top_empty=True, keep_writes=False)[0])
    assert (g.vm("d").size, g.vm("d").base_size) == (8192, 8192)
    assert g.check_rebase(["d"], "z", keep_writes=True) == [g.vm("d")]
    g.apply(g.plan_rollback("d", "small")[0])
    assert (g.vm("d").size, g.vm("d").base_size, g.vm("d").origin) == (1024, 4096, "z")
    assert g.check_rebase(["d"], "big", keep_writes=True) == []
