"""A `vm export` run with no service opens the pool read-only and reads the VM's top as it is:
a writer that opened the pool meanwhile (a service started during the export, whose NBD client
rewrote the VM) tore it (verifier finding N2: the first 2 MiB old, the rest new, exit 0). The
export now holds a shared lock on DIR/lock (engine/lock.py ReadLock) that refuses writers'
opens, naming its pid, and is refused itself while a writer holds the pool.
"""

from __future__ import annotations

import os
import random
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.errors import PoolLockedError, RefusedError
from engine.localadmin import LocalAdmin
from engine.pool import Pool
from tests.conftest import ROOT, cli_json, run_cli
from tests.serviceproc import Served

SIZE = 16 << 20


@pytest.fixture
def image(pool_dir, tmp_path) -> bytes:
    """VM `w`, SIZE bytes of random data (returned)."""
    data = random.Random(21).randbytes(SIZE)
    (tmp_path / "w.raw").write_bytes(data)
    run_cli("-p", pool_dir, "vm", "import", "w", tmp_path / "w.raw", check=True)
    return data


def cli(*args, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "console", *map(str, args)], cwd=ROOT,
                            **{"stdin": subprocess.DEVNULL, **popen})


def ended(proc: subprocess.Popen, timeout: float) -> tuple[int | None, str]:
    """(exit status, stderr) once `proc` ends within `timeout` s; else it is killed: (None,
    stderr)."""
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate(timeout=30)
        return None, err
    return proc.returncode, err


def lock_taken_by_other_process(pool_dir: Path) -> str:
    """What a writer's open of the pool in another process says: "" if it got the pool."""
    code = ("import sys; from pathlib import Path; from engine.lock import PoolLock\n"
            "try: PoolLock(Path(sys.argv[1])).release()\n"
            "except Exception as e: print(e)")
    return subprocess.run([sys.executable, "-c", code, str(pool_dir)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=True).stdout.strip()


def test_a_service_started_during_a_cli_export_is_refused_and_the_export_is_the_vm_then(
        pool_dir, image, tmp_path):
    export = cli("-p", pool_dir, "vm", "export", "w", "-", stdout=subprocess.PIPE,
                 stderr=subprocess.PIPE)
    try:
        # The first bytes come once the export holds the VM; the pipe then holds it back.
        ready, _, _ = select.select([export.stdout], [], [], 60)
        assert ready, "the export wrote nothing"
        head = os.read(export.stdout.fileno(), 65536)
        serve = cli("-p", pool_dir, "serve", "--nbd", "127.0.0.1:0", stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, text=True)
        status, err = ended(serve, 20)
        assert status == 1, f"serve started beside the export: {err}"
        assert err.strip() == (f"blockfold: error: pool {pool_dir} is being read by pid"
                               f" {export.pid} (a `vm export`): try again when it ends")
        # A short writer waits for the pool a while, then is refused the same way.
        (tmp_path / "x.raw").write_bytes(b"\x5a" * 65536)
        wrote = run_cli("-p", pool_dir, "vm", "write", "w", tmp_path / "x.raw", "--offset", "0")
        assert wrote.returncode == 1 and f"being read by pid {export.pid}" in wrote.stderr_text
        # Openers that only look take no lock: they go on beside it.
        assert [vm["name"] for vm in cli_json("-p", pool_dir, "vm", "ls")] == ["w"]
        rest, err = export.communicate(timeout=120)
    finally:
        if export.poll() is None:
            export.kill()
            export.communicate()
    assert export.returncode == 0, err
    assert head + rest == image
    # Once the export has ended, the pool is free.
    Served(["-p", str(pool_dir)]).stop()


def test_a_cli_export_while_another_process_writes_the_pool_is_refused_in_one_line(
        pool_dir, image, tmp_path):
    importer = cli("-p", pool_dir, "vm", "import", "v", "-", stdin=subprocess.PIPE,
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        importer.stdin.write(b"\x11" * (1 << 20))
        importer.stdin.flush()
        deadline = time.monotonic() + 60
        while (pool_dir / "lock").read_text().split("\n")[0] != str(importer.pid):
            assert time.monotonic() < deadline and importer.poll() is None, "no import began"
            time.sleep(0.05)
        out = tmp_path / "out.raw"
        proc = run_cli("-p", pool_dir, "vm", "export", "w", out)
        assert proc.returncode == 1
        assert proc.stderr_text == (
            f"blockfold: error: pool {pool_dir} is being written by pid {importer.pid}: export"
            f" through its service (`blockfold serve`), or when it ends\n")
        assert not out.exists()
    finally:
        importer.stdin.close()
        assert importer.wait(timeout=60) == 0
    run_cli("-p", pool_dir, "vm", "export", "w", out, check=True)
    assert out.read_bytes() == image


def test_an_export_of_a_pool_written_since_it_was_opened_here_is_refused(pool_dir, image,
                                                                          tmp_path):
    with LocalAdmin.open(pool_dir, readonly=True) as admin:
        run_cli("-p", pool_dir, "vm", "clone", "w", "x", check=True)
        with pytest.raises(RefusedError, match="was written by another process after this one"
                                               " opened it: run the export again"):
            admin.export("w", str(tmp_path / "out.raw"))
    assert lock_taken_by_other_process(pool_dir) == ""


def test_exports_in_one_process_share_the_read_lock_until_the_last_ends(pool_dir, image):
    with Pool.open(pool_dir, readonly=True) as pool:
        with pool.frozen("w"):
            with pool.frozen("w"):
                pass
            # The inner export's end kept the outer one's lock (one descriptor for both).
            assert lock_taken_by_other_process(pool_dir) == (
                f"pool {pool_dir} is being read by pid {os.getpid()} (a `vm export`): try"
                f" again when it ends")
        assert lock_taken_by_other_process(pool_dir) == ""


def test_a_read_only_export_beside_this_process_own_writer_is_refused(pool_dir, image):
    with Pool.open(pool_dir) as writer, Pool.open(pool_dir, readonly=True) as reader:
        with (pytest.raises(PoolLockedError, match=f"being written by pid {os.getpid()}"),
              reader.frozen("w")):
            pass
        # A read lock beside it would have made the writer's lock a shared one.
        assert lock_taken_by_other_process(pool_dir) == (
            f"pool {pool_dir} is in use by another process (pid {os.getpid()})")
        writer.write("w", 0, b"\1" * 4096)
