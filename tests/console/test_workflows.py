"""Pilot tests: the console driven by keys on a real embedded pool."""

from __future__ import annotations

import asyncio
import re
import threading

from textual.command import CommandList
from textual.widgets import Button, DataTable, Static

from console.app import BlockfoldApp
from console.clock import FixedClock
from console.sample import BLOCK, golden_image
from console.screens.error import ErrorDialog
from console.screens.rebuild import RebuildPane
from engine.api import LocalAdmin, create_pool, formats
from widgets.block_table import BlockTable
from widgets.rebuild_panel import RebuildPanel

from .conftest import SIZE
from .helpers import asked, press, settle


def vm_rows(app) -> list[str]:
    table = app.screen.query_one("#vms", DataTable)
    return [str(table.get_row_at(i)[0]) for i in range(table.row_count)]


async def test_clone_ten_from_the_palette_raises_the_ratio(make_app, admin):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        before = app.view.stats.dedup_ratio
        await press(pilot, "2", "down", "down", "down", "ctrl+p", *"clone", "enter")
        await press(pilot, "enter", "backspace", *"10", "enter")
        assert len(vm_rows(app)) == 14
        assert "golden-clone-10" in vm_rows(app)
        assert app.view.stats.dedup_ratio > before
        assert f"dedup {app.view.stats.dedup_ratio:.2f}x" in str(
            app.screen.query_one("#vms").border_title)
    assert "golden-clone-10" in admin.vm_names()


async def test_the_vms_screen_shows_snapshots_and_what_they_hold_alone(make_app, admin):
    admin.take_snapshot("desk-1", "before")
    admin.write("desk-1", 0, bytes([9]) * BLOCK)
    admin.take_snapshot("desk-1", "after")
    admin.write("desk-1", 0, bytes([8]) * BLOCK)
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await press(pilot, "2")
        assert "desk-1 · 2 snap" in vm_rows(app)
        # Alone: the 9s, and desk-1's own first block from before (the sample wrote 8 blocks).
        assert "2 snapshots holding 2 blocks alone" in str(
            app.screen.query_one("#vms").border_title)


async def test_snapshot_and_refresh_from_the_vms_screen(make_app, admin):
    golden = admin.read("golden", 0, BLOCK)
    admin.write("desk-1", 0, bytes([7]) * BLOCK)
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await press(pilot, "2", "s", "enter")
        await settle(pilot)
        assert [s.name for s in admin.snapshots("desk-1")] == ["snap-1"]
        assert "desk-1 · 1 snap" in vm_rows(app)
        await press(pilot, "R", "n")
        assert admin.read("desk-1", 0, BLOCK) == bytes([7]) * BLOCK
        await press(pilot, "R", "y")
        await settle(pilot)
        assert admin.read("desk-1", 0, BLOCK) == golden
    assert [e.kind for e in admin.events(2)] == ["refresh", "snapshot"]


async def test_refresh_asks_what_the_cli_asks_and_brings_back_the_golden_size(make_app, admin):
    size = admin.vm_size("desk-1")
    admin.resize("desk-1", BLOCK, shrink=True)
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await press(pilot, "2", "R")
        assert asked(app) == (
            "Refresh VM desk-1? Everything desk-1 wrote since it was cloned from golden (or last"
            " rebased onto it) is dropped, and it reads as golden did then, at its size then:"
            f" {formats.exact_size(size)} (it is 4.0 KiB now).")
        await press(pilot, "y")
        await settle(pilot)
        assert admin.vm_size("desk-1") == size


async def test_delete_happens_only_after_yes(make_app, admin):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await press(pilot, "2", "down", "down", "d")     # the question waits for what it says
        await press(pilot, "n")
        assert "desk-3" in admin.vm_names() and "desk-3" in vm_rows(app)
        await press(pilot, "d")
        await press(pilot, "y")
        assert "desk-3" not in admin.vm_names() and "desk-3" not in vm_rows(app)
        assert admin.events(1)[0].message == "deleted desk-3"


async def test_deleting_a_golden_image_says_what_the_cli_says_about_its_clones(make_app, admin):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await press(pilot, "2", "end", "d")
        assert asked(app) == (
            "VM golden is the golden image of 3 clones (desk-1, desk-2, desk-3); they keep"
            " their disks, but can no longer be refreshed to it. Delete it?")
        assert "Delete (y)" in str(app.screen.query_one("#yes", Button).label)
        await press(pilot, "n")
        assert "golden" in admin.vm_names()
        await press(pilot, "home", "d")
        assert asked(app) == "Delete VM desk-1? Its own blocks are freed."
        await press(pilot, "n")


async def palette(pilot, app, typed: str, expected: str) -> list[str]:
    """The command palette's entries for `typed`, once one names `expected` (it searches in the
    background: bounded)."""
    await press(pilot, "ctrl+p", *typed)
    shown: list[str] = []
    for _ in range(50):
        found = app.screen.query_one(CommandList)
        shown = [str(found.get_option_at_index(i).prompt) for i in range(found.option_count)]
        if any(expected in text for text in shown):
            break
        await pilot.pause(0.05)
    assert any(expected in text for text in shown), shown
    return shown


async def test_an_embedded_pool_offers_no_node_commands(make_app, admin):
    # It asked "Fail node local? … served from their other replicas", and then failed: a pool
    # has no nodes (brk8a #2).
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await press(pilot, "5", "x", "u", "X")
        assert app.screen is app.switcher.screen and app.pane.MODE == "nodes"   # no dialog
        bar = str(app.screen.query_one("#keys", Static).content)
        assert "Fail" not in bar and "Restore" not in bar, bar
        shown = await palette(pilot, app, "node", "Nodes")
        assert not any(word in text for text in shown for word in ("Fail", "Restore", "Remove"))
        await press(pilot, "escape", "2", "d", "y")     # the console still does work
        assert "desk-1" not in admin.vm_names()


async def test_every_screens_key_bar_fits_80_columns(make_app):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        for key in "123456":
            await press(pilot, key)
            bar = app.screen.query_one("#keys", Static)
            shown = re.sub(r"\[[^\]]*\]", "", str(bar.content))    # the keys, markup aside
            assert len(shown) <= bar.content_region.width, (key, shown)


async def test_read_only_hides_and_refuses_writes(make_app, admin):
    app = make_app(read_only=True)
    async with app.run_test(size=SIZE) as pilot:
        await press(pilot, "2", "d", "c", "i")
        assert app.screen is app.switcher.screen and app.pane.MODE == "vms"   # no dialog
        shown = await palette(pilot, app, "vm", "VMs")
        assert not any(word in text for text in shown for word in ("Delete", "Clone", "Import"))
        last = admin.last_rebuild()
        await press(pilot, "escape", "4", "f", "F")      # a rebuild writes: hidden too
        assert app.pane.MODE == "rebuild" and admin.last_rebuild() == last
        assert "f fast" not in str(app.pane.query_one("#history").border_title)
    assert len(admin.vm_names()) == 4


async def test_block_table_pages_through_the_engine(tmp_path):
    """256 distinct blocks, pages of 100: the table never holds more than one page."""
    create_pool(tmp_path / "big")
    image = golden_image(tmp_path / "big.raw", blocks=256, distinct=256, seed=3)
    with LocalAdmin.open(tmp_path / "big") as admin:
        with open(image, "r+b") as f:    # every block different: no zero blocks, no repeats
            for i in range(256):
                f.seek(i * BLOCK)
                f.write(i.to_bytes(4, "little"))
        admin.import_image("big", image)
        total = admin.stats().unique_blocks
        app = BlockfoldApp(admin, clock=FixedClock(), poll_interval=3600)
        async with app.run_test(size=SIZE) as pilot:
            await press(pilot, "3")
            table = app.screen.query_one(BlockTable)
            assert (table.row_count, table.border_title) == (100, f"blocks 1–100 of {total}")
            await press(pilot, "pagedown")
            assert table.border_title == f"blocks 101–200 of {total}"
            assert (str(table.get_row_at(0)[0]).strip()
                    == str(admin.blocks(offset=100, limit=1).rows[0].pbn))
            await press(pilot, "end")
            assert table.border_title == f"blocks 201–{total} of {total}"
            assert table.cursor_row == table.row_count - 1
            await press(pilot, "up")            # moving within a page asks for nothing
            await press(pilot, "home")
            table.move_cursor(row=99)
            await press(pilot, "down")          # off the bottom: the next page, at its top
            assert table.border_title == f"blocks 101–200 of {total}"
            assert table.cursor_row == 0
            await press(pilot, "up")             # off the top: the previous page, at its end
            assert table.border_title == f"blocks 1–100 of {total}"
            assert table.cursor_row == 99


async def test_import_an_image_with_progress(make_app, admin, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)         # short relative paths: typing is slow in a Pilot
    image = golden_image(tmp_path / "new.raw", blocks=64, seed=5)
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await press(pilot, "2", "i", *"new.raw", "enter", *"fresh", "enter")
        assert "fresh" in vm_rows(app)
        assert not app.screen.query_one("#import").has_class("running")
        await press(pilot, "i", *"no.raw", "enter", *"nothing", "enter")
        assert isinstance(app.screen, ErrorDialog)
    assert admin.read("fresh", 0, 64 * BLOCK) == open(image, "rb").read()
    assert "nothing" not in admin.vm_names()


async def test_escape_cancels_a_rebuild_and_the_pool_keeps_working(make_app, admin):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await press(pilot, "4")
        screen = app.pane
        assert isinstance(screen, RebuildPane)
        # What Escape runs, at once: the cancel lands before the thread's first check.
        screen.action_rebuild(True)
        screen.action_cancel()
        await settle(pilot)
        assert screen.query_one(RebuildPanel).state == "cancelled"
        assert not screen.running
        await press(pilot, "f")
        assert screen.query_one(RebuildPanel).state == "done"
    assert admin.blocks(limit=1).total == admin.stats().unique_blocks


class CountingAdmin(LocalAdmin):
    """The real embedded admin, counting how many stats() calls overlap."""

    def __init__(self, pool):
        super().__init__(pool)
        self.in_flight = self.most_in_flight = 0
        self.counter = threading.Lock()

    def stats(self):
        with self.counter:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return super().stats()
        finally:
            with self.counter:
                self.in_flight -= 1


async def test_polls_re_arm_one_timer_and_never_overlap(pool_dir):
    admin = CountingAdmin.open(pool_dir, actor="console")
    try:
        app = BlockfoldApp(admin, clock=FixedClock(), poll_interval=0.02)
        async with app.run_test(size=SIZE) as pilot:
            for _ in range(100):
                if len(app.history) >= 6:
                    break
                for _ in range(3):          # refreshes asked for on top of the timer's polls
                    app.poll()
                await pilot.pause(0.02)
            assert len(app.history) >= 6        # each poll's result arms the next one
        assert admin.most_in_flight == 1
    finally:
        admin.close()


class ThreadRecordingAdmin(LocalAdmin):
    """The real embedded admin, noting which thread each engine call runs on."""

    def __init__(self, pool):
        super().__init__(pool)
        self.ui_thread_calls: list[str] = []

    def __getattribute__(self, name):
        attr = super().__getattribute__(name)
        if callable(attr) and not name.startswith("_") and name != "close":
            def call(*args, **kwargs):
                if threading.current_thread() is threading.main_thread():
                    self.ui_thread_calls.append(name)
                return attr(*args, **kwargs)
            return call
        return attr


async def test_no_engine_call_runs_on_the_ui_thread(pool_dir):
    admin = ThreadRecordingAdmin.open(pool_dir, actor="console")
    try:
        app = BlockfoldApp(admin, clock=FixedClock(), poll_interval=3600)
        async with app.run_test(size=SIZE) as pilot:
            await press(pilot, "2", "c", "enter", "enter", "3", "pagedown", "4", "f", "5", "6")
            await press(pilot, "2", "d")
            await press(pilot, "y", "1")
            await asyncio.sleep(0.3)
            assert len(admin.vm_names()) == 4     # one clone made, one VM deleted
        assert admin.ui_thread_calls == ["vm_names"]   # only this test's own call above
    finally:
        admin.close()


async def test_help_shows_every_key_whole_at_80x24(make_app):
    # At 80 columns the help of the Nodes screen cut "… after confirmati": every row must fit.
    from console.screens.help import HelpScreen
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        for key in "123456":
            await press(pilot, key, "question_mark")
            assert isinstance(app.screen, HelpScreen)
            table = app.screen.query_one(DataTable)
            assert table.virtual_size.width <= table.size.width, key
            await press(pilot, "escape")
