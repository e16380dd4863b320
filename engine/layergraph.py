"""The layer graph: VMs, the layers they read through, and every change to them as a value.

A VM reads through a chain of layers: its own writable *top*, then frozen layers beneath, each
naming its parent. A frozen layer never changes what it shows. An import writes into a
*provisional* top that belongs to no VM until the import registers it.

Changes are values (LevelDB's VersionEdit is the model): a `LayerEdit` says which layers appear,
move or go, which VMs are put or deleted, and which block-table pages the change writes (merges).
The pool logs an edit in the catalog's commit, and only then applies it here and to the native
core (which mirrors the graph, holds the block tables and drops the references the edit ends),
each in one place. An edit that fails to commit therefore changes nothing in RAM.

Everything here is plain bookkeeping over dicts; the core holds the entries themselves.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from .errors import VMExistsError, VMNotFoundError
from .names import check_vm_name


@dataclass(frozen=True)
class VM:
    """A VM: its size in bytes, its top layer, when it was made and what it was cloned from."""
    name: str
    size: int
    top: int
    created: float
    origin: str | None


@dataclass
class LayerEdit:
    """One change to the layer graph, applied whole or not at all.

    new_layers: layer -> parent (None: a root), for layers the edit creates
    reparented: layer -> new parent, for existing layers that move (a merge's child)
    dropped: layers that go, with their block-table pages
    put_vms / deleted_vms: VM rows written or removed
    pages: (layer, page number) -> entries the edit writes (a merge's child pages: 512
           little-endian uint64, as the catalog keeps them); None drops one
    registered: provisional layers that become a VM's top (an import's)
    events: (kind, message) pairs logged with the edit
    """
    new_layers: dict[int, int | None] = field(default_factory=dict)
    reparented: dict[int, int | None] = field(default_factory=dict)
    dropped: list[int] = field(default_factory=list)
    put_vms: list[VM] = field(default_factory=list)
    deleted_vms: list[str] = field(default_factory=list)
    pages: dict[tuple[int, int], bytes | None] = field(default_factory=dict)
    registered: list[int] = field(default_factory=list)
    events: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Merge:
    """A frozen layer folded into its only child, which takes the frozen layer's parent."""
    layer: int
    child: int
    parent: int | None


class LayerGraph:
    def __init__(self, vms: dict[str, VM], parents: dict[int, int | None], next_layer: int):
        self._vms = dict(vms)
        self._parents = dict(parents)
        self._next_layer = next_layer
        self._provisional: dict[int, str] = {}     # import's top layer -> the name it reserves
        self._children: dict[int, set[int]] = {}
        for layer, parent in self._parents.items():
            if parent is not None:
                self._children.setdefault(parent, set()).add(layer)
        self._tops = {vm.top for vm in self._vms.values()}

    # -- queries ------------------------------------------------------------------------------

    def vm(self, name: str) -> VM:
        try:
            return self._vms[name]
        except KeyError:
            raise VMNotFoundError(f"no VM named {name!r}") from None

    def vms(self) -> list[VM]:
        return [self._vms[n] for n in sorted(self._vms)]

    def names(self) -> list[str]:
        return sorted(self._vms)

    def __contains__(self, name: str) -> bool:
        return name in self._vms

    def layers(self) -> list[int]:
        """Every layer, provisional ones included."""
        return list(self._parents)

    def parents_first(self) -> list[int]:
        """Every layer, each after its parent (to mirror the graph elsewhere)."""
        out: list[int] = []
        todo = [layer for layer, parent in self._parents.items() if parent is None]
        while todo:
            layer = todo.pop()
            out.append(layer)
            todo.extend(self._children.get(layer, ()))
        return out

    def parent(self, layer: int) -> int | None:
        return self._parents[layer]

    def has_layer(self, layer: int) -> bool:
        return layer in self._parents

    def is_top(self, layer: int) -> bool:
        """Writable: a VM's top or an import's provisional layer. Every other layer is frozen."""
        return layer in self._tops or layer in self._provisional

    @property
    def provisional(self) -> frozenset[int]:
        return frozenset(self._provisional)

    def children(self, layer: int) -> set[int]:
        return set(self._children.get(layer, ()))

    def chain(self, layer: int) -> list[int]:
        """The layers `layer` reads through, from itself down to its root."""
        out = []
        while layer is not None:
            out.append(layer)
            layer = self._parents[layer]
        return out

    def check_new_name(self, name: str) -> None:
        """Refuses a bad name, and one that a VM or an import under way already has."""
        check_vm_name(name)
        if name in self._vms or name in self._provisional.values():
            raise VMExistsError(f"a VM named {name!r} already exists")

    # -- planning edits -----------------------------------------------------------------------

    def _new_ids(self, count: int) -> list[int]:
        first = self._next_layer
        self._next_layer += count       # ids are never reused, even when an edit fails
        return list(range(first, first + count))

    @property
    def next_layer(self) -> int:
        return self._next_layer

    def plan_create(self, name: str, size: int) -> LayerEdit:
        self.check_new_name(name)
        (layer,) = self._new_ids(1)
        vm = VM(name, size, layer, time.time(), None)
        return LayerEdit(new_layers={layer: None}, put_vms=[vm])

    def begin_import(self, name: str) -> int:
        """A provisional top layer for an import under `name`, which it reserves."""
        self.check_new_name(name)
        (layer,) = self._new_ids(1)
        self._parents[layer] = None
        self._provisional[layer] = name
        return layer

    def end_import(self, layer: int) -> None:
        """Forgets a provisional layer (registered, or abandoned and dropped)."""
        self._provisional.pop(layer, None)
        if layer not in self._tops:
            self._parents.pop(layer, None)

    def plan_register(self, layer: int, size: int, events=()) -> LayerEdit:
        """The edit that makes an import's provisional layer the top of a new VM."""
        name = self._provisional[layer]
        vm = VM(name, size, layer, time.time(), None)
        return LayerEdit(new_layers={layer: None}, put_vms=[vm], registered=[layer],
                         events=list(events))

    def plan_clone(self, source: str, names: list[str], source_top_empty: bool) -> LayerEdit:
        """Freezes the source's top as the shared base (unless it wrote nothing since it was last
        frozen: then its base is shared as it is) and gives every clone an empty top on it."""
        for name in names:
            self.check_new_name(name)
        vm = self.vm(source)
        edit = LayerEdit()
        base = self._parents[vm.top]
        if base is None or not source_top_empty:
            base = vm.top
            (new_top,) = self._new_ids(1)
            edit.new_layers[new_top] = base
            edit.put_vms.append(replace(vm, top=new_top))
        now = time.time()
        for name, layer in zip(names, self._new_ids(len(names))):
            edit.new_layers[layer] = base
            edit.put_vms.append(VM(name, vm.size, layer, now, source))
        return edit

    def plan_delete(self, name: str) -> tuple[LayerEdit, list[Merge]]:
        """Drops the VM's top, then collects upwards: a frozen layer left with no children goes
        too, and one left with a single child is merged into it. The merges' pages are the block
        tables' part, added by the caller."""
        vm = self.vm(name)
        edit = LayerEdit(deleted_vms=[name])
        merges: list[Merge] = []
        tops = self._tops - {vm.top}
        gone = set()
        layer = vm.top
        while True:
            edit.dropped.append(layer)
            gone.add(layer)
            parent = self._parents[layer]
            if parent is None or parent in tops:
                break
            children = self._children.get(parent, set()) - gone
            if not children:
                layer = parent
                continue
            if len(children) == 1:
                (child,) = children
                merges.append(Merge(parent, child, self._parents[parent]))
                edit.reparented[child] = self._parents[parent]
                edit.dropped.append(parent)
            break
        return edit, merges

    # -- applying edits -----------------------------------------------------------------------

    def apply(self, edit: LayerEdit) -> None:
        """Applies an edit that the catalog has committed. The only place the graph changes."""
        for layer in edit.registered:
            self._provisional.pop(layer, None)
        for layer in edit.dropped:
            parent = self._parents.pop(layer)
            if parent is not None:
                self._children.get(parent, set()).discard(layer)
            self._children.pop(layer, None)
            self._tops.discard(layer)
        for layer, parent in list(edit.new_layers.items()) + list(edit.reparented.items()):
            old = self._parents.get(layer)
            if old is not None:
                self._children.get(old, set()).discard(layer)
            self._parents[layer] = parent
            if parent is not None:
                self._children.setdefault(parent, set()).add(layer)
        for name in edit.deleted_vms:
            self._vms.pop(name)
        for vm in edit.put_vms:
            old = self._vms.get(vm.name)
            if old is not None:
                self._tops.discard(old.top)
            self._vms[vm.name] = vm
            self._tops.add(vm.top)
