"""The coordinator's side of the SSH transport: one connection per node, with two RPC channels.

asyncssh runs on its own event loop in a background thread (IoLoop), so the synchronous pool code
calls `loop.run(coroutine, timeout)`. A NodeClient multiplexes requests by request id on two
channels: heartbeats and lease requests on a control channel, everything else on the bulk one. A
node answers each channel's requests in order, so a heartbeat queued behind megabytes of PUTs
would wait for all of them; on its own channel it waits for one at most. When the connection
drops, every request in flight fails at once with NodeUnreachable, which is what lets reads fail
over to another replica without waiting for a timeout.
"""

from __future__ import annotations

import asyncio
import itertools
import threading

import asyncssh

from ..errors import BlockfoldError
from . import asynciolog, rpc

CONNECT_TIMEOUT = 3.0
USERNAME = "blockfold"
CONTROL = {rpc.HELLO, rpc.HEARTBEAT, rpc.LEASE, rpc.RELEASE}    # the control channel's requests


asynciolog.quieten()     # a dead node's lost writes would flood stderr


class NodeUnreachable(Exception):
    """The node could not be reached, or the connection died during the request."""

    def __init__(self, message: str, timed_out: bool = False):
        super().__init__(message)
        self.timed_out = timed_out      # slow, perhaps, rather than surely gone


class HostKeyMismatch(BlockfoldError):
    pass


class KeyRefused(BlockfoldError):
    """The node refused our client key: it is not this cluster's node (or not yet)."""


class IoLoop:
    """An asyncio loop in a daemon thread."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="blockfold-io",
                                       daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float | None = None):
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise NodeUnreachable("timed out", timed_out=True) from None

    def close(self) -> None:
        async def cancel_all():
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.run(cancel_all(), 5)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)


class NodeClient:
    """One node's connection. Every method is a coroutine run on the IoLoop."""

    def __init__(self, name: str, address: str, host_key: str | None, client_key: str):
        self.name = name
        self.address = address
        self.host_key = host_key
        self.client_key = client_key
        self.conn = None
        self.writers: tuple | None = None     # (bulk, control) channels' writers
        self.pending: dict[int, asyncio.Future] = {}
        self.ids = itertools.count(1)
        self.reader_tasks: list[asyncio.Task] = []
        self._connecting: asyncio.Lock | None = None

    @property
    def connected(self) -> bool:
        return self.conn is not None

    async def connect(self) -> None:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self.conn is not None:
                return
            host, port = rpc.node_address(self.address) or (self.address, 0)
            trusted = [asyncssh.import_public_key(self.host_key)] if self.host_key else []
            try:
                conn = await asyncio.wait_for(asyncssh.connect(
                    host, port, username=USERNAME, client_keys=[self.client_key],
                    known_hosts=(trusted, [], []), agent_path=None, config=None,
                    client_host_keys=None, encoding=None, keepalive_interval=0,
                    preferred_auth="publickey", encryption_algs=rpc.CIPHERS, window=rpc.WINDOW,
                    max_pktsize=rpc.PACKET), CONNECT_TIMEOUT)
            except asyncssh.HostKeyNotVerifiable:
                raise HostKeyMismatch(
                    f"node {self.name} ({self.address}) presented a host key that does not match"
                    " the pinned one: refusing it") from None
            except asyncssh.PermissionDenied:
                raise KeyRefused(f"node {self.name} ({self.address}) refused our client"
                                 " key") from None
            except (TimeoutError, OSError, asyncssh.Error) as e:
                raise NodeUnreachable(f"node {self.name} ({self.address}): {e}") from None
            try:
                channels = [await conn.open_session(subsystem=rpc.SUBSYSTEM, encoding=None)
                            for _ in range(2)]
            except (OSError, asyncssh.Error) as e:
                conn.close()
                raise NodeUnreachable(f"node {self.name}: {e}") from None
            self.conn = conn
            self.writers = tuple(writer for writer, _, _ in channels)
            loop = asyncio.get_running_loop()
            self.reader_tasks = [loop.create_task(self._read(reader, conn))
                                 for _, reader, _ in channels]

    async def _read(self, reader, conn) -> None:
        error = "connection closed"
        try:
            while True:
                kind, request_id, body_len = rpc.parse_header(
                    await reader.readexactly(rpc.HEADER.size))
                body = await reader.readexactly(body_len)
                future = self.pending.pop(request_id, None)
                if future is None or future.done():
                    continue
                header, payload = rpc.parse_body(body)
                if kind == rpc.REPLY:
                    future.set_result((header, payload))
                else:
                    future.set_exception(rpc.RemoteError.from_reply(header))
        except (asyncio.IncompleteReadError, OSError, asyncssh.Error, rpc.FrameError) as e:
            error = str(e) or error
        except asyncio.CancelledError:
            pass
        finally:
            self._drop(conn, error)

    def _drop(self, conn, error: str) -> None:
        conn.close()
        if self.conn is not conn:
            return          # dropped already (its other channel): the pending are a newer one's
        self.conn = self.writers = None
        pending, self.pending = self.pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(NodeUnreachable(f"node {self.name}: {error}"))

    async def call(self, kind: int, header: dict | None = None, payload=b"",
                   timeout: float = 10.0):
        """(reply header, reply payload); raises NodeUnreachable or rpc.RemoteError. `payload`:
        bytes or a C-contiguous array, or a tuple of them sent one after the other (ids, then
        blocks): each is written as it is, not copied into a frame first."""
        if self.conn is None:
            await self.connect()
        request_id = next(self.ids) & 0xFFFF_FFFF
        future = asyncio.get_running_loop().create_future()
        self.pending[request_id] = future
        conn = self.conn
        writer = self.writers[kind in CONTROL]
        parts = [memoryview(p).cast("B") for p in
                 (payload if isinstance(payload, tuple) else (payload,))]
        try:
            writer.write(rpc.encode_head(kind, request_id, header, sum(map(len, parts))))
            for part in parts:
                if len(part):
                    writer.write(part)     # asyncssh tests `not data`: an array has no truth
                                           # value, a view has
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            # The connection stays: a node busy with bulk data ahead of this request is slow,
            # not gone. The caller decides (a read fails over; a heartbeat counts a miss).
            raise NodeUnreachable(f"node {self.name}: timed out", timed_out=True) from None
        except (OSError, asyncssh.Error) as e:
            self._drop(conn, str(e))
            raise NodeUnreachable(f"node {self.name}: {e}") from None
        finally:
            # Answered, timed out, or abandoned by the caller (cancelled): a late reply is
            # dropped, and a node that never answers leaves nothing behind.
            self.pending.pop(request_id, None)

    def disconnect(self, why: str) -> None:
        """Drops the connection, failing what is in flight (run on the IoLoop). For a node
        silent to heartbeats (a cut link, a hung host): its TCP retransmissions back off, so
        the old connection may stay mute long after the path is back; the next request
        connects afresh."""
        if self.conn is not None:
            self._drop(self.conn, why)

    async def close(self) -> None:
        if self.conn is not None:
            conn = self.conn
            self._drop(conn, "closed")
            await conn.wait_closed()


async def fetch_host_key(address: str) -> str:
    """The host key a node presents, for pinning on first contact (OpenSSH one-line form)."""
    host, port = rpc.node_address(address) or (address, 0)
    try:
        key = await asyncio.wait_for(asyncssh.get_server_host_key(host, port),
                                     CONNECT_TIMEOUT)
    except (TimeoutError, OSError, asyncssh.Error) as e:
        raise BlockfoldError(f"cannot reach a node at {address}: {e}") from None
    return key.export_public_key().decode().strip()
