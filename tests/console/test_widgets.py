"""The reusable widgets, fed plain data as an Admin of any kind would give them."""

from __future__ import annotations

from textual.app import App, ComposeResult
from textual.containers import Horizontal, Vertical

from engine.api import NodeStatus
from widgets.dedup_gauge import DedupGauge
from widgets.node_card import NodeCard
from widgets.rebuild_panel import RebuildPanel
from widgets.trend import spark_rows


def node(name: str, state: str, latency_ms: float | None, blocks: int, under: int) -> NodeStatus:
    return NodeStatus(name=name, address="10.0.0.1:2222", state=state, latency_ms=latency_ms,
                      capacity_bytes=8 << 30, blocks=blocks, live_blocks=blocks,
                      under_replicated=under, weight=1.0, catalog_version=1, last_seen=0.0,
                      error="")


NODES = [  # (node, its heal progress)
    (node("node-a", "up", 0.4, 120_000, 0), None),
    (node("node-b", "suspect", 812.0, 118_000, 0), None),
    (node("node-c", "down", None, 0, 40_000), None),
    (node("node-d", "returning", 1.2, 80_000, 12_000), (28_000, 40_000)),
]


class WidgetGallery(App):
    def compose(self) -> ComposeResult:
        with Vertical():
            with Horizontal(classes="cards"):
                for status, heal in NODES:
                    yield NodeCard(status, heal)
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
    assert "28,000 of 40,000" in shown[3].splitlines()[-1]


def test_a_flat_zero_trend_draws_nothing():
    assert spark_rows([0, 0, 0], 10, 2) == ["   ", "   "]
    assert spark_rows([1, 2, 4], 10, 1) == ["▂▄█"]
    assert spark_rows(list(range(50)), 10, 1)[0][-1] == "█"     # the latest, cut to fit
