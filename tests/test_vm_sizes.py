"""VM sizes at the edges, through the CLI on a real pool: a size the catalog cannot hold is one
clear line (the figure as typed) with nothing changed, and shrinking an enormous sparse VM costs
what its pages do, not what its size does (it ran for hours, holding the pool's lock)."""

from __future__ import annotations

import os

from tests.conftest import cli_json, run_cli


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
    assert len(lines) == 1 and typed in lines[0] and "8.0 EiB" in lines[0], lines
    assert "internal" not in lines[0] and "SQLite" not in lines[0]
    assert cli_json("-p", pool, "vm", "info", "a")["stats"]["size"] == 64 * 1024


def test_shrinking_an_enormous_sparse_vm_is_quick_and_keeps_what_stays(tmp_path):
    pool, image = _pool_with_vm(tmp_path)
    run_cli("-p", pool, "vm", "resize", "a", "4000000T", check=True)
    # Before: one page visit per 2 MiB of the cut, ~2^41 of them; run_cli gives up at 120 s.
    run_cli("-p", pool, "vm", "resize", "a", "64K", "--force", check=True)
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
                                    " 8.0 EiB\n")
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
