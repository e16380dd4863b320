"""Shared fixtures: real pools in tmp dirs, and the real `blockfold` CLI in a subprocess."""

from __future__ import annotations

import compileall
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from engine.pool import Pool

ROOT = Path(__file__).resolve().parent.parent
# pytest keeps the assertion-rewritten test modules in __pycache__ only where bytecode may be
# written: under our shells' PYTHONDONTWRITEBYTECODE each run (each xdist worker) rewrote and
# compiled every test module again, 9 s of collection instead of 2.6 s.
sys.dont_write_bytecode = False
# Where the tests' temporary files go unless TMPDIR says otherwise: a tmpfs, so that the pools'
# fsyncs (every commit, every flush) return at once instead of queueing on a disk other tenants
# share; on ext4 under load they were two thirds of test_model's time. A process killed -9 leaves
# its writes in the page cache either way, which is all the crash tests rely on.
# Short: tmux's and the services' Unix sockets live under tmp_path, and a socket's path has
# 107 bytes at most (/dev/shm/blockfold-tests made test_ssh_console's 108).
TMPFS_TMPDIR = Path("/dev/shm/bf")
TMPFS_ROOM = 4 << 30        # bytes free on it that the suite wants, with room to spare


def pytest_configure(config):
    """Bytecode for the project's modules, and TMPDIR on TMPFS_TMPDIR for pytest's tmp_path,
    tempfile and every subprocess (xdist's workers included: they start after this, with this
    environment)."""
    if hasattr(config, "workerinput"):
        return
    # Each test starts CLI, node and server subprocesses by the thousand; where nothing writes
    # .pyc files (PYTHONDONTWRITEBYTECODE, as in our shells), each compiled the ~40 project
    # modules it imports again: 0.04 s of CPU of the 0.2 s a `vm ls` takes. Up to date: 0.1 s.
    for package in ("engine", "console", "widgets", "tests"):
        compileall.compile_dir(ROOT / package, quiet=1)
    if "TMPDIR" in os.environ:
        return
    if not (os.path.ismount("/dev/shm") and os.access("/dev/shm", os.W_OK)):
        return
    room = os.statvfs("/dev/shm")
    if room.f_bavail * room.f_frsize < TMPFS_ROOM:     # a container's 64 MiB default, say
        return
    TMPFS_TMPDIR.mkdir(exist_ok=True)
    TMPFS_TMPDIR.chmod(0o1777)      # like /tmp: test_service's users other than root pass through
    os.environ["TMPDIR"] = str(TMPFS_TMPDIR)
    tempfile.tempdir = None         # gettempdir() may have cached /tmp already


def run_cli(*args, input: bytes | None = None, env: dict | None = None,
            check: bool = False) -> subprocess.CompletedProcess:
    """Runs `blockfold ARGS` as a user would, returning the finished process (text output)."""
    full_env = dict(os.environ, **(env or {}))
    # No input: stdin is /dev/null, not the xdist worker's (execnet's channel), so a command
    # that confirms without -y refuses rather than reading the worker's stdin.
    stdin = subprocess.DEVNULL if input is None else None
    proc = subprocess.run([sys.executable, "-m", "console", *map(str, args)], cwd=ROOT,
                          input=input, stdin=stdin, capture_output=True, env=full_env,
                          timeout=120)
    proc.stdout_text = proc.stdout.decode(errors="replace")
    proc.stderr_text = proc.stderr.decode(errors="replace")
    if check and proc.returncode != 0:
        raise AssertionError(f"blockfold {' '.join(map(str, args))} failed "
                             f"({proc.returncode}): {proc.stderr_text}")
    return proc


def cli_json(*args, **kw):
    return json.loads(run_cli(*args, "--json", check=True, **kw).stdout)


@pytest.fixture(scope="session")
def etcd_url(tmp_path_factory) -> str | None:
    """The client URL of one etcd member for this pytest process (each xdist worker has its
    own: starting one per cluster would cost 0.7 s each), shared by the clusters its tests make,
    each under its own key prefix; None when there is no `etcd` binary."""
    from engine.cluster import etcd_member
    if shutil.which(etcd_member.BINARY) is None:
        yield None
        return
    path = tmp_path_factory.mktemp("etcd")
    member = etcd_member.create(path)
    etcd_member.start(path, member, fresh=True)
    try:
        yield member.endpoints[0]
    finally:
        etcd_member.stop(member)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def etcd(etcd_url) -> str:
    """etcd_url, for a test that needs etcd: skipped when there is none."""
    if etcd_url is None:
        pytest.skip("no `etcd` binary: install Debian's etcd-server")
    return etcd_url


@pytest.fixture
def small_fs(tmp_path):
    """Mounts a tmpfs of the size asked (MiB) under tmp_path; unmounted after."""
    mounted = []

    def mount(mib: int) -> Path:
        mnt = tmp_path / f"fs{len(mounted)}"
        mnt.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(mnt)],
                          capture_output=True).returncode != 0:
            pytest.skip("needs root to mount a small tmpfs")
        mounted.append(mnt)
        return mnt

    yield mount
    for mnt in mounted:
        subprocess.run(["umount", "-l", str(mnt)])


@pytest.fixture
def pool_dir(tmp_path) -> Path:
    return Pool.create(tmp_path / "pool")


@pytest.fixture
def server(pool_dir):
    """start(*extra) -> an `nbd serve` of pool_dir (tests.nbdclient.Server); all stopped after."""
    from tests.nbdclient import servers     # here: tests.nbdclient imports this module
    with servers(pool_dir) as start:
        yield start


@pytest.fixture
def pool(pool_dir):
    p = Pool.open(pool_dir)
    yield p
    p.close()
