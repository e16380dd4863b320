"""The NBD export, driven by real clients: qemu-img, nbdinfo, nbdcopy, fio, and a raw socket.

Every test but the error mapping's runs `blockfold nbd serve` as a subprocess on 127.0.0.1, port 0.
"""

from __future__ import annotations

import json
import random
import signal
import socket
import struct
from pathlib import Path

import pytest

from engine.api import LocalAdmin, create_pool
from engine.errors import (BlockfoldError, CorruptBlockError, NoSpaceError, OutOfRangeError,
                           ReadOnlyError)
from engine.nbd.transmission import nbd_error
from tests.conftest import run_cli
from tests.nbdclient import (CMD_DISC, CMD_FLAG_DF, CMD_FLAG_FUA, CMD_FLAG_REQ_ONE, CMD_FLUSH,
                             CMD_READ, CMD_TRIM, CMD_WRITE, CMD_WRITE_ZEROES, EINVAL, EIO, ENOSPC,
                             EPERM, FLAG_CAN_MULTI_CONN, FLAG_READ_ONLY, FLAG_SEND_DF,
                             FLAG_SEND_FLUSH, FLAG_SEND_FUA, FLAG_SEND_TRIM,
                             FLAG_SEND_WRITE_ZEROES, OPT_ABORT,
                             OPT_GO, OPT_INFO, OPT_LIST, OPT_LIST_META_CONTEXT,
                             OPT_SET_META_CONTEXT, OPT_STRUCTURED_REPLY, REP_ACK, REP_ERR_INVALID,
                             REP_ERR_UNKNOWN, REP_ERR_UNSUP, REP_SERVER, REQUEST_MAGIC, STATE_HOLE,
                             STATE_ZERO, MiB, RawClient, Server, tool)


def fsck(pool_dir: Path) -> str:
    return run_cli("-p", pool_dir, "fsck", check=True).stdout_text.strip()


def pool_stats(pool_dir: Path) -> dict:
    return json.loads(run_cli("-p", pool_dir, "stats", "--json", check=True).stdout_text)


def make_vm(pool_dir: Path, name: str, image: Path, clone: str | None = None) -> None:
    with LocalAdmin.open(pool_dir) as admin:
        admin.import_image(name, str(image))
        if clone:
            admin.clone(name, clone)


def sparse_file(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def image_with_duplicates(path: Path, size: int, seed: int = 1) -> Path:
    """A quarter of random blocks, the same blocks again, then a hole: what dedup should fold."""
    data = random.Random(seed).randbytes(size // 4)
    with open(path, "wb") as f:
        f.write(data + data)
        f.truncate(size)
    return path


@pytest.fixture
def golden(pool_dir, tmp_path) -> Path:
    """VM `golden` (2 MiB of random data, the same again, a 4 MiB hole) and its clone `desk`."""
    image = image_with_duplicates(tmp_path / "golden.raw", 8 * MiB)
    make_vm(pool_dir, "golden", image, clone="desk")
    return image


# -- real clients ------------------------------------------------------------------------------

def test_qemu_img_converts_an_image_into_a_vm_with_inline_dedup(pool_dir, server, tmp_path):
    make_vm(pool_dir, "blank", sparse_file(tmp_path / "blank.raw", 8 * MiB))
    source = image_with_duplicates(tmp_path / "source.raw", 8 * MiB, seed=7)
    s = server()
    tool("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", source, s.uri("blank"))
    assert "identical" in tool("qemu-img", "compare", "-f", "raw", "-F", "raw", source,
                               s.uri("blank")).stdout
    s.stop()
    run_cli("-p", pool_dir, "vm", "export", "blank", tmp_path / "out.raw", check=True)
    assert (tmp_path / "out.raw").read_bytes() == source.read_bytes()
    stats = pool_stats(pool_dir)
    assert stats["physical_bytes"] * 2 <= stats["logical_bytes"]     # every block was there twice


def test_nbdinfo_lists_every_vm(pool_dir, golden, server):
    s = server()
    listing = json.loads(tool("nbdinfo", "--list", "--json", f"nbd://127.0.0.1:{s.port}").stdout)
    exports = {e["export-name"]: e for e in listing["exports"]}
    assert set(exports) == {"golden", "desk"}
    for e in exports.values():
        assert e["export-size"] == 8 * MiB
        assert e["can_flush"] and e["can_fua"] and e["can_trim"] and e["can_zero"]
        assert not e["is_read_only"]


def test_nbdcopy_exports_a_clone_byte_exact_while_other_clients_hang(pool_dir, golden, server,
                                                                     tmp_path):
    s = server()
    idle_negotiating = socket.create_connection(("127.0.0.1", s.port))
    idle_transmitting = RawClient(s.port)
    idle_transmitting.connect("golden")
    tool("nbdcopy", s.uri("desk"), tmp_path / "desk.raw")      # several connections at once
    assert (tmp_path / "desk.raw").read_bytes() == golden.read_bytes()
    idle_negotiating.close()
    idle_transmitting.close()


def test_fio_random_writes_and_reads_verify_on_two_connections(pool_dir, golden, server):
    s = server()
    proc = tool("fio", "--name=verify", "--ioengine=nbd", f"--uri={s.uri('desk')}",
                "--rw=randwrite", "--bsrange=1k-64k", "--size=2M", "--iodepth=8",
                "--numjobs=2", "--offset_increment=2M",        # two writers, side by side
                "--verify=crc32c", "--verify_fatal=1", "--verify_backlog=64", "--do_verify=1",
                "--verify_state_save=0", "--output-format=json", timeout=120)
    jobs = json.loads(proc.stdout[proc.stdout.index("{"):])["jobs"]    # after a banner line
    assert len(jobs) == 2
    for job in jobs:
        assert job["error"] == 0
        assert job["write"]["io_bytes"] >= 2 * MiB and job["read"]["io_bytes"] > 0
    s.stop()
    assert fsck(pool_dir) == "clean"


def test_trim_and_write_zeroes_read_back_zeros_and_free_space(pool_dir, golden, server):
    assert pool_stats(pool_dir)["unique_blocks"] > 100
    s = server()
    c = RawClient(s.port)
    c.connect("golden")
    assert c.simple(CMD_TRIM, 0, MiB) == 0
    assert c.simple(CMD_WRITE_ZEROES, MiB, 2 * MiB - 1000) == 0     # ends inside a block
    assert c.simple(CMD_FLUSH) == 0
    kept = 3 * MiB - 1000
    assert c.read(0, 8 * MiB) == (0, bytes(kept) + golden.read_bytes()[kept:])
    c.close()
    s.stop()
    run_cli("-p", pool_dir, "vm", "rm", "-y", "desk", check=True)    # it kept golden's old blocks
    stats = pool_stats(pool_dir)
    assert stats["physical_bytes"] <= MiB + 4096         # what is left of golden's 2 MiB


def test_discarding_what_reads_as_zeros_adds_no_metadata(pool_dir, server, tmp_path):
    """What mkfs.ext4 and fstrim do to every new desktop: TRIM and WRITE_ZEROES over the whole of
    a never-written 64 GiB VM, 1 GiB at a time, leave the catalog as it was (issue 13, case 4)."""
    make_vm(pool_dir, "empty", sparse_file(tmp_path / "empty.raw", 64 << 30))
    def catalog_bytes() -> int:      # the database and its write-ahead log, if any
        return sum(f.stat().st_size for f in pool_dir.glob("catalog.db*"))

    before = catalog_bytes()
    s = server()
    c = RawClient(s.port)
    c.connect("empty")
    for gib in range(64):
        command = CMD_TRIM if gib % 2 else CMD_WRITE_ZEROES
        assert c.simple(command, gib << 30, 1 << 30) == 0
    assert c.simple(CMD_FLUSH) == 0
    assert c.read((64 << 30) - MiB, MiB) == (0, bytes(MiB))
    c.close()
    s.stop()
    assert catalog_bytes() - before < 64 * 1024     # no page of nothing but INHERIT
    assert pool_stats(pool_dir)["unique_blocks"] == 0
    assert fsck(pool_dir) == "clean"


def test_flushed_and_fua_writes_survive_kill_9(pool_dir, golden, server, tmp_path):
    rng = random.Random(3)
    expected = bytearray(golden.read_bytes())
    s = server()
    c = RawClient(s.port)
    c.connect("golden")
    for _ in range(64):
        offset, data = rng.randrange(0, 6 * MiB), rng.randbytes(rng.choice([4096, 1000, 70000]))
        assert c.write(offset, data) == 0
        expected[offset:offset + len(data)] = data
    assert c.simple(CMD_FLUSH) == 0
    assert c.write(6 * MiB + 5, b"\xcd" * 5000, flags=CMD_FLAG_FUA) == 0     # durable on its own
    expected[6 * MiB + 5:6 * MiB + 5005] = b"\xcd" * 5000
    assert c.write(7 * MiB, b"\xab" * 8192) == 0       # not flushed: no promise either way
    s.kill()
    c.close()

    s = server()
    tool("nbdcopy", s.uri("golden"), tmp_path / "after.raw")
    after = (tmp_path / "after.raw").read_bytes()
    assert after[:7 * MiB] == bytes(expected[:7 * MiB])
    s.stop()
    assert fsck(pool_dir) == "clean"


def test_a_flush_on_one_connection_makes_another_ones_writes_durable(pool_dir, golden, server):
    s = server()
    writer, flusher = RawClient(s.port), RawClient(s.port)
    _, flags = writer.connect("golden")
    flusher.connect("golden")
    assert flags & FLAG_CAN_MULTI_CONN
    assert writer.write(3 * MiB, b"\x77" * 12288) == 0
    assert flusher.simple(CMD_FLUSH) == 0
    s.kill()
    writer.close()
    flusher.close()
    with LocalAdmin.open(pool_dir, readonly=True) as admin:
        assert admin.read("golden", 3 * MiB, 12288) == b"\x77" * 12288


def test_read_only_export_offers_no_changes_and_refuses_them_with_eperm(pool_dir, golden, server):
    s = server("--read-only")
    seen = json.loads(tool("nbdinfo", "--json", s.uri("golden")).stdout)["exports"][0]
    assert seen["is_read_only"] and seen["can_flush"] and seen["can_multi_conn"]
    assert not (seen["can_trim"] or seen["can_zero"] or seen["can_fua"]), seen  # as nbdkit -r
    c = RawClient(s.port)
    _, flags = c.connect("golden")
    assert flags & FLAG_READ_ONLY and flags & FLAG_SEND_FLUSH
    assert not flags & (FLAG_SEND_FUA | FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES)
    # A client that sends them all the same is refused.
    assert c.write(0, b"x" * 4096) == EPERM
    assert c.simple(CMD_TRIM, 0, 4096) == EPERM
    assert c.simple(CMD_WRITE_ZEROES, 0, 4096) == EPERM
    assert c.read(0, 4096) == (0, golden.read_bytes()[:4096])
    assert c.simple(CMD_FLUSH) == 0


# -- structured replies and block status ----------------------------------------------------------

def test_metadata_contexts_are_negotiated_as_the_spec_says(pool_dir, golden, server):
    s = server()
    c = RawClient(s.port)
    c.handshake()
    # SET needs structured replies first; LIST may come before them (the spec allows either)
    assert c.meta_context(OPT_SET_META_CONTEXT, "golden", ["base:allocation"]) \
        == (REP_ERR_INVALID, [])
    assert c.go("golden", OPT_INFO)[2] & FLAG_SEND_DF == 0
    assert c.ask_structured() == REP_ACK
    assert c.go("golden", OPT_INFO)[2] & FLAG_SEND_DF
    base = [(0, "base:allocation")]              # LIST replies carry context id 0
    assert c.meta_context(OPT_LIST_META_CONTEXT, "golden", []) == (REP_ACK, base)
    assert c.meta_context(OPT_LIST_META_CONTEXT, "golden", ["base:"]) == (REP_ACK, base)
    assert c.meta_context(OPT_LIST_META_CONTEXT, "golden", ["qemu:dirty-bitmap:b"]) \
        == (REP_ACK, [])                             # another namespace: ignored
    assert c.meta_context(OPT_LIST_META_CONTEXT, "golden", ["nocolon"])[0] == REP_ERR_INVALID
    assert c.meta_context(OPT_SET_META_CONTEXT, "nosuchvm", ["base:allocation"])[0] \
        == REP_ERR_UNKNOWN
    assert c.meta_context(OPT_SET_META_CONTEXT, "golden", ["base:"]) == (REP_ACK, [])
    c.option(OPT_SET_META_CONTEXT, b"\x00\x00\x00\x06golden\x00\x00\x00\x02")   # 2 queries: none
    assert c.option_reply()[1] == REP_ERR_INVALID
    kind, contexts = c.meta_context(OPT_SET_META_CONTEXT, "golden", ["base:allocation"])
    assert kind == REP_ACK and [name for _, name in contexts] == ["base:allocation"]
    assert contexts[0][0] != 0
    assert c.go("golden")[0] == REP_ACK
    assert c.block_status(0, 4096).context == contexts[0][0]
    c.close()

    other = RawClient(s.port)                        # contexts set for golden, then GO desk
    other.handshake()
    other.ask_structured()
    other.meta_context(OPT_SET_META_CONTEXT, "golden", ["base:allocation"])
    assert other.go("desk")[0] == REP_ACK
    reply = other.block_status(0, 4096)
    assert reply.error == EINVAL and "base:allocation" in reply.message
    assert other.read(0, 4096) == (0, golden.read_bytes()[:4096])      # still in step
    other.close()


def test_block_status_shows_the_holes_of_a_vm_and_its_clone(pool_dir, golden, server):
    """golden: 4 MiB of data (2 MiB twice), then a 4 MiB hole; desk is its clone."""
    s = server()
    c = RawClient(s.port)
    c.connect("desk", block_status=True)
    DATA, HOLE = 0, STATE_HOLE | STATE_ZERO
    assert c.block_status(0, 8 * MiB).extents == [(4 * MiB, DATA), (4 * MiB, HOLE)]
    assert c.block_status(0, 4096, CMD_FLAG_REQ_ONE).extents == [(4096, DATA)]
    assert c.block_status(0, 8 * MiB, CMD_FLAG_REQ_ONE).extents == [(4 * MiB, DATA)]
    # unaligned: the last extent runs on to its block's end, unless REQ_ONE keeps it within
    assert c.block_status(4 * MiB + 100, 5000).extents == [(8092, HOLE)]
    assert c.block_status(4 * MiB + 100, 5000, CMD_FLAG_REQ_ONE).extents == [(5000, HOLE)]
    assert c.block_status(4 * MiB - 100, 200).extents == [(100, DATA), (4096, HOLE)]

    # writes, zeroes and trims change the clone's map, and never its golden image's
    assert c.write(6 * MiB, b"\x01" * 4096) == 0
    assert c.simple(CMD_WRITE_ZEROES, 0, 8192) == 0
    assert c.simple(CMD_TRIM, MiB, MiB) == 0
    assert c.write(3 * MiB, bytes(4096)) == 0        # zeros written: a hole too
    assert c.block_status(0, 8 * MiB).extents == [
        (8192, HOLE), (MiB - 8192, DATA), (MiB, HOLE), (MiB, DATA), (4096, HOLE),
        (MiB - 4096, DATA), (2 * MiB, HOLE), (4096, DATA), (2 * MiB - 4096, HOLE)]
    golden_map = RawClient(s.port)
    golden_map.connect("golden", block_status=True)
    assert golden_map.block_status(0, 8 * MiB).extents == [(4 * MiB, DATA), (4 * MiB, HOLE)]
    for bad in ((8 * MiB, 1), (0, 8 * MiB + 1), (0, 0)):
        reply = c.block_status(*bad)
        assert reply.error == EINVAL and reply.message
    golden_map.close()
    c.close()


def test_structured_reads_are_one_data_chunk_and_errors_carry_a_message(pool_dir, golden,
                                                                         server):
    s = server()
    data = golden.read_bytes()
    c = RawClient(s.port)
    size, flags = c.connect("golden", structured=True)
    assert flags & FLAG_SEND_DF
    assert c.read(100, 10000) == (0, data[100:10100])
    assert c.read(5 * MiB, 70000, CMD_FLAG_DF) == (0, data[5 * MiB:5 * MiB + 70000])
    assert c.read(0, 32 * MiB, CMD_FLAG_DF)[0] == EINVAL        # past the end
    assert c.read(4096, 0) == (0, b"")                          # an empty reply: NONE chunk
    for offset, length, flags in ((size - 10, 20, 0), (0, 4096, 0x100), (0, 33 * MiB, 0)):
        reply = c.read_reply(c.request(CMD_READ, offset, length, flags=flags), CMD_READ,
                             offset, length)
        assert reply.error == EINVAL and reply.message
    reply = c.read_reply(c.request(CMD_WRITE, size - 1, 2, b"ab"), CMD_WRITE)
    assert reply.error == ENOSPC and "past the end" in reply.message
    assert c.write(0, b"\x07" * 5000) == 0 and c.simple(CMD_FLUSH) == 0    # simple on success
    assert c.read(0, 5000) == (0, b"\x07" * 5000)
    c.close()


def test_engine_errors_map_to_nbd_errors():
    assert nbd_error(CorruptBlockError("VM golden: the block at byte 4096 is corrupt", address=7,
                                       offset=4096)) == EIO
    assert nbd_error(NoSpaceError("no space")) == ENOSPC
    assert nbd_error(ReadOnlyError("read-only")) == EPERM
    assert nbd_error(OutOfRangeError("outside")) == EINVAL
    assert nbd_error(BlockfoldError("anything else")) == EIO


def test_a_rotten_block_is_an_io_error_naming_the_offset(pool_dir, golden, server):
    with LocalAdmin.open(pool_dir) as admin:
        victim = int(admin.pool.addresses("golden", 3, 1)[0])
    with open(pool_dir / "blocks.dat", "r+b") as f:
        f.seek(victim * 4096 + 17)
        f.write(b"\xff\x00\xff")
    s = server()
    simple, structured = RawClient(s.port), RawClient(s.port)
    simple.connect("golden")
    structured.connect("golden", structured=True)
    assert simple.read(3 * 4096, 4096)[0] == EIO
    reply = structured.read_reply(structured.request(CMD_READ, 3 * 4096, 4096), CMD_READ,
                                  3 * 4096, 4096)
    assert reply.error == EIO and "golden" in reply.message and "12288" in reply.message
    assert simple.read(0, 4096) == (0, golden.read_bytes()[:4096])      # the rest is served


# -- bad input from a raw socket ---------------------------------------------------------------

def assert_still_serving(s: Server, expected: bytes, offset: int = 0) -> None:
    c = RawClient(s.port)
    c.connect("golden")
    assert c.read(offset, len(expected)) == (0, expected)
    c.close()


def test_bad_handshakes_get_errors_and_the_server_keeps_serving(pool_dir, golden, server):
    s = server()
    first_block = golden.read_bytes()[:4096]

    c = RawClient(s.port)
    c.handshake()
    c.option(99)
    assert c.option_reply()[:2] == (99, REP_ERR_UNSUP)
    c.option(5)                                          # STARTTLS: this server has no TLS
    assert c.option_reply()[1] == REP_ERR_UNSUP
    c.option(OPT_STRUCTURED_REPLY, b"junk")              # takes no data
    assert c.option_reply()[1] == REP_ERR_INVALID
    c.option(OPT_LIST, b"junk")
    assert c.option_reply()[1] == REP_ERR_INVALID
    c.option(OPT_GO, b"\x00\x00\x00\x40ab")               # name length runs past the data
    assert c.option_reply()[1] == REP_ERR_INVALID
    assert c.go("nosuchvm")[0] == REP_ERR_UNKNOWN
    assert c.go("nosuchvm", OPT_INFO)[0] == REP_ERR_UNKNOWN
    kind, size, flags = c.go("golden", OPT_INFO)
    assert (kind, size) == (REP_ACK, 8 * MiB) and flags & FLAG_SEND_FLUSH
    c.option(OPT_LIST)
    names = []
    while (reply := c.option_reply())[1] == REP_SERVER:
        names.append(reply[2][4:].decode())
    assert reply[1] == REP_ACK and names == ["desk", "golden"]
    assert c.go("golden")[0] == REP_ACK                   # still usable after all that
    assert c.read(0, 4096) == (0, first_block)
    c.close()

    c = RawClient(s.port)
    c.handshake()
    c.option(OPT_GO, magic=0x1234)
    assert c.closed_by_server()
    assert_still_serving(s, first_block)

    c = RawClient(s.port)
    c.handshake()
    c.option(OPT_ABORT)
    assert c.option_reply()[1] == REP_ACK
    assert c.closed_by_server()

    c = RawClient(s.port)
    c.recv(18)
    c.sock.sendall(struct.pack(">I", 0x80))              # unknown client flag
    assert c.closed_by_server()
    assert_still_serving(s, first_block)
    assert "bad option magic" in s.stop()


def test_bad_requests_get_nbd_errors_and_the_server_keeps_serving(pool_dir, golden, server):
    s = server()
    first_block = golden.read_bytes()[:4096]
    c = RawClient(s.port)
    size, _ = c.connect("golden")
    assert c.read(size - 4096, 8192)[0] == EINVAL          # past the end
    assert c.read(2**63, 4096)[0] == EINVAL
    assert c.write(size - 100, b"x" * 200) == ENOSPC
    assert c.simple(CMD_TRIM, size, 4096) == EINVAL
    # Over the 32 MiB maximum block size: EINVAL, as the spec asks (EOVERFLOW is for DF only).
    assert c.read(0, 33 * MiB)[0] == EINVAL
    assert c.write(0, b"y" * (33 * MiB)) == EINVAL         # the payload is skipped, not applied
    assert c.simple(42, 0, 4096) == EINVAL                  # unknown command
    assert c.reply(c.request(CMD_READ, 0, 4096, flags=0x100))[0] == EINVAL   # unknown flag
    assert c.read(0, 4096) == (0, first_block)             # same connection, still in step
    c.request(CMD_READ, 0, 4096, magic=0xDEADBEEF)
    assert c.closed_by_server()
    assert_still_serving(s, first_block)
    assert "bad request magic" in s.stop()
    assert fsck(pool_dir) == "clean"


def test_export_name_option_enters_transmission_or_drops_the_connection(pool_dir, golden,
                                                                        server):
    s = server()
    c = RawClient(s.port)
    c.handshake()
    c.option(1, b"golden")                                  # NBD_OPT_EXPORT_NAME
    size, flags = struct.unpack(">QH", c.recv(10))          # no zeroes: we asked for none
    assert size == 8 * MiB and flags & FLAG_SEND_FLUSH
    assert c.read(0, 4096) == (0, golden.read_bytes()[:4096])
    c.close()
    c = RawClient(s.port)
    c.handshake()
    c.option(1, b"nosuchvm")                                # cannot be refused: only dropped
    assert c.closed_by_server()
    assert_still_serving(s, golden.read_bytes()[:4096])


def test_a_client_vanishing_mid_write_leaves_the_pool_consistent(pool_dir, golden, server):
    s = server()
    c = RawClient(s.port)
    c.connect("golden")
    c.sock.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_WRITE, 1, 0, MiB)
                   + b"z" * (MiB // 2))
    c.close()
    assert_still_serving(s, golden.read_bytes()[:MiB])
    s.stop()
    assert fsck(pool_dir) == "clean"


def test_disconnect_answers_everything_sent_before_it(pool_dir, golden, server):
    s = server()
    c = RawClient(s.port)
    c.connect("golden")
    cookies = [c.request(CMD_WRITE, i * 4096, 4096, bytes([i]) * 4096) for i in range(1, 33)]
    flush = c.request(CMD_FLUSH)
    c.request(CMD_DISC)
    for cookie in [*cookies, flush]:
        assert c.reply(cookie) == (0, b"")
    assert c.closed_by_server()
    assert_still_serving(s, b"".join(bytes([i]) * 4096 for i in range(1, 33)), offset=4096)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_flushes_and_closes_the_pool_cleanly(pool_dir, golden, server, sig):
    s = server()
    c = RawClient(s.port)
    c.connect("golden")
    assert c.write(5 * MiB, b"\x5a" * 10000) == 0            # acknowledged, never flushed
    s.proc.send_signal(sig)
    assert s.proc.wait(timeout=30) == 0
    c.close()
    with LocalAdmin.open(pool_dir, readonly=True) as admin:
        assert admin.last_rebuild().reason == "open"       # not "crash": it was closed
        assert admin.read("golden", 5 * MiB, 10000) == b"\x5a" * 10000
    assert fsck(pool_dir) == "clean"


# -- the command line --------------------------------------------------------------------------

def test_cli_usage_errors_are_one_line(pool_dir):
    for args, code in ((("nbd",), 2), (("nbd", "serve", "--listen", "nowhere"), 2),
                       (("nbd", "serve", "--listen", "127.0.0.1:99999"), 2)):
        proc = run_cli("-p", pool_dir, *args, check=False)
        assert proc.returncode == code and "Traceback" not in proc.stderr_text
        assert proc.stderr_text.strip().splitlines()[-1].startswith("blockfold: error:")


def test_cli_refuses_a_second_server_and_a_busy_port(pool_dir, golden, server):
    s = server()
    proc = run_cli("-p", pool_dir, "nbd", "serve", "--listen", "127.0.0.1:0", check=False)
    assert proc.returncode == 1 and "is held by a service (pid " in proc.stderr_text
    assert "stop it first (SIGTERM)" in proc.stderr_text
    assert "Traceback" not in proc.stderr_text
    other = pool_dir.parent / "other"
    create_pool(other)
    proc = run_cli("-p", other, "nbd", "serve", "--listen", f"127.0.0.1:{s.port}", check=False)
    assert proc.returncode == 1 and len(proc.stderr_text.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr_text
