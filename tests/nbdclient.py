"""NBD from the client's side, for tests: `blockfold nbd serve` as a subprocess, real tools, and a
raw-socket client that checks every reply against the NBD specification as it reads it.

The wire format is spelled out here rather than imported, so the tests check the server against
the specification (doc/proto.md of NetworkBlockDevice/nbd) and not against its own constants.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import ROOT

MiB = 1 << 20

NBDMAGIC, IHAVEOPT = 0x4E42444D41474943, 0x49484156454F5054
OPTION_REPLY_MAGIC, REQUEST_MAGIC, REPLY_MAGIC = 0x3E889045565A9, 0x25609513, 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_INFO, OPT_GO = 1, 2, 3, 6, 7
OPT_STRUCTURED_REPLY, OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT = 8, 9, 10
REP_ACK, REP_SERVER, REP_INFO, REP_META_CONTEXT = 1, 2, 3, 4
REP_ERR_UNSUP, REP_ERR_POLICY, REP_ERR_INVALID = 2**31 + 1, 2**31 + 2, 2**31 + 3
REP_ERR_UNKNOWN = 2**31 + 6
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM = 0, 1, 2, 3, 4
CMD_WRITE_ZEROES, CMD_BLOCK_STATUS = 6, 7
FLAG_READ_ONLY, FLAG_SEND_FLUSH, FLAG_SEND_TRIM, FLAG_SEND_WRITE_ZEROES = 2, 4, 32, 64
FLAG_SEND_FUA, FLAG_SEND_DF, FLAG_CAN_MULTI_CONN = 8, 128, 256
CMD_FLAG_FUA, CMD_FLAG_NO_HOLE, CMD_FLAG_DF, CMD_FLAG_REQ_ONE = 1, 2, 4, 8
REPLY_FLAG_DONE = 1
REPLY_TYPE_NONE, REPLY_TYPE_OFFSET_DATA, REPLY_TYPE_OFFSET_HOLE = 0, 1, 2
REPLY_TYPE_BLOCK_STATUS, REPLY_TYPE_ERROR, REPLY_TYPE_ERROR_OFFSET = 5, 2**15 + 1, 2**15 + 2
STATE_HOLE, STATE_ZERO = 1, 2
EPERM, EIO, EINVAL, ENOSPC = 1, 5, 22, 28


def tool(*args, timeout=60) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(map(str, args)), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args[0]} failed ({proc.returncode}): {proc.stderr}"
    return proc


class Server:
    """`blockfold -p POOL nbd serve --listen 127.0.0.1:0` (-c: a cluster's) as a subprocess."""

    def __init__(self, pool_dir: Path, *extra: str, cluster: bool = False, preexec_fn=None,
                 env: dict[str, str] | None = None):
        """`env`: variables set for the server on top of this process's."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "console", "-c" if cluster else "-p", str(pool_dir), "nbd",
             "serve",
             "--listen", "127.0.0.1:0", *extra],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
            preexec_fn=preexec_fn, env={**os.environ, **(env or {})})
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("ready 127.0.0.1:"):
            self.proc.kill()
            raise AssertionError(f"no ready line: {line!r} {self.proc.communicate()[1]}")
        self.port = int(line.split(":")[1])

    def uri(self, name: str) -> str:
        return f"nbd://127.0.0.1:{self.port}/{name}"

    def stop(self) -> str:
        """SIGTERM: must flush, close the pool cleanly and exit 0. Returns its stderr."""
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, err
        return err

    def kill(self) -> None:
        self.proc.kill()
        self.proc.communicate(timeout=30)


@contextmanager
def servers(pool_dir: Path):
    """Yields start(*extra) -> Server; every server still running is stopped (cleanly) after."""
    started: list[Server] = []

    def start(*extra, **kw) -> Server:
        started.append(Server(pool_dir, *extra, **kw))
        return started[-1]

    try:
        yield start
    finally:        # a test that failed leaves no server running either
        for s in started:
            if s.proc.poll() is None:
                s.stop()


@dataclass
class Reply:
    """One transmission reply as read: the error (0: success), its message (structured only),
    READ data, BLOCK_STATUS extents as (length, flags) and the context id they were sent for."""
    error: int = 0
    message: str = ""
    data: bytes = b""
    extents: list[tuple[int, int]] = field(default_factory=list)
    context: int | None = None


class RawClient:
    """Speaks NBD byte by byte, to send what no well-behaved client would. Every reply is checked
    against the specification as it is read (an AssertionError names what is wrong)."""

    def __init__(self, port: int, timeout: float = 10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.cookie = 0
        self.structured = False

    def recv(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise EOFError(f"connection closed after {len(data)} of {n} bytes")
            data += chunk
        return data

    def closed_by_server(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()

    # -- negotiation ----------------------------------------------------------------------------

    def handshake(self) -> None:
        magic, opt, flags = struct.unpack(">QQH", self.recv(18))
        assert (magic, opt) == (NBDMAGIC, IHAVEOPT) and flags & 1, "not fixed newstyle"
        self.sock.sendall(struct.pack(">I", 3))       # fixed newstyle, no zeroes

    def option(self, option: int, data: bytes = b"", magic: int = IHAVEOPT) -> None:
        self.sock.sendall(struct.pack(">QII", magic, option, len(data)) + data)

    def option_reply(self) -> tuple[int, int, bytes]:
        magic, option, kind, length = struct.unpack(">QIII", self.recv(20))
        assert magic == OPTION_REPLY_MAGIC
        return option, kind, self.recv(length)

    def go(self, name: str, option: int = OPT_GO) -> tuple[int, int, int]:
        """NBD_OPT_GO (or INFO); returns (final reply type, export size, transmission flags).
        An error reply's text is kept in `error_text`."""
        encoded = name.encode()
        self.option(option, struct.pack(">I", len(encoded)) + encoded + struct.pack(">H", 0))
        size = flags = None
        while True:
            opt, kind, data = self.option_reply()
            assert opt == option
            if kind == REP_INFO and struct.unpack(">H", data[:2])[0] == 0:
                assert len(data) == 12
                size, flags = struct.unpack(">QH", data[2:])
            elif kind != REP_INFO:
                self.error_text = data.decode(errors="replace") if kind >= 2**31 else ""
                return kind, size, flags

    def ask_structured(self) -> int:
        """NBD_OPT_STRUCTURED_REPLY; returns the reply type (REP_ACK: replies are chunks now)."""
        self.option(OPT_STRUCTURED_REPLY)
        option, kind, data = self.option_reply()
        assert option == OPT_STRUCTURED_REPLY and (kind != REP_ACK or data == b"")
        self.structured = self.structured or kind == REP_ACK
        return kind

    def meta_context(self, option: int, name: str, queries: list[str]
                     ) -> tuple[int, list[tuple[int, str]]]:
        """LIST or SET_META_CONTEXT; returns the final reply type and the (id, name) replies."""
        data = struct.pack(">I", len(name.encode())) + name.encode()
        data += struct.pack(">I", len(queries))
        for q in queries:
            data += struct.pack(">I", len(q.encode())) + q.encode()
        self.option(option, data)
        contexts = []
        while True:
            opt, kind, payload = self.option_reply()
            assert opt == option
            if kind != REP_META_CONTEXT:
                return kind, contexts
            contexts.append((struct.unpack(">I", payload[:4])[0], payload[4:].decode()))

    def connect(self, name: str, structured: bool = False, block_status: bool = False
                ) -> tuple[int, int]:
        """Handshake, structured replies and `base:allocation` if asked, then GO: (size, flags)."""
        self.handshake()
        if structured or block_status:
            assert self.ask_structured() == REP_ACK
        if block_status:
            kind, contexts = self.meta_context(OPT_SET_META_CONTEXT, name, ["base:allocation"])
            assert kind == REP_ACK and [c[1] for c in contexts] == ["base:allocation"]
        kind, size, flags = self.go(name)
        assert kind == REP_ACK
        return size, flags

    # -- transmission ---------------------------------------------------------------------------

    def request(self, command: int, offset: int = 0, length: int = 0, payload: bytes = b"",
                flags: int = 0, magic: int = REQUEST_MAGIC) -> int:
        self.cookie += 1
        self.sock.sendall(struct.pack(">IHHQQI", magic, flags, command, self.cookie, offset,
                                      length) + payload)
        return self.cookie

    def read_reply(self, cookie: int, command: int, offset: int = 0, length: int = 0) -> Reply:
        """The reply to request `cookie` (simple or structured), checked against the spec."""
        head = self.recv(4)
        (magic,) = struct.unpack(">I", head)
        if magic == REPLY_MAGIC:
            error, got = struct.unpack(">IQ", self.recv(12))
            assert got == cookie, f"reply for cookie {got}, expected {cookie}"
            assert not self.structured or command != CMD_READ, "a simple reply to a READ"
            data = self.recv(length) if command == CMD_READ and error == 0 else b""
            return Reply(error, data=data)
        assert magic == STRUCTURED_REPLY_MAGIC, f"bad reply magic {magic:#x}"
        assert self.structured, "a structured reply without negotiating them"
        return self._structured(head, cookie, command, offset, length)

    def _structured(self, head: bytes, cookie: int, command: int, offset: int, length: int
                    ) -> Reply:
        reply = Reply()
        pieces: dict[int, bytes] = {}
        statuses = 0
        while True:
            flags, kind, got, size = struct.unpack(">HHQI", self.recv(16))
            payload = self.recv(size)
            assert got == cookie, f"chunk for cookie {got}, expected {cookie}"
            if kind & 0x8000:
                assert kind in (REPLY_TYPE_ERROR, REPLY_TYPE_ERROR_OFFSET), f"chunk type {kind}"
                error, mlen = struct.unpack(">IH", payload[:6])
                assert error != 0 and 6 + mlen <= size
                reply.error, reply.message = error, payload[6:6 + mlen].decode()
            elif kind == REPLY_TYPE_NONE:
                assert size == 0 and flags & REPLY_FLAG_DONE
            elif kind in (REPLY_TYPE_OFFSET_DATA, REPLY_TYPE_OFFSET_HOLE):
                assert command == CMD_READ, f"content chunk for command {command}"
                (at,) = struct.unpack(">Q", payload[:8])
                if kind == REPLY_TYPE_OFFSET_DATA:
                    assert size >= 9
                    piece = payload[8:]
                else:
                    assert size == 12
                    piece = bytes(struct.unpack(">I", payload[8:])[0])
                assert offset <= at and at + len(piece) <= offset + length, "outside the read"
                assert all(at + len(piece) <= o or o + len(b) <= at for o, b in pieces.items()), \
                    "overlapping content chunks"
                pieces[at] = piece
            elif kind == REPLY_TYPE_BLOCK_STATUS:
                assert command == CMD_BLOCK_STATUS and size >= 12 and (size - 4) % 8 == 0
                statuses += 1
                reply.context = struct.unpack(">I", payload[:4])[0]
                reply.extents = [struct.unpack(">II", payload[i:i + 8])
                                 for i in range(4, size, 8)]
                assert all(n > 0 for n, _ in reply.extents), "an extent of 0 bytes"
            else:
                raise AssertionError(f"unknown chunk type {kind}")
            if flags & REPLY_FLAG_DONE:
                break
            (magic,) = struct.unpack(">I", self.recv(4))
            assert magic == STRUCTURED_REPLY_MAGIC, f"bad chunk magic {magic:#x}"
        if command == CMD_READ and not reply.error:
            data = b"".join(pieces[at] for at in sorted(pieces))
            assert len(data) == length and (not pieces or min(pieces) == offset), \
                "content chunks do not cover the read"
            reply.data = data
        if command == CMD_BLOCK_STATUS and not reply.error:
            assert statuses == 1, f"{statuses} BLOCK_STATUS chunks for one context"
        return reply

    def reply(self, cookie: int, data_length: int = 0) -> tuple[int, bytes]:
        """(error, data) of a simple reply; a READ's data is `data_length` bytes."""
        r = self.read_reply(cookie, CMD_READ if data_length else CMD_WRITE, 0, data_length)
        return r.error, r.data

    def read(self, offset: int, length: int, flags: int = 0) -> tuple[int, bytes]:
        r = self.read_reply(self.request(CMD_READ, offset, length, flags=flags), CMD_READ,
                            offset, length)
        return r.error, r.data

    def write(self, offset: int, data: bytes, flags: int = 0) -> int:
        return self.read_reply(self.request(CMD_WRITE, offset, len(data), data, flags),
                               CMD_WRITE).error

    def simple(self, command: int, offset: int = 0, length: int = 0, flags: int = 0) -> int:
        return self.read_reply(self.request(command, offset, length, flags=flags), command).error

    def block_status(self, offset: int, length: int, flags: int = 0) -> Reply:
        return self.read_reply(self.request(CMD_BLOCK_STATUS, offset, length, flags=flags),
                               CMD_BLOCK_STATUS, offset, length)
