"""Two consoles and a CLI on one service (`blockfold serve` in a subprocess): each console has its
own connection (RemoteAdmin) and sees what the others did at its next poll; events name who."""

from __future__ import annotations

from textual.widgets import DataTable

from console.app import BlockfoldApp
from console.clock import FixedClock
from engine.api import find_service
from tests.conftest import run_cli
from tests.serviceproc import Served

from .conftest import SIZE
from .helpers import press, settle


def vm_rows(app) -> list[str]:
    table = app.screen.query_one("#vms", DataTable)
    return [str(table.get_row_at(i)[0]) for i in range(table.row_count)]


def event_actors(app) -> set[str]:
    return {(e.actor, e.kind) for e in app.view.events}


async def test_two_consoles_and_a_cli_on_one_service(pool_dir):
    service = Served(["-p", str(pool_dir)])
    alice = find_service(pool_dir, actor="alice")
    bob = find_service(pool_dir, actor="bob")
    try:
        a = BlockfoldApp(alice, clock=FixedClock(), poll_interval=3600)
        b = BlockfoldApp(bob, clock=FixedClock(), poll_interval=3600)
        async with a.run_test(size=SIZE) as pa, b.run_test(size=SIZE) as pb:
            await press(pa, "2")
            await press(pb, "2")
            assert vm_rows(a) == vm_rows(b) == ["desk-1", "desk-2", "desk-3", "golden"]
            # Alice clones golden three times from her VMs screen.
            await press(pa, "down", "down", "down", "c")
            await press(pa, "enter", "backspace", "3", "enter")
            assert "golden-clone-3" in vm_rows(a)
            # Bob sees them at his next poll, and clones desk-1 himself.
            await press(pb, "r")
            assert "golden-clone-3" in vm_rows(b)
            await press(pb, "home", "c", "enter", "enter")
            # The CLI deletes one of Alice's clones, through the same service.
            run_cli("-p", pool_dir, "vm", "rm", "golden-clone-1", "-y", check=True)
            await press(pa, "r")
            await press(pb, "r")
            for app in (a, b):
                rows = vm_rows(app)
                assert "desk-1-clone" in rows and "golden-clone-2" in rows
                assert "golden-clone-1" not in rows
                actors = event_actors(app)
                assert {("alice", "clone"), ("bob", "clone")} <= actors
                assert any(kind == "delete" and who not in ("alice", "bob")
                           for who, kind in actors)       # the CLI's: its user
            await settle(pa)
            await settle(pb)
    finally:
        alice.close()
        bob.close()
        service.stop()
