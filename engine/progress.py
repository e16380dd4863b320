"""Progress reports for long work (import, export, rebuild), delivered through a callback."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from .errors import CancelledError


@dataclass(frozen=True)
class Progress:
    phase: str
    """What is being done: "import", "hashes", … (Admin.rebuild_phases names a rebuild's)."""
    done: int
    """Units done so far (bytes, blocks, pages or nodes: the phase decides)."""
    total: int | None
    """Units in all; None while not known (a stream read to its end, counted in bytes)."""
    bytes_per_s: float = 0.0
    """Data rate since the phase began; 0 for work not counted in bytes or blocks."""

    @property
    def fraction(self) -> float:
        """Of the work done: 1.0 for work with nothing to do, 0.0 while the total is not known."""
        if self.total is None:
            return 0.0
        return self.done / self.total if self.total else 1.0


ProgressCallback = Callable[[Progress], None]


def cancellable(progress: ProgressCallback | None, cancel) -> ProgressCallback | None:
    """A progress callback that raises CancelledError once `cancel` (a threading.Event) is set,
    and passes every report on to `progress`. Long work reports every few tenths of a second, and
    stops cleanly when its callback raises, so this is how work with no cancel of its own is
    cancelled."""
    if cancel is None:
        return progress

    def report(p: Progress) -> None:
        if cancel.is_set():
            raise CancelledError(f"{p.phase} cancelled")
        if progress is not None:
            progress(p)
    return report


class Meter:
    """Turns running counts into Progress reports, at most every `interval` seconds. total: None
    for a stream's bytes, not known until it ends. unit_bytes: the bytes in one unit of work (1
    for bytes, the block size for blocks; 0 for pages, nodes or keys, whose reports have no data
    rate)."""

    def __init__(self, callback: ProgressCallback | None, phase: str, total: int | None,
                 unit_bytes: int = 0, interval: float = 0.1):
        self.callback = callback
        self.phase = phase
        self.total = total
        self.unit_bytes = unit_bytes
        self.interval = interval
        self.start = time.monotonic()
        self._last = 0.0
        self.done = 0

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.callback is None:
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self.callback(self._report(now))

    def finish(self) -> None:
        """Reports the work whole: done is the total at least."""
        if self.callback is not None:
            self.done = max(self.done, self.total or 0)
            self.callback(self._report(time.monotonic()))

    def stopped(self) -> None:
        """Reports where work that ends before its end (a cancelled scrub) got to: done as
        counted, never bumped to the total (its job showed 100 % at any point it stopped)."""
        if self.callback is not None:
            self.callback(self._report(time.monotonic()))

    def _report(self, now: float) -> Progress:
        elapsed = max(now - self.start, 1e-9)
        return Progress(self.phase, self.done, self.total, self.done * self.unit_bytes / elapsed)


def relabelled(callback: ProgressCallback | None, phase: str) -> ProgressCallback | None:
    """`callback`, told every report as `phase`: work that runs another's steps says what it is
    doing (a removal's drain runs heal passes, and its bar said "heal")."""
    if callback is None:
        return None
    return lambda p: callback(replace(p, phase=phase))


# The native core reports progress as four arguments, (phase, done, total, bytes_per_s), and so
# does the engine to a Python block layer it calls through the core (engine/blocklayer.py).
CoreCallback = Callable[[str, int, int, float], None]


def core_callback(callback: ProgressCallback | None) -> CoreCallback | None:
    """The core's form of an engine progress callback."""
    if callback is None:
        return None
    return lambda phase, done, total, bytes_per_s: callback(
        Progress(phase, done, total, bytes_per_s))


def engine_callback(callback: CoreCallback | None) -> ProgressCallback | None:
    """The engine's form of a callback in the core's form (for a Meter)."""
    if callback is None:
        return None
    return lambda p: callback(p.phase, p.done, p.total, p.bytes_per_s)
