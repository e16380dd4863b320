"""A small form of labelled inputs: Enter on the last field (or OK) submits, Escape cancels."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label

from .error import DIALOG_CSS


class PromptDialog(ModalScreen[dict | None]):
    AUTO_FOCUS = "*"           # the console's own screens focus nothing (screens/base.py)
    DEFAULT_CSS = DIALOG_CSS.format(name="PromptDialog").replace("$error", "$primary")
    BINDINGS = [("escape", "cancel", "Cancel")]

    def __init__(self, title: str, fields: list[tuple[str, str, str]], ok: str = "OK"):
        """fields: (key, label, initial value)."""
        super().__init__()
        self.title_text, self.fields, self.ok = title, fields, ok

    def compose(self) -> ComposeResult:
        with Vertical() as box:
            box.border_title = self.title_text
            for key, label, value in self.fields:
                yield Label(label)
                yield Input(value, id=f"field-{key}")
            with Horizontal(classes="buttons"):
                yield Button("Cancel", id="cancel")
                yield Button(self.ok, variant="primary", id="ok")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        inputs = list(self.query(Input))
        position = inputs.index(event.input)
        if position + 1 < len(inputs):
            inputs[position + 1].focus()
        else:
            self._submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "ok":
            self._submit()
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)

    def _submit(self) -> None:
        self.dismiss({key: self.query_one(f"#field-{key}", Input).value.strip()
                      for key, _, _ in self.fields})
