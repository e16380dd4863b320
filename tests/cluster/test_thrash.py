"""In the spirit of Ceph's thrashosds: a write loop runs while up to R-1 nodes at a time are
killed and restarted at random, for a bounded time. It ends with zero lost bytes, full
replication and a clean fsck."""

from __future__ import annotations

import random
import time

import pytest

from engine.api import BlockfoldError

SIZE = 4 << 20
SECONDS = 12


@pytest.mark.slow
def test_thrash(make_cluster):
    cluster = make_cluster(nodes=4, replicas=2)
    rng = random.Random(42)
    model = bytearray(SIZE)
    names = [f"node{i}" for i in range(1, 5)]
    with cluster.open() as admin:
        admin.pool.create_vm("t", SIZE)
        down: list[str] = []
        deadline = time.monotonic() + SECONDS
        writes = refused = 0
        while time.monotonic() < deadline:
            if rng.random() < 0.15:
                if down:
                    admin.restore_node(down.pop(rng.randrange(len(down))))
                else:
                    victim = rng.choice([n for n in names if n not in down])
                    cluster.kill(victim)          # R-1 = 1 node down at a time
                    down.append(victim)
            off = rng.randrange(0, SIZE - 65536)
            data = rng.randbytes(rng.choice((512, 4096, 20000, 65536)))
            if rng.random() < 0.3:
                data = bytes(len(data))           # zeros, and trims through them
            try:
                admin.write("t", off, data)
                admin.flush()
            except BlockfoldError:
                refused += 1                      # acknowledged writes only go in the model
                continue
            model[off:off + len(data)] = data
            writes += 1
        for name in down:
            admin.restore_node(name)
        admin.heal(wait=True)
        assert writes > 20 and refused == 0
        assert admin.read("t", 0, SIZE) == bytes(model)
        assert admin.stats().under_replicated_blocks == 0
        assert admin.fsck() == []
    with cluster.open(readonly=True) as admin:
        assert admin.read("t", 0, SIZE) == bytes(model)
