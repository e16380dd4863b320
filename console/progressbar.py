"""The CLI's progress bar for long work (import, export, rebuild, fsck, heal): rich.progress on
stderr, shown only on a terminal. Each phase of the work gets a line of its own, and the bar ends
on its own line, so whatever the command prints next starts on a fresh one."""

from __future__ import annotations

import sys

from engine.api import Progress, formats


class ProgressBar:
    """A ProgressCallback (engine.api): call it with each report; close() when the work ends."""

    def __init__(self, stream=sys.stderr):
        # rich.progress loads only when a bar is shown: scripted commands start faster without.
        from rich.console import Console
        from rich.progress import (BarColumn, Progress as Bars, TaskProgressColumn, TextColumn,
                                   TimeRemainingColumn)
        self.bars = Bars(TextColumn("{task.description:<9}"), BarColumn(), TaskProgressColumn(),
                         TextColumn("{task.fields[rate]:>12}"), TimeRemainingColumn(),
                         console=Console(file=stream), transient=False)
        self.tasks: dict[str, int] = {}

    @classmethod
    def if_terminal(cls) -> ProgressBar | None:
        return cls() if sys.stderr.isatty() else None

    def __call__(self, p: Progress) -> None:
        if not self.tasks:
            self.bars.start()
        if p.phase not in self.tasks:
            self.tasks[p.phase] = self.bars.add_task(p.phase, total=p.total, rate="")
        # bytes_per_s is 0 for work counted in something else than bytes (pages, nodes).
        rate = formats.rate(p.bytes_per_s) if p.bytes_per_s else ""
        total = p.total or 1            # nothing to do (an empty pool) is done at once
        self.bars.update(self.tasks[p.phase], completed=p.done if p.total else 1, total=total,
                         rate=rate)

    def close(self) -> None:
        """Leaves the bars as they are, each on its line; more reports start new ones."""
        if self.tasks:
            self.bars.stop()
            self.tasks.clear()
