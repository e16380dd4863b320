"""Only the admin key gets in, only pinned host keys are trusted, and no frame can crash a node."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import struct

import asyncssh
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from engine import api
from engine.net import rpc

from .conftest import image


def _address(cluster, name="node1"):
    host, _, port = cluster.config.node(name).address.rpartition(":")
    return host, int(port)


async def _session(cluster, key=None, name="node1"):
    host, port = _address(cluster, name)
    conn = await asyncssh.connect(
        host, port, username="blockfold", known_hosts=None, agent_path=None, config=None,
        client_keys=[key or str(cluster.config.admin_key)])
    writer, reader, _ = await conn.open_session(subsystem=rpc.SUBSYSTEM, encoding=None)
    return conn, writer, reader


async def _call(writer, reader, kind, header=None, payload=b""):
    writer.write(rpc.encode(kind, 7, header, payload))
    head = await asyncio.wait_for(reader.readexactly(rpc.HEADER.size), 5)
    kind, _, n = rpc.parse_header(head)
    return kind, rpc.parse_body(await reader.readexactly(n))[0]


def test_unknown_client_key_is_refused(make_cluster, tmp_path):
    cluster = make_cluster(nodes=1, replicas=1, min_replicas=1)
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    with pytest.raises(asyncssh.PermissionDenied):
        asyncio.run(_session(cluster, key=stranger))


def test_a_node_key_is_let_in_only_as_its_line_allows(make_cluster):
    cluster = make_cluster(nodes=1, replicas=1, min_replicas=1)
    keys = cluster.path / "nodes" / "node1" / "authorized_keys"
    line = keys.read_text()
    keys.write_text(f'from="10.9.9.9" {line}')          # read again at the next login
    with pytest.raises(asyncssh.PermissionDenied):
        asyncio.run(_session(cluster))
    keys.write_text(f'from="127.0.0.0/8",restrict {line}')   # no terminal; RPC needs none

    async def hello():
        conn, writer, reader = await _session(cluster)
        try:
            return await _call(writer, reader, rpc.HELLO)
        finally:
            conn.close()

    assert asyncio.run(hello())[1]["name"] == "node1"


def test_mismatching_host_key_is_refused_naming_the_node(make_cluster):
    cluster = make_cluster(nodes=2, replicas=1, min_replicas=1)
    config = cluster.config
    config.nodes[1].host_key = config.nodes[0].host_key      # node2 now "should" be node1
    config.save()
    with api.open_cluster(cluster.path, readonly=True) as admin:
        node2 = next(n for n in admin.nodes() if n.name == "node2")
        assert node2.state == "down"
        assert "node node2" in node2.error and "host key" in node2.error


def test_exec_and_other_subsystems_are_refused_and_a_node_key_gets_no_shell(make_cluster):
    cluster = make_cluster(nodes=1, replicas=1, min_replicas=1)
    host, port = _address(cluster)

    async def attempt():
        async with asyncssh.connect(host, port, username="x", known_hosts=None,
                                    agent_path=None, config=None,
                                    client_keys=[str(cluster.config.admin_key)]) as conn:
            for kwargs in ({"command": "id"}, {"subsystem": "sftp"}):
                with pytest.raises(asyncssh.ChannelOpenError):
                    await conn.open_session(**kwargs)
            # A shell is the console's door: a node key is told in one line that it gets none.
            shell = await conn.run(term_type="xterm")
            assert shell.exit_status == 1 and "node key" in shell.stdout
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.open_connection("127.0.0.1", port)

    asyncio.run(attempt())


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.one_of(
    st.binary(min_size=1, max_size=600),
    st.builds(lambda kind, rid, body: struct.pack("!4sBBxxII", b"BFRP", 1, kind, rid, len(body))
              + body, st.integers(0, 255), st.integers(0, 2**32 - 1), st.binary(max_size=300)),
    st.builds(lambda kind, hdr: rpc.encode(kind, 1, hdr, b"\x00" * 13),
              st.sampled_from(sorted(rpc.REQUESTS)),
              st.dictionaries(st.sampled_from(["n", "start", "holder", "base", "version",
                                               "changes", "seconds"]),
                              st.one_of(st.integers(-5, 10**6), st.text(max_size=5),
                                        st.none(), st.lists(st.integers(), max_size=3)))),
))
def test_garbage_frames_never_crash_a_node(node_cluster, garbage):
    cluster = node_cluster

    async def run():
        conn, writer, reader = await _session(cluster)
        writer.write(garbage)
        try:
            await asyncio.wait_for(reader.read(65536), 0.3)
        except (TimeoutError, asyncssh.Error, OSError):
            pass
        conn.close()
        # A good client is still served.
        conn, writer, reader = await _session(cluster)
        kind, header = await _call(writer, reader, rpc.HELLO)
        conn.close()
        return kind, header

    kind, header = asyncio.run(run())
    assert kind == rpc.REPLY and header["name"] == "node1"


@pytest.fixture(scope="module")
def node_cluster(tmp_path_factory, etcd_url):
    path = tmp_path_factory.mktemp("fuzz") / "cluster"
    api.cluster_up(path, nodes=1, replicas=1, min_replicas=1, etcd=etcd_url or "none")
    from .conftest import Cluster
    yield Cluster(path)
    api.cluster_down(path)


def test_cli_drives_a_cluster(tmp_path, etcd_url):
    import subprocess
    import sys

    def bf(*args, check=True):
        r = subprocess.run([sys.executable, "-m", "console", *args], capture_output=True,
                           stdin=subprocess.DEVNULL, text=True, timeout=60)
        assert not check or r.returncode == 0, r.stderr
        return r

    path = tmp_path / "cl"
    data = image(tmp_path / "a.raw", 1)
    try:
        up = json.loads(bf("cluster", "up", str(path), "--nodes", "3", "--replicas", "2",
                           "--etcd", etcd_url or "none", "--json").stdout)
        assert [n["name"] for n in up["nodes"]] == ["node1", "node2", "node3"]
        assert all(n["pid"] for n in up["nodes"])
        again = json.loads(bf("cluster", "up", str(path), "--json").stdout)   # reuses the dir
        assert again["nodes"] == up["nodes"]
        said = bf("cluster", "up", str(path)).stdout.splitlines()      # for people: a table
        assert said[0].split() == ["NODE", "ADDRESS", "WHERE", "PID"]
        assert said[-1] == f"cluster {path}: 3 of 3 local nodes running"
        bf("-c", str(path), "vm", "import", "a", str(tmp_path / "a.raw"))
        bf("-c", str(path), "node", "fail", "node3", "-y")
        bf("-c", str(path), "vm", "export", "a", str(tmp_path / "out.raw"))
        assert (tmp_path / "out.raw").read_bytes() == data
        nodes = json.loads(bf("-c", str(path), "node", "ls", "--json").stdout)
        assert {n["name"]: n["state"] for n in nodes}["node3"] == "down"
        bf("-c", str(path), "node", "restore", "node3")
        bf("-c", str(path), "heal", "--wait")
        stats = json.loads(bf("-c", str(path), "stats", "--json").stdout)
        assert stats["under_replicated_blocks"] == 0 and len(stats["nodes"]) == 3
        # The fields of an embedded pool's, with None where a figure does not apply.
        assert set(stats) == {f.name for f in dataclasses.fields(api.PoolStats)}
        assert stats["free_slots"] is None and stats["replicas"] == 2
        assert bf("-c", str(path), "fsck").stdout.strip() == "clean"
        r = bf("-c", str(path), "vm", "rm", "nope", "-y", check=False)
        assert r.returncode == 1 and r.stderr.count("\n") == 1
    finally:
        bf("cluster", "down", str(path), check=False)


def test_one_writer_at_a_time(make_cluster):
    cluster = make_cluster(nodes=2, replicas=2)
    with cluster.open() as writer:
        with pytest.raises(api.BlockfoldError, match=r"is in use by .* pid"):
            cluster.open()
        with cluster.open(readonly=True) as reader:     # reads need no lease
            assert reader.vm_names() == writer.vm_names()
    with cluster.open():                                 # released on close
        pass


def test_a_put_cut_off_mid_frame_leaves_nothing_visible(make_cluster):
    cluster = make_cluster(nodes=1, replicas=1, min_replicas=1)
    ids = struct.pack("<4Q", 11, 12, 13, 14)
    frame = rpc.encode(rpc.PUT, 1, {"n": 4}, ids + bytes(range(256)) * 64)

    async def run():
        conn, writer, reader = await _session(cluster)
        writer.write(frame[:len(frame) - 5000])          # the sender dies mid-transfer
        await asyncio.sleep(0.2)
        conn.abort()
        conn, writer, reader = await _session(cluster)
        _, header = await _call(writer, reader, rpc.INVENTORY, {"start": 0})
        conn.close()
        return header

    assert asyncio.run(run())["count"] == 0
