"""One client of a service's admin socket (a CLI, a console, or a node relaying an SSH login).

Frames are read on the service's event loop; each CALL runs in a thread of its own (Admin calls
block: the pool's lock, fsync, a whole import), under the client's actor, and its frames go back
through the loop, each waiting for the socket to take it, so a client that reads slowly slows
only its own calls. The client's LOGIN/HELLO say who it is:
- the actor is the user the socket's peer runs as (SO_PEERCRED), unless the peer runs as the
  service's own user (or root): then it may name itself (a console, "alice" of an SSH key);
- a read-only client may call only the methods that look (engine.service.methods.LOOKS); a
  connection can become read-only, never writable again.
A frame that cannot be parsed closes this connection only; a bad request gets an ERROR.

Deadlines, as the NBD server's handshake: a client's first frame (HELLO, a relay's LOGIN, or a
CALL) must have arrived whole within DEADLINE_S of its accept, and a frame begun later must not
stall longer than DEADLINE_S between two of its pieces (a 4 MiB DATA frame over a slow SSH link
takes as long as it takes, while it flows). Else the connection is closed: a client that
connects and says nothing, or sends half a request, would hold a file forever, and enough of
them leave the service out of files, taking no client at all. Between frames a client may idle
for as long as it likes (a console between polls).
"""

from __future__ import annotations

import asyncio
import os
import pwd
import queue
import socket
import struct
import threading
from dataclasses import dataclass

import msgspec

from ..actor import acting
from ..net import adminwire as wire, rpc
from ..progress import Progress
from . import methods
from .streams import END, GONE, INBOX_PIECES, WAIT_STEP

PEERCRED = struct.Struct("3i")      # pid, uid, gid
# How long a client has, from its accept, to send its first frame whole; and how long a frame
# begun may stall between two pieces.
DEADLINE_S = 10.0


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    user: str

    @classmethod
    def of(cls, sock: socket.socket) -> Peer:
        pid, uid, _ = PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                      PEERCRED.size))
        try:
            user = pwd.getpwuid(uid).pw_name
        except KeyError:
            user = f"uid {uid}"
        return cls(pid, uid, user)

    @property
    def trusted(self) -> bool:
        """Runs as the service's own user (or root): may say whom it acts for."""
        return self.uid in (os.geteuid(), 0)


class Call:
    """One CALL in flight: what its thread needs from the connection."""

    def __init__(self, session: Session, request_id: int):
        self.session = session
        self.request_id = request_id
        self.cancel = threading.Event()
        self.ended = threading.Event()
        self.inbox: queue.Queue = queue.Queue(INBOX_PIECES)

    def put(self, item) -> None:
        """Hands a piece of the client's bytes to the call, waiting while its inbox is full;
        dropped if the call ends meanwhile."""
        while not self.ended.is_set():
            try:
                return self.inbox.put(item, timeout=WAIT_STEP)
            except queue.Full:
                continue

    def progress(self, p: Progress) -> None:
        self.session.send_from_thread(rpc.encode(
            wire.PROGRESS, self.request_id, {"phase": p.phase, "done": p.done, "total": p.total,
                                             "bytes_per_s": round(p.bytes_per_s, 1)}))

    def send_data(self, header: dict, data) -> None:
        self.session.send_from_thread(rpc.encode(wire.DATA, self.request_id, header, data))


class Session:
    def __init__(self, service, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.service = service
        self.reader, self.writer = reader, writer
        self.loop = asyncio.get_running_loop()
        self.peer = Peer.of(writer.get_extra_info("socket"))
        self.actor = self.peer.user
        self.read_only = False
        self.said_hello = False
        self.calls: dict[int, Call] = {}

    async def run(self) -> None:
        try:
            first = True
            while True:
                kind, request_id, body = await self.frame(first)
                first = False
                await self.dispatch(kind, request_id, body)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass                        # the client went away
        except TimeoutError:
            # Told in the frame's place (a client that sent half of one sees why); no drain:
            # it may read nothing.
            self.writer.write(rpc.encode(wire.ERROR, 0, wire.bad_request(
                f"no whole request within {DEADLINE_S:g} s: closing the connection")))
            self.service.timed_out(f"admin client pid {self.peer.pid} ({self.peer.user})")
        except rpc.FrameError as e:     # garbage: nothing after it can be framed
            await self.send(rpc.encode(wire.ERROR, 0, wire.bad_request(str(e))))
        finally:
            self.gone()

    def gone(self) -> None:
        """The client went away (or is sent away): its calls are cancelled."""
        for call in list(self.calls.values()):
            call.cancel.set()
            try:
                call.inbox.put_nowait(GONE)
            except queue.Full:
                pass                    # its thread sees the cancel at its next wait
        self.writer.close()

    # -- frames in ----------------------------------------------------------------------------

    async def frame(self, first: bool) -> tuple[int, int, bytearray]:
        """The next frame: (kind, request id, body). The `first` must be whole within DEADLINE_S
        of now (the accept); a later one may be long in coming, but once begun each piece must
        follow the last within DEADLINE_S. Raises TimeoutError, IncompleteReadError (the client
        went away), rpc.FrameError."""
        async with asyncio.timeout(DEADLINE_S if first else None) as deadline:
            got = bytearray() if first else bytearray(await self.reader.readexactly(1))
            stall = None if first else deadline
            await self._fill(got, rpc.HEADER.size, stall)
            kind, request_id, length = rpc.parse_header(bytes(got))
            body = bytearray()
            await self._fill(body, length, stall)
        return kind, request_id, body

    async def _fill(self, got: bytearray, n: int, stall: asyncio.Timeout | None) -> None:
        """Reads into `got` until it holds `n` bytes; `stall`, if given, is moved to DEADLINE_S
        past each piece's arrival."""
        while len(got) < n:
            if stall is not None:
                stall.reschedule(self.loop.time() + DEADLINE_S)
            piece = await self.reader.read(n - len(got))
            if not piece:
                raise asyncio.IncompleteReadError(bytes(got), n)
            got += piece

    async def dispatch(self, kind: int, request_id: int, body: bytes | bytearray) -> None:
        try:
            header, payload = rpc.parse_body(body)
        except rpc.FrameError as e:
            await self.send(rpc.encode(wire.ERROR, request_id, wire.bad_request(str(e))))
            return
        if kind == wire.LOGIN:
            await self.login(request_id, header)
        elif kind == wire.HELLO:
            await self.hello(request_id, header)
        elif kind == wire.CALL:
            await self.call(request_id, header)
        elif kind == wire.DATA:
            await self.data(request_id, header, payload)
        elif kind == wire.CANCEL:
            if request_id in self.calls:
                self.calls[request_id].cancel.set()
        else:
            await self.refuse(request_id, f"unknown frame type {kind}")

    async def login(self, request_id: int, header: dict) -> None:
        """A relay names the SSH key behind the connection: taken once, first, from a peer
        running as the service's user; anything else is sent away."""
        actor = header.get("actor")
        if self.said_hello or not self.peer.trusted or not isinstance(actor, str) or not actor:
            await self.send(rpc.encode(wire.ERROR, request_id, wire.bad_request(
                "LOGIN comes first, from a relay running as the service's user")))
            self.writer.close()
            return
        self.actor, self.read_only = actor, bool(header.get("read_only"))
        self.said_hello = True          # a client behind the relay cannot rename itself

    async def hello(self, request_id: int, header: dict) -> None:
        actor = header.get("actor")
        if isinstance(actor, str) and actor and self.peer.trusted and not self.said_hello:
            self.actor = actor
        self.read_only = self.read_only or bool(header.get("read_only"))
        self.said_hello = True
        admin = self.service.admin
        await self.send(rpc.encode(wire.REPLY, request_id, {}, msgspec.json.encode({
            "kind": admin.kind, "name": admin.name, "block_size": admin.block_size,
            "rebuild_phases": admin.rebuild_phases, "actor": self.actor,
            "read_only": self.read_only})))

    async def call(self, request_id: int, header: dict) -> None:
        method = header.get("method")
        if request_id in self.calls:
            return await self.refuse(request_id, f"request {request_id} is already running")
        try:
            kwargs = methods.arguments(method, header.get("args", {}))
        except methods.BadRequest as e:
            return await self.refuse(request_id, str(e))
        if self.read_only and method not in methods.LOOKS:
            await self.send(rpc.encode(wire.ERROR, request_id, {
                "error": f"this login is read-only: {method} would change the pool",
                "code": wire.Code.READ_ONLY.value}))
            return
        call = self.calls[request_id] = Call(self, request_id)
        threading.Thread(target=self._run, args=(call, method, kwargs), daemon=True,
                         name=f"blockfold-call {method}").start()

    async def data(self, request_id: int, header: dict, payload: memoryview) -> None:
        call = self.calls.get(request_id)
        if call is None:
            return                      # the call has ended (refused at once, say): dropped
        if header.get("end"):
            item = END
        elif isinstance(header.get("offset"), int):
            item = (header["offset"], bytes(payload))
        else:
            return await self.refuse(request_id, "a DATA frame needs an offset or the end")
        try:
            call.inbox.put_nowait(item)
        except queue.Full:              # the pool is slower than the client: it waits
            await asyncio.to_thread(call.put, item)

    async def refuse(self, request_id: int, message: str) -> None:
        await self.send(rpc.encode(wire.ERROR, request_id, wire.bad_request(message)))

    # -- calls, on their own threads ----------------------------------------------------------

    def _run(self, call: Call, method: str, kwargs: dict) -> None:
        with acting(self.actor):
            try:
                frame = rpc.encode(wire.REPLY, call.request_id, {},
                                   methods.invoke(self.service.admin, method, kwargs, call))
            except BaseException as e:  # noqa: BLE001 - every failure goes back to the client
                self.service.log_failure(method, e)
                frame = rpc.encode(wire.ERROR, call.request_id, wire.error_header(e))
        call.ended.set()
        try:
            self.send_from_thread(frame)
        finally:
            try:
                self.loop.call_soon_threadsafe(self.calls.pop, call.request_id, None)
            except RuntimeError:
                pass            # the service's loop has ended

    def send_from_thread(self, frame: bytes) -> None:
        """Sends a frame from a call's thread once the socket has taken it; a client gone is
        no error here (its calls are being cancelled)."""
        try:
            asyncio.run_coroutine_threadsafe(self.send(frame), self.loop).result()
        except (ConnectionError, RuntimeError):
            pass                # the client, or the service's loop, has gone

    # -- frames out ---------------------------------------------------------------------------

    async def send(self, frame: bytes) -> None:
        if self.writer.is_closing():
            return
        self.writer.write(frame)
        try:
            await self.writer.drain()
        except ConnectionError:
            pass
