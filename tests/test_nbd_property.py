"""A hypothesis state machine drives one `blockfold nbd serve` from raw sockets: random valid and
invalid requests (offsets, lengths, flags, commands), simple and structured replies, block status,
pipelined batches, bad magics and disconnects mid-request, against a byte model of each VM.

Every reply is checked as it is read (tests/nbdclient.py checks the framing against the spec):
its error is the one the spec asks for, READ data is what the model holds, BLOCK_STATUS marks
exactly the all-zero blocks as holes. The server never dies, and a connection it did not close
stays in step. At the end the server stops cleanly, fsck is clean, and the pool holds the model.
"""

from __future__ import annotations

import random
import struct

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, invariant, precondition, rule,
                                 run_state_machine_as_test)

from engine.api import LocalAdmin
from tests.conftest import run_cli
from tests.nbdclient import (CMD_BLOCK_STATUS, CMD_DISC, CMD_FLAG_DF, CMD_FLAG_FUA,
                             CMD_FLAG_NO_HOLE, CMD_FLAG_REQ_ONE, CMD_FLUSH, CMD_READ, CMD_TRIM,
                             CMD_WRITE, CMD_WRITE_ZEROES, EINVAL, ENOSPC, FLAG_SEND_DF,
                             OPT_SET_META_CONTEXT, REP_ACK, REP_ERR_INVALID, REQUEST_MAGIC,
                             STATE_HOLE, STATE_ZERO, MiB, RawClient, Reply, Server)

BS = 4096
MAX_PAYLOAD = 32 * MiB
# VM -> size: two pages of block table and a bit, a clone of it, and three blocks and a bit.
SIZES = {"base": 2 * 512 * BS + 5000, "desk": 2 * 512 * BS + 5000, "small": 3 * BS + 100}
COMMANDS = [CMD_READ, CMD_WRITE, CMD_FLUSH, CMD_TRIM, CMD_WRITE_ZEROES, CMD_BLOCK_STATUS]
ALLOWED = {CMD_READ: CMD_FLAG_FUA, CMD_WRITE: CMD_FLAG_FUA, CMD_FLUSH: CMD_FLAG_FUA,
           CMD_TRIM: CMD_FLAG_FUA, CMD_WRITE_ZEROES: CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
           CMD_BLOCK_STATUS: CMD_FLAG_FUA | CMD_FLAG_REQ_ONE}
PATTERNS = [bytes([i]) * BS for i in (1, 2)] + [bytes(BS)]      # equal blocks: dedup


class Conn:
    def __init__(self, client: RawClient, vm: str, structured: bool, status: bool, flags: int):
        self.client, self.vm, self.structured, self.status, self.flags = \
            client, vm, structured, status, flags


def offsets(size: int):
    edges = [0, 1, BS - 1, BS, size - BS, size - 1, size, size + 1, 2**63]
    return st.one_of(st.integers(0, size + BS), st.integers(size - 3 * BS, size + BS),
                     st.sampled_from([e for e in edges if e >= 0]))


LENGTHS = st.one_of(st.integers(0, 3 * BS), st.sampled_from([0, 1, BS - 1, BS, BS + 1, 64 << 10,
                                                             MiB, MAX_PAYLOAD + 1]))
FLAGS = st.one_of(st.just(0), st.sampled_from([CMD_FLAG_FUA, CMD_FLAG_DF, CMD_FLAG_NO_HOLE,
                                               CMD_FLAG_REQ_ONE, 1 << 5, 1 << 15]),
                  st.integers(0, 0xFFFF))


class NBDMachine(RuleBasedStateMachine):
    """One server for every run. Each run starts from the VMs' first contents (`initial`) and its
    teardown puts them back, so that every run, and hypothesis's replay of it, sees the same."""

    def __init__(self, server: Server, initial: dict[str, bytes]):
        super().__init__()
        self.server = server
        self.initial = initial
        self.model = {name: bytearray(data) for name, data in initial.items()}
        self.conns: list[Conn] = []

    def pick(self, data) -> Conn:
        return self.conns[data.draw(st.integers(0, len(self.conns) - 1))]

    # -- connections ----------------------------------------------------------------------------

    @precondition(lambda self: len(self.conns) < 3)
    @rule(vm=st.sampled_from(sorted(SIZES)), structured=st.sampled_from([True, True, False]),
          status=st.sampled_from(["this", "this", "none", "other"]))
    def connect(self, vm, structured, status):
        """Negotiates structured replies or not, and `base:allocation` for this VM, for another
        one (block status is then refused) or not at all."""
        c = RawClient(self.server.port)
        c.handshake()
        if status != "none" and not structured:     # it needs structured replies first
            kind, contexts = c.meta_context(OPT_SET_META_CONTEXT, vm, ["base:allocation"])
            assert (kind, contexts) == (REP_ERR_INVALID, [])
        if structured:
            assert c.ask_structured() == REP_ACK
            if status != "none":
                other = next(name for name in sorted(SIZES) if name != vm)
                kind, contexts = c.meta_context(OPT_SET_META_CONTEXT,
                                                vm if status == "this" else other,
                                                ["x-other:thing", "base:allocation"])
                assert kind == REP_ACK and [n for _, n in contexts] == ["base:allocation"]
        kind, size, flags = c.go(vm)
        assert kind == REP_ACK and size == SIZES[vm]
        assert bool(flags & FLAG_SEND_DF) == structured
        self.conns.append(Conn(c, vm, structured, structured and status == "this", flags))

    @precondition(lambda self: self.conns)
    @rule(data=st.data(), how=st.sampled_from(["close", "disc", "header", "payload",
                                               "bad-magic"]))
    def hang_up(self, data, how):
        """The client leaves: cleanly, mid-header, mid-payload (nothing of that write may land)
        or by breaking the framing (the server drops it)."""
        conn = self.pick(data)
        self.conns.remove(conn)
        c = conn.client
        header = struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_WRITE, 1, 0, 2 * BS)
        if how == "disc":
            c.request(CMD_DISC)
            assert c.closed_by_server()
        elif how == "header":
            c.sock.sendall(header[:data.draw(st.integers(1, len(header) - 1))])
        elif how == "payload":
            c.sock.sendall(header + b"\xee" * data.draw(st.integers(0, 2 * BS - 1)))
        elif how == "bad-magic":
            c.request(CMD_READ, 0, BS, magic=0x12345678)
            assert c.closed_by_server()
        c.close()

    # -- requests -------------------------------------------------------------------------------

    @precondition(lambda self: self.conns)
    @rule(data=st.data(), command=st.one_of(st.sampled_from(COMMANDS), st.integers(5, 64)),
          length=LENGTHS, flags=FLAGS, fill=st.sampled_from(["random", "zeros", "pattern"]))
    def request(self, data, command, length, flags, fill):
        conn = self.pick(data)
        offset = data.draw(offsets(SIZES[conn.vm]))
        if command == CMD_WRITE and length > MAX_PAYLOAD:
            length = MAX_PAYLOAD      # a 32 MiB payload is sent; larger ones: test_nbd.py
        payload = self.payload(data, fill, offset, length) if command == CMD_WRITE else b""
        self.check(conn, command, offset, length, flags, payload, self.send(
            conn, command, offset, length, flags, payload))

    @precondition(lambda self: self.conns)
    @rule(data=st.data(), n=st.integers(2, 6))
    def pipeline(self, data, n):
        """Several requests sent at once, then their replies read: the server answers in order."""
        conn = self.pick(data)
        size = SIZES[conn.vm]
        sent = []
        for _ in range(n):
            command = data.draw(st.sampled_from(COMMANDS))
            offset = data.draw(st.integers(0, size - 1))
            length = data.draw(st.integers(1, min(2 * BS, size - offset)))
            payload = self.payload(data, "random", offset, length) if command == CMD_WRITE \
                else b""
            flags = CMD_FLAG_FUA if data.draw(st.booleans()) else 0
            sent.append((command, offset, length, flags, payload,
                         self.send(conn, command, offset, length, flags, payload)))
        for command, offset, length, flags, payload, cookie in sent:
            self.check(conn, command, offset, length, flags, payload, cookie)

    @precondition(lambda self: any(c.status for c in self.conns))
    @rule(data=st.data(), flags=st.sampled_from([0, CMD_FLAG_REQ_ONE]))
    def block_status(self, data, flags):
        conn = data.draw(st.sampled_from([c for c in self.conns if c.status]))
        size = SIZES[conn.vm]
        offset = data.draw(st.one_of(st.integers(0, size - 1), st.sampled_from([0, BS - 1])))
        length = data.draw(st.integers(1, size - offset))
        self.check(conn, CMD_BLOCK_STATUS, offset, length, flags, b"",
                   self.send(conn, CMD_BLOCK_STATUS, offset, length, flags, b""))

    def payload(self, data, fill: str, offset: int, length: int) -> bytes:
        if fill == "zeros":
            return bytes(length)
        if fill == "pattern":
            block = data.draw(st.sampled_from(PATTERNS))
            return (block * (length // BS + 2))[offset % BS:offset % BS + length]
        return random.Random(data.draw(st.integers(0, 2**32))).randbytes(length)

    @staticmethod
    def send(conn: Conn, command, offset, length, flags, payload) -> int:
        return conn.client.request(command, offset, length, payload, flags)

    def check(self, conn: Conn, command, offset, length, flags, payload, cookie) -> None:
        """Reads the reply to `cookie`, checks it, and applies a successful change to the model."""
        reply = conn.client.read_reply(cookie, command, offset, length)
        expected = self.expected_error(conn, command, offset, length, flags)
        assert reply.error == expected, f"{command=} {offset=} {length=} {flags=:#x}: " \
                                        f"{reply.error} {reply.message!r}, expected {expected}"
        if expected:
            assert not conn.structured or reply.message, "a structured error without a message"
            return
        model = self.model[conn.vm]
        if command == CMD_READ:
            assert reply.data == model[offset:offset + length]
        elif command == CMD_WRITE:
            model[offset:offset + length] = payload
        elif command in (CMD_TRIM, CMD_WRITE_ZEROES):
            model[offset:offset + length] = bytes(length)
        elif command == CMD_BLOCK_STATUS:
            self.check_extents(reply, model, offset, length, flags)

    def expected_error(self, conn: Conn, command, offset, length, flags) -> int:
        allowed = dict(ALLOWED)
        if conn.structured:
            allowed[CMD_READ] |= CMD_FLAG_DF
        if command in (CMD_READ, CMD_WRITE) and length > MAX_PAYLOAD:
            return EINVAL
        if command not in allowed or flags & ~allowed[command]:
            return EINVAL
        if command == CMD_FLUSH:
            return 0
        if command == CMD_BLOCK_STATUS and not conn.status:
            return EINVAL
        if offset + length > SIZES[conn.vm]:
            return ENOSPC if command in (CMD_WRITE, CMD_WRITE_ZEROES) else EINVAL
        if command == CMD_BLOCK_STATUS and length == 0:
            return EINVAL
        return 0

    @staticmethod
    def check_extents(reply: Reply, model: bytearray, offset: int, length: int, flags: int):
        """The spec's rules for BLOCK_STATUS, and ours: holes are exactly the all-zero blocks,
        extents change state at every boundary and break only at block boundaries."""
        assert reply.context != 0 and reply.extents
        if flags & CMD_FLAG_REQ_ONE:
            assert len(reply.extents) == 1 and reply.extents[0][0] <= length
        assert sum(n for n, _ in reply.extents[:-1]) < length
        at = offset
        for i, (n, state) in enumerate(reply.extents):
            assert state in (0, STATE_HOLE | STATE_ZERO)
            assert i == 0 or state != reply.extents[i - 1][1], "two extents in the same state"
            end = at + n
            assert end <= len(model)
            assert end % BS == 0 or end in (offset + length, len(model)), f"extent ends at {end}"
            for block in range(at // BS * BS, end, BS):
                zeros = not any(model[block:block + BS])
                assert zeros == bool(state), f"block at {block}: zeros={zeros}, state={state}"
            at = end

    # -- invariants -----------------------------------------------------------------------------

    @invariant()
    def server_alive(self):
        assert self.server.proc.poll() is None, "the server died"

    @precondition(lambda self: self.conns)
    @rule(data=st.data())
    def still_in_step(self, data):
        conn = self.pick(data)
        assert conn.client.read(0, BS) == (0, bytes(self.model[conn.vm][:BS]))

    def teardown(self):
        """Closes the connections, then writes the blocks that differ back to `initial`."""
        for conn in self.conns:
            conn.client.close()
        for vm, data in self.initial.items():
            c = RawClient(self.server.port)
            c.connect(vm)
            error, now = c.read(0, len(data))
            assert error == 0
            for offset in range(0, len(data), BS):
                if now[offset:offset + BS] != data[offset:offset + BS]:
                    assert c.write(offset, data[offset:offset + BS]) == 0
            c.close()


def test_random_requests_against_a_byte_model(pool_dir, tmp_path):
    rng = random.Random(11)
    base = rng.randbytes(300 * BS) + bytes(SIZES["base"] - 300 * BS)
    initial = {"base": base, "desk": base, "small": bytes(BS) + rng.randbytes(SIZES["small"] - BS)}
    with LocalAdmin.open(pool_dir) as admin:
        for name in ("base", "small"):
            (tmp_path / f"{name}.raw").write_bytes(initial[name])
            admin.import_image(name, str(tmp_path / f"{name}.raw"))
        admin.clone("base", "desk")
    server = Server(pool_dir)
    try:
        run_state_machine_as_test(
            lambda: NBDMachine(server, initial),
            settings=settings(max_examples=60, stateful_step_count=30, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow,
                                                     HealthCheck.data_too_large]))
    finally:
        log = server.stop()
    assert "internal error" not in log and "Traceback" not in log
    assert run_cli("-p", pool_dir, "fsck", check=True).stdout_text.strip() == "clean"
    with LocalAdmin.open(pool_dir, readonly=True) as admin:
        for name, data in initial.items():
            assert admin.read(name, 0, len(data)) == data, f"{name} was not put back"
