"""3 Blocks: the block table, paged from the engine; `/` filters it."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widgets import Label

from engine.api import BlockPage
from widgets.block_table import BlockTable

from ..blockfilter import HINT, describe, parse_filter
from ..messages import PoolView
from .base import PoolPane
from .error import ErrorDialog
from .prompt import PromptDialog

PAGE_SIZE = 100


class BlocksPane(PoolPane):
    MODE = "blocks"
    TITLE = "Blockfold · Blocks"
    DEFAULT_CSS = """
    BlocksPane BlockTable { height: 1fr; }
    BlocksPane #filter { padding: 0 1; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.filters: dict = {}
        self._seen_generation: tuple | None = None

    def body(self) -> ComposeResult:
        yield Label("filter: none   (/ to filter)", id="filter")
        yield BlockTable(page_size=PAGE_SIZE, cluster=self.app.admin.kind == "cluster",
                         classes="framed")

    def show_view(self, view: PoolView) -> None:
        # A page is re-read only when the pool's blocks may have changed, not at every poll.
        s = view.stats
        generation = (s.unique_blocks, s.logical_bytes, len(view.vms), s.state)
        if generation != self._seen_generation:
            self._seen_generation = generation
            table = self.query_one(BlockTable)
            self.fetch(table.first_row, "keep")

    def fetch(self, offset: int, cursor: str) -> None:
        filters = dict(self.filters)
        table = self.query_one(BlockTable)
        row = table.cursor_row

        def shown(page: BlockPage) -> None:
            if page.rows or page.offset == 0:
                where = cursor if cursor != "keep" else "first"
                table.show_page(page.total, page.offset, page.rows, where)
                if cursor == "keep":
                    table.move_cursor(row=min(row, max(table.row_count - 1, 0)), animate=False)
            else:       # the pool shrank under the page we were on
                self.fetch(0, "first")

        self.app.engine("read blocks", lambda: self.app.admin.blocks(
            offset=offset, limit=PAGE_SIZE, **filters), shown, changes=False,
            failed=table.page_failed)

    def on_block_table_page_wanted(self, message: BlockTable.PageWanted) -> None:
        self.fetch(message.offset, message.cursor)

    def action_filter(self) -> None:
        def submitted(answer: dict | None) -> None:
            if answer is None:
                return
            try:
                self.filters = parse_filter(answer["filter"])
            except ValueError as e:
                self.app.push_screen(ErrorDialog("filter", str(e)))
                return
            self.query_one("#filter", Label).update(
                f"filter: {describe(self.filters) or 'none'}   (/ to filter)")
            self.fetch(0, "first")

        self.app.push_screen(PromptDialog("Filter blocks", [
            ("filter", HINT, describe(self.filters))], ok="Filter"), submitted)
