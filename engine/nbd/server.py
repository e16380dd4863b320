"""An NBD server: every VM an `Admin` holds is an export under its own name.

It uses the Admin's volume methods (vm_names, vm_size, flush), its block size and its pool's
native core, so an embedded pool and a cluster are served the same way.

An asyncio loop accepts connections and runs each negotiation (engine/nbd/handshake.py). Once a
client has chosen its export, the connection's transmission phase moves to a thread of the
native core's own (engine/nbd/transmission.py) that blocks on its socket without the GIL. There is
no pool of threads to run out of: idle desktops cost a thread and a socket each, and every
connection is served. The one limit is the open-file limit (the server raises its soft limit to
the hard one): past it, a client is refused at NBD_OPT_GO with NBD_REP_ERR_POLICY and a message,
and the refusal is logged. Should the process run out of files all the same (a limit lowered
under it, clients that hold connections open without negotiating), RESERVE_FILES are kept in
reserve: one is given up to accept the next client, which is refused with a message
(Handshake.refuse, within REFUSAL_S), then taken back; the burst is logged in two lines, when it
starts and when clients are accepted again.

A negotiating client must send its first option within HANDSHAKE_DEADLINE_S of its accept, and
each next one within HANDSHAKE_DEADLINE_S of the server's last reply, until it has chosen its
export, or it is closed and logged: a port scanner or a stuck client would hold its file forever
(told in a line per DEADLINE_LOG_S). A client that keeps sending options is not idle: nbdinfo
--list of 300 VMs haggles for a minute (libnbd's pace). Only once the server is out of files
is a handshake bounded as a whole: those negotiating for longer than HANDSHAKE_DEADLINE_S since
their accept are closed then, busy or not. A transmitting connection has no deadline: a desktop
may idle for hours.

Once handed over, a connection belongs to its thread, which closes it when done: nothing in
Python is woken per connection that ends (a thousand desktops leaving at once would fill the event
loop's wakeup pipe, and a SIGTERM arriving then would be lost); ended connections are forgotten
the next time the server looks at them.
"""

from __future__ import annotations

import asyncio
import errno
import math
import os
import resource
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from .. import _native
from ..errors import BlockfoldError
from . import protocol as p
from .handshake import ClientGone, Handshake, ProtocolError, Session
from .transmission import transmit

SHUTDOWN_GRACE_S = 10.0         # how long in-flight requests get to finish on SIGTERM
# How long a negotiating client may stay silent: from its accept to its first option, from each
# reply to its next option; BLOCKFOLD_NBD_HANDSHAKE_S (seconds) sets another (tests), within
# bounds: under a second a client across a slow link is cut before its round trips end (at
# 0.001 s, 4 of 5 nbdinfo on loopback were); over an hour a silent client holds its file for
# good in all but name.
HANDSHAKE_DEADLINE_S = 10.0
HANDSHAKE_DEADLINE_ENV = "BLOCKFOLD_NBD_HANDSHAKE_S"
HANDSHAKE_DEADLINE_BOUNDS_S = (1.0, 3600.0)
# Out of files: files kept to accept clients and refuse them with a message, and how long each
# may haggle (so clients that say nothing take no more than RESERVE_FILES / REFUSAL_S per second).
RESERVE_FILES = 16
REFUSAL_S = 1.0
# Connections closed at the deadline: the first is told, the others in a line each this often.
DEADLINE_LOG_S = 10.0
OUT_OF_FILES = (errno.EMFILE, errno.ENFILE)
# Open files kept for everything but transmitting connections: the pool's files and sqlite's,
# a cluster's SSH channels, and clients still negotiating (they hold a socket before their GO).
RESERVED_FILES = 256

TRANSMISSION_FLAGS = (p.FLAG_HAS_FLAGS | p.FLAG_SEND_FLUSH | p.FLAG_SEND_FUA | p.FLAG_SEND_TRIM
                      | p.FLAG_SEND_WRITE_ZEROES
                      # one pool behind every connection: a flush on one covers writes on all
                      | p.FLAG_CAN_MULTI_CONN)
# What a read-only export does not offer: its changes would be refused (EPERM), and FUA only
# speaks of writes (as nbdkit -r). FLUSH stays: it succeeds, having nothing to commit.
WRITE_FLAGS = p.FLAG_SEND_FUA | p.FLAG_SEND_TRIM | p.FLAG_SEND_WRITE_ZEROES


def handshake_deadline() -> float:
    """HANDSHAKE_DEADLINE_S, or the seconds BLOCKFOLD_NBD_HANDSHAKE_S gives. Raises
    BlockfoldError if they are not a number within HANDSHAKE_DEADLINE_BOUNDS_S."""
    given = os.environ.get(HANDSHAKE_DEADLINE_ENV)
    if given is None:
        return HANDSHAKE_DEADLINE_S
    low, high = HANDSHAKE_DEADLINE_BOUNDS_S
    try:
        value = float(given)
    except ValueError:
        value = math.nan
    if not low <= value <= high:        # (NaN is within no bounds)
        raise BlockfoldError(f"{HANDSHAKE_DEADLINE_ENV}={given!r}: give a number of seconds from"
                             f" {low:g} to {high:g} (unset: {HANDSHAKE_DEADLINE_S:g})")
    return value


def connection_limit() -> int:
    """How many connections may transmit at once: the open-file limit, raised to its hard limit
    first, less RESERVED_FILES."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass        # keep the soft limit (an unlimited hard limit, say)
    return max(1, soft - RESERVED_FILES)


class NBDServer:
    def __init__(self, admin, meter, *, read_only: bool = False,
                 log: Callable[[str], None] | None = None):
        """Serves `admin`'s VMs (a LocalAdmin or a ClusterAdmin: its pool's core serves the
        requests), counting what it serves in `meter` (an engine._native.Meter)."""
        self.admin = admin
        self.meter = meter
        self.read_only = read_only
        self.flags = ((TRANSMISSION_FLAGS & ~WRITE_FLAGS) | p.FLAG_READ_ONLY if read_only
                      else TRANSMISSION_FLAGS)
        self.block_size = admin.block_size      # the preferred block size each export reports
        self.log = log or (lambda message: print(f"blockfold nbd: {message}", file=sys.stderr,
                                                 flush=True))
        self.admin_calls = ThreadPoolExecutor(2, thread_name_prefix="nbd-admin")
        self.lock = threading.Lock()    # connections: the service asks from its admin threads
        self.connections: set[Connection] = set()
        self.max_transmitting = 0       # set by start()
        self.handshake_deadline = handshake_deadline()
        self._reserve: list[int] = []       # files given up to refuse clients when out of them
        self._refusing: set[asyncio.Task] = set()
        self._refused = 0                   # clients refused so, in this burst
        self._starved = False               # out of files, and told so
        self._untold: int | None = None     # closed at the deadline since the last line
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task | None = None

    async def call(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.admin_calls, fn, *args)

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listens on host:port (0: any free port) and returns the address actually bound."""
        self.max_transmitting = connection_limit()
        self._fill_reserve()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server((host, port), family=family, backlog=1024)
        self._listener.setblocking(False)
        self._accepting = asyncio.create_task(self._accept_forever())
        bound = self._listener.getsockname()
        return bound[0], bound[1]

    async def start_unix(self, path: str) -> str:
        """Listens on a Unix socket at `path` (an export for this process's own tools)."""
        self.max_transmitting = connection_limit()
        self._fill_reserve()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        self._listener.listen(64)
        self._listener.setblocking(False)
        self._accepting = asyncio.create_task(self._accept_forever())
        return path

    async def _accept_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, peer = await loop.sock_accept(self._listener)
            except OSError as e:
                if e.errno not in OUT_OF_FILES:     # out of memory, say: wait, then serve on
                    self.log(f"cannot accept a connection: {e.strerror or e}")
                    await asyncio.sleep(0.5)
                    continue
                # (Linux takes the file before it looks for a client: this is no sign of one.)
                if (accepted := await self._accept_out_of_files(e)) is None:
                    continue
                sock, peer = accepted
            if self._starved:
                self._starved = False
                self.log(f"accepting clients again; {self._refused} refused while out of files")
            # Replies go out in one send per batch; Nagle would hold the next one for an ACK.
            if sock.family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection = Connection(self, sock, peer)
            with self.lock:
                self.connections.add(connection)
            connection.task = asyncio.create_task(connection.serve())

    async def _accept_out_of_files(self, error: OSError) -> tuple[socket.socket, object] | None:
        """Out of files: once a client waits, a reserve file is given up to accept it (at once:
        nothing else may take the file meanwhile, the admin socket's accepts say); the client is
        refused with a message (_refuse), and the file taken back once it is closed. Returns the
        client only if files were freed meanwhile (it is served). Without a reserve file free,
        waits a moment."""
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if not self._starved:
            self._starved, self._refused = True, 0
            self.log(f"cannot accept a connection: {error.strerror} (limit {limit}): refusing"
                     " new clients until files are freed")
        self._end_long_handshakes()
        await self._client_waits()
        self._fill_reserve()
        if not self._reserve:
            await asyncio.sleep(0.1)
            return None
        os.close(self._reserve.pop())
        try:
            sock, peer = self._listener.accept()
        except OSError:                 # the client left meanwhile
            self._fill_reserve()
            return None
        sock.setblocking(False)
        self._fill_reserve()
        if len(self._reserve) == RESERVE_FILES:
            return sock, peer           # there is room again
        self._refused += 1
        task = asyncio.create_task(self._refuse(sock, peer, limit))
        self._refusing.add(task)
        task.add_done_callback(self._refusing.discard)
        return None

    async def _client_waits(self) -> None:
        """Returns once a client waits to be accepted (the listener reads ready)."""
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        fd = self._listener.fileno()
        loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
        try:
            await ready
        finally:
            loop.remove_reader(fd)

    async def _refuse(self, sock: socket.socket, peer, limit: int) -> None:
        why = f"the server is out of open files (limit {limit}): try again later"
        try:
            async with asyncio.timeout(REFUSAL_S):
                await Handshake(Connection(self, sock, peer)).refuse(why)
        except (ClientGone, ProtocolError, OSError):
            pass    # it went, broke the protocol or took too long: closed all the same
        finally:
            sock.close()
            self._fill_reserve()

    def _end_long_handshakes(self) -> None:
        """Out of files: every client negotiating for longer than the deadline since its accept
        is closed now (as at the deadline), though it keeps sending options, so that clients
        which never choose an export cannot hold the files others need to be served."""
        now = asyncio.get_running_loop().time()
        with self.lock:
            negotiating = [c for c in self.connections if c.handle is None]
        for c in negotiating:
            if now - c.accepted >= self.handshake_deadline:
                c.end_handshake(now)

    def _fill_reserve(self) -> None:
        """Opens reserve files up to RESERVE_FILES, as many as can be had."""
        while len(self._reserve) < RESERVE_FILES:
            try:
                self._reserve.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            except OSError:
                return

    def timed_out(self, peer: str) -> None:
        """A connection was closed at the handshake deadline: the first is told; those after
        it are counted and told in one line every DEADLINE_LOG_S (a port scanner's thousands
        would flood stderr)."""
        if self._untold is not None:
            self._untold += 1
            return
        self.log(f"{peer}: no export chosen within {self.handshake_deadline:g} s; closing the"
                 " connection")
        self._untold = 0
        asyncio.get_running_loop().call_later(DEADLINE_LOG_S, self._tell_timed_out)

    def _tell_timed_out(self, again: bool = True) -> None:
        """Tells how many were closed since the last line; `again`: and counts on."""
        untold, self._untold = self._untold, None
        if untold:
            self.log(f"{untold} more {'connection' if untold == 1 else 'connections'} closed:"
                     f" no export chosen within {self.handshake_deadline:g} s")
        if untold and again:
            self._untold = 0
            asyncio.get_running_loop().call_later(DEADLINE_LOG_S, self._tell_timed_out)

    def release(self, connection: Connection) -> None:
        """A connection that never reached transmission is closed: forget it."""
        with self.lock:
            self.connections.discard(connection)

    def transmitting(self) -> list[Connection]:
        """The connections in their transmission phase; those that ended are forgotten. Call
        with the lock held."""
        ended = {c for c in self.connections if c.handle is not None and c.handle.done}
        self.connections -= ended
        return [c for c in self.connections if c.handle is not None]

    def changes(self) -> int:
        """How many writes, trims and rotten blocks the export has seen (they change figures)."""
        return self.meter.changes

    async def close(self) -> None:
        """Stops listening, answers what each client already sent, then drops the connections."""
        self._accepting.cancel()
        for task in self._refusing:
            task.cancel()
        await asyncio.gather(self._accepting, *self._refusing, return_exceptions=True)
        self._listener.close()
        while self._reserve:
            os.close(self._reserve.pop())
        with self.lock:
            connections = list(self.connections)
        for connection in connections:
            connection.stop()
        await asyncio.gather(*(c.task for c in connections if c.handle is None),
                             return_exceptions=True)
        await asyncio.to_thread(drain, [c for c in connections if c.handle is not None])
        self._tell_timed_out(again=False)
        self.admin_calls.shutdown(wait=True)    # an Admin call in a thread cannot be cancelled

    def fenced(self) -> int:
        """The Admin was fenced by a newer writer: every connection transmitting is dropped at
        once, as if its network failed, and its thread ended. Its reads would return a state
        older than the newer writer's commits, and its writes fail at their flush anyway. No
        connection is handed over until reopened() (Handshake.find, hand_over). Returns how many
        were dropped."""
        with self.lock:
            dropped = self.transmitting()
        return _drop(dropped)

    def reopened(self, admin) -> int:
        """Serves `admin` from now on (a fenced cluster writer's, opened again from the newest
        catalog): every connection handed over before is dropped, as if its network failed, and
        its thread ended: their writes not flushed are gone with the old state, so one of them
        could read older data after newer. The next ones are served from `admin`. Returns how
        many were dropped (none, unless one was handed over as the fencing was told)."""
        with self.lock:
            self.admin = admin          # transmit() reads it under the lock
            dropped = self.transmitting()
        return _drop(dropped)

    # -- who is attached: asked by the service before it deletes or overwrites a VM ------------

    def clients(self, name: str) -> list[str]:
        """HOST:PORT of every connection transmitting on export `name`."""
        with self.lock:
            return [c.peer for c in self.transmitting() if c.export == name]

    def detach(self, name: str) -> None:
        """Drops every connection to export `name` at once, as if its network had failed, and
        returns once their threads have ended: a write a client had in flight lands before the
        caller's edit (a forced refresh or rollback), never after it."""
        with self.lock:
            attached = [c for c in self.transmitting() if c.export == name]
        _drop(attached)


def _drop(connections: list[Connection]) -> int:
    """Aborts the connections and waits for their threads; returns how many."""
    for connection in connections:
        connection.handle.abort()
    for connection in connections:
        connection.handle.join()
    return len(connections)


def drain(connections: list[Connection]) -> None:
    """Gives the connections' threads SHUTDOWN_GRACE_S to answer what they had received, then
    drops the connections of those still at it (a client that does not read, say)."""
    deadline = time.monotonic() + SHUTDOWN_GRACE_S
    for c in connections:
        c.handle.join(max(0.0, deadline - time.monotonic()))
    for c in connections:
        if not c.handle.done:
            c.handle.abort()
            c.handle.join()


class Connection:
    def __init__(self, server: NBDServer, sock: socket.socket, peer):
        self.server = server
        self.sock = sock
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unix"
        self.task: asyncio.Task | None = None               # the negotiation, on the loop
        self.handle: _native.Transmission | None = None     # the transmission, once handed over
        self.export: str | None = None                      # the VM it transmits on, from then
        self.deadline: asyncio.Timeout | None = None        # the handshake's, while it runs
        self.accepted = asyncio.get_running_loop().time()  # (loop time) out of files, it counts

    def stop(self) -> None:
        """Server shutdown: stop taking requests; those already received are still answered."""
        if self.handle is not None:
            self.handle.stop()      # the connection's thread sees the end of input
        else:
            self.task.cancel()

    async def serve(self) -> None:
        handed_over = False
        try:
            async with asyncio.timeout(self.server.handshake_deadline) as self.deadline:
                handed_over = await Handshake(self).run()
        except (ClientGone, OSError):   # (TimeoutError is one)
            # The client went away, or its socket failed: nothing more to answer.
            if self.deadline.expired():
                self.server.timed_out(self.peer)
        except ProtocolError as e:
            self.server.log(f"{self.peer}: {e}; closing the connection")
        finally:
            if not handed_over:
                self.sock.close()
                self.server.release(self)

    # -- negotiation, on the event loop --------------------------------------------------------

    def answered(self) -> None:
        """The server has answered an option: the client's next one has the whole deadline."""
        self.deadline.reschedule(asyncio.get_running_loop().time()
                                 + self.server.handshake_deadline)

    def end_handshake(self, now: float) -> None:
        """Closes the negotiation at once, as at its deadline (unless it already expires)."""
        if self.deadline is not None and not self.deadline.expired():
            self.deadline.reschedule(now)

    async def recv_exactly(self, n: int) -> bytes:
        loop = asyncio.get_running_loop()
        data = bytearray()
        while len(data) < n:
            chunk = await loop.sock_recv(self.sock, n - len(data))
            if not chunk:
                raise ClientGone()
            data += chunk
        return bytes(data)

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    def hand_over(self, session: Session, replies: bytes) -> str | None:
        """Hands the connection to a native thread of its own, which sends `replies` (the last
        one enters transmission), serves the requests and closes the connection. Returns why
        not, if the server cannot take another connection."""
        server = self.server
        with server.lock:
            transmitting = len(server.transmitting())
            fenced = server.admin.fenced()      # since find(): fenced() dropped the others
            if fenced:
                why = f"VM {session.export.name!r} is not served now: {fenced}"
            elif transmitting >= server.max_transmitting:
                why = (f"the server is serving {transmitting} connections, its limit:"
                       " try again later")
            else:
                try:
                    handle = transmit(server, self.sock, session, replies, self.peer)
                except RuntimeError as e:     # out of threads (a pids limit, say)
                    why = f"the server cannot start another connection: {e}"
                else:
                    self.handle, self.export = handle, session.export.name
                    return None
        server.log(f"{self.peer}: refused export {session.export.name!r}: {why}")
        return why      # told to try again later, it may, on this connection
