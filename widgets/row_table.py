"""A table of rows for operators: what every list on the console (VMs, nodes, events, blocks) is.

- The cursor moves by rows; Home and End go to the first and the last row (DataTable's own move
  sideways in row mode, which a table that fits its width never needs). Its keys work focused,
  or handed to it with `navigate` by a screen that keeps the focus elsewhere (the console's
  tables never take it); either way it draws its cursor as a focused table does.
- Columns have fixed widths, so the layout does not shift as rows come and go, except one
  *flexible* column that takes the room the others leave: the table always fits its width, with
  no sideways scrolling, and a long cell ends in "…" rather than off the edge. In a table too
  narrow for them all, the columns that may narrow (`least`) do so in their order, each as far
  as needed and no further than its `least`, the flexible one too.
- Numbers are right-aligned, so their digits line up; a cell too long for its column ends in "…".
- `show_rows` redraws only what changed: nothing when a poll brings the same rows, the changed
  cells when the same rows come in the same order, and the whole table only when rows come or go;
  the cursor stays on the row it was on (by key).
- The border's subtitle says where the cursor is: "12 of 200".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.text import Text
from textual.binding import Binding
from textual.widgets import DataTable


@dataclass(frozen=True)
class Col:
    label: str
    width: int
    """Cells the column takes (the flexible one: at least)."""
    numeric: bool = False
    """Right-aligned."""
    flex: bool = False
    """Takes the room the other columns leave (at least `width`, unless it has a `least`)."""
    least: int | None = None
    """Narrows down to this many cells when the table is too narrow for `width` (its cells then
    end in "…"), after the columns before it that may narrow."""


Cells = tuple[str | Text, ...]


class RowTable(DataTable):
    DEFAULT_CSS = """
    RowTable { scrollbar-size-vertical: 0; overflow-x: hidden; }
    RowTable > .datatable--cursor {
        background: $block-cursor-background; color: $block-cursor-foreground;
        text-style: $block-cursor-text-style;
    }
    """
    KEYS = {"up": "cursor_up", "down": "cursor_down", "pageup": "page_up",
            "pagedown": "page_down", "home": "scroll_top", "end": "scroll_bottom"}
    """Key -> action: what the table does with the arrow and paging keys."""
    BINDINGS = [Binding(key, action, show=False) for key, action in KEYS.items()]

    def __init__(self, columns: Sequence[Col], **kwargs) -> None:
        kwargs.setdefault("cursor_type", "row")
        super().__init__(**kwargs)
        self.spec = tuple(columns)
        self._raw: list[tuple[str, Cells]] = []
        self._widths: tuple[int, ...] = ()

    def on_mount(self) -> None:
        self._lay_out()

    def on_resize(self) -> None:
        if self._widths != self._fitted_widths():
            self._lay_out()
            self._fill(self._raw)

    def _fitted_widths(self) -> tuple[int, ...]:
        room = self.scrollable_content_region.width - 2 * self.cell_padding * len(self.spec)
        widths = [c.width for c in self.spec]
        short = sum(widths) - room
        for i, c in enumerate(self.spec):
            if short > 0 and c.least is not None:
                cut = min(short, c.width - c.least)
                widths[i] -= cut
                short -= cut
        return tuple(width - min(short, 0) if c.flex else width
                     for c, width in zip(self.spec, widths))

    def _lay_out(self) -> None:
        self._widths = self._fitted_widths()
        self.clear(columns=True)
        for c, width in zip(self.spec, self._widths):
            self.add_column(c.label.rjust(width) if c.numeric else c.label, width=width,
                            key=c.label.lower())

    # -- rows ---------------------------------------------------------------------------------

    def show_rows(self, rows: list[tuple[str, Cells]]) -> None:
        """rows: (key, cells), each cell a str or a rich Text."""
        if rows == self._raw:
            return
        same_keys = [k for k, _ in rows] == [k for k, _ in self._raw]
        self._raw = rows
        if same_keys:
            for key, cells in rows:
                for c, cell, old in zip(self.spec, self._fitted(cells),
                                        self.get_row(key)):
                    if cell != old:
                        self.update_cell(key, c.label.lower(), cell)
            return
        selected = self.selected()
        self._fill(rows)
        if selected is not None and selected in self.rows:
            self.move_cursor(row=self.get_row_index(selected), animate=False)
        self._where()

    def _fitted(self, cells: Cells) -> Cells:
        """Each cell cut to its column (ending in "…") and aligned in it."""
        out = []
        for c, width, cell in zip(self.spec, self._widths, cells):
            text = cell.copy() if isinstance(cell, Text) else Text(cell)
            text.truncate(width, overflow="ellipsis")
            if c.numeric:
                text.align("right", width)
            out.append(text)
        return tuple(out)

    def _fill(self, rows: list[tuple[str, Cells]]) -> None:
        self.clear()
        for key, cells in rows:
            self.add_row(*self._fitted(cells), key=key)

    def navigate(self, key: str) -> None:
        """What a key of KEYS does, for a table that has not got the focus."""
        if key in self.KEYS:
            getattr(self, f"action_{self.KEYS[key]}")()

    def selected(self) -> str | None:
        """The key of the row under the cursor; None for an empty table."""
        if not self.row_count:
            return None
        return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value

    # -- where the cursor is ------------------------------------------------------------------

    def watch_cursor_coordinate(self, old, new) -> None:
        super().watch_cursor_coordinate(old, new)
        self._where()

    def _where(self) -> None:
        self.border_subtitle = (f"{self.cursor_row + 1:,} of {self.row_count:,}"
                                if self.row_count > 1 else "")
