"""`blockfold demo`: a pool with data in it, to look around in.

The data is made, not downloaded: a 'golden' image with the shape of an OS disk (a run of
distinct blocks, repeated blocks, and empty space), and a dozen linked clones, each of which then
writes a few desktops' worth of its own blocks. The same seed gives the same bytes every time.
"""

from __future__ import annotations

import random
import tempfile

from engine import api
from engine.api import Admin

BLOCK = 4096
GOLDEN_BLOCKS = 8192          # 32 MiB
DESKTOPS = 12
NODES, REPLICAS = 3, 2


def up(path, memory: int | None = None, repair_delay: float = 0.0) -> None:
    """Starts the demo cluster in `path` (made if new): 3 local nodes on 127.0.0.1, every block
    on 2 of them. memory: each node keeps its blocks in RAM, up to this many bytes (then its
    capacity is that, whatever the disk). repair_delay: seconds before the healer copies the
    blocks of a lost node elsewhere."""
    api.cluster_up(path, nodes=NODES, replicas=REPLICAS, memory=memory,
                   repair_delay=repair_delay)


def golden_image(seed: int = 7) -> bytes:
    rng = random.Random(seed)
    common = [rng.randbytes(BLOCK) for _ in range(64)]   # blocks an OS repeats (libs, fonts, …)
    parts = []
    for i in range(GOLDEN_BLOCKS):
        region = i * 8 // GOLDEN_BLOCKS
        if region in (5, 7):
            parts.append(bytes(BLOCK))                      # free space
        elif region == 3:
            parts.append(rng.choice(common))
        else:
            parts.append(rng.randbytes(BLOCK))
    return b"".join(parts)


def seed(admin: Admin, seed: int = 7, progress=None) -> None:
    """Imports the golden image and makes the desktops, each with writes of its own."""
    with tempfile.NamedTemporaryFile(prefix="blockfold-golden-", suffix=".raw") as f:
        f.write(golden_image(seed))
        f.flush()
        admin.import_image("golden", f.name, progress)
    names = admin.clone("golden", "desk", DESKTOPS)
    rng = random.Random(seed + 1)
    profile = rng.randbytes(16 * BLOCK)                   # a roaming profile every desktop gets
    for i, name in enumerate(names):
        admin.write(name, 4096 * BLOCK, profile)
        admin.write(name, (5000 + 64 * i) * BLOCK, rng.randbytes((8 + 4 * i) * BLOCK))
    admin.flush()

