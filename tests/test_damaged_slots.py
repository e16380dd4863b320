"""Truncated and deleted slot files (issue 15.1): refused for writing, named, and repairable.

A pool whose block tables point past the end of blocks.dat, or whose live blocks lost their
fingerprints, refuses every write naming the file (so a new import can never take slots the
tables still point at); reads serve what is sound and name what is not; `rebuild` exits 1;
`rebuild --full --repair` computes lost fingerprints from the data and marks blocks whose data is
gone corrupt, after which the pool takes writes again without cross-linking anything.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys

import pytest

from engine.api import LocalAdmin, create_pool
from tests.conftest import ROOT, cli_json, run_cli
from tests.nbdclient import EIO, RawClient
from tests.serviceproc import Served

BS = 4096
BLOCKS = 64


@pytest.fixture
def golden(tmp_path):
    """A pool holding VM golden (64 distinct blocks, slots 1-64) and the image it came from."""
    pool = create_pool(tmp_path / "pool")          # in this process: two CLIs cost seconds
    image = tmp_path / "golden.raw"
    image.write_bytes(os.urandom(BLOCKS * BS))
    with LocalAdmin.open(pool) as admin:
        admin.import_image("golden", str(image))
    return pool, image


def one_line_naming(proc, *words: str) -> str:
    assert proc.returncode == 1, proc.stderr_text
    lines = proc.stderr_text.strip().splitlines()
    assert len(lines) == 1, lines
    assert "internal error" not in lines[0] and "Traceback" not in proc.stderr_text
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_a_truncated_data_file_refuses_writes_then_repair_marks_what_is_gone(golden, tmp_path):
    pool, image = golden
    half = 1 + BLOCKS // 2                       # the header and the first 32 blocks stay
    os.truncate(pool / "blocks.dat", half * BS)
    proc = run_cli("-p", pool, "rebuild", "--full")
    one_line_naming(proc, "blocks.dat", "past the end", "--repair")
    assert "32 bad references" in proc.stdout_text
    other = tmp_path / "other.raw"
    other.write_bytes(os.urandom(16 * BS))
    one_line_naming(run_cli("-p", pool, "vm", "import", "new", other), "blocks.dat", "--repair")
    one_line_naming(run_cli("-p", pool, "vm", "clone", "golden", "g2"), "blocks.dat")
    assert [v["name"] for v in cli_json("-p", pool, "vm", "ls")] == ["golden"]
    # Looking still works, and says what is wrong.
    proc = run_cli("-p", pool, "fsck")
    assert proc.returncode == 1 and "blocks.dat" in proc.stdout_text
    one_line_naming(run_cli("-p", pool, "vm", "export", "golden", tmp_path / "out.raw"),
                    "VM golden", f"byte {(half - 1) * BS}")

    proc = run_cli("-p", pool, "rebuild", "--full", "--repair")
    assert proc.returncode == 1 and "32 corrupt" in proc.stdout_text, proc.stdout_text
    run_cli("-p", pool, "vm", "import", "new", other, check=True)
    run_cli("-p", pool, "vm", "export", "new", tmp_path / "new.raw", check=True)
    assert (tmp_path / "new.raw").read_bytes() == other.read_bytes()
    # golden never serves the new VM's bytes: what is gone stays an error.
    proc = run_cli("-p", pool, "vm", "export", "golden", tmp_path / "out.raw")
    one_line_naming(proc, "VM golden", f"byte {(half - 1) * BS}")
    assert cli_json("-p", pool, "stats")["corrupt_blocks"] == 32
    db = sqlite3.connect(pool / "catalog.db")
    events = " ".join(m for (m,) in db.execute("SELECT message FROM events WHERE kind='repair'"))
    db.close()
    assert "32 blocks whose data is gone are corrupt" in events


def test_a_data_file_cut_under_the_service_fails_those_reads_and_the_service_goes_on(tmp_path):
    """A page of a mapped slot file that cannot be read (SIGBUS: the file cut short under the
    map, or a disk's unreadable sector) fails the reads of its blocks, not the process: every
    other block of every VM is still served, and writes are refused from then on."""
    pool = create_pool(tmp_path / "pool")
    images = {"b": os.urandom(16 * BS), "a": os.urandom(BLOCKS * BS)}   # b: slots 1-16, a: 17-80
    with LocalAdmin.open(pool) as admin:
        for name, data in images.items():
            (tmp_path / name).write_bytes(data)
            admin.import_image(name, str(tmp_path / name))
    s = Served(["-p", str(pool)], "--nbd", "127.0.0.1:0")
    clients = []
    try:
        port = int(s.nbd.rpartition(":")[2])
        for name in ("a", "b"):
            clients.append(RawClient(port))
            clients[-1].connect(name)
        a, b = clients
        os.truncate(pool / "blocks.dat", (1 + 16 + 32) * BS)     # a's blocks from 32 on are gone
        assert a.read(40 * BS, BS) == (EIO, b"")
        assert s.proc.poll() is None
        assert a.read(0, 32 * BS) == (0, images["a"][:32 * BS])
        assert b.read(0, 16 * BS) == (0, images["b"])
        assert a.write(0, bytes(BS)) == EIO
        assert b.write(0, bytes(BS)) == EIO
        assert b.read(0, BS) == (0, images["b"][:BS])
        damage = cli_json("-p", pool, "stats")["damage"]
        assert damage.startswith(f"{pool}/blocks.dat could not be read at byte {(17 + 40) * BS}")
        proc = run_cli("-p", pool, "fsck")
        assert proc.returncode == 1 and "blocks.dat could not be read" in proc.stdout_text
        one_line_naming(run_cli("-p", pool, "vm", "export", "a", tmp_path / "out.raw"),
                        "VM a", f"byte {32 * BS}")
        one_line_naming(run_cli("-p", pool, "vm", "clone", "b", "c"), "blocks.dat",
                        "could not be read")
        for c in clients:
            c.close()
        s.stop()
    finally:
        for c in clients:
            c.close()
        s.kill()
    # Opened again, the pool says what a rebuild finds: the blocks past the end.
    one_line_naming(run_cli("-p", pool, "vm", "clone", "b", "c"), "blocks.dat", "past the end")


@pytest.mark.parametrize("fault", ["kill", "another map"])
def test_a_sigbus_that_is_not_the_pools_still_ends_the_process(tmp_path, fault):
    """The handler takes only faults in the slot files' maps: a SIGBUS sent with kill, or one on
    another file's map, ends the process as it always did."""
    trigger = ("os.kill(os.getpid(), signal.SIGBUS)" if fault == "kill" else
               "f = open(sys.argv[2], 'w+b'); f.truncate(8192); m = mmap.mmap(f.fileno(), 8192);"
               " f.truncate(0); m[4096]")
    script = ("import mmap, os, signal, sys\n"
              "from engine.api import LocalAdmin, create_pool\n"
              "with LocalAdmin.open(create_pool(sys.argv[1])):\n"
              f"    {trigger}\n"
              "print('survived')\n")
    proc = subprocess.run([sys.executable, "-c", script, tmp_path / "pool", tmp_path / "other"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGBUS and "survived" not in proc.stdout, proc.stderr


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_lost_fingerprints_are_computed_again_from_the_data(golden, tmp_path, damage):
    pool, image = golden
    if damage == "delete":
        (pool / "hashes.dat").unlink()
        one_line_naming(run_cli("-p", pool, "vm", "rm", "-y", "golden"), "hashes.dat",
                        "missing")
        one_line_naming(run_cli("-p", pool, "rebuild", "--full"), "hashes.dat", "missing")
    else:
        os.truncate(pool / "hashes.dat", 16 * 10)
        proc = run_cli("-p", pool, "rebuild")
        one_line_naming(proc, "hashes.dat", "no fingerprint", "--repair")
        one_line_naming(run_cli("-p", pool, "vm", "write", "golden", "--offset", "0", image),
                        "hashes.dat", "--repair")
    proc = run_cli("-p", pool, "rebuild", "--full", "--repair")
    assert proc.returncode == 0, proc.stderr_text
    assert "0 corrupt" in proc.stdout_text
    run_cli("-p", pool, "vm", "export", "golden", tmp_path / "out.raw", check=True)
    assert (tmp_path / "out.raw").read_bytes() == image.read_bytes()
    run_cli("-p", pool, "vm", "import", "again", image, check=True)     # dedups again
    assert cli_json("-p", pool, "stats")["unique_blocks"] == BLOCKS
    assert cli_json("-p", pool, "fsck")["clean"]


def test_a_deleted_data_file_is_refused_and_repair_keeps_new_data_apart(golden, tmp_path):
    pool, image = golden
    (pool / "blocks.dat").unlink()
    one_line_naming(run_cli("-p", pool, "vm", "import", "x", image), "blocks.dat", "missing")
    proc = run_cli("-p", pool, "rebuild", "--full", "--repair")
    assert proc.returncode == 1 and f"{BLOCKS} corrupt" in proc.stdout_text
    run_cli("-p", pool, "vm", "import", "again", image, check=True)
    run_cli("-p", pool, "vm", "export", "again", tmp_path / "again.raw", check=True)
    assert (tmp_path / "again.raw").read_bytes() == image.read_bytes()
    one_line_naming(run_cli("-p", pool, "vm", "export", "golden", tmp_path / "g.raw"),
                    "VM golden", "byte 0")
    run_cli("-p", pool, "vm", "rm", "-y", "golden", check=True)
    assert cli_json("-p", pool, "fsck")["clean"]


def repair_events(pool) -> str:
    db = sqlite3.connect(pool / "catalog.db")
    events = " ".join(m for (m,) in db.execute("SELECT message FROM events WHERE kind='repair'"))
    db.close()
    return events


@pytest.mark.parametrize("damage", [b"XXXXXXXX", bytes(range(256)) * 2], ids=["8 bytes", "sector"])
def test_a_damaged_header_refuses_the_open_and_repair_rewrites_it(golden, tmp_path, damage):
    pool, image = golden
    with open(pool / "blocks.dat", "r+b") as f:
        f.write(damage)
    one_line_naming(run_cli("-p", pool, "vm", "ls"), "blocks.dat", "bad header",
                    f"blockfold -p {pool} rebuild --full --repair")
    proc = run_cli("-p", pool, "rebuild", "--full", "--repair")
    assert proc.returncode == 0, proc.stderr_text
    assert f"{BLOCKS} blocks" in proc.stdout_text and "0 corrupt" in proc.stdout_text
    assert "header rewritten" in repair_events(pool)
    run_cli("-p", pool, "vm", "export", "golden", tmp_path / "out.raw", check=True)
    assert (tmp_path / "out.raw").read_bytes() == image.read_bytes()
    assert cli_json("-p", pool, "fsck")["clean"]


def test_repair_leaves_a_bad_header_alone_on_slot_files_that_are_not_the_pools(golden, tmp_path):
    pool, image = golden
    other = create_pool(tmp_path / "big", block_size=65536)
    with LocalAdmin.open(other) as admin:
        admin.import_image("golden", str(image))
    own_hashes = (pool / "hashes.dat").read_bytes()
    for name in ("blocks.dat", "hashes.dat"):        # another block size's files, put there
        (pool / name).write_bytes((other / name).read_bytes())
    with open(pool / "blocks.dat", "r+b") as f:
        f.write(b"XXXXXXXX")
    before = (pool / "blocks.dat").read_bytes()
    one_line_naming(run_cli("-p", pool, "rebuild", "--full", "--repair"), "blocks.dat",
                    "bad header", "not this pool's", "4096-byte slots", "not rewritten")
    assert (pool / "blocks.dat").read_bytes() == before
    # A random file in its place, beside the pool's own fingerprints.
    (pool / "blocks.dat").write_bytes(os.urandom(len(before)))
    (pool / "hashes.dat").write_bytes(own_hashes)
    one_line_naming(run_cli("-p", pool, "rebuild", "--full", "--repair"), "blocks.dat",
                    "bad header", "0 of", "not rewritten")
    # No fingerprint to check it by.
    (pool / "hashes.dat").unlink()
    one_line_naming(run_cli("-p", pool, "rebuild", "--full", "--repair"), "blocks.dat",
                    "bad header", "no fingerprint", "not rewritten")


def test_rebuild_repair_refuses_without_full(golden):
    pool, _ = golden
    proc = run_cli("-p", pool, "rebuild", "--repair")
    assert proc.returncode == 2 and "--repair needs --full" in proc.stderr_text
