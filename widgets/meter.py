"""A bar of how full something is, with its percentage on the right, on one line.

Drawn from its own size at every render, so the bar always matches its width and what it shows
depends only on the fraction (Textual's ProgressBar settles on a width when its value is set,
and glides to it: a screenshot taken a moment earlier or later differs). One widget, not four.
"""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget


class Meter(Widget):
    COMPONENT_CLASSES = {"meter--bar", "meter--back"}
    DEFAULT_CSS = """
    Meter { height: 1; width: 1fr; }
    Meter > .meter--bar { color: $primary; }
    Meter > .meter--back { color: $foreground 15%; }
    """

    def __init__(self, fraction: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.fraction = fraction

    def show(self, fraction: float) -> None:
        """fraction: 0 (empty) to 1 (full); outside that, clipped."""
        self.fraction = min(max(fraction, 0.0), 1.0)
        self.refresh()

    def render(self) -> Text:
        label = f"{self.fraction:4.0%}"
        width = max(self.size.width - len(label) - 1, 0)
        halves = round(self.fraction * width * 2)
        bar = "━" * (halves // 2) + ("╸" if halves % 2 else "")
        text = Text(bar, style=self.get_component_rich_style("meter--bar"))
        text.append("━" * (width - len(bar)), style=self.get_component_rich_style("meter--back"))
        text.append(f" {label}")
        return text
