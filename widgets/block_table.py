"""The block table: one row per physical block, shown one page at a time.

A pool can hold millions of blocks, so the table never holds them all: it shows one page of rows
and, when the cursor runs off either end (or on PageUp/PageDown/Home/End), asks its owner for the
neighbouring page with a `PageWanted` message. The owner fetches it (off the UI thread) and hands
it back with `show_page`. The widget makes no engine calls.
"""

from __future__ import annotations

from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable

from engine.api import BlockRow

MOST_VM_NAMES = 4


def vm_names(names: list[str]) -> str:
    if len(names) <= MOST_VM_NAMES:
        return ", ".join(names)
    return ", ".join(names[:MOST_VM_NAMES]) + f" +{len(names) - MOST_VM_NAMES}"


class BlockTable(DataTable):
    """Rows are engine.api.BlockRow: pbn, fingerprint, refcount and the VMs that read it."""

    DEFAULT_CSS = """
    BlockTable { border: round $primary-darken-1; }
    BlockTable:focus { border: round $primary; }
    """
    BINDINGS = [
        Binding("pagedown", "next_page", "Next page", show=False),
        Binding("pageup", "previous_page", "Previous page", show=False),
        Binding("ctrl+home,home", "first_page", "First page", show=False),
        Binding("ctrl+end,end", "last_page", "Last page", show=False),
    ]

    class PageWanted(Message):
        """The table needs the rows from `offset`; `cursor` is "first" or "last" row of it."""

        def __init__(self, table: BlockTable, offset: int, cursor: str) -> None:
            super().__init__()
            self.table = table
            self.offset = offset
            self.cursor = cursor

    def __init__(self, page_size: int = 100, **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.page_size = page_size
        self.first_row = 0
        self.total = 0
        self._waiting = False

    def on_mount(self) -> None:
        # Fixed widths: the columns stay put from page to page.
        for column, width in (("PBN", 20), ("FINGERPRINT", 32), ("REFS", 6), ("VMS", 56)):
            self.add_column(column, key=column.lower(), width=width)
        self._caption()

    def show_page(self, total: int, offset: int, rows: list[BlockRow],
                  cursor: str = "first") -> None:
        self._waiting = False
        self.total, self.first_row = total, offset
        self.clear()
        for row in rows:
            self.add_row(str(row.pbn), row.fingerprint, str(row.refcount), vm_names(row.vms),
                         key=str(row.pbn))
        if rows:
            self.move_cursor(row=len(rows) - 1 if cursor == "last" else 0, animate=False)
        self._caption()

    def page_failed(self) -> None:
        """The page asked for did not come: the table may ask again."""
        self._waiting = False

    def _caption(self) -> None:
        if self.total:
            last = self.first_row + self.row_count
            self.border_title = f"blocks {self.first_row + 1:,}–{last:,} of {self.total:,}"
        else:
            self.border_title = "no blocks"

    def _want(self, offset: int, cursor: str) -> None:
        last_page = max(0, (self.total - 1) // self.page_size * self.page_size)
        offset = min(max(offset, 0), last_page)
        if self._waiting or offset == self.first_row:
            if offset == self.first_row:
                self.move_cursor(row=self.row_count - 1 if cursor == "last" else 0)
            return
        self._waiting = True
        self.post_message(self.PageWanted(self, offset, cursor))

    def action_cursor_down(self) -> None:
        if self.cursor_row >= self.row_count - 1 and self.first_row + self.row_count < self.total:
            self._want(self.first_row + self.page_size, "first")
        else:
            super().action_cursor_down()

    def action_cursor_up(self) -> None:
        if self.cursor_row <= 0 and self.first_row > 0:
            self._want(self.first_row - self.page_size, "last")
        else:
            super().action_cursor_up()

    def action_next_page(self) -> None:
        self._want(self.first_row + self.page_size, "first")

    def action_previous_page(self) -> None:
        self._want(self.first_row - self.page_size, "first")

    def action_first_page(self) -> None:
        self._want(0, "first")

    def action_last_page(self) -> None:
        self._want(self.total - 1, "last")
