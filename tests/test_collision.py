"""A fingerprint that collides for everything: dedup must still never mix up data."""

from __future__ import annotations

import numpy as np

from engine.pool import Pool

BS = 4096


COLLIDING = b"\x42" * 16          # every block's fingerprint


def test_colliding_fingerprints_keep_every_vm_correct(tmp_path):
    path = Pool.create(tmp_path / "pool")
    rng = np.random.default_rng(1)
    blocks = [rng.integers(0, 256, BS, dtype=np.uint8).tobytes() for _ in range(6)]
    image_a = b"".join(blocks[:4])
    image_b = b"".join([blocks[0], blocks[4], blocks[1], blocks[5]])
    with Pool.open(path, colliding_fingerprint=COLLIDING) as p:
        p.create_vm("a", len(image_a))
        p.create_vm("b", len(image_b))
        p.write("a", 0, image_a)
        p.write("b", 0, image_b)
        assert p.read("a", 0, len(image_a)) == image_a
        assert p.read("b", 0, len(image_b)) == image_b
        s = p.stats()
        # The index keeps one slot per fingerprint, so colliding blocks are stored apart: never
        # fewer slots than distinct contents.
        assert 6 <= s["unique_blocks"] <= 8
        assert s["collisions"] > 0
        assert p.fsck() == []
    with Pool.open(path, colliding_fingerprint=COLLIDING, rebuild="full") as p:
        assert p.read("a", 0, len(image_a)) == image_a
        assert p.read("b", 0, len(image_b)) == image_b
        assert p.last_rebuild["corrupt_blocks"] == []
        p.write("a", 0, blocks[5])                 # the index points at a colliding block
        assert p.read("a", 0, BS) == blocks[5]
        assert p.read("b", 0, len(image_b)) == image_b
        assert p.fsck() == []
