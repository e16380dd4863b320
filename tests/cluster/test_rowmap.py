"""The coordinator's row map alone, without nodes: rows, refcounts through a commit's seal,
release and unseal, and growth."""

from __future__ import annotations

import numpy as np

from engine.cluster.rowmap import MIN_GROWTH, RowMap

NODES = 3


def loaded(ids=(), refcounts=(), words=None, holders=None) -> RowMap:
    rows = RowMap(NODES)
    ids = np.array(ids, np.uint64)
    words = np.array(words if words is not None else [i ^ 0xFF for i in ids], np.uint64)
    holders = (np.array(holders, bool) if holders is not None
               else np.zeros((len(ids), NODES), bool))
    rows.load(ids, np.array(refcounts, np.int64), words, holders)
    return rows


def on(*nodes) -> np.ndarray:
    mask = np.zeros(NODES, bool)
    mask[list(nodes)] = True
    return mask


def test_a_map_is_ready_only_once_loaded():
    rows = RowMap(NODES)
    assert not rows.ready
    assert rows.under_replicated(on(0, 1, 2), 2) == 0       # nothing known, nothing short
    rows.load(np.zeros(0, np.uint64), np.zeros(0), np.zeros(0, np.uint64),
              np.zeros((0, NODES), bool))
    assert rows.ready and rows.used_count == 0


def test_loaded_rows_keep_ids_words_refcounts_and_holders():
    rows = loaded(ids=[10, 20, 30], refcounts=[1, 2, 3],
                  holders=[[1, 1, 0], [0, 1, 1], [1, 0, 0]])
    at = rows.rows_of(np.array([20, 99, 10], np.uint64))
    assert at[1] == 0                                       # unknown id: no row
    assert rows.ids_at(at[[0, 2]]).tolist() == [20, 10]
    assert rows.words_at(at[[0, 2]]).tolist() == [20 ^ 0xFF, 10 ^ 0xFF]
    assert rows.refcounts_at(at[[0, 2]]).tolist() == [2, 1]
    assert rows.holders_at(at[[0]]).tolist() == [[False, True, True]]
    assert rows.live_ids().tolist() == [10, 20, 30]
    assert rows.under_replicated(on(0, 1, 2), 2) == 1        # 30 has one copy
    assert rows.under_replicated(on(0, 1), 2) == 2           # and 20 lost node 2's
    live, short = rows.per_node(on(0, 1, 2), 2)
    assert live.tolist() == [2, 2, 1] and short.tolist() == [1, 0, 0]


def test_new_rows_are_found_by_id_and_hold_nothing_until_referenced():
    rows = loaded()
    ids = np.array([7, 8], np.uint64)
    made = rows.add(ids, np.array([70, 80], np.uint64), np.array([[1, 0, 1], [0, 1, 0]], bool))
    assert rows.rows_of(ids).tolist() == made.tolist()
    assert 0 not in made.tolist()                           # row 0 means "no row"
    assert rows.refcounts_at(made).tolist() == [0, 0]
    assert rows.live_ids().tolist() == []
    rows.incref(made)
    assert rows.live_ids().tolist() == [7, 8]
    rows.hold(made[:1], on(1))
    assert rows.holders_at(made[:1]).tolist() == [[True, True, True]]
    rows.unhold(made[:1], on(0, 2)[None, :])
    assert rows.holders_at(made[:1]).tolist() == [[False, True, False]]


def test_a_row_whose_last_reference_went_is_freed_only_by_its_commit():
    rows = loaded(ids=[5, 6], refcounts=[1, 2], holders=[[1, 1, 0], [0, 1, 1]])
    five, six = rows.rows_of(np.array([5, 6], np.uint64)).tolist()
    rows.decref(np.array([five, six]))
    assert rows.has_pending                                 # 5 lost its last reference
    assert rows.rows_of(np.array([5], np.uint64)).tolist() == [five]   # still there
    epoch = rows.seal()
    assert not rows.has_pending
    ids, holders = rows.release(epoch)
    assert ids.tolist() == [5]                              # its copies are to be dropped
    assert holders.tolist() == [[True, True, False]]
    assert rows.rows_of(np.array([5, 6], np.uint64)).tolist() == [0, six]
    assert rows.live_ids().tolist() == [6]


def test_a_failed_commit_keeps_its_rows_pending_for_the_next():
    rows = loaded(ids=[5], refcounts=[1], holders=[[1, 1, 0]])
    five = rows.rows_of(np.array([5], np.uint64))
    rows.decref(five)
    epoch = rows.seal()
    rows.unseal(epoch)                                      # the commit failed
    assert rows.has_pending
    assert rows.rows_of(np.array([5], np.uint64)).tolist() == five.tolist()
    ids, _ = rows.release(rows.seal())                      # the next commit frees it
    assert ids.tolist() == [5]


def test_a_row_shared_again_before_its_commit_is_not_freed():
    rows = loaded(ids=[5], refcounts=[1], holders=[[1, 1, 0]])
    five = rows.rows_of(np.array([5], np.uint64))
    rows.decref(five)
    epoch = rows.seal()
    rows.incref(five)                                       # a write shared it meanwhile
    ids, _ = rows.release(epoch)
    assert ids.tolist() == []
    assert rows.live_ids().tolist() == [5]


def test_a_freed_row_is_reused_and_names_only_its_new_id():
    rows = loaded(ids=[5], refcounts=[1], holders=[[1, 1, 0]])
    five = rows.rows_of(np.array([5], np.uint64))
    rows.decref(five)
    rows.release(rows.seal())
    again = rows.add(np.array([9], np.uint64), np.array([90], np.uint64), on(2)[None, :])
    assert again.tolist() == five.tolist()
    assert rows.rows_of(np.array([5, 9], np.uint64)).tolist() == [0, int(five[0])]
    assert rows.holders_at(again).tolist() == [[False, False, True]]


def test_growth_keeps_every_row_and_its_holders():
    rows = loaded(ids=[3], refcounts=[1], holders=[[0, 0, 1]])
    n = 3 * MIN_GROWTH                                      # more than one growth step
    ids = np.arange(100, 100 + n, dtype=np.uint64)
    held = np.zeros((n, NODES), bool)
    held[np.arange(n), np.arange(n) % NODES] = True
    made = np.concatenate([rows.add(ids[i:i + 500], ids[i:i + 500] + np.uint64(1),
                                    held[i:i + 500]) for i in range(0, n, 500)])
    rows.incref(made)
    assert len(np.unique(made)) == n
    assert rows.rows_of(ids).tolist() == made.tolist()
    assert rows.words_at(made).tolist() == (ids + np.uint64(1)).tolist()
    assert (rows.holders_at(made) == held).all()
    assert rows.live_ids().tolist() == [3, *ids.tolist()]
    assert rows.holders_at(rows.rows_of(np.array([3], np.uint64))).tolist() == [[0, 0, 1]]
    live, _ = rows.per_node(on(0, 1, 2), 1)
    assert live.tolist() == [n // 3, n // 3, n // 3 + 1]


def test_only_on_counts_the_live_rows_no_other_up_node_holds():
    rows = loaded(ids=[10, 20, 30, 40, 50], refcounts=[1, 1, 1, 1, 0],
                  holders=[[1, 0, 0], [1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 0, 0]])
    assert rows.only_on(0, on(0, 1, 2)) == 1        # 10 (50 is dead: no reference)
    assert rows.only_on(0, on(0, 1)) == 2           # 10, and 30, whose other copy is down
    assert rows.only_on(1, on(0, 1)) == 1           # 40
    assert rows.only_on(2, on(0, 1)) == 0           # down already: nothing more is lost
