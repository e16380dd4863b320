"""Failures of background work, told once: a loop that retries every fraction of a second must
neither hide a failure nor say the same thing five times a second.

A failure is told when its message is new, or when it has not recurred for `quiet` seconds (it
went away and came back). Memory stays bounded: messages quiet that long are forgotten.
"""

from __future__ import annotations

import time
from collections.abc import Callable

QUIET_SECONDS = 60.0


class FailureLog:
    def __init__(self, tell: Callable[[str], None], quiet: float = QUIET_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        self._tell = tell
        self._quiet = quiet
        self._clock = clock
        self._seen: dict[str, float] = {}       # message -> when it last happened

    def failed(self, message: str) -> bool:
        """Notes one failure; tells it if it is news. Returns whether it was told."""
        now = self._clock()
        self._seen = {m: t for m, t in self._seen.items() if now - t < self._quiet}
        news = message not in self._seen
        self._seen[message] = now
        if news:
            self._tell(message)
        return news
