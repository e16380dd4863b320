"""Pilot tests: the console driven by keys on a real 3-node cluster (R=2) of node subprocesses."""

from __future__ import annotations

import pytest
from textual.notifications import Notify
from textual.widgets import DataTable, Label

from console.app import BlockfoldApp
from console.clock import FixedClock
from console.screens.confirm import ConfirmDialog
from console.screens.error import ErrorDialog
from engine.api import Service
from engine.api import formats
from widgets.node_card import NodeCard
from tests.cluster.conftest import image, make_cluster  # noqa: F401 - make_cluster is a fixture

from .conftest import SIZE
from .helpers import press

CLONES = 3


@pytest.fixture
def seeded(make_cluster, tmp_path):  # noqa: F811 - the fixture imported above
    """A running cluster holding a small golden image and a few linked clones, with the admin
    the console runs on and the golden image's bytes."""
    cluster = make_cluster(nodes=3, replicas=2)
    data = image(tmp_path / "golden.raw", 1, seed=4)
    admin = cluster.open(actor="console")
    admin.import_image("golden", str(tmp_path / "golden.raw"))
    admin.clone("golden", "desk", count=CLONES)
    yield admin, data
    admin.close()


def make_app(admin) -> BlockfoldApp:
    # Polls come only from the first frame, actions and `r`, so each check sees one fresh view.
    return BlockfoldApp(admin, clock=FixedClock(), poll_interval=3600)


def health(app, node: str) -> str:
    table = app.screen.query_one("#nodes", DataTable)
    return str(table.get_row(node)[1])


def question(app) -> str:
    assert isinstance(app.screen, ConfirmDialog)
    return str(app.screen.query_one(Label).render())


def node_summary(app) -> str:
    return str(app.screen.query_one("#node-summary", Label).render())


def card(app) -> str:
    return str(app.screen.query_one(NodeCard).render())


class Toasts(list):
    """The toasts an app raised, in order (settle clears them from the screen): pass it as
    run_test's message_hook."""

    def __call__(self, message) -> None:
        if isinstance(message, Notify):
            self.append(message.notification.message)


def etcd_title(admin) -> str:
    """What the Nodes table's title says of a healthy etcd (none without one)."""
    return " · etcd http://127.0.0.1:2379 ● healthy, 1 member" if admin.config.etcd else ""


async def test_failing_a_node_shows_it_down_and_the_pool_degraded_while_reads_go_on(seeded):
    admin, data = seeded
    app, toasts = make_app(admin), Toasts()
    async with app.run_test(size=SIZE, message_hook=toasts) as pilot:
        await press(pilot, "5")
        await press(pilot, "down", "x")
        assert "Fail node node2?" in question(app)
        await press(pilot, "y")
        assert health(app, "node2") == "✖ DOWN"
        assert health(app, "node1") == "● UP" and health(app, "node3") == "● UP"
        assert "1 not up" in str(app.screen.query_one("#nodes").border_title)
        assert toasts == ["node2 failed: its process was killed"]
        # Its refused heartbeats do not replace why it is down (a raw socket error did).
        admin.members.probe_all()
        await press(pilot, "r")
        assert "why              failed by console: its process was killed" in card(app)
        if admin.config.etcd:                   # its death was seen: its lease ended at once
            assert "etcd             ✖ not registered" in card(app)
        await press(pilot, "1")
        assert "✖ DOWN 1" in node_summary(app) and "DEGRADED" in node_summary(app)
        # Every block has a replica on a node that is still up.
        assert admin.read("golden", 0, len(data)) == data
        assert admin.read(f"desk-{CLONES}", 0, len(data)) == data
    assert {n.name: n.state for n in admin.nodes()}["node2"] == "down"


async def test_failing_a_node_that_holds_the_only_copies_says_how_many_first(make_cluster,  # noqa: F811
                                                                            tmp_path):
    cluster = make_cluster(nodes=3, replicas=1)         # every block on one node alone
    image(tmp_path / "golden.raw", 1, seed=4)
    with cluster.open(actor="console") as admin:
        admin.import_image("golden", str(tmp_path / "golden.raw"))
        alone = {n.name: n.live_blocks for n in admin.nodes()}["node2"]
        assert alone > 0
        app = make_app(admin)
        async with app.run_test(size=SIZE) as pilot:
            await press(pilot, "5")
            await press(pilot, "down", "x")
            said = " ".join(question(app).split())
            assert said == (f"Fail node node2? Its process is killed. {alone:,} blocks"
                            f" ({formats.size(alone * 4096)}) would have no reachable copy:"
                            " reads of them fail until it is restored.")
            await press(pilot, "n")
        assert {n.name: n.state for n in admin.nodes()}["node2"] == "up"


async def test_failing_the_node_a_write_majority_needs_warns_and_is_recorded(seeded):
    # Failing a second node of three said only "Fail node node3? …", toasted "fail: node node3",
    # and its event was lost: committed after the kill, to 1 of 3 nodes.
    admin, _ = seeded
    admin.fail_node("node2")
    app = make_app(admin)
    async with app.run_test(size=SIZE) as pilot:
        await press(pilot, "5")
        await press(pilot, "down", "down", "x")
        said = " ".join(question(app).split())
        assert said.startswith("Fail node node3? Its process is killed")
        assert said.endswith(" Writes will be refused: 1 of 3 nodes left, writes need 2 until a"
                             " node is restored.")
        await press(pilot, "y")
        assert health(app, "node3") == "✖ DOWN"
    told = [e.message for e in admin.events(10) if e.kind == "node"]
    assert told == ["failed node3 (its process killed)", "failed node2 (its process killed)"]
    admin.restore_node("node3")     # a majority again, for the fixture's close to commit


async def test_a_clone_the_cluster_refuses_is_told_as_a_failure(seeded):
    # A console serving its cluster (the demo's way: its clone is a job of its service): with
    # 1 of 3 nodes up the clone's commit is refused, and the console says so and why.
    admin, _ = seeded
    admin.fail_node("node2")
    admin.fail_node("node3")
    service = Service(admin, admin.config.path, actor="console")
    service.start_in_thread()
    try:
        app = make_app(service.admin)
        async with app.run_test(size=SIZE) as pilot:
            await press(pilot, "2", "c")
            await press(pilot, "tab", "enter")
            assert isinstance(app.screen, ErrorDialog), app.screen
            assert app.screen.title_text == "clone desk-1 failed"
            said = " ".join(str(app.screen.query_one("#message", Label).render()).split())
            assert said.startswith("a catalog change reached 1 of 3 nodes; it needs 2")
            await press(pilot, "enter")
            assert not isinstance(app.screen, ErrorDialog)
        assert [(j.kind, j.state) for j in service.admin.jobs()] == [("clone", "failed")]
    finally:
        service.stop()
        admin.restore_node("node2")     # a majority again, for the fixture's close to commit
        admin.restore_node("node3")
    assert "desk-1-clone" not in admin.vm_names()


async def test_restoring_a_node_brings_it_back_and_heals(seeded):
    admin, data = seeded
    admin.fail_node("node2")
    app, toasts = make_app(admin), Toasts()
    async with app.run_test(size=SIZE, message_hook=toasts) as pilot:
        await press(pilot, "5")
        await press(pilot, "down")
        assert health(app, "node2") == "✖ DOWN"
        await press(pilot, "u")
        assert "Restore node node2?" in question(app)
        await press(pilot, "y")
        assert health(app, "node2") in ("● UP", "↻ RETURNING")
        assert toasts == ["node2 restored: its process restarted"]
        for _ in range(100):                 # the node catches up in the background
            nodes = app.view.nodes
            if (all(n.state == "up" for n in nodes)
                    and not any(n.under_replicated for n in nodes)):
                break
            await pilot.pause(0.1)
            await press(pilot, "r")
        assert health(app, "node2") == "● UP"
        table = app.screen.query_one("#nodes", DataTable)
        assert [str(table.get_row(n)[5]).strip() for n in ("node1", "node2", "node3")] == ["0"] * 3
        assert app.screen.query_one("#nodes").border_title == "3 nodes" + etcd_title(admin)
        if admin.config.etcd:
            assert "etcd             ● registered" in card(app)
        await press(pilot, "1")
        assert "healthy" in node_summary(app)
        assert "DEGRADED" not in node_summary(app)
    assert admin.read("desk-1", 0, len(data)) == data


async def test_removing_a_node_drains_it_and_the_table_loses_it(make_cluster, tmp_path):  # noqa: F811
    cluster = make_cluster(nodes=4, replicas=2)
    data = image(tmp_path / "golden.raw", 1, seed=5)
    with cluster.open(actor="console") as admin:
        admin.import_image("golden", str(tmp_path / "golden.raw"))
        held = {n.name: n.live_blocks for n in admin.nodes()}["node2"]
        app, toasts = make_app(admin), Toasts()
        async with app.run_test(size=SIZE, message_hook=toasts) as pilot:
            await press(pilot, "5")
            await press(pilot, "down", "X")
            said = " ".join(question(app).split())
            assert said == (f"Remove node2 from cluster {cluster.path}? Its {held:,} blocks"
                            f" ({formats.size(held * 4096)}) will be copied to the other nodes"
                            " first.")
            await press(pilot, "y")
            for _ in range(100):                # the drain runs in a worker
                if toasts:
                    break
                await pilot.pause(0.1)
            assert toasts == ["node2 removed: every block has its copies on the other nodes"]
            await press(pilot, "r")
            table = app.screen.query_one("#nodes", DataTable)
            assert [str(table.get_row_at(k)[0]) for k in range(table.row_count)] == [
                "node1", "node3", "node4"]
        nodes = admin.nodes()
        assert sum(n.live_blocks for n in nodes) == 2 * admin.stats().unique_blocks
        assert admin.read("golden", 0, len(data)) == data
    assert [e.name for e in cluster.config.nodes] == ["node1", "node3", "node4"]
