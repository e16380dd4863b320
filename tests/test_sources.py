"""Sources that never end or never open (issue 15.4): an import takes a regular file, a block
device or stdin and refuses anything else at once (a FIFO with no writer never hangs it); `vm
write` reads at most what the VM can hold from its offset, so /dev/zero is refused with nothing
changed."""

from __future__ import annotations

import os
import subprocess

import pytest

from engine.api import LocalAdmin, create_pool
from tests.conftest import cli_json, run_cli
from tests.test_cli import unchanged

BS = 4096


@pytest.fixture
def vm_pool(tmp_path):
    pool = create_pool(tmp_path / "pool")          # in this process: two CLIs cost seconds
    image = tmp_path / "a.raw"
    image.write_bytes(os.urandom(16 * BS))
    with LocalAdmin.open(pool) as admin:
        admin.import_image("a", str(image))
    return pool, image


def test_a_fifo_with_no_writer_is_refused_at_once(vm_pool, tmp_path):
    pool, image = vm_pool
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    before = unchanged(pool)
    proc = run_cli("-p", pool, "vm", "import", "x", fifo)       # run_cli times out at 120 s
    assert proc.returncode == 1
    assert proc.stderr_text.strip() == (f"blockfold: error: image {fifo} is not a regular file "
                                        "or a block device: give one, or - to read stdin")
    assert unchanged(pool) == before
    run_cli("-p", pool, "vm", "import", "b", image, check=True)      # nothing was left held
    # A character device is no image either.
    proc = run_cli("-p", pool, "vm", "import", "z", "/dev/zero")
    assert proc.returncode == 1 and "not a regular file or a block device" in proc.stderr_text


def test_vm_write_reads_no_more_than_the_vm_holds(vm_pool, tmp_path):
    pool, _ = vm_pool
    before = unchanged(pool)
    proc = run_cli("-p", pool, "vm", "write", "a", "--offset", "0", "/dev/zero")
    assert proc.returncode == 1
    assert proc.stderr_text.strip() == ("blockfold: error: /dev/zero would write past the end of"
                                        f" VM a ({16 * BS} bytes) from offset 0: nothing written")
    proc = run_cli("-p", pool, "vm", "write", "a", "--offset", str(16 * BS - 10), "-",
                   input=b"x" * 11)
    assert proc.returncode == 1 and "would write past the end of VM a" in proc.stderr_text
    assert unchanged(pool) == before
    run_cli("-p", pool, "vm", "write", "a", "--offset", str(16 * BS - 10), "-", input=b"y" * 10,
            check=True)
    out = tmp_path / "out.raw"
    run_cli("-p", pool, "vm", "export", "a", out, check=True)
    assert out.read_bytes()[-10:] == b"y" * 10
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    proc = run_cli("-p", pool, "vm", "write", "a", "--offset", "0", fifo)   # no writer: empty
    assert proc.returncode == 0 and "wrote 0 B to a" in proc.stdout_text


def test_a_block_device_is_imported(vm_pool, tmp_path):
    pool, image = vm_pool
    proc = subprocess.run(["losetup", "--find", "--show", "--read-only", str(image)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"needs root and a free loop device: {proc.stderr.strip()}")
    device = proc.stdout.strip()
    try:
        run_cli("-p", pool, "vm", "import", "dev", device, check=True)
    finally:
        subprocess.run(["losetup", "--detach", device])
    out = tmp_path / "dev.raw"
    run_cli("-p", pool, "vm", "export", "dev", out, check=True)
    assert out.read_bytes() == image.read_bytes()
    assert cli_json("-p", pool, "stats")["unique_blocks"] == 16        # shared with a


def test_vm_write_from_a_directory_is_one_line_naming_it(vm_pool, tmp_path):
    pool, _ = vm_pool
    before = unchanged(pool)
    proc = run_cli("-p", pool, "vm", "write", "a", "--offset", "0", tmp_path)
    assert proc.returncode == 1
    assert proc.stderr_text == f"blockfold: error: cannot read {tmp_path}: it is a directory\n"
    assert unchanged(pool) == before
