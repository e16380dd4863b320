"""The engine's promises, one by one, on a real pool in a temp dir."""

from __future__ import annotations

import os
import threading
import sqlite3

import numpy as np
import pytest

from engine.errors import (AbortedError, BadNameError, CorruptBlockError, NotAPoolError,
                           OutOfRangeError, PoolFormatError, PoolLockedError, VMExistsError,
                           VMNotFoundError)
from engine.pool import CLONE_BATCH, Pool

BS = 4096


def rand(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def test_unaligned_writes_read_back(pool):
    pool.create_vm("a", 10 * BS + 123)
    expect = bytearray(10 * BS + 123)
    for i, (off, n) in enumerate([(0, 1), (100, BS), (BS - 1, 2), (3 * BS + 5, 3 * BS),
                                  (10 * BS, 123), (7, 9 * BS)]):
        data = rand(n, i)
        pool.write("a", off, data)
        expect[off:off + n] = data
        assert pool.read("a", 0, len(expect)) == bytes(expect)


def test_unwritten_and_zero_blocks_take_no_slot(pool):
    pool.create_vm("a", 64 * BS)
    assert pool.read("a", 0, 64 * BS) == bytes(64 * BS)
    pool.write("a", 0, bytes(32 * BS))
    pool.write("a", 32 * BS, rand(BS, 1))
    assert pool.stats()["unique_blocks"] == 1
    assert pool.stats()["logical_bytes"] == BS


def test_equal_blocks_share_one_slot_and_freed_slots_are_reused(pool):
    block = rand(BS, 7)
    pool.create_vm("a", 8 * BS)
    pool.write("a", 0, block * 8)
    s = pool.stats()
    assert s["unique_blocks"] == 1 and s["logical_bytes"] == 8 * BS and s["dedup_ratio"] == 8
    assert pool.block_page()["rows"][0]["refcount"] == 8
    slots = pool.core.capacity
    for i in range(50):                      # churn: overwrite with new data and trim again
        pool.write("a", 0, rand(8 * BS, 100 + i))
        pool.flush()
        pool.trim("a", 0, 8 * BS)
        pool.flush()
    assert pool.core.capacity == slots                   # the slot files did not grow
    assert pool.stats()["unique_blocks"] == 0


def test_trim_reads_back_zeros_and_frees(pool):
    pool.create_vm("a", 16 * BS)
    pool.write("a", 0, rand(16 * BS, 1))
    pool.trim("a", 100, 10 * BS)
    data = pool.read("a", 0, 16 * BS)
    assert data[100:100 + 10 * BS] == bytes(10 * BS)
    assert data[:100] == rand(16 * BS, 1)[:100]
    assert pool.stats()["unique_blocks"] == 16 - 9     # 9 whole blocks freed, edges rewritten


def test_clones_are_isolated_both_ways(pool):
    base = rand(32 * BS, 3)
    pool.create_vm("src", len(base))
    pool.write("src", 0, base)
    assert pool.clone("src", "c") == ["c"]
    pool.write("src", 0, b"S" * BS)
    pool.write("c", BS, b"C" * BS)
    assert pool.read("src", 0, 2 * BS) == b"S" * BS + base[BS:2 * BS]
    assert pool.read("c", 0, 2 * BS) == base[:BS] + b"C" * BS
    assert pool.read("c", 2 * BS, 30 * BS) == base[2 * BS:]


def test_clone_costs_the_same_whatever_the_size(pool_dir):
    def clone_cost(size_blocks: int, name: str) -> tuple[int, int]:
        with Pool.open(pool_dir) as p:
            p.create_vm(name, size_blocks * BS)
            p.write(name, 0, rand(size_blocks * BS, size_blocks))
            p.flush()
            db = sqlite3.connect(pool_dir / "catalog.db")
            before = db.execute("SELECT count(*) FROM bmap").fetchone()[0]
            layers = db.execute("SELECT count(*) FROM layers").fetchone()[0]
            p.clone(name, name + "-c", count=10)
            after = db.execute("SELECT count(*) FROM bmap").fetchone()[0]
            layers_after = db.execute("SELECT count(*) FROM layers").fetchone()[0]
            return after - before, layers_after - layers

    assert clone_cost(4, "small") == clone_cost(4096, "large") == (0, 11)


def test_clone_count_names_and_errors(pool):
    pool.create_vm("g", BS)
    assert pool.clone("g", "d", count=3) == ["d-1", "d-2", "d-3"]
    with pytest.raises(VMExistsError):
        pool.clone("g", "d", count=3)
    with pytest.raises(VMNotFoundError):
        pool.clone("nope", "x")
    with pytest.raises(BadNameError):
        pool.clone("g", "../x")
    assert sorted(pool.vm_names()) == ["d-1", "d-2", "d-3", "g"]


def test_a_clone_in_batches_checks_every_name_first_and_logs_each_batch(pool):
    """--count 2500 is three batches (CLONE_BATCH 1000): a name taken in the last refuses with
    nothing made; once free, every clone reads the source, with one event a batch."""
    assert CLONE_BATCH == 1000
    data = rand(4 * BS, 21)
    pool.create_vm("g", 4 * BS)
    pool.write("g", 0, data)
    pool.create_vm("d-2400", BS)
    with pytest.raises(VMExistsError, match="d-2400"):
        pool.clone("g", "d", count=2500)
    assert sorted(pool.vm_names()) == ["d-2400", "g"]
    pool.delete("d-2400")
    reports = []
    names = pool.clone("g", "d", count=2500, progress=reports.append)
    assert len(names) == 2500 and reports[-1].done == reports[-1].total == 2500
    assert all(pool.read(name, 0, 4 * BS) == data for name in ("d-1", "d-1001", "d-2500"))
    clones = [e["message"] for e in pool.events() if e["kind"] == "clone"]
    assert clones == ["cloned g to d-2001 … d-2500", "cloned g to d-1001 … d-2000",
                      "cloned g to d-1 … d-1000"]


def test_deep_chains_read_correctly_and_deletes_collect_layers(pool):
    pool.create_vm("v0", 64 * BS)
    pool.write("v0", 0, rand(64 * BS, 0))
    expect = bytearray(rand(64 * BS, 0))
    for d in range(1, 40):
        pool.clone(f"v{d - 1}", f"v{d}")
        pool.write(f"v{d}", d * BS, rand(BS, 1000 + d))
        expect[d * BS:(d + 1) * BS] = rand(BS, 1000 + d)
    deepest = next(v for v in pool.vm_list() if v["name"] == "v39")
    assert deepest["depth"] == 40
    assert pool.read("v39", 0, 64 * BS) == bytes(expect)
    for d in range(39):
        pool.delete(f"v{d}")
    # Only v39 is left: its chain collapses to one layer and nothing else is held.
    assert pool.vm_list()[0]["depth"] == 1
    assert pool.read("v39", 0, 64 * BS) == bytes(expect)
    assert pool.stats()["unique_blocks"] == 64
    assert pool.fsck() == []


def test_delete_frees_only_what_it_alone_referenced(pool):
    pool.create_vm("a", 8 * BS)
    pool.write("a", 0, rand(8 * BS, 1))
    pool.clone("a", "b")
    pool.write("b", 0, rand(2 * BS, 2))        # b shadows two of a's blocks
    assert pool.stats()["unique_blocks"] == 10
    pool.delete("a")                            # a's two shadowed blocks are now garbage
    assert pool.stats()["unique_blocks"] == 8
    assert pool.read("b", 2 * BS, 6 * BS) == rand(8 * BS, 1)[2 * BS:]
    pool.delete("b")
    assert pool.stats()["unique_blocks"] == 0
    assert pool.fsck() == []


def test_out_of_range_is_refused_and_changes_nothing(pool):
    pool.create_vm("a", 4 * BS)
    pool.write("a", 0, rand(4 * BS, 1))
    for off, n in [(4 * BS, 1), (4 * BS - 1, 2), (-1, 1)]:
        with pytest.raises(OutOfRangeError):
            pool.write("a", off, b"x" * n)
        with pytest.raises(OutOfRangeError):
            pool.read("a", off, n)
    assert pool.read("a", 0, 4 * BS) == rand(4 * BS, 1)


def test_second_writer_gets_a_clear_error(pool_dir):
    with Pool.open(pool_dir):
        with pytest.raises(PoolLockedError, match=f"pid {os.getpid()}"):
            Pool.open(pool_dir)
        with Pool.open(pool_dir, readonly=True) as reader:   # readers still may look
            assert reader.vm_names() == []


def test_not_a_pool_and_newer_format(tmp_path, pool_dir):
    with pytest.raises(NotAPoolError):
        Pool.open(tmp_path)
    with pytest.raises(NotAPoolError):
        Pool.open(tmp_path / "missing")
    db = sqlite3.connect(pool_dir / "catalog.db")
    db.execute("UPDATE meta SET value='99' WHERE key='format_version'")
    db.commit()
    with pytest.raises(PoolFormatError, match="format 99"):
        Pool.open(pool_dir)


def test_block_sizes(tmp_path):
    for bs in (4096, 16384, 65536):
        path = Pool.create(tmp_path / f"p{bs}", bs)
        with Pool.open(path) as p:
            p.create_vm("a", 3 * bs + 5)
            p.write("a", 1, rand(3 * bs, bs))
            assert p.read("a", 1, 3 * bs) == rand(3 * bs, bs)
    with pytest.raises(Exception, match="block size"):
        Pool.create(tmp_path / "bad", 8192 + 1)


def test_full_rebuild_and_fsck_find_a_corrupt_block(pool_dir):
    with Pool.open(pool_dir) as p:
        p.create_vm("a", 4 * BS)
        p.write("a", 0, rand(4 * BS, 1))
        victim = int(p.addresses("a", 2, 1)[0])
    with open(pool_dir / "blocks.dat", "r+b") as f:
        f.seek(victim * BS + 17)
        f.write(b"\xff\x00\xff")
    with Pool.open(pool_dir, rebuild="full") as p:
        assert p.last_rebuild["corrupt_blocks"] == [victim]
        problems = p.fsck()
        assert [x["pbn"] for x in problems if x["kind"] == "corrupt"] == [victim]


def test_reopen_reads_identically_and_rebuild_counts_the_same(pool_dir):
    with Pool.open(pool_dir) as p:
        p.create_vm("a", 100 * BS)
        p.write("a", 0, rand(50 * BS, 1) * 2)
        p.clone("a", "b", count=2)
        before = {v: p.read(v, 0, 100 * BS) for v in p.vm_names()}
        stats = p.stats()
    with Pool.open(pool_dir, rebuild="full") as p:
        assert {v: p.read(v, 0, 100 * BS) for v in p.vm_names()} == before
        again = p.stats()
        for key in ("logical_bytes", "physical_bytes", "unique_blocks", "refcount_histogram"):
            assert again[key] == stats[key]
        assert p.last_rebuild["blocks"] == 50


def test_reads_are_served_while_rebuilding(pool_dir):
    with Pool.open(pool_dir) as p:
        p.create_vm("a", 2048 * BS)
        p.write("a", 0, rand(2048 * BS, 5))
    p = Pool.open(pool_dir, wait=False)
    try:
        assert p.read("a", 0, BS) == rand(BS, 5)
        p.write("a", 0, b"x")                   # writes wait for the rebuild, then go through
        assert p.read("a", 0, 1) == b"x"
    finally:
        p.close()


def test_stats_have_the_promised_fields(pool):
    pool.create_vm("a", 4 * BS)
    pool.write("a", 0, rand(BS, 1) * 4)
    pool.clone("a", "b")
    s = pool.stats()
    assert s["block_size"] == BS
    assert s["logical_bytes"] == 8 * BS and s["physical_bytes"] == BS
    assert s["dedup_ratio"] == 8 and s["unique_blocks"] == 1
    assert s["refcount_histogram"] == {"3-4": 1}
    assert [v["name"] for v in s["vms"]] == ["a", "b"]
    b = s["vms"][1]
    assert (b["size"], b["logical_bytes"], b["shared_blocks"], b["depth"]) == (4 * BS, 4 * BS, 4, 2)
    assert s["rebuilds"][0]["reason"] == "open"


def test_a_block_at_many_lbns_of_one_layer_is_held_by_it_once(pool):
    """Unique blocks are blocks, not LBNs: a VM written with one block 100 times holds it alone
    (its refcount is 100, which read as shared) and counts it once, as does a snapshot."""
    def figures(name):
        (v,) = [v for v in pool.stats()["vms"] if v["name"] == name]
        return v["logical_blocks"], v["unique_blocks"], v["shared_blocks"]

    block = rand(BS, 11)
    pool.create_vm("a", 200 * BS)
    pool.write("a", 0, block * 100 + rand(BS, 12))
    assert figures("a") == (101, 2, 0)
    pool.create_vm("b", BS)
    pool.write("b", 0, block)
    assert figures("a") == (101, 1, 100) and figures("b") == (1, 0, 1)
    pool.delete("b")
    pool.snapshot("a", "s")
    pool.write("a", 0, rand(101 * BS, 13))
    assert figures("a") == (101, 101, 0)
    assert [s["blocks_alone"] for s in pool.snapshots("a")] == [2]
    assert pool.stats()["snapshot_blocks"] == 2


def test_a_snapshot_holds_alone_what_no_vm_reads_and_no_other_layer_references(pool):
    """What removing a snapshot may free, per snapshot and over them all: a block the VM still
    reads, or that another VM also holds, is not the snapshot's alone; clones and other
    snapshots change nothing of it."""
    def alone():
        return ([s["blocks_alone"] for s in pool.snapshots("a")],
                pool.stats()["snapshot_blocks"])

    block = [rand(BS, 40 + k) for k in range(8)]
    pool.create_vm("a", 8 * BS)
    pool.write("a", 0, b"".join(block))
    pool.snapshot("a", "s1")
    assert alone() == ([0], 0)                      # a reads all 8 through s1
    pool.write("a", 0, rand(4 * BS, 50))
    assert alone() == ([4], 4)                      # blocks 0-3 only s1 holds now
    pool.create_vm("b", BS)
    pool.write("b", 0, block[1])
    assert alone() == ([3], 3)                      # b holds block 1 too
    pool.snapshot("a", "s2")
    pool.write("a", 0, rand(BS, 51))
    assert alone() == ([3, 1], 4)                   # s2: the first of the 4 written, overwritten
    pool.clone("a", "c")
    pool.write("c", 2 * BS, rand(BS, 52))
    assert alone() == ([3, 1], 4)
    pool.delete("b")
    assert alone() == ([4, 1], 5)
    pool.write("c", 0, block[0])                    # c's copy of block 0: no longer s1's alone
    assert alone() == ([3, 1], 4)


def test_a_rotten_block_is_never_served_and_is_remembered(pool_dir):
    data = rand(8 * BS, 21)
    with Pool.open(pool_dir) as p:
        p.create_vm("a", 8 * BS)
        p.write("a", 0, data)
        victim = int(p.addresses("a", 5, 1)[0])
    with open(pool_dir / "blocks.dat", "r+b") as f:
        f.seek(victim * BS + 17)
        f.write(b"\x00" if data[5 * BS + 17] else b"\x01")     # one flipped byte
    with Pool.open(pool_dir) as p:
        assert p.read("a", 0, 5 * BS) == data[:5 * BS]          # the sound part reads fine
        with pytest.raises(CorruptBlockError) as bad:
            p.read("a", 0, 8 * BS)
        assert bad.value.offset == 5 * BS and "VM a" in str(bad.value)
        with pytest.raises(CorruptBlockError):
            p.read("a", 5 * BS + 100, 10)                        # a small read too
        assert p.stats()["corrupt_blocks"] == 1
        p.create_vm("b", BS)
        p.write("b", 0, data[5 * BS:6 * BS])         # the same bytes again: not shared with rot
        assert p.read("b", 0, BS) == data[5 * BS:6 * BS]
    with Pool.open(pool_dir) as p:                   # remembered across opens
        assert p.stats()["corrupt_blocks"] == 1
        p.write("a", 5 * BS, data[5 * BS:6 * BS])    # overwritten: no longer referenced
        p.flush()
        assert p.read("a", 0, 8 * BS) == data
    with Pool.open(pool_dir) as p:
        assert p.stats()["corrupt_blocks"] == 0
        assert p.fsck() == []


def test_scrub_finds_rot_resumes_where_it_stopped_and_starts_over_when_done(pool_dir,
                                                                           monkeypatch):
    monkeypatch.setattr("engine.pool.SCRUB_BATCH", 8)
    data = rand(64 * BS, 31)
    with Pool.open(pool_dir) as p:
        p.create_vm("a", 64 * BS)
        p.write("a", 0, data)
        victim = int(p.addresses("a", 40, 1)[0])
    with open(pool_dir / "blocks.dat", "r+b") as f:
        f.seek(victim * BS)
        f.write(b"rot")
    rate = 80 * BS                      # 80 blocks a second: 0.8 s for the whole VM
    with Pool.open(pool_dir) as p:
        cancel = threading.Event()
        threading.Timer(0.3, cancel.set).start()
        first = p.scrub(rate=rate, cancel=cancel)
        assert not first["finished"] and 0 < first["blocks"] < 40 and first["corrupt"] == []
    with Pool.open(pool_dir) as p:         # resumes: only what was left
        rest = p.scrub()
        assert rest["finished"] and first["blocks"] + rest["blocks"] == 64
        assert rest["corrupt"] == [victim]
        assert p.stats()["corrupt_blocks"] == 1
        again = p.scrub(rate=rate)                     # from the start, at the rate asked
        assert again["finished"] and again["blocks"] == 64 and again["seconds"] >= 0.7


def test_a_rated_scrub_holds_its_rate_from_the_first_block_and_ends_with_its_last(pool_dir):
    """One batch holds every block. Read first and paced after, it went unpaced (12 MiB in
    2.8 ms under `--rate 8M`); paced after its last block too, it sat "running" at 100 % for
    as long as its rate would have taken (hours at 1K/s)."""
    with Pool.open(pool_dir) as p:
        p.create_vm("a", 64 * BS)
        p.write("a", 0, rand(64 * BS, 32))
        result = p.scrub(rate=64 * BS)                  # a second for the whole VM
        assert result["finished"] and result["blocks"] == 64
        assert 0.95 <= result["seconds"] < 1.5


def _disk_full(p, monkeypatch):
    """Makes the pool's catalog commits fail as on a full disk; returns the real commit, for
    the test to put back."""
    real_commit = p.catalog.commit

    def full_disk():
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(p.catalog, "commit", full_disk)
    return real_commit


def test_a_failed_commit_keeps_acknowledged_writes_and_edits_change_nothing(pool_dir,
                                                                           monkeypatch):
    with Pool.open(pool_dir) as p:
        p.create_vm("a", 8 * BS)
        p.write("a", 0, rand(8 * BS, 1))
        p.flush()
        p.write("a", BS, rand(BS, 2))                   # acknowledged, not yet durable
        real_commit = _disk_full(p, monkeypatch)
        with pytest.raises(AbortedError, match=r"holding .* is full: the catalog cannot commit"):
            p.flush()
        with pytest.raises(AbortedError):
            p.delete("a")                               # an edit whose log fails: not applied
        with pytest.raises(AbortedError):
            p.clone("a", "b")
        assert p.vm_names() == ["a"]
        assert p.read("a", BS, BS) == rand(BS, 2)       # RAM keeps the acknowledged write
        monkeypatch.setattr(p.catalog, "commit", real_commit)
        p.write("a", 2 * BS, rand(BS, 3))
        p.flush()                                       # the cause is gone: the retry lands
        assert p.fsck() == []
    with Pool.open(pool_dir) as p:
        assert p.vm_names() == ["a"]
        want = bytearray(rand(8 * BS, 1))
        want[BS:3 * BS] = rand(BS, 2) + rand(BS, 3)
        assert p.read("a", 0, 8 * BS) == bytes(want)
        assert p.fsck() == []


def test_a_golden_delete_unlinks_every_clone_all_or_nothing(pool_dir, monkeypatch):
    """The clones' rows are rewritten by one statement a table: a failed commit leaves every
    clone linked, in RAM and in the catalog; the delete once it commits unlinks them all."""
    with Pool.open(pool_dir) as p:
        p.create_vm("g", 8 * BS)
        p.write("g", 0, rand(8 * BS, 1))
        p.clone("g", "d", count=3)
        p.snapshot("d-1", "s")
        real_commit = _disk_full(p, monkeypatch)
        with pytest.raises(AbortedError):
            p.delete("g")
        monkeypatch.setattr(p.catalog, "commit", real_commit)
        assert p.graph.clones_of("g") == ["d-1", "d-2", "d-3"]
    with Pool.open(pool_dir) as p:
        assert p.graph.clones_of("g") == ["d-1", "d-2", "d-3"]
        assert p.snapshots("d-1")[0]["origin"] == "g"
        p.delete("g")
    with Pool.open(pool_dir) as p:
        assert p.vm_names() == ["d-1", "d-2", "d-3"]
        assert all(p.vm(n).origin is None and p.vm(n).base is None for n in p.vm_names())
        assert p.snapshots("d-1")[0]["origin"] is None
        assert p.read("d-2", 0, 8 * BS) == rand(8 * BS, 1)
        assert p.fsck() == []


def test_a_golden_rename_keeps_every_clone_reading_its_golden_all_or_nothing(pool_dir,
                                                                              monkeypatch):
    """The clones' origin is rewritten by one statement a table: a failed commit leaves the
    golden and every clone as they were; once committed, every clone reads what it did, through
    the same chain, follows the new name (refresh goes back to it, a snapshot keeps it), and so
    after a full rebuild."""
    golden = rand(8 * BS, 1)
    own = rand(BS, 2)
    with Pool.open(pool_dir) as p:
        p.create_vm("g", 8 * BS)
        p.write("g", 0, golden)
        p.snapshot("g", "v1")
        p.clone("g", "d", count=3)
        p.write("d-2", 0, own)
        p.snapshot("d-2", "s")
        real_commit = _disk_full(p, monkeypatch)
        with pytest.raises(AbortedError):
            p.rename("g", "h")
        monkeypatch.setattr(p.catalog, "commit", real_commit)
        assert p.graph.clones_of("g") == ["d-1", "d-2", "d-3"] and "h" not in p.vm_names()
        chains = {n: p.graph.chain(p.vm(n).top) for n in ("d-1", "d-2", "d-3")}
        bases = {n: p.vm(n).base for n in chains}
        p.rename("g", "h")

    def check(p: Pool) -> None:
        assert p.vm_names() == ["d-1", "d-2", "d-3", "h"]
        assert p.graph.clones_of("h") == ["d-1", "d-2", "d-3"] and p.graph.clones_of("g") == []
        assert {n: p.graph.chain(p.vm(n).top) for n in chains} == chains
        assert {n: p.vm(n).base for n in chains} == bases
        assert [(s["vm"], s["name"], s["origin"]) for s in p.snapshots()] == [
            ("d-2", "s", "h"), ("h", "v1", None)]
        assert p.read("h", 0, 8 * BS) == golden
        assert p.read("d-1", 0, 8 * BS) == p.read("d-3", 0, 8 * BS) == golden
        assert p.read("d-2", 0, 8 * BS) == own + golden[BS:]
        assert p.fsck() == []

    with Pool.open(pool_dir) as p:
        check(p)
    with Pool.open(pool_dir, rebuild="full") as p:
        check(p)
        p.refresh("d-2")                    # back to the golden state under its new name
        assert p.read("d-2", 0, 8 * BS) == golden
        p.rollback("d-2", "s")
        assert p.read("d-2", 0, 8 * BS) == own + golden[BS:]
        assert p.vm("d-2").origin == "h"
        p.clone("h", "late")
        assert p.graph.clones_of("h") == ["d-1", "d-2", "d-3", "late"]


def test_data_ops_run_beside_clones_deletes_and_flushes(pool):
    """Writers and readers on their own VMs, with no Python lock around them, while clones,
    deletes and flushes happen: every VM reads as its model, and fsck is clean."""
    writers = 4
    size = 64 * BS
    for w in range(writers):
        pool.create_vm(f"w{w}", size)
    models = {f"w{w}": bytearray(size) for w in range(writers)}
    failures = []

    def work(name: str, seed: int):
        rng = np.random.default_rng(seed)
        try:
            for i in range(150):
                offset = int(rng.integers(0, size - 3 * BS))
                n = int(rng.integers(1, 3 * BS))
                data = rand(n, seed * 1000 + i) if i % 3 else bytes([i % 7]) * n
                pool.write(name, offset, data)
                models[name][offset:offset + n] = data
                if i % 10 == 0:
                    pool.trim(name, offset, n)
                    models[name][offset:offset + n] = bytes(n)
                assert pool.read(name, 0, size) == bytes(models[name])
        except BaseException as e:       # noqa: BLE001 - reported by the main thread
            failures.append(e)

    threads = [threading.Thread(target=work, args=(f"w{w}", w)) for w in range(writers)]
    for t in threads:
        t.start()
    k = 0
    while k < 6 or any(t.is_alive() for t in threads):
        source = f"w{k % writers}"
        pool.clone(source, f"c{k}")
        if k >= 2:
            pool.delete(f"c{k - 2}")
        pool.flush()
        k += 1
    for t in threads:
        t.join()
    if failures:
        raise failures[0]
    for name, model in models.items():
        assert pool.read(name, 0, size) == bytes(model)
    assert pool.fsck() == []


def test_extents_cover_the_range_in_runs_of_data_and_holes(pool):
    pool.create_vm("a", 16 * BS)
    pool.write("a", 4 * BS, rand(3 * BS, 1))
    pool.write("a", 9 * BS, bytes(BS))                   # zeros: a hole too
    assert pool.extents("a", 100, 10 * BS) == [(4 * BS - 100, True), (3 * BS, False),
                                                (3 * BS + 100, True)]
    pool.clone("a", "b")
    pool.trim("b", 5 * BS, BS)
    assert pool.extents("b", 4 * BS, 3 * BS) == [(BS, False), (BS, True), (BS, False)]
    with pytest.raises(OutOfRangeError):
        pool.extents("a", 16 * BS, 1)
    with pytest.raises(VMNotFoundError):
        pool.extents("nope", 0, 1)
