"""The layer graph: VMs, the layers they read through, and every change to them as a value.

A VM reads through a chain of layers: its own writable *top*, then frozen layers beneath, each
naming its parent. A frozen layer never changes what it shows. An import writes into a
*provisional* top that belongs to no VM until the import registers it. A long read (an export)
*holds* the frozen layer it reads: in RAM only, for as long as the read lasts.

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

from .errors import RefusedError, VMExistsError, VMNotFoundError
from .names import check_vm_name


@dataclass(frozen=True)
class VM:
    """A VM: its size in bytes, its top layer, when it was made and what it was cloned from:
    `origin` the golden image's name, `base` the frozen layer holding the golden's state it was
    cloned from (what a refresh brings it back to; None: imported or created, not a clone),
    `base_size` that state's size in bytes (what a refresh gives it back; None: not a clone, or
    cloned before Blockfold kept it, and a refresh keeps the VM's size)."""
    name: str
    size: int
    top: int
    created: float
    origin: str | None
    base: int | None = None
    base_size: int | None = None


@dataclass(frozen=True)
class Snap:
    """A VM's snapshot: a frozen layer with a name, and the VM's size, origin, base and base's
    size then (what a rollback restores)."""
    vm: str
    name: str
    layer: int
    created: float
    size: int
    origin: str | None
    base: int | None
    base_size: int | None = None


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
    moved: layer -> new parent, for a VM's top that moves onto another layer (a rebase that
           keeps the VM's writes)
    folded: top -> its parent, for a VM's top folded down into the frozen layer beneath it,
           which takes the top's entries and becomes the VM's top again (the top is in
           `dropped` too; its pages are the edit's `pages` of the parent)
    put_snaps / deleted_snaps: snapshot rows written or removed ((vm, name) for a removal)
    relinked: a deleted or renamed golden image's clones, their rows with their new origin
           (Relinked): the catalog rewrites them with one statement a table, the graph takes
           the rows built; their tops and sizes stay, so the core has nothing to do
    events: (kind, message) pairs logged with the edit
    """
    new_layers: dict[int, int | None] = field(default_factory=dict)
    reparented: dict[int, int | None] = field(default_factory=dict)
    moved: dict[int, int | None] = field(default_factory=dict)
    folded: dict[int, int] = field(default_factory=dict)
    dropped: list[int] = field(default_factory=list)
    put_vms: list[VM] = field(default_factory=list)
    deleted_vms: list[str] = field(default_factory=list)
    pages: dict[tuple[int, int], bytes | None] = field(default_factory=dict)
    registered: list[int] = field(default_factory=list)
    put_snaps: list[Snap] = field(default_factory=list)
    deleted_snaps: list[tuple[str, str]] = field(default_factory=list)
    relinked: Relinked | None = None
    events: list[tuple[str, str]] = field(default_factory=list)

    def touches(self) -> tuple[set[int], set[str]]:
        """(the layers whose rows or pages it writes, or that it links a layer to; the VMs whose
        rows, or snapshots' rows, it writes or removes). Dropped layers are not counted: they
        go."""
        layers = {*self.new_layers.values(), *self.reparented, *self.reparented.values(),
                  *self.moved, *self.moved.values(), *self.folded, *self.folded.values(),
                  *(layer for layer, _ in self.pages), *self.registered,
                  *(vm.top for vm in self.put_vms), *(snap.layer for snap in self.put_snaps)}
        names = {*(vm.name for vm in self.put_vms), *self.deleted_vms,
                 *(snap.vm for snap in self.put_snaps), *(vm for vm, _ in self.deleted_snaps)}
        if self.relinked is not None:
            names |= {*self.relinked.vms, *(vm for vm, _ in self.relinked.snaps)}
        return layers - {None} - set(self.dropped), names


@dataclass(frozen=True)
class Relinked:
    """A golden image's clones as its delete or rename leaves them: every VM and snapshot whose
    origin it is (its own aside), with `origin` their new origin: None for a delete, which
    drops their base too (they no longer pin it), or the golden's new name for a rename, which
    keeps it. Built before the edit takes the pool's lock (the per-clone part, ~2 µs a clone),
    from the graph as it was at `state`: an edit applied since makes it stale, and the plan
    builds it again.

    vms: name -> row; snaps: (vm, name) -> row; bases: the layers they no longer pin (none
    for a rename).
    """
    golden: str
    origin: str | None
    state: object
    vms: dict[str, VM]
    snaps: dict[tuple[str, str], Snap]
    bases: frozenset[int]

    @classmethod
    def of(cls, golden: str, origin: str | None, state: object, vms: list[VM],
           snaps: list[Snap]) -> Relinked:
        """From LayerGraph.cloned_from(golden). Rows are made directly: dataclasses.replace
        took 1.4 s for 40,000 clones."""
        if origin is None:
            return cls(golden, None, state,
                       {vm.name: VM(vm.name, vm.size, vm.top, vm.created, None) for vm in vms},
                       {(s.vm, s.name): Snap(s.vm, s.name, s.layer, s.created, s.size, None,
                                             None, None) for s in snaps},
                       frozenset(x.base for x in [*vms, *snaps] if x.base is not None))
        return cls(golden, origin, state,
                   {vm.name: VM(vm.name, vm.size, vm.top, vm.created, origin, vm.base,
                                vm.base_size) for vm in vms},
                   {(s.vm, s.name): Snap(s.vm, s.name, s.layer, s.created, s.size, origin,
                                         s.base, s.base_size) for s in snaps},
                   frozenset())

    def fits(self, golden: str, origin: str | None, state: object) -> bool:
        """Whether these rows are the ones to take now: built for this change of `golden`,
        and from the graph at `state` (no edit applied since)."""
        return self.golden == golden and self.origin == origin and self.state is state


@dataclass(frozen=True)
class Merge:
    """A frozen layer folded into its only child, which takes the frozen layer's parent."""
    layer: int
    child: int
    parent: int | None


class LayerGraph:
    def __init__(self, vms: dict[str, VM], parents: dict[int, int | None], next_layer: int,
                 snaps: list[Snap] = ()):
        self._vms = dict(vms)
        self._snaps: dict[tuple[str, str], Snap] = {(s.vm, s.name): s for s in snaps}
        self._parents = dict(parents)
        self._next_layer = next_layer
        self._provisional: dict[int, str | None] = {}   # import's top -> the name it reserves
        self._held: dict[str, tuple[int, str]] = {}     # a read's view -> (layer, its VM's name)
        self._children: dict[int, set[int]] = {}
        for layer, parent in self._parents.items():
            if parent is not None:
                self._children.setdefault(parent, set()).add(layer)
        self._tops = {vm.top for vm in self._vms.values()}
        self._state = object()      # a new one with every edit applied (Relinked.state)

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

    def snaps(self, vm: str | None = None) -> list[Snap]:
        """The snapshots of `vm` (every VM's if None), oldest first."""
        return sorted((s for s in self._snaps.values() if vm is None or s.vm == vm),
                      key=lambda s: (s.vm, s.created, s.name))

    def snap(self, vm: str, name: str) -> Snap:
        self.vm(vm)
        try:
            return self._snaps[(vm, name)]
        except KeyError:
            raise VMNotFoundError(f"VM {vm} has no snapshot named {name!r}") from None

    def cloned_from(self, name: str) -> tuple[object, list[VM], list[Snap]]:
        """The graph's state now, and the VMs and snapshots whose origin is `name` (its own
        aside): what Relinked.of builds from, once the caller let go of the pool's lock."""
        return (self._state,
                [vm for vm in self._vms.values() if vm.origin == name and vm.name != name],
                [s for s in self._snaps.values() if s.origin == name and s.vm != name])

    def clones_of(self, name: str) -> list[str]:
        """The VMs cloned from `name` (or rebased onto it), by name."""
        return sorted(vm.name for vm in self._vms.values() if vm.origin == name)

    def pinned(self) -> set[int]:
        """Frozen layers kept whoever reads them: every VM's base, every snapshot, and the base
        each snapshot restores."""
        return self._pins_without()

    def unsound(self) -> list[str]:
        """The catalog's rows that make no graph, each said as the row that is wrong: layers
        that are their own parent, layers whose parent does not exist, cycles of parents, VMs
        whose top does not exist. Empty: every chain ends at a root. (An open refuses such a
        catalog: nothing could be mirrored in the core.)"""
        selfish = sorted(layer for layer, parent in self._parents.items() if parent == layer)
        orphans: dict[int, list[int]] = {}
        for layer, parent in sorted(self._parents.items()):
            if parent is not None and parent not in self._parents:
                orphans.setdefault(parent, []).append(layer)
        out = [f"{_layers(selfish)} {'is its' if len(selfish) == 1 else 'are each their'} own"
               " parent"] if selfish else []
        out += [f"{_layers(kids)} {'has' if len(kids) == 1 else 'have'} parent {parent},"
                " which does not exist" for parent, kids in orphans.items()]
        out += [f"{_layers(sorted(cycle))} form a cycle of parents, "
                f"{' -> '.join(map(str, [*cycle, cycle[0]]))}" for cycle in self._cycles()
                if len(cycle) > 1]
        out += [f"VM {vm.name} has top layer {vm.top}, which does not exist"
                for vm in self.vms() if vm.top not in self._parents]
        return out

    def _cycles(self) -> list[list[int]]:
        """Every cycle of parents, each once, from its smallest layer, child to parent."""
        state: dict[int, int] = {}      # layer -> the walk that reached it first
        cycles = []
        for start in sorted(self._parents):
            path, layer = [], start
            while layer is not None and layer in self._parents and layer not in state:
                state[layer] = start
                path.append(layer)
                layer = self._parents[layer]
            if layer is not None and state.get(layer) == start:   # this walk came back
                cycle = path[path.index(layer):]
                first = cycle.index(min(cycle))
                cycles.append(cycle[first:] + cycle[:first])
        return cycles

    def shared_tops(self) -> list[tuple[str, dict]]:
        """Writable layers read by more than their VM, each as (message, where): VMs sharing
        one top, and a VM's top that other layers read through (a write to it changes what
        they show). A catalog's rows that the open takes, yet no edit ever makes."""
        owners: dict[int, list[str]] = {}
        for vm in self.vms():
            owners.setdefault(vm.top, []).append(vm.name)
        out = []
        for top, names in sorted(owners.items()):
            if len(names) > 1:
                out.append((f"VMs {_and(names)} share top layer {top}: a write to one changes"
                            f" the other{'s' if len(names) > 2 else ''}",
                            {"vm": names[0], "layer": top}))
            if kids := self._children.get(top):
                out.append((f"VM {names[0]}'s top layer {top} is the parent of"
                            f" {_layers(sorted(kids))}: a write to {names[0]} changes what"
                            f" {'it shows' if len(kids) == 1 else 'they show'}",
                            {"vm": names[0], "layer": top}))
        return out

    def hold(self, view: str, layer: int, vm: str) -> None:
        """Keeps frozen `layer` (VM `vm`'s state) as it is while `view` reads it: no edit
        merges it, and one that would drop it is refused (_collect). RAM only: a crash ends
        every read, and the layer is then an ordinary one."""
        self._held[view] = (layer, vm)

    def release(self, view: str) -> None:
        """Ends `view`'s hold (none: the graph was loaded again since, without it)."""
        self._held.pop(view, None)

    def held(self, layer: int) -> bool:
        return any(held == layer for held, _ in self._held.values())

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

    def begin_import(self, name: str | None) -> int:
        """A provisional top layer for an import under `name`, which it reserves; None: a
        streamed write's, which no VM takes (Pool.write_from moves its blocks onto a VM's)."""
        if name is not None:
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

    def plan_clone(self, source: str, names: list[str], source_top_empty: bool,
                   like: VM | None = None) -> LayerEdit:
        """Freezes the source's top as the shared base (unless it wrote nothing since it was last
        frozen: then its base is shared as it is) and gives every clone an empty top on it.
        `like`: a clone made of the source before (an earlier batch of the same clone): these
        are made as it was, on its base, whatever the source did since. Raises VMExistsError,
        BadNameError, VMNotFoundError, RefusedError (`like`'s base is gone)."""
        for name in names:
            self.check_new_name(name)
        edit = LayerEdit()
        if like is not None:
            if like.base not in self._parents:
                raise RefusedError(f"the state of {source} that the first clones show is gone")
            now = time.time()
            for name, layer in zip(names, self._new_ids(len(names))):
                edit.new_layers[layer] = like.base
                edit.put_vms.append(VM(name, like.size, layer, now, like.origin, like.base,
                                       like.base_size))
            return edit
        vm = self.vm(source)
        base = self._parents[vm.top]
        if base is None or not source_top_empty:
            base = vm.top
            (new_top,) = self._new_ids(1)
            edit.new_layers[new_top] = base
            edit.put_vms.append(replace(vm, top=new_top))
        now = time.time()
        for name, layer in zip(names, self._new_ids(len(names))):
            edit.new_layers[layer] = base
            edit.put_vms.append(VM(name, vm.size, layer, now, source, base, vm.size))
        return edit

    def plan_freeze(self, name: str, top_empty: bool) -> tuple[LayerEdit, int]:
        """The frozen layer that shows VM `name` as it is now, for a read to hold (an export),
        and the edit that freezes it (empty if the VM wrote nothing since it was last frozen)."""
        edit = LayerEdit()
        return edit, self._frozen_state(name, top_empty, edit)

    def plan_fold_back(self) -> LayerEdit:
        """What a crash left of exports, folded back as their ends would have folded it
        (plan_unfreeze): every VM's top whose parent nobody else reads (no pin, no hold, no other
        child) folds down into it, so the VM is as deep as before its export began. Costs the
        tops' pages; an empty edit if there is none (no pool left so by anything else: a
        collection merges such a layer, but for the rare one two merges would have shared)."""
        edit = LayerEdit()
        pinned = self._pins_without()
        for vm in self._vms.values():
            layer = self._parents.get(vm.top)
            if (layer is None or layer in pinned or self.held(layer) or self.is_top(layer)
                    or self._children.get(layer) != {vm.top}):
                continue
            edit.dropped.append(vm.top)
            edit.folded[vm.top] = layer
            edit.put_vms.append(replace(vm, top=layer))
        return edit

    def plan_unfreeze(self, layer: int) -> tuple[LayerEdit, list[Merge]]:
        """Collects a layer that a read held and let go (plan_freeze's, once its export ends),
        so exports do not deepen chains. If nothing else reads it (no pin, no other hold, and
        its one child a VM's top), that top folds down into it (LayerEdit.folded) and it is the
        VM's top again: the edit costs what the VM wrote since it was frozen, not the layer's
        pages. Else it is collected as a layer that lost a pin: merged into its only child (a
        clone's or a snapshot's frozen layer), or kept (pinned, held, several children)."""
        edit = LayerEdit()
        pinned = self._pins_without()
        children = self._children.get(layer, set())
        if (len(children) == 1 and layer not in pinned and not self.held(layer)
                and not self.is_top(layer)):
            (top,) = children
            owner = next((vm for vm in self._vms.values() if vm.top == top), None) \
                if top in self._tops else None
            if owner is not None:
                edit.dropped.append(top)
                edit.folded[top] = layer
                edit.put_vms.append(replace(owner, top=layer))
                return edit, []
        return edit, self._collect(edit, [], [layer], pinned)

    def _frozen_state(self, name: str, top_empty: bool, edit: LayerEdit) -> int:
        """The frozen layer that shows VM `name` as it is now: its top's parent if it wrote
        nothing since it was last frozen, else its top, frozen by `edit` (the VM gets a new
        empty top on it)."""
        vm = self.vm(name)
        parent = self._parents[vm.top]
        if parent is not None and top_empty:
            return parent
        (new_top,) = self._new_ids(1)
        edit.new_layers[new_top] = vm.top
        edit.put_vms.append(replace(vm, top=new_top))
        return vm.top

    def plan_delete(self, name: str,
                    unlinked: Relinked | None = None) -> tuple[LayerEdit, list[Merge]]:
        """Drops the VM's top and its snapshots' names, then collects what nobody needs (see
        _collect). Its clones lose their golden image: they keep their disks, but no longer
        the golden state beneath their own writes (a refresh has nothing to go back to), so
        that deleting a golden frees what only it held. `unlinked`: its clones' rows built
        ahead (Relinked, origin None), taken unless stale. The merges' pages are the block
        tables' part, added by the caller."""
        vm = self.vm(name)
        snaps = self.snaps(name)
        if unlinked is None or not unlinked.fits(name, None, self._state):
            unlinked = Relinked.of(name, None, *self.cloned_from(name))
        edit = LayerEdit(deleted_vms=[name], deleted_snaps=[(s.vm, s.name) for s in snaps],
                         relinked=unlinked)
        pinned = self._pins_without(vms=unlinked.vms.keys() | {name},
                                    snaps={(s.vm, s.name) for s in snaps} | unlinked.snaps.keys())
        pinned |= {s.layer for s in unlinked.snaps.values()}
        unpinned = [s.layer for s in snaps] + [s.base for s in snaps] + [vm.base, *unlinked.bases]
        return edit, self._collect(edit, [vm.top], unpinned, pinned)

    def plan_refresh(self, name: str) -> tuple[LayerEdit, list[Merge]]:
        """Drops the VM's own writes: a new empty top on the golden state it was cloned from,
        at that state's size (a VM cloned before Blockfold kept it keeps its own)."""
        vm = self.vm(name)
        if vm.base is None:
            raise RefusedError(f"VM {name} was not cloned from a golden image (or its golden"
                               " image was deleted, or it was cloned before Blockfold kept its"
                               " base): nothing to refresh it to")
        edit = LayerEdit()
        (top,) = self._new_ids(1)
        edit.new_layers[top] = vm.base
        size = vm.size if vm.base_size is None else vm.base_size
        edit.put_vms.append(replace(vm, top=top, size=size))
        return edit, self._collect(edit, [vm.top], [], self._pins_without(), {top: vm.base})

    def check_rebase(self, names: list[str], golden: str, keep_writes: bool) -> list[VM]:
        """Refuses a rebase that cannot be made (RefusedError; VMNotFoundError): onto itself, a
        VM with no golden base (imported; its golden deleted: all its disk is its own), and with
        `keep_writes` a VM whose top does not sit right on its base. Returns the VMs larger
        than `golden`, which the rebase shrinks to its size."""
        g = self.vm(golden)
        shrunk = []
        for name in names:
            vm = self.vm(name)
            if name == golden:
                raise RefusedError(f"cannot rebase {name} onto itself")
            if vm.base is None:
                # Its whole disk is its own: a rebase would drop all of it, or keep all of it
                # over the new golden image's bytes.
                raise RefusedError(f"VM {name} has no golden image (it was imported, or its"
                                   " golden image was deleted): rebasing it would replace its"
                                   f" whole disk; clone {golden} instead")
            if keep_writes and self.held(self._parents[vm.top]):
                raise self._held_by(self._parents[vm.top])
            if keep_writes and self._parents[vm.top] != vm.base:
                raise RefusedError(
                    f"VM {name} has snapshots or clones of its own above its golden image:"
                    " --keep-writes moves only a desktop's own top (remove them, or rebase"
                    " without keeping its writes)")
            if vm.size > g.size:
                shrunk.append(vm)
        return shrunk

    def plan_rebase(self, names: list[str], golden: str, golden_top_empty: bool,
                    keep_writes: bool) -> tuple[LayerEdit, list[Merge]]:
        """Moves each VM onto `golden`'s state now (its top frozen if it wrote since it was last
        frozen), at golden's size: with `keep_writes` each VM's top moves there (O(1): it must
        sit right on its base, no snapshot or clone of its own above), else a new empty top
        replaces it. Refuses what check_rebase refuses."""
        self.check_rebase(names, golden, keep_writes)
        g = self.vm(golden)
        edit = LayerEdit()
        base = self._frozen_state(golden, golden_top_empty, edit)
        going, added, old_bases = [], {}, []
        for name in names:
            vm = self.vm(name)
            if keep_writes:
                edit.moved[vm.top] = base
                top = vm.top
            else:
                (top,) = self._new_ids(1)
                edit.new_layers[top] = base
                added[top] = base
                going.append(vm.top)
            old_bases.append(vm.base)
            edit.put_vms.append(VM(name, g.size, top, vm.created, golden, base, g.size))
        pinned = self._pins_without(vms=set(names)) | {base}
        return edit, self._collect(edit, going, old_bases, pinned, added)

    def plan_snapshot(self, name: str, snap: str, top_empty: bool) -> LayerEdit:
        """Names the VM's state now: a frozen layer (its top, frozen, unless it wrote nothing
        since it was last frozen)."""
        check_vm_name(snap, "snapshot")
        vm = self.vm(name)
        if (name, snap) in self._snaps:
            raise VMExistsError(f"VM {name} already has a snapshot named {snap!r}")
        edit = LayerEdit()
        layer = self._frozen_state(name, top_empty, edit)
        edit.put_snaps.append(Snap(name, snap, layer, time.time(), vm.size, vm.origin, vm.base,
                                   vm.base_size))
        return edit

    def plan_rollback(self, name: str, snap: str) -> tuple[LayerEdit, list[Merge]]:
        """Drops what the VM wrote since the snapshot: a new empty top on the snapshot's layer,
        with the size, origin and base it had then. The snapshot stays."""
        vm = self.vm(name)
        s = self.snap(name, snap)
        edit = LayerEdit()
        (top,) = self._new_ids(1)
        edit.new_layers[top] = s.layer
        edit.put_vms.append(VM(name, s.size, top, vm.created, s.origin, s.base, s.base_size))
        pinned = self._pins_without(vms={name}) | ({s.base} if s.base is not None else set())
        return edit, self._collect(edit, [vm.top], [vm.base], pinned, {top: s.layer})

    def plan_snapshot_rm(self, name: str, snap: str) -> tuple[LayerEdit, list[Merge]]:
        """Forgets a snapshot; its layer goes, or merges, once nothing else needs it."""
        s = self.snap(name, snap)
        edit = LayerEdit(deleted_snaps=[(name, snap)])
        pinned = self._pins_without(snaps={(name, snap)})
        return edit, self._collect(edit, [], [s.layer], pinned)

    def plan_rename(self, old: str, new: str, relinked: Relinked | None = None) -> LayerEdit:
        """The VM, its snapshots and its clones' origin under the new name. `relinked`: its
        clones' rows built ahead (Relinked, origin `new`), taken unless stale."""
        vm = self.vm(old)
        self.check_new_name(new)
        if relinked is None or not relinked.fits(old, new, self._state):
            relinked = Relinked.of(old, new, *self.cloned_from(old))
        edit = LayerEdit(deleted_vms=[old], put_vms=[replace(vm, name=new)], relinked=relinked)
        for s in self.snaps(old):
            edit.deleted_snaps.append((old, s.name))
            edit.put_snaps.append(replace(s, vm=new, origin=new if s.origin == old
                                          else s.origin))
        return edit

    def plan_resize(self, name: str, size: int) -> LayerEdit:
        return LayerEdit(put_vms=[replace(self.vm(name), size=size)])

    def _pins_without(self, vms=frozenset(), snaps=frozenset()) -> set[int]:
        """The pinned layers once the VMs `vms` and the snapshots `snaps` no longer pin."""
        snapped = [s for key, s in self._snaps.items() if key not in snaps]
        return ({vm.base for vm in self._vms.values() if vm.name not in vms}
                | {s.layer for s in snapped} | {s.base for s in snapped}) - {None}

    def _collect(self, edit: LayerEdit, going: list[int], unpinned, pinned: set[int],
                 added: dict[int, int | None] | None = None) -> list[Merge]:
        """Adds to `edit` the layers `going` (tops dropped) and everything that then nobody needs: a
        frozen layer that is no longer pinned (a VM's base, a snapshot) goes once it has no children
        left, and merges into its child once it has only one (as a delete has always collected
        upwards). A held layer (hold) never merges, and an edit that would drop it is refused
        (RefusedError): the read holding it would lose what it reads, and a layer kept with no child
        would be left behind by a crash. `unpinned`: layers that lost a pin; `added`: new layer ->
        parent in the same edit. Two merges never touch the same layer (a merged layer is then left
        standing: correct, one layer deeper). Returns the merges, whose pages the caller adds."""
        going = sorted(set(going), key=lambda layer: -len(self.chain(layer)))
        gone = set(going)
        moved = set(edit.moved)
        extra: dict[int, int] = {}
        for parent in list((added or {}).values()) + list(edit.moved.values()):
            if parent is not None:
                extra[parent] = extra.get(parent, 0) + 1

        # Each layer's children are worked out once and kept up as layers go, and each layer
        # is looked at once, then again only when a child of it goes: a golden's delete names
        # its base once per clone, and taking the children each time made it quadratic
        # (40,000 clones: 163 s).
        standing: dict[int, set[int]] = {}

        def kids(layer: int) -> set[int]:
            if layer not in standing:
                standing[layer] = self._children.get(layer, set()) - gone - moved
            return standing[layer]

        tops = self._tops - gone
        todo = list(dict.fromkeys([self._parents[layer] for layer in going] + list(unpinned)
                                  + [self._parents[layer] for layer in moved]))
        dropped, candidates = list(going), []
        while todo:
            layer = todo.pop()
            if layer is None or layer in gone or layer in tops or layer in pinned:
                continue
            if not kids(layer) and not extra.get(layer):
                if self.held(layer):
                    raise self._held_by(layer)
                gone.add(layer)
                dropped.append(layer)
                parent = self._parents[layer]
                if parent in standing:
                    standing[parent].discard(layer)
                todo.append(parent)
            else:
                candidates.append(layer)
        merges: list[Merge] = []
        involved: set[int] = set()
        for layer in dict.fromkeys(candidates):
            children = kids(layer)
            if layer in gone or len(children) != 1 or extra.get(layer) or self.held(layer):
                continue
            (child,) = children
            if layer in involved or child in involved:
                continue
            involved |= {layer, child}
            merges.append(Merge(layer, child, self._parents[layer]))
        edit.dropped += dropped + [m.layer for m in merges]
        edit.reparented.update({m.child: m.parent for m in merges})
        return merges

    def _held_by(self, layer: int) -> RefusedError:
        vm = next(vm for held, vm in self._held.values() if held == layer)
        return RefusedError(f"VM {vm} is being exported, as it was when the export began:"
                            " this would drop that state under the export; try again once the"
                            " export ends, or cancel it (blockfold job ls)")

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
        for layer, parent in (list(edit.new_layers.items()) + list(edit.reparented.items())
                              + list(edit.moved.items())):
            old = self._parents.get(layer)
            if old is not None:
                self._children.get(old, set()).discard(layer)
            self._parents[layer] = parent
            if parent is not None:
                self._children.setdefault(parent, set()).add(layer)
        for name in edit.deleted_vms:
            self._vms.pop(name)
        for key in edit.deleted_snaps:
            self._snaps.pop(key)
        for snap in edit.put_snaps:
            self._snaps[(snap.vm, snap.name)] = snap
        if edit.relinked is not None:           # their tops stay: one update each, in C
            self._vms.update(edit.relinked.vms)
            self._snaps.update(edit.relinked.snaps)
        for vm in edit.put_vms:
            old = self._vms.get(vm.name)
            if old is not None:
                self._tops.discard(old.top)
            self._vms[vm.name] = vm
            self._tops.add(vm.top)
        self._state = object()


def _and(words: list) -> str:
    """"a", "a and b", "a, b and c"."""
    words = [str(w) for w in words]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def _layers(layers: list[int]) -> str:
    """"layer 3", "layers 1 and 4"."""
    return f"layer{'s' if len(layers) > 1 else ''} {_and(layers)}"
