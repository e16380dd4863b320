"""The end of `vm export`: the frozen layer the export read is the VM's top again, with what
the VM wrote meanwhile folded into it, so the chain is as deep as before and the let-go costs
those writes, not the VM's whole disk (a merge of the layer into the new top paused every data
op 2.8-4.4 s for a fully written 100 GiB VM); a client writing the VM over NBD meanwhile goes
on undisturbed."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time

from engine.pool import Pool
from tests.conftest import ROOT, cli_json, run_cli
from tests.nbdclient import MiB, RawClient

BS = 4096
SIZE = 16 * MiB


class NbdWriter:
    """Writes 4 KiB blocks at seeded places of `desk` over one NBD connection until stopped,
    remembering the last bytes written at each offset."""

    def __init__(self, port: int):
        self.client = RawClient(port, timeout=30)
        self.client.connect("desk")
        self.written: dict[int, bytes] = {}
        self.writes = 0
        self.errors: list[int] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        rng = random.Random(3)
        while not self.stop.is_set():
            at = rng.randrange(SIZE // BS) * BS
            data = rng.randbytes(BS)
            if error := self.client.write(at, data):
                self.errors.append(error)
                return
            self.written[at] = data
            self.writes += 1

    def end(self) -> None:
        self.stop.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "the writer did not stop"


def test_an_export_beside_an_nbd_writer_leaves_the_chain_as_it_was(pool_dir, server, tmp_path):
    image = tmp_path / "desk.raw"
    image.write_bytes(random.Random(7).randbytes(SIZE))
    run_cli("-p", pool_dir, "vm", "import", "desk", image, check=True)
    served = server()
    writer = NbdWriter(served.port)
    try:
        for n in range(3):
            before = writer.writes
            run_cli("-p", pool_dir, "vm", "export", "desk", tmp_path / f"out-{n}.raw",
                    check=True)
            assert [(vm["name"], vm["depth"]) for vm in cli_json("-p", pool_dir, "vm", "ls")
                    ] == [("desk", 1)], f"export {n} left the chain deeper"
            assert writer.writes > before, "the writer stood still: this proves nothing"
        # The same connection writes on after the exports, and reads what it wrote.
        after, deadline = writer.writes + 50, time.monotonic() + 30
        while writer.writes < after and writer.thread.is_alive():
            assert time.monotonic() < deadline, "the writer stopped writing"
            writer.thread.join(0.01)
    finally:
        writer.end()
    assert writer.errors == []
    for at, data in list(writer.written.items())[-200:]:
        assert writer.client.read(at, BS) == (0, data)
    writer.client.close()
    served.stop()
    assert run_cli("-p", pool_dir, "fsck", check=True).stdout_text.strip() == "clean"


def test_the_end_of_an_export_rewrites_only_the_pages_written_meanwhile(pool_dir):
    data = random.Random(5).randbytes(SIZE)
    with Pool.open(pool_dir) as pool:
        pool.create_vm("desk", SIZE)
        pool.write("desk", 0, data)
        pool.flush()
        with pool.frozen("desk") as (view, _):
            frozen = pool.graph.parent(pool.vm("desk").top)
            stored = dict(pool.catalog.conn.execute(
                "SELECT page, entries FROM bmap WHERE layer=?", (frozen,)))
            pool.write("desk", 5 * MiB, b"w" * BS)          # page 2 (2 MiB pages of 4 KiB)
            pool.write("desk", 7 * MiB, bytes(BS))          # page 3: zeros over data
            assert pool.read(view, 5 * MiB, BS) == data[5 * MiB:5 * MiB + BS]
        # The layer the export read is the VM's top again; the top it wrote into is gone.
        assert pool.vm("desk").top == frozen and pool.graph.layers() == [frozen]
        now = dict(pool.catalog.conn.execute(
            "SELECT page, entries FROM bmap WHERE layer=?", (frozen,)))
        assert len(stored) == SIZE // (2 * MiB) and now.keys() == stored.keys()
        assert [p for p in stored if now[p] != stored[p]] == [2, 3]
        want = bytearray(data)
        want[5 * MiB:5 * MiB + BS] = b"w" * BS
        want[7 * MiB:7 * MiB + BS] = bytes(BS)
        assert pool.read("desk", 0, SIZE) == want
        pool.write("desk", 0, b"t" * BS)                   # writable, in place
        assert pool.graph.layers() == [frozen]
        assert pool.fsck() == []
    with Pool.open(pool_dir) as pool:       # as committed
        want[:BS] = b"t" * BS
        assert pool.read("desk", 0, SIZE) == want and pool.fsck() == []


def test_a_clone_or_snapshot_made_during_an_export_keeps_what_it_read(pool_dir):
    data = random.Random(6).randbytes(SIZE)
    with Pool.open(pool_dir) as pool:
        pool.create_vm("desk", SIZE)
        pool.write("desk", 0, data)
        with pool.frozen("desk"):
            pool.write("desk", 0, b"1" * BS)
            pool.clone("desk", "copy")            # reads the frozen layer too: nothing folds
        with pool.frozen("desk"):
            pool.write("desk", BS, b"2" * BS)
            pool.snapshot("desk", "s1")           # freezes the top over the frozen layer
            pool.write("desk", 2 * BS, b"3" * BS)
        assert pool.read("copy", 0, 2 * BS) == b"1" * BS + data[BS:2 * BS]
        assert pool.read("desk", 0, 3 * BS) == b"1" * BS + b"2" * BS + b"3" * BS
        pool.rollback("desk", "s1")
        assert pool.read("desk", 0, 3 * BS) == b"1" * BS + b"2" * BS + data[2 * BS:3 * BS]
        assert pool.fsck() == []
        pool.snapshot_rm("desk", "s1")
        pool.delete("copy")
        assert len(pool.graph.chain(pool.vm("desk").top)) == 1 and pool.fsck() == []


FOLD_THEN_CRASH = """
import os, sys
from engine.pool import Pool
pool = Pool.open(sys.argv[1])
with pool.frozen("desk"):
    pool.write("desk", 0, b"during" * 1000)
pool.write("desk", 8192, b"after" * 1000)
os._exit(9)
"""


def test_a_crash_right_after_an_export_ended_keeps_its_writes(pool_dir):
    data = random.Random(4).randbytes(SIZE)
    with Pool.open(pool_dir) as pool:
        pool.create_vm("desk", SIZE)
        pool.write("desk", 0, data)
    proc = subprocess.run([sys.executable, "-c", FOLD_THEN_CRASH, str(pool_dir)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 9, proc.stderr
    with Pool.open(pool_dir) as pool:
        # The fold's commit holds what was written during the export; the write after it was
        # never flushed, so it is gone, as after any crash.
        assert pool.read("desk", 0, 6000) == b"during" * 1000
        assert pool.read("desk", 8192, 5000) == data[8192:8192 + 5000]
        assert len(pool.graph.chain(pool.vm("desk").top)) == 1 and pool.fsck() == []


def test_zeros_written_during_an_export_are_kept_over_a_new_golden_as_written_directly(
        pool_dir):
    """A desk zeroes a block of its own data where its golden reads zeros, once directly and
    once while an export reads it; then it is rebased onto a new golden keeping its writes. The
    export changes nothing the user sees: the block reads the new golden's data both ways
    (the fold kept a ZERO tombstone, so it read zeros there after the export)."""
    with Pool.open(pool_dir) as pool:
        pool.create_vm("g", 4 * BS)
        pool.write("g", BS, b"g" * BS)             # block 0 of the golden reads zeros
        pool.create_vm("g2", 4 * BS)
        pool.write("g2", 0, b"N" * BS)             # the new golden has data there
        for desk, during_export in (("direct", False), ("exported", True)):
            pool.clone("g", desk)
            pool.write(desk, 0, b"d" * BS)         # its own data, then zeros over it
            pool.write(desk, 2 * BS, b"z" * BS)    # and over the golden's zeros beside
            if during_export:
                with pool.frozen(desk):
                    pool.write(desk, 0, bytes(BS))
            else:
                pool.write(desk, 0, bytes(BS))
        pool.rebase(["direct", "exported"], "g2", keep_writes=True)
        for desk in ("direct", "exported"):
            assert pool.read(desk, 0, BS) == b"N" * BS, desk
            assert pool.read(desk, BS, 3 * BS) == bytes(BS) + b"z" * BS + bytes(BS), desk
        assert pool.fsck() == []
