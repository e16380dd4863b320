"""VM sizes at the edges, through the CLI on a real pool: a size no VM can have (past the largest
disk qemu opens) is one clear line (the figure as typed) with nothing changed, shrinking an
enormous sparse VM costs what its pages do, not what its size does (it ran for hours, holding the
pool's lock), and an export that qemu-img cannot make of a huge VM says why in the user's terms."""

from __future__ import annotations

import os
import sqlite3

from tests.conftest import cli_json, run_cli
from tests.nbdclient import servers, tool

LARGEST = 2**63 - 2**30          # qemu's BDRV_MAX_LENGTH: INT64_MAX rounded down to 1 GiB


def _pool_with_vm(tmp_path):
    pool = tmp_path / "pool"
    run_cli("pool", "init", pool, check=True)
    image = tmp_path / "a.raw"
    image.write_bytes(os.urandom(64 * 1024))
    run_cli("-p", pool, "vm", "import", "a", image, check=True)
    return pool, image


def test_a_size_past_the_largest_is_refused_as_typed_and_changes_nothing(tmp_path):
    pool, _ = _pool_with_vm(tmp_path)
    typed = "99999999999999999999999"
    proc = run_cli("-p", pool, "vm", "resize", "a", typed)
    assert proc.returncode == 1
    lines = proc.stderr_text.strip().splitlines()
    assert len(lines) == 1 and typed in lines[0] and "8 EiB less 1 GiB" in lines[0], lines
    assert "internal" not in lines[0] and "SQLite" not in lines[0]
    assert cli_json("-p", pool, "vm", "info", "a")["stats"]["size"] == 64 * 1024


def test_shrinking_an_enormous_sparse_vm_is_quick_and_keeps_what_stays(tmp_path):
    pool, image = _pool_with_vm(tmp_path)
    run_cli("-p", pool, "vm", "resize", "a", "4000000T", check=True)
    # Before: one page visit per 2 MiB of the cut, ~2^41 of them; run_cli gives up at 120 s.
    run_cli("-p", pool, "vm", "resize", "a", "64K", "--force", "-y", check=True)
    out = tmp_path / "a.out"
    run_cli("-p", pool, "vm", "export", "a", out, check=True)
    assert out.read_bytes() == image.read_bytes()
    assert cli_json("-p", pool, "fsck")["clean"]


def test_a_size_no_vm_can_have_is_refused_before_any_shrink_warning(tmp_path):
    """`vm resize a 0 --force -y` warned that the shrink cut off all of VM a, then refused 0."""
    pool, _ = _pool_with_vm(tmp_path)
    for force in ((), ("--force", "-y")):
        proc = run_cli("-p", pool, "vm", "resize", "a", "0", *force)
        assert proc.returncode == 1
        assert proc.stderr_text == ("blockfold: error: bad VM size 0: it must be from 1 byte to"
                                    " 9,223,372,035,781,033,984 B (8 EiB less 1 GiB, the"
                                    " largest disk qemu opens)\n")
    assert cli_json("-p", pool, "vm", "info", "a")["stats"]["size"] == 64 * 1024


def test_a_resize_reads_in_iec_units_and_exactly_where_a_unit_would_round(tmp_path):
    """The refusal of a cut to 4097 bytes said "4.0 KiB"; the resize event said raw bytes."""
    pool, _ = _pool_with_vm(tmp_path)
    proc = run_cli("-p", pool, "vm", "resize", "a", "4097")
    assert proc.returncode == 1
    assert proc.stderr_text == ("blockfold: error: 4,097 B (4.0 KiB) is smaller than VM a"
                                " (64.0 KiB): shrinking cuts off its last 61,439 B (60.0 KiB);"
                                " allow it with --force\n")
    said = run_cli("-p", pool, "vm", "resize", "a", "2G", check=True).stdout_text
    assert said == "resized a from 64.0 KiB to 2.0 GiB\n"
    [event] = cli_json("-p", pool, "events", "--limit", "1")
    assert event["message"] == "resized a from 64.0 KiB to 2.0 GiB"
    run_cli("-p", pool, "vm", "resize", "a", "4097", "--force", "-y", check=True)
    [event] = cli_json("-p", pool, "events", "--limit", "1")
    assert event["message"] == "resized a from 2.0 GiB to 4,097 B (4.0 KiB)"


def test_the_largest_vm_is_the_largest_disk_qemu_opens_and_one_byte_more_is_refused(tmp_path):
    """A VM of 2^63-1 bytes (the catalog's bound) was accepted, and every qemu tool refused its
    NBD export: "Could not refresh total sector count: File too large"."""
    pool, _ = _pool_with_vm(tmp_path)
    run_cli("-p", pool, "vm", "resize", "a", str(LARGEST), check=True)
    with servers(pool) as start:
        uri = start().uri("a")
        said = tool("qemu-io", "-f", "raw", "-c", f"write -P 0xab {LARGEST - 8192} 4096",
                    "-c", f"read -P 0xab {LARGEST - 8192} 4096",
                    "-c", f"read -P 0 {LARGEST - 4096} 4096", uri).stdout
        assert said.count("4096/4096 bytes at offset") == 3, said
    proc = run_cli("-p", pool, "vm", "resize", "a", str(LARGEST + 1))
    assert proc.returncode == 1
    assert proc.stderr_text == (f"blockfold: error: bad VM size {LARGEST + 1}: it must be from 1"
                                " byte to 9,223,372,035,781,033,984 B (8 EiB less 1 GiB, the"
                                " largest disk qemu opens)\n")
    assert cli_json("-p", pool, "vm", "info", "a")["stats"]["size"] == LARGEST


def test_a_qcow2_export_of_a_vm_too_large_for_qcow2_says_why_in_the_users_terms(tmp_path):
    # It named the .part file qemu-img was writing, a name the user never gave.
    pool, _ = _pool_with_vm(tmp_path)
    run_cli("-p", pool, "vm", "resize", "a", "4096T", check=True)
    out = tmp_path / "a.qcow2"
    proc = run_cli("-p", pool, "vm", "export", "a", out, "--format", "qcow2")
    assert proc.returncode == 1
    prefix = f"blockfold: error: cannot write {out} as qcow2 (VM a, 4.0 PiB): "
    assert proc.stderr_text.startswith(prefix) and proc.stderr_text.count("\n") == 1
    assert ".part" not in proc.stderr_text and "nbd" not in proc.stderr_text
    assert not out.exists() and not [f for f in os.listdir(tmp_path) if f.endswith(".part")]


def test_a_vm_left_past_the_largest_says_so_on_export_not_an_internal_address(tmp_path):
    # A VM grown before the bound: qemu-img's "Could not open 'nbd+unix:///a?socket=/tmp/...'"
    # was the whole story.
    pool, _ = _pool_with_vm(tmp_path)
    db = sqlite3.connect(pool / "catalog.db")       # as an older version let it grow
    with db:
        db.execute("UPDATE vms SET size = ? WHERE name = 'a'", (2**63 - 1,))
    db.close()
    out = tmp_path / "a.qcow2"
    proc = run_cli("-p", pool, "vm", "export", "a", out, "--format", "qcow2")
    assert proc.returncode == 1
    assert proc.stderr_text == (
        f"blockfold: error: cannot write {out} as qcow2: VM a is 9,223,372,036,854,775,807 B"
        " (8.0 EiB), past 9,223,372,035,781,033,984 B (8 EiB less 1 GiB, the largest disk qemu"
        " opens); shrink it first (`vm resize a SIZE --force`)\n")
    assert not out.exists()


def test_a_vm_whose_size_ends_inside_a_block_counts_only_its_own_bytes(tmp_path):
    """On a 64 KiB pool a 100 KiB VM written to its end reads 100 KiB of data: its logical
    bytes are 100 KiB, not the 128 KiB of its two blocks (more than its size), and the dedup
    ratio, blocks over blocks, is 1 until a clone shares them."""
    pool = tmp_path / "pool"
    run_cli("pool", "init", pool, "--block-size", "64K", check=True)
    (tmp_path / "zeros.raw").write_bytes(bytes(100 * 1024))
    run_cli("-p", pool, "vm", "import", "a", tmp_path / "zeros.raw", check=True)
    (tmp_path / "end.raw").write_bytes(os.urandom(8 * 1024))
    run_cli("-p", pool, "vm", "write", "a", tmp_path / "end.raw", "--offset", "92K", check=True)
    (vm,) = cli_json("-p", pool, "vm", "ls")
    assert (vm["size"], vm["logical_bytes"], vm["logical_blocks"]) == (100 * 1024, 36 * 1024, 1)
    run_cli("-p", pool, "vm", "write", "a", tmp_path / "end.raw", "--offset", "0", check=True)
    (vm,) = cli_json("-p", pool, "vm", "ls")
    assert (vm["logical_bytes"], vm["logical_blocks"]) == (100 * 1024, 2)
    stats = cli_json("-p", pool, "stats")
    assert (stats["logical_bytes"], stats["dedup_ratio"]) == (100 * 1024, 1.0)
    run_cli("-p", pool, "vm", "clone", "a", "b", check=True)
    stats = cli_json("-p", pool, "stats")
    assert (stats["logical_bytes"], stats["dedup_ratio"]) == (200 * 1024, 2.0)
