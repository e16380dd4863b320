"""An NBD server: every VM an `Admin` holds is an export under its own name.

It uses only the Admin's volume methods (vm_names, vm_size, read, write, trim, flush), so an
embedded pool and a cluster are served the same way.

An asyncio loop accepts connections and runs each negotiation. Once a client has chosen its
export, the connection's transmission phase moves to a thread of the executor: a blocking loop that
takes every request already received, performs them in order against the Admin, and sends all the
replies at once. The Admin's calls block (the pool's lock, fsync), so they never run on the event
loop; and keeping a connection's requests on one thread avoids a loop-to-thread hop per request,
which cost more than the pool's own 4 KiB read (see BENCHMARKS.md, "NBD export").

A request is applied whole or not at all: a write whose payload does not fully arrive never reaches
the Admin, so a client vanishing mid-request leaves the pool as it was.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import struct
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..errors import BlockfoldError, NoSpaceError, OutOfRangeError, ReadOnlyError
from . import protocol as p

MAX_CLIENTS = 256               # connections in transmission at once, one thread each; more wait
BATCH_BYTES = 32 << 20          # payload and read bytes one connection holds in memory at once
RECV_BYTES = 256 << 10
IOV_MAX = 1024                  # buffers one sendmsg() may take (Linux)
SEND_BYTES = 256 << 10          # read data that is sent at once, not held for the batch's end
JOIN_BYTES = 256 << 10          # replies up to this size are copied into one buffer and sent
SHUTDOWN_GRACE_S = 10.0         # how long in-flight requests get to finish on SIGTERM

TRANSMISSION_FLAGS = (p.FLAG_HAS_FLAGS | p.FLAG_SEND_FLUSH | p.FLAG_SEND_FUA | p.FLAG_SEND_TRIM
                      | p.FLAG_SEND_WRITE_ZEROES
                      # one pool behind every connection: a flush on one covers writes on all
                      | p.FLAG_CAN_MULTI_CONN)
MODIFYING = (p.CMD_WRITE, p.CMD_TRIM, p.CMD_WRITE_ZEROES)
ALLOWED_FLAGS = {p.CMD_READ: p.CMD_FLAG_FUA, p.CMD_WRITE: p.CMD_FLAG_FUA,
                 p.CMD_FLUSH: p.CMD_FLAG_FUA, p.CMD_TRIM: p.CMD_FLAG_FUA,
                 p.CMD_WRITE_ZEROES: p.CMD_FLAG_FUA | p.CMD_FLAG_NO_HOLE}
ENGINE_ERRORS = ((ReadOnlyError, p.EPERM), (OutOfRangeError, p.EINVAL), (NoSpaceError, p.ENOSPC))


class ProtocolError(Exception):
    """The client broke the protocol beyond any reply: its connection is dropped."""


class ClientGone(Exception):
    """The client closed its side of the connection."""


@dataclass(slots=True)
class Export:
    name: str
    size: int
    flags: int


@dataclass(slots=True)
class Request:
    cookie: int
    command: int
    flags: int
    offset: int
    length: int
    payload: bytes = b""
    error: int = 0              # already refused while receiving (an oversized length)


class NBDServer:
    def __init__(self, admin, *, read_only: bool = False, log: Callable[[str], None] | None = None):
        self.admin = admin
        self.read_only = read_only
        self.flags = TRANSMISSION_FLAGS | (p.FLAG_READ_ONLY if read_only else 0)
        self.block_size = admin.block_size      # the preferred block size each export reports
        self.log = log or (lambda message: print(f"blockfold nbd: {message}", file=sys.stderr,
                                                 flush=True))
        self.admin_calls = ThreadPoolExecutor(2, thread_name_prefix="nbd-admin")
        self.transmitters = ThreadPoolExecutor(MAX_CLIENTS, thread_name_prefix="nbd-client")
        self.connections: set[Connection] = set()
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task | None = None

    async def call(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.admin_calls, fn, *args)

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listens on host:port (0: any free port) and returns the address actually bound."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server((host, port), family=family, backlog=64)
        self._listener.setblocking(False)
        self._accepting = asyncio.create_task(self._accept_forever())
        bound = self._listener.getsockname()
        return bound[0], bound[1]

    async def _accept_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, peer = await loop.sock_accept(self._listener)
            except OSError as e:        # out of file descriptors, say: wait, then go on serving
                self.log(f"cannot accept a connection: {e.strerror or e}")
                await asyncio.sleep(0.5)
                continue
            # Replies go out in one send per batch; Nagle would hold the next one for an ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection = Connection(self, sock, peer)
            self.connections.add(connection)
            connection.task = asyncio.create_task(connection.serve())
            connection.task.add_done_callback(lambda _, c=connection: self.connections.discard(c))

    async def close(self) -> None:
        """Stops listening, answers what each client already sent, then drops the connections."""
        self._accepting.cancel()
        self._listener.close()
        running = [c.stop() for c in list(self.connections)]
        if running:
            _, late = await asyncio.wait(running, timeout=SHUTDOWN_GRACE_S)
            for connection in list(self.connections):
                connection.abort()
            await asyncio.gather(*late, return_exceptions=True)
        for executor in (self.transmitters, self.admin_calls):
            executor.shutdown(wait=True)    # an Admin call in a thread cannot be cancelled

    # -- who is attached: asked by the service before it deletes or overwrites a VM ------------

    def clients(self, name: str) -> list[str]:
        """HOST:PORT of every connection transmitting on export `name`."""
        return [c.peer for c in list(self.connections) if c.export == name]

    def detach(self, name: str) -> None:
        """Drops every connection to export `name` at once, as if its network had failed."""
        for connection in list(self.connections):
            if connection.export == name:
                connection.abort()

    # -- requests: run on the connection's thread ----------------------------------------------

    def perform(self, export: Export, r: Request) -> tuple[int, bytes]:
        if r.error:
            return r.error, b""
        if r.command not in ALLOWED_FLAGS or r.flags & ~ALLOWED_FLAGS[r.command]:
            return p.EINVAL, b""
        if self.read_only and r.command in MODIFYING:
            return p.EPERM, b""
        try:
            if r.command == p.CMD_FLUSH:
                self.admin.flush()
                return 0, b""
            if r.offset + r.length > export.size:
                # as the spec asks: writing past the end is "no space", anything else is invalid
                return (p.ENOSPC if r.command in (p.CMD_WRITE, p.CMD_WRITE_ZEROES) else p.EINVAL,
                        b"")
            if r.length == 0:
                return 0, b""
            if r.command == p.CMD_READ:
                return 0, self.admin.read(export.name, r.offset, r.length)
            if r.command == p.CMD_WRITE:
                self.admin.write(export.name, r.offset, r.payload)
            else:
                # TRIM and WRITE_ZEROES alike: the range reads back as zeros and frees its slots.
                # NO_HOLE changes nothing here, as zero blocks never take a slot in the pool.
                self.admin.trim(export.name, r.offset, r.length)
            if r.flags & p.CMD_FLAG_FUA:
                self.admin.flush()
            return 0, b""
        except BlockfoldError as e:
            self.log(f"{export.name}: {e}")
            return next((code for kind, code in ENGINE_ERRORS if isinstance(e, kind)), p.EIO), b""
        except Exception as e:      # noqa: BLE001 - one client's failure must not stop the server
            self.log(f"{export.name}: internal error: {type(e).__name__}: {e}")
            return p.EIO, b""


class Connection:
    def __init__(self, server: NBDServer, sock: socket.socket, peer):
        self.server = server
        self.sock = sock
        self.peer = f"{peer[0]}:{peer[1]}"
        self.task: asyncio.Task | None = None
        self.transmitting = False
        self.export: str | None = None      # the VM it transmits on, once negotiated
        self.no_zeroes = False
        self.pending: list[bytes] = []      # option replies not sent yet
        self.buffer = bytearray()           # received, not yet parsed (transmission phase)

    def stop(self) -> asyncio.Task:
        """Server shutdown: stop taking requests; those already received are still answered."""
        if self.transmitting:
            self._shutdown(socket.SHUT_RD)      # the connection's thread sees the end of input
        else:
            self.task.cancel()
        return self.task

    def abort(self) -> None:
        """Shutdown grace is over: unblock a thread stuck sending to a client that does not read."""
        self._shutdown(socket.SHUT_RDWR)

    def _shutdown(self, how: int) -> None:
        try:
            self.sock.shutdown(how)
        except OSError:
            pass    # already disconnected

    async def serve(self) -> None:
        try:
            export = await self.negotiate()
            if export is not None:
                self.transmitting = True
                self.export = export.name
                self.sock.setblocking(True)
                await asyncio.get_running_loop().run_in_executor(self.server.transmitters,
                                                                 self.transmit, export)
        except (ClientGone, OSError):
            pass    # the client went away, or its socket failed: nothing more to answer
        except ProtocolError as e:
            self.server.log(f"{self.peer}: {e}; closing the connection")
        finally:
            self.sock.close()

    # -- negotiation, on the event loop --------------------------------------------------------

    async def recv_exactly(self, n: int) -> bytes:
        loop = asyncio.get_running_loop()
        data = bytearray()
        while len(data) < n:
            chunk = await loop.sock_recv(self.sock, n - len(data))
            if not chunk:
                raise ClientGone()
            data += chunk
        return bytes(data)

    async def send_pending(self) -> None:
        data, self.pending = b"".join(self.pending), []
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    def reply(self, option: int, kind: int, data: bytes | str = b"") -> None:
        self.pending.append(p.option_reply(option, kind,
                                           data.encode() if isinstance(data, str) else data))

    async def negotiate(self) -> Export | None:
        """Option haggling; returns the export chosen, or None if the client aborted."""
        self.pending.append(p.SERVER_GREETING.pack(p.NBDMAGIC, p.IHAVEOPT,
                                                   p.FLAG_FIXED_NEWSTYLE | p.FLAG_NO_ZEROES))
        await self.send_pending()
        (flags,) = p.CLIENT_FLAGS.unpack(await self.recv_exactly(p.CLIENT_FLAGS.size))
        if flags & ~(p.FLAG_C_FIXED_NEWSTYLE | p.FLAG_C_NO_ZEROES):
            raise ProtocolError(f"unknown client flags {flags:#x}")
        if not flags & p.FLAG_C_FIXED_NEWSTYLE:
            raise ProtocolError("the client does not speak fixed newstyle negotiation")
        self.no_zeroes = bool(flags & p.FLAG_C_NO_ZEROES)
        while True:
            magic, option, length = p.OPTION_HEADER.unpack(
                await self.recv_exactly(p.OPTION_HEADER.size))
            if magic != p.IHAVEOPT:
                raise ProtocolError(f"bad option magic {magic:#x}")
            if length > p.MAX_OPTION_DATA:
                raise ProtocolError(f"option {option} claims {length} bytes of data")
            data = await self.recv_exactly(length)
            export = None
            if option == p.OPT_EXPORT_NAME:
                export = await self.export_name(data)
            elif option == p.OPT_ABORT:
                self.reply(option, p.REP_ACK)
            elif option == p.OPT_LIST:
                await self.list_exports(data)
            elif option in (p.OPT_INFO, p.OPT_GO):
                export = await self.info(option, data)
            else:   # STRUCTURED_REPLY, STARTTLS, meta contexts, ...: simple replies only
                self.reply(option, p.REP_ERR_UNSUP, f"option {option} is not supported")
            await self.send_pending()
            if option == p.OPT_ABORT:
                return None
            if export is not None and option != p.OPT_INFO:
                return export

    async def find(self, name: str) -> Export | None:
        try:
            size = await self.server.call(self.server.admin.vm_size, name)
        except BlockfoldError:
            return None
        return Export(name, size, self.server.flags)

    async def export_name(self, data: bytes) -> Export:
        # NBD_OPT_EXPORT_NAME has no error reply: an unknown name can only close the connection.
        try:
            name = p.decode_string(data)
        except ValueError as e:
            raise ProtocolError(f"bad export name: {e}") from None
        export = await self.find(name)
        if export is None:
            raise ProtocolError(f"no VM named {name!r}")
        self.pending.append(p.EXPORT_NAME_REPLY.pack(export.size, export.flags)
                            + (b"" if self.no_zeroes else bytes(124)))
        return export

    async def list_exports(self, data: bytes) -> None:
        if data:
            self.reply(p.OPT_LIST, p.REP_ERR_INVALID, "NBD_OPT_LIST takes no data")
            return
        for name in await self.server.call(self.server.admin.vm_names):
            encoded = name.encode()
            self.reply(p.OPT_LIST, p.REP_SERVER, struct.pack(">I", len(encoded)) + encoded)
        self.reply(p.OPT_LIST, p.REP_ACK)

    async def info(self, option: int, data: bytes) -> Export | None:
        try:
            name, wanted = p.parse_info_request(data)
        except ValueError as e:
            self.reply(option, p.REP_ERR_INVALID, str(e))
            return None
        export = await self.find(name)
        if export is None:
            self.reply(option, p.REP_ERR_UNKNOWN, f"no VM named {name!r}")
            return None
        self.reply(option, p.REP_INFO, p.INFO_EXPORT_DATA.pack(p.INFO_EXPORT, export.size,
                                                               export.flags))
        if p.INFO_NAME in wanted:
            self.reply(option, p.REP_INFO, struct.pack(">H", p.INFO_NAME) + name.encode())
        # Any alignment works (minimum 1); the pool's block size avoids read-modify-write.
        self.reply(option, p.REP_INFO, p.INFO_BLOCK_SIZE_DATA.pack(
            p.INFO_BLOCK_SIZE, 1, self.server.block_size, p.MAX_PAYLOAD))
        self.reply(option, p.REP_ACK)
        return export

    # -- transmission, on the connection's own thread ------------------------------------------

    def transmit(self, export: Export) -> None:
        """Until NBD_CMD_DISC or the end of input: take a batch, perform it, send its replies.

        Small replies of a batch go out together, in one system call; once SEND_BYTES have
        piled up they go at once, so the client can send more while the rest is performed.
        """
        while True:
            requests, more = self.receive_batch()
            replies, held = [], 0
            for request in requests:
                error, data = self.server.perform(export, request)
                replies.append(p.simple_reply(request.cookie, error))
                if data:
                    replies.append(data)
                held += len(data)
                if held >= SEND_BYTES:
                    send_all(self.sock, replies)
                    replies, held = [], 0
            if replies:
                send_all(self.sock, replies)
            if not more:
                return

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
                    request.error = p.EOVERFLOW
                    if command == p.CMD_WRITE:
                        self.discard(length)        # keeps the stream in step
                elif command == p.CMD_WRITE:
                    request.payload = self.take(length)
            except ClientGone:
                return batch, False
            if command in (p.CMD_READ, p.CMD_WRITE) and not request.error:
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


def serve(admin, host: str, port: int, *, read_only: bool = False,
          ready: Callable[[str, int], None] | None = None) -> None:
    """Serves until SIGTERM or SIGINT, answers what is in flight, and returns.

    `ready(host, port)` is called once listening. The caller closes the Admin, which flushes.
    """
    asyncio.run(_serve(admin, host, port, read_only, ready))


async def _serve(admin, host, port, read_only, ready) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = NBDServer(admin, read_only=read_only)
    address = await server.start(host, port)
    try:
        if ready:
            ready(*address)
        await stop.wait()
    finally:
        await server.close()
