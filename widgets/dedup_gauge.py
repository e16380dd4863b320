"""The dedup-ratio gauge: the ratio in large digits, and a bar of the space it saves."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Digits, Label, ProgressBar

from engine.api import human_bytes


class DedupGauge(Vertical):
    DEFAULT_CSS = """
    DedupGauge { height: auto; width: auto; }
    DedupGauge Digits { width: auto; color: $success; }
    DedupGauge ProgressBar Bar { width: 1fr; }
    DedupGauge ProgressBar { width: 34; }
    """

    def compose(self) -> ComposeResult:
        yield Digits("1.00x", id="ratio")
        yield ProgressBar(total=100, show_eta=False, id="saved-bar")
        yield Label("", id="saved")

    def show(self, ratio: float, logical_bytes: int, physical_bytes: int) -> None:
        """ratio is logical / physical; the bar shows the fraction of logical bytes not stored."""
        self.query_one("#ratio", Digits).update(f"{ratio:.2f}x")
        saved = 1 - physical_bytes / logical_bytes if logical_bytes else 0.0
        self.query_one("#saved-bar", ProgressBar).update(progress=round(saved * 100, 1))
        self.query_one("#saved", Label).update(
            f"{human_bytes(logical_bytes)} logical in {human_bytes(physical_bytes)} stored")
