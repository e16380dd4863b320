"""Damaged pool files (issue 15.5): one clear line naming the file and what to do, exit 1, nothing
changed; never "internal error". Every command that opens the pool says it, fsck included."""

from __future__ import annotations

import os
import shutil
import sqlite3

import pytest

from tests.conftest import run_cli

BS = 4096


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    base = tmp_path_factory.mktemp("damaged")
    pool = base / "pool"
    run_cli("pool", "init", pool, check=True)
    image = base / "img.raw"
    image.write_bytes(os.urandom(64 * BS))
    run_cli("-p", pool, "vm", "import", "g", image, check=True)
    run_cli("-p", pool, "vm", "clone", "g", "c", check=True)
    return pool, image


def overwrite(at_fraction: float, length: int):
    def damage(path):
        with open(path, "r+b") as f:
            f.seek(int(path.stat().st_size * at_fraction))
            f.write(os.urandom(length))
    return damage


def sql(statement: str):
    def damage(path):
        db = sqlite3.connect(path)
        db.executescript(statement)
        db.commit()
        db.close()
    return damage


CASES = {
    # file, damage, words the line names
    "catalog not a database": ("catalog.db", overwrite(0, 100), ["catalog.db", "damaged",
                                                                  "backup"]),
    "catalog cut in half": ("catalog.db", lambda p: os.truncate(p, p.stat().st_size // 2),
                            ["catalog.db", "damaged"]),
    "catalog garbage inside": ("catalog.db", overwrite(0.5, 4096), ["catalog.db", "damaged"]),
    # Python cannot decode it, and quoted it back with a newline inside: two lines, "cannot use".
    "catalog text not UTF-8": ("catalog.db", sql("UPDATE vms SET name = CAST(x'ff0a01' AS TEXT)"
                                                 " WHERE rowid = (SELECT min(rowid) FROM vms)"),
                               ["catalog.db", "damaged"]),
    "catalog page of 2 bytes": ("catalog.db", sql("UPDATE bmap SET entries = x'0102'"),
                                ["catalog.db", "damaged", "block-table page"]),
    "catalog top layer gone": ("catalog.db", sql("UPDATE vms SET top = 999"),
                               ["catalog.db", "layer 999"]),
    "catalog bad block size": ("catalog.db",
                               sql("UPDATE meta SET value='abc' WHERE key='block_size'"),
                               ["catalog.db", "damaged"]),
    "catalog negative size": ("catalog.db", sql("UPDATE vms SET size = -5"),
                              ["catalog.db", "damaged"]),
    "catalog layer cycle": ("catalog.db", sql("UPDATE layers SET parent = id"),
                            ["catalog.db", "damaged"]),
    "blocks.dat empty": ("blocks.dat", lambda p: os.truncate(p, 0), ["blocks.dat", "empty"]),
    "blocks.dat ragged": ("blocks.dat", lambda p: os.truncate(p, p.stat().st_size - 7),
                          ["blocks.dat", "whole number"]),
    "blocks.dat bad header": ("blocks.dat", overwrite(0, 16), ["blocks.dat", "header",
                                                                   "--full --repair"]),
    "blocks.dat deleted": ("blocks.dat", os.unlink, ["blocks.dat", "missing"]),
    "hashes.dat deleted": ("hashes.dat", os.unlink, ["hashes.dat", "missing"]),
    "hashes.dat empty": ("hashes.dat", lambda p: os.truncate(p, 0),
                         ["hashes.dat", "no fingerprint", "--repair"]),
}


@pytest.mark.parametrize("case", CASES)
def test_a_damaged_file_is_one_line_naming_it(golden, tmp_path, case):
    source, image = golden
    pool = tmp_path / "pool"
    shutil.copytree(source, pool)
    name, damage, words = CASES[case]
    damage(pool / name)
    before = {p.name: p.read_bytes() for p in pool.iterdir() if p.is_file()}
    for args in (["vm", "import", "n", image], ["vm", "rm", "-y", "c"], ["fsck"]):
        proc = run_cli("-p", pool, *args)
        lines = proc.stderr_text.strip().splitlines()
        assert proc.returncode == 1, (args, proc.stdout_text, proc.stderr_text)
        if args[0] == "fsck" and not lines:        # it opened, and explains what it found
            said = proc.stdout_text
        else:
            assert len(lines) == 1 and "internal error" not in lines[0], (args, lines)
            said = lines[0]
        for word in words:
            assert word in said, (args, said)
    after = {p.name: p.read_bytes() for p in pool.iterdir() if p.is_file()}
    # The damaged file is left as it was (a short fingerprint file is only evened up with
    # zeros, as after a crash between growing the two slot files).
    assert after.get(name, b"")[:len(before.get(name, b""))] == before.get(name, b"")
