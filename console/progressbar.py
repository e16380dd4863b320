"""The CLI's progress bar for long work (import, export, rebuild, fsck, heal): rich.progress on
stderr, shown only on a terminal. Each phase of the work gets a line of its own, and the bar ends
on its own line, so whatever the command prints next starts on a fresh one. Work whose total is
not known (a stream: `vm import NAME -`, `vm write NAME -`) shows a pulsing bar and the bytes
done so far in place of a percentage."""

from __future__ import annotations

import sys

from engine.api import Progress, formats


def amount(p: Progress) -> str:
    """The column after the bar: the percentage done, or the bytes done while the total is not
    known."""
    if p.total is None:
        return formats.size(p.done)
    return f"{p.fraction:.0%}"


class ProgressBar:
    """A ProgressCallback (engine.api): call it with each report; close() when the work ends."""

    def __init__(self, stream=sys.stderr):
        # rich.progress loads only when a bar is shown: scripted commands start faster without.
        from rich.console import Console
        from rich.progress import BarColumn, Progress as Bars, TextColumn, TimeRemainingColumn
        self.bars = Bars(TextColumn("{task.description:<9}"), BarColumn(),
                         TextColumn("{task.fields[amount]:>8}"),
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
            self.tasks[p.phase] = self.bars.add_task(p.phase, total=p.total, amount="", rate="")
        # bytes_per_s is 0 for work counted in something else than bytes (pages, nodes).
        rate = formats.rate(p.bytes_per_s) if p.bytes_per_s else ""
        if p.total is None:
            completed, total = p.done, None      # a pulsing bar (rich), and no time left to tell
        elif p.total:
            completed, total = p.done, p.total
        else:
            completed, total = 1, 1             # nothing to do (an empty pool) is done at once
        self.bars.update(self.tasks[p.phase], completed=completed, total=total,
                         amount=amount(p), rate=rate)

    def close(self) -> None:
        """Leaves the bars as they are, each on its line; more reports start new ones."""
        if self.tasks:
            self.bars.stop()
            self.tasks.clear()
