"""The rebuild progress panel: the phases, a progress bar, the rate and ETA, then the results."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Label, ProgressBar, Static

from engine.api import formats


class RebuildPanel(Vertical):
    DEFAULT_CSS = """
    RebuildPanel { height: auto; border: round $primary; padding: 0 1; }
    RebuildPanel ProgressBar Bar { width: 1fr; }
    RebuildPanel ProgressBar { width: 1fr; }
    RebuildPanel #rate { width: 1fr; display: none; }
    """

    def __init__(self, phases: list[str], **kwargs) -> None:
        super().__init__(**kwargs)
        self.phases = phases
        self.current: str | None = None
        self.state = "idle"

    def compose(self) -> ComposeResult:
        yield Static(id="phases")
        yield ProgressBar(total=1, show_eta=False, id="bar")
        yield Label("", id="rate")
        yield Static("", id="results")

    def on_mount(self) -> None:
        self.border_title = "rebuild"
        self._draw_phases()

    def start(self, mode: str) -> None:
        self.state = "running"
        self.current = None
        self.border_title = f"{mode} rebuild"
        self.query_one("#bar", ProgressBar).update(total=1, progress=0)
        self.query_one("#results", Static).update("")
        self.query_one("#rate").display = True
        self._draw_phases()

    def advance(self, phase: str, done: int, total: int, rate: str | None = None,
                eta: str | None = None) -> None:
        """rate and eta are already worded ("12.0 MiB/s", "3 s"); None shows a dash."""
        self.current = phase
        self.query_one("#rate").display = True
        self.query_one("#bar", ProgressBar).update(total=max(total, 1), progress=done)
        self.query_one("#rate", Label).update(
            f"{phase}: {formats.count(done)} of {formats.count(total)}   "
            f"rate {rate or formats.UNKNOWN}   ETA {eta or formats.UNKNOWN}")
        self._draw_phases()

    def finish(self, results: list[tuple[str, str]], state: str = "done") -> None:
        """state: "done", "cancelled" or "failed"; results are (label, value) pairs, which
        follow one another on as few lines as the width allows."""
        self.state = state
        if state == "done":
            self.current = None
            self.query_one("#bar", ProgressBar).update(total=1, progress=1)
        self.query_one("#rate").display = False
        text = Text()
        text.append(state.upper(), style="bold green" if state == "done" else "bold red")
        for i, (label, value) in enumerate(results):
            text.append("  " if i == 0 else " · ")
            text.append(label, style="dim")
            text.append(f" {value}")
        self.query_one("#results", Static).update(text)
        self._draw_phases()

    def _draw_phases(self) -> None:
        text = Text()
        reached = self.phases.index(self.current) if self.current in self.phases else (
            len(self.phases) if self.state == "done" else -1)
        for i, phase in enumerate(self.phases):
            if i < reached or self.state == "done":
                text.append(f"✔ {phase}", style="green")
            elif i == reached:
                text.append(f"▶ {phase}", style="bold yellow" if self.state == "running"
                            else "bold red")
            else:
                text.append(f"· {phase}", style="dim")
            text.append("   ")
        self.query_one("#phases", Static).update(text)
