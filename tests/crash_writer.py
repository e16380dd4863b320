"""A writer to be killed: it imports, writes, clones, trims and deletes in a loop, one durable
commit per step, and reports on stdout what the pool must hold.

Before each commit it prints {"maybe": STATE} (the commit may or may not land if killed now);
after it, {"durable": STATE}. STATE maps each VM to the xxh3-64 of its whole content.
Run: python tests/crash_writer.py POOL SEED
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import xxhash

from engine.pool import Pool

SIZE = 96 * 4096 + 1000


def state(model: dict[str, bytearray]) -> dict[str, str]:
    return {name: xxhash.xxh64_hexdigest(bytes(data)) for name, data in model.items()}


def say(kind: str, model) -> None:
    print(json.dumps({kind: state(model)}), flush=True)


def main(path: str, seed: int) -> None:
    rng = random.Random(seed)
    pool = Pool.open(path)
    model = {name: bytearray(pool.read(name, 0, pool.vm_size(name))) for name in pool.vm_names()}
    say("durable", model)
    patterns = [bytes([i]) * 4096 for i in range(1, 5)]
    # Beside the pool, in the test's own directory: killed -9, this writer removes nothing.
    image = open(Path(path).parent / f"crash-image-{seed}", "w+b")
    step = 0
    while True:
        step += 1
        name = f"s{seed}-{step}"
        op = rng.choice(["write", "write", "write", "trim", "clone", "delete", "import"])
        if not model or op == "import":
            data = b"".join(rng.choice([*patterns, rng.randbytes(4096)]) for _ in range(96))
            data += rng.randbytes(1000)
            image.seek(0)
            image.truncate()
            image.write(data)
            image.flush()
            model[name] = bytearray(data)
            say("maybe", model)
            pool.import_image(name, image.name)
        elif op == "write":
            vm = rng.choice(sorted(model))
            offset = rng.randrange(SIZE)
            n = min(rng.randrange(1, 64 * 4096), SIZE - offset)
            data = (rng.choice(patterns) * 65)[:n] if rng.random() < 0.5 else rng.randbytes(n)
            pool.write(vm, offset, data)
            model[vm][offset:offset + n] = data
            say("maybe", model)
            pool.flush()
        elif op == "trim":
            vm = rng.choice(sorted(model))
            offset = rng.randrange(SIZE)
            n = rng.randrange(1, SIZE - offset + 1)
            pool.trim(vm, offset, n)
            model[vm][offset:offset + n] = bytes(n)
            say("maybe", model)
            pool.flush()
        elif op == "clone" and len(model) < 8:
            source = rng.choice(sorted(model))
            model[name] = bytearray(model[source])
            say("maybe", model)
            pool.clone(source, name)
        elif op == "delete" and len(model) > 2:
            vm = rng.choice(sorted(model))
            del model[vm]
            say("maybe", model)
            pool.delete(vm)
        else:
            continue
        say("durable", model)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
