"""`blockfold node serve`: one node, an asyncssh server in front of a NodeStore.

It accepts only the client keys in DATA/authorized_keys, DATA/admin_keys and
DATA/admin_keys_readonly. Node keys (authorized_keys) get the `blockfold-rpc` subsystem; admin keys
get the console in an interactive session with a PTY (see console_session.py), read-only for the
keys in admin_keys_readonly. Exec requests, other subsystems, port forwarding, agent and X11
forwarding are all refused. Requests on a channel are answered in order, one at a time; one bad
channel never stops the others.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import asyncssh
import numpy as np

from ..cluster.nodestore import NodeError, NodeStore
from ..cluster import changeset
from . import rpc
from .console_session import ADMIN_KEYS, READONLY_KEYS, ConsoleSession
from .client import CIPHERS, PACKET, WINDOW

HOST_KEY = "host_key"
AUTHORIZED_KEYS = "authorized_keys"
NODE_FILE = "node.json"
LEASE_SECONDS = 10.0
MAX_CATALOG = 16 << 30       # a staged catalog transfer may not grow past this


def ensure_host_key(directory: Path) -> None:
    """An ed25519 host key, made on first start and kept for good: clients pin it."""
    path = directory / HOST_KEY
    if not path.exists():
        key = asyncssh.generate_private_key("ssh-ed25519")
        key.write_private_key(str(path))
        os.chmod(path, 0o600)
        key.write_public_key(str(path) + ".pub")


def node_settings(directory: Path, block_size: int | None) -> dict:
    path = directory / NODE_FILE
    settings = json.loads(path.read_text()) if path.exists() else {}
    if block_size and settings.get("block_size", block_size) != block_size:
        raise SystemExit(f"blockfold: error: {directory} holds blocks of "
                         f"{settings['block_size']} bytes, not {block_size}")
    if "block_size" not in settings:
        settings["block_size"] = block_size or 4096
        settings.setdefault("name", directory.name)
        path.write_text(json.dumps(settings))
    return settings


class Handler:
    """The RPC methods, over one NodeStore shared by every channel."""

    def __init__(self, store: NodeStore, name: str):
        self.store = store
        self.name = name
        self.staged = None          # a big catalog transfer, part by part: (key, next, bytes)
        self.image: tuple[int, bytes] | None = None  # (version, catalog image) being fetched

    def call(self, kind: int, header: dict, payload: memoryview) -> tuple[dict, bytes]:
        s = self.store
        if kind == rpc.HELLO or kind == rpc.HEARTBEAT:
            holder = header.get("holder")
            if kind == rpc.HEARTBEAT and holder is not None and holder == s.lease_holder:
                s.lease(header["holder"], float(header.get("lease", LEASE_SECONDS)))
            return {"name": self.name, "block_size": s.block_size, "blocks": s.held,
                    "capacity_bytes": s.capacity_bytes, "version": s.version,
                    "memory": bool(s.memory)}, b""
        if kind == rpc.PUT:
            ids, blocks = _ids(header, payload)
            status = s.put(ids, blocks)
            return {}, status.tobytes()
        if kind == rpc.GET:
            data, missing = s.get(_ids(header, payload)[0])
            return {"missing": missing}, data
        if kind == rpc.DROP:
            s.check_lease(header.get("holder"))
            return {"dropped": s.drop(_ids(header, payload)[0])}, b""
        if kind == rpc.INVENTORY:
            ids, words, nxt = s.inventory(int(header.get("start", 0)))
            return {"count": len(ids), "next": nxt}, ids.tobytes() + words.tobytes()
        if kind == rpc.SYNC:
            s.sync()
            return {}, b""
        if kind == rpc.SCRUB:
            return {"bad": s.scrub()}, b""
        if kind == rpc.CATALOG_VERSION:
            return {"version": s.version}, b""
        if kind == rpc.CATALOG_FETCH:
            offset = int(header.get("offset", 0))
            if offset == 0 or self.image is None or self.image[0] != s.version:
                self.image = (s.version, s.catalog_image())
            version, image = self.image
            length = min(int(header.get("length", rpc.CATALOG_PART)), rpc.CATALOG_PART)
            return {"version": version, "size": len(image)}, image[offset:offset + length]
        if kind == rpc.CATALOG_APPLY:
            s.check_lease(header.get("holder"))
            if header.get("part", 0) == 0 and s.version != int(header["base"]):
                raise NodeError(f"catalog replica is at version {s.version}, not"
                                f" {int(header['base'])}")
            blob = self._gather_parts(kind, header, payload)
            if blob is None:
                return {"staged": True}, b""
            body, blobs = rpc.parse_body(blob)
            changes = changeset.decode(body["changes"], blobs)
            s.apply_changes(int(header["base"]), int(header["version"]), changes)
            return {"version": s.version}, b""
        if kind == rpc.CATALOG_INSTALL:
            s.check_lease(header.get("holder"))
            blob = self._gather_parts(kind, header, payload)
            if blob is None:
                return {"staged": True}, b""
            s.install_catalog(blob, int(header["version"]))
            return {"version": s.version}, b""
        if kind == rpc.LEASE:
            s.lease(str(header["holder"]), float(header.get("seconds", LEASE_SECONDS)))
            return {}, b""
        if kind == rpc.RELEASE:
            s.release(str(header.get("holder")))
            return {}, b""
        raise NodeError(f"unknown request type {kind}")


    def _gather_parts(self, kind: int, header: dict, payload) -> bytes | None:
        """A transfer too big for one frame comes in parts 0, 1, …; the whole once the last
        (more=false) is in, else None. A new part 0 starts over."""
        key = (kind, header.get("holder"), header.get("version"))
        part = header.get("part", 0)
        if part == 0:
            self.staged = (key, 0, bytearray())
        elif self.staged is None or self.staged[:2] != (key, part):
            self.staged = None
            raise NodeError(f"catalog transfer part {part} arrived out of order")
        buf = self.staged[2]
        buf += payload
        if len(buf) > MAX_CATALOG:
            self.staged = None
            raise NodeError(f"catalog transfer over {MAX_CATALOG} bytes")
        if header.get("more"):
            self.staged = (key, part + 1, buf)
            return None
        self.staged = None
        return bytes(buf)


def _ids(header: dict, payload) -> tuple[np.ndarray, memoryview]:
    """The block ids at the head of a request's payload, and what follows them."""
    n = header.get("n")
    if not isinstance(n, int) or n < 0 or 8 * n > len(payload):
        raise NodeError("request names more block ids than it carries")
    return np.frombuffer(payload[:8 * n], dtype="<u8").astype(np.uint64), payload[8 * n:]


class Login:
    """Who a connection authenticated as: may it use RPC, which console, under what actor."""

    def __init__(self, rpc_allowed: bool, console_role: str | None, actor: str):
        self.rpc_allowed = rpc_allowed
        self.console_role = console_role
        self.actor = actor


def read_keys(path: Path) -> list[asyncssh.SSHKey]:
    """The public keys in an authorized_keys-style file (comments kept); none if it is absent."""
    if not path.is_file():
        return []
    keys = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        # A line may start with options; the key is what follows them.
        for start in (line, line.partition(" ")[2]):
            try:
                keys.append(asyncssh.import_public_key(start))
                break
            except (asyncssh.KeyImportError, ValueError):
                continue
    return keys


def login_for(directory: Path, key: asyncssh.SSHKey) -> Login | None:
    """Read on every login, so a key added to or removed from a file counts at once."""
    found = {name: next((k for k in read_keys(directory / name) if k == key), None)
             for name in (AUTHORIZED_KEYS, ADMIN_KEYS, READONLY_KEYS)}
    if not any(found.values()):
        return None
    role = "admin" if found[ADMIN_KEYS] else "readonly" if found[READONLY_KEYS] else None
    named = found[ADMIN_KEYS] or found[READONLY_KEYS] or found[AUTHORIZED_KEYS]
    actor = named.get_comment() or f"ssh:{key.get_fingerprint()}"
    return Login(found[AUTHORIZED_KEYS] is not None, role, actor)


class RpcSession(asyncssh.SSHServerSession):
    """One channel: the RPC subsystem for node keys, or an interactive console for admin keys."""

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

    def connection_made(self, chan):
        self.chan = chan

    def pty_requested(self, term_type, term_size, term_modes):
        self.term = term_type or "xterm-256color"
        self.size = term_size[:2]
        return True

    def shell_requested(self):
        self.console = ConsoleSession(self.chan, self.cluster, self.login.console_role,
                                      self.login.actor)
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
        if subsystem != rpc.SUBSYSTEM or not self.login.rpc_allowed:
            return False
        self.worker = asyncio.get_running_loop().create_task(self._serve())
        return True

    def data_received(self, data, datatype):
        if self.console is not None:
            self.console.input(data)
            return
        if self.reader is None:         # the stream went bad: nothing after it can be framed
            return
        try:
            frames = self.reader.feed(data)
        except rpc.FrameError as e:
            self.reader = None
            self.queue.put_nowait(("fatal", 0, str(e)))
            return
        for frame in frames:
            self.queue.put_nowait(frame)

    def eof_received(self):
        if self.console is not None:
            return True             # a console ends when it exits, not on the client's EOF
        self.queue.put_nowait(None)
        return False

    def connection_lost(self, exc):
        self.queue.put_nowait(None)
        if self.console is not None:
            self.console.closed()

    async def _serve(self):
        while True:
            item = await self.queue.get()
            if item is None:
                return
            kind, request_id, body = item
            if kind == "fatal":
                self._write(rpc.encode(rpc.ERROR, 0, {"error": body}))
                self.chan.close()
                return
            self._write(self._answer(kind, request_id, body))

    def _answer(self, kind: int, request_id: int, body: bytes) -> bytes:
        try:
            if kind not in rpc.REQUESTS:
                raise NodeError(f"unknown request type {kind}")
            header, payload = rpc.parse_body(body)
            reply, data = self.handler.call(kind, header, payload)
            return rpc.encode(rpc.REPLY, request_id, reply, data)
        except (NodeError, rpc.FrameError) as e:
            return rpc.encode(rpc.ERROR, request_id, {"error": str(e)})
        except Exception as e:   # noqa: BLE001 - a bad request must never stop the node
            return rpc.encode(rpc.ERROR, request_id,
                              {"error": f"bad request: {type(e).__name__}: {e}"})

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

    def begin_auth(self, username):
        return True

    def public_key_auth_supported(self):
        return True

    def validate_public_key(self, username, key):
        self.login = login_for(self.directory, key)
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


async def serve(directory: Path, host: str, port: int, memory: int | None,
                block_size: int | None, cluster: str | None = None) -> None:
    keys = directory / AUTHORIZED_KEYS
    if not keys.is_file():
        raise SystemExit(f"blockfold: error: {keys} is missing: no client could log in")
    ensure_host_key(directory)
    settings = node_settings(directory, block_size)
    store = NodeStore(directory, settings["block_size"], memory)
    handler = Handler(store, settings.get("name", directory.name))
    acceptor = await asyncssh.create_server(
        lambda: NodeServer(handler, directory, cluster), host, port,
        server_host_keys=[str(directory / HOST_KEY)],
        encoding=None, allow_pty=True, x11_forwarding=False, agent_forwarding=False,
        allow_scp=False, sftp_factory=None, login_timeout=10, keepalive_interval=0,
        encryption_algs=CIPHERS, window=WINDOW, max_pktsize=PACKET)
    print(f"ready {host}:{acceptor.get_port()}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    acceptor.close()
    await acceptor.wait_closed()
    store.close()


def main(data: str, listen: str, memory: int | None = None,
         block_size: int | None = None, cluster: str | None = None) -> int:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        print(f"blockfold: error: bad listen address {listen!r}: use HOST:PORT",
              file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(Path(data), host, int(port), memory, block_size, cluster))
    except OSError as e:
        print(f"blockfold: error: cannot listen on {listen}: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    import argparse

    from ..units import parse_size

    parser = argparse.ArgumentParser(prog="blockfold node serve")
    parser.add_argument("--data", required=True)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--memory", type=parse_size)
    parser.add_argument("--block-size", type=int)
    parser.add_argument("--cluster")
    a = parser.parse_args()
    sys.exit(main(a.data, a.listen, a.memory, a.block_size, a.cluster))
