"""The error dialog: one clear line, and the console keeps running."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label

DIALOG_CSS = """
{name} {{ align: center middle; }}
{name} > Vertical {{ width: 64; max-width: 100%; height: auto; border: thick $error;
                     background: $surface; padding: 1 2; }}
{name} .buttons {{ height: auto; align-horizontal: right; margin-top: 1; }}
{name} Button {{ margin-left: 2; }}
{name} Label {{ width: 1fr; }}
"""


class ErrorDialog(ModalScreen[None]):
    AUTO_FOCUS = "*"           # the console's own screens focus nothing (screens/base.py)
    DEFAULT_CSS = DIALOG_CSS.format(name="ErrorDialog")
    BINDINGS = [("escape,enter", "dismiss", "Close")]

    def __init__(self, title: str, message: str):
        super().__init__()
        self.title_text, self.message = title, message

    def compose(self) -> ComposeResult:
        with Vertical() as box:
            box.border_title = self.title_text
            yield Label(self.message, id="message")
            with Horizontal(classes="buttons"):
                yield Button("OK", variant="error", id="ok")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss()
