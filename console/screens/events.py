"""6 Events: the log of what happened and who did it, newest first."""

from __future__ import annotations

from textual.app import ComposeResult

from widgets.row_table import Col, RowTable

from ..messages import PoolView
from .base import PoolPane

COLUMNS = (Col("WHEN", 12, numeric=True), Col("WHO", 14, least=8), Col("WHAT", 8),
           Col("MESSAGE", 30, flex=True))


class EventsPane(PoolPane):
    MODE = "events"
    TITLE = "Blockfold · Events"
    DEFAULT_CSS = """
    EventsPane RowTable { height: 1fr; }
    """

    def body(self) -> ComposeResult:
        yield RowTable(COLUMNS, zebra_stripes=True, id="events", classes="framed")

    def show_view(self, view: PoolView) -> None:
        table = self.query_one("#events", RowTable)
        when = self.app.clock.when
        table.show_rows([(str(e.id), (when(e.ts), e.actor, e.kind, e.message))
                         for e in view.events])
        table.border_title = f"{len(view.events)} most recent events"
