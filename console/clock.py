"""The console's notion of time, injectable so that snapshots are stable.

`SystemClock` is the real one. `FixedClock` starts at a fixed instant and moves a fixed step at
each reading, so trends built from polls come out the same on every run; values that only the real
world decides (engine timestamps, transfer rates, the pool's path) are shown as a placeholder.
"""

from __future__ import annotations

import time

HIDDEN = "··"


class SystemClock:
    def now(self) -> float:
        return time.time()

    def stamp(self, ts: float) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))

    def volatile(self, text: str) -> str:
        return text


class FixedClock(SystemClock):
    def __init__(self, start: float = 1_800_000_000.0, step: float = 5.0):
        self.t = start - step
        self.step = step

    def now(self) -> float:
        self.t += self.step
        return self.t

    def stamp(self, ts: float) -> str:
        return HIDDEN

    def volatile(self, text: str) -> str:
        return HIDDEN
