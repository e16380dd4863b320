"""4 Rebuild: start a fast or full rebuild, watch its phases, rate and ETA; Escape cancels."""

from __future__ import annotations

import threading
import time

from textual.app import ComposeResult
from textual.widgets import DataTable

from engine.api import CancelledError, Progress, RebuildFigures, human_bytes
from widgets.rebuild_panel import RebuildPanel

from ..messages import PoolView, TaskProgress
from .base import PoolScreen

UNITS = {"tables": "pages", "inventory": "nodes"}    # what a phase counts; else blocks


class RebuildScreen(PoolScreen):
    MODE = "rebuild"
    TITLE = "Blockfold · Rebuild"
    DEFAULT_CSS = """
    RebuildScreen DataTable { height: 1fr; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.cancel_event: threading.Event | None = None
        self._phase_start: tuple[str, float] | None = None

    def body(self) -> ComposeResult:
        yield RebuildPanel(list(self.app.admin.rebuild_phases))
        table = DataTable(cursor_type="none", id="history", classes="framed")
        for column, width in (("WHEN", 19), ("REASON", 10), ("MODE", 5), ("BLOCKS", 12),
                              ("CORRUPT", 8), ("ORPHANS", 8), ("SECONDS", 8)):
            table.add_column(column, width=width)
        table.border_title = "recent rebuilds   (f fast · F full · Escape cancels)"
        yield table

    def show_view(self, view: PoolView) -> None:
        clock = self.app.clock
        table = self.query_one("#history", DataTable)
        table.clear()
        for r in view.stats.rebuilds:
            table.add_row(clock.stamp(r.ts), r.reason, r.mode, f"{r.blocks:,}", str(r.corrupt),
                          str(r.orphans), clock.volatile(f"{r.seconds:.2f}"))

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
        now = time.monotonic()
        if self._phase_start is None or self._phase_start[0] != p.phase:
            self._phase_start = (p.phase, now)
        elapsed = now - self._phase_start[1]
        per_s = p.done / elapsed if elapsed > 0 else 0.0
        rate = f"{per_s:,.0f} {UNITS.get(p.phase, 'blocks')}/s"
        if p.phase == "hashes" and p.bytes_per_s:
            rate += f" ({human_bytes(p.bytes_per_s)}/s)"
        eta = f"{(p.total - p.done) / per_s:.0f}s" if per_s else None
        clock = self.app.clock
        self.query_one(RebuildPanel).advance(p.phase, p.done, p.total, clock.volatile(rate),
                                             clock.volatile(eta) if eta else None)

    def _finished(self, figures: RebuildFigures | None) -> None:
        self.cancel_event = None
        panel = self.query_one(RebuildPanel)
        if figures is None:
            panel.finish([("result", "cancelled: the pool keeps the metadata it had")],
                         "cancelled")
            return
        panel.finish(result_lines(figures, self.app.clock))


def result_lines(figures: RebuildFigures, clock) -> list[tuple[str, str]]:
    """The figures a rebuild returns, worded; those that do not apply (None) are left out."""
    lines = [("mode", figures.mode),
             ("blocks", f"{figures.blocks:,} ({human_bytes(figures.bytes)})")]
    for label, value in (("pages read", figures.pages), ("references", figures.references),
                         ("corrupt blocks", len(figures.corrupt_blocks)),
                         ("orphans reclaimed", figures.orphans_reclaimed),
                         ("missing blocks", figures.missing_blocks),
                         ("free slots", figures.free_slots)):
        if value is not None:
            lines.append((label, f"{value:,}"))
    rate = f"{figures.seconds:.2f}s, {human_bytes(figures.bytes_per_s)}/s"
    lines.append(("time", clock.volatile(rate)))
    return lines
