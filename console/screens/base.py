"""What every screen of the console shares: its commands from the registry, its table's keys,
and a redraw whenever a poll brings a new view of the pool while it is shown.

A console screen is a pane of the app's one Textual Screen, and the app's ContentSwitcher shows
one at a time; nothing on it takes the focus, and every key is bound on the app, which hands it
to the pane in front (console/registry.py). So a switch only lays out and paints what is already
styled. A Textual Screen for each would restyle every widget on it at every switch (Textual
restyles a screen when it resumes), and a focus that moves from table to table would restyle
and repaint the tables and rebuild the footer: three to four times the cost of a bare switch
(BENCHMARKS.md, Console).
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical

from widgets.row_table import RowTable

from ..messages import PoolView
from ..registry import allowed


class PoolPane(Vertical):
    MODE = ""
    """Its name in the registry (console/registry.py): "overview", "vms", …"""
    TITLE = ""
    """The header's title while it is shown."""

    def __init__(self) -> None:
        super().__init__(id=f"{self.MODE}-screen")
        self._latest: PoolView | None = None      # the newest poll
        self._shown: PoolView | None = None       # the poll on screen

    def compose(self) -> ComposeResult:
        yield from self.body()

    def body(self) -> ComposeResult:
        raise NotImplementedError

    def on_mount(self) -> None:
        for table in self.query(RowTable):
            table.can_focus = False         # its keys come through navigate
        self.watch(self.app, "view", self._view_changed)

    @property
    def is_shown(self) -> bool:
        return self.app.switcher.current == self.id

    def _view_changed(self, view: PoolView | None) -> None:
        # Only the screen in front redraws at each poll; the others catch up when shown again.
        self._latest = view
        if self.is_shown:
            self.draw()

    def draw(self) -> None:
        """Shows the newest poll, if it is not on screen yet."""
        if self._latest is not None and self._latest is not self._shown:
            self._shown = self._latest
            self.show_view(self._latest)

    def show_view(self, view: PoolView) -> None:
        """Redraws the screen from a poll's plain data."""

    def navigate(self, key: str) -> None:
        """An arrow or paging key, for the screen's table (if it has one)."""
        for table in self.query(RowTable).results():
            table.navigate(key)
            return

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return allowed(self.MODE, action, self.app.offer)
