"""The native core (engine._native) through its Python API: what the engine will build on."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import xxhash

from engine import _native

BS = 4096


def blocks(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n * BS, dtype=np.uint8).tobytes()


def core(directory=None, **kw) -> _native.Core:
    c = _native.Core(directory, BS, create=True, **kw)
    c.rebuild()
    return c


def with_vm(c, name="a", layer=1, parent=None, size=1 << 30):
    c.add_layer(layer, parent, True)
    c.set_vm(name, layer, size)


def test_fingerprints_are_xxhash_canonical_digests():
    data = blocks(300, 1) + bytes(BS)
    want = b"".join(xxhash.xxh3_128_digest(data[i:i + BS]) for i in range(0, len(data), BS))
    assert _native.fingerprints(data, BS) == want
    assert _native.fingerprints(memoryview(bytearray(data[:BS])), BS) == want[:16]
    with pytest.raises(_native.OutOfRangeError, match="whole number"):
        _native.fingerprints(b"x" * 100, BS)


def test_write_read_trim_and_dedup():
    c = core()
    with_vm(c)
    data = blocks(8, 2)
    c.write("a", 100, data)
    c.write("a", 1 << 20, data[:BS])
    assert c.read("a", 100, len(data)) == data
    buf = bytearray(BS)
    c.read_into("a", 1 << 20, buf)
    assert bytes(buf) == data[:BS]
    assert c.summary()["unique_blocks"] == 8 + 2       # partial blocks at either end
    c.trim("a", 0, 1 << 21)
    assert c.read("a", 0, 1 << 21) == bytes(1 << 21)
    assert c.extents("a", 0, 3 * BS) == [(3 * BS, True)]


def test_errors_are_typed_and_change_nothing():
    c = core()
    with_vm(c, size=8 * BS)
    with pytest.raises(_native.OutOfRangeError, match=r"range 32760\+10 is outside VM 'a'"):
        c.write("a", 8 * BS - 8, b"x" * 10)
    with pytest.raises(_native.UnknownVMError):
        c.read("nope", 0, 1)
    c.write("a", 0, blocks(2, 3))
    with pytest.raises(_native.StateError):
        c.decref(np.array([12345], dtype=np.uint64))
    slot = c.lookup(1, 0, 1)
    with pytest.raises(_native.StateError):
        c.decref(np.concatenate([slot, slot]))      # one reference, two asked: nothing changes
    assert c.refcounts_of(slot).tolist() == [1]
    c.set_top(1, False)
    with pytest.raises(_native.StateError, match="frozen"):
        c.write("a", 0, b"x")
    ro = _native.Core(None, BS, readonly=True)
    ro.add_layer(1, None, True)
    ro.set_vm("a", 1, BS)
    with pytest.raises(_native.ReadOnlyError):
        ro.write("a", 0, b"x")
    c.close()
    with pytest.raises(_native.StateError, match="closed"):
        c.read("a", 0, 1)


def test_rotten_block_is_an_error_naming_its_offset(tmp_path):
    c = core(str(tmp_path))
    with_vm(c, "desk")
    c.write("desk", 0, blocks(4, 4))
    c.sync()
    slot = int(c.lookup(1, 2, 1)[0])
    with open(tmp_path / "blocks.dat", "r+b") as f:     # flip one byte behind the map's back
        f.seek(slot * BS + 7)
        byte = f.read(1)
        f.seek(slot * BS + 7)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(_native.CorruptError) as e:
        c.read("desk", 0, 4 * BS)
    assert (e.value.vm, e.value.offset, e.value.slot) == ("desk", 2 * BS, slot)
    assert "byte 8192 of VM 'desk'" in str(e.value)
    assert c.corrupt.tolist() == [slot]
    assert c.summary()["corrupt_blocks"] == 1


def test_commit_snapshot_end_and_abort():
    c = core()
    with_vm(c)
    c.add_layer(2, None, True)          # a provisional layer (an import under way)
    c.set_vm("import", 2, 1 << 20)
    c.write("a", 0, blocks(1, 5))
    c.write("import", 0, blocks(1, 6))
    token, pages, _ = c.snapshot([2])
    assert [(layer, page) for layer, page, _ in pages] == [(1, 0)]
    entries = np.frombuffer(pages[0][2], dtype=np.uint64)
    assert entries[0] == c.lookup(1, 0, 1)[0] and not entries[1:].any()
    c.abort(token)
    assert c.dirty_pages() == 2
    old = int(c.lookup(1, 0, 1)[0])
    c.write("a", 0, blocks(1, 7))       # the old slot now waits for a commit
    token, pages, _ = c.snapshot([2])
    c.sync()
    assert c.end(token) == 1
    assert c.dirty_pages() == 1
    assert c.refcounts_of(np.array([old], np.uint64)).tolist() == [0]
    assert c.fingerprints_of(np.array([old], np.uint64)).tolist() == [[0, 0]]


def test_load_pages_and_rebuild_with_progress_and_cancel(tmp_path):
    c = core(str(tmp_path))
    with_vm(c)
    c.write("a", 0, blocks(64, 8))
    token, pages, _ = c.snapshot()
    c.sync()
    c.end(token)
    c.close()
    again = _native.Core(str(tmp_path), BS)
    again.add_layer(1, None, True)
    assert again.load_pages([(layer, page, blob) for layer, page, blob in pages]) == 1
    seen = []
    figures = again.rebuild(full=True, progress=lambda *a: seen.append(a))
    assert figures["blocks"] == 64 and figures["mode"] == "full"
    assert figures["corrupt_blocks"] == [] and figures["orphans_reclaimed"] == 0
    assert {p[0] for p in seen} >= {"tables", "hashes", "index"}
    stop = threading.Event()
    stop.set()
    with pytest.raises(_native.CancelledError):
        again.rebuild(full=True, cancel=stop)
    with pytest.raises(ZeroDivisionError):
        again.rebuild(progress=lambda *a: 1 / 0)
    again.set_vm("a", 1, 1 << 30)
    assert again.read("a", 0, 64 * BS) == blocks(64, 8)
    assert again.check() == []
    assert again.rehash().tolist() == []


def test_colliding_fingerprints_never_mix_up_data():
    c = core(colliding_fingerprint=b"\x42" * 16)
    with_vm(c)
    data = blocks(6, 9)
    c.write("a", 0, data)
    c.write("a", 6 * BS, data)
    assert c.read("a", 0, 12 * BS) == data + data
    s = c.summary()
    assert 6 <= s["unique_blocks"] <= 12 and s["collisions"] > 0


def test_threads_run_in_parallel_without_the_gil():
    c = core()
    for i in range(4):
        with_vm(c, f"vm{i}", i + 1)
    errors = []

    def worker(i):
        try:
            rng = np.random.default_rng(i)
            for _ in range(200):
                off = int(rng.integers(0, 1000)) * BS
                data = rng.integers(0, 256, 2 * BS, dtype=np.uint8).tobytes()
                c.write(f"vm{i}", off, data)
                assert c.read(f"vm{i}", off, len(data)) == data
        except Exception as e:      # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    c.close_gate()                  # a structural edit would happen here
    c.open_gate()
    for t in threads:
        t.join()
    assert errors == []
    assert c.check() == []


def test_slot_files_are_checked_at_open(tmp_path):
    with pytest.raises(_native.FormatError, match=r"blocks\.dat is missing"):
        _native.Core(str(tmp_path), BS)
    core(str(tmp_path)).close()
    with open(tmp_path / "blocks.dat", "ab") as f:
        f.write(b"x" * 10)
    with pytest.raises(_native.FormatError, match="not a whole number"):
        _native.Core(str(tmp_path), BS)
    os.truncate(tmp_path / "blocks.dat", BS)
    with open(tmp_path / "blocks.dat", "r+b") as f:
        f.write(b"NOT-A-POOL")
    with pytest.raises(_native.FormatError, match="not a Blockfold slot file"):
        _native.Core(str(tmp_path), BS)
