"""A one-line progress bar on stderr for long CLI work, shown only on a terminal."""

from __future__ import annotations

import sys

from engine.api import Progress, human_bytes

WIDTH = 30


class ProgressBar:
    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.shown = False

    @classmethod
    def if_terminal(cls):
        return cls() if sys.stderr.isatty() else None

    def __call__(self, p: Progress) -> None:
        filled = int(WIDTH * min(p.fraction, 1.0))
        bar = "█" * filled + "░" * (WIDTH - filled)
        rate = f"  {human_bytes(p.bytes_per_s)}/s" if p.bytes_per_s else ""
        self.stream.write(f"\r{p.phase:<8} {bar} {p.fraction:6.1%}{rate}\033[K")
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
