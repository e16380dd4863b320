"""Snapshots of every screen and of the main workflows, on a real embedded pool with fixed contents.

Update them with `pytest tests/console --snapshot-update`, then look at the SVGs before committing.
"""

from __future__ import annotations

import pytest

from .conftest import SIZE
from .helpers import press, settle


def keys(*sequence: str):
    async def run_before(pilot) -> None:
        await settle(pilot)
        await press(pilot, *sequence)
    return run_before


@pytest.mark.parametrize("key,screen", [("1", "overview"), ("2", "vms"), ("3", "blocks"),
                                        ("4", "rebuild"), ("5", "nodes"), ("6", "events")])
def test_screen_at_80x24(snap_compare, make_app, key, screen):
    """An embedded pool's screens in the smallest terminal the console is made for (a cluster's,
    in both sizes: test_demo_snapshots.py)."""
    assert snap_compare(make_app(), run_before=keys(key), terminal_size=(80, 24))


def test_help_lists_the_keys_of_the_current_screen(snap_compare, make_app):
    assert snap_compare(make_app(), run_before=keys("2", "question_mark"), terminal_size=SIZE)


def test_read_only_hides_writes(snap_compare, make_app):
    assert snap_compare(make_app(read_only=True), run_before=keys("2", "question_mark"),
                        terminal_size=SIZE)


def test_light_theme(snap_compare, make_app):
    assert snap_compare(make_app(), run_before=keys("t"), terminal_size=SIZE)


def test_clone_ten_from_the_palette(snap_compare, make_app):
    """golden cloned ×10 through Ctrl+P: ten rows more, and a higher ratio in the title."""
    async def run_before(pilot) -> None:
        await settle(pilot)
        await press(pilot, "2", "down", "down", "down", "ctrl+p", *"clone", "enter")
        await press(pilot, "enter", "backspace", "1", "0", "enter")
    assert snap_compare(make_app(), run_before=run_before, terminal_size=SIZE)


def test_delete_asks_first(snap_compare, make_app):
    assert snap_compare(make_app(), run_before=keys("2", "down", "down", "d"),
                        terminal_size=SIZE)


def test_delete_after_confirmation(snap_compare, make_app):
    async def run_before(pilot) -> None:
        await keys("2", "down", "down", "d")(pilot)     # the question waits for what it says
        await press(pilot, "y")
    assert snap_compare(make_app(), run_before=run_before, terminal_size=SIZE)


def test_rebuild_runs_to_done(snap_compare, make_app):
    assert snap_compare(make_app(), run_before=keys("4", "F"), terminal_size=SIZE)


def test_block_filter(snap_compare, make_app):
    async def run_before(pilot) -> None:
        await settle(pilot)
        await press(pilot, "3", "slash", *"refs>=4", "enter")   # read by all four VMs
    assert snap_compare(make_app(), run_before=run_before, terminal_size=SIZE)


def test_an_embedded_pool_offers_no_node_commands(snap_compare, make_app):
    assert snap_compare(make_app(), run_before=keys("5", "question_mark"), terminal_size=SIZE)
