"""Desktops served and administered at once: qemu-img and fio write two VMs over NBD while the
CLI clones a hundred desktops, imports a new golden image and deletes an idle VM, all through
one service; then the same with the service killed (-9) in the middle."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from engine.api import LocalAdmin
from tests.conftest import ROOT, cli_json, run_cli
from tests.serviceproc import Served

MiB = 1 << 20
SIZE = 8 * MiB


def raw(path, seed: int, size: int = SIZE) -> bytes:
    rng = np.random.default_rng(seed)
    data = bytearray(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    data[size // 2:size // 2 + MiB] = data[:MiB]           # some repeats
    path.write_bytes(data)
    return bytes(data)


@pytest.fixture
def desktops(pool_dir, tmp_path):
    """golden (imported), and VMs a, b (its clones, written over NBD) and idle (one to delete);
    made in this process (four CLIs cost seconds: the tests' own commands run as CLIs)."""
    golden = raw(tmp_path / "golden.raw", 1)
    with LocalAdmin.open(pool_dir) as admin:
        admin.import_image("golden", str(tmp_path / "golden.raw"))
        for name in ("a", "b", "idle"):
            admin.clone("golden", name)
    return golden


def nbd_writers(s: Served, tmp_path) -> tuple[subprocess.Popen, subprocess.Popen, bytes]:
    """qemu-img converting an image into VM a, and a fio verify job on VM b."""
    image = raw(tmp_path / "a.raw", 2)
    convert = subprocess.Popen(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw",
                                str(tmp_path / "a.raw"), s.uri("a")], stderr=subprocess.PIPE,
                               text=True)
    fio = subprocess.Popen(["fio", "--name=b", "--ioengine=nbd", f"--uri={s.uri('b')}",
                            "--rw=randwrite", "--bs=4k", f"--size={SIZE}", "--iodepth=8",
                            "--verify=crc32c", "--verify_fatal=1", "--do_verify=1",
                            "--verify_state_save=0", "--output-format=json"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return convert, fio, image


def cli(pool_dir, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "console", "-p", str(pool_dir), *args],
                            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_desktops_are_served_while_the_pool_is_administered(pool_dir, desktops, tmp_path):
    new_golden = raw(tmp_path / "golden2.raw", 3)
    s = Served(["-p", str(pool_dir)], "--nbd", "127.0.0.1:0")
    try:
        convert, fio, image = nbd_writers(s, tmp_path)
        admin = [cli(pool_dir, "vm", "clone", "golden", "d", "--count", "100"),
                 cli(pool_dir, "vm", "import", "golden2", str(tmp_path / "golden2.raw")),
                 cli(pool_dir, "vm", "rm", "idle", "-y")]
        for proc in admin:
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err
        assert convert.wait(timeout=300) == 0, convert.stderr.read()
        out, err = fio.communicate(timeout=300)
        assert fio.returncode == 0, err
        job = json.loads(out[out.index("{"):])["jobs"][0]
        assert job["error"] == 0 and job["write"]["io_bytes"] == SIZE
        subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(tmp_path / "a.raw"),
                        s.uri("a")], check=True, timeout=120)
        names = [v["name"] for v in cli_json("-p", pool_dir, "vm", "ls")]
        assert len(names) == 104 and "idle" not in names and "golden2" in names
        assert run_cli("-p", pool_dir, "fsck", check=True).stdout_text.strip() == "clean"
    finally:
        s.stop()
    with LocalAdmin.open(pool_dir, readonly=True) as pool:
        assert pool.read("a", 0, SIZE) == image
        assert pool.read("golden2", 0, SIZE) == new_golden
        assert pool.read("d-57", 0, SIZE) == desktops
        assert pool.fsck() == []


def test_a_killed_service_loses_nothing_flushed(pool_dir, desktops, tmp_path):
    s = Served(["-p", str(pool_dir)], "--nbd", "127.0.0.1:0")
    convert, fio, image = nbd_writers(s, tmp_path)
    assert convert.wait(timeout=300) == 0           # qemu-img flushes before it exits
    raw(tmp_path / "golden2.raw", 3, 64 * MiB)
    clone = cli(pool_dir, "vm", "clone", "golden", "d", "--count", "100")
    importer = cli(pool_dir, "vm", "import", "golden2", str(tmp_path / "golden2.raw"))
    cloned = clone.wait(timeout=300) == 0
    time.sleep(0.5)                                 # the import, fio: mid-way
    s.kill()
    for proc in (importer, fio):
        proc.communicate(timeout=60)
    s = Served(["-p", str(pool_dir)])
    try:
        with LocalAdmin.open(pool_dir, readonly=True) as pool:
            assert pool.last_rebuild().reason == "crash"
        names = [v["name"] for v in cli_json("-p", pool_dir, "vm", "ls")]
        assert ("d-100" in names) == cloned and "idle" in names
        assert run_cli("-p", pool_dir, "fsck", check=True).stdout_text.strip() == "clean"
    finally:
        s.stop()
    with LocalAdmin.open(pool_dir, readonly=True) as pool:
        assert pool.read("a", 0, SIZE) == image
        assert pool.read("golden", 0, SIZE) == desktops
        if "golden2" in pool.vm_names():
            assert pool.read("golden2", 0, 64 * MiB) == (tmp_path / "golden2.raw").read_bytes()
        assert pool.fsck() == []
