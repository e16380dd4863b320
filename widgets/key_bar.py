"""The keys of the screen in front, on one line at the bottom, and the command palette's key on
the right: what Textual's Footer shows, drawn as text. (The Footer makes a widget for each key,
again whenever the keys change; in a console whose keys change with each screen, that costs more
than the switch itself.)"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.markup import escape
from textual.widgets import Static


class KeyBar(Horizontal):
    DEFAULT_CSS = """
    KeyBar { dock: bottom; height: 1; background: $footer-background; }
    KeyBar Static { color: $footer-foreground; text-wrap: nowrap; text-overflow: ellipsis; }
    KeyBar #keys { width: 1fr; padding: 0 1; }
    KeyBar #palette { width: auto; padding: 0 1; border-left: vkey $foreground 20%; }
    """

    def compose(self) -> ComposeResult:
        yield Static(id="keys")
        yield Static(id="palette")

    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, self._show_keys)
        self._show_keys()

    def _show_keys(self, *_) -> None:
        keys = [a.binding for a in self.screen.active_bindings.values()
                if a.binding.show and a.enabled]
        self.query_one("#keys", Static).update("  ".join(
            f"[b $footer-key-foreground]{escape(self.app.get_key_display(b))}[/] "
            f"{escape(b.description)}" for b in keys))
        palette = self.app.COMMAND_PALETTE_BINDING if self.app.ENABLE_COMMAND_PALETTE else ""
        self.query_one("#palette", Static).update(
            f"[b $footer-key-foreground]^{palette.split('+')[-1]}[/] palette" if palette else "")
