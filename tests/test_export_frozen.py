"""`vm export` of a VM that a client writes meanwhile: the image is the VM as it was when the
export began (Pool.frozen), never blocks from several moments (brk7 #7 saw 7 generations).

The writer rewrites the VM pass after pass, each 64 KiB unit tagged with the number of its pass,
from both ends at once: unit 0, the last, unit 1, the one before it … So the VM at one moment
holds pass g+1 on as many units at its end as at its start (or one fewer) and g in between. An
export that reads front to back while the writer goes on sees the start earlier than the end: a
longer run at the end, or a pass more.
"""

from __future__ import annotations

import json
import os
import random
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from engine import _native, api
from engine.errors import CancelledError, RefusedError
from engine.localadmin import LocalAdmin
from engine.pool import Pool
from tests.conftest import ROOT, cli_json, run_cli
from tests.nbdclient import MiB, RawClient, tool

BS = 4096
SIZE = 16 * MiB
UNIT = 64 * 1024            # what the writer writes at a time
UNITS = SIZE // UNIT


def tagged(unit: int, generation: int) -> bytes:
    """One unit whose every 16 bytes say (its number, generation)."""
    return struct.pack("<QQ", unit, generation) * (UNIT // 16)


def generations(image: bytes) -> list[int]:
    """Each unit's pass; AssertionError if a unit holds two (a write torn in the middle)."""
    out = []
    for u in range(UNITS):
        tags = set(struct.iter_unpack("<QQ", image[u * UNIT:(u + 1) * UNIT]))
        assert len(tags) == 1 and next(iter(tags))[0] == u, f"unit {u} is torn: {tags}"
        out.append(next(iter(tags))[1])
    return out


def one_moment(gens: list[int]) -> bool:
    """Whether the VM held `gens` (each unit's pass) at one moment of the writer's."""
    low = min(gens)
    if set(gens) - {low, low + 1}:
        return False
    if len(set(gens)) == 1:
        return True
    front = next(i for i, g in enumerate(gens) if g == low)
    back = next(i for i, g in enumerate(reversed(gens)) if g == low)
    return set(gens[front:UNITS - back]) == {low} and back in (front, front - 1)


class Writer:
    """Rewrites the VM pass after pass from both ends (`write(offset, data)`), on a thread,
    until stopped; `started` is set once two passes are whole."""

    def __init__(self, write):
        self.write = write
        self.passes = 0
        self.started = threading.Event()
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                generation = self.passes + 1
                for i in range(UNITS // 2):
                    for unit in (i, UNITS - 1 - i):
                        self.write(unit * UNIT, tagged(unit, generation))
                self.passes = generation
                if generation >= 2:
                    self.started.set()
        except BaseException as e:      # noqa: BLE001 - told by end()
            self.error = e
            self.started.set()

    def end(self) -> int:
        """Stops it (bounded); returns the passes it made."""
        self.stop.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "the writer did not stop"
        assert self.error is None, self.error
        return self.passes


@pytest.fixture
def desk(pool_dir, tmp_path) -> Path:
    """VM `desk`, 16 MiB of random data."""
    image = tmp_path / "desk.raw"
    image.write_bytes(random.Random(7).randbytes(SIZE))
    with LocalAdmin.open(pool_dir) as admin:
        admin.import_image("desk", str(image))
    return image


def nbd_writer(port: int) -> Writer:
    client = RawClient(port, timeout=30)
    client.connect("desk")

    def write(offset: int, data: bytes) -> None:
        assert client.write(offset, data) == 0
    return Writer(write)


def as_raw(image: Path, format: str, tmp_path: Path) -> bytes:
    if format == "raw":
        return image.read_bytes()
    raw = tmp_path / "back.raw"
    tool("qemu-img", "convert", "-f", format, "-O", "raw", image, raw)
    return raw.read_bytes()


@pytest.mark.parametrize("format", ["raw", "qcow2"])
def test_export_beside_an_nbd_writer_is_the_vm_at_one_moment(pool_dir, desk, server, tmp_path,
                                                             format):
    served = server()
    writer = nbd_writer(served.port)
    assert writer.started.wait(60), "the writer made no two passes"
    before = writer.passes
    out = tmp_path / f"out.{format}"
    proc = run_cli("-p", pool_dir, "vm", "export", "desk", out)
    after = writer.end()
    assert proc.returncode == 0, proc.stderr_text
    assert after > before, "the export ran while the writer stood still: this proves nothing"
    gens = generations(as_raw(out, format, tmp_path))
    assert one_moment(gens), f"torn: passes {gens}"
    assert before <= min(gens) and max(gens) <= after + 1
    # The frozen state was a layer of the VM's own, merged back once the export ended: no VM,
    # no deeper chain, nothing fsck calls damage.
    assert [(vm["name"], vm["depth"]) for vm in cli_json("-p", pool_dir, "vm", "ls")] == [
        ("desk", 1)]
    served.stop()
    assert run_cli("-p", pool_dir, "fsck", check=True).stdout_text.strip() == "clean"


@pytest.mark.parametrize("format", ["raw", "qcow2", "vmdk"])
def test_export_from_a_pool_opened_here_beside_a_writer_is_one_moment(pool_dir, desk, tmp_path,
                                                                    format):
    # qcow2 and vmdk go through this process's own private NBD export of the frozen state.
    with LocalAdmin.open(pool_dir) as admin:
        writer = Writer(lambda offset, data: admin.write("desk", offset, data))
        assert writer.started.wait(60), "the writer made no two passes"
        out = tmp_path / f"out.{format}"
        api.export_disk(admin, "desk", str(out), format)
        writer.end()
        assert one_moment(generations(as_raw(out, format, tmp_path)))
        assert [(vm.name, vm.depth) for vm in admin.vms()] == [("desk", 1)]
        assert admin.fsck() == []


def test_the_frozen_state_outlives_writes_and_refuses_what_would_drop_it(pool_dir, desk):
    with Pool.open(pool_dir) as pool:
        pool.snapshot("desk", "s1")
        pool.write("desk", 0, tagged(0, 1))
        with pool.frozen("desk") as (view, size):
            assert size == SIZE
            pool.write("desk", 0, tagged(0, 2))
            pool.resize("desk", 2 * SIZE)
            assert pool.core.read(view, 0, UNIT) == tagged(0, 1)
            for change in (lambda: pool.delete("desk"), lambda: pool.rollback("desk", "s1")):
                with pytest.raises(RefusedError, match="VM desk is being exported"):
                    change()
            pool.snapshot_rm("desk", "s1")      # its layer is not the one the export reads
            assert pool.vm_names() == ["desk"] and pool.snapshots("desk") == []
        # The frozen layer merged back into the VM's top: one layer, as before.
        assert len(pool.graph.chain(pool.vm("desk").top)) == 1
        assert pool.read("desk", 0, UNIT) == tagged(0, 2) and pool.vm_size("desk") == 2 * SIZE
        assert pool.fsck() == []
        pool.delete("desk")


def test_a_cancelled_export_lets_its_frozen_state_go(pool_dir, desk, tmp_path):
    def cancel(progress):
        raise CancelledError("export cancelled")

    with Pool.open(pool_dir) as pool:
        pool.write("desk", 0, tagged(0, 1))
        with pytest.raises(CancelledError):
            pool.export("desk", str(tmp_path / "out.raw"), cancel)
        assert not (tmp_path / "out.raw").exists()
        assert len(pool.graph.chain(pool.vm("desk").top)) == 1
        pool.delete("desk")         # nothing holds its state any more
        assert pool.fsck() == []


CRASH = """
import os, sys
from engine.pool import Pool
pool = Pool.open(sys.argv[1])
with pool.frozen("desk"):
    pool.write("desk", 0, b"after" * 1000)
    pool.flush()
    os._exit(9)
"""


def test_a_crash_during_an_export_leaves_nothing_fsck_calls_damage(pool_dir, desk):
    proc = subprocess.run([sys.executable, "-c", CRASH, str(pool_dir)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 9, proc.stderr
    with Pool.open(pool_dir) as pool:
        assert pool.vm_names() == ["desk"] and pool.snapshots() == []
        assert pool.read("desk", 0, 5000) == b"after" * 1000
        assert pool.fsck() == []
        # The open after the crash folded the export's layer back, as its end would have:
        # the chain is as deep as before (it stayed one deeper until the VM's next delete).
        assert len(pool.graph.chain(pool.vm("desk").top)) == 1
        pool.delete("desk")
        assert pool.graph.layers() == [] and pool.fsck() == []


def test_a_clone_exported_when_its_pool_crashed_can_be_rebased_keeping_its_writes(pool_dir,
                                                                                  desk):
    """A clone whose export a crash cut is its base plus its top again once reopened: its
    writes (made before and during the export) are kept over a new golden, where a rebase
    --keep-writes was refused while the export's layer stood between."""
    with Pool.open(pool_dir) as pool:
        pool.rename("desk", "gold")
        pool.clone("gold", "desk")
        pool.write("desk", 8192, b"before" * 1000)
    proc = subprocess.run([sys.executable, "-c", CRASH, str(pool_dir)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 9, proc.stderr
    with Pool.open(pool_dir) as pool:
        assert len(pool.graph.chain(pool.vm("desk").top)) == 2        # its top, on its base
        pool.create_vm("new", pool.vm_size("gold"))
        pool.write("new", 4 * 8192, b"new" * 1000)
        pool.rebase(["desk"], "new", keep_writes=True)
        assert pool.read("desk", 0, 5000) == b"after" * 1000
        assert pool.read("desk", 8192, 6000) == b"before" * 1000
        assert pool.read("desk", 4 * 8192, 3000) == b"new" * 1000
        assert pool.fsck() == []


@pytest.mark.parametrize("format", ["raw", "qcow2"])
def test_a_snapshot_is_exported_as_it_was_while_the_vm_is_written(pool_dir, desk, server,
                                                                  tmp_path, format):
    served = server()
    writer = nbd_writer(served.port)
    assert writer.started.wait(60), "the writer made no two passes"
    run_cli("-p", pool_dir, "vm", "snapshot", "desk", "s1", check=True)
    here = tmp_path / f"here.{format}"
    run_cli("-p", pool_dir, "vm", "export", "desk", "--snapshot", "s1", here, check=True)
    writer.end()
    # Written and grown since, the snapshot still exports at its own size and bytes.
    run_cli("-p", pool_dir, "vm", "resize", "desk", 2 * SIZE, "--force", "-y", check=True)
    later = tmp_path / f"later.{format}"
    proc = run_cli("-p", pool_dir, "vm", "export", "desk", "--snapshot", "s1", later,
                   "--json", check=True)
    assert json.loads(proc.stdout)["snapshot"] == "s1"
    image = as_raw(here, format, tmp_path)
    assert len(image) == SIZE and one_moment(generations(image))
    assert as_raw(later, format, tmp_path) == image
    missing = run_cli("-p", pool_dir, "vm", "export", "desk", "--snapshot", "nope",
                      tmp_path / "nope.raw")
    assert missing.returncode != 0 and "no snapshot named 'nope'" in missing.stderr_text
    assert not (tmp_path / "nope.raw").exists()
    served.stop()
    # Read-only, without a service: the same bytes.
    again = tmp_path / f"again.{format}"
    run_cli("-p", pool_dir, "vm", "export", "desk", "--snapshot", "s1", again, check=True)
    assert as_raw(again, format, tmp_path) == image


def _has_data(directory: Path) -> bool:
    """Whether a file in `directory` has data written in it (blocks allocated)."""
    for name in os.listdir(directory):
        try:
            if (directory / name).stat().st_blocks:
                return True
        except FileNotFoundError:       # renamed meanwhile
            continue
    return False


def test_an_export_whose_client_is_killed_lets_its_frozen_state_go(pool_dir, desk, server,
                                                                    tmp_path):
    served = server()
    run_cli("-p", pool_dir, "vm", "write", "desk", "--offset", "0", "-", input=b"x" * BS,
            check=True)
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "console", "-p", str(pool_dir), "vm",
                             "export", "desk", str(out / "desk.raw")], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Stopped once data arrives: the service has frozen the VM and streams it. (Stopped
        # once its file appeared, the client had at times not asked the service yet.)
        deadline = time.monotonic() + 60
        while not _has_data(out) and proc.poll() is None:
            assert time.monotonic() < deadline, "the export wrote nothing"
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGSTOP)     # the service's stream waits on its socket
        # Meanwhile: no VM, no snapshot, but the VM's frozen layer under its new top.
        assert [(vm["name"], vm["depth"]) for vm in cli_json("-p", pool_dir, "vm", "ls")] == [
            ("desk", 2)]
        assert cli_json("-p", pool_dir, "vm", "snapshots", "desk") == []
        assert run_cli("-p", pool_dir, "fsck", check=True).stdout_text.strip() == "clean"
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    deadline = time.monotonic() + 30
    while cli_json("-p", pool_dir, "vm", "ls")[0]["depth"] != 1:
        assert time.monotonic() < deadline, "the frozen layer stayed after the client went"
        time.sleep(0.1)
    served.stop()
    assert run_cli("-p", pool_dir, "fsck", check=True).stdout_text.strip() == "clean"


def test_overlapping_exports_each_read_their_own_moment(pool_dir, desk):
    with Pool.open(pool_dir) as pool:
        pool.write("desk", 0, tagged(0, 1))
        first = pool.frozen("desk")
        view1, _ = first.__enter__()
        pool.write("desk", 0, tagged(0, 2))
        second = pool.frozen("desk")
        view2, _ = second.__enter__()
        pool.write("desk", 0, tagged(0, 3))
        first.__exit__(None, None, None)     # the first ends first: its layer merges below
        assert pool.core.read(view2, 0, UNIT) == tagged(0, 2)
        with pytest.raises(RefusedError, match="being exported"):
            pool.delete("desk")
        second.__exit__(None, None, None)
        assert pool.read("desk", 0, UNIT) == tagged(0, 3)
        assert len(pool.graph.chain(pool.vm("desk").top)) == 1 and pool.fsck() == []
        for view in (view1, view2):            # gone from the core too
            with pytest.raises(_native.UnknownVMError):
                pool.core.read(view, 0, UNIT)
