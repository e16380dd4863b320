"""The dedup-ratio gauge: the ratio in big digits, and a bar of the space it saves."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Digits, Label

from engine.api import formats

from .meter import Meter


class DedupGauge(Vertical):
    DEFAULT_CSS = """
    DedupGauge { height: auto; width: 1fr; }
    DedupGauge Digits { width: auto; color: $success; text-style: bold; }
    DedupGauge Label { width: 1fr; }
    """

    def compose(self) -> ComposeResult:
        yield Digits("-", id="ratio")
        yield Meter(id="saved-bar")
        yield Label("", id="saved")

    def show(self, ratio: float | None, logical_bytes: int, physical_bytes: int | None) -> None:
        """ratio is logical / physical (None while not known); the bar shows the fraction of the
        logical bytes that need not be stored."""
        # Digits draw no dash "—": a figure not known yet is a plain "-".
        self.query_one("#ratio", Digits).update("-" if ratio is None else formats.ratio(ratio))
        if physical_bytes is None:
            return
        saved = 1 - physical_bytes / logical_bytes if logical_bytes else 0.0
        self.query_one("#saved-bar", Meter).show(saved)
        self.query_one("#saved", Label).update(
            f"{formats.size(max(logical_bytes - physical_bytes, 0))} not stored")
