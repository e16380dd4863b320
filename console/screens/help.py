"""`?`: the keys of the current screen and of the whole app, from the command registry."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label

from ..registry import Offer, commands_for, key_label


class HelpScreen(ModalScreen[None]):
    AUTO_FOCUS = "*"           # the console's own screens focus nothing (screens/base.py)
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Vertical { width: 90; max-width: 100%; height: auto; max-height: 90%;
                            border: thick $primary;
                            background: $surface; padding: 0 1; }
    HelpScreen DataTable { height: auto; }
    """
    BINDINGS = [("escape,question_mark,q", "dismiss", "Close")]

    def __init__(self, scope: str | None, offer: Offer):
        super().__init__()
        self.scope, self.offer = scope, offer

    def compose(self) -> ComposeResult:
        with Vertical() as box:
            box.border_title = "Keys" + (" (read-only: writes hidden)" if self.offer.read_only
                                         else "")
            box.border_subtitle = "Escape closes · Ctrl+P runs any of these by name"
            table = DataTable(cursor_type="none", show_cursor=False)
            table.add_columns("KEY", "COMMAND", "WHAT IT DOES")
            commands = commands_for(self.scope, self.offer) if self.scope else []
            for command in commands + commands_for("app", self.offer):
                table.add_row(key_label(command.key), command.title, command.help)
            yield table
            yield Label("ctrl+p  command palette", classes="muted")
