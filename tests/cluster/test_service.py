"""A cluster's service: `serve -c` holds the write lease and every CLI goes through it, here or
over SSH (a node's blockfold-admin subsystem, with the user's key and known_hosts); a standby
takes the lease over when the service dies, and says so."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine import api
from engine.api import BlockfoldError, PoolLockedError, connect_service, formats
from tests.conftest import ROOT, cli_json, run_cli
from tests.serviceproc import Served
from tests.terminal import Terminal

from .conftest import image


def keygen(path, comment: str) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f",
                    str(path)], check=True)
    return (path.parent / (path.name + ".pub")).read_text()


def test_the_cluster_service_answers_every_cli_and_a_standby_takes_over(make_cluster, tmp_path):
    cluster = make_cluster(nodes=2, replicas=2)
    data = image(tmp_path / "golden.raw", 2)
    s = Served(["-c", str(cluster.path)])
    standby = None
    try:
        run_cli("-c", cluster.path, "vm", "import", "golden", tmp_path / "golden.raw",
                check=True)
        run_cli("-c", cluster.path, "vm", "clone", "golden", "d", "--count", "5", check=True)
        with pytest.raises(PoolLockedError, match="is in use by"):
            cluster.open()              # the service holds the lease: the CLI went through it
        assert len(cli_json("-c", cluster.path, "vm", "ls")) == 6
        assert {n["state"] for n in cli_json("-c", cluster.path, "node", "ls")} == {"up"}
        assert cli_json("-c", cluster.path, "heal", "--wait")["under_replicated"] == 0
        standby = subprocess.Popen([sys.executable, "-m", "console", "-c", str(cluster.path),
                                    "serve"], cwd=ROOT, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        told = standby.stderr.readline()
        assert told.startswith("blockfold: waiting: cluster") and "is in use by" in told
        assert "its lease runs out in" in told
        s.kill()                        # the service dies: its lease is taken over
        assert standby.stdout.readline().startswith("admin ")
        assert "took over" in standby.stderr.readline()
        names = [v["name"] for v in cli_json("-c", cluster.path, "vm", "ls")]
        assert names == ["d-1", "d-2", "d-3", "d-4", "d-5", "golden"]
        with cluster.open(readonly=True) as admin:
            assert admin.read("d-3", 0, len(data)) == data
    finally:
        s.kill()
        if standby is not None:
            standby.terminate()
            standby.communicate(timeout=60)
            assert standby.returncode == 0


def test_serve_of_a_cluster_a_console_holds_is_refused_naming_the_console(make_cluster,
                                                                         tmp_path):
    """A console serving the cluster it opened renews its lease for as long as it is open:
    `serve -c` does not wait for it as a standby (it waited for ever, saying when the lease
    runs out), but says who holds it and what to do, in one line, as for a pool."""
    cluster = make_cluster(nodes=2, replicas=2)
    command = f"blockfold console -c {cluster.path}"
    term = Terminal(tmp_path, f"cd {ROOT} && {sys.executable} -m console console -c"
                              f" {cluster.path}")
    try:
        term.wait_for("Overview", 30)
        pid = api.service_pid(cluster.path)
        for args in (["serve"], ["nbd", "serve", "--listen", "127.0.0.1:0"]):
            refused = run_cli("-c", cluster.path, *args)
            assert (refused.returncode, refused.stdout_text, refused.stderr_text) == (
                1, "", f"blockfold: error: cluster {cluster.path} is held by a console (pid"
                       f" {pid}, `{command}`): quit it, or start `serve` first and consoles"
                       " go through it\n"), args
        term.keys("q")
        assert term.exit_code() == 0
    finally:
        term.close()
    served = Served(["-c", str(cluster.path)])      # once it quit: at once, as ever
    served.stop()


def test_node_fail_says_how_many_blocks_would_have_no_reachable_copy(make_cluster, tmp_path):
    cluster = make_cluster(nodes=3, replicas=1)         # every block on one node alone
    image(tmp_path / "golden.raw", 2)
    run_cli("-c", cluster.path, "vm", "import", "golden", tmp_path / "golden.raw", check=True)
    held = {n["name"]: n["live_blocks"] for n in cli_json("-c", cluster.path, "node", "ls")}
    assert held["node1"] > 0
    lost = f"{held['node1']:,} blocks ({formats.size(held['node1'] * 4096)})"
    # On a terminal it asks, saying so; no: nothing is done.
    term = Terminal(tmp_path, f"cd {ROOT} && {sys.executable} -m console -c {cluster.path}"
                    " node fail node1")
    try:
        shown = term.wait_for("[y/N]")
        assert f"Fail node node1? Its process is killed. {lost} would have no reachable copy." \
            in shown
        term.keys("n", "Enter")
        assert term.exit_code() == 1 and "not failed" in term.screen()
    finally:
        term.close()
    assert all(n["running"] for n in cli_json("cluster", "status", cluster.path)["nodes"])
    # Without a terminal, a line of stdin answers: "n" is no (it was taken as yes: the node
    # was killed); no line at all refuses, naming -y.
    done = run_cli("-c", cluster.path, "node", "fail", "node1", input=b"n\n")
    assert done.returncode == 1 and done.stderr_text.endswith("[y/N] n\nnot failed\n")
    done = run_cli("-c", cluster.path, "node", "fail", "node1")
    assert (done.returncode, done.stderr_text) == (
        2, "blockfold: error: node fail not confirmed: stdin is not a terminal and gave no"
           " answer; pass -y to confirm from a script\n")
    assert all(n["running"] for n in cli_json("cluster", "status", cluster.path)["nodes"])
    # --yes goes on, and says what it cost; through a service too.
    s = Served(["-c", str(cluster.path)])
    try:
        done = run_cli("-c", cluster.path, "node", "fail", "node2", "--yes", check=True)
        assert done.stdout_text == (f"failed node2. {held['node2']:,} blocks"
                                    f" ({formats.size(held['node2'] * 4096)}) have no reachable"
                                    " copy\n")
    finally:
        s.stop()
    assert cli_json("-c", cluster.path, "node", "fail", "node1", "-y") == {
        "failed": "node1", "unreachable_blocks": held["node1"], "event_recorded": None}


def test_a_fail_that_leaves_no_write_majority_warns_and_is_still_recorded(make_cluster,
                                                                           tmp_path):
    # Failing node3 after node2 said "failed node3", and its event was never recorded: it was
    # committed after the kill, and 1 of 3 nodes could not take it. Nothing said that writes
    # would be refused from then on.
    cluster = make_cluster(nodes=3, replicas=2)
    image(tmp_path / "golden.raw", 1)
    s = Served(["-c", str(cluster.path)])
    try:
        run_cli("-c", cluster.path, "vm", "import", "golden", tmp_path / "golden.raw",
                check=True)
        done = run_cli("-c", cluster.path, "node", "fail", "node2", "-y", check=True)
        assert done.stdout_text == "failed node2\n"        # 2 of 3 left: writes go on
        # Healed first, so no block is only on node3 and the question has no count of them
        # (whether the healer had run by then made the question differ from run to run).
        run_cli("-c", cluster.path, "heal", "--wait", check=True)
        term = Terminal(tmp_path, f"cd {ROOT} && {sys.executable} -m console -c {cluster.path}"
                        " node fail node3")
        try:
            shown = " ".join(term.wait_for("[y/N]").split())
            assert ("Fail node node3? Its process is killed. Writes will be refused: 1 of 3"
                    " nodes left, writes need 2. [y/N]") in shown
            term.keys("n", "Enter")
            assert term.exit_code() == 1
        finally:
            term.close()
        done = run_cli("-c", cluster.path, "node", "fail", "node3", "-y", check=True)
        assert done.stdout_text == ("failed node3. Writes are refused: 1 of 3 nodes left,"
                                    " writes need 2\n")
        assert done.stderr_text == ""
        told = [e["message"] for e in cli_json("-c", cluster.path, "events")
                if e["kind"] == "node"]
        assert told == ["failed node3 (its process killed)", "failed node2 (its process killed)"]
        # With writes refused already, the event of the next fail cannot be recorded: said so.
        done = run_cli("-c", cluster.path, "node", "fail", "node1", "-y", "--json", check=True)
        said = json.loads(done.stdout)
        assert said["failed"] == "node1" and said["event_recorded"] is False
        assert done.stderr_text.startswith("blockfold: the event was not recorded: a catalog"
                                           " change reached 1 of 3 nodes; it needs 2")
    finally:
        s.kill()


def test_cluster_down_is_refused_while_a_service_serves_the_cluster(make_cluster):
    cluster = make_cluster(nodes=2, replicas=2)
    s = Served(["-c", str(cluster.path)])
    try:
        refused = run_cli("cluster", "down", cluster.path)
        assert refused.returncode == 1
        assert refused.stderr_text == (f"blockfold: error: cluster {cluster.path} is served by pid"
                                       f" {s.proc.pid}: stop that service first, or give"
                                       " --force\n")
        assert all(n["running"] for n in cli_json("cluster", "status", cluster.path)["nodes"])
        assert len(cli_json("-c", cluster.path, "node", "ls")) == 2     # still served
        s.stop()
        stopped = cli_json("cluster", "down", cluster.path)     # nothing serves it now
        assert not any(n["running"] for n in stopped["nodes"])
        run_cli("cluster", "up", cluster.path, check=True)
        s = Served(["-c", str(cluster.path)])
        forced = cli_json("cluster", "down", cluster.path, "--force")
        assert not any(n["running"] for n in forced["nodes"])
    finally:
        s.kill()


def test_api_cluster_down_is_refused_while_a_service_serves_the_cluster(make_cluster):
    """The refusal is the API's, so the console and scripts have it as the CLI does: the
    service would go on serving a cluster with no nodes, every call failing."""
    cluster = make_cluster(nodes=1, replicas=1)
    s = Served(["-c", str(cluster.path)])
    try:
        with pytest.raises(BlockfoldError, match=f"^cluster {cluster.path} is served by pid"
                                                 f" {s.proc.pid}: stop that service first"):
            api.cluster_down(cluster.path)
        assert all(n["running"] for n in api.cluster_status(cluster.path)["nodes"])
        assert len(cli_json("-c", cluster.path, "node", "ls")) == 1     # still served
        forced = api.cluster_down(cluster.path, force=True)
        assert forced and not any(n["running"] for n in forced)
    finally:
        s.kill()


def start_admin_node(tmp_path, *extra: str):
    """`node serve` (with `extra` options) whose admin key is alice's and read-only key the
    reader's; HOME holds their keys, a stranger's, and the node's host key in known_hosts.
    Returns the node's process, its port and HOME."""
    data = tmp_path / "admin-node"
    data.mkdir()
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    keys = {name: keygen(home / ".ssh" / name, f"{name}@laptop")
            for name in ("alice", "reader", "stranger")}
    (data / "authorized_keys").write_text("")
    (data / "admin_keys").write_text(keys["alice"])
    (data / "admin_keys_readonly").write_text(keys["reader"])
    node = subprocess.Popen([sys.executable, "-m", "console", "node", "serve", "--data",
                             str(data), "--listen", "127.0.0.1:0", *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    port = node.stdout.readline().split(":")[-1].strip()
    host_key = (data / "host_key.pub").read_text().split()
    (home / ".ssh" / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    return node, port, home


@pytest.fixture
def admin_node(tmp_path, make_cluster):
    """A node relaying the cluster's service to admin keys over SSH; HOME holds alice's key and
    the node's host key in known_hosts, as OpenSSH users have them."""
    cluster = make_cluster(nodes=1, replicas=1)
    node, port, home = start_admin_node(tmp_path, "--cluster", str(cluster.path))

    def as_key(name: str, *args, **kw):
        """`blockfold --service ssh://…` run with HOME's key `name` as the user's own."""
        os.replace(home / ".ssh" / name, home / ".ssh" / "id_ed25519")
        try:
            return run_cli("--service", f"ssh://admin@127.0.0.1:{port}", *args,
                           env={"HOME": str(home)}, **kw)
        finally:
            os.replace(home / ".ssh" / "id_ed25519", home / ".ssh" / name)

    yield cluster, as_key, home
    node.terminate()
    node.wait(10)


def test_a_cli_elsewhere_goes_through_the_node_to_the_service(admin_node, tmp_path):
    cluster, as_key, home = admin_node
    proc = as_key("alice", "vm", "ls")
    assert proc.returncode == 1 and proc.stderr_text.count("\n") == 1
    assert "no service runs the cluster" in proc.stderr_text
    s = Served(["-c", str(cluster.path)])
    try:
        image(tmp_path / "golden.raw", 1)
        as_key("alice", "vm", "import", "golden", tmp_path / "golden.raw", check=True)
        as_key("alice", "vm", "clone", "golden", "desk", check=True)
        assert "desk" in as_key("reader", "vm", "ls", check=True).stdout_text
        proc = as_key("reader", "vm", "rm", "desk", "-y")
        assert proc.returncode == 1 and "read-only" in proc.stderr_text
        proc = as_key("stranger", "vm", "ls")
        assert proc.returncode == 1 and "no key of yours is accepted" in proc.stderr_text
        (home / ".ssh" / "known_hosts").write_text("")
        proc = as_key("alice", "vm", "ls")
        assert proc.returncode == 1 and "host key" in proc.stderr_text
        jobs = {(j["actor"], j["kind"]) for j in cli_json("-c", cluster.path, "job", "ls")}
        assert ("alice@laptop", "import_image") in jobs
    finally:
        s.stop()
    with cluster.open(readonly=True) as admin:
        actors = {(e.actor, e.kind) for e in admin.events(20)}
    assert {("alice@laptop", "import"), ("alice@laptop", "clone")} <= actors
    with pytest.raises(BlockfoldError, match="not a service address"):
        connect_service("http://nowhere")


def test_a_cli_through_a_node_started_without_cluster_is_told_how_to_start_it(tmp_path):
    """As `ssh` to such a node is told it serves no console, `--service` is told it serves no
    admin service and how to start one that does; the reader's key too."""
    node, port, home = start_admin_node(tmp_path)
    try:
        for key in ("alice", "reader"):
            os.replace(home / ".ssh" / key, home / ".ssh" / "id_ed25519")
            proc = run_cli("--service", f"ssh://admin@127.0.0.1:{port}", "vm", "ls",
                           env={"HOME": str(home)})
            os.replace(home / ".ssh" / "id_ed25519", home / ".ssh" / key)
            assert proc.returncode == 1 and proc.stderr_text.count("\n") == 1, proc.stderr_text
            assert "this node serves no admin service: it was started without --cluster" \
                in proc.stderr_text
            assert "`blockfold node serve --cluster DIR`" in proc.stderr_text
    finally:
        node.terminate()
        node.wait(10)


def test_restoring_a_running_node_or_failing_a_stopped_one_is_refused(make_cluster):
    # `node restore` of a node that runs said "restored" and, through a service, logged an
    # event claiming its process restarted (and `node fail` of a dead node, one claiming it was
    # killed); both are refused now, and only a real restart or kill is an event.
    cluster = make_cluster(nodes=3, replicas=2)
    pid = cluster.pid("node2")
    done = run_cli("-c", cluster.path, "node", "restore", "node2")
    assert done.returncode == 1, done.stdout_text
    assert done.stderr_text.startswith("blockfold: error: node node2 is running (pid ")
    assert done.stderr_text.strip().endswith("nothing to restore")
    assert cluster.pid("node2") == pid
    s = Served(["-c", str(cluster.path)])
    try:
        done = run_cli("-c", cluster.path, "node", "restore", "node2")
        assert done.returncode == 1 and "nothing to restore" in done.stderr_text
        assert not [e for e in cli_json("-c", cluster.path, "events") if e["kind"] == "node"]
        run_cli("-c", cluster.path, "node", "fail", "node2", "-y", check=True)
        again = run_cli("-c", cluster.path, "node", "fail", "node2", "-y")
        assert again.returncode == 1
        assert again.stderr_text == ("blockfold: error: node node2 is not running: nothing to"
                                     " fail (`node restore node2` starts it)\n")
        row = cli_json("-c", cluster.path, "node", "restore", "node2")
        assert row["pid"] == cluster.pid("node2") != pid and row["address"]
        told = [e["message"] for e in cli_json("-c", cluster.path, "events")
                if e["kind"] == "node" and e["message"].startswith(("failed", "restored"))]
        assert told == ["restored node2 (its process restarted)",
                        "failed node2 (its process killed)"]
    finally:
        s.kill()


def test_a_down_node_shows_no_stale_or_zero_figures_anywhere(make_cluster, tmp_path):
    # A CLI that never saw the node said CAPACITY 0 B and BLOCKS 0 (a full disk, an empty node);
    # a service that had seen it showed its last heartbeat's. Neither is known: a dash in both.
    cluster = make_cluster(nodes=3, replicas=2)
    image(tmp_path / "a.raw", 1, seed=31)
    run_cli("-c", cluster.path, "vm", "import", "a", tmp_path / "a.raw", check=True)
    run_cli("-c", cluster.path, "node", "fail", "node2", "-y", check=True)

    def shown():
        rows = {n["name"]: n for n in cli_json("-c", cluster.path, "node", "ls")}
        table = run_cli("-c", cluster.path, "node", "ls", check=True).stdout_text
        cells = {x.split()[0]: re.split(r"\s{2,}", x) for x in table.splitlines()[1:]}
        line, up = cells["node2"], cells["node1"]
        return rows, line, up

    s = None
    try:
        for _ in range(2):                 # the CLI alone, then through a service that saw it
            rows, line, up = shown()
            assert rows["node2"]["state"] == "down"
            assert (rows["node2"]["capacity_bytes"], rows["node2"]["blocks"],
                    rows["node2"]["latency_ms"]) == (None, None, None)
            assert line[2:6] == ["down", "—", "—", "—"]
            # (heal may copy onto node1 between the two calls: a count, not the same one)
            assert up[2] == "up" and re.fullmatch(r"[1-9][\d,]*", up[5])
            if s is None:
                run_cli("-c", cluster.path, "node", "restore", "node2", check=True)
                s = Served(["-c", str(cluster.path)])
                deadline = time.monotonic() + 20      # until the service has seen node2 up
                while time.monotonic() < deadline and any(
                        n["blocks"] is None for n in cli_json("-c", cluster.path, "node", "ls")):
                    time.sleep(0.2)
                run_cli("-c", cluster.path, "node", "fail", "node2", "-y", check=True)
    finally:
        if s is not None:
            s.kill()


def test_cluster_up_on_a_cluster_of_another_shape_is_refused(make_cluster):
    # `cluster up C --nodes 5 --replicas 3` on a 3-node R=2 cluster said "3 of 3 local nodes
    # running" and exit 0: the user believed in 5 nodes and 3 copies of every block.
    cluster = make_cluster(nodes=3, replicas=2)
    before = (cluster.path / "cluster.json").read_text()
    run_cli("cluster", "down", cluster.path, check=True)
    done = run_cli("cluster", "up", cluster.path, "--nodes", "5", "--replicas", "3")
    assert done.returncode == 1, done.stdout_text
    assert done.stderr_text.startswith(f"blockfold: error: cluster {cluster.path} exists (3 local"
                                       " nodes, R=2,")
    assert "--nodes 5 --replicas 3 would only apply to a new cluster" in done.stderr_text
    assert not any(n["running"] for n in cli_json("cluster", "down", cluster.path)["nodes"])
    assert (cluster.path / "cluster.json").read_text() == before
    # the same shape, or none given, starts it as before
    rows = cli_json("cluster", "up", cluster.path, "--nodes", "3", "--replicas", "2")["nodes"]
    assert [r["running"] for r in rows] == [True] * 3


@pytest.mark.parametrize("size", ["4100", "520"])
def test_cluster_up_with_a_block_size_a_pool_refuses_is_refused_with_nothing_made(tmp_path, size):
    # 4100: the cluster was made, then its nodes died at start on a numpy ValueError, and every
    # later `cluster up` failed the same way; 520 made a cluster a local pool would refuse.
    path = tmp_path / "cl"
    try:
        done = run_cli("cluster", "up", path, "--block-size", size)
        assert done.returncode == 2         # a usage error, as for every bad block size
        assert done.stderr_text.endswith(
            f"blockfold: error: argument --block-size: not a block size: '{size}' (a power of two"
            " from 4K to 64K: 4K, 8K, 16K, 32K or 64K)\n")
        assert not path.exists()
    finally:
        if path.exists():               # what a failing run started is stopped
            run_cli("cluster", "down", path)


def test_a_node_already_in_the_cluster_cannot_join_again_under_another_address(make_cluster):
    # `cluster add C localhost:PORT` of node1 (127.0.0.1:PORT) joined it as node4: its copies
    # counted twice, heal dropped "extra" ones, and blocks were left with one real copy.
    cluster = make_cluster(nodes=3, replicas=2)
    before = (cluster.path / "cluster.json").read_text()
    port = cluster.config.node("node1").address.rpartition(":")[2]
    done = run_cli("cluster", "add", cluster.path, f"localhost:{port}")
    assert done.returncode == 1, done.stdout_text
    assert done.stderr_text.startswith(f"blockfold: error: the node at localhost:{port} is"
                                       f" node1 (127.0.0.1:{port}): same host key")
    assert (cluster.path / "cluster.json").read_text() == before


@pytest.mark.parametrize("text", ["[]", "null", "{}", '{"nodes": [1]}', '{"nodes": 3}',
                                  '{"nodes": "x"}',
                                  '{"replicas": 2, "bogus": 1}', '{"lease_seconds": 0}',
                                  '{"lease_seconds": "10"}', '{"lease_seconds": 1e-9}',
                                  '{"lease_seconds": 1e9}', '{"lease_seconds": NaN}',
                                  '{"nodes": [{"name": "n", "address": "a:1", "weight": 0}]}',
                                  '{"nodes": [{"name": "n", "address": "a:1", "memory": "1G"}]}',
                                  '{"etcd": {"endpoints": "http://x:1", "prefix": "/p/"}}'])
def test_a_cluster_file_that_is_not_one_is_one_clear_line(tmp_path, text):
    # `[]` in cluster.json gave "internal error: TypeError: pop expected at most 1 argument".
    (tmp_path / "cluster.json").write_text(text)
    for args in (("-c", tmp_path, "node", "ls"), ("cluster", "up", tmp_path)):
        done = run_cli(*args)
        assert done.returncode == 1
        assert done.stderr_text.startswith(f"blockfold: error: {tmp_path / 'cluster.json'} is"
                                           " not a cluster file: "), done.stderr_text
        assert len(done.stderr_text.splitlines()) == 1
        assert "NodeEntry" not in done.stderr_text      # an internal name (verifier)


@pytest.mark.parametrize("field, value, allowed", [
    ("replicas", "two", "a whole number, 1 or more"), ("replicas", -1, "a whole number, 1 or more"),
    ("replicas", True, "a whole number, 1 or more"),
    ("min_replicas", 3, "a whole number from 1 to replicas"),
    ("block_size", 1000, "a power of two from 4096 to 65536"),
    ("repair_delay", -1, "a number of seconds, 0 or more"),
    ("repair_delay", "soon", "a number of seconds, 0 or more")])
def test_a_bad_field_in_cluster_json_is_named_with_what_it_may_be(tmp_path, field, value,
                                                                 allowed):
    # replicas "two" was taken as is: `cluster up` and `vm ls` ran, and `stats` ended in
    # "internal error: TypeError"; -1 was taken silently.
    text = {"replicas": 2, "min_replicas": 2, field: value,
            "nodes": [{"name": "node1", "address": "127.0.0.1:1"},
                      {"name": "node2", "address": "127.0.0.1:2"}]}
    (tmp_path / "cluster.json").write_text(json.dumps(text))
    for args in (("-c", tmp_path, "stats"), ("-c", tmp_path, "vm", "ls"),
                 ("cluster", "up", tmp_path)):
        done = run_cli(*args)
        assert (done.returncode, done.stderr_text) == (
            1, f"blockfold: error: {tmp_path / 'cluster.json'} is not a cluster file: {field}"
               f" must be {allowed}, not {value!r}\n")


def test_a_node_whose_data_directory_is_gone_is_named(make_cluster, tmp_path):
    # It said "No such file or directory: …/node.log".
    cluster = make_cluster(nodes=3, replicas=2)
    run_cli("-c", cluster.path, "node", "fail", "node3", "-y", check=True)
    data = cluster.config.node("node3").data
    os.rename(data, tmp_path / "moved")
    done = run_cli("-c", cluster.path, "node", "restore", "node3")
    assert done.returncode == 1
    assert done.stderr_text == (f"blockfold: error: node node3 cannot start: its data directory"
                                f" {data} is gone\n")


def test_vm_write_streams_onto_a_cluster_whole_or_not_at_all(make_cluster, tmp_path):
    """`vm write` on a cluster the CLI opens: a file with holes at an unaligned offset, then
    stdin, land as they are (holes overwrite with zeros); a stream one byte too long changes
    nothing."""
    cluster = make_cluster(nodes=2, replicas=2)
    data = bytearray(image(tmp_path / "a.raw", 4, seed=5))
    run_cli("-c", cluster.path, "vm", "import", "a", tmp_path / "a.raw", check=True)
    patch = tmp_path / "patch.raw"
    with open(patch, "wb") as f:
        f.truncate(3 << 20)
        f.seek(1 << 20)
        f.write(b"\x77" * 5000)
    offset = 4096 * 7 + 123
    run_cli("-c", cluster.path, "vm", "write", "a", "--offset", offset, patch, check=True)
    data[offset:offset + (3 << 20)] = patch.read_bytes()
    run_cli("-c", cluster.path, "vm", "write", "a", "--offset", 10, "-", input=b"hi" * 3000,
            check=True)
    data[10:6010] = b"hi" * 3000
    # A stream is found too long only at its end: its blocks were stored, and are dropped.
    done = run_cli("-c", cluster.path, "vm", "write", "a", "--offset", len(data) - (3 << 20) + 1,
                   "-", input=patch.read_bytes())
    assert done.returncode == 1 and "nothing written" in done.stderr_text
    with cluster.open(readonly=True) as admin:
        assert admin.read("a", 0, len(data)) == data
        assert [e.kind for e in admin.events()].count("write") == 2
        assert admin.fsck() == []


def test_cluster_up_with_more_nodes_than_a_machine_runs_is_a_usage_error_with_nothing_made(
        tmp_path):
    # --nodes 1000 was accepted: a load of 135 on 2 cores, and cluster up never finished. Then
    # --nodes 65 was refused with exit 1 where --nodes 0 was a usage error (exit 2).
    path = tmp_path / "cl"
    for nodes, why in (("65", "at most 64 local nodes, not 65 ("), ("0", "must be at least 1")):
        done = run_cli("cluster", "up", path, "--nodes", nodes, "--etcd", "none")
        assert done.returncode == 2
        assert done.stderr_text.splitlines()[-1] == (
            f"blockfold: error: argument --nodes: {why}" + (
                "each is a process of its own on this machine; add nodes on other hosts with"
                " `cluster add`)" if nodes == "65" else ""))
        assert not path.exists()


def _node_pids(path) -> set[int]:
    """The node processes running on a data dir under `path`, as /proc shows them."""
    pids = set()
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if (state != "Z" and b"engine.node" in cmdline
                and any(str(path).encode() in a for a in cmdline)):
            pids.add(int(proc.name))
    return pids


def _listens(pid: int) -> bool:
    """Whether process `pid` has a listening TCP socket (a node that is ready)."""
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":           # TCP_LISTEN
                listening.add(f"socket:[{fields[9]}]")
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(fd) in listening:
                return True
        except OSError:
            pass
    return False


def _wait(condition, what: str, up: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert up.poll() is None, f"cluster up ended before {what}"
        assert time.monotonic() < deadline, f"not {what} in 60 s"
        time.sleep(0.02)


def _cluster_up(path, nodes: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "console", "cluster", "up", str(path),
                             "--nodes", str(nodes), "--replicas", "1", "--etcd", "none"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_cluster_up_terminated_while_starting_nodes_stops_them_and_says_so(tmp_path, sig):
    # SIGTERM (timeout, systemd) ended cluster up silently and left every started node running;
    # Ctrl-C said "interrupted" and stopped them.
    path = tmp_path / "cl"
    up = _cluster_up(path, 4)
    try:
        _wait(lambda: len(_node_pids(path)) == 4, "every node's process started", up)
        up.send_signal(sig)
        _, err = up.communicate(timeout=60)
        assert up.returncode == 130
        assert err.decode() == "blockfold: interrupted\n"
        assert _node_pids(path) == set()
        rows = cli_json("cluster", "status", path)["nodes"]
        assert [r["running"] for r in rows] == [False] * 4
    finally:
        up.kill()
        for pid in _node_pids(path):
            os.kill(pid, signal.SIGKILL)


def test_a_cluster_up_killed_while_starting_nodes_leaves_every_running_node_known(tmp_path):
    # Killed (-9) mid-start, cluster up had written no node's pid: `cluster status` called the
    # nodes that ran "stopped" at 127.0.0.1:0, and `cluster down` left them running.
    path = tmp_path / "cl"
    up = _cluster_up(path, 3)
    try:
        _wait(lambda: len(_node_pids(path)) == 3, "every node's process started", up)
        last = path / "nodes" / "node3"
        (stalled,) = [pid for pid in _node_pids(path) if str(last).encode()
                      in Path(f"/proc/{pid}/cmdline").read_bytes()]
        os.kill(stalled, signal.SIGSTOP)    # cluster up waits for its ready line
        _wait(lambda: all(_listens(p) for p in _node_pids(path) - {stalled}),
              "node1 and node2 ready", up)
        up.kill()
        up.wait(10)
        os.kill(stalled, signal.SIGKILL)
        rows = {r["name"]: r for r in cli_json("cluster", "status", path)["nodes"]}
        running = _node_pids(path)
        assert len(running) == 2
        assert {rows["node1"]["pid"], rows["node2"]["pid"]} == running
        assert rows["node1"]["running"] and rows["node2"]["running"]
        assert not rows["node1"]["address"].endswith(":0")
        assert not rows["node3"]["running"]
        cli_json("cluster", "down", path)
        assert _node_pids(path) == set()
    finally:
        up.kill()
        for pid in _node_pids(path):
            os.kill(pid, signal.SIGKILL)


def test_a_full_cluster_answers_no_space_as_a_full_pool_does(make_cluster, tmp_path):
    """RAM nodes with room for about 1,800 blocks each, R=2 over 3: a guest writing past that
    got EIO (its filesystem goes read-only) where a full pool answers ENOSPC (qemu pauses the
    guest until space is freed)."""
    cluster = make_cluster(nodes=3, replicas=2, memory=7 << 20)
    empty = tmp_path / "empty.raw"
    with open(empty, "wb") as f:
        f.truncate(64 << 20)
    with cluster.open() as admin:
        admin.import_image("d", str(empty))
    fill = tmp_path / "fill.raw"
    fill.write_bytes(os.urandom(12 << 20))          # 3,072 blocks, twice: more than 3 nodes hold
    refused = run_cli("-c", cluster.path, "vm", "write", "d", "--offset", "0", fill)
    assert refused.returncode == 1
    assert re.fullmatch(r"blockfold: error: out of space on node node\d \(node is full \(\d+"
                        r" bytes of memory\)\): free some \(vm rm, snapshot-rm\) or add a node"
                        r" \(cluster add\)\n", refused.stderr_text), refused.stderr_text
    s = Served(["-c", str(cluster.path)], "--nbd", "127.0.0.1:0")
    try:
        proc = subprocess.run(["qemu-io", "-f", "raw", "-c", f"write -s {fill} 0 12M",
                               s.uri("d")], capture_output=True, text=True, timeout=120)
        assert "No space left on device" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    finally:
        s.kill()
