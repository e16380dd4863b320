"""A node's health at a glance: a glyph, a word and a colour, so it reads without colour too."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from engine.api import NodeStatus

from .figures import UNKNOWN, count, size

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
    """One node (engine.api.NodeStatus), and how far its heal has got while it heals:
    (blocks done, blocks in all)."""

    DEFAULT_CSS = """
    NodeCard { width: 30; height: auto; border: round $panel; padding: 0 1; }
    NodeCard.up { border: round $success; }
    NodeCard.suspect { border: round $warning; }
    NodeCard.down { border: round $error; }
    NodeCard.returning { border: round $primary; }
    """

    def __init__(self, node: NodeStatus, heal: tuple[int, int] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.show(node, heal)

    def show(self, node: NodeStatus, heal: tuple[int, int] | None = None) -> None:
        self.set_classes(node.state)
        self.border_title = node.name
        text = health_text(node.state)
        latency = UNKNOWN if node.latency_ms is None else f"{node.latency_ms:.1f} ms"
        text.append(f"\nlatency   {latency}")
        text.append(f"\ncapacity  {size(node.capacity_bytes)}")
        text.append(f"\nblocks    {count(node.blocks)}")
        under = node.under_replicated
        text.append(f"\nunder-replicated {under:,}", style="bold yellow" if under else "")
        if heal and heal[1]:
            text.append(f"\nhealing   {heal[0]:,}/{heal[1]:,}", style="blue")
        self.update(text)
