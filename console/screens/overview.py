"""1 Overview: the pool at a glance (VMs, logical and stored bytes, capacity, nodes), the dedup
ratio in big digits, its trend and the data written, and as many recent events as fit."""

from __future__ import annotations

from collections import Counter

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Label, Static

from engine.api import PoolStats, formats
from widgets.dedup_gauge import DedupGauge
from widgets.meter import Meter
from widgets.node_card import HEALTH, health_text
from widgets.trend import Trend

from ..messages import PoolView
from .base import PoolPane


class OverviewPane(PoolPane):
    MODE = "overview"
    TITLE = "Blockfold · Overview"
    # Its CSS starts from the Screen, whose classes say the terminal's size (-narrow, -short);
    # Textual reads SCOPED_CSS of each class, not inherited.
    SCOPED_CSS = False
    DEFAULT_CSS = """
    OverviewPane #top { height: auto; }
    OverviewPane #pool { width: 1fr; }
    OverviewPane #dedup { width: 44; }
    Screen.-narrow OverviewPane #dedup { width: 30; }
    OverviewPane #trends { height: auto; }
    OverviewPane #trends > Vertical { width: 1fr; height: auto; }
    Screen.-short OverviewPane Trend { height: 3; }
    OverviewPane #recent-box { height: 1fr; border: round $primary-darken-1; padding: 0 1; }
    OverviewPane #recent, OverviewPane #figures, OverviewPane #node-summary {
        text-wrap: nowrap; text-overflow: ellipsis; }
    OverviewPane #node-summary { width: 1fr; }
    OverviewPane.-loading .-figure { display: none; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.add_class("-loading")      # until the first poll: see body

    def body(self) -> ComposeResult:
        with Horizontal(id="top"):
            with Vertical(id="pool", classes="panel") as pool:
                # Until the first poll is back (thousands of VMs take a while): say so, rather
                # than draw an empty pool at 0 %.
                pool.border_title = "pool · loading"
                yield Static(Text(f"loading the {self.app.admin.kind}'s figures …",
                                  style="dim"), id="figures")
                yield Meter(id="used", classes="-figure")
                yield Label(id="node-summary")
            with Vertical(id="dedup", classes="panel") as dedup:
                dedup.border_title = "dedup ratio"
                yield DedupGauge(classes="-figure")
        with Horizontal(id="trends"):
            with Vertical(classes="panel") as ratio:
                ratio.border_title = "dedup ratio over time"
                yield Trend(formats.ratio, id="ratio-trend")
            with Vertical(classes="panel") as written:
                written.border_title = "data written per second"
                yield Trend(formats.rate, id="written-trend")
        with Vertical(id="recent-box") as events:
            events.border_title = "recent events"
            yield Static(id="recent")

    def show_view(self, view: PoolView) -> None:
        self.remove_class("-loading")
        s = view.stats
        state = s.fenced.partition(":")[0] if s.fenced else s.state     # fenced, or standby
        self.query_one("#pool").border_title = "pool" if state == "ready" else f"pool · {state}"
        self.query_one("#figures", Static).update(figures(s))
        self.query_one("#used", Meter).show(used_share(s))
        self.query_one(DedupGauge).show(s.dedup_ratio, s.logical_bytes, s.physical_bytes)
        self.query_one("#ratio-trend", Trend).show([x.ratio for x in view.history])
        self.query_one("#written-trend", Trend).show([x.written_per_s for x in view.history])
        self.query_one("#node-summary", Label).update(node_summary(s))
        recent = Text()
        for e in view.events[:self.query_one("#recent-box").content_size.height or 20]:
            recent.append(f"{self.app.clock.when(e.ts):>8}  ", style="dim")
            recent.append(f"{e.actor:<10.10} ", style="cyan")
            recent.append(f"{e.message}\n")
        recent.rstrip()
        self.query_one("#recent", Static).update(recent or Text("no events yet", style="dim"))

    def on_resize(self) -> None:
        self._shown = None            # as many events as now fit
        if self.is_shown:
            self.draw()


def used_share(s: PoolStats) -> float:
    """How full the storage is: the block copies stored against those plus the room left."""
    if s.physical_bytes is None or s.capacity_bytes is None:
        return 0.0
    stored = s.physical_bytes * s.replicas
    return stored / (stored + s.capacity_bytes) if stored + s.capacity_bytes else 0.0


def figures(s: PoolStats) -> Text:
    """VMs, logical, stored and capacity (room for new blocks), labelled."""
    room = f"{formats.size(s.capacity_bytes)} free"
    if s.replicas > 1:
        room += f" · {formats.size(s.usable_bytes)} usable"
    lines = [("VMs", formats.count(len(s.vms))),
             ("logical", formats.size(s.logical_bytes)),
             ("stored", f"{formats.size(s.physical_bytes)} in "
                        f"{formats.count(s.unique_blocks)} blocks"),
             ("capacity", room)]
    text = Text()
    for label, value in lines:
        text.append(f"{label:<10}", style="bold")
        text.append(f"{value}\n")
    if s.corrupt_blocks:
        text.append(f"{'corrupt':<10}", style="bold")
        text.append(f"✖ {formats.counted(s.corrupt_blocks, 'block')} with no sound copy",
                    style="bold red")
    text.rstrip()
    return text


def node_summary(s: PoolStats) -> Text:
    """Two lines, in the health colours: 'nodes     ● UP 2  ✖ DOWN 1' and 'health    DEGRADED ·
    1,204 under-replicated' (or 'DAMAGED · 3 corrupt', or 'healthy', or 'FENCED · a newer writer
    has …' first of all)."""
    counts = Counter(n.state for n in s.nodes)
    text = Text("nodes     ", style="bold")
    for state in list(HEALTH) + sorted(set(counts) - set(HEALTH)):
        if counts[state]:
            text.append_text(health_text(state))
            text.append(f" {counts[state]}  ")
    text.rstrip()
    text.append("\nhealth    ", style="bold")
    if s.fenced:
        word, _, why = s.fenced.partition(": ")
        text.append(f"{word.upper()} · {why}", style="bold red")
    elif s.corrupt_blocks:
        text.append(f"DAMAGED · {formats.count(s.corrupt_blocks)} corrupt", style="bold red")
    elif s.under_replicated_blocks:
        text.append(f"DEGRADED · {formats.count(s.under_replicated_blocks)} under-replicated",
                    style="bold red")
    elif counts["up"] < len(s.nodes):
        text.append("DEGRADED", style="bold red")
    else:
        text.append("healthy", style="bold green")
    return text
