"""A small pool with fixed contents: console snapshot tests and the README screenshots use it, so
they come out the same on every run."""

from __future__ import annotations

import random
from pathlib import Path

from engine.api import LocalAdmin, create_pool

BLOCK = 4096


def golden_image(path, blocks: int = 256, distinct: int = 96, seed: int = 7) -> str:
    """A raw image of seeded blocks: some repeat, every eighth is zeros (takes no space)."""
    rng = random.Random(seed)
    pool = [rng.randbytes(BLOCK) for _ in range(distinct)]
    with open(path, "wb") as f:
        for i in range(blocks):
            f.write(bytes(BLOCK) if i % 8 == 7 else pool[rng.randrange(distinct)])
    return str(path)


def sample_pool(where) -> str:
    """golden (1 MiB) and three linked clones, one of them with writes of its own."""
    where = Path(where)
    pool = where / "pool"
    create_pool(pool)
    with LocalAdmin.open(pool, actor="operator") as admin:
        admin.import_image("golden", golden_image(where / "golden.raw"))
        admin.clone("golden", "desk", 3)
        admin.write("desk-1", 0, random.Random(11).randbytes(8 * BLOCK))
        admin.flush()
    return str(pool)
