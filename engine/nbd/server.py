"""An NBD server: every VM an `Admin` holds is an export under its own name.

It uses only the Admin's volume methods (vm_names, vm_size, read, write, trim, flush), so an
embedded pool and a cluster are served the same way.

Each connection runs two coroutines. The receiver parses requests into a queue; the worker hands
everything queued to a thread in one batch and writes the replies. Admin calls block (the pool's
lock, fsync), so they never run on the event loop, and batching pays the thread hop once per
client queue rather than once per request. A connection holds at most QUEUE_BYTES of write
payloads and read replies, so a fast client cannot outrun the pool's memory.

A request is applied whole or not at all: a write whose payload does not fully arrive never reaches
the Admin, so a client vanishing mid-request leaves the pool as it was.
"""

from __future__ import annotations

import asyncio
import signal
import struct
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from ..errors import BlockfoldError, NoSpaceError, OutOfRangeError, ReadOnlyError
from . import protocol as p

QUEUE_BYTES = 64 << 20          # per connection; more than one largest request (MAX_PAYLOAD)
WORKERS = 4                     # threads for Admin calls; the pool serialises them on its lock
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

    @property
    def cost(self) -> int:
        """Bytes this request holds in memory until its reply is sent."""
        if self.error:
            return 0
        return self.length if self.command in (p.CMD_READ, p.CMD_WRITE) else 0


class NBDServer:
    def __init__(self, admin, *, read_only: bool = False, log: Callable[[str], None] | None = None):
        self.admin = admin
        self.read_only = read_only
        self.flags = TRANSMISSION_FLAGS | (p.FLAG_READ_ONLY if read_only else 0)
        self.block_size = 4096
        self.log = log or (lambda message: print(f"blockfold nbd: {message}", file=sys.stderr,
                                                 flush=True))
        self.executor = ThreadPoolExecutor(WORKERS, thread_name_prefix="nbd")
        self.connections: set[Connection] = set()
        self._listener: asyncio.Server | None = None

    async def call(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listens on host:port (0: any free port) and returns the address actually bound."""
        self.block_size = (await self.call(self.admin.stats))["block_size"]
        self._listener = await asyncio.start_server(self._accept, host, port, reuse_address=True)
        bound = self._listener.sockets[0].getsockname()
        return bound[0], bound[1]

    async def _accept(self, reader, writer) -> None:
        connection = Connection(self, reader, writer)
        self.connections.add(connection)
        try:
            await connection.serve()
        finally:
            self.connections.discard(connection)

    async def close(self) -> None:
        """Stops listening, answers what each client already sent, then drops the connections."""
        self._listener.close()
        running = [c.stop() for c in list(self.connections)]
        if running:
            _, late = await asyncio.wait(running, timeout=SHUTDOWN_GRACE_S)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self._listener.wait_closed()
        self.executor.shutdown(wait=True)   # an Admin call in a thread cannot be cancelled

    # -- the transmission phase's work, run in the executor ------------------------------------

    def execute(self, export: Export, requests: list[Request]) -> list[bytes]:
        """Performs a batch in order and returns the replies to send."""
        replies = []
        for request in requests:
            error, data = self.perform(export, request)
            replies.append(p.simple_reply(request.cookie, error))
            if data:
                replies.append(data)
        return replies

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
    def __init__(self, server: NBDServer, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter):
        self.server = server
        self.reader, self.writer = reader, writer
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.task = asyncio.current_task()
        self.receiving: asyncio.Task | None = None
        self.no_zeroes = False
        self.queue: deque[Request | None] = deque()     # None: stop after what came before
        self.queued_bytes = 0
        self.changed = asyncio.Condition()

    def stop(self) -> asyncio.Task:
        """Server shutdown: stop taking requests; those received are still answered."""
        (self.receiving or self.task).cancel()
        return self.task

    async def serve(self) -> None:
        try:
            export = await self.negotiate()
            if export is not None:
                await self.transmit(export)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass    # the client went away
        except ProtocolError as e:
            self.server.log(f"{self.peer}: {e}; closing the connection")
        finally:
            self.writer.close()

    # -- negotiation ---------------------------------------------------------------------------

    async def negotiate(self) -> Export | None:
        """Option haggling; returns the export chosen, or None if the client aborted."""
        self.writer.write(p.SERVER_GREETING.pack(p.NBDMAGIC, p.IHAVEOPT,
                                                 p.FLAG_FIXED_NEWSTYLE | p.FLAG_NO_ZEROES))
        (flags,) = p.CLIENT_FLAGS.unpack(await self.reader.readexactly(p.CLIENT_FLAGS.size))
        if flags & ~(p.FLAG_C_FIXED_NEWSTYLE | p.FLAG_C_NO_ZEROES):
            raise ProtocolError(f"unknown client flags {flags:#x}")
        if not flags & p.FLAG_C_FIXED_NEWSTYLE:
            raise ProtocolError("the client does not speak fixed newstyle negotiation")
        self.no_zeroes = bool(flags & p.FLAG_C_NO_ZEROES)
        while True:
            magic, option, length = p.OPTION_HEADER.unpack(
                await self.reader.readexactly(p.OPTION_HEADER.size))
            if magic != p.IHAVEOPT:
                raise ProtocolError(f"bad option magic {magic:#x}")
            if length > p.MAX_OPTION_DATA:
                raise ProtocolError(f"option {option} claims {length} bytes of data")
            data = await self.reader.readexactly(length)
            if option == p.OPT_EXPORT_NAME:
                return await self.export_name(data)
            if option == p.OPT_ABORT:
                self.reply(option, p.REP_ACK)
                await self.writer.drain()
                return None
            if option == p.OPT_LIST:
                await self.list_exports(data)
            elif option in (p.OPT_INFO, p.OPT_GO):
                export = await self.info(option, data)
                if export is not None and option == p.OPT_GO:
                    await self.writer.drain()
                    return export
            else:   # STRUCTURED_REPLY, STARTTLS, meta contexts, ...: simple replies only
                self.reply(option, p.REP_ERR_UNSUP, f"option {option} is not supported")
            await self.writer.drain()

    def reply(self, option: int, kind: int, data: bytes | str = b"") -> None:
        self.writer.write(p.option_reply(option, kind,
                                         data.encode() if isinstance(data, str) else data))

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
        self.writer.write(p.EXPORT_NAME_REPLY.pack(export.size, export.flags)
                          + (b"" if self.no_zeroes else bytes(124)))
        await self.writer.drain()
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

    # -- transmission --------------------------------------------------------------------------

    async def transmit(self, export: Export) -> None:
        worker = asyncio.create_task(self.work(export))
        self.receiving = asyncio.create_task(self.receive())
        # Ends on NBD_CMD_DISC, the client vanishing, a protocol error, or server shutdown.
        await asyncio.wait([self.receiving])
        error = None if self.receiving.cancelled() else self.receiving.exception()
        async with self.changed:
            self.queue.append(None)
            self.changed.notify_all()
        await worker
        if error is not None:
            raise error

    async def receive(self) -> None:
        while True:
            header = await self.reader.readexactly(p.REQUEST.size)
            magic, flags, command, cookie, offset, length = p.REQUEST.unpack(header)
            if magic != p.REQUEST_MAGIC:
                raise ProtocolError(f"bad request magic {magic:#x}")
            if command == p.CMD_DISC:
                return
            request = Request(cookie, command, flags, offset, length)
            if command in (p.CMD_READ, p.CMD_WRITE) and length > p.MAX_PAYLOAD:
                request.error = p.EOVERFLOW
                if command == p.CMD_WRITE:
                    await self.discard(length)     # keeps the stream in step
            await self.reserve(request.cost)
            if command == p.CMD_WRITE and not request.error:
                request.payload = await self.reader.readexactly(length)
            async with self.changed:
                self.queue.append(request)
                self.changed.notify_all()

    async def reserve(self, cost: int) -> None:
        async with self.changed:
            await self.changed.wait_for(
                lambda: self.queued_bytes == 0 or self.queued_bytes + cost <= QUEUE_BYTES)
            self.queued_bytes += cost

    async def discard(self, length: int) -> None:
        while length:
            chunk = await self.reader.read(min(length, 1 << 20))
            if not chunk:
                raise asyncio.IncompleteReadError(b"", length)
            length -= len(chunk)

    async def work(self, export: Export) -> None:
        while True:
            async with self.changed:
                await self.changed.wait_for(lambda: self.queue)
                batch = list(self.queue)
                self.queue.clear()
            requests = [r for r in batch if r is not None]
            if requests:
                replies = await self.server.call(self.server.execute, export, requests)
                self.writer.writelines(replies)
                try:
                    await self.writer.drain()
                except ConnectionError:
                    self.receiving.cancel()
                    return      # nobody left to answer
                async with self.changed:
                    self.queued_bytes -= sum(r.cost for r in requests)
                    self.changed.notify_all()
            if batch[-1] is None:
                return


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
