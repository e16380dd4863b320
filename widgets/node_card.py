"""A node's health at a glance: a glyph, a word and a colour (so it reads without colour too),
and the figures of the node an operator looks at before failing or restoring it."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from engine.api import NodeStatus, formats

HEALTH = {
    "up": ("●", "UP", "green"),
    "suspect": ("◐", "SUSPECT", "yellow"),
    "down": ("✖", "DOWN", "red"),
    "returning": ("↻", "RETURNING", "blue"),
}


# Whether etcd holds the node's liveness key (NodeStatus.registered).
REGISTRATION = {True: ("●", "registered", "green"), False: ("✖", "not registered", "red")}


def health_text(state: str) -> Text:
    glyph, word, colour = HEALTH.get(state, ("?", state.upper(), "magenta"))
    return Text(f"{glyph} {word}", style=f"bold {colour}")


def registration_text(registered: bool) -> Text:
    glyph, word, colour = REGISTRATION[registered]
    return Text(f"{glyph} {word}", style=colour)


class NodeCard(Static):
    """One node (engine.api.NodeStatus), and how far its heal has got while it heals:
    (blocks done, blocks in all)."""

    DEFAULT_CSS = """
    NodeCard { height: auto; border: round $panel; padding: 0 1; }
    NodeCard.up { border: round $success; }
    NodeCard.suspect { border: round $warning; }
    NodeCard.down { border: round $error; }
    NodeCard.returning { border: round $primary; }
    """

    def __init__(self, node: NodeStatus, heal: tuple[int, int] | None = None,
                 when=None, **kwargs) -> None:
        """when: how a moment reads (a console clock's `when`); None: it is not shown."""
        super().__init__(**kwargs)
        self.when = when
        self.show(node, heal)

    def show(self, node: NodeStatus, heal: tuple[int, int] | None = None) -> None:
        self.set_classes(node.state)
        self.border_title = node.name
        text = Text()
        text.append_text(health_text(node.state))
        lines = [("why", node.error)] if node.error else []
        lines += [("address", node.address),
                 ("latency", formats.latency(node.latency_ms)),
                 ("capacity", formats.UNKNOWN if node.capacity_bytes is None
                  else f"{formats.size(node.capacity_bytes)} free"),
                 ("blocks", _blocks(node))]
        if node.weight is not None:
            lines.append(("weight", f"{node.weight:g}"))
        if self.when is not None and node.last_seen is not None:
            lines.append(("last seen", self.when(node.last_seen) if node.last_seen else "never"))
        if node.registered is not None:
            lines.append(("etcd", registration_text(node.registered)))
        for label, value in lines:
            text.append(f"\n{label:<17}", style="dim")
            text.append(value)
        under = node.under_replicated
        text.append(f"\n{'under-replicated':<17}", style="dim")
        text.append(formats.count(under), style="bold yellow" if under else "")
        if heal and heal[1]:
            text.append(f"\n{'healing':<17}", style="dim")
            text.append(f"{formats.count(heal[0])} of {formats.count(heal[1])}", style="blue")
        self.update(text)


def _blocks(node: NodeStatus) -> str:
    """What it stores by its own count and, where that differs, the live copies the coordinator
    credits it with (all that is known of a down node)."""
    live = (f"{formats.count(node.live_blocks)} live"
            if node.live_blocks is not None and node.live_blocks != node.blocks else "")
    if node.blocks is None:
        return live or formats.UNKNOWN
    return f"{formats.count(node.blocks)} stored" + (f", {live}" if live else "")
