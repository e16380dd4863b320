"""The Blockfold console: a Textual app over the `engine.api.Admin` interface.

It works the same on an embedded pool (LocalAdmin) and on any other Admin implementation. Every
engine call runs in a thread worker that posts a message back; the UI thread never waits on I/O.
The pool's figures are polled by a worker that re-arms a timer when its result arrives, so polls
never pile up behind a slow engine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from textual.app import App
from textual.reactive import reactive
from textual.timer import Timer

from engine.api import Admin, BlockfoldError

from .clock import SystemClock
from .messages import EngineDone, EngineFailed, Polled, PollFailed, PoolView, Sample
from .palette import CommandsProvider
from .registry import allowed, bindings_for
from .screens.blocks import BlocksScreen
from .screens.error import ErrorDialog
from .screens.events import EventsScreen
from .screens.help import HelpScreen
from .screens.nodes import NodesScreen
from .screens.overview import OverviewScreen
from .screens.rebuild import RebuildScreen
from .screens.vms import VMsScreen

HISTORY = 120      # samples kept for the Overview trends
EVENTS = 200


def error_text(error: BaseException) -> str:
    if isinstance(error, BlockfoldError):
        return str(error)
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror}{': ' + str(error.filename) if error.filename else ''}"
    return f"{type(error).__name__}: {error}"


class BlockfoldApp(App):
    TITLE = "Blockfold"
    MODES = {"overview": OverviewScreen, "vms": VMsScreen, "blocks": BlocksScreen,
             "rebuild": RebuildScreen, "nodes": NodesScreen, "events": EventsScreen}
    DEFAULT_MODE = "overview"
    BINDINGS = bindings_for("app")
    COMMANDS = {CommandsProvider}
    CSS = """
    .panel { border: round $primary-darken-1; padding: 0 1; height: auto; }
    .muted { color: $text-muted; }
    DataTable.framed { border: round $primary-darken-1; }
    DataTable.framed:focus { border: round $primary; }
    """

    view: reactive[PoolView | None] = reactive(None, always_update=True)

    def __init__(self, admin: Admin, *, read_only: bool = False, clock=None,
                 poll_interval: float = 2.0):
        super().__init__()
        self.admin = admin
        self.read_only = read_only
        self.clock = clock or SystemClock()
        self.poll_interval = poll_interval
        self.history: list[Sample] = []
        self._poll_timer: Timer | None = None
        self._polling = False
        self._poll_again = False
        self._last_physical: tuple[float, int] | None = None

    def on_mount(self) -> None:
        where = self.clock.volatile(self.admin.name)
        self.sub_title = ("READ-ONLY · " if self.read_only else "") + f"{self.admin.kind} {where}"
        self.poll()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return allowed("app", action, self.read_only)

    # -- engine calls -------------------------------------------------------------------------

    def engine(self, what: str, call: Callable[[], Any],
               then: Callable[[Any], None] | None = None, changes: bool = True,
               failed: Callable[[], None] | None = None) -> None:
        """Runs call() in a thread worker: its result goes to then() on the UI thread, and an
        error to a dialog (after failed(), if given, tidies up). A call that `changes` the pool
        has the figures polled afterwards."""
        def work() -> None:
            try:
                result = call()
            except Exception as e:       # noqa: BLE001 - every failure becomes a dialog
                self.post_message(EngineFailed(what, e, changes, failed))
            else:
                self.post_message(EngineDone(what, result, then, changes))
        self.run_worker(work, name=what, group="engine", thread=True, exit_on_error=False)

    def on_engine_done(self, message: EngineDone) -> None:
        if message.then is not None:
            message.then(message.result)
        if message.changes:
            self.poll()

    def on_engine_failed(self, message: EngineFailed) -> None:
        if message.failed is not None:
            message.failed()
        self.push_screen(ErrorDialog(f"{message.what} failed", error_text(message.error)))
        if message.changes:
            self.poll()

    # -- polling ------------------------------------------------------------------------------

    def poll(self) -> None:
        if self._polling:            # one poll at a time: ask for another when this one is back
            self._poll_again = True
            return
        self._polling = True
        admin = self.admin

        def work() -> None:
            try:
                polled = Polled(admin.snapshot(EVENTS))
            except Exception as e:       # noqa: BLE001 - the next poll may well succeed
                self.post_message(PollFailed(e))
            else:
                self.post_message(polled)
        self.run_worker(work, name="poll", group="poll", thread=True, exit_on_error=False)

    def _rearm(self) -> None:
        self._polling = False
        if self._poll_again:
            self._poll_again = False
            self.poll()
            return
        if self._poll_timer is not None:
            self._poll_timer.stop()
        self._poll_timer = self.set_timer(self.poll_interval, self.poll, name="poll")

    def on_polled(self, message: Polled) -> None:
        stats = message.snapshot.stats
        if stats.physical_bytes is not None:        # None while the RAM metadata is rebuilt
            now = self.clock.now()
            written = 0.0
            if self._last_physical is not None:
                then, before = self._last_physical
                written = max(stats.physical_bytes - before, 0) / max(now - then, 1e-9)
            self._last_physical = (now, stats.physical_bytes)
            self.history = [*self.history, Sample(now, stats.dedup_ratio, written)][-HISTORY:]
        self.view = PoolView(stats, message.snapshot.events, tuple(self.history))
        self._rearm()

    def on_poll_failed(self, message: PollFailed) -> None:
        self.notify(error_text(message.error), title="poll failed", severity="error")
        self._rearm()

    # -- app-wide actions ---------------------------------------------------------------------

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(getattr(self.screen, "MODE", None), self.read_only))

    def action_toggle_theme(self) -> None:
        self.theme = "textual-light" if self.theme == "textual-dark" else "textual-dark"

    def action_refresh(self) -> None:
        self.poll()
