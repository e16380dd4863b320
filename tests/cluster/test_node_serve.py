"""`blockfold node serve` refuses what it cannot serve in one line, and changes nothing."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys

import pytest


def serve(data, *extra, module=("console", "node", "serve")):
    return subprocess.run([sys.executable, "-m", *module, "--data", str(data), *extra],
                          capture_output=True, text=True, timeout=30)


@pytest.fixture
def data(tmp_path):
    d = tmp_path / "node"
    d.mkdir()
    return d


@pytest.mark.parametrize("module", [("console", "node", "serve"), ("engine.node",)])
def test_a_node_no_client_could_log_in_to_is_refused(data, module):
    r = serve(data, "--listen", "127.0.0.1:0", module=module)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == f"blockfold: error: {data / 'authorized_keys'} is missing: no client" \
                       " could log in\n"
    assert list(data.iterdir()) == []


def test_a_block_size_other_than_the_nodes_is_refused(data):
    (data / "authorized_keys").write_text("")
    (data / "node.json").write_text('{"name": "n", "block_size": 4096}')
    r = serve(data, "--listen", "127.0.0.1:0", "--block-size", "8192")
    assert r.returncode == 1
    assert r.stderr == f"blockfold: error: {data} holds blocks of 4096 bytes, not 8192\n"
    assert sorted(p.name for p in data.iterdir()) == ["authorized_keys", "node.json"]


def test_a_block_size_a_pool_refuses_is_refused_for_a_new_node(data):
    # 4100 was an internal error (a numpy ValueError) once the node's store was made.
    (data / "authorized_keys").write_text("")
    r = serve(data, "--listen", "127.0.0.1:0", "--block-size", "4100")
    assert r.returncode == 1
    assert r.stderr == ("blockfold: error: bad block size 4100: use a power of two from 4096 to"
                        " 65536\n")
    assert sorted(p.name for p in data.iterdir()) == ["authorized_keys"]


@pytest.mark.parametrize("listen", ["nowhere", "127.0.0.1:", ":22", "127.0.0.1:99999"])
def test_a_bad_listen_address_is_a_usage_error(data, listen):
    r = serve(data, "--listen", listen)
    assert r.returncode == 2 and "not HOST:PORT" in r.stderr


@pytest.mark.parametrize("module", [("console", "node", "serve"), ("engine.node",)])
@pytest.mark.parametrize("args,message", [
    # `python -m engine.node` (how `cluster up` starts a node) took 0 as none: a node on disk,
    # of the default block size.
    (["--memory", "0"], "argument --memory: must be above 0: 0"),
    (["--memory", "lots"], "argument --memory: bad size 'lots'"),
    (["--block-size", "0"], "argument --block-size: must be at least 1"),
    (["--block-size", "4K"], "argument --block-size: not a whole number: '4K'"),
    (["--etcd", "http://127.0.0.1:2379"], "give --etcd and --etcd-prefix together"),
])
def test_a_bad_value_is_the_same_usage_error_from_either_command_line(data, module, args,
                                                                      message):
    r = serve(data, "--listen", "127.0.0.1:0", *args, module=module)
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert f": error: {message}" in r.stderr.splitlines()[-1], r.stderr
    assert list(data.iterdir()) == []


def test_a_port_in_use_is_one_line(data):
    (data / "authorized_keys").write_text("")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = serve(data, "--listen", f"127.0.0.1:{port}")
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert r.stderr.startswith(f"blockfold: error: cannot listen on 127.0.0.1:{port}: ")


@pytest.mark.parametrize("module", [("console", "node", "serve"), ("engine.node",)])
@pytest.mark.parametrize("memory", ["0", "0.1", "lots", "-1G"])
def test_a_memory_of_no_bytes_is_a_usage_error(data, module, memory):
    # engine.node (what `cluster up` starts) took --memory 0 and kept the blocks on disk.
    (data / "authorized_keys").write_text("")
    r = serve(data, "--listen", "127.0.0.1:0", f"--memory={memory}", module=module)
    assert r.returncode == 2 and "argument --memory: " in r.stderr, r.stderr
    assert sorted(p.name for p in data.iterdir()) == ["authorized_keys"]


def test_a_damaged_catalog_replica_is_named_with_what_to_do(data):
    # A traceback ending in "sqlite3.DatabaseError: database disk image is malformed" named no
    # file and no way out.
    (data / "authorized_keys").write_text("")
    db = sqlite3.connect(data / "catalog.db")
    db.execute("CREATE TABLE t (x)")
    db.executemany("INSERT INTO t VALUES (?)", [(b"x" * 1000,)] * 200)
    db.commit()
    db.close()
    with open(data / "catalog.db", "r+b") as f:
        f.truncate(10000)
    r = serve(data, "--listen", "127.0.0.1:0")
    path = data / "catalog.db"
    assert r.returncode == 1 and r.stderr == (
        f"blockfold: error: the node's catalog replica {path} is damaged (database disk image is"
        f" malformed): move it aside (mv {path} {path}.damaged) and start the node again: it"
        " starts with no replica and is caught up from the other nodes\n")
