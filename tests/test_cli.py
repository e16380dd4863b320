"""The CLI contract that scripts rely on, run as a user would: the real `blockfold` process."""

from __future__ import annotations

import getpass
import os
import re
import shutil
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from engine.api import create_pool
from engine.pool import Pool
from tests.conftest import ROOT, cli_json, run_cli
from tests.terminal import Terminal

BS = 4096


def make_image(path, blocks: int, seed: int, holes: bool = False) -> bytes:
    rng = np.random.default_rng(seed)
    parts = []
    for i in range(blocks):
        kind = i % 4
        if holes and kind == 3:
            parts.append(bytes(BS))
        elif kind == 2:
            parts.append(b"\x07" * BS)                       # repeats: dedups
        else:
            parts.append(rng.integers(0, 256, BS, dtype=np.uint8).tobytes())
    data = b"".join(parts) + b"tail"
    with open(path, "wb") as f:
        for i, part in enumerate(parts):
            if holes and i % 4 == 3:
                f.seek(BS, os.SEEK_CUR)                      # a real hole
            else:
                f.write(part)
        f.write(b"tail")
    return data


@pytest.fixture
def pool(tmp_path):
    """An empty pool, made in this process (the tests of `pool init` run it as a CLI)."""
    return create_pool(tmp_path / "pool")


@pytest.mark.parametrize("offset, at", [("4K", 4096), ("1M", 1 << 20), ("1.5KiB", 1536),
                                        ("0x2000", 8192), ("300", 300)])
def test_vm_write_offset_takes_units_as_sizes_do(pool, tmp_path, offset, at):
    make_image(tmp_path / "a.raw", 512, 5)                  # 2 MiB
    run_cli("-p", pool, "vm", "import", "a", tmp_path / "a.raw", check=True)
    (tmp_path / "patch").write_bytes(b"x" * 5000)
    written = cli_json("-p", pool, "vm", "write", "a", "--offset", offset, tmp_path / "patch")
    assert (written["offset"], written["bytes"]) == (at, 5000)
    run_cli("-p", pool, "vm", "export", "a", tmp_path / "out.raw", check=True)
    expected = bytearray((tmp_path / "a.raw").read_bytes())
    expected[at:at + 5000] = b"x" * 5000
    assert (tmp_path / "out.raw").read_bytes() == expected


def test_lists_of_names_are_joined_with_a_comma_and_a_space(pool, tmp_path):
    make_image(tmp_path / "g.raw", 8, 1)
    run_cli("-p", pool, "vm", "import", "golden", tmp_path / "g.raw", check=True)
    run_cli("-p", pool, "vm", "clone", "golden", "d", "--count", "6", check=True)
    for snap in ("s1", "s2"):
        run_cli("-p", pool, "vm", "snapshot", "golden", snap, check=True)
    info = run_cli("-p", pool, "vm", "info", "golden", check=True).stdout_text
    assert "clones          6 (d-1, d-2, d-3, d-4 +2)" in info
    assert "snapshots       s1 (" in info and "), s2 (" in info
    shown = run_cli("-p", pool, "blocks", "--limit", "1", check=True).stdout_text
    assert "d-1, d-2, d-3, d-4 +3" in shown     # READ BY, as the console's block table has it


def test_import_export_clone_rm_ls_stats(pool, tmp_path):
    data = make_image(tmp_path / "g.raw", 64, 1, holes=True)
    assert run_cli("-p", pool, "vm", "import", "golden", tmp_path / "g.raw").returncode == 0
    clones = cli_json("-p", pool, "vm", "clone", "golden", "d", "--count", "3")
    assert clones["clones"] == ["d-1", "d-2", "d-3"]
    run_cli("-p", pool, "vm", "write", "d-2", "--offset", "10", tmp_path / "g.raw", check=False)
    (tmp_path / "patch").write_bytes(b"hello")
    run_cli("-p", pool, "vm", "write", "d-2", "--offset", "10", tmp_path / "patch", check=True)

    run_cli("-p", pool, "vm", "export", "d-1", tmp_path / "d1.raw", check=True)
    assert (tmp_path / "d1.raw").read_bytes() == data
    # Sparse where the VM has holes: 1/4 of the image is zeros and takes no disk.
    assert os.stat(tmp_path / "d1.raw").st_blocks * 512 < len(data) * 0.8
    run_cli("-p", pool, "vm", "export", "d-2", tmp_path / "d2.raw", check=True)
    assert (tmp_path / "d2.raw").read_bytes() == data[:10] + b"hello" + data[15:]

    names = [v["name"] for v in cli_json("-p", pool, "vm", "ls")]
    assert names == ["d-1", "d-2", "d-3", "golden"]
    stats = cli_json("-p", pool, "stats")
    for key in ("block_size", "logical_bytes", "physical_bytes", "unique_blocks", "dedup_ratio",
                "vms"):
        assert key in stats
    assert stats["block_size"] == BS
    # In blocks on both sides: each VM's last block (4 bytes of its disk) is stored whole.
    logical_blocks = sum(vm["logical_blocks"] for vm in stats["vms"])
    assert stats["dedup_ratio"] == round(logical_blocks * stats["block_size"]
                                         / stats["physical_bytes"], 3)
    assert stats["dedup_ratio"] > 3.5          # 4 VMs over one image, repeats shared

    assert run_cli("-p", pool, "vm", "rm", "golden", "-y").returncode == 0
    assert [v["name"] for v in cli_json("-p", pool, "vm", "ls")] == ["d-1", "d-2", "d-3"]
    run_cli("-p", pool, "vm", "export", "d-3", tmp_path / "d3.raw", check=True)
    assert (tmp_path / "d3.raw").read_bytes() == data


def test_without_a_terminal_a_line_of_stdin_answers_and_none_refuses(pool, tmp_path):
    # No terminal was taken as yes: `vm rm e < /dev/null` deleted, `echo n |` was ignored.
    make_image(tmp_path / "a.raw", 4, 1)
    run_cli("-p", pool, "vm", "import", "a", tmp_path / "a.raw", check=True)
    refused = ("not confirmed: stdin is not a terminal and gave no answer; pass -y to confirm"
               " from a script\n")
    proc = run_cli("-p", pool, "vm", "rm", "a")                     # stdin is /dev/null
    assert (proc.returncode, proc.stderr_text) == (2, f"blockfold: error: vm rm {refused}")
    proc = run_cli("-p", pool, "vm", "rm", "a", input=b"n\n")
    assert proc.returncode == 1 and proc.stderr_text == ("Delete VM a? Its own blocks are freed."
                                                  " [y/N] n\nnot deleted\n")
    proc = run_cli("-p", pool, "vm", "rm", "a", input=b"")           # a closed pipe
    assert proc.returncode == 2 and proc.stderr_text.endswith(refused)
    run_cli("-p", pool, "vm", "snapshot", "a", "s1", check=True)
    proc = run_cli("-p", pool, "vm", "rollback", "a", "s1", input=b"yes\n", check=True)
    assert proc.stdout_text == "rolled a back to s1\n"
    assert [v["name"] for v in cli_json("-p", pool, "vm", "ls")] == ["a"]
    proc = run_cli("-p", pool, "vm", "rm", "a", input=b"y\n", check=True)
    assert proc.stdout_text == "deleted a\n"
    assert cli_json("-p", pool, "vm", "ls") == []


def test_import_from_stdin_and_pool_from_env(pool, tmp_path):
    data = make_image(tmp_path / "i.raw", 8, 2)
    proc = subprocess.run(f"cat {tmp_path / 'i.raw'} | {os.sys.executable} -m console "
                          f"vm import piped -", shell=True, capture_output=True,
                          env=dict(os.environ, BLOCKFOLD_POOL=str(pool)),
                          cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == 0, proc.stderr
    out = run_cli("vm", "export", "piped", "-", env={"BLOCKFOLD_POOL": str(pool)}, check=True)
    assert out.stdout == data


def test_blocks_rebuild_fsck(pool, tmp_path):
    make_image(tmp_path / "a.raw", 16, 3)
    run_cli("-p", pool, "vm", "import", "a", tmp_path / "a.raw", check=True)
    run_cli("-p", pool, "vm", "clone", "a", "b", check=True)
    page = cli_json("-p", pool, "blocks", "--limit", "5")
    assert page["total"] == cli_json("-p", pool, "stats")["unique_blocks"]
    assert len(page["rows"]) == 5
    row = page["rows"][0]
    assert set(row) == {"pbn", "fingerprint", "readers", "refcount", "vms", "nodes"}
    assert len(row["fingerprint"]) == 32 and row["vms"] == ["a", "b"] and row["nodes"] is None
    # --min-refs counts VMs reading: every block is read by a and its clone b, whatever its
    # refcount (the \x07 block: 4 references in a's layer)
    shared = cli_json("-p", pool, "blocks", "--min-refs", "2", "--limit", "100")
    assert shared["total"] == page["total"] and {r["readers"] for r in shared["rows"]} == {2}
    assert sorted({r["refcount"] for r in shared["rows"]}) == [1, 4]
    assert cli_json("-p", pool, "blocks", "--min-refs", "3")["total"] == 0
    table = run_cli("-p", pool, "blocks", "--limit", "100", check=True).stdout_text
    assert "VMS" in table and "NODES" not in table
    # VMS, then the refcount beside it where the two differ (here on every row)
    assert {tuple(line.split()[2:4]) for line in table.splitlines()[1:-1]} == {("2", "1"),
                                                                               ("2", "4")}
    by_prefix = cli_json("-p", pool, "blocks", "--prefix", row["fingerprint"][:6])
    assert row["pbn"] in [r["pbn"] for r in by_prefix["rows"]]
    figures = cli_json("-p", pool, "rebuild", "--full")
    assert figures["mode"] == "full" and figures["blocks"] == page["total"]
    assert figures["corrupt_blocks"] == []
    assert cli_json("-p", pool, "fsck") == {"clean": True, "problems": []}
    # The VMs reading a block in natural order, as every list of VMs (d-10 came before d-2).
    run_cli("-p", pool, "vm", "clone", "a", "d", "--count", "11", check=True)
    names = cli_json("-p", pool, "blocks", "--limit", "1")["rows"][0]["vms"]
    assert names == ["a", "b"] + [f"d-{i}" for i in range(1, 12)]


def test_fsck_exits_1_and_lists_a_corrupt_block(pool, tmp_path):
    make_image(tmp_path / "a.raw", 4, 4)
    run_cli("-p", pool, "vm", "import", "a", tmp_path / "a.raw", check=True)
    with open(pool / "blocks.dat", "r+b") as f:
        f.seek(BS + 100)
        f.write(b"rot")
    proc = run_cli("-p", pool, "fsck")
    assert proc.returncode == 1
    assert "slot 1" in proc.stdout_text and "corrupt" in proc.stdout_text
    # Known from then on: stats says so, and a fast rebuild (which reads no block) still counts
    # it; the rebuild of every open logs nothing about it.
    shown = run_cli("-p", pool, "stats", check=True).stdout_text
    assert "corrupt        1 block with no sound copy (reads fail; fsck names them)\n" in shown
    proc = run_cli("-p", pool, "rebuild")
    assert proc.returncode == 1 and "; 1 corrupt, 0 orphans reclaimed\n" in proc.stdout_text
    assert [e["message"] for e in cli_json("-p", pool, "events") if e["kind"] == "rebuild"] == [
        "fast rebuild (requested): 5 blocks, 1 corrupt, 0 orphans reclaimed"]
    # An export names the VM as its user knows it, not the name its frozen state is read by.
    proc = run_cli("-p", pool, "vm", "export", "a", tmp_path / "out.raw")
    assert proc.returncode == 1
    assert proc.stderr_text.startswith("blockfold: error: VM a (export 1): the block at byte 0"
                                       " is corrupt"), proc.stderr_text
    # A qcow2's too, in one line: qemu-img only knows the read as EIO.
    proc = run_cli("-p", pool, "vm", "export", "a", tmp_path / "out.qcow2")
    assert proc.returncode == 1 and proc.stderr_text.count("\n") == 1, proc.stderr_text
    said = " as qcow2 (VM a, 16.0 KiB): VM a: the block at byte 0 is corrupt"
    assert "cannot write " in proc.stderr_text and said in proc.stderr_text, proc.stderr_text


def unchanged(pool):
    """A snapshot of what is stored, to show that a refused command changed nothing."""
    db = sqlite3.connect(pool / "catalog.db")
    rows = [db.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in ("vms", "layers",
                                                                           "bmap")]
    db.close()
    return rows


@pytest.mark.parametrize("args,code,message", [
    (["vm", "import", "x", "/nonexistent.raw"], 1, "cannot read image /nonexistent.raw"),
    (["vm", "import", "x", "/dev/null"], 1, "not a regular file or a block device"),
    (["vm", "import", "x", "/"], 1, "not a regular file or a block device"),
    (["vm", "import", "a", "IMG"], 1, "already exists"),
    (["vm", "import", "bad/name", "IMG"], 1, "bad VM name"),
    (["vm", "import", "-dash", "IMG"], 2, ""),
    (["vm", "clone", "nope", "y"], 1, "no VM named 'nope'"),
    (["vm", "clone", "a", "a"], 1, "already exists"),
    (["vm", "clone", "a", "y", "--count", "0"], 2, "must be at least 1"),
    # 100 M clones made 29 M in 9.5 min, and then every open of the pool was killed for memory.
    (["vm", "clone", "a", "y", "--count", "100000000"], 1,
     "bad clone count 100,000,000: at most 1,000,000 a command"),
    (["vm", "rm", "nope"], 1, "no VM named 'nope'"),
    (["vm", "export", "nope", "OUT"], 1, "no VM named"),
    (["vm", "write", "a", "--offset", "65536", "IMG"], 1, "would write past the end of VM a"),
    (["vm", "write", "a", "--offset", "-5", "IMG"], 2, "must not be negative"),
    (["vm", "write", "a", "--offset", "12x", "IMG"], 2, "not a whole number"),
    # 1.5 wrote at byte 1 (the half byte dropped), 0.3K at byte 307.
    (["vm", "write", "a", "--offset", "1.5", "IMG"], 2, "not a whole number of bytes: '1.5'"),
    (["vm", "write", "a", "--offset", "0.3K", "IMG"], 2, "not a whole number of bytes"),
    # --rate 0 (or under a byte) scrubbed as fast as it went, unpaced.
    (["scrub", "--rate", "0"], 2, "argument --rate: must be above 0: 0"),
    (["scrub", "--rate", "0.5"], 2, "argument --rate: must be above 0: 0.5"),
    (["scrub", "--rate", "fast"], 2, "argument --rate: bad size 'fast'"),
    (["blocks", "--prefix", "xyz"], 1, "bad fingerprint prefix"),
    # Past sqlite's 64-bit INTEGER: "internal error: OverflowError", exit 1.
    (["blocks", "--offset", "99999999999999999999"], 2, "argument --offset: too large:"
     " 99999999999999999999 (at most 9223372036854775807)"),
    (["blocks", "--limit", "99999999999999999999"], 2, "argument --limit: too large"),
    (["blocks", "--min-refs", "99999999999999999999"], 2, "argument --min-refs: too large"),
    (["events", "--limit", "99999999999999999999"], 2, "argument --limit: too large"),
    (["job", "cancel", "99999999999999999999"], 2, "argument ID: too large"),
    # 0 read as no rate: the whole pool scrubbed at full speed.
    (["scrub", "--rate", "0"], 2, "argument --rate: must be above 0: 0 (without the option: no"
     " limit)"),
    (["scrub", "--rate", "0K"], 2, "argument --rate: must be above 0: 0K"),
    (["frobnicate"], 2, "invalid choice"),
])
def test_bad_input_is_one_clear_line_and_changes_nothing(pool, tmp_path, args, code, message):
    make_image(tmp_path / "a.raw", 16, 5)
    run_cli("-p", pool, "vm", "import", "a", tmp_path / "a.raw", check=True)
    before = unchanged(pool)
    args = [str(tmp_path / "a.raw") if a == "IMG" else str(tmp_path / "o") if a == "OUT" else a
            for a in args]
    proc = run_cli("-p", pool, *args)
    assert proc.returncode == code
    assert message in proc.stderr_text
    assert "Traceback" not in proc.stderr_text
    if code == 1:
        assert len(proc.stderr_text.strip().splitlines()) == 1
    assert unchanged(pool) == before


def test_not_a_pool_newer_format_and_no_pool(tmp_path, pool):
    proc = run_cli("-p", tmp_path, "stats")
    assert proc.returncode == 1 and "is not a Blockfold pool" in proc.stderr_text
    # No pool given: the console's default pool, which does not exist here.
    proc = run_cli("stats", env={"BLOCKFOLD_POOL": "", "XDG_DATA_HOME": str(tmp_path / "xdg")})
    assert proc.returncode == 1 and "is not a Blockfold pool" in proc.stderr_text
    default = tmp_path / "xdg" / "blockfold" / "pool"
    assert proc.stderr_text == (f"blockfold: error: {default} is not a Blockfold pool (no such"
                                f" directory): make one with `blockfold pool init {default}`\n")
    db = sqlite3.connect(pool / "catalog.db")
    db.execute("UPDATE meta SET value='7' WHERE key='format_version'")
    db.commit()
    proc = run_cli("-p", pool, "vm", "ls")
    assert proc.returncode == 1 and "format 7" in proc.stderr_text and "upgrade" in proc.stderr_text


def test_a_locked_pool_is_refused_with_the_holder(pool, tmp_path):
    make_image(tmp_path / "a.raw", 4, 6)
    with Pool.open(pool):
        proc = run_cli("-p", pool, "vm", "import", "a", tmp_path / "a.raw")
        assert proc.returncode == 1
        assert f"in use by another process (pid {os.getpid()})" in proc.stderr_text
        assert run_cli("-p", pool, "vm", "ls").returncode == 0      # looking is allowed


def test_a_pool_whose_lock_file_was_removed_under_its_writer_is_still_refused(pool, tmp_path):
    # `rm DIR/lock` beside a service let a second one lock a new file and open the pool: two
    # writers handed out the same free slots, flushed writes were lost and fsck said clean.
    make_image(tmp_path / "a.raw", 4, 6)
    with Pool.open(pool):
        (pool / "lock").unlink()
        proc = run_cli("-p", pool, "vm", "import", "a", tmp_path / "a.raw")
        assert proc.returncode == 1 and proc.stderr_text == (
            f"blockfold: error: pool {pool} is in use by another process (pid {os.getpid()}),"
            f" though its lock file {pool / 'lock'} was removed or replaced while it ran: stop"
            " that process first\n")
        assert run_cli("-p", pool, "vm", "ls").returncode == 0      # looking is allowed
    # Once it has stopped (or died: a kill leaves the pool dirty), the pool opens again.
    run_cli("-p", pool, "vm", "import", "a", tmp_path / "a.raw", check=True)
    killed = subprocess.Popen([sys.executable, "-c", "import time; from engine.pool import Pool;"
                               f" p = Pool.open({str(pool)!r}); print('open', flush=True);"
                               " time.sleep(60)"], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert killed.stdout.readline() == "open\n"
        (pool / "lock").unlink()
        assert run_cli("-p", pool, "vm", "clone", "a", "b").returncode == 1
    finally:
        killed.kill()
        killed.wait()
    run_cli("-p", pool, "vm", "clone", "a", "b", check=True)
    assert cli_json("-p", pool, "fsck")["clean"]


def test_running_out_of_disk_mid_import_leaves_no_half_vm(tmp_path, small_fs):
    pool = small_fs(16) / "pool"
    run_cli("pool", "init", pool, check=True)
    make_image(tmp_path / "small.raw", 64, 7)
    run_cli("-p", pool, "vm", "import", "small", tmp_path / "small.raw", check=True)
    before = unchanged(pool)
    make_image(tmp_path / "big.raw", 8192, 8)                    # 32 MiB into 16 MiB
    proc = run_cli("-p", pool, "vm", "import", "big", tmp_path / "big.raw")
    assert proc.returncode == 1 and "out of disk space" in proc.stderr_text
    assert unchanged(pool) == before
    assert [v["name"] for v in cli_json("-p", pool, "vm", "ls")] == ["small"]
    # A write that runs out of disk halfway changes nothing either.
    with open(tmp_path / "holes.raw", "wb") as f:
        f.truncate(64 << 20)
        f.seek((64 << 20) - 1)
        f.write(b"\x01")
    run_cli("-p", pool, "vm", "import", "roomy", tmp_path / "holes.raw", check=True)
    before = unchanged(pool)
    proc = run_cli("-p", pool, "vm", "write", "roomy", "--offset", "0", tmp_path / "big.raw")
    assert proc.returncode == 1 and "out of disk space" in proc.stderr_text
    assert unchanged(pool) == before
    assert cli_json("-p", pool, "fsck")["clean"]


def test_help_explains_the_commands():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for word in ("pool", "vm", "stats", "blocks", "rebuild", "fsck", "BLOCKFOLD_POOL"):
        assert word in proc.stdout_text
    proc = run_cli("vm", "clone", "--help")
    assert "--count" in proc.stdout_text and "NEW-1" in proc.stdout_text


def test_export_of_a_rotten_block_fails_naming_the_vm_and_offset(pool, tmp_path):
    make_image(tmp_path / "a.raw", 4, 9)
    run_cli("-p", pool, "vm", "import", "a", tmp_path / "a.raw", check=True)
    with open(pool / "blocks.dat", "r+b") as f:
        f.seek(3 * BS + 7)                 # slot 3 holds the image's third block
        byte = f.read(1)
        f.seek(3 * BS + 7)
        f.write(bytes([byte[0] ^ 0xFF]))
    (tmp_path / "out.raw").write_bytes(b"the good image")
    proc = run_cli("-p", pool, "vm", "export", "a", tmp_path / "out.raw")
    assert proc.returncode == 1
    assert "VM a" in proc.stderr_text and f"byte {2 * BS}" in proc.stderr_text
    assert len(proc.stderr_text.strip().splitlines()) == 1
    # The export was written beside out.raw: what was there is left as it was.
    assert (tmp_path / "out.raw").read_bytes() == b"the good image"
    assert sorted(os.listdir(tmp_path)) == ["a.raw", "out.raw", "pool"]
    assert cli_json("-p", pool, "stats")["corrupt_blocks"] == 1


def test_every_argument_of_every_command_has_help():
    from console.cli import build_parser

    def walk(parser, words):
        for action in parser._actions:
            if action.choices and hasattr(action, "_name_parser_map"):
                for word, sub in action.choices.items():
                    yield from walk(sub, [*words, word])
            elif action.dest != "help":
                yield " ".join(words), action.option_strings or [action.dest], action.help

    missing = [(cmd, flags) for cmd, flags, text in walk(build_parser(), []) if not text]
    assert missing == []


@pytest.mark.parametrize("args,message", [
    (["vm"], "vm needs an action: import, export, write, clone, rm, ls, info, rename, resize,"
             " refresh, rebase, snapshot, snapshots, rollback or snapshot-rm"),
    (["pool"], "pool needs an action: init"),
    (["-p", "POOL", "node", "ls"], "node ls needs a cluster: use -c DIR"),
    (["-p", "POOL", "heal"], "heal needs a cluster: use -c DIR"),
])
def test_a_command_short_of_its_action_or_cluster_is_a_usage_error(pool, args, message):
    proc = run_cli(*[str(pool) if a == "POOL" else a for a in args])
    assert proc.returncode == 2 and proc.stderr_text.strip() == f"blockfold: error: {message}"


def test_json_of_an_embedded_pool_has_every_field_a_cluster_has(pool, tmp_path):
    make_image(tmp_path / "a.raw", 8, 9)
    run_cli("-p", pool, "vm", "import", "a", tmp_path / "a.raw", check=True)
    stats = cli_json("-p", pool, "stats")
    assert stats["replicas"] == stats["min_replicas"] == 1
    assert stats["under_replicated_blocks"] == 0 and isinstance(stats["free_slots"], int)
    [node] = stats["nodes"]
    assert (node["name"], node["state"], node["latency_ms"]) == ("local", "up", None)
    assert node["live_blocks"] == stats["unique_blocks"]
    figures = cli_json("-p", pool, "rebuild")
    assert figures["reason"] == "requested" and figures["missing_blocks"] is None


def test_figures_read_one_way_for_people(pool, tmp_path):
    """Counts with separators, sizes in IEC units, VMs in natural order, no rate for a rebuild
    too short to have one (engine/formats.py)."""
    make_image(tmp_path / "g.raw", 1400, 3)
    run_cli("-p", pool, "vm", "import", "golden", tmp_path / "g.raw", check=True)
    run_cli("-p", pool, "vm", "clone", "golden", "desk", "--count", "11", check=True)
    names = [line.split()[0] for line in
             run_cli("-p", pool, "vm", "ls", check=True).stdout_text.splitlines()[1:]]
    assert names == [*(f"desk-{i}" for i in range(1, 12)), "golden"]
    stats = dict(re.split(r"\s{2,}", line, maxsplit=1)
                 for line in run_cli("-p", pool, "stats", check=True).stdout_text.splitlines())
    unique = cli_json("-p", pool, "stats")["unique_blocks"]
    assert unique > 999 and stats["unique blocks"] == f"{unique:,}"
    assert stats["block size"] == "4.0 KiB" and stats["logical"].endswith(" MiB")
    said = run_cli("-p", pool, "rebuild", check=True).stdout_text
    assert f"{unique:,} blocks" in said and "/s" not in said


def test_one_block_reads_as_1_block(pool, tmp_path):
    """A pool of one block: the rebuild's and the scrub's lines and events said "1 blocks"."""
    (tmp_path / "one.raw").write_bytes(os.urandom(BS))
    run_cli("-p", pool, "vm", "import", "one", tmp_path / "one.raw", check=True)
    said = run_cli("-p", pool, "rebuild", check=True).stdout_text
    assert said.startswith("fast rebuild: 1 block (4.0 KiB) in ")
    assert said.endswith("; 0 corrupt, 0 orphans reclaimed\n")
    [event] = cli_json("-p", pool, "events", "--limit", "1")
    assert event["message"] == "fast rebuild (requested): 1 block, 0 corrupt, 0 orphans reclaimed"
    said = run_cli("-p", pool, "scrub", check=True).stdout_text
    assert said.startswith("scrubbed 1 block (4.0 KiB) in ")
    [event] = cli_json("-p", pool, "events", "--limit", "1")
    assert event["message"].startswith("scrub finished: 1 block (4.0 KiB) verified in ")


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
def test_the_progress_bar_ends_on_its_own_line(pool, tmp_path):
    """On a terminal, import shows a bar (rich.progress), and what it prints next starts a line
    of its own."""
    (tmp_path / "big.raw").write_bytes(os.urandom(64 << 20))
    t = Terminal(tmp_path, f"{sys.executable} -m console -p {pool} vm import big "
                           f"{tmp_path / 'big.raw'}")
    try:
        assert t.exit_code(timeout=60) == 0
        lines = [line for line in t.screen().splitlines() if line.strip()]
        bar = next(i for i, line in enumerate(lines) if line.startswith("import"))
        assert "100%" in lines[bar] and "━" in lines[bar]
        assert lines[bar + 1] == "imported big: 64.0 MiB"
    finally:
        t.close()


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
@pytest.mark.parametrize("command", ["vm import piped -", "vm write disk --offset 0 -"])
def test_a_stream_shows_the_bytes_read_and_the_rate_not_a_percentage(pool, tmp_path, command):
    """From a pipe the total is not known: while it reads, and at its end, the bar shows the
    bytes read so far and the rate, never a percentage (it showed 100 % from the start)."""
    part = tmp_path / "part.raw"
    part.write_bytes(os.urandom(8 << 20))
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as f:
        f.truncate(32 << 20)
    run_cli("-p", pool, "vm", "import", "disk", disk, check=True)
    phase = command.split()[1]
    t = Terminal(tmp_path, f"(cat {part}; sleep 3; cat {part}) | {sys.executable} -m console"
                           f" -p {pool} {command}")

    def bar() -> str:
        return next((line for line in t.screen().splitlines()
                     if line.startswith(phase) and "MiB/s" in line), "")
    try:
        t.wait_for("MiB/s", timeout=20)             # half read, the producer asleep
        assert "MiB " in bar() and "%" not in bar(), t.screen()
        assert t.exit_code(timeout=60) == 0, t.screen()
        assert "16.0 MiB" in bar() and "%" not in bar(), t.screen()
    finally:
        t.close()


def test_events_name_who_acted_and_an_open_is_no_event(pool, tmp_path):
    """Imports, `vm write`, an asked-for rebuild and a scrub are events under the local user;
    the rebuild each command does as it opens the pool is not."""
    make_image(tmp_path / "a.raw", 8, 5)
    run_cli("-p", pool, "vm", "import", "a", tmp_path / "a.raw", check=True)
    for _ in range(3):
        run_cli("-p", pool, "vm", "ls", check=True)
        run_cli("-p", pool, "stats", check=True)
    (tmp_path / "w").write_bytes(b"w" * BS)
    run_cli("-p", pool, "vm", "write", "a", "--offset", str(BS), tmp_path / "w", check=True)
    run_cli("-p", pool, "rebuild", check=True)
    run_cli("-p", pool, "scrub", check=True)
    events = cli_json("-p", pool, "events")
    assert [e["kind"] for e in events] == ["scrub", "rebuild", "write", "import"]
    assert {e["actor"] for e in events} == {getpass.getuser()}
    assert set(events[0]) == {"id", "ts", "actor", "kind", "message"}
    assert events[2]["message"] == "wrote 4.0 KiB to a at byte 4,096"
    text = run_cli("-p", pool, "events", "--limit", "2", check=True).stdout_text
    assert text.splitlines()[0].split() == ["WHEN", "WHO", "WHAT", "MESSAGE"]
    assert len(text.splitlines()) == 3 and "scrub finished: 8 blocks" in text


@pytest.mark.parametrize("options,message", [
    (["-p", ""], "argument -p/--pool: an empty path: give a directory"),
    (["--cluster="], "argument -c/--cluster: an empty path: give a directory"),
    (["-p", "DEFAULT", "-c", "DEFAULT"], "give -p (a pool) or -c (a cluster), not both"),
])
def test_an_empty_or_doubled_pool_option_never_falls_through_to_another_pool(
        tmp_path, options, message):
    """`-p "$POOL"` with POOL unset removed from the default pool; -c silently beat -p."""
    env = {"XDG_DATA_HOME": str(tmp_path / "xdg"), "BLOCKFOLD_POOL": ""}
    default = tmp_path / "xdg" / "blockfold" / "pool"
    run_cli("pool", "init", default, check=True)
    image = tmp_path / "a.raw"
    image.write_bytes(os.urandom(BS))
    run_cli("-p", default, "vm", "import", "keep", image, check=True)
    options = [str(default) if o == "DEFAULT" else o for o in options]
    proc = run_cli(*options, "vm", "rm", "-y", "keep", env=env)
    assert proc.returncode == 2, proc.stderr_text
    assert proc.stderr_text.strip().splitlines()[-1] == f"blockfold: error: {message}"
    assert [v["name"] for v in cli_json("-p", default, "vm", "ls")] == ["keep"]


def test_an_empty_pools_stats_give_a_dash_for_what_does_not_apply(pool):
    """Metadata RAM per block of no blocks read "0.0 B per block"."""
    out = run_cli("-p", pool, "stats", check=True).stdout_text
    assert re.search(r"^metadata RAM +\S+ \S+ \(— per block\)$", out, re.M), out
    assert cli_json("-p", pool, "stats")["metadata_ram_bytes_per_block"] == 0


def test_a_console_without_a_terminal_is_refused_in_one_line(pool, tmp_path):
    """stdin and stdout not terminals (a script): exit 2 at once, naming them, and nothing made
    (the default pool, a demo's nodes); stdout alone redirected in a real terminal: the same."""
    xdg = {"XDG_DATA_HOME": str(tmp_path / "xdg"), "BLOCKFOLD_POOL": ""}
    for args, env in ((["-p", pool, "console"], None), ([], xdg),
                      (["demo", "--dir", tmp_path / "demo"], None)):
        proc = run_cli(*args, env=env)
        assert proc.returncode == 2 and proc.stdout_text == ""
        assert proc.stderr_text == ("blockfold: error: the console needs a terminal, but stdin"
                                    " and stdout are not terminals: run it in a terminal"
                                    " (ssh -t), or use the commands (blockfold --help) in"
                                    " scripts\n")
    assert not (tmp_path / "xdg").exists() and not (tmp_path / "demo").exists()
    term = Terminal(tmp_path, f"{sys.executable} -m console -p {pool} console > {tmp_path}/out")
    try:
        assert term.exit_code() == 2
        term.wait_for("but stdout is not one")
    finally:
        term.close()
    assert (tmp_path / "out").read_text() == ""


@pytest.mark.parametrize("args,message", [
    (["cluster", "up", "CL", "--repair-delay", "-5"], "argument --repair-delay: must not be"
     " negative: -5"),
    (["cluster", "up", "CL", "--repair-delay", "nan"], "argument --repair-delay: not a finite"
     " number: 'nan'"),
    (["cluster", "up", "CL", "--repair-delay", "soon"], "argument --repair-delay: not a number:"
     " 'soon'"),
    (["cluster", "up", "CL", "--memory", "0"], "argument --memory: must be above 0: 0"),
    (["cluster", "up", "CL", "--memory=-1G"], "argument --memory: bad size '-1G'"),
    (["cluster", "up", "CL", "--memory", "lots"], "argument --memory: bad size 'lots'"),
    (["cluster", "add", "CL", "127.0.0.1:1", "--weight", "0"], "argument --weight: must be above"
     " 0: 0"),
    (["cluster", "add", "CL", "127.0.0.1:1", "--weight", "-2"], "argument --weight: must be"
     " above 0: -2"),
    (["cluster", "add", "CL", "127.0.0.1:1", "--weight", "inf"], "argument --weight: not a finite"
     " number: 'inf'"),
    (["cluster", "add", "CL", "127.0.0.1:1", "--weight", "heavy"], "argument --weight: not a"
     " number: 'heavy'"),
    (["node", "serve", "--data", "CL", "--listen", "127.0.0.1:0", "--memory", "0"],
     "argument --memory: must be above 0: 0"),
])
def test_a_bad_delay_weight_or_memory_is_a_usage_error_before_anything_starts(tmp_path, args,
                                                                             message):
    where = tmp_path / "cl"
    try:
        proc = run_cli(*[where if a == "CL" else a for a in args])
        assert proc.returncode == 2 and "Traceback" not in proc.stderr_text
        assert proc.stderr_text.splitlines()[-1].startswith(f"blockfold: error: {message}")
        assert not where.exists()
    finally:
        if where.exists():          # made by a check that let a bad value through: its nodes go
            run_cli("cluster", "down", where)


@pytest.mark.parametrize("size,made", [("64K", 65536), ("8192", 8192), ("0", None),
                                       ("3000", None), ("1M", None), ("lots", None)])
def test_a_block_size_is_given_as_other_sizes_are_and_any_bad_one_is_a_usage_error(
        tmp_path, size, made):
    # 64K was "not a whole number"; 0 was "must be at least 1" (exit 2) and 3000 "use a power
    # of two from 4096" (exit 1).
    proc = run_cli("pool", "init", tmp_path / "p", "--block-size", size)
    if made:
        assert proc.returncode == 0
        assert cli_json("-p", tmp_path / "p", "stats")["block_size"] == made
    else:
        assert proc.returncode == 2 and not (tmp_path / "p").exists()
        assert proc.stderr_text.endswith(
            f"error: argument --block-size: not a block size: '{size}' (a power of two from 4K"
            " to 64K: 4K, 8K, 16K, 32K or 64K)\n")
