"""A VDI operator's everyday verbs, from the real CLI in subprocesses, each run twice: on a pool
the command opens itself, and through a running service (`blockfold serve`) holding the pool:
refresh, rebase (one desktop, --all-of, --keep-writes), snapshots, rollback, rename, resize,
info, events --since, --version, the default pool, -p anywhere, and a golden's delete."""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import sys
import time

import pytest

from engine.api import LocalAdmin
from tests.conftest import ROOT, cli_json, run_cli
from tests.serviceproc import Served
from tests.terminal import Terminal

BS = 4096


def blocks(*fill: int) -> bytes:
    return b"".join(bytes([f]) * BS for f in fill)


@pytest.fixture(params=["direct", "served"])
def cli(request, pool_dir, tmp_path):
    """blockfold -p POOL ARGS, checked, on a pool holding golden (blocks 1 1 2 0), golden2
    (3 3 3 3) and desk-1..3 cloned from golden; with a service holding the pool for the 'served'
    run. The pool is filled in this process, before the service starts (three CLIs cost 1 to 5 s
    a test, and what they would do is not what these tests check)."""
    (tmp_path / "golden.raw").write_bytes(blocks(1, 1, 2, 0))
    (tmp_path / "golden2.raw").write_bytes(blocks(3, 3, 3, 3))
    with LocalAdmin.open(pool_dir) as admin:
        admin.import_image("golden", str(tmp_path / "golden.raw"))
        admin.import_image("golden2", str(tmp_path / "golden2.raw"))
        admin.clone("golden", "desk", count=3)
    served = Served(["-p", str(pool_dir)]) if request.param == "served" else None

    def run(*args, check=True, **kw):
        return run_cli("-p", pool_dir, *args, check=check, **kw)
    yield run
    if served is not None:
        assert "Traceback" not in served.stop()


def read(cli, name: str, tmp_path) -> bytes:
    out = tmp_path / f"{name}.out"
    cli("vm", "export", name, out)
    return out.read_bytes()


def test_refresh_drops_a_desktops_writes(cli, tmp_path):
    cli("vm", "write", "desk-1", "--offset", "0", "-", input=blocks(9))
    assert read(cli, "desk-1", tmp_path) == blocks(9, 1, 2, 0)
    assert "refreshed desk-1" in cli("vm", "refresh", "desk-1", "-y").stdout_text
    assert read(cli, "desk-1", tmp_path) == blocks(1, 1, 2, 0)
    proc = cli("vm", "refresh", "golden", "-y", check=False)
    assert proc.returncode == 1 and "not cloned from a golden image" in proc.stderr_text
    assert len(proc.stderr_text.splitlines()) == 1


def test_rebase_one_all_of_and_keeping_writes(cli, tmp_path):
    cli("vm", "write", "desk-1", "--offset", "0", "-", input=blocks(9))
    cli("vm", "write", "desk-2", "--offset", str(BS), "-", input=blocks(8))
    cli("vm", "rebase", "desk-1", "golden2", "--keep-writes", "-y")
    assert read(cli, "desk-1", tmp_path) == blocks(9, 3, 3, 3)
    cli("vm", "write", "golden2", "--offset", str(3 * BS), "-", input=blocks(7))
    out = json.loads(cli("vm", "rebase", "--all-of", "golden", "golden2", "-y",
                         "--json").stdout)
    assert out["rebased"] == ["desk-2", "desk-3"]
    # Dropping their writes; golden2's newest write is in their new golden state.
    for name in ("desk-2", "desk-3"):
        assert read(cli, name, tmp_path) == blocks(3, 3, 3, 7)
    info = json.loads(cli("vm", "info", "desk-3", "--json").stdout)
    assert info["stats"]["origin"] == "golden2" and info["refreshable"]
    assert json.loads(cli("vm", "info", "golden2", "--json").stdout)["clones"] == [
        "desk-1", "desk-2", "desk-3"]
    proc = cli("vm", "rebase", "--all-of", "golden", "golden2", "-y", check=False)
    assert proc.returncode == 1 and "nothing to rebase" in proc.stderr_text
    proc = cli("vm", "rebase", "desk-1", check=False)
    assert proc.returncode == 2 and "NEW_GOLDEN" in proc.stderr_text
    assert cli("fsck").stdout_text.strip() == "clean"


def info(cli, name: str) -> dict:
    return json.loads(cli("vm", "info", name, "--json").stdout)


def test_a_refresh_brings_back_the_size_of_the_golden_state(cli, tmp_path):
    # Shrunk, it kept 8 KiB and read golden cut short, while it said it read as golden did.
    cli("vm", "resize", "desk-1", "8K", "--force", "-y")
    proc = cli("vm", "refresh", "desk-1", "-y")
    assert info(cli, "desk-1")["stats"]["size"] == 4 * BS
    assert proc.stdout_text.strip().endswith("rebased onto it), at its size then: 16.0 KiB (it is"
                                             " 8.0 KiB now)")
    assert info(cli, "desk-1")["base_size"] == 4 * BS
    assert read(cli, "desk-1", tmp_path) == blocks(1, 1, 2, 0)
    # Grown and written past the golden's end: all of it is its own, and goes.
    cli("vm", "resize", "desk-2", "32K")
    cli("vm", "write", "desk-2", "--offset", str(6 * BS), "-", input=blocks(9))
    out = json.loads(cli("vm", "refresh", "desk-2", "-y", "--json").stdout)
    assert out["size"] == 4 * BS
    stats = info(cli, "desk-2")["stats"]
    assert (stats["size"], stats["logical_blocks"]) == (4 * BS, 3)
    assert read(cli, "desk-2", tmp_path) == blocks(1, 1, 2, 0)
    # A snapshot keeps the size to come back at: a rollback, then a refresh.
    cli("vm", "resize", "desk-3", "8K", "--force", "-y")
    cli("vm", "snapshot", "desk-3", "small")
    cli("vm", "rollback", "desk-3", "small", "-y")
    cli("vm", "refresh", "desk-3", "-y")
    assert read(cli, "desk-3", tmp_path) == blocks(1, 1, 2, 0)
    assert cli("fsck").stdout_text.strip() == "clean"


def test_a_clone_made_before_blockfold_kept_its_golden_size_keeps_its_own(pool_dir, tmp_path):
    (tmp_path / "golden.raw").write_bytes(blocks(1, 1, 2, 0))
    with LocalAdmin.open(pool_dir) as admin:
        admin.import_image("golden", str(tmp_path / "golden.raw"))
        admin.clone("golden", "old")
        admin.take_snapshot("old", "then")
    db = sqlite3.connect(pool_dir / "catalog.db")      # as an older Blockfold left it
    db.execute("ALTER TABLE vms DROP COLUMN base_size")
    db.execute("ALTER TABLE snapshots DROP COLUMN base_size")
    db.commit()
    db.close()
    with LocalAdmin.open(pool_dir, readonly=True) as admin:
        assert admin.vm_info("old").base_size is None and admin.vm_info("old").refreshable
        assert [s.name for s in admin.snapshots("old")] == ["then"]

    def cli(*args):
        return run_cli("-p", pool_dir, *args, check=True)
    cli("vm", "resize", "old", "8K", "--force", "-y")
    cli("vm", "clone", "golden", "new")
    cli("vm", "resize", "new", "8K", "--force", "-y")
    proc = cli("vm", "refresh", "old", "-y")
    assert proc.stdout_text.strip().endswith("; it keeps its size (8.0 KiB): it was cloned before"
                                             " Blockfold kept its golden image's size")
    assert info(cli, "old")["stats"]["size"] == 2 * BS
    # The golden's block past its end is not its own (it counted 3 blocks in 8 KiB), and
    # grown, it reads zeros there, as it did after its shrink (it read the golden's block).
    assert info(cli, "old")["stats"]["logical_blocks"] == 2
    cli("vm", "resize", "old", "16K")
    assert read(cli, "old", tmp_path) == blocks(1, 1, 0, 0)
    cli("vm", "refresh", "new", "-y")
    assert info(cli, "new")["stats"]["size"] == 4 * BS
    cli("vm", "rollback", "old", "then", "-y")
    assert info(cli, "old")["base_size"] is None
    assert cli("fsck").stdout_text.strip() == "clean"


def test_a_rebase_keeping_writes_onto_a_smaller_golden_needs_force(cli, tmp_path):
    (tmp_path / "tiny.raw").write_bytes(blocks(5))
    cli("vm", "import", "tiny", tmp_path / "tiny.raw")
    cli("vm", "write", "desk-1", "--offset", str(3 * BS), "-", input=blocks(9))
    # It became 4 KiB without a word, its write at 12 KiB still counted in its logical bytes.
    proc = cli("vm", "rebase", "desk-1", "tiny", "--keep-writes", "-y", check=False)
    assert proc.returncode == 1 and proc.stderr_text == (
        "blockfold: error: tiny (4.0 KiB) is smaller than VM desk-1 (16.0 KiB): rebasing keeping"
        " its writes cuts off its last 12.0 KiB; allow it with --force\n")
    assert info(cli, "desk-1")["stats"]["origin"] == "golden"
    assert read(cli, "desk-1", tmp_path) == blocks(1, 1, 2, 9)
    proc = cli("vm", "rebase", "desk-1", "tiny", "--keep-writes", "--force", "-y")
    assert ("rebasing VM desk-1 onto tiny shrinks it from 16.0 KiB to 4.0 KiB and cuts off its"
            " last 12.0 KiB (bytes 4096 to 16383)") in proc.stderr_text
    assert proc.stdout_text.strip() == "rebased desk-1 onto tiny; 4.0 KiB now, tiny's size"
    stats = info(cli, "desk-1")["stats"]
    assert (stats["size"], stats["logical_blocks"], stats["origin"]) == (BS, 1, "tiny")
    cli("vm", "resize", "desk-1", "16K")           # what was cut reads as zeros, as a resize's
    assert read(cli, "desk-1", tmp_path) == blocks(5, 0, 0, 0)
    # Every desktop of --all-of is checked before any moves; dropping their writes, nothing of
    # theirs is cut: they take the golden's size.
    cli("vm", "write", "desk-2", "--offset", "0", "-", input=blocks(8))
    proc = cli("vm", "rebase", "--all-of", "golden", "tiny", "--keep-writes", "-y", check=False)
    assert proc.returncode == 1 and ("is smaller than 2 VMs (desk-2, desk-3): rebasing them"
                                     " keeping their writes cuts off") in proc.stderr_text
    assert read(cli, "desk-2", tmp_path) == blocks(8, 1, 2, 0)
    out = json.loads(cli("vm", "rebase", "--all-of", "golden", "tiny", "-y", "--json").stdout)
    assert out["rebased"] == ["desk-2", "desk-3"] and out["size"] == BS
    assert read(cli, "desk-2", tmp_path) == blocks(5)
    logical = json.loads(cli("stats", "--json").stdout)["logical_bytes"]
    assert logical == (3 + 4 + 1 + 1 + 1 + 1) * BS     # golden, golden2, tiny, desk-1..3
    assert cli("fsck").stdout_text.strip() == "clean"


def test_snapshots_rollback_and_removal(cli, tmp_path):
    cli("vm", "snapshot", "desk-1", "clean")
    cli("vm", "write", "desk-1", "--offset", "0", "-", input=blocks(5))
    cli("vm", "snapshot", "desk-1", "patched")
    cli("vm", "write", "desk-1", "--offset", "0", "-", input=blocks(6, 6))
    snaps = json.loads(cli("vm", "snapshots", "desk-1", "--json").stdout)
    assert [s["name"] for s in snaps] == ["clean", "patched"]
    assert snaps[1]["blocks_alone"] == 1            # the block of 5s: nobody else holds it
    proc = cli("vm", "snapshot", "desk-1", "clean", check=False)
    assert proc.returncode == 1 and "already has a snapshot" in proc.stderr_text
    proc = cli("vm", "snapshot", "desk-1", "a b", check=False)      # it said "bad VM name"
    assert proc.returncode == 1 and "bad snapshot name 'a b'" in proc.stderr_text
    cli("vm", "rollback", "desk-1", "patched", "-y")
    assert read(cli, "desk-1", tmp_path) == blocks(5, 1, 2, 0)
    cli("vm", "rollback", "desk-1", "clean", "-y")
    assert read(cli, "desk-1", tmp_path) == blocks(1, 1, 2, 0)
    stats = json.loads(cli("stats", "--json").stdout)
    assert stats["snapshots"] == 2 and stats["snapshot_blocks"] == 1
    cli("vm", "snapshot-rm", "desk-1", "patched", "-y")
    stats = json.loads(cli("stats", "--json").stdout)
    assert stats["snapshots"] == 1 and stats["snapshot_blocks"] == 0
    proc = cli("vm", "rollback", "desk-1", "patched", "-y", check=False)
    assert proc.returncode == 1 and "no snapshot named 'patched'" in proc.stderr_text
    assert cli("fsck").stdout_text.strip() == "clean"


def test_rename_resize_info_and_events(cli, tmp_path):
    started = time.time()
    cli("vm", "snapshot", "golden", "v1")
    cli("vm", "rename", "golden", "base")
    info = json.loads(cli("vm", "info", "base", "--json").stdout)
    assert info["clones"] == ["desk-1", "desk-2", "desk-3"]
    assert [s["name"] for s in info["snapshots"]] == ["v1"] and info["attached"] == []
    assert json.loads(cli("vm", "info", "desk-1", "--json").stdout)["stats"]["origin"] == "base"
    text = cli("vm", "info", "desk-1").stdout_text
    assert "origin          base" in text and "own blocks      0" in text
    cli("vm", "resize", "desk-1", "8M")
    assert json.loads(cli("vm", "info", "desk-1", "--json").stdout)["stats"]["size"] == 8 << 20
    proc = cli("vm", "resize", "desk-2", "8K", check=False)
    assert proc.returncode == 1 and "allow it with --force" in proc.stderr_text
    proc = cli("vm", "resize", "desk-2", "8K", "--force", "-y")
    assert "cuts off its last 8.0 KiB (bytes 8192 to 16383)" in proc.stderr_text
    cli("vm", "resize", "desk-2", "16K")           # grown again: what was cut reads as zeros
    assert read(cli, "desk-2", tmp_path) == blocks(1, 1, 0, 0)
    events = json.loads(cli("events", "--since", str(started), "--json").stdout)
    kinds = [e["kind"] for e in events if e["kind"] != "rebuild"]     # direct opens rebuild
    assert kinds[:4] == ["resize", "resize", "resize", "rename"] and "snapshot" in kinds
    assert "import" not in kinds                    # before --since
    assert "import" in [e["kind"] for e in json.loads(cli("events", "--since", "1h",
                                                           "--json").stdout)]
    proc = cli("events", "--since", "yesterday-ish", check=False)
    assert proc.returncode == 2 and "not a time" in proc.stderr_text


def test_a_golden_with_clones_says_how_many_before_it_goes(cli, pool_dir, tmp_path):
    term = Terminal(tmp_path, f"cd {ROOT} && {sys.executable} -m console -p {pool_dir}"
                              " vm rm golden")
    try:
        term.wait_for("golden image of 3 clones (desk-1, desk-2, desk-3)")
        term.keys("n", "Enter")
        assert term.exit_code() == 1
    finally:
        term.close()
    assert "golden" in cli("vm", "ls").stdout_text
    cli("vm", "rm", "golden", "-y")
    assert read(cli, "desk-1", tmp_path) == blocks(1, 1, 2, 0)
    info = json.loads(cli("vm", "info", "desk-1", "--json").stdout)
    assert info["stats"]["origin"] is None and not info["refreshable"]


def test_version_default_pool_and_options_anywhere(tmp_path):
    proc = run_cli("--version", check=True)
    assert proc.stdout_text.startswith("blockfold ")
    env = {"XDG_DATA_HOME": str(tmp_path / "data"), "BLOCKFOLD_POOL": ""}
    proc = run_cli("stats", env=env)
    default = tmp_path / "data" / "blockfold" / "pool"
    assert proc.returncode == 1 and str(default) in proc.stderr_text
    run_cli("pool", "init", tmp_path / "data" / "blockfold" / "pool", check=True)
    assert json.loads(run_cli("stats", "--json", env=env, check=True).stdout)["vms"] == []
    other = tmp_path / "other"
    run_cli("pool", "init", other, check=True)
    run_cli("vm", "import", "x", "-", "-p", other, input=blocks(1), check=True)
    assert [v["name"] for v in cli_json("vm", "ls", "-p", other)] == ["x"]
    assert [v["name"] for v in cli_json("vm", "ls", f"--pool={other}")] == ["x"]


MiB = 1 << 20


PEAK_RSS = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss * 1024}")
"""
"""Runs a command and writes its exit code and peak RSS (bytes) to a file. A process's ru_maxrss
counts the memory of the process it was forked from (the kernel keeps the larger of the old and
new high-water marks at exec), so the command is forked from this small one, not from pytest."""


def _peak_rss(tmp_path, *args) -> tuple[int, str, int]:
    """Runs `blockfold ARGS` and returns its exit code, its stderr and its peak RSS in bytes."""
    err, result = tmp_path / "stderr.txt", tmp_path / "rss.txt"
    with open(err, "wb") as stderr:
        subprocess.run([sys.executable, "-c", PEAK_RSS, result, sys.executable, "-m", "console",
                        *map(str, args)], cwd=ROOT, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=stderr, timeout=300, check=True)
    code, rss = map(int, result.read_text().split())
    return code, err.read_text(), rss


def test_a_large_write_streams_in_bounded_memory(cli, pool_dir, tmp_path):
    """`vm write` of a 256 MiB file (32 MiB of data, the rest holes) at an unaligned offset:
    the CLI (and a service) stay far below the file's size in RAM, the VM reads the file's bytes
    there (holes overwrite old data with zeros) and its own around them; a source one byte too
    long, a file or a stream, is refused with the VM unchanged."""
    size, offset, length = 320 * MiB, 5 * BS + 1000, 256 * MiB + 777
    old = tmp_path / "old.raw"
    with open(old, "wb") as f:                      # the VM's own data, around and under
        f.truncate(size)
        for at in (0, 150 * MiB, size - 4 * MiB):
            f.seek(at)
            f.write(b"\xaa" * 4 * MiB)
    cli("vm", "import", "big", old)
    source = tmp_path / "source.raw"
    rng = random.Random(7)
    with open(source, "wb") as f:
        f.truncate(length)
        for at in range(0, length - MiB, 8 * MiB):
            f.seek(at)
            f.write(rng.randbytes(MiB))
    code, err, rss = _peak_rss(tmp_path, "-p", pool_dir, "vm", "write", "big",
                               "--offset", offset, source)
    assert code == 0, err
    assert rss < 150 * MiB, f"vm write peaked at {rss / MiB:.0f} MiB"
    service = _service_pid(pool_dir)
    if service is not None:
        assert _hwm(service) < 150 * MiB, f"the service peaked at {_hwm(service) / MiB:.0f} MiB"
    out = tmp_path / "big.out"
    cli("vm", "export", "big", out)
    with open(old, "rb") as was, open(source, "rb") as new, open(out, "rb") as got:
        for at in range(0, size, 8 * MiB):
            expect = bytearray(was.read(8 * MiB))
            lo, hi = max(at, offset), min(at + 8 * MiB, offset + length)
            if lo < hi:
                new.seek(lo - offset)
                expect[lo - at:hi - at] = new.read(hi - lo)
            assert got.read(8 * MiB) == expect, f"bytes from {at} differ"
    events = json.loads(cli("events", "--json").stdout)
    assert [e["kind"] for e in events].count("write") == 1
    assert events[0]["message"] == f"wrote 256 MiB to big at byte {offset:,}"
    # One byte too long, from a file (refused at once) and from a stream (at its end).
    before = json.loads(cli("vm", "info", "big", "--json").stdout)
    tail = tmp_path / "tail.raw"
    tail.write_bytes(b"\x55" * (2 * MiB + 1))
    for args, kw in (((tail,), {}), (("-",), {"input": tail.read_bytes()})):
        proc = cli("vm", "write", "big", "--offset", size - 2 * MiB, *args, check=False, **kw)
        assert proc.returncode == 1 and proc.stderr_text.count("\n") == 1
        assert f"would write past the end of VM big ({size} bytes)" in proc.stderr_text
        assert "nothing written" in proc.stderr_text
    assert json.loads(cli("vm", "info", "big", "--json").stdout) == before
    with open(out, "rb") as f:
        f.seek(size - 2 * MiB)
        exported = f.read()
    cli("vm", "export", "big", out)
    with open(out, "rb") as f:
        f.seek(size - 2 * MiB)
        assert f.read() == exported
    assert cli("fsck").stdout_text.strip() == "clean"


def _service_pid(pool_dir) -> int | None:
    """The pid of the service holding the pool (the 'served' run), from its lock file."""
    if not (pool_dir / "admin.sock").exists():
        return None
    return int((pool_dir / "lock").read_text().split()[0])


def _hwm(pid: int) -> int:
    """A process's peak RSS so far, bytes (VmHWM)."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


def test_a_vm_with_no_golden_image_is_not_rebased_and_a_refresh_says_what_it_did(
        cli, tmp_path):
    cli("vm", "write", "desk-1", "--offset", "0", "-", input=blocks(9))
    proc = cli("vm", "refresh", "desk-1", "-y")
    assert proc.stdout_text.strip() == ("refreshed desk-1: its own writes are dropped; it reads"
                                        " as golden did when it was cloned from it (or last"
                                        " rebased onto it)")
    out = json.loads(cli("vm", "refresh", "desk-2", "-y", "--json").stdout)
    assert out == {"refreshed": "desk-2", "golden": "golden", "size": 4 * BS}
    # An imported VM, and a clone whose golden image is gone: their whole disk is their own.
    cli("vm", "clone", "golden2", "kid")
    cli("vm", "rm", "golden2", "-y")
    before = {name: read(cli, name, tmp_path) for name in ("golden", "kid")}
    for name in ("golden", "kid"):
        for keep in ([], ["--keep-writes"]):
            proc = cli("vm", "rebase", name, "desk-3", "-y", *keep, check=False)
            assert proc.returncode == 1 and f"VM {name} has no golden image" in proc.stderr_text
            assert "clone desk-3 instead" in proc.stderr_text
            assert len(proc.stderr_text.splitlines()) == 1
    assert {name: read(cli, name, tmp_path) for name in ("golden", "kid")} == before
    assert json.loads(cli("vm", "info", "kid", "--json").stdout)["stats"]["origin"] is None
    assert cli("fsck").stdout_text.strip() == "clean"
