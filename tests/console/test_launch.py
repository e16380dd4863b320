"""`blockfold` opens the console in a real terminal (tmux), and scripted commands stay light."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.api import LocalAdmin, find_service, open_cluster
from engine.cluster.members import Members
from tests.cluster.conftest import image, make_cluster  # noqa: F401 - make_cluster is a fixture
from tests.conftest import ROOT, run_cli
from tests.terminal import Terminal

BLOCKFOLD = str(Path(sys.executable).parent / "blockfold")
pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")


@pytest.fixture
def terminal(tmp_path):
    opened = []

    def open_(command, env=None):
        opened.append(Terminal(tmp_path, command, name=f"t{len(opened)}", env=env))
        return opened[-1]
    yield open_
    for t in opened:
        t.close()


def test_console_opens_on_a_pool_and_quits_cleanly(terminal, pool_dir):
    t = terminal(f"{BLOCKFOLD} console -p {pool_dir} --read-only")
    assert "Blockfold · Overview" in t.wait_for("READ-ONLY")
    t.keys("2")
    shown = t.wait_for("golden")
    assert "Delete VM" not in shown
    t.keys("q")
    assert t.exit_code() == 0
    with LocalAdmin.open(pool_dir) as admin:       # released: it opens writable again
        assert len(admin.vm_names()) == 4


def test_blockfold_alone_makes_the_default_pool(terminal, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "BLOCKFOLD_POOL"}
    env["XDG_DATA_HOME"] = str(tmp_path / "data")
    t = terminal(f"env -u BLOCKFOLD_POOL XDG_DATA_HOME={env['XDG_DATA_HOME']} {BLOCKFOLD}", env)
    t.wait_for("VMs       0")
    t.keys("2")
    assert "Delete VM" in t.wait_for("Clone VM")
    t.keys("q")
    assert t.exit_code() == 0
    assert (tmp_path / "data" / "blockfold" / "pool" / "catalog.db").is_file()


def test_scripted_commands_do_not_load_textual(pool_dir):
    code = ("import sys; from console.cli import main; main(['-p', sys.argv[1], 'stats']); "
            "print('textual loaded' if 'textual' in sys.modules else 'textual not loaded')")
    out = subprocess.run([sys.executable, "-c", code, pool_dir], capture_output=True, text=True,
                         check=True).stdout
    assert "dedup ratio" in out and out.strip().endswith("textual not loaded")


def test_demo_runs_a_seeded_cluster_and_stops_it_on_quit(etcd, terminal, tmp_path):
    demo = tmp_path / "demo"
    t = terminal(f"{BLOCKFOLD} demo --dir {demo}")
    t.wait_for("VMs       13", timeout=60)           # golden + 12 linked clones
    made = json.loads((demo / "cluster.json").read_text())
    pids = [node["pid"] for node in made["nodes"]]
    assert len(pids) == 3 and all(os.path.exists(f"/proc/{pid}") for pid in pids)
    member = made["etcd"]["pid"]                     # the cluster's own etcd member
    assert os.path.exists(f"/proc/{member}")
    t.keys("5")
    shown = t.wait_for("node3")
    assert shown.count("UP") >= 3
    assert f"etcd {made['etcd']['endpoints'][0]} ● healthy, 1 member" in shown
    t.keys("q")
    assert t.exit_code(timeout=30) == 0
    for pid in pids:                                 # every node it started is gone
        assert not os.path.exists(f"/proc/{pid}") or \
            b"engine.node" not in open(f"/proc/{pid}/cmdline", "rb").read()
    assert not os.path.exists(f"/proc/{member}") or \
        str(demo / "etcd").encode() not in open(f"/proc/{member}/cmdline", "rb").read()


def test_a_console_serving_its_pool_names_itself_to_serve_and_asks_before_cancelling_jobs(
        terminal, pool_dir):
    """A console that serves its own pool: `serve` is refused naming it and what to do; `q` while
    a CLI's import runs through it asks first (n keeps it running), and the import, cancelled
    by the quit, says why."""
    t = terminal(f"{BLOCKFOLD} console -p {pool_dir}")
    t.wait_for("Blockfold · Overview")
    pid = t.client_pid()
    refused = run_cli("-p", pool_dir, "serve", "--nbd", "127.0.0.1:0")
    assert refused.returncode == 1
    assert refused.stderr_text == (
        f"blockfold: error: pool {pool_dir} is held by a console (pid {pid}, `blockfold console"
        f" -p {pool_dir}`): quit it, or start `serve` first and consoles go through it\n")

    client = subprocess.Popen([sys.executable, "-m", "console", "-p", pool_dir, "vm", "import",
                               "big", "-"], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        client.stdin.write("x" * 5000)       # a block and a bit, then nothing: stdin stays open
        client.stdin.flush()
        with find_service(pool_dir) as admin:
            deadline = time.monotonic() + 30
            while not [j for j in admin.jobs() if j.kind == "import_image"]:
                assert time.monotonic() < deadline and client.poll() is None
                time.sleep(0.05)
        t.keys("q")
        shown = t.wait_for("Quit?")
        assert "1 job from another client is running through this console" in shown
        assert f"import of big by {getpass.getuser()}" in shown     # the job names its VM
        t.keys("n")
        deadline = time.monotonic() + 20
        while "Quit?" in t.screen():        # the dialog goes, the console stays
            assert time.monotonic() < deadline, t.screen()
            time.sleep(0.1)
        assert "Blockfold · Overview" in t.screen() and client.poll() is None
        t.keys("q")
        t.wait_for("Quit?")
        t.keys("y")
        assert t.exit_code() == 0
        assert client.wait(20) == 1
        assert client.stderr.read() == (f"blockfold: error: import of stdin cancelled: the"
                                        f" console serving pool {pool_dir} quit\n")
    finally:
        if client.poll() is None:
            client.kill()
        client.communicate(timeout=30)


def test_a_hangup_while_a_console_opens_a_cluster_ends_it_and_holds_nothing(
        make_cluster, terminal, tmp_path):  # noqa: F811 - the fixture imported above
    # A console went on opening (and then serving) through a hangup or SIGTERM: a closed
    # terminal left a hidden writer. The open says what it does, and a hangup ends it.
    cluster = make_cluster(nodes=3, replicas=2)
    image(tmp_path / "golden.raw", 1, seed=9)
    with cluster.open() as admin:
        admin.import_image("golden", str(tmp_path / "golden.raw"))
    hung = cluster.pid("node3")
    os.kill(hung, signal.SIGSTOP)       # the open waits for it: 3 s to give it up
    try:
        t = terminal(f"{BLOCKFOLD} console -c {cluster.path}")
        t.wait_for(f"blockfold: opening cluster {cluster.path} …")
        os.kill(t.client_pid(), signal.SIGHUP)
        assert t.exit_code() == 130
        assert "blockfold: interrupted" in t.screen()
    finally:
        os.kill(hung, signal.SIGCONT)
    # No node holds a lease for it, and a writer opens at once.
    members = Members(cluster.config)
    try:
        members.probe_all()
        assert members._leases(list(range(3))) == {}
    finally:
        members.close()
    with open_cluster(cluster.path) as admin:
        assert admin.vm_names() == ["golden"]
