"""Weighted rendezvous placement (engine/cluster/placement.py): a stable ranking of the nodes per
block id, chosen in proportion to the weights, and minimal movement when a node goes."""

from __future__ import annotations

import numpy as np
import pytest

from engine.cluster import placement

NAMES = [f"node{k}" for k in range(1, 6)]
SEEDS = np.array([placement.node_seed(n) for n in NAMES], dtype=np.uint64)
EVEN = np.ones(len(NAMES))
RNG = np.random.default_rng(7)
IDS = RNG.integers(1, 2**64 - 1, size=20_000, dtype=np.uint64)


def test_each_ranking_is_a_permutation_of_the_nodes():
    order = placement.ranking(IDS, SEEDS, EVEN)
    assert order.shape == (len(IDS), len(NAMES))
    assert (np.sort(order, axis=1) == np.arange(len(NAMES))).all()


def test_an_ids_ranking_is_stable_whatever_the_batch():
    whole = placement.ranking(IDS, SEEDS, EVEN)
    assert (placement.ranking(IDS, SEEDS, EVEN) == whole).all()
    assert (placement.ranking(IDS[::-1], SEEDS, EVEN) == whole[::-1]).all()
    for i in (0, 17, 19_999):
        assert (placement.ranking(IDS[i:i + 1], SEEDS, EVEN)[0] == whole[i]).all()


def test_the_seed_is_a_function_of_the_name_only():
    assert placement.node_seed("node1") == placement.node_seed("node1")
    assert len({placement.node_seed(n) for n in NAMES}) == len(NAMES)


def test_even_weights_spread_first_choices_evenly():
    first = placement.ranking(IDS, SEEDS, EVEN)[:, 0]
    share = np.bincount(first, minlength=len(NAMES)) / len(IDS)
    assert np.allclose(share, 1 / len(NAMES), atol=0.015)


@pytest.mark.parametrize("weights", [[1, 2, 3, 4, 5], [1, 1, 1, 1, 10], [0.5, 0.5, 2, 1, 1]])
def test_first_choices_follow_the_weights_in_proportion(weights):
    weights = np.array(weights, dtype=np.float64)
    first = placement.ranking(IDS, SEEDS, weights)[:, 0]
    share = np.bincount(first, minlength=len(NAMES)) / len(IDS)
    assert np.allclose(share, weights / weights.sum(), atol=0.015)


@pytest.mark.parametrize("replicas", [1, 2, 3])
def test_targets_are_the_first_r_up_nodes_of_the_ranking(replicas):
    up = np.array([True, False, True, True, True])
    chosen = placement.targets(IDS, SEEDS, EVEN, up, replicas)
    order = placement.ranking(IDS, SEEDS, EVEN)
    assert (chosen.sum(axis=1) == replicas).all() and not chosen[:, ~up].any()
    for i in range(0, len(IDS), 997):
        first_up = [n for n in order[i] if up[n]][:replicas]
        assert set(np.flatnonzero(chosen[i])) == set(first_up)


def test_fewer_up_nodes_than_replicas_takes_every_up_node():
    up = np.array([False, True, False, False, True])
    chosen = placement.targets(IDS, SEEDS, EVEN, up, 3)
    assert (chosen == up[None, :]).all()


@pytest.mark.parametrize("down", range(len(NAMES)))
def test_a_node_going_down_moves_only_its_own_ids(down):
    up = np.ones(len(NAMES), dtype=bool)
    before = placement.targets(IDS, SEEDS, EVEN, up, 2)
    up[down] = False
    after = placement.targets(IDS, SEEDS, EVEN, up, 2)
    had = before[:, down]
    assert (after[~had] == before[~had]).all()                 # nobody else's ids move
    kept = before[had] & after[had]
    assert (kept.sum(axis=1) == 1).all()                      # the other copy stays put
    assert ((after[had] & ~before[had]).sum(axis=1) == 1).all()   # one new home each


def test_a_node_joining_takes_only_the_ids_it_wins():
    before = placement.targets(IDS, SEEDS[:4], EVEN[:4], np.ones(4, bool), 2)
    after = placement.targets(IDS, SEEDS, EVEN, np.ones(5, bool), 2)
    gained = after[:, 4]
    assert (after[~gained, :4] == before[~gained]).all()
    assert 0.3 < gained.mean() < 0.5                         # about R/N = 2/5 of the ids
