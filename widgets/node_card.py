"""A node's health at a glance: a glyph, a word and a colour, so it reads without colour too."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from engine.api import human_bytes

HEALTH = {
    "up": ("●", "UP", "green"),
    "suspect": ("◐", "SUSPECT", "yellow"),
    "down": ("✖", "DOWN", "red"),
    "returning": ("↻", "RETURNING", "blue"),
}


def health_text(state: str) -> Text:
    glyph, word, colour = HEALTH.get(state, ("?", state.upper(), "magenta"))
    return Text(f"{glyph} {word}", style=f"bold {colour}")


class NodeCard(Static):
    """One node: a dict with name, state, latency_ms, capacity_bytes, blocks, under_replicated,
    and optionally heal = {"done": n, "total": n} while it heals."""

    DEFAULT_CSS = """
    NodeCard { width: 30; height: auto; border: round $panel; padding: 0 1; }
    NodeCard.up { border: round $success; }
    NodeCard.suspect { border: round $warning; }
    NodeCard.down { border: round $error; }
    NodeCard.returning { border: round $primary; }
    """

    def __init__(self, node: dict, **kwargs) -> None:
        super().__init__(**kwargs)
        self.show(node)

    def show(self, node: dict) -> None:
        state = node.get("state", "unknown")
        self.set_classes(state)
        self.border_title = node["name"]
        text = health_text(state)
        text.append(f"\nlatency   {node.get('latency_ms', 0):.1f} ms")
        text.append(f"\ncapacity  {human_bytes(node.get('capacity_bytes', 0))}")
        text.append(f"\nblocks    {node.get('blocks', 0):,}")
        under = node.get("under_replicated", 0)
        text.append(f"\nunder-replicated {under:,}", style="bold yellow" if under else "")
        heal = node.get("heal")
        if heal and heal.get("total"):
            text.append(f"\nhealing   {heal['done']:,}/{heal['total']:,}", style="blue")
        self.update(text)
