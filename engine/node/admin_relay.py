"""The `blockfold-admin` SSH subsystem: an admin key's way to its cluster's service from anywhere.

A node started with `--cluster DIR` relays the subsystem's bytes to the service that holds that
cluster (DIR/admin.sock, on this machine), after one LOGIN frame that names the key's comment as
the actor and says whether the key is read-only (admin_keys_readonly): the service takes LOGIN
only from a peer running as its own user, first, and then lets the client behind it neither rename
itself nor write if it is read-only. The node never parses what follows; the service checks
every frame. Each direction waits while the other end is slow to take bytes. A node started
without `--cluster` takes the subsystem only to answer it with an ERROR frame saying so.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncssh

from ..net import adminwire, rpc
from .keys import Login

CHUNK = 1 << 20
HIGH_WATER = 8 << 20        # bytes waiting for the service before the channel stops reading


NO_CLUSTER = ("this node serves no admin service: it was started without --cluster; start it"
              " with `blockfold node serve --cluster DIR` on the machine that holds the cluster"
              " directory DIR")


class AdminRelay:
    """The relay of one channel to the service of `cluster` (its directory), or, on a node
    started without --cluster (`cluster` None), a refusal that says so."""

    def __init__(self, chan, cluster: str | None, login: Login):
        self.chan = chan
        self.path = None if cluster is None else Path(cluster) / adminwire.SOCKET
        self.login = login
        self.writer: asyncio.StreamWriter | None = None
        self.early: list[bytes] = []        # what the client sent before the service answered
        self.writable = asyncio.Event()     # the channel takes more bytes (flow control)
        self.writable.set()

    async def start(self) -> None:
        if self.path is None:
            self._refuse(NO_CLUSTER)
            return
        try:
            with adminwire.socket_address(self.path) as address:
                reader, self.writer = await asyncio.open_unix_connection(address)
        except OSError as e:
            self._refuse(self._why(e))
            return
        self.writer.write(rpc.encode(adminwire.LOGIN, 0, {
            "actor": self.login.actor, "read_only": self.login.console_role == "readonly"}))
        for data in self.early:
            self.writer.write(data)
        self.early = []
        try:
            while data := await reader.read(CHUNK):
                await self.writable.wait()
                self.chan.write(data)
        except (OSError, asyncssh.Error):
            pass
        self._close_channel()

    def _why(self, e: OSError) -> str:
        if isinstance(e, (FileNotFoundError, ConnectionRefusedError)):
            return (f"no service runs the cluster {self.path.parent}: start one with"
                    f" `blockfold -c {self.path.parent} serve`")
        return f"cannot reach the service of {self.path.parent}: {e.strerror or e}"

    def _refuse(self, message: str) -> None:
        """Tells the client why in the protocol's own terms (an error to no call in
        particular), then ends the channel."""
        try:
            self.chan.write(rpc.encode(adminwire.ERROR, 0, {
                "error": message, "code": adminwire.Code.ERROR.value}))
        except (OSError, asyncssh.Error):
            pass
        self._close_channel()

    def _close_channel(self) -> None:
        try:
            self.chan.exit(0)
        except (OSError, asyncssh.Error):
            pass

    # -- from the SSH session -----------------------------------------------------------------

    def input(self, data: bytes) -> None:
        if self.writer is None:
            self.early.append(data)
            return
        if self.writer.is_closing():
            return
        self.writer.write(data)
        if self.writer.transport.get_write_buffer_size() > HIGH_WATER:
            self.chan.pause_reading()
            asyncio.get_running_loop().create_task(self._resume_when_drained())

    async def _resume_when_drained(self) -> None:
        try:
            await self.writer.drain()
        except ConnectionError:
            return
        self.chan.resume_reading()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def eof(self) -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write_eof()

    def closed(self) -> None:
        """The client went away: so does this connection to the service, which cancels its
        calls."""
        if self.writer is not None:
            try:
                self.writer.transport.abort()
            except (OSError, RuntimeError):
                pass

