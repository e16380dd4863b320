"""The console over SSH: plain OpenSSH `ssh -tt` in tmux against `blockfold node serve --cluster`
on 127.0.0.1, with real keys; the console runs on the node and administers a real cluster."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.terminal import Terminal

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None or shutil.which("ssh") is None,
                                reason="needs tmux and OpenSSH")


def keygen(path, comment: str) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f",
                    str(path)], check=True)
    return (path.parent / (path.name + ".pub")).read_text()


@pytest.fixture
def console_node(tmp_path, make_cluster):
    """A node serving the console on a 1-node cluster holding one VM; keys for an admin, a
    read-only admin, a node, the cluster's peer key and a stranger. Yields (ssh command for a
    key name, opened tmuxes)."""
    cluster = make_cluster(nodes=1, replicas=1)
    (tmp_path / "golden.raw").write_bytes(os.urandom(1 << 20))
    with cluster.open(actor="setup") as admin:
        admin.import_image("golden", str(tmp_path / "golden.raw"))
    data = tmp_path / "console-node"
    data.mkdir()
    keys = {name: keygen(tmp_path / name, f"{name}@laptop")
            for name in ("alice", "reader", "nodekey", "peerkey", "stranger")}
    (data / "authorized_keys").write_text(keys["nodekey"])
    (data / "peer_keys").write_text("restrict " + keys["peerkey"])
    (data / "admin_keys").write_text(keys["alice"])
    (data / "admin_keys_readonly").write_text(keys["reader"])
    with open(tmp_path / "node.log", "w") as log:       # the node's stderr
        node = subprocess.Popen([sys.executable, "-m", "console", "node", "serve", "--data",
                                 str(data), "--listen", "127.0.0.1:0", "--cluster",
                                 str(cluster.path)], stdout=subprocess.PIPE, stderr=log, text=True)
    port = node.stdout.readline().split(":")[-1].strip()
    terminals = []

    def ssh(key: str, extra: str = "-tt") -> str:
        return (f"ssh {extra} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
                f" -o BatchMode=yes -o LogLevel=ERROR -i {tmp_path / key} -p {port}"
                " admin@127.0.0.1")

    def terminal(name: str, key: str) -> Terminal:
        terminals.append(Terminal(tmp_path, ssh(key), name=name))
        return terminals[-1]

    yield node, cluster, ssh, terminal
    for t in terminals:
        t.close()
    node.send_signal(signal.SIGTERM)
    node.wait(10)


def laid_out(columns: int, rows: int):
    """A check of a screen (Terminal.wait_until): the VMs screen drawn whole to `columns` x
    `rows`, its box's top and bottom borders each one line as wide as the window, the golden
    VM in it. tmux shows a console's old frame cut to a smaller window, so only a redraw shows
    the box closed on the right at the new width, and its bottom within the new height."""
    def check(screen: str) -> bool:
        lines = screen.rstrip("\n").split("\n")
        box = [line for line in lines if line.startswith(("╭", "╰"))]
        return (len(lines) == rows and "golden" in screen
                and [line[0] + line[-1] for line in box] == ["╭╮", "╰╯"]
                and all(len(line) == columns for line in box))
    return check


def test_admin_key_gets_the_console_switches_resizes_and_quits(console_node):
    node, cluster, ssh, terminal = console_node
    t = terminal("alice", "alice")
    assert "Overview" in t.wait_for("Blockfold · Overview")
    t.keys("2")
    t.wait_for("Blockfold · VMs")
    t.wait_for("golden")
    t.wait_for("Delete")                          # a writable session's key bar
    t.wait_until(laid_out(120, 34), "the VMs screen laid out to 120x34")
    t.resize(70, 20)
    t.wait_until(laid_out(70, 20), "the VMs screen laid out again to 70x20")
    t.keys("q")
    assert t.exit_code() == 0
    assert node.poll() is None


def test_actions_are_logged_under_the_key_comment(console_node):
    node, cluster, ssh, terminal = console_node
    t = terminal("alice", "alice")
    t.wait_for("Blockfold · Overview")
    t.keys("2")
    t.wait_for("Blockfold · VMs")
    t.keys("c")                                   # clone the selected VM, once
    t.wait_for("Clone golden")
    t.keys("Enter")                               # the name offered, golden-clone
    time.sleep(0.5)
    t.keys("1", "Enter")                          # how many
    t.wait_for("cloned")
    t.keys("q")
    assert t.exit_code() == 0
    with cluster.open(readonly=True) as admin:
        actors = {e.actor for e in admin.events(50)}
    assert "alice@laptop" in actors


def test_read_only_key_and_a_second_session_at_once(console_node):
    node, cluster, ssh, terminal = console_node
    alice = terminal("alice", "alice")
    alice.wait_for("Blockfold · Overview")
    reader = terminal("reader", "reader")
    assert "READ-ONLY" in reader.wait_for("READ-ONLY")
    reader.keys("2")
    assert "Delete" not in reader.wait_for("Blockfold · VMs")
    alice.keys("2")
    alice.wait_for("Delete")                      # the first session still answers
    reader.keys("q")
    alice.keys("q")
    assert reader.exit_code() == 0 and alice.exit_code() == 0


def test_an_idle_console_keeps_no_one_from_writing(console_node):
    node, cluster, ssh, terminal = console_node
    alice = terminal("alice", "alice")            # no service ran: this console serves the cluster
    alice.wait_for("Blockfold · Overview")
    second = terminal("alice2", "alice")          # it goes through alice's console's service
    second.wait_for("Blockfold · Overview")
    done = subprocess.run([sys.executable, "-m", "console", "-c", str(cluster.path), "vm",
                           "clone", "golden", "fromcli"], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    second.keys("2", "r")
    assert "fromcli" in second.wait_for("fromcli")
    second.keys("q")
    alice.keys("q")
    assert second.exit_code() == 0 and alice.exit_code() == 0


def test_killing_a_client_leaves_the_node_serving(console_node):
    node, cluster, ssh, terminal = console_node
    first = terminal("alice1", "alice")   # a writer: its lease must be freed at once
    first.wait_for("Blockfold · Overview")
    os.kill(first.client_pid(), signal.SIGKILL)
    first.close()
    second = terminal("alice2", "alice")
    second.wait_for("Blockfold · Overview")
    second.keys("q")
    assert second.exit_code() == 0
    assert node.poll() is None
    deadline = time.monotonic() + 10              # the abandoned console was ended too
    while subprocess.run(["pgrep", "-P", str(node.pid)], capture_output=True).stdout:
        assert time.monotonic() < deadline, "a console outlived its client"
        time.sleep(0.1)


@pytest.mark.parametrize("key, extra, message", [
    ("nodekey", "-tt", "node key"),
    ("peerkey", "-tt", "the cluster's peer key"),
    ("alice", "-T", "needs a terminal"),
])
def test_who_gets_no_console_is_told_in_one_line(console_node, key, extra, message):
    node, cluster, ssh, terminal = console_node
    done = subprocess.run(ssh(key, extra), shell=True, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=20)
    assert done.returncode == 1
    assert message in done.stdout and len(done.stdout.strip().splitlines()) == 1


def test_wrong_key_is_refused(console_node):
    node, cluster, ssh, terminal = console_node
    done = subprocess.run(ssh("stranger"), shell=True, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=20)
    assert done.returncode == 255 and "Permission denied" in done.stderr


def _admin_line(tmp_path, options: str) -> None:
    """alice's key in admin_keys behind `options`, on line 2 (a comment first); the node reads
    the file at the next login."""
    key = (tmp_path / "alice.pub").read_text()
    (tmp_path / "console-node" / "admin_keys").write_text(f"# alice\n{options} {key}")


@pytest.mark.parametrize("options, logged", [
    ('from="10.9.9.9",no-pty,command="/bin/false"', "from= does not allow"),
    ('from="10.0.0.0/8,!127.0.0.1"', "from= does not allow"),
    ('expiry-time="20200101"', "expired"),
    ('environment="EDITOR=vi"', "option 'environment' is not enforced"),
    ('command="/bin/false"', "option 'command' is not enforced"),
])
def test_a_line_whose_options_refuse_the_login_lets_nothing_in(console_node, tmp_path, options,
                                                               logged):
    node, cluster, ssh, terminal = console_node
    _admin_line(tmp_path, options)
    done = subprocess.run(ssh("alice"), shell=True, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=20)
    assert done.returncode == 255 and "Permission denied" in done.stderr
    assert done.stdout == ""
    lines = [x for x in (tmp_path / "node.log").read_text().splitlines() if "admin_keys" in x]
    assert lines and all(f"{tmp_path / 'console-node' / 'admin_keys'} line 2: refused: " in x
                         and logged in x for x in lines)
    assert node.poll() is None


@pytest.mark.parametrize("options", ["no-pty", "restrict"])
def test_a_line_without_a_terminal_gets_no_console_in_one_line(console_node, tmp_path, options):
    node, cluster, ssh, terminal = console_node
    _admin_line(tmp_path, options)
    done = subprocess.run(ssh("alice"), shell=True, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=20)
    assert done.returncode == 1
    assert done.stdout.strip() == ("blockfold: error: this key may have no terminal (admin_keys"
                                   " line 2: no-pty, or restrict without pty), and the console"
                                   " needs one")


@pytest.mark.parametrize("options", ['from="10.0.0.0/8,127.0.0.1",expiry-time="20991231Z"',
                                     "restrict,pty,no-port-forwarding"])
def test_a_line_whose_options_allow_it_gets_the_console(console_node, tmp_path, options):
    node, cluster, ssh, terminal = console_node
    _admin_line(tmp_path, options)
    t = terminal("alice", "alice")
    t.wait_for("Blockfold · Overview")
    t.keys("q")
    assert t.exit_code() == 0
