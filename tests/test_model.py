"""A hypothesis state machine: random writes, reads, trims, clones and deletes against a model
that keeps a bytearray per VM. Reads must agree after every step; fsck is clean at the end, and
a reopened pool reads identically."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from engine.pool import Pool

BS = 4096
SIZE = 24 * BS + 300           # not a whole number of blocks, on purpose
# A few block patterns, so that equal blocks (dedup) are common.
PATTERNS = [bytes([i]) * BS for i in range(1, 4)] + [bytes(BS)]


def has_vms(machine) -> bool:
    return bool(machine.model)


class PoolMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.path = Pool.create(Path(self.tmp.name) / "pool")
        self.pool = Pool.open(self.path)
        self.model: dict[str, bytearray] = {}
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
        self.pool.write(vm, offset, payload)
        self.model[vm][offset:offset + n] = payload

    @precondition(has_vms)
    @rule(offset=st.integers(0, SIZE - 1), data=st.data())
    def trim(self, offset, data):
        vm = self._pick(data)
        n = data.draw(st.integers(1, SIZE - offset))
        self.pool.trim(vm, offset, n)
        self.model[vm][offset:offset + n] = bytes(n)

    @precondition(lambda self: 0 < len(self.model) < 6)
    @rule(data=st.data())
    def clone(self, data):
        source = self._pick(data)
        name = self._name()
        self.pool.clone(source, name)
        self.model[name] = bytearray(self.model[source])

    @precondition(has_vms)
    @rule(data=st.data())
    def delete(self, data):
        vm = self._pick(data)
        self.pool.delete(vm)
        del self.model[vm]

    @rule()
    def flush(self):
        self.pool.flush()

    @precondition(has_vms)
    @rule(data=st.data())
    def read_range(self, data):
        vm = self._pick(data)
        offset = data.draw(st.integers(0, SIZE - 1))
        n = data.draw(st.integers(0, SIZE - offset))
        assert self.pool.read(vm, offset, n) == bytes(self.model[vm][offset:offset + n])

    @invariant()
    def every_vm_reads_as_the_model(self):
        for vm, expect in self.model.items():
            assert self.pool.read(vm, 0, SIZE) == bytes(expect), vm

    def teardown(self):
        try:
            assert self.pool.fsck() == []
            self.pool.close()
            with Pool.open(self.path, rebuild="full") as reopened:
                assert sorted(reopened.vm_names()) == sorted(self.model)
                for vm, expect in self.model.items():
                    assert reopened.read(vm, 0, SIZE) == bytes(expect), vm
                assert reopened.fsck() == []
                assert reopened.last_rebuild["orphans_reclaimed"] == 0
        finally:
            self.tmp.cleanup()


TestPoolModel = PoolMachine.TestCase
TestPoolModel.settings = settings(max_examples=120, stateful_step_count=40, deadline=None,
                                  suppress_health_check=[HealthCheck.too_slow])
