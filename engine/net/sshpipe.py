"""A plain socket that is an SSH subsystem channel, for a client that speaks its protocol over a
blocking socket (engine/remoteadmin.py) to a service behind a node's SSH server.

The login is the user's own, as OpenSSH would make it: the keys in ~/.ssh (and an agent), and the
host key checked against ~/.ssh/known_hosts ([host]:port for a port other than 22); these are
asyncssh's defaults. The caller gets one end of a socketpair; a thread of its own runs an event
loop that copies bytes between the other end and the channel until either side closes.
"""

from __future__ import annotations

import asyncio
import getpass
import socket
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from urllib.parse import urlsplit

import asyncssh

from ..errors import BlockfoldError
from . import rpc

CONNECT_TIMEOUT = 30.0
CHUNK = 1 << 20


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    username: str

    def __str__(self) -> str:
        return f"ssh://{self.username}@{self.host}:{self.port}"


def parse_url(url: str) -> Target:
    """ssh://[USER@]HOST[:PORT] (port 22 and the local user by default). Raises BlockfoldError."""
    parts = urlsplit(url)
    try:
        port = parts.port or 22
    except ValueError:
        port = None
    if parts.scheme != "ssh" or not parts.hostname or port is None or parts.path not in ("", "/"):
        raise BlockfoldError(f"not a service address: {url!r} (use ssh://USER@HOST:PORT)")
    return Target(parts.hostname, port, parts.username or getpass.getuser())


def open_subsystem(target: Target, subsystem: str) -> socket.socket:
    """A socket whose bytes are the `subsystem` channel on `target`. Raises BlockfoldError (no
    connection, the host key unknown or changed, the key refused, the subsystem refused)."""
    mine, theirs = socket.socketpair()
    opened: Future = Future()
    threading.Thread(target=lambda: asyncio.run(_pump(target, subsystem, theirs, opened)),
                     name="blockfold-ssh", daemon=True).start()
    try:
        opened.result(CONNECT_TIMEOUT + 5)
    except BaseException:
        mine.close()
        raise
    return mine


async def _pump(target: Target, subsystem: str, sock: socket.socket, opened: Future) -> None:
    try:
        conn = await asyncio.wait_for(
            asyncssh.connect(target.host, target.port, username=target.username,
                             encryption_algs=rpc.CIPHERS, password_auth=False,
                             kbdint_auth=False),
            CONNECT_TIMEOUT)
    except (TimeoutError, OSError, asyncssh.Error) as e:
        sock.close()
        opened.set_exception(BlockfoldError(f"cannot connect to {target}: {_reason(e)}"))
        return
    try:
        async with conn:
            try:
                writer, reader, _ = await conn.open_session(subsystem=subsystem, encoding=None,
                                                            window=rpc.WINDOW,
                                                            max_pktsize=rpc.PACKET)
            except asyncssh.Error as e:
                opened.set_exception(BlockfoldError(
                    f"{target} serves no {subsystem}: {_reason(e)}"))
                return
            opened.set_result(None)
            await _copy_both_ways(sock, reader, writer)
    finally:
        sock.close()


async def _copy_both_ways(sock: socket.socket, reader, writer) -> None:
    loop = asyncio.get_running_loop()
    sock.setblocking(False)

    async def up():                  # the caller -> the channel
        while data := await loop.sock_recv(sock, CHUNK):
            writer.write(data)
            await writer.drain()
        writer.write_eof()

    async def down():                # the channel -> the caller
        while data := await reader.read(CHUNK):
            await loop.sock_sendall(sock, data)
        sock.shutdown(socket.SHUT_WR)

    tasks = [asyncio.create_task(up()), asyncio.create_task(down())]
    # Either side ending ends the pipe: the other has nobody left to talk to.
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _reason(e: BaseException) -> str:
    if isinstance(e, asyncssh.HostKeyNotVerifiable):
        return f"the host key is not in ~/.ssh/known_hosts or does not match ({e.reason})"
    if isinstance(e, asyncssh.PermissionDenied):
        return "no key of yours is accepted (the node lists admin keys in DATA/admin_keys)"
    if isinstance(e, asyncssh.Error):
        return e.reason
    if isinstance(e, TimeoutError):
        return "timed out"
    return getattr(e, "strerror", None) or str(e)
