"""`blockfold node serve`: one node, an asyncssh server in front of a NodeStore.

It accepts only the client keys in DATA/authorized_keys, DATA/admin_keys,
DATA/admin_keys_readonly and DATA/peer_keys, as the options on their lines allow
(engine.node.keys). Node keys get the `blockfold-rpc` subsystem; the peer key (other nodes
copying blocks here) gets it for HELLO and PUT only (NOT_ALLOWED otherwise); admin keys get the
console in an interactive session with a PTY (console_session.py) and the `blockfold-admin`
subsystem, a relay to the cluster's service (admin_relay.py), both read-only for the keys in
admin_keys_readonly. Exec requests, other subsystems, port forwarding, agent and X11 forwarding
are all refused. Requests on a channel are answered in order, one at a time, by the Handler,
except COPY (engine.node.peers), which waits on other nodes: it is answered when done, and the
requests after it do not wait for it. The channels take turns between requests (a
coordinator's heartbeats ride a channel of their own beside its bulk PUTs); one bad channel
never stops the others.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from pathlib import Path

import asyncssh

from .. import lock
from ..errors import BlockfoldError, PoolLockedError
from ..net import adminwire, rpc
from . import keys, settings
from .admin_relay import AdminRelay
from .console_session import ConsoleSession
from .errors import NodeError, describe
from .handler import Handler
from .keys import Login
from .malloc import keep_freed_memory
from .store import NodeStore

log = logging.getLogger(__name__)


class RpcSession(asyncssh.SSHServerSession):
    """One channel: the RPC subsystem for node keys; an interactive console, or the admin relay,
    for admin keys."""

    def __init__(self, handler: Handler, login: Login, cluster: str | None):
        self.handler = handler
        self.login = login
        self.cluster = cluster
        self.reader = rpc.FrameReader()
        self.chan = None
        self.queue: asyncio.Queue = asyncio.Queue()
        self.worker = None
        self.term: str | None = None
        self.size = (80, 24)
        self.console: ConsoleSession | None = None
        self.relay: AdminRelay | None = None
        self.tasks: set[asyncio.Task] = set()     # background requests (COPY) being answered

    def connection_made(self, chan):
        self.chan = chan

    def pty_requested(self, term_type, term_size, term_modes):
        self.term = term_type or "xterm-256color"
        self.size = term_size[:2]
        return True

    def shell_requested(self):
        self.console = ConsoleSession(self.chan, self.cluster, self.login)
        return True

    def session_started(self):
        if self.console is not None:
            self.console.start(self.term, self.size)

    def terminal_size_changed(self, width, height, pixwidth, pixheight):
        if self.console is not None:
            self.console.resize(width, height)

    def exec_requested(self, command):
        return False

    def subsystem_requested(self, subsystem):
        if subsystem == adminwire.SUBSYSTEM:
            if self.login.console_role is None:
                return False
            # Without --cluster the relay is let in only to say so: a refused request tells the
            # client nothing but "Session request failed".
            self.relay = AdminRelay(self.chan, self.cluster, self.login)
            asyncio.get_running_loop().create_task(self.relay.start())
            return True
        if subsystem != rpc.SUBSYSTEM or not (self.login.rpc_allowed or self.login.peer):
            return False
        self.worker = asyncio.get_running_loop().create_task(self._serve())
        return True

    def pause_writing(self):
        if self.relay is not None:
            self.relay.pause_writing()

    def resume_writing(self):
        if self.relay is not None:
            self.relay.resume_writing()

    def data_received(self, data, datatype):
        if self.console is not None:
            self.console.input(data)
            return
        if self.relay is not None:
            self.relay.input(data)
            return
        if self.reader is None:         # the stream went bad: nothing after it can be framed
            return
        try:
            frames = self.reader.feed(data)
        except rpc.FrameError as e:
            self.reader = None
            for frame in e.frames:      # the requests before it are answered, then it closes
                self.queue.put_nowait(frame)
            self.queue.put_nowait(("fatal", 0, str(e)))
            return
        for frame in frames:
            self.queue.put_nowait(frame)

    def eof_received(self):
        if self.console is not None:
            return True             # a console ends when it exits, not on the client's EOF
        if self.relay is not None:
            self.relay.eof()
            return True             # the service's last replies may still be on their way
        self.queue.put_nowait(None)
        return False

    def connection_lost(self, exc):
        self.queue.put_nowait(None)
        if self.console is not None:
            self.console.closed()
        if self.relay is not None:
            self.relay.closed()

    async def _serve(self):
        while True:
            item = await self.queue.get()
            if item is None:
                return
            kind, request_id, body = item
            if kind == "fatal":
                self._write(rpc.encode_error(0, rpc.Code.BAD_REQUEST, body))
                self.chan.close()
                return
            if kind in self.handler.background and self._allowed(kind):
                task = asyncio.get_running_loop().create_task(
                    self._answer_later(kind, request_id, body))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
                continue
            self._write(self._answer(kind, request_id, body))
            # A get from a queue that holds frames never yields: let the other channel (a
            # heartbeat) in between two bulk requests.
            await asyncio.sleep(0)

    def _allowed(self, kind: int) -> bool:
        """A node key may make every request; the peer key only rpc.PEER_REQUESTS."""
        return self.login.rpc_allowed or kind in rpc.PEER_REQUESTS

    def _answer(self, kind: int, request_id: int, body: bytes) -> bytes:
        try:
            if not self._allowed(kind):
                raise NodeError(rpc.Code.NOT_ALLOWED, f"request type {kind} is not allowed to"
                                                      " the peer key")
            header, payload = rpc.parse_body(body)
            reply, data = self.handler.call(kind, header, payload,
                                            peer=not self.login.rpc_allowed)
            return rpc.encode(rpc.REPLY, request_id, reply, data)
        except Exception as e:     # noqa: BLE001 - every fault is an error reply (describe)
            return self._error(kind, request_id, e)

    async def _answer_later(self, kind: int, request_id: int, body: bytes) -> None:
        """A request that waits on other nodes (COPY): answered when done."""
        try:
            header, payload = rpc.parse_body(body)
            reply, data = await self.handler.call(kind, header, payload)   # checked, then run
            frame = rpc.encode(rpc.REPLY, request_id, reply, data)
        except Exception as e:     # noqa: BLE001 - every fault is an error reply (describe)
            frame = self._error(kind, request_id, e)
        self._write(frame)

    @staticmethod
    def _error(kind: int, request_id: int, e: Exception) -> bytes:
        code, message = describe(e)
        if code is rpc.Code.INTERNAL:
            log.exception("request type %d failed", kind)
        return rpc.encode_error(request_id, code, message)

    def _write(self, frame: bytes) -> None:
        if self.chan is not None:
            try:
                self.chan.write(frame)
            except (asyncssh.Error, OSError, BrokenPipeError):
                pass


class NodeServer(asyncssh.SSHServer):
    def __init__(self, handler: Handler, directory: Path, cluster: str | None):
        self.handler = handler
        self.directory = directory
        self.cluster = cluster
        self.login: Login | None = None
        self.address = ""

    def connection_made(self, conn):
        self.address = conn.get_extra_info("peername")[0]

    def begin_auth(self, username):
        return True

    def public_key_auth_supported(self):
        return True

    def validate_public_key(self, username, key):
        self.login = keys.login_for(self.directory, key, self.address)
        return self.login is not None

    def password_auth_supported(self):
        return False

    def kbdint_auth_supported(self):
        return False

    def session_requested(self):
        return RpcSession(self.handler, self.login, self.cluster)

    def connection_requested(self, dest_host, dest_port, orig_host, orig_port):
        return False

    def server_requested(self, listen_host, listen_port):
        return False


async def serve(directory: Path, host: str, port: int, memory: int | None = None,
                block_size: int | None = None, cluster: str | None = None,
                ready=None, etcd: tuple[list[str], str] | None = None) -> None:
    """Serves the node in `directory` on host:port (0: any free port) until SIGTERM or SIGINT.

    `memory` (bytes) keeps blocks and catalog in RAM; `block_size` must match the directory's,
    if given; `cluster` (a cluster directory) serves the console to admin keys; `ready(host,
    port)` is called once listening; `etcd` (client URLs, key prefix): the node keeps its
    liveness key nodes/ID there (engine.etcd), registered before `ready`, ended at stop; an
    etcd it cannot reach is retried and told once on stderr, never a reason not to serve.
    Raises BlockfoldError if no client could log in, the block size does not match, or the
    address cannot be listened on.
    """
    if not (directory / keys.AUTHORIZED_KEYS).is_file():
        raise BlockfoldError(f"{directory / keys.AUTHORIZED_KEYS} is missing: no client could"
                             " log in")
    node = settings.load(directory, block_size)
    keys.ensure_host_key(directory)
    # One node per data dir: a second one (a `cluster up` that took a stale pid in
    # cluster.json for a stopped node) would serve the same blocks beside it. The lock is
    # also how `cluster status` and `down` find the node (engine.cluster.processes). Taken
    # once the checks above passed: a refused start leaves no file behind.
    try:
        held = lock.PoolLock(directory)
    except PoolLockedError:
        raise BlockfoldError(f"node data dir {directory} is served already (pid"
                             f" {lock.holder(directory) or '?'})") from None
    try:
        await _serve(directory, host, port, memory, node, cluster, ready, etcd)
    finally:
        held.release()


async def _serve(directory: Path, host: str, port: int, memory: int | None, node: dict,
                 cluster: str | None, ready, etcd: tuple[list[str], str] | None) -> None:
    """serve() once the data dir is ours: `node` its settings."""
    store = NodeStore(directory, node["block_size"], memory)
    try:
        handler = Handler(store, node["name"])
        try:
            acceptor = await asyncssh.create_server(
                lambda: NodeServer(handler, directory, cluster), host, port,
                server_host_keys=[str(directory / keys.HOST_KEY)],
                encoding=None, allow_pty=True, x11_forwarding=False, agent_forwarding=False,
                allow_scp=False, sftp_factory=None, login_timeout=10, keepalive_interval=0,
                encryption_algs=rpc.CIPHERS, window=rpc.WINDOW, max_pktsize=rpc.PACKET)
        except OSError as e:
            raise BlockfoldError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
        address = f"{f'[{host}]' if ':' in host else host}:{acceptor.get_port()}"
        alive = None
        if etcd:
            from ..etcd import KeptKey      # on use: a node without etcd never loads it
            alive = KeptKey(
                *etcd, f"nodes/{keys.host_key_id(keys.host_public_key(directory))}",
                {"name": node["name"], "address": address, "incarnation": handler.incarnation,
                 "started": time.time()},
                f"node {node['name']}")
            await asyncio.to_thread(alive.start)
        # Before `ready`: a SIGTERM sent once it is seen must end the lease, not the process.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if ready is not None:
            ready(host, acceptor.get_port())
        await stop.wait()
        acceptor.close()
        await acceptor.wait_closed()
        await handler.peers.close()
        if alive:
            await asyncio.to_thread(alive.close)
    finally:
        store.close()


def run(data: str, host: str, port: int, memory: int | None = None,
        block_size: int | None = None, cluster: str | None = None, ready=None,
        etcd: tuple[list[str], str] | None = None) -> None:
    """serve() on its own event loop, returning once the node has stopped."""
    keep_freed_memory()
    asyncio.run(serve(Path(data), host, port, memory, block_size, cluster, ready, etcd))
