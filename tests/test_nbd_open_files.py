"""What a client sees when the NBD server's process is out of open files, or when others hold
connections without negotiating: never a hang, and a few lines on stderr, not a flood.

`blockfold nbd serve` (the service with NBD, admin socket and all) in a subprocess with a low
RLIMIT_NOFILE, real sockets held open, nbdinfo as the client.
"""

from __future__ import annotations

import json
import os
import random
import resource
import socket
import subprocess
import sys
import time

import pytest

from engine.api import LocalAdmin
from tests.conftest import ROOT, run_cli
from tests.nbdclient import OPT_LIST, REP_ACK, MiB, RawClient
from tests.serviceproc import Served

DEADLINE_ENV = "BLOCKFOLD_NBD_HANDSHAKE_S"
LIMIT = 80          # the server's open-file limit, soft and hard


@pytest.fixture
def image(pool_dir, tmp_path) -> bytes:
    data = random.Random(6).randbytes(MiB)
    (tmp_path / "a.raw").write_bytes(data)
    with LocalAdmin.open(pool_dir) as admin:
        admin.import_image("a", str(tmp_path / "a.raw"))
    return data


def nbdinfo(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """nbdinfo with libnbd's debug output on stderr: it carries the server's error messages."""
    return subprocess.run(["nbdinfo", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "LIBNBD_DEBUG": "1"})


def test_a_client_that_never_chooses_an_export_is_closed_at_the_deadline(image, server):
    s = server(env={DEADLINE_ENV: "1"})
    attached = RawClient(s.port)
    attached.connect("a")
    silent = RawClient(s.port)              # takes the greeting, then says nothing
    assert len(silent.recv(18)) == 18
    haggling = RawClient(s.port)            # negotiates a little, then says nothing
    haggling.handshake()
    haggling.option(OPT_LIST)
    while haggling.option_reply()[1] != REP_ACK:
        pass
    started = time.monotonic()
    assert silent.closed_by_server() and haggling.closed_by_server()    # (recv: 10 s at most)
    assert time.monotonic() - started < 5
    # A transmitting connection has no deadline: idle past it, it is served.
    assert attached.read(0, 4096) == (0, image[:4096])
    for c in (attached, silent, haggling):
        c.close()
    log = s.stop()
    assert log.count("no export chosen within 1 s; closing the connection") == 1, log
    assert "1 more connection closed: no export chosen within 1 s" in log, log


def test_a_bad_deadline_stops_the_start_in_one_line_before_anything_is_opened(image, pool_dir):
    """Not a number, 0 or less, under a second (0.001 s cut 4 of 5 nbdinfo on loopback), over an
    hour: refused in one line, before the pool is opened (another holds it here: that is not
    what is said), and nothing listens."""
    holder = Served(["-p", str(pool_dir)])
    try:
        for given in ("soon", "0", "-1", "0.001", "nan", "1e9"):
            for args in (["nbd", "serve", "--listen", "127.0.0.1:0"],
                         ["serve", "--nbd", "127.0.0.1:0"]):
                proc = subprocess.run([sys.executable, "-m", "console", "-p", str(pool_dir),
                                       *args], cwd=ROOT, capture_output=True, text=True,
                                      env={**os.environ, DEADLINE_ENV: given}, timeout=30)
                assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", (
                    f"blockfold: error: {DEADLINE_ENV}={given!r}: give a number of seconds"
                    " from 1 to 3600 (unset: 10)\n")), (given, args)
    finally:
        holder.stop()


def test_a_client_that_keeps_sending_options_is_not_cut_at_the_deadline(image, server, pool_dir):
    run_cli("-p", pool_dir, "vm", "clone", "a", "d", "--count", "40", check=True)
    s = server(env={DEADLINE_ENV: "1"})
    silent = RawClient(s.port)
    assert len(silent.recv(18)) == 18
    started = time.monotonic()
    # libnbd asks two options of each export, ~0.2 s each: 8 s of haggling, 8 deadlines.
    listing = nbdinfo("--list", "--json", f"nbd://127.0.0.1:{s.port}", timeout=60)
    assert listing.returncode == 0, listing.stderr[-2000:]
    assert time.monotonic() - started > 2
    names = {e["export-name"] for e in json.loads(listing.stdout)["exports"]}
    assert names == {"a"} | {f"d-{i}" for i in range(1, 41)}
    assert silent.closed_by_server()        # an idle client is still cut, at 1 s
    silent.close()
    log = s.stop()
    assert log.count("no export chosen within 1 s") == 1, log


def haggle(clients: list[RawClient]) -> list[RawClient]:
    """Each client lists the exports; returns those the server has closed."""
    closed = []
    for c in clients:
        try:
            c.option(OPT_LIST)
            while c.option_reply()[1] != REP_ACK:
                pass
        except (EOFError, ConnectionError):
            closed.append(c)
    return closed


def test_out_of_open_files_clients_that_haggle_past_the_deadline_are_closed(image, server):
    s = server(env={DEADLINE_ENV: "2"},
               preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT)))
    clients = haggling = [RawClient(s.port) for _ in range(20)]
    for c in clients:
        c.handshake()
    held = []
    try:
        until = time.monotonic() + 4            # twice the deadline: busy, they are served on
        while time.monotonic() < until:
            assert haggle(haggling) == []
            time.sleep(0.2)
        held = [RawClient(s.port) for _ in range(LIMIT)]       # the server runs out of files
        until = time.monotonic() + 10
        while haggling:
            assert time.monotonic() < until, f"{len(haggling)} still haggling"
            closed = haggle(haggling)
            haggling = [c for c in haggling if c not in closed]
            time.sleep(0.2)
    finally:
        for c in clients + held:
            c.close()
    log = s.stop()
    assert "refusing new clients until files are freed" in log, log
    assert "no export chosen within 2 s; closing the connection" in log, log
    assert "Traceback" not in log, log[:2000]


def test_out_of_open_files_a_client_is_refused_then_served_once_files_are_freed(
        image, server, pool_dir):
    s = server(env={DEADLINE_ENV: "60"},
               preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT)))
    held = [RawClient(s.port) for _ in range(LIMIT + 20)]      # saying nothing
    admin = []
    try:
        # The last one waited behind more than the server could hold: it is refused (greeted,
        # then closed once it has said nothing for a while), so the server is out of files now.
        assert len(held[-1].recv(18)) == 18 and held[-1].closed_by_server()
        # These wait in the admin socket's backlog (the NBD server's reserve files are not
        # theirs to take): asyncio retries its accept each second, and one line is logged.
        admin = [socket.socket(socket.AF_UNIX) for _ in range(3)]
        for a in admin:
            a.connect(str(pool_dir / "admin.sock"))
        time.sleep(3)
        started = time.monotonic()
        refused = nbdinfo(s.uri("a"))
        assert refused.returncode != 0, refused.stdout
        assert time.monotonic() - started < 15             # refused, not left hanging
        assert ("server error message: the server is out of open files (limit 80): try again"
                " later") in refused.stderr, refused.stderr[-2000:]
    finally:
        for c in held + admin:
            c.close()
    deadline = time.monotonic() + 20        # the server sees the held connections close
    while (served := nbdinfo("--size", s.uri("a"))).returncode != 0:
        assert time.monotonic() < deadline, served.stderr
        time.sleep(0.2)
    assert served.stdout.strip() == str(MiB)
    log = s.stop()
    assert "Traceback" not in log, log[:2000]
    assert len(log.splitlines()) <= 6, log
    assert "refusing new clients until files are freed" in log
    assert "accepting clients again;" in log
    assert "admin.sock: Too many open files" in log
