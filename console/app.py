"""The Blockfold console: a Textual app over the `engine.api.Admin` interface.

It works the same on an embedded pool (LocalAdmin) and on any other Admin implementation. Every
engine call runs in a thread worker that posts a message back; the UI thread never waits on I/O.
The pool's figures are polled by a worker that re-arms a timer when its result arrives, so polls
never pile up behind a slow engine. The console's screens (1-6) are panes of one Textual Screen,
one shown at a time (console/screens/base.py says why); dialogs are Textual screens on top.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.text import Text
from textual.app import App, ComposeResult
from textual.reactive import reactive
from textual.timer import Timer
from textual.widgets import ContentSwitcher, Header, Static
from textual.worker import Worker, WorkerState

from engine.api import Admin, BlockfoldError, Job, formats
from widgets.key_bar import KeyBar

from .clock import SystemClock
from .messages import EngineDone, EngineFailed, Polled, PollFailed, PoolView, Sample
from .palette import CommandsProvider
from .registry import SCREENS, Offer, allowed, app_bindings, find
from .screens.base import PoolPane
from .screens.blocks import BlocksPane
from .screens.confirm import ConfirmDialog
from .screens.error import ErrorDialog
from .screens.events import EventsPane
from .screens.help import HelpScreen
from .screens.nodes import NodesPane
from .screens.overview import OverviewPane
from .screens.rebuild import RebuildPane
from .screens.vms import VMsPane

HISTORY = 120      # samples kept for the Overview trends
EVENTS = 200
PANES = {pane.MODE: pane for pane in (OverviewPane, VMsPane, BlocksPane, RebuildPane, NodesPane,
                                      EventsPane)}       # in the order of registry.SCREENS


def error_text(error: BaseException) -> str:
    if isinstance(error, BlockfoldError):
        return str(error)
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror}{': ' + str(error.filename) if error.filename else ''}"
    return f"{type(error).__name__}: {error}"


def quit_question(jobs: list[Job]) -> str:
    """The question before quitting a console whose service runs other clients' `jobs`."""
    n = len(jobs)
    running = ", ".join(f"{formats.job(j.kind, j.vm)} by {j.actor}" for j in jobs[:3])
    more = f" +{n - 3}" if n > 3 else ""
    who = f"{n} jobs from other clients are" if n > 1 else "1 job from another client is"
    return (f"{who} running through this console ({running}{more}): quitting cancels"
            f" {'them' if n > 1 else 'it'}. Quit?")


class BlockfoldApp(App):
    TITLE = "Blockfold"
    BINDINGS = app_bindings()
    AUTO_FOCUS = None                   # nothing takes the focus: see console/screens/base.py
    COMMANDS = {CommandsProvider}
    # Screens lay out for 80x24 as well as for bigger terminals (classes on the Screen).
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (30, "-tall")]
    CSS = """
    .panel { border: round $primary-darken-1; padding: 0 1; height: auto; }
    .muted { color: $text-muted; }
    DataTable.framed { border: round $primary; }
    #screen-tabs { height: 1; padding: 0 1; background: $boost; }
    ContentSwitcher { height: 1fr; }
    """

    view: reactive[PoolView | None] = reactive(None, always_update=True)
    switcher: ContentSwitcher

    def __init__(self, admin: Admin, *, read_only: bool = False, clock=None,
                 poll_interval: float = 2.0):
        super().__init__()
        self.admin = admin
        self.read_only = read_only
        self.offer = Offer(read_only, cluster=admin.kind == "cluster")
        self.clock = clock or SystemClock()
        self.poll_interval = poll_interval
        self.history: list[Sample] = []
        self._poll_timer: Timer | None = None
        self._polling = False
        self._poll_again = False
        self._last_physical: tuple[float, int] | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="screen-tabs")
        # The other screens are made when first shown: the first frame comes sooner.
        with ContentSwitcher(initial=f"{SCREENS[0][0]}-screen") as self.switcher:
            yield PANES[SCREENS[0][0]]()
        yield KeyBar()

    async def on_mount(self) -> None:
        where = self.clock.place(self.admin.name)
        self.sub_title = ("READ-ONLY · " if self.read_only else "") + f"{self.admin.kind} {where}"
        await self.action_show(SCREENS[0][0])
        self.poll()

    @property
    def pane(self) -> PoolPane:
        """The console screen in front (under any dialog)."""
        return self.switcher.get_child_by_id(self.switcher.current, PoolPane)

    async def action_show(self, mode: str) -> None:
        """Brings the console screen `mode` to the front (made the first time), with its keys,
        and draws the newest poll on it."""
        if not self.switcher.query_children(f"#{mode}-screen"):
            await self.switcher.add_content(PANES[mode]())
        self.switcher.current = f"{mode}-screen"
        pane = self.pane
        self.title = pane.TITLE
        self.switcher.screen.query_one("#screen-tabs", Static).update(tabs(mode))
        self.refresh_bindings()
        pane.draw()

    async def action_pane(self, action: str) -> None:
        """A command of the screen in front (its key is bound on the app)."""
        await self.pane.run_action(action)

    def action_navigate(self, key: str) -> None:
        self.pane.navigate(key)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("pane", "navigate"):
            if self.switcher.current is None or self.screen is not self.switcher.screen:
                return False            # not shown yet, or a dialog in front has the keys
            if action == "navigate":
                return True
            inner = str(parameters[0]).split("(")[0]
            return (find(self.pane.MODE, inner) is not None
                    and allowed(self.pane.MODE, inner, self.offer))
        return allowed("app", action, self.offer)

    async def action_quit(self) -> None:
        """`q`: quits, after asking if that cancels other clients' running jobs (a console
        serving the pool it opened: Admin.jobs_from_clients)."""
        jobs = self.admin.jobs_from_clients()
        if not jobs:
            self.exit()
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.exit()
        self.push_screen(ConfirmDialog("Quit", quit_question(jobs), "Quit"), answered)

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

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """Loud by default: a worker that ends in an error its runner did not post (engine()
        and poll() post their calls' failures themselves) is told in the same dialog, never
        dropped as a worker's unseen state."""
        if event.state == WorkerState.ERROR:
            self.push_screen(ErrorDialog(f"{event.worker.name} failed",
                                         error_text(event.worker.error)))

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
        snapshot = self.clock.steady(message.snapshot)
        stats = snapshot.stats
        if stats.physical_bytes is not None:        # None while the RAM metadata is rebuilt
            now = self.clock.now()
            written = 0.0
            if self._last_physical is not None:
                then, before = self._last_physical
                written = max(stats.physical_bytes - before, 0) / max(now - then, 1e-9)
            self._last_physical = (now, stats.physical_bytes)
            self.history = [*self.history, Sample(now, stats.dedup_ratio, written)][-HISTORY:]
        self.view = PoolView(stats, snapshot.events, tuple(self.history))
        self._rearm()

    def on_poll_failed(self, message: PollFailed) -> None:
        self.notify(error_text(message.error), title="poll failed", severity="error")
        self._rearm()

    # -- app-wide actions ---------------------------------------------------------------------

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.pane.MODE, self.offer))

    def action_toggle_theme(self) -> None:
        self.theme = "textual-light" if self.theme == "textual-dark" else "textual-dark"

    def action_refresh(self) -> None:
        self.poll()


def tabs(current: str) -> Text:
    """The screens and their number keys, the one in front highlighted."""
    text = Text()
    for mode, key, title in SCREENS:
        text.append(f" {key} {title} ", style="bold reverse" if mode == current else "")
        text.append(" ")
    return text
