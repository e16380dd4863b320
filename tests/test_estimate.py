"""`blockfold estimate`: without writing, the blocks each image would add and the dedup ratio
after importing them all, equal to what importing them then reaches (the same block size, the
same pool), with duplicates within and across the images, a pool that holds some of them
already, a qcow2, and through a running service."""

from __future__ import annotations

import json
import os
import subprocess
import time

import numpy as np
import pytest

from engine import _native
from engine.api import LocalAdmin, estimate
from engine.pool import Pool
from tests.conftest import run_cli
from tests.serviceproc import Served

BS = 4096


def image(path, blocks: list[int], tail: int = 0) -> None:
    """Blocks filled from `blocks` (0: zeros, n: block pattern n), and `tail` bytes more."""
    patterns = {n: np.random.default_rng(n).integers(0, 256, BS, dtype=np.uint8).tobytes()
                for n in set(blocks)}
    patterns[0] = bytes(BS)
    path.write_bytes(b"".join(patterns[n] for n in blocks) + patterns[blocks[-1]][:tail])


@pytest.mark.parametrize("served", [False, True], ids=["direct", "served"])
def test_the_estimate_is_the_ratio_an_import_reaches(pool_dir, tmp_path, served):
    image(tmp_path / "old.raw", [1, 2, 3, 0, 0, 4])
    image(tmp_path / "a.raw", [1, 5, 5, 6, 0, 7, 5], tail=1000)      # dups within, with the pool
    image(tmp_path / "b.raw", [6, 7, 8, 8, 0, 0, 9, 1])               # dups across, and within
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", tmp_path / "b.raw",
                    tmp_path / "b.qcow2"], check=True)
    service = Served(["-p", str(pool_dir)]) if served else None
    try:
        def cli(*args):
            return run_cli("-p", pool_dir, *args, check=True)
        cli("vm", "import", "old", tmp_path / "old.raw")
        before = cli("vm", "ls", "--json").stdout, cli("events", "--json").stdout
        est = json.loads(cli("estimate", tmp_path / "a.raw", tmp_path / "b.qcow2",
                             "--json").stdout)
        assert (cli("vm", "ls", "--json").stdout, cli("events", "--json").stdout) == before
        assert [(i["data_blocks"], i["known_blocks"], i["new_blocks"])
                for i in est["images"]] == [(7, 1, 4), (6, 1, 2)]
        assert est["new_blocks"] == 6 and est["pool_unique_blocks"] == 4
        cli("vm", "import", "a", tmp_path / "a.raw")
        cli("vm", "import", "b", tmp_path / "b.qcow2")
        stats = json.loads(cli("stats", "--json").stdout)
        assert stats["unique_blocks"] == est["unique_blocks"] == 10
        assert sum(vm["logical_blocks"] for vm in stats["vms"]) == est["logical_blocks"]
        # (a's last block holds 1000 bytes of its disk, and counts as those bytes)
        assert stats["logical_bytes"] == est["logical_blocks"] * BS - (BS - 1000)
        assert stats["dedup_ratio"] == est["dedup_ratio"]
    finally:
        if service is not None:
            service.stop()


def test_the_core_looks_fingerprints_up_without_writing(pool_dir):
    with Pool.open(pool_dir) as pool:
        pool.create_vm("v", 4 * BS)
        data = bytes([1]) * BS + bytes([2]) * BS
        pool.write("v", 0, data)
        digests = _native.fingerprints(data + bytes([9]) * BS, BS)
        assert pool.core.known(digests) == b"\x01\x01\x00"
        assert pool.core.known(b"") == b""
        with pytest.raises(_native.OutOfRangeError):
            pool.core.known(b"x" * 17)
        assert pool.stats()["unique_blocks"] == 2


def test_the_estimate_table_reads_figures_as_everywhere_else(pool_dir, tmp_path):
    """Counts with separators, as every other command and screen gives them (it printed 2048)."""
    (tmp_path / "big.raw").write_bytes(os.urandom(2048 * BS))
    out = run_cli("-p", pool_dir, "estimate", tmp_path / "big.raw", check=True).stdout_text
    row = next(line for line in out.splitlines() if line.startswith(str(tmp_path / "big.raw")))
    assert row.split()[-3:] == ["2,048", "0", "2,048"], row
    assert "new blocks      2,048 (8.0 MiB)" in out
    assert "dedup ratio     1.00x now, 1.00x after importing them" in out


def test_the_estimate_reports_bytes_over_all_its_images(pool_dir, tmp_path):
    """Its progress counts bytes from the first image's start to the last one's end, never going
    back at the second image (it went back to the second one's own offsets), at a rate."""
    image(tmp_path / "a.raw", list(range(1, 301)))
    image(tmp_path / "b.raw", list(range(301, 401)))
    reports = []

    def slow(p):            # a report at every chunk: each comes over the Meter's interval
        reports.append(p)
        time.sleep(0.11)
    with LocalAdmin.open(pool_dir) as admin:
        estimate(admin, [str(tmp_path / "a.raw"), str(tmp_path / "b.raw")], slow)
    done = [p.done for p in reports]
    assert len(done) >= 3 and done == sorted(done), done
    assert done[-1] == reports[-1].total == 400 * BS and reports[-1].bytes_per_s > 0
