"""The reusable widgets, fed plain data as an Admin of any kind would give them."""

from __future__ import annotations

from textual.app import App, ComposeResult
from textual.containers import Horizontal, Vertical

from widgets.dedup_gauge import DedupGauge
from widgets.node_card import NodeCard
from widgets.rebuild_panel import RebuildPanel
from widgets.trend import spark_rows

NODES = [
    {"name": "node-a", "state": "up", "latency_ms": 0.4, "capacity_bytes": 8 << 30,
     "blocks": 120_000, "under_replicated": 0},
    {"name": "node-b", "state": "suspect", "latency_ms": 812.0, "capacity_bytes": 8 << 30,
     "blocks": 118_000, "under_replicated": 0},
    {"name": "node-c", "state": "down", "latency_ms": 0.0, "capacity_bytes": 8 << 30,
     "blocks": 0, "under_replicated": 40_000},
    {"name": "node-d", "state": "returning", "latency_ms": 1.2, "capacity_bytes": 8 << 30,
     "blocks": 80_000, "under_replicated": 12_000, "heal": {"done": 28_000, "total": 40_000}},
]


class WidgetGallery(App):
    def compose(self) -> ComposeResult:
        with Vertical():
            with Horizontal(classes="cards"):
                for node in NODES:
                    yield NodeCard(node)
            yield DedupGauge()
            yield RebuildPanel(["tables", "hashes", "index", "space"])

    def on_mount(self) -> None:
        self.query_one(DedupGauge).show(4.0, 4 << 30, 1 << 30)
        panel = self.query_one(RebuildPanel)
        panel.start("full")
        panel.advance("hashes", 300, 1000, "1,200 blocks/s", "1s")

    CSS = ".cards { height: auto; }"


def test_health_reads_as_glyph_word_and_colour(snap_compare):
    assert snap_compare(WidgetGallery(), terminal_size=(124, 30))


async def test_every_state_has_its_glyph_and_word():
    app = WidgetGallery()
    async with app.run_test(size=(124, 30)):
        shown = [str(card.render()) for card in app.query(NodeCard)]
    for text, expected in zip(shown, ["● UP", "◐ SUSPECT", "✖ DOWN", "↻ RETURNING"]):
        assert text.startswith(expected)
    assert "healing   28,000/40,000" in shown[3]


def test_a_flat_zero_trend_draws_nothing():
    assert spark_rows([0, 0, 0], 10, 2) == ["   ", "   "]
    assert spark_rows([1, 2, 4], 10, 1) == ["▂▄█"]
    assert spark_rows(list(range(50)), 10, 1)[0][-1] == "█"     # the latest, cut to fit
