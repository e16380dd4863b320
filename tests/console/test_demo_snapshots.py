"""Snapshots of every screen on `blockfold demo`'s cluster (3 real node processes on 127.0.0.1, R=2,
a golden image and 12 linked clones), at 80x24 and at 120x34, and with a node down.

Nothing is masked: the figures only the real world decides (when things happened, how long they
took, latencies, ports, the directory) are restated by the console's FixedClock (console/clock.py),
and the nodes keep their blocks in a fixed amount of RAM, so their capacity is the same on every
machine. Update with `pytest tests/console --snapshot-update`, then look at the SVGs (rendered to
PNG: `python -m console.screenshots` shows how) before committing.
"""

from __future__ import annotations

import shutil

import pytest

from console import demo
from console.app import BlockfoldApp
from console.clock import FixedClock
from engine import api

from .helpers import press, settle

# The demo cluster runs its own etcd member, and its Nodes screen shows it.
pytestmark = pytest.mark.skipif(shutil.which("etcd") is None,
                                reason="no `etcd` binary: install Debian's etcd-server")

SIZES = [(80, 24), (120, 34)]
MEMORY = 1 << 30


def up(path, **kw) -> None:
    demo.up(path, memory=MEMORY, **kw)
    with api.open_cluster(path, actor="demo") as admin:
        demo.seed(admin)


@pytest.fixture(scope="module")
def demo_admin(tmp_path_factory):
    """The demo cluster, seeded once for the screens below, which only look at it."""
    path = tmp_path_factory.mktemp("demo")
    try:
        up(path, repair_delay=3600)
        with api.open_cluster(path, actor="console") as admin:
            yield admin
    finally:
        api.cluster_down(path)


def make_app(admin) -> BlockfoldApp:
    # Polls come only from the first frame and from keys, so each screen shows one fresh view.
    return BlockfoldApp(admin, clock=FixedClock(), poll_interval=3600)


def keys(*sequence: str):
    async def run_before(pilot) -> None:
        await settle(pilot)
        await press(pilot, *sequence)
    return run_before


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("key,screen", [("1", "overview"), ("2", "vms"), ("3", "blocks"),
                                        ("4", "rebuild"), ("5", "nodes"), ("6", "events")])
def test_screen(snap_compare, demo_admin, key, screen, size):
    assert snap_compare(make_app(demo_admin), run_before=keys(key), terminal_size=size)


@pytest.fixture(scope="module")
def degraded_admin(tmp_path_factory):
    """Another demo cluster, with node2 failed (its process killed): its blocks wait out the
    repair delay, under-replicated."""
    path = tmp_path_factory.mktemp("degraded")
    try:
        up(path, repair_delay=3600)
        with api.open_cluster(path, actor="console") as admin:
            admin.fail_node("node2")      # why it is down says so from now on
            yield admin
    finally:
        api.cluster_down(path)


@pytest.mark.parametrize("key,size", [("5", (80, 24)), ("5", (120, 34)), ("1", (80, 24))],
                         ids=["nodes-80x24", "nodes-120x34", "overview-80x24"])
def test_a_node_down(snap_compare, degraded_admin, key, size):
    """node2 DOWN, with no latency; the Overview says the pool is degraded and by how much."""
    async def run_before(pilot) -> None:
        await settle(pilot)
        await press(pilot, key, "down")
    assert snap_compare(make_app(degraded_admin), run_before=run_before, terminal_size=size)
