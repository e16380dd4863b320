"""`vm export` of a VM that a client writes meanwhile: the image is the VM as it was when the
export began (Pool.frozen), never blocks from several moments (brk7 #7 saw 7 generations).

The writer rewrites the VM pass after pass, each 64 KiB unit tagged with the number of its pass,
from both ends at once: unit 0, the last, unit 1, the one before it … So the VM at one moment
holds pass g+1 on as many units at its end as at its start (or one fewer) and g in between. An
export that reads front to back while the writer goes on sees the start earlier than the end: a
longer run at the end, or a pass more.
"""

from __future__ import annotations

import random
import struct
import threading
from pathlib import Path

import pytest

from engine.localadmin import LocalAdmin
from tests.conftest import cli_json, run_cli
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
