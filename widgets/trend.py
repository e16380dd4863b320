"""A sparkline over time with a zero baseline, and the latest and peak values in words.

Textual's Sparkline scales between the lowest and highest sample, so a flat series of zeros
draws as full bars; an operator reading "data written" must see nothing there instead.
"""

from __future__ import annotations

from collections.abc import Callable

from rich.text import Text
from textual.widgets import Static

BARS = " ▁▂▃▄▅▆▇█"


def spark_rows(values: list[float], width: int, height: int) -> list[str]:
    """Rows of block characters, top row first, for the last `width` values."""
    values = values[-width:] if width > 0 else []
    top = max(values, default=0) or 1
    rows = []
    for level in range(height - 1, -1, -1):
        row = ""
        for v in values:
            eighths = round(max(v, 0) / top * height * 8)
            row += BARS[min(max(eighths - level * 8, 0), 8)]
        rows.append(row)
    return rows


class Trend(Static):
    DEFAULT_CSS = """
    Trend { height: 4; color: $accent; }
    """

    def __init__(self, describe: Callable[[float], str], **kwargs) -> None:
        """describe words a value: formats.ratio, formats.rate."""
        super().__init__(**kwargs)
        self.describe = describe
        self.values: list[float] = []

    def show(self, values: list[float]) -> None:
        self.values = list(values)
        self.refresh()

    def render(self) -> Text:
        rows = spark_rows(self.values, self.size.width, max(self.size.height - 1, 1))
        text = Text("\n".join(rows))
        if self.values:
            text.append(f"\nnow {self.describe(self.values[-1])}   "
                        f"peak {self.describe(max(self.values))}", style="dim")
        else:
            text.append("\nno samples yet", style="dim")
        return text
