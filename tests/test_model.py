"""A hypothesis state machine: random writes, reads, trims, resizes, clones, deletes, renames,
refreshes, rebases, snapshots, rollbacks and exports against a model that keeps a bytearray per
VM, as long as the VM (and the golden state each clone can be refreshed to, its origin, and each
snapshot's bytes). Reads, sizes, logical blocks (the blocks inside the disk that hold data) and
origins must agree after every step; fsck is clean at the end, and a reopened pool reads
identically, with the same origins."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from engine.errors import RefusedError
from engine.pool import Pool

BS = 4096
SIZE = 24 * BS + 300           # not a whole number of blocks, on purpose
SIZES = [SIZE, 9 * BS + 1000, 30 * BS, 40 * BS + 7]         # what a resize picks from
# A few block patterns, so that equal blocks (dedup) are common.
PATTERNS = [bytes([i]) * BS for i in range(1, 4)] + [bytes(BS)]


def has_vms(machine) -> bool:
    return bool(machine.model)


def blocks_of(offset: int, n: int) -> range:
    return range(offset // BS, (offset + n - 1) // BS + 1)


class Desk:
    """What the model knows of a VM beyond its bytes: the golden state it can be refreshed to
    (None: none), its origin, and, while its top sits right on that state (`entries` not None),
    which blocks its top holds an entry for and their bytes (INHERIT elsewhere): what a rebase
    keeping its writes keeps."""

    def __init__(self, base=None, origin=None):
        self.base = base
        self.origin = origin
        self.entries: dict[int, bytes] | None = {} if base is not None else None


def block(data, b: int) -> bytes:
    return bytes(data[b * BS:(b + 1) * BS])


class PoolMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.path = Pool.create(Path(self.tmp.name) / "pool")
        self.pool = Pool.open(self.path)
        self.model: dict[str, bytearray] = {}
        self.desks: dict[str, Desk] = {}
        self.snaps: dict[tuple[str, str], tuple[bytearray, Desk]] = {}
        self.counter = 0

    def _name(self) -> str:
        self.counter += 1
        return f"vm{self.counter}"

    def _pick(self, data) -> str:
        return data.draw(st.sampled_from(sorted(self.model)))

    @precondition(lambda self: len(self.model) < 5)
    @rule()
    def create(self):
        name = self._name()
        self.pool.create_vm(name, SIZE)
        self.model[name] = bytearray(SIZE)
        self.desks[name] = Desk()

    def _touched(self, vm: str, offset: int, n: int) -> None:
        """The top's entries after a write or trim: a block that reads as zeros over a golden
        state that reads as zeros there too is INHERIT (no entry)."""
        desk = self.desks[vm]
        if desk.entries is None:
            return
        for b in blocks_of(offset, n):
            mine = block(self.model[vm], b)
            beneath = block(desk.base, b) if desk.base is not None else bytes(len(mine))
            if not any(mine) and not any(beneath):
                desk.entries.pop(b, None)
            else:
                desk.entries[b] = mine

    def _pick_range(self, data) -> tuple[str, int]:
        """A VM and an offset inside it."""
        vm = self._pick(data)
        return vm, data.draw(st.integers(0, len(self.model[vm]) - 1))

    @precondition(has_vms)
    @rule(data=st.data())
    def write(self, data):
        vm, offset = self._pick_range(data)
        n = data.draw(st.integers(1, min(3 * BS, len(self.model[vm]) - offset)))
        how = data.draw(st.sampled_from(["pattern", "random", "zeros"]))
        if how == "pattern":
            p = data.draw(st.sampled_from(PATTERNS))
            payload = (p * (n // BS + 2))[offset % BS:offset % BS + n]
        elif how == "random":
            payload = data.draw(st.binary(min_size=n, max_size=n))
        else:
            payload = bytes(n)
        self.pool.write(vm, offset, payload)
        self.model[vm][offset:offset + n] = payload
        self._touched(vm, offset, n)

    @precondition(has_vms)
    @rule(data=st.data())
    def trim(self, data):
        vm, offset = self._pick_range(data)
        n = data.draw(st.integers(1, len(self.model[vm]) - offset))
        self.pool.trim(vm, offset, n)
        self._trimmed(vm, offset, n)

    def _trimmed(self, vm: str, offset: int, n: int) -> None:
        self.model[vm][offset:offset + n] = bytes(n)
        self._touched(vm, offset, n)

    @precondition(has_vms)
    @rule(data=st.data(), size=st.sampled_from(SIZES))
    def resize(self, data, size):
        vm = self._pick(data)
        old = len(self.model[vm])
        self.pool.resize(vm, size)
        if size < old:          # what lies past the new end is trimmed first
            self._trimmed(vm, size, old - size)
            del self.model[vm][size:]
        else:
            self.model[vm] += bytes(size - old)

    @precondition(lambda self: 0 < len(self.model) < 6)
    @rule(data=st.data())
    def clone(self, data):
        self._clone(self._pick(data))

    def _clone(self, source: str) -> None:
        name = self._name()
        self.pool.clone(source, name)
        self.model[name] = bytearray(self.model[source])
        self.desks[name] = Desk(bytes(self.model[source]), source)
        self.desks[source].entries = None        # its top may have been frozen beneath it

    @precondition(has_vms)
    @rule(data=st.data())
    def delete(self, data):
        vm = self._pick(data)
        self.pool.delete(vm)
        del self.model[vm]
        del self.desks[vm]
        for key in [k for k in self.snaps if k[0] == vm]:
            del self.snaps[key]
        # Its clones (and snapshots taken of them) lose their golden state.
        for desk in list(self.desks.values()) + [d for _, d in self.snaps.values()]:
            if desk.origin == vm:
                desk.origin, desk.base, desk.entries = None, None, None

    @precondition(has_vms)
    @rule(data=st.data())
    def rename(self, data):
        old = self._pick(data)
        new = self._name()
        self.pool.rename(old, new)
        self.model[new] = self.model.pop(old)
        self.desks[new] = self.desks.pop(old)
        self.snaps = {(new if vm == old else vm, snap): kept
                      for (vm, snap), kept in self.snaps.items()}
        # Its clones (and snapshots taken of them) follow the golden's new name.
        for desk in list(self.desks.values()) + [d for _, d in self.snaps.values()]:
            if desk.origin == old:
                desk.origin = new

    @precondition(has_vms)
    @rule(data=st.data())
    def refresh(self, data):
        vm = self._pick(data)
        desk = self.desks[vm]
        if desk.base is None:
            try:
                self.pool.refresh(vm)
            except RefusedError:
                return
            raise AssertionError(f"{vm} has no golden state, yet it was refreshed")
        self.pool.refresh(vm)
        self.model[vm] = bytearray(desk.base)
        desk.entries = {}

    @precondition(lambda self: len(self.model) >= 2)
    @rule(data=st.data())
    def rebase(self, data):
        golden = self._pick(data)
        others = sorted(set(self.model) - {golden})
        all_of = data.draw(st.sampled_from(
            [None, *sorted({self.desks[n].origin for n in others} - {None, golden})]))
        names = (data.draw(st.lists(st.sampled_from(others), min_size=1, max_size=1))
                 if all_of is None else [n for n in others if self.desks[n].origin == all_of])
        keep = data.draw(st.booleans()) and all(self.desks[n].entries is not None for n in names)
        if any(self.desks[n].base is None for n in names):
            try:            # all its disk is its own: a rebase would drop it
                self.pool.rebase(names, golden, keep_writes=keep)
            except RefusedError:
                return
            raise AssertionError(f"{names} has a VM with no golden state, yet it was rebased")
        self.pool.rebase(names, golden, keep_writes=keep)
        state = bytes(self.model[golden])
        self.desks[golden].entries = None
        for name in names:
            desk = self.desks[name]
            if keep:
                old = len(self.model[name])
                if old > len(state):    # cut to golden's size: trimmed first, as a resize
                    self._trimmed(name, len(state), old - len(state))
                now = bytearray(state)
                for b, mine in desk.entries.items():
                    now[b * BS:b * BS + len(mine)] = mine
                del now[len(state):]
                self.model[name] = now
            else:
                self.model[name] = bytearray(state)
                desk.entries = {}
            desk.base, desk.origin = state, golden

    @precondition(has_vms)
    @rule(data=st.data(), snap=st.sampled_from(["s1", "s2"]))
    def snapshot(self, data, snap):
        self._snapshot(self._pick(data), snap)

    def _snapshot(self, vm: str, snap: str) -> None:
        if (vm, snap) in self.snaps:
            return
        self.pool.snapshot(vm, snap)
        desk = self.desks[vm]
        saved = Desk(desk.base, desk.origin)
        self.snaps[(vm, snap)] = (bytearray(self.model[vm]), saved)
        desk.entries = None

    @precondition(lambda self: 0 < len(self.model) < 6)
    @rule(data=st.data(), meanwhile=st.sampled_from([None, "clone", "snapshot"]),
          first=st.booleans())
    def export(self, data, meanwhile, first):
        """An export's frozen state (Pool.frozen) beside a write to the VM, and a clone or a
        snapshot of it before or after the write: the view reads the VM as it was; at its end
        the VM's top folds into the frozen layer, or the layer merges or stays if the clone or
        the snapshot reads it. The write is of non-zero blocks: a top's tombstones over a
        frozen layer are kept by a fold as by a merge, and `Desk.entries` does not model them."""
        vm, offset = self._pick_range(data)
        before = bytes(self.model[vm])
        n = data.draw(st.integers(1, min(3 * BS, len(before) - offset)))
        p = data.draw(st.sampled_from(PATTERNS[:3]))
        payload = (p * (n // BS + 2))[offset % BS:offset % BS + n]
        with self.pool.frozen(vm) as (view, size):
            for step in ["write", meanwhile] if not first else [meanwhile, "write"]:
                if step == "write":
                    self.pool.write(vm, offset, payload)
                    self.model[vm][offset:offset + n] = payload
                    self._touched(vm, offset, n)
                elif step == "clone":
                    self._clone(vm)
                elif step == "snapshot":
                    self._snapshot(vm, "s1")
            assert self.pool.core.read(view, 0, size) == before

    @precondition(lambda self: bool(self.snaps))
    @rule(data=st.data())
    def rollback(self, data):
        vm, snap = data.draw(st.sampled_from(sorted(self.snaps)))
        self.pool.rollback(vm, snap)
        saved, desk = self.snaps[(vm, snap)]
        self.model[vm] = bytearray(saved)
        self.desks[vm] = Desk(desk.base, desk.origin)
        self.desks[vm].entries = None

    @precondition(lambda self: bool(self.snaps))
    @rule(data=st.data())
    def snapshot_rm(self, data):
        vm, snap = data.draw(st.sampled_from(sorted(self.snaps)))
        self.pool.snapshot_rm(vm, snap)
        del self.snaps[(vm, snap)]

    @rule()
    def flush(self):
        self.pool.flush()

    @precondition(has_vms)
    @rule(data=st.data())
    def read_range(self, data):
        vm, offset = self._pick_range(data)
        n = data.draw(st.integers(0, len(self.model[vm]) - offset))
        assert self.pool.read(vm, offset, n) == bytes(self.model[vm][offset:offset + n])

    @invariant()
    def every_vm_reads_as_the_model(self):
        for vm, expect in self.model.items():
            assert self.pool.vm_size(vm) == len(expect), vm
            assert self.pool.read(vm, 0, len(expect)) == bytes(expect), vm
            data = [block(expect, b) for b in range(-(-len(expect) // BS))]
            assert self.pool.core.visible_blocks(self.pool.vm(vm).top) == sum(map(any, data)), vm
        assert self._origins(self.pool) == {vm: d.origin for vm, d in self.desks.items()}

    @staticmethod
    def _origins(pool: Pool) -> dict[str, str | None]:
        return {vm: pool.vm(vm).origin for vm in pool.vm_names()}

    def teardown(self):
        try:
            assert self.pool.fsck() == []
            self.pool.close()
            with Pool.open(self.path, rebuild="full") as reopened:
                assert sorted(reopened.vm_names()) == sorted(self.model)
                assert sorted((s["vm"], s["name"]) for s in reopened.snapshots()) == sorted(
                    self.snaps)
                for vm, expect in self.model.items():
                    assert reopened.read(vm, 0, len(expect)) == bytes(expect), vm
                assert self._origins(reopened) == {vm: d.origin for vm, d in self.desks.items()}
                assert {(s["vm"], s["name"]): s["origin"] for s in reopened.snapshots()} == {
                    key: d.origin for key, (_, d) in self.snaps.items()}
                assert reopened.fsck() == []
                assert reopened.last_rebuild["orphans_reclaimed"] == 0
        finally:
            self.tmp.cleanup()


TestPoolModel = PoolMachine.TestCase
TestPoolModel.settings = settings(max_examples=120, stateful_step_count=40, deadline=None,
                                  suppress_health_check=[HealthCheck.too_slow])
