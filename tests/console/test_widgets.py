"""The reusable widgets, fed plain data as an Admin of any kind would give them."""

from __future__ import annotations

from textual.app import App, ComposeResult
from textual.containers import Horizontal, Vertical

from engine.api import BlockRow, NodeStatus
from widgets.block_table import BlockTable
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


class BlockTableAt(App):
    """The Blocks screen's table, framed as the screen frames it."""

    CSS = "BlockTable { border: round $panel; }"

    def __init__(self, cluster: bool) -> None:
        super().__init__()
        self.cluster = cluster

    def compose(self) -> ComposeResult:
        yield BlockTable(cluster=self.cluster)


async def test_a_block_table_in_80_columns_keeps_its_headers_and_pbn_whole():
    """At 80x24 a cluster's PBN and fingerprint were cut to 9 characters, under "FINGERPRIN",
    while READ BY had room: the fingerprint narrows first, to 11 hex digits (the `fp` filter's
    prefix), then READ BY."""
    row = BlockRow(pbn=18_446_744_073_709_551_614, fingerprint="fffffffffffffffe" + "3fa9" * 4,
                   readers=13, refcount=1, vms=[f"desk-{i}" for i in range(1, 13)] + ["golden"],
                   nodes=["node1", "node3"])
    app = BlockTableAt(cluster=True)
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.query_one(BlockTable)
        table.show_page(1, 0, [row])
        await pilot.pause()
        headers = [str(c.label).strip() for c in table.columns.values()]
        assert headers == ["PBN", "FINGERPRINT", "VMS", "REFS", "NODES", "READ BY"]
        pbn, fingerprint, *_, nodes, read_by = (str(cell).strip() for cell in table.get_row_at(0))
        assert pbn == "18446744073709551614" and nodes == "node1,node3"
        assert fingerprint == "fffffffffff…"
        assert read_by.startswith("desk-1, desk") and read_by.endswith("…")
