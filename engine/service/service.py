"""A service: one process owns a pool (or a cluster's write lease) and does everything at once.

    admin socket    DIR/admin.sock: any number of CLIs and consoles (engine/service/session.py),
                    and the SSH relays of a cluster's nodes
    NBD             optional (--nbd HOST:PORT): every VM an export (engine/nbd)
    metrics         optional (--metrics HOST:PORT): Prometheus text over HTTP
    jobs            long calls with progress and cancel; a scrub in the background

Everything runs on one asyncio loop but the Admin's calls, which block and run on threads of
their own (a thread per admin call, one per NBD connection). The Admin is the pool's, writable;
the service hands it to its clients as a ServedAdmin. A cluster's Admin that was fenced and took
its cluster back hands the service the cluster reopened (_reopened): NBD, the ServedAdmin and
every call after switch to it. A standby (ClusterAdmin.standby: another service holds the
cluster) is served as a fenced one is, and takes the cluster over by the same seam; it leaves
DIR/admin.sock to the service that answers there until then.

Lifecycle. `run()` serves until SIGTERM or SIGINT (DIR/admin.sock made again meanwhile if it is
removed: _keep_socket), then drains: the admin socket is removed (new CLIs open the pool
themselves once it is free), NBD answers what it had received, running jobs are cancelled and
every admin call gets DRAIN_S to finish; then the caller closes the service (close), which
closes its Admin: that flushes and marks the pool clean. A SIGKILL leaves
a pool the next open rebuilds, losing nothing that was flushed. `start_in_thread()` serves from
a thread instead, for a console that holds the pool (no signals; `stop()` drains, then `close()`).
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from .. import formats
from ..errors import BlockfoldError, CancelledError
from ..net import asynciolog
from ..net.adminwire import SOCKET
from . import socketfile
from .metrics import Metrics
from .served import ServedAdmin
from .session import DEADLINE_S, Session

if TYPE_CHECKING:
    from ..localadmin import LocalAdmin

DRAIN_S = 10.0
# How often the service looks whether DIR/admin.sock is still its own (_keep_socket).
SOCKET_CHECK_S = 1.0
# Admin clients closed at their deadline (session.DEADLINE_S): the first is told, the others in a
# line each this often.
DEADLINE_LOG_S = 10.0


class Service:
    def __init__(self, admin: LocalAdmin, directory, *, actor: str, group: str | None = None,
                 nbd: tuple[str, int] | None = None, nbd_read_only: bool = False,
                 metrics: tuple[str, int] | None = None,
                 log: Callable[[str], None] | None = None):
        """Serves `admin` (writable: a LocalAdmin or a ClusterAdmin, which may hand over a
        reopened one, see _reopened) from `directory` (the pool's or the cluster's). `actor`
        names what the service does on its own account in events; `group` opens the admin
        socket to a group; `nbd` and `metrics` are addresses to serve on."""
        self.inner = admin
        self.admin = ServedAdmin(admin, actor)
        # Fenced before it serves: a standby, waiting for another service's lease to run out.
        self.standby = bool(admin.fenced())
        admin.on_fenced(self._fenced)
        admin.on_reopen(self._reopened)
        self.socket_path = Path(directory) / SOCKET
        self.group = group
        self.nbd_address, self.nbd_read_only = nbd, nbd_read_only
        self.metrics_address = metrics
        self.log = log or (lambda message: print(f"blockfold: {message}", file=sys.stderr,
                                                 flush=True))
        self.sessions: set[Session] = set()
        self.nbd = None
        self.metrics: Metrics | None = None
        self._server: asyncio.AbstractServer | None = None
        self._socket_id: tuple[int, int] | None = None     # DIR/admin.sock as bound (socketfile)
        self._deferred = False      # a standby leaves DIR/admin.sock to the live service's
        # Set once start() is done (or failed): a standby's take-over waits for it, so that
        # what _reopened switches over is what start() made.
        self._started = threading.Event()
        self._keeper: asyncio.Task | None = None            # _keep_socket
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._why = ""          # what stop() tells the clients of the jobs it cancels
        self._untold: int | None = None     # admin clients closed at the deadline, not told

    # -- serving ------------------------------------------------------------------------------

    async def start(self) -> dict[str, tuple[str, int]]:
        """Listens on everything asked for; returns {"nbd": address, "metrics": address} of
        those that are. Raises BlockfoldError (an address in use, a socket that cannot be
        made)."""
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        asynciolog.quieten()    # the admin socket at the open-file limit: one line, not a flood
        bound = {}
        try:
            if self.metrics_address or self.nbd_address:
                self.metrics = Metrics(self.admin)
            if self.metrics_address:
                with _naming("metrics", self.metrics_address):
                    bound["metrics"] = self.metrics.serve(*self.metrics_address)
            if self.nbd_address:
                from ..nbd.server import NBDServer   # asyncio's NBD only where it is served
                nbd = NBDServer(self.inner, self.metrics.meter, read_only=self.nbd_read_only)
                with _naming("NBD", self.nbd_address):
                    bound["nbd"] = await nbd.start(*self.nbd_address)
                self.nbd = self.admin.attachments = nbd     # (one that failed has nothing to close)
            await self._listen()
            self._keeper = asyncio.create_task(self._keep_socket())
        except OSError as e:
            await self._close_listeners()
            raise BlockfoldError(f"cannot serve: {e.strerror or e}") from None
        except BaseException:
            await self._close_listeners()
            raise
        finally:
            self._started.set()
        return bound

    async def _listen(self) -> None:
        """Listens on DIR/admin.sock (made afresh: see socketfile); a standby whose
        DIR/admin.sock a live service answers (the writer's, same directory) leaves it to that
        one, and binds it once it takes the cluster over (_listen_again)."""
        if self.standby and not self._deferred and socketfile.answers(self.socket_path):
            self._deferred = True
            self.log(f"{self.socket_path} is the serving writer's: this standby listens there"
                     " once it takes the cluster over")
            return
        sock = socketfile.bind(self.socket_path, self.group)
        self._socket_id = socketfile.identity(self.socket_path)
        self._server = await asyncio.start_unix_server(self._client, sock=sock)

    async def _listen_again(self) -> None:
        """After a take-back: if another service made DIR/admin.sock its own meanwhile (the newer
        writer, a standby that took over), this one binds it again, so that commands reach the
        writer; sessions open on the old listener go on."""
        if self._server is None and not self._deferred:
            return      # stopped meanwhile
        if self._server is not None and socketfile.identity(self.socket_path) == self._socket_id:
            return
        self._deferred = False
        try:
            await self._bind_again()
        except BlockfoldError as e:
            self.log(f"cannot listen on {self.socket_path} again: {e}")

    async def _keep_socket(self) -> None:
        """Every SOCKET_CHECK_S: DIR/admin.sock made again if it is no longer the one bound here
        and no service answers there: removed (a tmp cleaner, a user taking it for a killed
        service's) or replaced by a file nobody listens on. Commands reach this service only
        through it, and its lock on the pool lets no other process serve the pool meanwhile.
        One another service answers on (a cluster's newer writer) is left to it. Said in the
        log once, made or not."""
        told = False
        while True:
            await asyncio.sleep(SOCKET_CHECK_S)
            if self._deferred:
                continue        # a standby's: bound once it takes the cluster over
            found = socketfile.identity(self.socket_path)
            if found == self._socket_id or (found is not None and await asyncio.to_thread(
                    socketfile.answers, self.socket_path)):
                continue
            what = "removed" if found is None else "replaced by a file no service answers on"
            try:
                await self._bind_again()
            except BlockfoldError as e:
                if not told:
                    self.log(f"{self.socket_path} was {what}; cannot make it again ({e}): no"
                             " command reaches this service until it can, or it is restarted")
                told = True
                continue
            told = False
            self.log(f"{self.socket_path} was {what}: made it again")

    async def _bind_again(self) -> None:
        """DIR/admin.sock bound anew; sessions open on the old listener go on. Raises
        BlockfoldError (the socket cannot be made)."""
        old = self._server
        await self._listen()
        if old is not None:     # a standby's first bind
            old.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = Session(self, reader, writer)
        self.sessions.add(session)
        try:
            await session.run()
        except asyncio.CancelledError:
            # The service stops with this client connected. Python 3.11's start_server asks
            # the cancelled task for its exception and prints a traceback for it (3.12 does not).
            pass
        finally:
            self.sessions.discard(session)

    def _fenced(self, line: str) -> None:
        """A newer writer fenced the cluster's Admin (engine/cluster/admin.py; `line` says so):
        NBD drops every connection at once, admin calls other than reporting are refused
        (ServedAdmin, methods.WHILE_FENCED) until the take-back, and the running jobs are
        cancelled and waited for (DRAIN_S). Called from the engine's thread."""
        self.admin.fence(line)
        dropped = self.nbd.fenced() if self.nbd is not None else 0
        cancelled = self.admin.job_list.stop_all(
            DRAIN_S, "the service was fenced: it worked from a state older than the newer"
                     " writer's commits; run it again once the cluster is taken back")
        self.log(f"at the fencing: {formats.counted(dropped, 'NBD connection')} dropped,"
                 f" {formats.counted(cancelled, 'job')} cancelled (clients reconnect, and jobs may"
                 " run again, once the cluster is taken back)")

    def _reopened(self, admin: LocalAdmin) -> None:
        """A fenced cluster writer took its cluster back (engine/cluster/admin.py), and `admin`
        is the cluster opened again: NBD drops every connection to the old one and serves new
        ones from `admin`, every admin call goes to it, the jobs running on the old one are
        cancelled and waited for (DRAIN_S), and DIR/admin.sock is bound again if another
        service took it meanwhile (or, a standby's, when it was left to the writer's). Called
        from the engine's thread."""
        self._started.wait()    # a standby's lease may be free at once
        standby, self.standby = self.standby, False     # (binds DIR/admin.sock now: _listen)
        dropped = self.nbd.reopened(admin) if self.nbd is not None else 0
        cancelled = self.admin.reopened(admin, DRAIN_S)
        self.inner = admin
        listening = self._listen_again()
        try:
            asyncio.run_coroutine_threadsafe(listening, self._loop)
        except RuntimeError:        # the loop has ended: the service stopped meanwhile
            listening.close()
        jobs = (f"; {formats.counted(cancelled, 'job')} working from the fenced state"
                f" {'was' if cancelled == 1 else 'were'} cancelled") if cancelled else ""
        dropped = (f"; {formats.counted(dropped, 'NBD connection')} open before"
                   f" {'was' if dropped == 1 else 'were'} dropped") if dropped else ""
        if standby:
            self.log(f"serving {admin.name}: this standby took it over{dropped}{jobs}")
        else:
            self.log(f"serving {admin.name} again{dropped}{jobs}")

    def timed_out(self, client: str) -> None:
        """An admin client was closed at its deadline (session.DEADLINE_S): the first is told;
        those after it are counted and told in one line every DEADLINE_LOG_S (a flood of silent
        connections would flood stderr). Called on the loop."""
        if self._untold is not None:
            self._untold += 1
            return
        self.log(f"{client}: no whole request within {DEADLINE_S:g} s; closing the connection")
        self._untold = 0
        self._loop.call_later(DEADLINE_LOG_S, self._tell_timed_out)

    def _tell_timed_out(self, again: bool = True) -> None:
        """Tells how many were closed since the last line; `again`: and counts on."""
        untold, self._untold = self._untold, None
        if untold:
            self.log(f"{formats.counted(untold, 'more admin connection')} closed: no whole"
                     f" request within {DEADLINE_S:g} s")
        if untold and again:
            self._untold = 0
            self._loop.call_later(DEADLINE_LOG_S, self._tell_timed_out)

    def log_failure(self, method: str, error: BaseException) -> None:
        """A call failed: told to its client; a fault of ours is logged here too."""
        if not isinstance(error, (BlockfoldError, OSError, CancelledError)):
            self.log(f"{method}: internal error: {type(error).__name__}: {error}")

    # -- stopping -----------------------------------------------------------------------------

    def close(self) -> None:
        """Closes the Admin it serves, once: the one it was given, or the one that took its
        place at a take-back (_reopened), which is this service's alone to close. Call once
        stopped. Raises what the Admin's close raises (a fenced cluster's change not
        committed)."""
        while (admin := self.inner) is not None:
            try:
                admin.close()   # stops its healer: a take-back under way hands over first
            finally:
                if self.inner is admin:
                    self.inner = None

    async def drain(self, why: str = "") -> None:
        """Stops taking clients, answers what NBD received, cancels the jobs (`why`, if given,
        is what their clients are told: Jobs.stop_all), and gives every admin call DRAIN_S to
        finish."""
        await self._close_listeners()
        await asyncio.to_thread(self.admin.job_list.stop_all, DRAIN_S, why)
        calls = [c for s in self.sessions for c in s.calls.values()]
        await asyncio.to_thread(_join, [c.ended for c in calls], DRAIN_S)
        for session in list(self.sessions):
            session.gone()
        self._tell_timed_out(again=False)

    async def _close_listeners(self) -> None:
        self._deferred = False
        if self._keeper is not None:
            self._keeper.cancel()
            self._keeper = None
        if self._server is not None:
            self._server.close()
            socketfile.remove(self.socket_path, self._socket_id)
            self._server = None
        if self.nbd is not None:
            await self.nbd.close()
            self.nbd = None
        if self.metrics is not None:
            self.metrics.close()

    # -- in the foreground, until a signal ----------------------------------------------------

    def run(self, ready: Callable[[dict], None] | None = None) -> None:
        """Serves until SIGTERM or SIGINT, then drains. `ready(bound)` is called once listening
        (see start). The caller closes the service afterwards (close)."""
        asyncio.run(self._run(ready))

    async def _run(self, ready) -> None:
        bound = await self.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        try:
            if ready is not None:
                ready(bound)
            await self._stopping.wait()
        finally:
            await self.drain()

    # -- from a thread, beside a console ------------------------------------------------------

    def start_in_thread(self) -> dict[str, tuple[str, int]]:
        """Serves from a thread of its own; returns once listening, with the addresses bound
        (see start). Raises BlockfoldError."""
        started: Future = Future()

        async def main():
            try:
                bound = await self.start()
            except BaseException as e:     # noqa: BLE001 - raised in the thread that waits
                started.set_exception(e)
                return
            started.set_result(bound)
            try:
                await self._stopping.wait()
            finally:
                await self.drain(self._why)

        self._thread = threading.Thread(target=asyncio.run, args=(main(),),
                                        name="blockfold-service", daemon=True)
        self._thread.start()
        return started.result()

    def stop(self, why: str = "") -> None:
        """Drains a service started with start_in_thread and waits for it; `why`, if given, is
        what the clients of the jobs it cancels are told ("the console serving pool P quit")."""
        if self._thread is None:
            return
        self._why = why
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join()
        self._thread = None


@contextmanager
def _naming(what: str, address: tuple[str, int]):
    """An address that cannot be listened on, named in one line with what to do: raises
    BlockfoldError."""
    host, port = address
    where = f"{f'[{host}]' if ':' in host else host}:{port}"
    try:
        yield
    except OSError as e:
        hint = (": another process listens there (`ss -ltnp` names it); stop it, or give"
                " another port (0: any free)" if e.errno == errno.EADDRINUSE else "")
        # (socket.create_server's strerror adds the address again, as a Python tuple)
        reason = os.strerror(e.errno) if e.errno else str(e)
        raise BlockfoldError(f"cannot serve {what} on {where}: {reason}{hint}") from None


def _join(events: list[threading.Event], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for event in events:
        event.wait(max(0.0, deadline - time.monotonic()))
