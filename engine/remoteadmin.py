"""RemoteAdmin: the Admin interface over a service's admin protocol (engine/net/adminwire.py).

A running service (engine/service) owns a pool or a cluster; every CLI command and console reaches
it through this class, over DIR/admin.sock or over SSH (a node's `blockfold-admin` subsystem), and
gets the same typed results a LocalAdmin returns, decoded by msgspec into the dataclasses of
engine.results named by the Admin's own return annotations. Importing it loads nothing of the
storage engine (no numpy), so a CLI that only asks a service starts fast.

Files stay the client's: an import reads the client's image (with its permissions, holes skipped)
and streams it in DATA frames; an export streams back and is written here; `write` sends its
bytes the same way. Long calls report progress to the caller; a `cancel` event set, or the client
going away (Ctrl-C), stops them in the service.

Thread-safe: the console calls it from many worker threads at once. They share one connection;
a reader thread hands each frame to the call it belongs to. A connection that was lost is made
again at the next call, so a console outlives a restart of its service.
"""

from __future__ import annotations

import base64
import itertools
import os
import pwd
import queue
import socket
import threading
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec

from . import diskformats, imageio
from .admin import Admin
from .errors import BlockfoldError, VMNotFoundError
from .net import adminwire as wire, rpc
from .progress import Progress
from .results import Job

WAIT_STEP = 0.1         # how often a waiting call looks at its cancel event, seconds
HELLO_TIMEOUT = 30.0    # a service that takes longer to say hello is stuck
READER_GRACE = 1.0      # how long a failed send waits for the last frames that came in

_RETURNS: dict[str, Any] = {}


def _returns(method: str):
    """What Admin.`method` returns, from its annotation: the type results decode into."""
    if method not in _RETURNS:
        _RETURNS[method] = typing.get_type_hints(getattr(Admin, method))["return"]
    return _RETURNS[method]


class ServiceGone(BlockfoldError):
    """The connection to the service was lost (it stopped, or was killed)."""


class Link:
    """One connection to a service: frames go out under a lock, and a reader thread hands those
    that come in to the call whose request id they carry."""

    def __init__(self, sock: socket.socket, where: str):
        self.sock = sock
        self.where = where
        self.error: str | None = None        # why the connection ended
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._calls: dict[int, queue.SimpleQueue] = {}
        self._ids = itertools.count(1)
        self._reader = threading.Thread(target=self._read, name="blockfold-service-link",
                                         daemon=True)
        self._reader.start()

    def open_call(self) -> tuple[int, queue.SimpleQueue]:
        with self._lock:
            if self.error is not None:
                raise ServiceGone(self.error)
            request_id = next(self._ids)
            inbox = self._calls[request_id] = queue.SimpleQueue()
        return request_id, inbox

    def close_call(self, request_id: int) -> None:
        with self._lock:
            self._calls.pop(request_id, None)

    def send(self, kind: int, request_id: int, header: dict | None = None, payload=b"") -> None:
        frame = rpc.encode(kind, request_id, header, payload)
        with self._send_lock:
            try:
                self.sock.sendall(frame)
            except OSError as e:
                # What the other end said before it closed (a relay with no service behind it,
                # say) is a better reason than the broken pipe: the reader may still be at it.
                self._reader.join(READER_GRACE)
                self._end(f"lost the service at {self.where}: {e.strerror or e}")
                raise ServiceGone(self.error) from None

    def _read(self) -> None:
        reader = rpc.FrameReader()
        why = f"the service at {self.where} went away"
        try:
            while True:
                data = self.sock.recv(1 << 20)
                if not data:
                    break
                for kind, request_id, body in reader.feed(data):
                    header, payload = rpc.parse_body(body)
                    if kind == wire.ERROR and request_id == 0:     # about the connection itself
                        raise wire.error_from(header)
                    with self._lock:
                        inbox = self._calls.get(request_id)
                    if inbox is not None:
                        inbox.put((kind, header, payload))
        except BlockfoldError as e:
            why = str(e)
        except (OSError, rpc.FrameError) as e:
            why = f"lost the service at {self.where}: {e}"
        self._end(why)

    def _end(self, why: str) -> None:
        with self._lock:
            if self.error is None:
                self.error = why
            calls, self._calls = list(self._calls.values()), {}
        for inbox in calls:
            inbox.put(None)

    def close(self) -> None:
        self._end(f"the connection to {self.where} was closed")
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._reader.join(5)
        self.sock.close()


class RemoteAdmin(Admin):
    served = True

    def __init__(self, connect: Callable[[], socket.socket], where: str, *,
                 actor: str | None = None, read_only: bool = False):
        """Connects with `connect()` (a connected stream socket) and says hello: `actor` names
        the caller in events (a service takes it only from its own user: others are their user
        name), `read_only` limits this connection to the methods that only look. Raises OSError
        from connect(), BlockfoldError if the service answers no hello."""
        self._connect = connect
        self.where = where
        self._hello = {"actor": actor, "read_only": read_only}
        self._lock = threading.Lock()
        self._link: Link | None = None
        info = self._open_link()
        self.kind, self.name = info["kind"], info["name"]
        self._block_size = info["block_size"]
        self._rebuild_phases = tuple(info["rebuild_phases"])
        self.read_only = info["read_only"]

    @classmethod
    def find(cls, directory, **hello) -> RemoteAdmin | None:
        """The service of the pool or cluster in `directory`, if one answers on its admin.sock;
        None if none runs. Raises BlockfoldError if the socket's mode keeps this user out."""
        path = Path(directory) / wire.SOCKET
        try:
            return cls(lambda: wire.connect(path, timeout=10), str(path), **hello)
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
            return None             # no socket, or one left by a service that was killed
        except PermissionError:
            raise BlockfoldError(f"cannot reach the service of {directory}: {path} is not open"
                                 f" to user {_user()} (the service's user and group only)"
                                 ) from None

    @classmethod
    def over_ssh(cls, url: str, **hello) -> RemoteAdmin:
        """The service behind a node's `blockfold-admin` SSH subsystem, at
        ssh://[USER@]HOST[:PORT] (the user's SSH keys and known_hosts, as OpenSSH uses them).
        Raises BlockfoldError (a bad URL, no connection, a refused key or host key)."""
        from .net import sshpipe     # asyncssh loads only for a remote service
        target = sshpipe.parse_url(url)
        return cls(lambda: sshpipe.open_subsystem(target, wire.SUBSYSTEM), url, **hello)

    def _open_link(self) -> dict:
        link = Link(self._connect(), self.where)
        try:
            request_id, inbox = link.open_call()
            link.send(wire.HELLO, request_id, self._hello)
            try:
                kind, header, payload = self._next(inbox, link, HELLO_TIMEOUT)
            except queue.Empty:
                raise BlockfoldError(f"the service at {self.where} does not answer") from None
            if kind == wire.ERROR:
                raise wire.error_from(header)
            link.close_call(request_id)
        except BaseException:
            link.close()
            raise
        self._link = link
        return msgspec.json.decode(payload)

    def _current(self) -> Link:
        with self._lock:
            if self._link is None or self._link.error is not None:
                if self._link is not None:
                    self._link.close()
                    self._link = None
                try:
                    self._open_link()
                except OSError as e:
                    raise ServiceGone(f"no service answers at {self.where} any more:"
                                      f" {e.strerror or e}") from None
            return self._link

    @staticmethod
    def _next(inbox: queue.SimpleQueue, link: Link, timeout: float | None = None):
        frame = inbox.get(timeout=timeout)
        if frame is None:
            raise ServiceGone(link.error)
        return frame

    # -- calls --------------------------------------------------------------------------------

    def _call(self, method: str, args: dict | None = None, *, progress=None, cancel=None,
              send: Iterable[tuple[int, bytes]] | None = None, send_when_taken: bool = False,
              receive: Callable[[int, memoryview], None] | None = None) -> Any:
        """Calls Admin.`method` in the service and returns its decoded result. `send` yields
        (offset, bytes) to stream to it (`send_when_taken`: only once the service has sent its
        first progress report, and nothing if the call ends first); `receive(offset, bytes)`
        takes what it streams back."""
        link = self._current()
        request_id, inbox = link.open_call()
        try:
            link.send(wire.CALL, request_id, {"method": method, "args": args or {}})
            call = _Call(link, request_id, inbox, progress, cancel, receive)
            if send is not None and (not send_when_taken or call.taken()):
                call.stream(send)
            return call.finish(method)
        except KeyboardInterrupt:
            # Going away cancels every call of the connection: the service drops what was begun.
            link.close()
            raise
        finally:
            link.close_call(request_id)

    @property
    def block_size(self) -> int:
        return self._block_size

    @property
    def rebuild_phases(self) -> tuple[str, ...]:
        return self._rebuild_phases

    # -- volumes ------------------------------------------------------------------------------

    def vm_names(self): return self._call("vm_names")
    def vm_size(self, name): return self._call("vm_size", {"name": name})

    def read(self, name, offset, length):
        return self._call("read", {"name": name, "offset": offset, "length": length})

    def write(self, name, offset, data, force=False):
        data = memoryview(data).cast("B")
        self._call("write", {"name": name, "offset": offset, "force": force},
                   send=((i, data[i:i + wire.DATA_CHUNK])
                         for i in range(0, len(data), wire.DATA_CHUNK)))

    def write_file(self, name, offset, source, force=False, progress=None, cancel=None):
        # The client's file, read with its permissions; its bytes go only once the service has
        # taken the call (its first progress report): a refusal (attached, too long) reads none
        # of a stream, so stdin is still whole for a forced try.
        opened = imageio.open_source(source) if isinstance(source, str) else source
        # A stream (stdin, a FIFO) is read on a thread: its read may never return (stdin left
        # open), and the call must still end when it is cancelled or refused.
        arrivals = None if opened.seekable else _Arrivals(opened, wire.DATA_CHUNK)
        try:
            return self._call("write_file", {
                "name": name, "offset": offset, "force": force, "image": opened.name,
                "size": opened.size if opened.seekable else None},
                progress=progress, cancel=cancel,
                send=arrivals or opened.chunks(wire.DATA_CHUNK), send_when_taken=True)
        finally:
            if arrivals is not None:
                arrivals.stop(close=opened is not source)
            elif opened is not source:
                opened.close()

    def trim(self, name, offset, length):
        self._call("trim", {"name": name, "offset": offset, "length": length})

    def extents(self, name, offset, length):
        return self._call("extents", {"name": name, "offset": offset, "length": length})

    def flush(self): self._call("flush")

    # -- VMs ----------------------------------------------------------------------------------

    def vms(self): return self._call("vms")

    def import_image(self, name, source, progress=None, cancel=None):
        image = diskformats.open_disk(source)   # the client's file, read with its permissions
        # A raw stream (stdin, a FIFO) is read on a thread, as write_file's is: its read may never
        # return (stdin left open), and the call must still end when it is cancelled. (A qemu
        # image's chunks come from our nbdcopy, whose reads return.)
        stream = isinstance(image, imageio.Image) and not image.seekable
        arrivals = _Arrivals(image, wire.DATA_CHUNK) if stream else None
        try:
            return self._call("import_image", {"name": name, "size": image.size,
                                               "image": image.name},
                              progress=progress, cancel=cancel,
                              send=arrivals or image.chunks(wire.DATA_CHUNK))
        finally:
            if arrivals is not None:
                arrivals.stop(close=True)
            else:
                image.close()

    def export(self, name, dest, progress=None, cancel=None, snapshot=None):
        if snapshot is None:
            size, args = self.vm_size(name), {"name": name}
        else:
            size = next((s.size for s in self.snapshots(name) if s.name == snapshot), None)
            if size is None:
                raise VMNotFoundError(f"VM {name} has no snapshot named {snapshot!r}")
            args = {"name": name, "snapshot": snapshot}
        with imageio.open_output(dest, size) as out:
            self._call("export", args, progress=progress, cancel=cancel, receive=out.write_at)

    def clone(self, source, new, count=1, progress=None, cancel=None):
        return self._call("clone", {"source": source, "new": new, "count": count},
                          progress=progress, cancel=cancel)

    def delete(self, name, force=False): self._call("delete", {"name": name, "force": force})
    def clones_of(self, name): return self._call("clones_of", {"name": name})
    def vm_info(self, name): return self._call("vm_info", {"name": name})

    def refresh(self, name, force=False):
        self._call("refresh", {"name": name, "force": force})

    def rebase(self, names, golden, keep_writes=False, force=False, shrink=False):
        # `shrink` only when asked: a service from before it refuses an argument it lacks.
        self._call("rebase", {"names": names, "golden": golden, "keep_writes": keep_writes,
                              "force": force, **({"shrink": True} if shrink else {})})

    def rename(self, old, new, force=False):
        self._call("rename", {"old": old, "new": new, "force": force})

    def resize(self, name, size, shrink=False, force=False):
        self._call("resize", {"name": name, "size": size, "shrink": shrink, "force": force})

    def take_snapshot(self, name, snap):
        self._call("take_snapshot", {"name": name, "snap": snap})

    def snapshots(self, name): return self._call("snapshots", {"name": name})

    def rollback(self, name, snap, force=False):
        self._call("rollback", {"name": name, "snap": snap, "force": force})

    def remove_snapshot(self, name, snap):
        self._call("remove_snapshot", {"name": name, "snap": snap})

    # -- the pool -----------------------------------------------------------------------------

    def stats(self): return self._call("stats")
    def snapshot(self, events=100): return self._call("snapshot", {"events": events})

    def known_blocks(self, fingerprints):
        # JSON carries bytes as base64 (msgspec decodes it in the service).
        return self._call("known_blocks",
                          {"fingerprints": base64.b64encode(fingerprints).decode()})

    def blocks(self, vm=None, min_refs=None, max_refs=None, prefix=None, offset=0, limit=100):
        return self._call("blocks", {"vm": vm, "min_refs": min_refs, "max_refs": max_refs,
                                     "prefix": prefix, "offset": offset, "limit": limit})

    def rebuild(self, full=False, progress=None, cancel=None):
        return self._call("rebuild", {"full": full}, progress=progress, cancel=cancel)

    def last_rebuild(self): return self._call("last_rebuild")

    def fsck(self, progress=None, cancel=None):
        return self._call("fsck", progress=progress, cancel=cancel)

    def scrub(self, rate=None, progress=None, cancel=None):
        return self._call("scrub", {"rate": rate}, progress=progress, cancel=cancel)

    def events(self, limit=100, since=None):
        return self._call("events", {"limit": limit, "since": since})

    # -- jobs ---------------------------------------------------------------------------------

    def jobs(self) -> list[Job]: return self._call("jobs")
    def start_scrub(self, rate=None) -> Job: return self._call("start_scrub", {"rate": rate})
    def cancel_job(self, job) -> Job: return self._call("cancel_job", {"job": job})

    # -- nodes --------------------------------------------------------------------------------

    def nodes(self): return self._call("nodes")
    def only_copies(self, name): return self._call("only_copies", {"name": name})
    def writes_without(self, name): return self._call("writes_without", {"name": name})
    def fail_node(self, name): return self._call("fail_node", {"name": name})
    def restore_node(self, name): self._call("restore_node", {"name": name})

    def heal(self, wait=True, progress=None, cancel=None):
        return self._call("heal", {"wait": wait}, progress=progress, cancel=cancel)

    def removal(self, name, force=False):
        return self._call("removal", {"name": name, "force": force})

    def remove_node(self, name, force=False, delete_data=False, progress=None, cancel=None):
        return self._call("remove_node", {"name": name, "force": force,
                                          "delete_data": delete_data},
                          progress=progress, cancel=cancel)

    # -- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        """Lets the connection go; the service and its pool go on."""
        with self._lock:
            if self._link is not None:
                self._link.close()
                self._link = None


class _Call:
    """One call's frames, as they come back: progress, streamed bytes, then its end."""

    def __init__(self, link: Link, request_id: int, inbox, progress, cancel, receive):
        self.link, self.request_id, self.inbox = link, request_id, inbox
        self.progress, self.cancel, self.receive = progress, cancel, receive
        self.cancelled = False
        self.reported = False           # a PROGRESS frame has come
        self.end: tuple[int, dict, memoryview] | None = None

    def taken(self) -> bool:
        """Waits for the service's first progress report (True) or the end of the call."""
        while not self.reported and self.end is None:
            try:
                frame = self.inbox.get(timeout=WAIT_STEP)
            except queue.Empty:
                if self._cancel_if_asked():
                    return False
                continue
            self._handle(frame)
        return self.end is None

    def stream(self, chunks: Iterable[tuple[int, bytes] | None]) -> None:
        """Sends the chunks as DATA frames, then their end; stops early if the call ended
        (refused at once, say) or was cancelled (the service stops it without the end). A None
        among the chunks (_Arrivals: none came for a while) only has the call looked at."""
        for piece in chunks:
            if not self._going_on() or self._cancel_if_asked():
                return
            if piece is not None:
                offset, data = piece
                self.link.send(wire.DATA, self.request_id, {"offset": offset}, data)
        self.link.send(wire.DATA, self.request_id, {"end": True})

    def finish(self, method: str) -> Any:
        """Waits for the end of the call; returns its result decoded, or raises its error."""
        while self.end is None:
            try:
                frame = self.inbox.get(timeout=WAIT_STEP)
            except queue.Empty:
                self._cancel_if_asked()
                continue
            self._handle(frame)
        kind, header, payload = self.end
        if kind == wire.ERROR:
            raise wire.error_from(header)
        returns = _returns(method)
        if returns is type(None):
            return None
        if returns is bytes:
            return bytes(payload)
        return msgspec.json.decode(payload, type=returns)

    def _going_on(self) -> bool:
        """Handles the frames that have come so far; False once the call has ended."""
        while self.end is None:
            try:
                frame = self.inbox.get_nowait()
            except queue.Empty:
                return True
            self._handle(frame)
        return False

    def _handle(self, frame) -> None:
        if frame is None:
            raise ServiceGone(self.link.error)
        kind, header, payload = frame
        if kind == wire.PROGRESS:
            self.reported = True
            if self.progress is not None:
                self.progress(Progress(header["phase"], header["done"], header["total"],
                                       header.get("bytes_per_s", 0.0)))
        elif kind == wire.DATA:
            if self.receive is not None:
                self.receive(int(header["offset"]), payload)
        elif kind in (wire.REPLY, wire.ERROR):
            self.end = frame

    def _cancel_if_asked(self) -> bool:
        if self.cancel is not None and self.cancel.is_set() and not self.cancelled:
            self.cancelled = True
            self.link.send(wire.CANCEL, self.request_id)
        return self.cancelled


class _Arrivals:
    """A stream's chunks (image.chunks(chunk): stdin, a FIFO), read on a daemon thread: iterated,
    each (offset, bytes) as it comes, and None every WAIT_STEP that none came, so that its call
    is looked at meanwhile (a read of a stream may never return: stdin left open). Raises what
    the reading raised."""

    _END = object()

    def __init__(self, image, chunk: int):
        self.image, self.chunk = image, chunk
        self.pieces: queue.Queue = queue.Queue(maxsize=2)   # bounded: read ahead of the socket
        self.stopped = threading.Event()
        self.close_image = False        # the reader closes the image once its read returns
        self.reader: threading.Thread | None = None
        self.lock = threading.Lock()

    def __iter__(self):
        self.reader = threading.Thread(target=self._read, daemon=True, name="blockfold-stream")
        self.reader.start()
        while True:
            try:
                piece = self.pieces.get(timeout=WAIT_STEP)
            except queue.Empty:
                yield None
                continue
            if piece is self._END:
                return
            if isinstance(piece, BaseException):
                raise piece
            yield piece

    def _read(self) -> None:
        try:
            for piece in self.image.chunks(self.chunk):
                if not self._put(piece):
                    return
            self._put(self._END)
        except Exception as e:     # noqa: BLE001 - raised where the pieces are taken
            self._put(e)
        finally:
            with self.lock:
                self.reader = None
                if self.close_image:
                    self.image.close()

    def _put(self, item) -> bool:
        """Hands `item` over; False once the pieces are no longer taken (stop)."""
        while not self.stopped.is_set():
            try:
                self.pieces.put(item, timeout=WAIT_STEP)
                return True
            except queue.Full:
                continue
        return False

    def stop(self, close: bool) -> None:
        """No more pieces are taken; with `close`, the image is closed: now if no read is under
        way, else by the reader once its read returns (its fd might be another file's by
        then)."""
        self.stopped.set()
        with self.lock:
            if close and self.reader is None:
                self.image.close()
            else:
                self.close_image = close


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())
