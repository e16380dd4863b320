"""A VDI host's load on the NBD export: a thousand desktops attached at once, each served; and the
one limit there is (open files), refused at negotiation with a message and logged, never a hang.
"""

from __future__ import annotations

import random
import resource
import time

import pytest

from engine.api import LocalAdmin
from engine.nbd.server import RESERVED_FILES
from tests.nbdclient import (OPT_EXPORT_NAME, OPT_GO, REP_ACK, REP_ERR_POLICY, MiB, RawClient)

DESKTOPS = 1000


@pytest.fixture
def golden(pool_dir, tmp_path) -> bytes:
    data = random.Random(5).randbytes(MiB)
    (tmp_path / "golden.raw").write_bytes(data)
    with LocalAdmin.open(pool_dir) as admin:
        admin.import_image("golden", str(tmp_path / "golden.raw"))
        admin.clone("golden", "desk", count=DESKTOPS)
    return data


def open_files_for(n: int) -> None:
    """This test process holds n sockets at once: raise its soft limit if it is lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))


def go_reply(c: RawClient, name: str) -> tuple[int, bytes]:
    """NBD_OPT_GO; the final reply's type and data (an error's message)."""
    c.option(OPT_GO, len(name).to_bytes(4, "big") + name.encode() + bytes(2))
    while True:
        _, kind, data = c.option_reply()
        if kind != 3:       # NBD_REP_INFO
            return kind, data


def test_a_thousand_idle_desktops_are_each_served(pool_dir, golden, server):
    open_files_for(DESKTOPS + 100)
    s = server()
    started = time.monotonic()
    clients = []
    try:
        for i in range(1, DESKTOPS + 1):
            c = RawClient(s.port)
            clients.append(c)
            assert c.connect(f"desk-{i}")[0] == MiB
        rng = random.Random(7)
        for c in clients[::50] + clients[-1:]:       # a sample, and the last one to attach
            offset = rng.randrange(0, MiB - 5000)
            assert c.read(offset, 5000) == (0, golden[offset:offset + 5000])
        last = clients[-1]
        assert last.write(4096, b"\x42" * 4096) == 0
        assert last.read(4096, 4096) == (0, b"\x42" * 4096)
        assert clients[0].read(4096, 4096) == (0, golden[4096:8192])     # its own clone
    finally:
        for c in clients:
            c.close()
    assert time.monotonic() - started < 120
    assert "refused" not in s.stop()


def test_past_the_open_file_limit_a_desktop_is_refused_at_negotiation_and_logged(
        pool_dir, golden, server):
    room = 3        # transmitting connections the server's open-file limit leaves room for
    limit = RESERVED_FILES + room
    s = server(preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)))
    attached = []
    for i in range(room):
        c = RawClient(s.port)
        c.connect(f"desk-{i + 1}")
        attached.append(c)

    refused = RawClient(s.port)
    refused.handshake()
    kind, message = go_reply(refused, "desk-9")
    assert kind == REP_ERR_POLICY and b"limit" in message
    old_style = RawClient(s.port)                 # NBD_OPT_EXPORT_NAME has no error reply
    old_style.handshake()
    old_style.option(OPT_EXPORT_NAME, b"desk-10")
    assert old_style.closed_by_server()
    for c in attached:
        assert c.read(0, 4096) == (0, golden[:4096])     # the others are served as before

    attached.pop().close()                        # a desktop leaves: its place is free again
    deadline = time.monotonic() + 10
    while (kind := go_reply(refused, "desk-9")[0]) != REP_ACK and time.monotonic() < deadline:
        time.sleep(0.05)
    assert kind == REP_ACK
    assert refused.read(0, 4096) == (0, golden[:4096])
    for c in [*attached, refused, old_style]:
        c.close()
    log = s.stop()
    assert "refused export 'desk-9'" in log and "refused export 'desk-10'" in log
