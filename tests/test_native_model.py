"""A hypothesis state machine over the native core alone: writes, trims, clones, deletes (with the
engine's collection of layers: drop a childless frozen layer, merge a single child), commits and
aborted commits, rebuilds, against a bytearray per VM. Reads agree after every step; at the end
the core's checks are clean, and a core reopened from the committed pages reads identically."""

from __future__ import annotations

import tempfile

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from engine import _native

BS = 4096
SIZE = 20 * BS + 300           # not a whole number of blocks, and more than one page of LBNs
PATTERNS = [bytes([i]) * BS for i in range(1, 4)] + [bytes(BS)]


def has_vms(machine) -> bool:
    return bool(machine.model)


class CoreMachine(RuleBasedStateMachine):
    fingerprint = None          # a constant one makes every lookup collide

    def __init__(self):
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.core = _native.Core(self.tmp.name, BS, create=True,
                                 colliding_fingerprint=self.fingerprint)
        self.core.rebuild()
        self.parents: dict[int, int | None] = {}
        self.tops: set[int] = set()
        self.vms: dict[str, int] = {}
        self.model: dict[str, bytearray] = {}
        self.catalog: dict[tuple[int, int], bytes] = {}     # what sqlite's bmap would hold
        self.counter = 0

    # -- a miniature of the engine's layer decisions ----------------------------------------

    def _layer(self, parent: int | None) -> int:
        self.counter += 1
        self.core.add_layer(self.counter, parent, True)
        self.parents[self.counter] = parent
        self.tops.add(self.counter)
        return self.counter

    def _drop(self, layer: int) -> None:
        while True:
            self.core.decref(self.core.drop_layer(layer))
            parent = self.parents.pop(layer)
            self.tops.discard(layer)
            if parent is None or parent in self.tops:
                return
            children = [lid for lid, p in self.parents.items() if p == parent]
            if not children:
                layer = parent
                continue
            if len(children) == 1:
                self.core.decref(self.core.merge_into_child(parent, children[0]))
                self.parents[children[0]] = self.parents.pop(parent)
            return

    def _pick(self, data) -> str:
        return data.draw(st.sampled_from(sorted(self.model)))

    # -- rules ------------------------------------------------------------------------------

    @precondition(lambda self: len(self.model) < 5)
    @rule()
    def create(self):
        name = f"vm{self.counter + 1}"
        self.vms[name] = self._layer(None)
        self.core.set_vm(name, self.vms[name], SIZE)
        self.model[name] = bytearray(SIZE)

    @precondition(has_vms)
    @rule(offset=st.integers(0, SIZE - 1), data=st.data())
    def write(self, offset, data):
        vm = self._pick(data)
        n = data.draw(st.integers(1, min(3 * BS, SIZE - offset)))
        how = data.draw(st.sampled_from(["pattern", "random", "zeros"]))
        if how == "pattern":
            p = data.draw(st.sampled_from(PATTERNS))
            payload = (p * (n // BS + 2))[offset % BS:offset % BS + n]
        elif how == "random":
            payload = data.draw(st.binary(min_size=n, max_size=n))
        else:
            payload = bytes(n)
        self.core.write(vm, offset, payload)
        self.model[vm][offset:offset + n] = payload

    @precondition(has_vms)
    @rule(offset=st.integers(0, SIZE - 1), data=st.data())
    def trim(self, offset, data):
        vm = self._pick(data)
        n = data.draw(st.integers(1, SIZE - offset))
        self.core.trim(vm, offset, n)
        self.model[vm][offset:offset + n] = bytes(n)

    @precondition(lambda self: 0 < len(self.model) < 6)
    @rule(data=st.data())
    def clone(self, data):
        source = self._pick(data)
        top = self.vms[source]
        base = self.parents[top]
        self.core.close_gate()
        if base is None or not self.core.is_empty(top):
            base = top
            self.core.set_top(top, False)
            self.tops.discard(top)
            self.vms[source] = self._layer(base)
            self.core.set_vm(source, self.vms[source], SIZE)
        name = f"vm{self.counter + 1}"
        self.vms[name] = self._layer(base)
        self.core.set_vm(name, self.vms[name], SIZE)
        self.core.open_gate()
        self.model[name] = bytearray(self.model[source])

    @precondition(has_vms)
    @rule(data=st.data())
    def delete(self, data):
        vm = self._pick(data)
        self.core.remove_vm(vm)
        self._drop(self.vms.pop(vm))
        del self.model[vm]

    @rule(fail=st.booleans())
    def commit(self, fail):
        token, pages, _ = self.core.snapshot()
        if fail:                        # the sqlite transaction failed: nothing is lost
            self.core.abort(token)
            return
        self.core.sync()
        for layer, page, blob in pages:
            if blob is None:
                self.catalog.pop((layer, page), None)
            else:
                self.catalog[(layer, page)] = blob
        self.core.end(token)

    @rule(full=st.booleans())
    def rebuild(self, full):
        figures = self.core.rebuild(full=full)
        assert figures["corrupt_blocks"] == [] and figures["bad_references"] == 0

    @precondition(has_vms)
    @rule(data=st.data())
    def read_range(self, data):
        vm = self._pick(data)
        offset = data.draw(st.integers(0, SIZE - 1))
        n = data.draw(st.integers(0, SIZE - offset))
        assert self.core.read(vm, offset, n) == bytes(self.model[vm][offset:offset + n])

    @invariant()
    def every_vm_reads_as_the_model(self):
        for vm, expect in self.model.items():
            assert self.core.read(vm, 0, SIZE) == bytes(expect), vm

    def teardown(self):
        try:
            self.commit(False)
            assert self.core.check() == []
            assert self.core.rehash().tolist() == []
            self.core.close()
            again = _native.Core(self.tmp.name, BS, colliding_fingerprint=self.fingerprint)
            added: set[int] = set()
            while len(added) < len(self.parents):       # parents before children
                for layer, parent in sorted(self.parents.items()):
                    if layer not in added and (parent is None or parent in added):
                        again.add_layer(layer, parent, layer in self.tops)
                        added.add(layer)
            again.load_pages((layer, page, blob) for (layer, page), blob in self.catalog.items())
            figures = again.rebuild(full=True)
            assert figures["corrupt_blocks"] == [] and figures["orphans_reclaimed"] == 0
            for vm, top in self.vms.items():
                again.set_vm(vm, top, SIZE)
                assert again.read(vm, 0, SIZE) == bytes(self.model[vm]), vm
            assert again.check() == []
            again.close()
        finally:
            self.tmp.cleanup()


TestCoreModel = CoreMachine.TestCase
TestCoreModel.settings = settings(max_examples=100, stateful_step_count=40, deadline=None,
                                  suppress_health_check=[HealthCheck.too_slow])


class CollidingCoreMachine(CoreMachine):
    fingerprint = b"\x42" * 16


TestCollidingCoreModel = CollidingCoreMachine.TestCase
TestCollidingCoreModel.settings = settings(max_examples=40, stateful_step_count=40, deadline=None,
                                           suppress_health_check=[HealthCheck.too_slow])
