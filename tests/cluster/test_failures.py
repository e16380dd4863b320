"""Background failures are told once per distinct message, not once per retry."""

from __future__ import annotations

from engine.cluster.failures import FailureLog


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_failure_repeated_every_round_is_told_once():
    told, clock = [], Clock()
    log = FailureLog(told.append, quiet=60.0, clock=clock)
    for _ in range(300):                    # a minute of 0.2 s rounds
        log.failed("node2 refused blocks: disk full")
        clock.now += 0.2
    assert told == ["node2 refused blocks: disk full"]


def test_each_distinct_failure_is_told_once_even_interleaved():
    told, clock = [], Clock()
    log = FailureLog(told.append, quiet=60.0, clock=clock)
    for _ in range(50):
        log.failed("a")
        log.failed("b")
        clock.now += 0.2
    assert told == ["a", "b"]


def test_a_failure_that_went_away_and_came_back_is_told_again():
    told, clock = [], Clock()
    log = FailureLog(told.append, quiet=60.0, clock=clock)
    assert log.failed("a")
    clock.now += 59.0
    assert not log.failed("a")              # still the same episode
    clock.now += 60.0
    assert log.failed("a")                  # quiet for a minute: news again
    assert told == ["a", "a"]
