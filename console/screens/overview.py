"""1 Overview: capacity, logical vs physical bytes, the dedup ratio, trends, nodes and events."""

from __future__ import annotations

from collections import Counter

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Label, ProgressBar, Static

from engine.api import NodeStatus, human_bytes
from widgets.dedup_gauge import DedupGauge
from widgets.figures import count, size
from widgets.node_card import HEALTH, health_text
from widgets.trend import Trend

from ..messages import PoolView
from .base import PoolScreen

RECENT_EVENTS = 6


class OverviewScreen(PoolScreen):
    MODE = "overview"
    TITLE = "Blockfold · Overview"
    DEFAULT_CSS = """
    OverviewScreen #top { height: auto; }
    OverviewScreen #capacity { width: 1fr; }
    OverviewScreen #capacity ProgressBar Bar { width: 1fr; }
    OverviewScreen #capacity ProgressBar { width: 1fr; }
    OverviewScreen #dedup { width: auto; min-width: 40; }
    OverviewScreen #trends { height: auto; }
    OverviewScreen #trends > Vertical { width: 1fr; height: auto; }
    """

    def body(self) -> ComposeResult:
        with Horizontal(id="top"):
            with Vertical(id="capacity", classes="panel") as capacity:
                capacity.border_title = "capacity"
                yield Static(id="figures")
                yield ProgressBar(total=1, show_eta=False, id="used")
            with Vertical(id="dedup", classes="panel") as dedup:
                dedup.border_title = "dedup ratio"
                yield DedupGauge()
        with Horizontal(id="trends"):
            with Vertical(classes="panel") as ratio:
                ratio.border_title = "dedup ratio over time"
                yield Trend(lambda v: f"{v:.2f}x", id="ratio-trend")
            with Vertical(classes="panel") as written:
                written.border_title = "data written per second"
                yield Trend(lambda v: f"{human_bytes(v)}/s", id="written-trend")
        with Vertical(id="nodes", classes="panel") as nodes:
            nodes.border_title = "nodes"
            yield Label(id="node-summary")
        with Vertical(id="events", classes="panel") as events:
            events.border_title = "recent events"
            yield Static(id="recent")

    def show_view(self, view: PoolView) -> None:
        s = view.stats
        free = f"  ({count(s.free_slots)} free slots)" if s.free_slots is not None else ""
        self.query_one("#figures", Static).update(
            f"VMs       {len(view.vms)}\n"
            f"logical   {size(s.logical_bytes)}\n"
            f"physical  {size(s.physical_bytes)} in {count(s.unique_blocks)} blocks\n"
            f"capacity  {size(s.capacity_bytes)}{free}\n"
            f"state     {s.state}")
        self.query_one("#used", ProgressBar).update(total=max(s.capacity_bytes or 0, 1),
                                                    progress=s.physical_bytes or 0)
        if s.dedup_ratio is not None:
            self.query_one(DedupGauge).show(s.dedup_ratio, s.logical_bytes, s.physical_bytes)
        self.query_one("#ratio-trend", Trend).show([x.ratio for x in view.history])
        self.query_one("#written-trend", Trend).show([x.written_per_s for x in view.history])
        self.query_one("#node-summary", Label).update(node_summary(view.nodes))
        recent = Text()
        for e in view.events[:RECENT_EVENTS]:
            recent.append(f"{self.app.clock.stamp(e.ts)}  ", style="dim")
            recent.append(f"{e.actor:<8} ", style="cyan")
            recent.append(f"{e.message}\n")
        recent.rstrip()
        self.query_one("#recent", Static).update(recent or Text("no events yet", style="dim"))


def node_summary(nodes: list[NodeStatus]) -> Text:
    """'3 nodes: ● UP 2  ✖ DOWN 1 — DEGRADED' in the health colours."""
    counts = Counter(n.state for n in nodes)
    text = Text(f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}:  ")
    for state in list(HEALTH) + sorted(set(counts) - set(HEALTH)):
        if counts[state]:
            text.append_text(health_text(state))
            text.append(f" {counts[state]}   ")
    degraded = any(n.state != "up" for n in nodes)
    under = sum(n.under_replicated for n in nodes)
    if degraded or under:
        text.append(f"DEGRADED ({under:,} blocks under-replicated)", style="bold red")
    else:
        text.append("healthy", style="bold green")
    return text
