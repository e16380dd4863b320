"""4 Rebuild: start a fast or full rebuild, watch its phases, rate and ETA; Escape cancels."""

from __future__ import annotations

import threading

from textual.app import ComposeResult

from engine.api import CancelledError, Progress, RebuildFigures, formats
from widgets.rebuild_panel import RebuildPanel
from widgets.row_table import Col, RowTable

from ..messages import PoolView, TaskProgress
from .base import PoolPane

UNITS = {"tables": "pages", "inventory": "nodes"}    # what a phase counts; else blocks
COLUMNS = (Col("WHEN", 12, numeric=True), Col("REASON", 9), Col("MODE", 4),
           Col("BLOCKS", 10, numeric=True), Col("CORRUPT", 7, numeric=True),
           Col("ORPHANS", 7, numeric=True), Col("TIME", 8, numeric=True))


class RebuildPane(PoolPane):
    MODE = "rebuild"
    TITLE = "Blockfold · Rebuild"
    DEFAULT_CSS = """
    RebuildPane RowTable { height: 1fr; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.cancel_event: threading.Event | None = None
        self._phase_start: tuple[str, float] | None = None

    def body(self) -> ComposeResult:
        yield RebuildPanel(list(self.app.admin.rebuild_phases))
        table = RowTable(COLUMNS, cursor_type="none", id="history", classes="framed")
        table.border_title = "recent rebuilds" + (
            "" if self.app.read_only else "   (f fast · F full · Escape cancels)")
        yield table

    def show_view(self, view: PoolView) -> None:
        when = self.app.clock.when
        self.query_one("#history", RowTable).show_rows([
            (str(i), (when(r.ts), r.reason, r.mode, formats.count(r.blocks),
                      formats.count(r.corrupt), formats.count(r.orphans),
                      formats.duration(r.seconds)))
            for i, r in enumerate(view.stats.rebuilds)])

    @property
    def running(self) -> bool:
        return self.cancel_event is not None

    def action_rebuild(self, full: bool) -> None:
        if self.running:
            self.notify("a rebuild is already running", severity="warning")
            return
        cancel = self.cancel_event = threading.Event()
        self._phase_start = None
        self.query_one(RebuildPanel).start("full" if full else "fast")
        admin = self.app.admin

        def progress(p: Progress) -> None:
            self.post_message(TaskProgress("rebuild", p))

        def run() -> RebuildFigures | None:
            try:
                return admin.rebuild(full=full, progress=progress, cancel=cancel)
            except CancelledError:
                return None

        self.app.engine("rebuild", run, self._finished, failed=self._failed)

    def _failed(self) -> None:
        """The error dialog says why; the panel says it stopped."""
        self.cancel_event = None
        self.query_one(RebuildPanel).finish([], "failed")

    def action_cancel(self) -> None:
        if self.cancel_event is not None:
            self.cancel_event.set()
            self.notify("cancelling the rebuild")

    def on_task_progress(self, message: TaskProgress) -> None:
        p = message.progress
        now = self.app.clock.monotonic()
        if self._phase_start is None or self._phase_start[0] != p.phase:
            self._phase_start = (p.phase, now)
        elapsed = now - self._phase_start[1]
        rate = eta = None
        # Only a phase that has run a while has a rate (and so an ETA) that means anything.
        if elapsed >= formats.RATE_MIN_SECONDS and p.done:
            per_s = p.done / elapsed
            rate = f"{formats.count(round(per_s))} {UNITS.get(p.phase, 'blocks')}/s"
            if p.bytes_per_s:
                rate += f" ({formats.rate(p.bytes_per_s)})"
            eta = formats.duration((p.total - p.done) / per_s)
        self.query_one(RebuildPanel).advance(p.phase, p.done, p.total, rate, eta)

    def _finished(self, figures: RebuildFigures | None) -> None:
        self.cancel_event = None
        panel = self.query_one(RebuildPanel)
        if figures is None:
            panel.finish([("result", "cancelled: the pool keeps the metadata it had")],
                         "cancelled")
            return
        panel.finish(result_lines(self.app.clock.steady(figures)))


def result_lines(figures: RebuildFigures) -> list[tuple[str, str]]:
    """The figures a rebuild returns, worded; those that do not apply (None) are left out, and
    so is the rate of a rebuild too short for one (formats.RATE_MIN_SECONDS)."""
    rate = formats.rate_over(figures.bytes, figures.seconds)
    lines = [("blocks", f"{formats.count(figures.blocks)} ({formats.size(figures.bytes)})"),
             ("time", formats.duration(figures.seconds) + (f" at {rate}" if rate else ""))]
    for label, value in (("pages read", figures.pages), ("references", figures.references),
                         ("corrupt", len(figures.corrupt_blocks)),
                         ("orphans reclaimed", figures.orphans_reclaimed),
                         ("copies repaired", figures.repaired_copies),
                         ("missing", figures.missing_blocks),
                         ("free slots", figures.free_slots)):
        if value is not None:
            lines.append((label, formats.count(value)))
    return lines
