"""Two consoles and a CLI on one service (`blockfold serve` in a subprocess): each console has its
own connection (RemoteAdmin) and sees what the others did at its next poll; events name who."""

from __future__ import annotations

import asyncio
import getpass
import subprocess
import sys
import time

from textual.widgets import Button, DataTable

from console.app import BlockfoldApp
from console.clock import FixedClock
from console.screens.confirm import ConfirmDialog
from console.screens.error import ErrorDialog
from engine.api import LocalAdmin, Service, find_service
from tests.conftest import ROOT, run_cli
from tests.serviceproc import Served

from .conftest import SIZE
from .helpers import asked, press, settle


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


def attach(service: Served, admin, vm: str) -> subprocess.Popen:
    """qemu-io holding `vm` open over NBD, once the service counts it as attached."""
    client = subprocess.Popen(["qemu-io", "-f", "raw", "-c", "read 0 4k", "-c", "sleep 60000",
                               service.uri(vm)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not admin.vm_info(vm).attached:
        assert time.monotonic() < deadline, f"qemu-io did not attach {vm}"
        time.sleep(0.1)
    return client


async def test_deleting_an_attached_vm_says_who_and_detaches_only_when_asked(pool_dir):
    """The question names the NBD client and offers "Detach and delete"; a client that attached
    after the question is told in the console's words (no CLI flag), and d again detaches it."""
    service = Served(["-p", str(pool_dir)], "--nbd", "127.0.0.1:0")
    admin = find_service(pool_dir, actor="alice")
    clients = []
    try:
        clients.append(attach(service, admin, "desk-1"))
        app = BlockfoldApp(admin, clock=FixedClock(), poll_interval=3600)
        async with app.run_test(size=SIZE) as pilot:
            await press(pilot, "2", "d")
            question = asked(app)
            assert question.startswith("VM desk-1 is attached over NBD by 127.0.0.1:")
            assert question.endswith(": deleting it detaches them and pulls the disk from under"
                                     " them. Delete VM desk-1? Its own blocks are freed.")
            assert str(app.screen.query_one("#yes", Button).label) == "Detach and delete (y)"
            await press(pilot, "n")
            assert "desk-1" in admin.vm_names() and admin.vm_info("desk-1").attached

            await press(pilot, "down", "d")
            assert asked(app) == "Delete VM desk-2? Its own blocks are freed."
            clients.append(attach(service, admin, "desk-2"))    # after the question, before y
            await press(pilot, "y")
            assert isinstance(app.screen, ErrorDialog)
            refusal = str(app.screen.query_one("#message").render())
            assert "VM desk-2 is attached over NBD by 127.0.0.1:" in refusal
            assert "nothing was deleted. Detach the client first, or press d again" in refusal
            assert "--force detaches" not in refusal
            assert "desk-2" in admin.vm_names()

            await press(pilot, "enter", "d")
            assert asked(app).startswith("VM desk-2 is attached over NBD by 127.0.0.1:")
            await press(pilot, "y")
            assert "desk-2" not in admin.vm_names() and "desk-2" not in vm_rows(app)
            assert "desk-1" in admin.vm_names()
    finally:
        for client in clients:
            client.kill()
            client.wait()
        admin.close()
        service.stop()


def import_from_stdin(pool_dir, name: str) -> subprocess.Popen:
    """`vm import NAME -` whose stdin stays open after a block and a bit: a job that runs until
    it is cancelled."""
    client = subprocess.Popen([sys.executable, "-m", "console", "-p", str(pool_dir), "vm",
                               "import", name, "-"], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client.stdin.write("x" * 5000)
    client.stdin.flush()
    return client


async def test_quitting_a_console_that_serves_its_pool_asks_while_clients_jobs_run(pool_dir):
    """The console serving its own pool (as `blockfold console` does with no service running):
    with two CLI imports running through it, `q` asks, naming them by kind, VM and user (as
    `job ls` does); n keeps
    them running; once it quits, each import ends saying why."""
    admin = LocalAdmin.open(pool_dir, actor="console")
    service = Service(admin, pool_dir, actor="console")
    service.start_in_thread()
    clients = []
    try:
        served = service.admin
        app = BlockfoldApp(served, clock=FixedClock(), poll_interval=3600)
        async with app.run_test(size=SIZE) as pilot:
            clients = [import_from_stdin(pool_dir, name) for name in ("big1", "big2")]
            deadline = time.monotonic() + 30
            while len(served.jobs_from_clients()) < 2:
                assert time.monotonic() < deadline and all(c.poll() is None for c in clients)
                await asyncio.sleep(0.05)
            # A client of the service, quitting, cancels none of them: it serves nobody.
            with find_service(pool_dir, actor="console") as remote:
                assert len(remote.jobs()) == 2 and remote.jobs_from_clients() == []
            listed = run_cli("-p", pool_dir, "job", "ls").stdout_text.splitlines()
            assert sorted(line.split()[1:3] for line in listed[1:]) == [
                ["import_image", "big1"], ["import_image", "big2"]]
            await press(pilot, "q")
            user = getpass.getuser()
            assert asked(app) in (f"2 jobs from other clients are running through this console"
                                  f" ({first} by {user}, {second} by {user}): quitting cancels"
                                  " them. Quit?" for first, second in (
                                      ("import of big1", "import of big2"),
                                      ("import of big2", "import of big1")))
            await press(pilot, "n")
            assert not isinstance(app.screen, ConfirmDialog)
            assert all(c.poll() is None for c in clients)
            await press(pilot, "q", "y")
            assert not app.is_running
        service.stop(f"the console serving pool {pool_dir} quit")     # as console_admin does
        for client in clients:
            _, err = client.communicate(timeout=30)
            assert client.returncode == 1
            assert err == (f"blockfold: error: import of stdin cancelled: the console serving"
                           f" pool {pool_dir} quit\n")
    finally:
        service.stop()
        service.close()
        for client in clients:
            if client.poll() is None:
                client.kill()
                client.communicate(timeout=30)
