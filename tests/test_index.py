"""The fingerprint index alone: what goes in comes out, at any size, and growth drops the dead."""

from __future__ import annotations

import numpy as np

from engine.index import FingerprintIndex


def keys(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 2**64 - 1, n, dtype=np.uint64)


def test_every_key_finds_its_slot_and_unknown_keys_find_nothing():
    index = FingerprintIndex()
    k = keys(5000, 1)
    slots = np.arange(1, 5001, dtype=np.uint64)
    index.insert(k, slots)
    assert (index.lookup(k) == slots).all()
    assert (index.lookup(keys(100, 2)) == 0).all()
    assert all(index.lookup_one(int(key)) == int(s) for key, s in zip(k[:20], slots[:20]))


def test_insert_replaces_a_key_and_counts_it_once():
    index = FingerprintIndex()
    index.insert(np.array([7, 8], np.uint64), np.array([1, 2], np.uint64))
    index.insert(np.array([7], np.uint64), np.array([5], np.uint64))
    assert index.lookup(np.array([7, 8], np.uint64)).tolist() == [5, 2]
    assert index.count == 2


def test_growth_keeps_live_entries_and_drops_the_others():
    index = FingerprintIndex(16)
    k = keys(3000, 3)
    slots = np.arange(1, 3001, dtype=np.uint64)
    index.insert(k[:1000], slots[:1000])
    dead = set(range(1, 501))          # slots freed since: growth may forget them
    index.insert(k[1000:], slots[1000:], keep=lambda s: ~np.isin(s, list(dead)))
    found = index.lookup(k)
    assert (found[500:] == slots[500:]).all()
    assert set(found[:500].tolist()) <= {0} | dead
    assert index.count < 3000


def test_colliding_low_bits_probe_past_each_other():
    # Same folded 32 bits (high and low halves swapped): same home cell.
    a, b = np.uint64(0x0000_0001_0000_0002), np.uint64(0x0000_0002_0000_0001)
    index = FingerprintIndex()
    index.insert(np.array([a, b]), np.array([10, 20], np.uint64))
    assert index.lookup(np.array([a, b])).tolist() == [10, 20]
