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
                            ["catalog.db", "damaged", "layers 1, 2 and 3 are each their own"
                             " parent"]),
    # g's frozen base (layer 1), under g's top (2) and c's (3): the line names the wrong row,
    # not a VM's top that the core could not place.
    "catalog parent layer gone": ("catalog.db", sql("DELETE FROM layers WHERE id = 1"),
                                  ["catalog.db", "damaged", "layers 2 and 3 have parent 1,"
                                   " which does not exist"]),
    "catalog two layers on a cycle": ("catalog.db",
                                      sql("UPDATE layers SET parent = 3 WHERE id = 1"),
                                      ["catalog.db", "layers 1 and 3 form a cycle"]),
    "catalog layer its own parent": ("catalog.db",
                                     sql("UPDATE layers SET parent = 3 WHERE id = 3"),
                                     ["catalog.db", "layer 3 is its own parent"]),
    "blocks.dat empty": ("blocks.dat", lambda p: os.truncate(p, 0), ["blocks.dat", "empty"]),
    "blocks.dat ragged": ("blocks.dat", lambda p: os.truncate(p, p.stat().st_size - 7),
                          ["blocks.dat", "whole number"]),
    "blocks.dat bad header": ("blocks.dat", overwrite(0, 16), ["blocks.dat", "header",
                                                                   "--full --repair"]),
    "blocks.dat deleted": ("blocks.dat", os.unlink, ["blocks.dat", "missing"]),
    "hashes.dat deleted": ("hashes.dat", os.unlink, ["hashes.dat", "missing",
                                                 "rebuild --full --repair"]),
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


@pytest.mark.parametrize("statement, said", [
    # c's top made g's: a write to c lands in g (brk7 5a).
    ("UPDATE vms SET top = 2 WHERE name = 'c'",
     "VMs c and g share top layer 2: a write to one changes the other"),
    # c's top made the frozen base under both: a write to c changes g as well.
    ("UPDATE vms SET top = 1 WHERE name = 'c'",
     "VM c's top layer 1 is the parent of layers 2 and 3: a write to c changes what they show"),
])
def test_fsck_names_a_writable_top_that_more_than_its_vm_reads(golden, tmp_path, statement,
                                                               said):
    source, _ = golden
    pool = tmp_path / "pool"
    shutil.copytree(source, pool)
    sql(statement)(pool / "catalog.db")
    proc = run_cli("-p", pool, "fsck")
    assert proc.returncode == 1, (proc.stdout_text, proc.stderr_text)
    assert f"layer: {said}" in proc.stdout_text.splitlines(), proc.stdout_text


@pytest.fixture(scope="module")
def other_pools(tmp_path_factory, golden):
    """Two other pools holding the golden's image: one of the same block size, one of 64 KiB."""
    _, image = golden
    base = tmp_path_factory.mktemp("others")
    for name, block_size in (("same", "4K"), ("wide", "64K")):
        run_cli("pool", "init", base / name, "--block-size", block_size, check=True)
        run_cli("-p", base / name, "vm", "import", "g", image, check=True)
    return base


@pytest.mark.parametrize("other, files, said", [
    # A consistent pair from another pool: every block matches its own fingerprint, so reads
    # served the other pool's g as this one's, and fsck said clean.
    ("same", ["blocks.dat", "hashes.dat"], "blocks.dat is another pool's file"),
    # A file of another pool beside this one's: told before a short hashes.dat is evened up
    # (a read-only open had said to open it writable, which then refused it).
    ("same", ["hashes.dat"], "blocks.dat and"),
    ("wide", ["hashes.dat"], "are not one pool's pair"),
    # A whole number of 4 KiB slots too: opened, and read cut into this pool's slot size.
    ("wide", ["blocks.dat", "hashes.dat"], "blocks.dat holds 65536-byte slots"),
])
def test_slot_files_of_another_pool_are_refused(golden, other_pools, tmp_path, other, files,
                                                said):
    source, _ = golden
    pool = tmp_path / "pool"
    shutil.copytree(source, pool)
    for name in files:
        shutil.copyfile(other_pools / other / name, pool / name)

    def files():  # every file but the lock, which names its last taker
        return {p.name: p.read_bytes() for p in pool.iterdir() if p.name != "lock"}

    before = files()
    out = tmp_path / "g.raw"
    # The repair too: it would compute fingerprints again from the other pool's data.
    for args in (["vm", "export", "g", out], ["vm", "rm", "-y", "c"], ["fsck"],
                 ["rebuild", "--full", "--repair"]):
        proc = run_cli("-p", pool, *args)
        lines = proc.stderr_text.strip().splitlines()
        assert proc.returncode == 1, (args, proc.stdout_text, proc.stderr_text)
        assert len(lines) == 1 and said in lines[0], (args, lines)
    assert not out.exists()
    assert files() == before


def test_a_pool_older_than_pool_ids_gets_one_at_its_first_writable_open(golden, other_pools,
                                                                         tmp_path):
    source, image = golden
    pool = tmp_path / "pool"
    shutil.copytree(source, pool)
    # As such a pool was: no id in the catalog, none in the slot files.
    sql("DELETE FROM meta WHERE key = 'pool_id'")(pool / "catalog.db")
    for name, at, length in (("blocks.dat", 16, 20), ("hashes.dat", 0, 16)):
        with open(pool / name, "r+b") as f:
            f.seek(at)
            f.write(bytes(length))
    run_cli("-p", pool, "vm", "ls", check=True)               # read-only: it opens as it is
    run_cli("-p", pool, "vm", "clone", "g", "d", check=True)  # writable: it gets an id
    pool_id = sqlite3.connect(pool / "catalog.db").execute(
        "SELECT value FROM meta WHERE key = 'pool_id'").fetchone()[0]
    assert (pool / "hashes.dat").read_bytes()[:16].hex() == pool_id
    assert (pool / "blocks.dat").read_bytes()[16:32].hex() == pool_id
    out = tmp_path / "d.raw"
    run_cli("-p", pool, "vm", "export", "d", out, check=True)
    assert out.read_bytes() == image.read_bytes()
    # From now on another pool's files are told apart.
    shutil.copyfile(other_pools / "same" / "hashes.dat", pool / "hashes.dat")
    proc = run_cli("-p", pool, "vm", "ls")
    assert proc.returncode == 1 and "are not one pool's pair" in proc.stderr_text


def test_a_catalog_older_than_pool_ids_refuses_stamped_files(golden, other_pools, tmp_path):
    """A catalog without an id beside another pool's (stamped) files: it took their id, and
    served that pool's blocks as its own (verifier N2). Such a catalog never had stamped files
    beside it, so one of them is another pool's."""
    source, _ = golden
    pool = tmp_path / "pool"
    shutil.copytree(source, pool)
    sql("DELETE FROM meta WHERE key = 'pool_id'")(pool / "catalog.db")
    for name in ("blocks.dat", "hashes.dat"):
        shutil.copyfile(other_pools / "same" / name, pool / name)
    for args in (["vm", "ls"], ["vm", "clone", "g", "d"], ["fsck"]):
        proc = run_cli("-p", pool, *args)
        assert proc.returncode == 1, (args, proc.stdout_text, proc.stderr_text)
        assert "blocks.dat is stamped with pool id" in proc.stderr_text, proc.stderr_text
        assert "names no pool id: one of them is another pool's" in proc.stderr_text
    # The way out it names, for a catalog that is this pool's own: then it opens.
    stamp = (pool / "blocks.dat").read_bytes()[16:32].hex()
    sql(f"INSERT INTO meta VALUES ('pool_id', '{stamp}')")(pool / "catalog.db")
    run_cli("-p", pool, "vm", "ls", check=True)


def test_a_layer_counter_behind_the_layers_gives_no_id_twice(golden, tmp_path):
    source, image = golden
    pool = tmp_path / "pool"
    shutil.copytree(source, pool)
    # g's base (1) and two tops (2, 3): the counter as an older copy of the meta row had it.
    sql("UPDATE meta SET value = '1' WHERE key = 'next_layer'")(pool / "catalog.db")
    proc = run_cli("-p", pool, "fsck")
    assert proc.returncode == 1
    assert "layer: meta next_layer 1 is not past layer 3, which is in use" in proc.stdout_text
    # The clone took id 1 again, replaced the golden's base row, and no open worked after.
    run_cli("-p", pool, "vm", "clone", "c", "e", check=True)
    for vm in ("g", "c", "e"):
        out = tmp_path / f"{vm}.raw"
        run_cli("-p", pool, "vm", "export", vm, out, check=True)
        assert out.read_bytes() == image.read_bytes(), vm
    proc = run_cli("-p", pool, "fsck")
    assert (proc.returncode, proc.stdout_text) == (0, "clean\n")


@pytest.mark.parametrize("lose, said", [(lambda p: os.truncate(p, 0), "is empty (0 bytes)"),
                                        (os.unlink, "is missing")])
def test_a_pool_whose_catalog_is_lost_is_told_so_by_every_command_pool_init_too(golden, tmp_path,
                                                                               lose, said):
    """catalog.db removed, or left empty by a crash on a filesystem that does not order data:
    blocks.dat and hashes.dat say the directory is a pool. Every command said "not a Blockfold
    pool" and `pool init` "already a Blockfold pool" (or "not an empty directory"), and sqlite,
    handed the empty file, deleted the WAL beside it (brk8a #6). One line naming the file now,
    the same from every command, with nothing changed."""
    source, image = golden
    pool = tmp_path / "pool"
    shutil.copytree(source, pool)
    lose(pool / "catalog.db")
    (pool / "catalog.db-wal").write_bytes(b"what a lost catalog's WAL may still hold")
    before = {p.name: p.read_bytes() for p in pool.iterdir()}
    line = (f"blockfold: error: {pool / 'catalog.db'} {said}, but blocks.dat and hashes.dat"
            " beside it hold a pool's blocks: restore catalog.db from a backup; nothing was"
            " changed\n")
    for args in (["-p", pool, "vm", "ls"], ["-p", pool, "vm", "clone", "g", "d"],
                 ["-p", pool, "vm", "import", "n", image], ["-p", pool, "fsck"],
                 ["-p", pool, "rebuild", "--full", "--repair"], ["-p", pool, "serve"],
                 ["pool", "init", pool]):
        proc = run_cli(*args)
        assert (proc.returncode, proc.stdout_text, proc.stderr_text) == (1, "", line), args
    assert {p.name: p.read_bytes() for p in pool.iterdir()} == before


def test_a_directory_with_an_empty_catalog_and_no_blocks_is_no_pool(tmp_path):
    """Without slot files, an empty catalog.db makes no pool: not one to open, nor a directory
    to make one in (an empty one)."""
    where = tmp_path / "p"
    where.mkdir()
    (where / "catalog.db").touch()
    proc = run_cli("-p", where, "vm", "ls")
    assert (proc.returncode, proc.stderr_text) == (
        1, f"blockfold: error: {where} is not a Blockfold pool\n")
    proc = run_cli("pool", "init", where)
    assert (proc.returncode, proc.stderr_text) == (
        1, f"blockfold: error: {where} exists and is not an empty directory\n")
    assert [p.name for p in where.iterdir()] == ["catalog.db"]
