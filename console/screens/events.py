"""6 Events: the log of what happened and who did it, newest first."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widgets import DataTable

from engine.api import Event

from ..messages import PoolView
from .base import PoolScreen


class EventsScreen(PoolScreen):
    MODE = "events"
    TITLE = "Blockfold · Events"
    DEFAULT_CSS = """
    EventsScreen DataTable { height: 1fr; }
    """

    def body(self) -> ComposeResult:
        table = DataTable(cursor_type="row", zebra_stripes=True, id="events", classes="framed")
        for column, width in (("WHEN", 19), ("WHO", 10), ("WHAT", 10), ("MESSAGE", 80)):
            table.add_column(column, width=width)
        yield table

    shown_events: list[Event] | None = None

    def show_view(self, view: PoolView) -> None:
        if view.events == self.shown_events:
            return
        self.shown_events = view.events
        table = self.query_one("#events", DataTable)
        table.clear()
        for e in view.events:
            table.add_row(self.app.clock.stamp(e.ts), e.actor, e.kind, e.message)
        table.border_title = f"{len(view.events)} most recent events"
