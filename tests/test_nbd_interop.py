"""Real NBD clients against `blockfold nbd serve`, on VMs of every size `vm import` accepts: a few
bytes, sizes that are no multiple of 512 or of the block size, exactly one block, several pages of
block table with many extents, mostly holes, and nothing but holes.

Clients: qemu-img (convert, compare), nbdcopy (which skips holes by block status), nbdinfo (--map,
--can), and nbdkit's log filter as a proxy that records every request nbdcopy makes.
"""

from __future__ import annotations

import json
import random
import re

import pytest

from engine.api import LocalAdmin, create_pool
from tests.nbdclient import MiB, servers, tool

BS = 4096
PAGE = 512 * BS         # the bytes one block-table page maps


def images() -> dict[str, bytes]:
    rng = random.Random(13)
    many = bytearray(3 * PAGE + 5 * BS)
    golden = [rng.randbytes(BS) for _ in range(8)]
    for lbn in range(0, len(many) // BS, 7):            # every 7th block, some of them alike
        many[lbn * BS:(lbn + 1) * BS] = rng.choice(golden) if lbn % 3 else rng.randbytes(BS)
    holes = bytearray(8 * MiB + 512)
    holes[:64 << 10] = rng.randbytes(64 << 10)
    holes[3 * MiB:4 * MiB] = rng.randbytes(MiB)
    holes[-512:] = rng.randbytes(512)
    return {
        "few-bytes": b"hello",
        "odd": rng.randbytes(BS) + bytes(BS) + rng.randbytes(BS + 1000),     # 3 blocks + 1000
        "one-block": rng.randbytes(BS),
        "pages": bytes(many),
        "holes": bytes(holes),
        "all-holes": bytes(MiB),
    }


IMAGES = images()


def expected_map(data: bytes) -> list[tuple[int, int, int]]:
    """(offset, length, type) runs: 3 (hole, zero) where a block is all zeros, else 0 (data)."""
    runs: list[list[int]] = []
    for offset in range(0, len(data), BS):
        block = data[offset:offset + BS]
        kind = 0 if block.count(0) != len(block) else 3
        if runs and runs[-1][2] == kind:
            runs[-1][1] += len(block)
        else:
            runs.append([offset, len(block), kind])
    return [tuple(r) for r in runs]


def nbdinfo_map(uri: str) -> list[tuple[int, int, int]]:
    runs: list[list[int]] = []
    for e in json.loads(tool("nbdinfo", "--map", "--json", uri).stdout):
        if runs and runs[-1][2] == e["type"] and runs[-1][0] + runs[-1][1] == e["offset"]:
            runs[-1][1] += e["length"]      # the same state, sent in two replies
        else:
            runs.append([e["offset"], e["length"], e["type"]])
    return [tuple(r) for r in runs]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """One pool holding every image as a VM, and a blank VM of each size; one server."""
    root = tmp_path_factory.mktemp("interop")
    pool_dir = create_pool(root / "pool")
    with LocalAdmin.open(pool_dir) as admin:
        for name, data in IMAGES.items():
            (root / f"{name}.raw").write_bytes(data)
            admin.import_image(name, str(root / f"{name}.raw"))
            with open(root / f"blank-{name}.raw", "wb") as f:
                f.truncate(len(data))
            admin.import_image(f"blank-{name}", str(root / f"blank-{name}.raw"))
    with servers(pool_dir) as start:
        yield start(), root


@pytest.mark.parametrize("name", IMAGES)
def test_qemu_img_and_nbdcopy_read_every_size_byte_exact(exports, name):
    s, root = exports
    image = root / f"{name}.raw"
    data = IMAGES[name]
    assert "identical" in tool("qemu-img", "compare", "-f", "raw", "-F", "raw", image,
                               s.uri(name)).stdout
    tool("qemu-img", "convert", "-f", "raw", "-O", "raw", s.uri(name), root / f"{name}.qemu")
    # qemu sees whole 512-byte sectors: the tail it adds reads as zeros
    out = (root / f"{name}.qemu").read_bytes()
    assert out[:len(data)] == data and not out[len(data):].strip(b"\0")
    assert len(out) == -(-len(data) // 512) * 512
    tool("nbdcopy", s.uri(name), root / f"{name}.nbdcopy")
    assert (root / f"{name}.nbdcopy").read_bytes() == data


@pytest.mark.parametrize("name", IMAGES)
def test_nbdinfo_maps_the_holes_of_every_size(exports, name):
    s, _ = exports
    uri = s.uri(name)
    assert nbdinfo_map(uri) == expected_map(IMAGES[name])
    for feature in ("structured-reply", "df", "zero", "trim", "flush", "fua", "multi-conn"):
        tool("nbdinfo", "--can", feature, uri)
    info = json.loads(tool("nbdinfo", "--json", uri).stdout)
    export = info["exports"][0]
    assert info["protocol"] == "newstyle-fixed" and info["structured"] is True
    assert export["export-size"] == len(IMAGES[name])
    assert export["contexts"] == ["base:allocation"]
    assert export["block_size_preferred"] == BS


@pytest.mark.parametrize("name", IMAGES)
def test_nbdcopy_reads_only_the_blocks_that_hold_data(exports, name, tmp_path):
    """nbdkit's log filter sits between nbdcopy and the server and records each READ: with one
    block per request, nbdcopy reads exactly the blocks that hold data, and skips the holes."""
    s, root = exports
    data = IMAGES[name]
    log = tmp_path / "requests.log"
    out = tmp_path / "copy.raw"
    tool("nbdkit", "-U", "-", "--filter=log", "nbd", f"uri={s.uri(name)}", f"logfile={log}",
         "--run", f'nbdcopy --request-size={BS} "$uri" {out}')
    assert out.read_bytes() == data
    reads = sorted(int(offset, 16) for offset in
                   re.findall(r" Read id=\d+ offset=(0x[0-9a-f]+) count=", log.read_text()))
    data_blocks = [offset for offset in range(0, len(data), BS)
                   if data[offset:offset + BS].count(0) != len(data[offset:offset + BS])]
    assert reads == data_blocks


@pytest.mark.parametrize("name", IMAGES)
def test_clients_write_every_size_and_zero_blocks_become_holes(exports, name, tmp_path):
    s, root = exports
    image = root / f"{name}.raw"
    target = s.uri(f"blank-{name}")
    if len(IMAGES[name]) % 512 == 0:
        tool("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", image, target)
    else:       # qemu writes whole 512-byte sectors, which would run past the export's end
        tool("nbdcopy", image, target)
    assert "identical" in tool("qemu-img", "compare", "-f", "raw", "-F", "raw", image,
                               target).stdout
    tool("nbdcopy", target, tmp_path / "back.raw")
    assert (tmp_path / "back.raw").read_bytes() == IMAGES[name]
    assert nbdinfo_map(target) == expected_map(IMAGES[name])


TiB = 1 << 40


def test_nbdinfo_maps_a_huge_sparse_vm_in_the_time_of_its_data(tmp_path):
    """A VM grown to 64 TiB past 3 MiB of data maps as one data extent and one hole, well within
    the tool's 60 s: block status walks the pages the VM's layers hold, not every block of its
    size (it took ~4.4 s a TiB, ~5 minutes here, before)."""
    data = random.Random(5).randbytes(3 * MiB)
    (tmp_path / "g.raw").write_bytes(data)
    pool_dir = create_pool(tmp_path / "pool")
    with LocalAdmin.open(pool_dir) as admin:
        admin.import_image("golden", str(tmp_path / "g.raw"))
        admin.clone("golden", "big")
        admin.resize("big", 64 * TiB)
    with servers(pool_dir) as start:
        s = start()
        n = len(data)
        assert nbdinfo_map(s.uri("big")) == [(0, n, 0), (n, 64 * TiB - n, 3)]
        assert "identical" in tool("qemu-img", "compare", "-f", "raw", "-F", "raw",
                                   tmp_path / "g.raw", s.uri("big")).stdout
