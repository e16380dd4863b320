"""The benchmarks' image set: byte-identical when rebuilt, and shared at 4 KiB as VDI disks are.

The benchmarks themselves are not run by `make test`; `python -m tests.bench.run_all --quick`
checks that they all run.
"""

import hashlib
import os

import pytest
import xxhash

from tests.bench import imageset

SMALL = {"golden_mib": 4, "variants": 2, "unique_mib": 1, "modified_pct": 3.0, "seed": 7}


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def blocks(path) -> set[bytes]:
    data = memoryview(path.read_bytes())
    found = {xxhash.xxh3_128_digest(data[i:i + 4096]) for i in range(0, len(data), 4096)}
    found.discard(xxhash.xxh3_128_digest(bytes(4096)))
    return found


@pytest.mark.slow
def test_the_image_set_is_reproducible_cached_and_shares_golden_blocks(tmp_path):
    images, manifest = imageset.build(tmp_path / "a", **SMALL)
    rebuilt, _ = imageset.build(tmp_path / "b", **SMALL)
    assert [p.name for p in images] == ["golden.raw", "desk-1.raw", "desk-2.raw"]
    assert [digest(p) for p in images] == [digest(p) for p in rebuilt]
    assert manifest["cached"] is False
    again, cached = imageset.build(tmp_path / "a", **SMALL)
    assert cached["cached"] is True and again == images

    golden, one, two = (blocks(p) for p in images)
    assert len(golden & one) > 0.6 * len(golden)     # the golden files are 4 KiB aligned
    assert one - golden and two - golden and one - golden != two - golden
    assert all(os.path.getsize(p) == os.path.getsize(images[0]) for p in images)
