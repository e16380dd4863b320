"""The transmission phase of one connection, on a thread of its own.

A blocking loop takes every request already received, performs them in order against the Admin,
and sends their replies together (read data as soon as 256 KiB has piled up). The Admin's calls
block (the pool's lock, fsync), so they never run on the event loop; and keeping a connection's
requests on one thread avoids a loop-to-thread hop per request, which cost more than the pool's
own 4 KiB read (see BENCHMARKS.md, "NBD export").

Replies are simple, or, once structured replies were negotiated, one chunk each: READ data is one
OFFSET_DATA chunk (so NBD_CMD_FLAG_DF always holds), BLOCK_STATUS one BLOCK_STATUS chunk, an error
one ERROR chunk with its message; other successes stay simple replies, as the spec allows.

A request is applied whole or not at all: a write whose payload does not fully arrive never reaches
the Admin, so a client vanishing mid-request leaves the pool as it was.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from ..errors import (BlockfoldError, CorruptBlockError, NoSpaceError, OutOfRangeError,
                      ReadOnlyError)
from . import protocol as p
from .handshake import ClientGone, ProtocolError, Session

BATCH_BYTES = 32 << 20          # payload and read bytes one connection holds in memory at once
RECV_BYTES = 256 << 10
IOV_MAX = 1024                  # buffers one sendmsg() may take (Linux)
SEND_BYTES = 256 << 10          # read data that is sent at once, not held for the batch's end
JOIN_BYTES = 256 << 10          # replies up to this size are copied into one buffer and sent
STATUS_SPAN = 1 << 30           # the most one BLOCK_STATUS reply describes; clients ask on

COMMAND_NAMES = {p.CMD_READ: "READ", p.CMD_WRITE: "WRITE", p.CMD_FLUSH: "FLUSH",
                 p.CMD_TRIM: "TRIM", p.CMD_WRITE_ZEROES: "WRITE_ZEROES",
                 p.CMD_BLOCK_STATUS: "BLOCK_STATUS"}
MODIFYING = (p.CMD_WRITE, p.CMD_TRIM, p.CMD_WRITE_ZEROES)
# FUA is valid on every command (the spec: "even by ignoring the bit").
ALLOWED_FLAGS = {p.CMD_READ: p.CMD_FLAG_FUA, p.CMD_WRITE: p.CMD_FLAG_FUA,
                 p.CMD_FLUSH: p.CMD_FLAG_FUA, p.CMD_TRIM: p.CMD_FLAG_FUA,
                 p.CMD_WRITE_ZEROES: p.CMD_FLAG_FUA | p.CMD_FLAG_NO_HOLE,
                 p.CMD_BLOCK_STATUS: p.CMD_FLAG_FUA | p.CMD_FLAG_REQ_ONE}
# Engine errors and the NBD error each becomes; anything else is EIO.
ENGINE_ERRORS = ((ReadOnlyError, p.EPERM), (OutOfRangeError, p.EINVAL), (NoSpaceError, p.ENOSPC),
                 (CorruptBlockError, p.EIO))


def nbd_error(e: BlockfoldError) -> int:
    """The NBD error value a client gets for an engine error."""
    return next((code for kind, code in ENGINE_ERRORS if isinstance(e, kind)), p.EIO)


class Refusal(Exception):
    """A request refused before reaching the Admin: an NBD error value and a message."""

    def __init__(self, error: int, message: str):
        super().__init__(message)
        self.error = error


@dataclass(slots=True)
class Request:
    cookie: int
    command: int
    flags: int
    offset: int
    length: int
    payload: bytes = b""
    refusal: Refusal | None = None      # already refused while receiving (an oversized length)


class Transmission:
    def __init__(self, server, sock: socket.socket, session: Session):
        self.admin = server.admin
        self.read_only = server.read_only
        self.block_size = server.block_size
        self.log = server.log
        self.sock = sock
        self.session = session
        self.export = session.export
        self.allowed = dict(ALLOWED_FLAGS)
        if session.structured:
            self.allowed[p.CMD_READ] |= p.CMD_FLAG_DF
        self.buffer = bytearray()           # received, not yet parsed

    def run(self) -> None:
        """Until NBD_CMD_DISC or the end of input: take a batch, perform it, send its replies.

        Small replies of a batch go out together, in one system call; once SEND_BYTES have
        piled up they go at once, so the client can send more while the rest is performed.
        Raises ProtocolError (the connection is to be dropped) and OSError.
        """
        while True:
            requests, more = self.receive_batch()
            replies, held = [], 0
            for request in requests:
                reply = self.perform(request)
                replies += reply
                held += len(reply[-1])
                if held >= SEND_BYTES:
                    send_all(self.sock, replies)
                    replies, held = [], 0
            if replies:
                send_all(self.sock, replies)
            if not more:
                return

    # -- performing requests ------------------------------------------------------------------

    def perform(self, r: Request) -> list[bytes]:
        """The reply to one request, as buffers to send in order."""
        name = self.export.name
        try:
            return self._perform(r)
        except Refusal as e:
            return self.failure(r, e.error, str(e))
        except BlockfoldError as e:
            self.log(f"{name}: {e}")
            return self.failure(r, nbd_error(e), str(e))
        except Exception as e:      # noqa: BLE001 - one client's failure must not stop the server
            self.log(f"{name}: internal error: {type(e).__name__}: {e}")
            return self.failure(r, p.EIO, "internal error (logged by the server)")

    def _perform(self, r: Request) -> list[bytes]:
        if r.refusal:
            raise r.refusal
        if r.command not in self.allowed:
            raise Refusal(p.EINVAL, f"unknown command {r.command}")
        command = COMMAND_NAMES[r.command]
        if r.flags & ~self.allowed[r.command]:
            raise Refusal(p.EINVAL, f"flags {r.flags:#x} are not valid for {command}")
        if self.read_only and r.command in MODIFYING:
            raise Refusal(p.EPERM, "the export is read-only")
        if r.command == p.CMD_FLUSH:
            self.admin.flush()
            return [p.simple_reply(r.cookie)]
        if r.command == p.CMD_BLOCK_STATUS and not self.session.context:
            raise Refusal(p.EINVAL, "BLOCK_STATUS needs the base:allocation context set for"
                          " this export")
        size = self.export.size
        if r.offset + r.length > size:
            # as the spec asks: writing past the end is "no space", anything else is invalid
            raise Refusal(p.ENOSPC if r.command in (p.CMD_WRITE, p.CMD_WRITE_ZEROES) else p.EINVAL,
                          f"{command} of {r.length} bytes at {r.offset} runs past the end of"
                          f" {self.export.name} ({size} bytes)")
        if r.command == p.CMD_READ:
            return self.data(r, self.admin.read(self.export.name, r.offset, r.length)
                             if r.length else b"")
        if r.command == p.CMD_BLOCK_STATUS:
            return [self.block_status(r)]
        if r.length:
            if r.command == p.CMD_WRITE:
                self.admin.write(self.export.name, r.offset, r.payload)
            else:
                # TRIM and WRITE_ZEROES alike: the range reads back as zeros and frees its slots.
                # NO_HOLE changes nothing here, as zero blocks never take a slot in the pool.
                self.admin.trim(self.export.name, r.offset, r.length)
            if r.flags & p.CMD_FLAG_FUA:
                self.admin.flush()
        return [p.simple_reply(r.cookie)]

    def block_status(self, r: Request) -> bytes:
        """`base:allocation` from the block tables: HOLE|ZERO where no block is behind the range
        (it reads as zeros), 0 (data) elsewhere. Extents follow block boundaries; without
        REQ_ONE the last one runs on to the end of its block, as the spec allows."""
        if r.length == 0:
            raise Refusal(p.EINVAL, "BLOCK_STATUS of 0 bytes")
        end = r.offset + min(r.length, STATUS_SPAN)
        if not r.flags & p.CMD_FLAG_REQ_ONE:
            end = min(self.export.size, -(-end // self.block_size) * self.block_size)
        extents = self.admin.extents(self.export.name, r.offset, end - r.offset)
        if r.flags & p.CMD_FLAG_REQ_ONE:
            extents = extents[:1]
        return p.block_status_chunk(r.cookie, self.session.context, [
            (e.length, p.STATE_HOLE | p.STATE_ZERO if e.hole else 0) for e in extents])

    def data(self, r: Request, data: bytes) -> list[bytes]:
        """A successful READ's reply: the data last, so that it can be sent without a copy."""
        if not self.session.structured:
            return [p.simple_reply(r.cookie), data]
        if not data:    # an OFFSET_DATA chunk holds at least one byte
            return [p.chunk(r.cookie, p.REPLY_TYPE_NONE)]
        return [p.data_chunk_header(r.cookie, r.offset, len(data)), data]

    def failure(self, r: Request, error: int, message: str) -> list[bytes]:
        if self.session.structured:
            return [p.error_chunk(r.cookie, error, message)]
        return [p.simple_reply(r.cookie, error)]

    # -- receiving ----------------------------------------------------------------------------

    def receive_batch(self) -> tuple[list[Request], bool]:
        """Waits for one request, then takes every further one already received.

        Returns the requests and whether more may follow. A request cut short by the end of input
        is dropped: its client is gone and nothing of it was applied.
        """
        batch: list[Request] = []
        held = 0
        while held < BATCH_BYTES:
            try:
                if not self.fill(p.REQUEST.size, wait=not batch):
                    return batch, True
            except ClientGone:
                return batch, False
            magic, flags, command, cookie, offset, length = p.REQUEST.unpack_from(self.buffer)
            del self.buffer[:p.REQUEST.size]
            if magic != p.REQUEST_MAGIC:
                raise ProtocolError(f"bad request magic {magic:#x}")
            if command == p.CMD_DISC:
                return batch, False
            request = Request(cookie, command, flags, offset, length)
            try:
                if command in (p.CMD_READ, p.CMD_WRITE) and length > p.MAX_PAYLOAD:
                    request.refusal = Refusal(p.EINVAL, f"{COMMAND_NAMES[command]} of {length}"
                                              f" bytes: the most is {p.MAX_PAYLOAD}")
                    if command == p.CMD_WRITE:
                        self.discard(length)        # keeps the stream in step
                elif command == p.CMD_WRITE:
                    request.payload = self.take(length)
            except ClientGone:
                return batch, False
            if command in (p.CMD_READ, p.CMD_WRITE) and not request.refusal:
                held += length
            batch.append(request)
        return batch, True

    def fill(self, need: int, wait: bool) -> bool:
        """Buffers at least `need` bytes; without `wait`, only if they have already arrived."""
        while len(self.buffer) < need:
            try:
                chunk = self.sock.recv(RECV_BYTES, 0 if wait else socket.MSG_DONTWAIT)
            except BlockingIOError:
                return False
            if not chunk:
                raise ClientGone()
            self.buffer += chunk
        return True

    def take(self, n: int) -> bytes:
        """Exactly n bytes of input: what is buffered, then straight from the socket."""
        if len(self.buffer) >= n:
            data = bytes(self.buffer[:n])
            del self.buffer[:n]
            return data
        data = bytearray(n)
        view = memoryview(data)
        have = len(self.buffer)
        view[:have] = self.buffer
        self.buffer.clear()
        while have < n:
            got = self.sock.recv_into(view[have:])
            if not got:
                raise ClientGone()
            have += got
        return data

    def discard(self, n: int) -> None:
        while n:
            if not self.buffer:
                self.fill(1, wait=True)
            step = min(n, len(self.buffer))
            del self.buffer[:step]
            n -= step


def send_all(sock: socket.socket, buffers: list[bytes]) -> None:
    """sendall() for several buffers at once; large ones are not copied into one first."""
    if len(buffers) == 1 or sum(map(len, buffers)) <= JOIN_BYTES:
        sock.sendall(b"".join(buffers))
        return
    views = [memoryview(b) for b in buffers]
    first = 0
    while first < len(views):
        sent = sock.sendmsg(views[first:first + IOV_MAX])
        while sent and sent >= len(views[first]):
            sent -= len(views[first])
            first += 1
        if sent:
            views[first] = views[first][sent:]
