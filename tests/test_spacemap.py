"""Refcounts and free slots alone: a freed slot is reused only once the drop is durable."""

from __future__ import annotations

import numpy as np

from engine.spacemap import SpaceMap


def fresh(capacity: int) -> SpaceMap:
    space = SpaceMap.from_refcounts(np.zeros(capacity, np.uint32))
    return space


def test_allocate_takes_the_lowest_free_slots_never_the_header():
    space = fresh(8)
    assert space.allocate(3).tolist() == [1, 2, 3]
    assert space.allocate(5) is None          # only 4 left: nothing taken
    assert space.free_count == 4


def test_a_freed_slot_waits_for_its_commit():
    space = fresh(4)
    slots = space.allocate(2)
    space.incref(slots)
    space.decref(slots[:1])
    assert space.pending_slots().tolist() == [1]
    epoch = space.seal()
    space.allocate(space.free_count)           # everything free now is taken
    assert space.allocate(1) is None           # slot 1 is sealed, not free
    assert space.release(epoch).tolist() == [1]
    assert space.allocate(1).tolist() == [1]


def test_a_failed_commit_puts_its_slots_back_to_pending():
    space = fresh(4)
    slots = space.allocate(1)
    space.incref(slots)
    space.decref(slots)
    epoch = space.seal()
    assert not space.has_pending
    space.unseal(epoch)
    assert space.has_pending and space.pending_slots().tolist() == [1]
    assert space.release(space.seal()).tolist() == [1]


def test_a_kept_slot_stays_pending_through_every_seal_until_let_go():
    space = fresh(4)
    slots = space.allocate(2)
    space.incref(slots)
    space.decref(slots)                         # both unreferenced now
    space.keep(slots[:1])                       # a committed page still names slot 1
    assert space.has_pending
    assert space.release(space.seal()).tolist() == [2]
    assert not space.has_pending                # what waits is kept: no commit's work
    assert space.release(space.seal()).tolist() == []
    assert sorted(space.allocate(space.free_count).tolist()) == [2, 3]    # never slot 1
    space.keep(np.zeros(0, np.uint64))          # a commit took that page
    assert space.has_pending
    assert space.release(space.seal()).tolist() == [1]


def test_a_slot_shared_again_before_the_commit_is_not_released():
    space = fresh(4)
    slots = space.allocate(1)
    space.incref(slots)
    space.decref(slots)
    space.incref(slots)                         # the same bytes written again: shared
    assert space.release(space.seal()).tolist() == []
    assert space.used_count == 1


def test_many_references_count_each_time():
    space = fresh(4)
    slots = np.array([1, 1, 1, 2] * 5, np.uint64)
    space.incref(slots)
    assert space.refcounts[1] == 15 and space.refcounts[2] == 5
    space.decref(slots)
    assert sorted(space.release(space.seal()).tolist()) == [1, 2]
