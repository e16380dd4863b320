"""What every main screen shares: its commands from the registry, a header and footer, and a
redraw whenever a poll brings a new view of the pool."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from ..messages import PoolView
from ..registry import SCREENS, allowed, bindings_for


class PoolScreen(Screen):
    MODE = ""
    DEFAULT_CSS = """
    PoolScreen #screen-tabs { height: 1; padding: 0 1; background: $boost; }
    """

    def __init_subclass__(cls, **kwargs) -> None:
        cls.BINDINGS = bindings_for(cls.MODE)     # before Textual collects the bindings
        super().__init_subclass__(**kwargs)

    def __init__(self) -> None:
        super().__init__()
        self._latest: PoolView | None = None      # the newest poll
        self._shown: PoolView | None = None       # the poll on screen

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(self._tabs(), id="screen-tabs")
        yield from self.body()
        yield Footer()

    def _tabs(self) -> Text:
        """The screens and their number keys, this one highlighted."""
        text = Text()
        for mode, key, title in SCREENS:
            text.append(f" {key} {title} ", style="bold reverse" if mode == self.MODE else "")
            text.append(" ")
        return text

    def body(self) -> ComposeResult:
        raise NotImplementedError

    def on_mount(self) -> None:
        self.watch(self.app, "view", self._view_changed)

    def _view_changed(self, view: PoolView | None) -> None:
        # Only the screen in front redraws at each poll; the others catch up when shown again.
        self._latest = view
        if self.is_current:
            self._draw()

    def on_screen_resume(self) -> None:
        self._draw()

    def _draw(self) -> None:
        if self._latest is not None and self._latest is not self._shown:
            self._shown = self._latest
            self.show_view(self._latest)

    def show_view(self, view: PoolView) -> None:
        """Redraws the screen from a poll's plain data."""

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return allowed(self.MODE, action, self.app.read_only)
