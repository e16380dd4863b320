"""The coordinator is the client process: kill -9 it mid-import, and the next one opens the
cluster at once (the dead writer was on this host), reclaims the orphans and checks clean."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time

import pytest

from engine.api import BlockfoldError
from engine.cluster.blocks import ClusterBlocks

from .conftest import image


@pytest.mark.slow
def test_kill_the_coordinator_mid_import(make_cluster, tmp_path):
    cluster = make_cluster(nodes=3, replicas=2)
    data = image(tmp_path / "a.raw", 2, seed=11)
    # Three of an import's batches, so the kill can land between two of them.
    big = image(tmp_path / "big.raw", 3 * ClusterBlocks.import_bytes >> 20, seed=12)
    with cluster.open() as admin:
        admin.import_image("a", str(tmp_path / "a.raw"))
        before = sum(n.blocks for n in admin.nodes())
    writer = subprocess.Popen([sys.executable, "-m", "console", "-c", str(cluster.path),
                               "vm", "import", "big", str(tmp_path / "big.raw")])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:   # mid-import: blocks on the nodes, not committed
        with cluster.open(readonly=True) as admin:
            if sum(n.blocks for n in admin.nodes()) > before + 1000:
                break
        time.sleep(0.1)
    writer.kill()
    writer.wait()
    deadline = time.monotonic() + 20
    while True:
        try:
            admin = cluster.open()
            break
        except BlockfoldError as e:
            assert "is in use by" in str(e)
            assert time.monotonic() < deadline
            time.sleep(0.5)
    with admin:
        assert admin.last_rebuild().reason == "crash"
        assert admin.vm_names() in (["a"], ["a", "big"])
        assert admin.read("a", 0, len(data)) == data
        if "big" in admin.vm_names():
            assert admin.read("big", 0, len(big)) == big
        assert admin.fsck() == []
    # The orphans the dead writer left were dropped: nodes hold exactly the live copies.
    with cluster.open(readonly=True) as admin:
        nodes = admin.nodes()
        assert sum(n.blocks for n in nodes) == sum(n.live_blocks for n in nodes)


def test_a_writer_killed_on_this_host_leaves_the_lease_at_once(make_cluster, tmp_path):
    cluster = make_cluster(nodes=2, replicas=2)
    data = image(tmp_path / "a.raw", 1, seed=13)

    def bf(*args):
        return subprocess.run([sys.executable, "-m", "console", "-c", str(cluster.path), *args],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=60)

    writer = subprocess.Popen([sys.executable, "-m", "console", "-c", str(cluster.path), "nbd",
                               "serve", "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert writer.stdout.readline().startswith("ready ")
        # A live writer keeps the lease (a CLI goes through it: see test_service.py here).
        with pytest.raises(BlockfoldError) as held:
            cluster.open()
        assert f"is in use by {socket.gethostname()} pid {writer.pid} (" in str(held.value)
    finally:
        writer.kill()
        writer.wait()
    started = time.monotonic()
    done = bf("vm", "import", "a", str(tmp_path / "a.raw"))
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 8         # not the 10 s the lease would have run
    assert re.fullmatch(f"blockfold: took over the write lease of {re.escape(socket.gethostname())}"
                        f" pid {writer.pid} \\([0-9a-f]{{6}}\\): that process no longer runs\n",
                        done.stderr), done.stderr
    with cluster.open() as admin:
        assert admin.read("a", 0, len(data)) == data
        assert admin.fsck() == []
