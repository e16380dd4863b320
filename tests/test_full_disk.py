"""A full disk (issues 13.1, 15.2, 15.3): on small tmpfs mounts, real servers and real CLIs.

The failing request fails alone (ENOSPC); every write acknowledged before stays readable on every
connection; FLUSH commits them (the slot files never take the last of the disk, and the reserve
gives the catalog room when something else has filled it); a full filesystem can be relieved,
and deleting VMs gives the space back (holes in blocks.dat), measurably.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
from pathlib import Path

import pytest

from engine.stats import CATALOG_PAGE_BYTES
from tests.conftest import cli_json, run_cli
from tests.nbdclient import CMD_FLUSH, ENOSPC, MiB, RawClient, servers

CHUNK = 64 * 1024


def fill(path: Path) -> int:
    """Writes a file until the filesystem is full; returns its size."""
    block = os.urandom(CHUNK)
    written = 0
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                n = f.write(block)
            except OSError as e:
                assert e.errno == errno.ENOSPC
                break
            written += n
        while True:                  # the last scraps, a page at a time
            try:
                written += f.write(block[:4096])
            except OSError:
                break
    return written


def used(path: Path) -> int:
    return shutil.disk_usage(path).used


def vm_pool(mnt: Path, tmp_path: Path, *names: str, size: int = 256 * MiB) -> Path:
    pool = mnt / "pool"
    run_cli("pool", "init", pool, check=True)
    image = tmp_path / "holes.raw"
    with open(image, "wb") as f:
        f.truncate(size)
    for name in names:
        run_cli("-p", pool, "vm", "import", name, image, check=True)
    return pool


def fill_until_enospc(c: RawClient, rng: random.Random, start: int = 0) -> dict[int, bytes]:
    """64 KiB chunks from `start` until one fails, which must be ENOSPC; the acknowledged ones."""
    acked = {}
    offset = start
    while True:
        data = rng.randbytes(CHUNK)
        error = c.write(offset, data)
        if error:
            assert error == ENOSPC, error
            return acked
        acked[offset] = data
        offset += CHUNK


def assert_reads(c: RawClient, written: dict[int, bytes]) -> None:
    bad = [offset for offset, data in written.items() if c.read(offset, len(data)) != (0, data)]
    assert bad == [], f"{len(bad)} acknowledged writes read back wrong, first at {bad[0]}"


def test_a_full_disk_fails_the_write_alone_and_keeps_every_acknowledged_one(small_fs, tmp_path):
    """Issue 13.1's scenario: a 24 MiB tmpfs, two 256 MiB VMs, two connections."""
    pool = vm_pool(small_fs(24), tmp_path, "a", "b")
    rng = random.Random(131)
    with servers(pool) as start:
        s = start()
        ca, cb = RawClient(s.port), RawClient(s.port)
        ca.connect("a")
        cb.connect("b")
        small = {128 * MiB: rng.randbytes(4096)}
        assert ca.write(128 * MiB, small[128 * MiB]) == 0
        chunks = fill_until_enospc(cb, rng)
        assert len(chunks) > 100                # most of the disk went to data
        # Every acknowledged write reads back, on its own connection and on fresh ones.
        assert_reads(ca, small)
        assert_reads(cb, chunks)
        other_a, other_b = RawClient(s.port), RawClient(s.port)
        other_a.connect("a")
        other_b.connect("b")
        assert_reads(other_a, small)
        assert_reads(other_b, chunks)
        # The data file left the slop free: the commit of all of it succeeds.
        assert cb.simple(CMD_FLUSH) == 0
        assert ca.simple(CMD_FLUSH) == 0
        s.kill()
        s = start()
        c, d = RawClient(s.port), RawClient(s.port)
        c.connect("a")
        d.connect("b")
        assert_reads(c, small)
        assert_reads(d, chunks)
        for client in (ca, cb, other_a, other_b, c, d):
            client.close()
    assert cli_json("-p", pool, "fsck")["clean"]


def test_flush_on_a_disk_filled_by_others_commits_once_there_is_room(small_fs, tmp_path):
    """Another file fills the disk: FLUSH gets the reserve's room, or fails with EIO and
    succeeds once space is freed; after kill -9 every flushed byte is there. A write that would
    add a block-table page finds no room for it in the catalog and is refused (ENOSPC), even
    if it shares a block already stored."""
    mnt = small_fs(24)
    pool = vm_pool(mnt, tmp_path, "a")
    rng = random.Random(152)
    with servers(pool) as start:
        s = start()
        c = RawClient(s.port)
        c.connect("a")
        written = {o: rng.randbytes(CHUNK) for o in range(0, 32 * CHUNK, CHUNK)}
        pages = [i * 2 * MiB + 100 * MiB for i in range(64)]     # 64 pages of the VM's table
        written.update({o: rng.randbytes(CHUNK) for o in pages})
        for offset, data in written.items():
            assert c.write(offset, data) == 0
        filler = mnt / "filler"
        fill(filler)
        # New data fills the slots already allocated, then finds no room; data already stored
        # can still be shared where the VM has its page, not where it would need a new one.
        written.update(fill_until_enospc(c, rng, 64 * MiB))
        assert c.write(96 * MiB, written[0]) == ENOSPC
        assert c.write(CHUNK, written[0]) == 0
        written[CHUNK] = written[0]
        assert c.simple(CMD_FLUSH) == 0                   # the reserve made room
        filler2 = mnt / "filler2"
        fill(filler2)
        for offset in pages:                              # dirty many pages, no new slot
            assert c.write(offset, written[2 * CHUNK]) == 0
            written[offset] = written[2 * CHUNK]
        error = c.simple(CMD_FLUSH)
        assert error in (0, 5), error                     # EIO only if it cannot commit
        assert_reads(c, written)                          # nothing acknowledged is lost
        filler.unlink()
        filler2.unlink()
        assert c.simple(CMD_FLUSH) == 0
        s.kill()
        c.close()
        s = start()
        c = RawClient(s.port)
        c.connect("a")
        assert_reads(c, written)
        c.close()
    assert cli_json("-p", pool, "fsck")["clean"]


def test_a_full_filesystem_is_relieved_by_deleting(small_fs, tmp_path):
    """At 100 %, rm, clone, rebuild and nbd serve work, and deleting VMs gives space back."""
    mnt = small_fs(24)
    pool = mnt / "pool"
    run_cli("pool", "init", pool, check=True)
    image = tmp_path / "a.raw"
    image.write_bytes(os.urandom(8 * MiB))
    run_cli("-p", pool, "vm", "import", "a", image, check=True)
    image.write_bytes(os.urandom(6 * MiB))
    run_cli("-p", pool, "vm", "import", "b", image, check=True)
    fill(mnt / "filler")
    assert shutil.disk_usage(mnt).free < MiB
    for args in (["vm", "clone", "a", "a2"], ["rebuild"], ["vm", "rm", "-y", "a2"]):
        proc = run_cli("-p", pool, *args)
        assert proc.returncode == 0, (args, proc.stderr_text)
    with servers(pool) as start:
        s = start()
        c = RawClient(s.port)
        c.connect("a")
        assert c.read(0, 4096)[0] == 0
        c.close()
        s.stop()
    before = used(mnt)
    run_cli("-p", pool, "vm", "rm", "-y", "a", check=True)
    freed = before - used(mnt)
    assert freed >= 7 * MiB, f"deleting 8 MiB of blocks gave back {freed} bytes"
    # The space given back is used again, and what is left is whole.
    (mnt / "filler").unlink()
    image.write_bytes(os.urandom(8 * MiB))
    run_cli("-p", pool, "vm", "import", "c", image, check=True)
    out = tmp_path / "c.out"
    run_cli("-p", pool, "vm", "export", "c", out, check=True)
    assert out.read_bytes() == image.read_bytes()
    assert cli_json("-p", pool, "fsck")["clean"]


def test_a_nearly_full_disk_takes_the_blocks_it_has_room_for(small_fs, tmp_path):
    """The slot files grow a quarter at a time; where that step does not fit but the blocks
    written do, the write is taken (it was refused as out of disk space with MiBs free)."""
    mnt = small_fs(24)
    pool = mnt / "pool"
    run_cli("pool", "init", pool, check=True)
    image = tmp_path / "a.raw"
    for name in ("a", "b"):
        image.write_bytes(os.urandom(10 * MiB))
        run_cli("-p", pool, "vm", "import", name, image, check=True)
    assert cli_json("-p", pool, "stats")["free_slots"] == 0
    assert shutil.disk_usage(mnt).free > 2 * MiB       # room for the reserve, the slop and more
    small = tmp_path / "small.raw"
    small.write_bytes(os.urandom(64 * 1024))
    proc = run_cli("-p", pool, "vm", "import", "small", small)
    assert proc.returncode == 0, proc.stderr_text
    out = tmp_path / "small.out"
    run_cli("-p", pool, "vm", "export", "small", out, check=True)
    assert out.read_bytes() == small.read_bytes()
    assert cli_json("-p", pool, "fsck")["clean"]


@pytest.mark.parametrize("target", ["tmpfs", "/dev/full"])
def test_an_export_onto_a_full_disk_names_the_file(small_fs, tmp_path, target):
    """It said only "No space left on device", not which of the user's files."""
    pool = tmp_path / "pool"
    run_cli("pool", "init", pool, check=True)
    image = tmp_path / "a.raw"
    image.write_bytes(os.urandom(8 * MiB))
    run_cli("-p", pool, "vm", "import", "a", image, check=True)
    out = small_fs(4) / "a.out" if target == "tmpfs" else Path(target)
    proc = run_cli("-p", pool, "vm", "export", "a", out)
    assert proc.returncode == 1
    assert proc.stderr_text.strip() == f"blockfold: error: cannot write {out}: " \
                                       "No space left on device", proc.stderr_text


def test_capacity_is_the_room_a_write_can_take(small_fs, tmp_path):
    """Free slots whose space went back to the filesystem (a hole) were counted as room, and
    their disk again as room to grow: `stats` said 10.8 MiB free and a 6 MiB write was refused
    (brk7 finding 1). Through a service, a write of exactly the capacity is taken, a block more
    is refused, and a refused write gives back at once the room it had taken."""
    mnt = small_fs(24)
    pool = mnt / "pool"
    run_cli("pool", "init", pool, check=True)
    image = tmp_path / "a.raw"
    image.write_bytes(os.urandom(16 * MiB))
    run_cli("-p", pool, "vm", "import", "golden", image, check=True)
    image.write_bytes(os.urandom(4 * MiB))
    run_cli("-p", pool, "vm", "import", "x", image, check=True)
    run_cli("-p", pool, "vm", "rm", "-y", "x", check=True)      # 4 MiB of free slots: a hole
    run_cli("-p", pool, "vm", "clone", "golden", "d", check=True)
    stats = cli_json("-p", pool, "stats")
    assert stats["free_slots"] == 1024
    # The slop the slot files never take, and the catalog's room (engine/stats.py): golden's 8
    # block-table pages, and twice that a page for those a write of it all adds to d.
    room = shutil.disk_usage(mnt).free - MiB - 8 * CATALOG_PAGE_BYTES
    room -= -(-room // (2 * MiB)) * 2 * CATALOG_PAGE_BYTES
    assert abs(stats["capacity_bytes"] - room) < 64 * 1024, (stats["capacity_bytes"], room)
    with servers(pool) as start:
        start()
        capacity = cli_json("-p", pool, "stats")["capacity_bytes"]
        image.write_bytes(os.urandom(capacity + 4096))
        proc = run_cli("-p", pool, "vm", "write", "d", "--offset", "0", image)
        assert proc.returncode == 1 and "out of disk space" in proc.stderr_text, proc.stderr_text
        # The refused write gave back what it had taken (its commit's catalog pages aside).
        after = cli_json("-p", pool, "stats")["capacity_bytes"]
        assert capacity - 64 * 1024 < after <= capacity
        capacity = after
        image.write_bytes(os.urandom(capacity))
        run_cli("-p", pool, "vm", "write", "d", "--offset", "0", image, check=True)
        out = tmp_path / "d.out"
        run_cli("-p", pool, "vm", "export", "d", out, check=True)
    with open(out, "rb") as f:
        assert f.read(capacity) == image.read_bytes()
    assert cli_json("-p", pool, "fsck")["clean"]


def test_the_reserve_survives_a_crash_on_a_nearly_full_disk(small_fs, tmp_path):
    """A kill -9 leaves the catalog's WAL, so the restart's open found less room than the
    reserve and deleted it, for good: at 100 % `vm rm` and `clone` then failed with "database
    or disk is full", and FLUSH with EIO (brk7 finding 2). Now the reserve is there after the
    restart, and they work."""
    mnt = small_fs(24)
    pool = mnt / "pool"
    run_cli("pool", "init", pool, check=True)
    image = tmp_path / "golden.raw"
    image.write_bytes(os.urandom(16 * MiB))
    run_cli("-p", pool, "vm", "import", "golden", image, check=True)
    run_cli("-p", pool, "vm", "clone", "golden", "d", check=True)
    rng = random.Random(27)
    with servers(pool) as start:
        s = start()
        c = RawClient(s.port)
        c.connect("d")
        written = fill_until_enospc(c, rng)
        assert c.simple(CMD_FLUSH) == 0
        c.close()
        s.kill()
        s = start()
        assert (pool / "reserve").exists(), "the restart gave up the reserve"
        fill(mnt / "filler")
        c = RawClient(s.port)
        c.connect("d")
        first = min(written)
        assert c.write(first + CHUNK, written[first]) == 0        # shared: no new slot
        assert c.simple(CMD_FLUSH) == 0                           # it answered EIO
        c.close()
        for args in (["vm", "clone", "golden", "e"], ["vm", "rm", "-y", "--force", "d"]):
            proc = run_cli("-p", pool, *args)
            assert proc.returncode == 0, (args, proc.stderr_text)
        assert shutil.disk_usage(mnt).free > 4 * MiB         # d's blocks came back
        # Made again once there is room: the next 100 % finds it too.
        assert cli_json("-p", pool, "stats")["reserve_bytes"] >= MiB
    assert written and cli_json("-p", pool, "fsck")["clean"]


def test_a_catalog_that_cannot_commit_says_which_filesystem_to_free(small_fs, tmp_path):
    """The reserve spent and the disk full again: the refusal names the filesystem and what
    frees it, in Blockfold's words (it was sqlite's "database or disk is full"); `stats` says the
    pool has no reserve; once space is freed the same command works and the reserve is back."""
    mnt = small_fs(24)
    pool = mnt / "pool"
    run_cli("pool", "init", pool, check=True)
    image = tmp_path / "a.raw"
    image.write_bytes(os.urandom(8 * MiB))
    run_cli("-p", pool, "vm", "import", "a", image, check=True)
    with servers(pool) as start:
        start()
        fill(mnt / "filler")
        run_cli("-p", pool, "vm", "clone", "a", "b", check=True)      # spends the reserve
        assert cli_json("-p", pool, "stats")["reserve_bytes"] == 0
        table = run_cli("-p", pool, "stats", check=True).stdout_text
        assert any(line.split()[:2] == ["reserve", "none:"] for line in table.splitlines())
        fill(mnt / "filler2")
        proc = run_cli("-p", pool, "vm", "clone", "a", "c")
        assert proc.returncode == 1
        said = proc.stderr_text.strip()
        assert said.startswith(f"blockfold: error: the filesystem holding {pool} is full: "), said
        assert "Free space on that filesystem" in said and "disk is full" not in said, said
        assert said.count("\n") == 0
        (mnt / "filler").unlink()
        (mnt / "filler2").unlink()
        run_cli("-p", pool, "vm", "clone", "a", "c", check=True)
        assert cli_json("-p", pool, "stats")["reserve_bytes"] >= MiB
    assert {vm["name"] for vm in cli_json("-p", pool, "vm", "ls")} == {"a", "b", "c"}


def fill_pages_until_enospc(c: RawClient, rng: random.Random) -> dict[int, bytes]:
    """One 4 KiB block per 2 MiB (each its own block-table page: the catalog grows as fast as
    the data), a FLUSH every 64 writes, until a write fails, which must be ENOSPC; the
    acknowledged ones. Bounded: 32 MiB holds far fewer than 20,000 such pages."""
    acked = {}
    for i in range(20000):
        data = rng.randbytes(4096)
        error = c.write(i * 2 * MiB, data)
        if error:
            assert error == ENOSPC, error
            return acked
        acked[i * 2 * MiB] = data
        if i % 64 == 63:
            assert c.simple(CMD_FLUSH) == 0
    raise AssertionError("20,000 block-table pages fitted on 32 MiB")


def test_a_pool_filled_through_its_block_tables_deletes_its_vm(small_fs, tmp_path):
    """A thin VM written one block per block-table page grew the catalog into the slop until the
    slot files refused; `vm rm` then needed more WAL than the reserve held and failed at 100 %,
    with the service and without it, after a kill -9 too: the pool was wedged for good (brk8a
    #3). Now growth leaves the catalog room to delete its pages: FLUSH commits what was
    acknowledged, and `vm rm` gives the space back, also after a kill -9 and a reopen."""
    mnt = small_fs(32)
    pool = vm_pool(mnt, tmp_path, "v", size=1 << 40)
    rng = random.Random(83)
    with servers(pool) as start:
        s = start()
        c = RawClient(s.port, timeout=60)
        c.connect("v")
        acked = fill_pages_until_enospc(c, rng)
        assert len(acked) > 1000
        assert c.simple(CMD_FLUSH) == 0         # the catalog had room to commit them all
        c.close()
        before = shutil.disk_usage(mnt).free
        proc = run_cli("-p", pool, "vm", "rm", "-y", "v")
        assert proc.returncode == 0, proc.stderr_text
        assert shutil.disk_usage(mnt).free > before + 4 * MiB, "v's blocks did not come back"
        # Filled again, killed with writes unflushed, reopened without a service: rm works.
        run_cli("-p", pool, "vm", "import", "w", tmp_path / "holes.raw", check=True)
        c = RawClient(s.port, timeout=60)
        c.connect("w")
        acked = fill_pages_until_enospc(c, rng)
        assert len(acked) > 1000
        c.close()
        s.kill()
    flushed = {off: data for off, data in acked.items() if off < len(acked) // 64 * 64 * 2 * MiB}
    with servers(pool) as start:
        c = RawClient(start().port, timeout=60)
        c.connect("w")
        assert_reads(c, flushed)
        c.close()
    before = shutil.disk_usage(mnt).free
    proc = run_cli("-p", pool, "vm", "rm", "-y", "w")
    assert proc.returncode == 0, proc.stderr_text
    assert shutil.disk_usage(mnt).free > before + 4 * MiB, "w's blocks did not come back"
    assert cli_json("-p", pool, "fsck")["clean"]


def test_an_ordinary_fill_reaches_close_to_full(small_fs, tmp_path):
    """What the catalog's pages keep free is small beside dense data: a VM written in 64 KiB
    chunks still fills the filesystem to its slop (1 MiB of 32) and a little more."""
    mnt = small_fs(32)
    pool = vm_pool(mnt, tmp_path, "a")
    with servers(pool) as start:
        c = RawClient(start().port)
        c.connect("a")
        chunks = fill_until_enospc(c, random.Random(7))
        assert c.simple(CMD_FLUSH) == 0
        c.close()
    free = shutil.disk_usage(mnt).free
    assert free < 2 * MiB, f"{free} bytes left free after {len(chunks)} chunks"
