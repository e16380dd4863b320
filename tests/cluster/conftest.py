"""A real cluster in tmp_path: node subprocesses on 127.0.0.1 (port 0), real keys, the worker's
etcd (tests/conftest.py: etcd_url; none when there is no etcd binary); always torn down,
whatever the test did to it."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from textual.widgets import Label

from console.app import BlockfoldApp
from console.clock import FixedClock
from console.pilot import settle
from engine import api
from engine.cluster import processes
from engine.cluster.config import ADMIN_KEY, CONFIG_FILE, PEER_KEY, ClusterConfig


class Cluster:
    def __init__(self, path):
        self.path = path

    @property
    def config(self) -> ClusterConfig:
        return ClusterConfig.load(self.path)

    def pid(self, name: str) -> int:
        return self.config.node(name).pid

    def kill(self, name: str) -> None:
        """kill -9, behind the coordinator's back; returns once the node is gone, as an operator
        sees it before restoring it (the kernel ends a killed process a moment later, and under
        load `node restore` could still find it running)."""
        entry = self.config.node(name)
        processes.stop_pid(entry.pid, lambda: processes.is_running(entry), signal.SIGKILL)

    def host_copy(self, path) -> Path:
        """The cluster's directory as another host holds it, at `path`: cluster.json and the
        admin and peer key pairs; no nodes' data, no etcd (a standby service runs from it, with
        an admin socket of its own)."""
        path = Path(path)
        path.mkdir()
        for name in (CONFIG_FILE, ADMIN_KEY, f"{ADMIN_KEY}.pub", PEER_KEY, f"{PEER_KEY}.pub"):
            shutil.copy2(self.path / name, path / name)
        return path

    def open(self, **kw):
        return api.open_cluster(self.path, **kw)

    def received(self, name: str) -> int:
        """Bytes node `name` has received over its open TCP connections: what crossed the
        loopback to it, SSH's framing included (ss's bytes_received)."""
        port = self.config.node(name).address.rsplit(":", 1)[1]
        out = subprocess.run(["ss", "-tinH", "state", "established", "sport", "=", f":{port}"],
                             capture_output=True, text=True, check=True, timeout=10).stdout
        return sum(int(n) for n in re.findall(r"bytes_received:(\d+)", out))

    def peak_memory(self, name: str) -> int:
        """Node `name`'s peak resident memory so far, bytes (VmHWM)."""
        status = open(f"/proc/{self.pid(name)}/status").read()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status)[1]) << 10


@pytest.fixture
def make_cluster(tmp_path, etcd_url):
    made = []

    def make(nodes=3, replicas=2, lease_seconds=None, **kw):
        """api.cluster_up's cluster; `lease_seconds` is put in its cluster.json (every writer
        that opens it from then on takes leases that long)."""
        path = tmp_path / f"cluster{len(made)}"
        made.append(path)
        kw.setdefault("etcd", etcd_url or "none")
        api.cluster_up(path, nodes=nodes, replicas=replicas, **kw)
        if lease_seconds is not None:
            config = ClusterConfig.load(path)
            config.lease_seconds = lease_seconds
            config.save()
        return Cluster(path)

    yield make
    for path in made:
        api.cluster_down(path, force=True)     # even with a test's service left behind


def image(path, mib: int, seed: int = 1):
    """A raw image of random blocks with some repeats (so dedup has work) and a hole."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(mib * 256, 4096), dtype=np.uint8)
    blocks[1::7] = blocks[0]                      # shared blocks
    blocks[5::11] = 0                             # zero blocks
    data = blocks.tobytes()
    path.write_bytes(data)
    return data


async def console_overview(directory) -> tuple[str, str]:
    """(pool panel's title, node summary) of a console on the service of `directory`."""
    admin = api.find_service(directory, actor="console")
    try:
        app = BlockfoldApp(admin, clock=FixedClock(), poll_interval=3600)
        async with app.run_test(size=(120, 34)) as pilot:
            await settle(pilot)
            return (str(app.screen.query_one("#pool").border_title),
                    str(app.screen.query_one("#node-summary", Label).render()))
    finally:
        admin.close()


def wait_until(what, seconds: float, why: str):
    """what() until it is true, for `seconds` at most (AssertionError naming `why`)."""
    deadline = time.monotonic() + seconds
    while not (got := what()):
        assert time.monotonic() < deadline, why
        time.sleep(0.2)
    return got


def wait_for(check, seconds: float):
    """check()'s first truthy answer within `seconds`, else the last answer."""
    deadline = time.monotonic() + seconds
    while not (found := check()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return found
