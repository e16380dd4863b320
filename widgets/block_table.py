"""The block table: one row per physical block, shown one page at a time.

A pool can hold millions of blocks, so the table never holds them all: it shows one page of rows
and, when the cursor runs off either end (or on PageUp/PageDown/Home/End), asks its owner for the
neighbouring page with a `PageWanted` message. The owner fetches it (off the UI thread) and hands
it back with `show_page`. The widget makes no engine calls.
"""

from __future__ import annotations

from textual.binding import Binding
from textual.message import Message

from engine.api import BlockRow, formats

from .row_table import Col, RowTable

MOST_VM_NAMES = 4
NODES = Col("NODES", 11)      # R names: "node1,node3"


def columns(cluster: bool) -> tuple[Col, ...]:
    """VMS is how many VMs read the block; REFS its refcount, shown where the two differ; NODES
    (a cluster's) the nodes holding its copies.

    PBN is always whole: a cluster's is a 64-bit id (up to 20 digits), an embedded pool's a slot
    number. In 80 columns the fingerprint narrows first, to 11 hex digits (enough for the
    filter's `fp` prefix), then READ BY; NODES stays whole."""
    return (Col("PBN", 20 if cluster else 12, numeric=True), Col("FINGERPRINT", 32, least=12),
            Col("VMS", 5, numeric=True), Col("REFS", 5, numeric=True),
            *((NODES,) if cluster else ()), Col("READ BY", 26, flex=True, least=8))


def vm_names(names: list[str], readers: int) -> str:
    names = sorted(names, key=formats.natural_key)
    if readers <= MOST_VM_NAMES:
        return ", ".join(names)
    return ", ".join(names[:MOST_VM_NAMES]) + f" +{formats.count(readers - MOST_VM_NAMES)}"


def cells(row: BlockRow, cluster: bool) -> tuple[str, ...]:
    nodes = (",".join(row.nodes or ()) or formats.UNKNOWN,) if cluster else ()
    return (str(row.pbn), row.fingerprint, formats.count(row.readers),
            formats.refs_beside(row.readers, row.refcount), *nodes,
            vm_names(row.vms, row.readers))


class BlockTable(RowTable):
    """Rows are engine.api.BlockRow: pbn, fingerprint, how many VMs read it (and its refcount
    where that differs), the nodes holding it (`cluster`) and the VMs' names."""

    KEYS = {**RowTable.KEYS, "pagedown": "next_page", "pageup": "previous_page",
            "home": "first_page", "end": "last_page"}
    BINDINGS = [Binding(key, action, show=False) for key, action in KEYS.items()]

    class PageWanted(Message):
        """The table needs the rows from `offset`; `cursor` is "first" or "last" row of it."""

        def __init__(self, table: BlockTable, offset: int, cursor: str) -> None:
            super().__init__()
            self.table = table
            self.offset = offset
            self.cursor = cursor

    def __init__(self, page_size: int = 100, cluster: bool = False, **kwargs) -> None:
        super().__init__(columns(cluster), zebra_stripes=True, **kwargs)
        self.cluster = cluster
        self.page_size = page_size
        self.first_row = 0
        self.total = 0
        self._waiting = False

    def on_mount(self) -> None:
        super().on_mount()
        self._caption()

    def show_page(self, total: int, offset: int, rows: list[BlockRow],
                  cursor: str = "first") -> None:
        self._waiting = False
        self.total, self.first_row = total, offset
        self.show_rows([(str(r.pbn), cells(r, self.cluster)) for r in rows])
        if rows:
            self.move_cursor(row=len(rows) - 1 if cursor == "last" else 0, animate=False)
        self._caption()
        self._where()

    def page_failed(self) -> None:
        """The page asked for did not come: the table may ask again."""
        self._waiting = False

    def _caption(self) -> None:
        if self.total:
            last = self.first_row + self.row_count
            self.border_title = f"blocks {self.first_row + 1:,}–{last:,} of {self.total:,}"
        else:
            self.border_title = "no blocks"

    def _where(self) -> None:
        """Where the cursor is among all the blocks, not only this page's."""
        self.border_subtitle = (f"{self.first_row + self.cursor_row + 1:,} of {self.total:,}"
                                if self.total > 1 else "")

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
