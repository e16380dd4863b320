"""A fuzz test of damaged pools (issue 15.6): a pool's files are damaged at random (truncated,
bytes flipped, deleted, two swapped, a range zeroed), then opened read-only and for writing.
Every open either refuses with one clear line or serves only correct bytes: a block read back is
what was written before the damage, or an error (a rotten block is never wrong data).

Bytes flipped or zeroed inside catalog.db are left out: its block-table pages carry no checksum,
so such a flip can point a table entry at another sound block (see ARCHITECTURE.md, "A damaged
pool"). Its damage here is what sqlite or the open can tell: truncated, deleted, swapped, a
garbage header.
"""

from __future__ import annotations

import os
import random
import shutil

import pytest

from engine.errors import BlockfoldError
from engine.pool import Pool

BS = 4096
SEEDS = int(os.environ.get("FUZZ_SEEDS", 40))
SLOT_FILES = ("blocks.dat", "hashes.dat")
FILES = (*SLOT_FILES, "catalog.db")


def image(rng: random.Random, blocks: int) -> bytes:
    """Random blocks, some repeated (shared slots) and some zeros (no slot)."""
    pool_of = [rng.randbytes(BS) for _ in range(blocks // 3)]
    return b"".join(bytes(BS) if rng.random() < 0.15 else
                    rng.choice(pool_of) if rng.random() < 0.3 else rng.randbytes(BS)
                    for _ in range(blocks))


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A pool and what each of its VMs holds: an imported image, a clone written over, and
    another image."""
    rng = random.Random(6)
    base = tmp_path_factory.mktemp("fuzz")
    pool_dir = Pool.create(base / "pool")
    expected = {}
    with Pool.open(pool_dir) as pool:
        for name, blocks in (("golden", 96), ("other", 64)):
            data = image(rng, blocks)
            (base / f"{name}.raw").write_bytes(data)
            pool.import_image(name, str(base / f"{name}.raw"))
            expected[name] = data
        pool.clone("golden", "desk")
        desk = bytearray(expected["golden"])
        for _ in range(30):
            offset = rng.randrange(0, len(desk) - 3 * BS)
            data = rng.randbytes(rng.choice([BS, 100, 3 * BS]))
            pool.write("desk", offset, data)
            desk[offset:offset + len(data)] = data
        expected["desk"] = bytes(desk)
    return pool_dir, expected


def damage(pool_dir, rng: random.Random) -> list[str]:
    """One to three random damages; returns what was done."""
    done = []
    for _ in range(rng.randint(1, 3)):
        name = rng.choice(FILES)
        path = pool_dir / name
        if not path.exists():
            continue
        size = path.stat().st_size
        kinds = ["truncate", "delete", "swap"] + (["flip", "zero"] if name in SLOT_FILES
                                                  else ["header"])
        kind = rng.choice(kinds)
        if kind == "truncate":
            cut = rng.choice([0, rng.randrange(size + 1), rng.randrange(size // BS + 1) * BS])
            os.truncate(path, cut)
        elif kind == "delete":
            path.unlink()
        elif kind == "swap":
            other = pool_dir / rng.choice([f for f in FILES if f != name])
            if other.exists():
                tmp = pool_dir / "swap.tmp"
                path.rename(tmp)
                other.rename(path)
                tmp.rename(other)
        elif kind in ("flip", "header"):
            with open(path, "r+b") as f:
                for _ in range(rng.randint(1, 5)):
                    at = rng.randrange(max(size, 1)) if kind == "flip" else rng.randrange(100)
                    f.seek(at)
                    byte = f.read(1) or b"\0"
                    f.seek(at)
                    f.write(bytes([byte[0] ^ (1 << rng.randrange(8))]))
        else:
            start = rng.randrange(max(size, 1))
            with open(path, "r+b") as f:
                f.seek(start)
                f.write(bytes(min(rng.randrange(1, 4 * BS), size - start)))
        done.append(f"{kind} {name}")
    return done


def served_correctly(pool_dir, expected: dict[str, bytes], readonly: bool) -> str:
    """Opens the pool; every block read is right or an error. Returns "refused" or "served"."""
    try:
        pool = Pool.open(pool_dir, readonly=readonly)
    except BlockfoldError as e:
        assert str(e) and "\n" not in str(e), repr(e)
        return "refused"
    try:
        assert sorted(pool.vm_names()) == sorted(expected)
        for name, data in expected.items():
            assert pool.vm_size(name) == len(data)
            for offset in range(0, len(data), BS):
                try:
                    got = pool.read(name, offset, BS)
                except BlockfoldError as e:
                    assert "\n" not in str(e)
                    continue
                assert got == data[offset:offset + BS], f"wrong bytes at {name}:{offset}"
    finally:
        try:
            pool.close()
        except BlockfoldError as e:
            assert "\n" not in str(e)
    return "served"


@pytest.mark.parametrize("seed", range(SEEDS))
def test_a_damaged_pool_refuses_or_serves_only_correct_bytes(written, tmp_path, seed):
    source, expected = written
    pool_dir = tmp_path / "pool"
    shutil.copytree(source, pool_dir)
    rng = random.Random(seed)
    done = damage(pool_dir, rng)
    for readonly in (True, False):
        try:
            served_correctly(pool_dir, expected, readonly)
        except AssertionError as e:
            raise AssertionError(f"after {done} ({'read-only' if readonly else 'writable'}):"
                                 f" {e}") from e
