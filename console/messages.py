"""What the engine workers tell the UI thread. Workers only post these; they never touch widgets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from textual.message import Message

from engine.api import Event, NodeStatus, PoolStats, Progress, Snapshot, VMStats


@dataclass(frozen=True)
class Sample:
    """One poll's point on the Overview trends."""
    t: float
    ratio: float
    written_per_s: float


@dataclass(frozen=True)
class PoolView:
    """Everything the screens show about the pool, as of one poll: plain data only."""
    stats: PoolStats
    events: list[Event]
    history: tuple[Sample, ...] = field(default=())

    @property
    def vms(self) -> list[VMStats]:
        return self.stats.vms

    @property
    def nodes(self) -> list[NodeStatus]:
        return self.stats.nodes


class Polled(Message):
    def __init__(self, snapshot: Snapshot):
        super().__init__()
        self.snapshot = snapshot


class PollFailed(Message):
    def __init__(self, error: BaseException):
        super().__init__()
        self.error = error


class EngineDone(Message):
    """An engine call finished; `then` (if any) runs on the UI thread with its result."""

    def __init__(self, what: str, result: Any, then: Callable[[Any], None] | None,
                 changes: bool):
        super().__init__()
        self.what, self.result, self.then, self.changes = what, result, then, changes


class EngineFailed(Message):
    def __init__(self, what: str, error: BaseException, changes: bool,
                 failed: Callable[[], None] | None):
        super().__init__()
        self.what, self.error, self.changes, self.failed = what, error, changes, failed


class TaskProgress(Message):
    """Progress of long work (import, rebuild); each report replaces the one before."""

    def __init__(self, task: str, progress: Progress):
        super().__init__()
        self.task, self.progress = task, progress
