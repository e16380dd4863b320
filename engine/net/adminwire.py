"""The admin protocol: what a service (engine/service) and its clients (engine/remoteadmin.py, and
a node's `blockfold-admin` SSH relay) say on DIR/admin.sock.

Frames are engine.net.rpc's (header, JSON, payload), with kinds of their own:

    session    := LOGIN? HELLO exchange*
    LOGIN      {actor, read_only}       first frame of a relay (a node serving an SSH key); taken
                                        only from a peer running as the service's own user
    HELLO      {actor?, read_only?}  -> REPLY {kind, name, block_size, rebuild_phases, actor,
                                                read_only}
    exchange   := CALL (DATA* | CANCEL)* and, from the service, PROGRESS* DATA* (REPLY | ERROR)
    CALL       {method, args}           an Admin method by name; args as its parameters, in JSON
    PROGRESS   {phase, done, total, bytes_per_s}
    DATA       {offset} + bytes         a call's bytes: an image to import or data to write
                                        (client -> service), an export (service -> client)
    DATA       {end: true}              the end of a call's bytes; write_file's client sends
                                        its DATA only after the call's first PROGRESS (a
                                        refusal before it has read none of stdin)
    CANCEL                              stops the call with the same request id; so does the
                                        client going away
    REPLY      {} + result              the result as JSON (msgspec), or raw bytes for `read`
    ERROR      {error, code, ...}       one line and a Code

A call is named by the request id its client chose; several may run at once on one connection,
and every frame of a call carries its id. A frame that cannot be parsed closes that connection
only; a bad request gets an ERROR and the connection goes on.
"""

from __future__ import annotations

import enum
import os
import socket
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import (AbortedError, AttachedError, BadImageError, BadNameError, BlockfoldError,
                      CancelledError, CorruptBlockError, NoSpaceError, NotAPoolError,
                      OutOfRangeError, PoolFormatError, PoolLockedError, ReadOnlyError,
                      RefusedError, ReplicationError, VMExistsError, VMNotFoundError)

SOCKET = "admin.sock"
SUBSYSTEM = "blockfold-admin"         # the SSH subsystem a node relays to its cluster's service
DATA_CHUNK = 4 << 20                  # bytes a DATA frame carries at most
CONNECT_RETRY_S = 0.05                # a full backlog is tried again this often

LOGIN, HELLO, CALL, DATA, CANCEL = 1, 2, 3, 4, 5
PROGRESS, REPLY, ERROR = 0x82, 0x80, 0x81


class Code(enum.StrEnum):
    """The kind of an ERROR: each is an engine.errors class on the client's side."""

    VM_NOT_FOUND = "VM_NOT_FOUND"
    VM_EXISTS = "VM_EXISTS"
    BAD_NAME = "BAD_NAME"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    BAD_IMAGE = "BAD_IMAGE"
    NO_SPACE = "NO_SPACE"
    READ_ONLY = "READ_ONLY"           # a read-only pool or login
    CANCELLED = "CANCELLED"
    ATTACHED = "ATTACHED"             # a VM NBD clients have attached: force detaches them
    NOT_A_POOL = "NOT_A_POOL"
    POOL_FORMAT = "POOL_FORMAT"
    POOL_LOCKED = "POOL_LOCKED"
    REPLICATION = "REPLICATION"
    REFUSED = "REFUSED"               # any other refusal: nothing changed
    ABORTED = "ABORTED"               # a commit failed and was rolled back
    CORRUPT = "CORRUPT"               # a rotten block; the header adds address and offset
    ERROR = "ERROR"                   # any other BlockfoldError
    BAD_REQUEST = "BAD_REQUEST"       # a malformed frame, an unknown method or bad arguments
    INTERNAL = "INTERNAL"             # a fault in the service


# Most specific first: an error takes the first code whose class it is.
_CLASSES: tuple[tuple[Code, type[BlockfoldError]], ...] = (
    (Code.VM_NOT_FOUND, VMNotFoundError), (Code.VM_EXISTS, VMExistsError),
    (Code.BAD_NAME, BadNameError), (Code.OUT_OF_RANGE, OutOfRangeError),
    (Code.BAD_IMAGE, BadImageError), (Code.NO_SPACE, NoSpaceError),
    (Code.READ_ONLY, ReadOnlyError), (Code.CANCELLED, CancelledError),
    (Code.ATTACHED, AttachedError),
    (Code.NOT_A_POOL, NotAPoolError), (Code.POOL_FORMAT, PoolFormatError),
    (Code.POOL_LOCKED, PoolLockedError), (Code.REPLICATION, ReplicationError),
    (Code.REFUSED, RefusedError), (Code.ABORTED, AbortedError),
    (Code.CORRUPT, CorruptBlockError), (Code.ERROR, BlockfoldError))


def error_header(error: BaseException) -> dict:
    """The ERROR header that tells `error` to a client: BlockfoldErrors by their class, anything
    else as INTERNAL."""
    if not isinstance(error, BlockfoldError):
        return {"error": f"internal error in the service: {type(error).__name__}: {error}",
                "code": Code.INTERNAL.value}
    code = next(code for code, cls in _CLASSES if isinstance(error, cls))
    header = {"error": str(error), "code": code.value}
    if isinstance(error, CorruptBlockError):
        header.update(address=error.address, offset=error.offset)
    return header


def bad_request(message: str) -> dict:
    return {"error": message, "code": Code.BAD_REQUEST.value}


def error_from(header: dict) -> BlockfoldError:
    """The exception an ERROR header stands for; a code this end does not know is a plain
    BlockfoldError."""
    message = str(header.get("error", "error"))
    try:
        code = Code(header.get("code"))
    except ValueError:
        code = Code.ERROR
    if code is Code.CORRUPT:
        return CorruptBlockError(message, address=int(header.get("address") or 0),
                                 offset=header.get("offset"))
    return dict(_CLASSES).get(code, BlockfoldError)(message)


def server_pid(path: Path) -> int | None:
    """The pid of the process that serves the admin socket at `path` (the kernel's credentials of
    the listening end, SO_PEERCRED); None when none serves it. Says nothing to the service.
    Raises PermissionError (its mode keeps us out)."""
    try:
        sock = connect(path, timeout=10)
    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
        return None
    with sock:
        pid, _, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                        struct.calcsize("3i")))
    return pid


@contextmanager
def socket_address(path: Path) -> Iterator[str]:
    """An address for `path` that fits a sockaddr_un (108 bytes): the path itself, or, when it is
    longer, the same file named through /proc/self/fd and a descriptor of its directory."""
    if len(os.fsencode(path)) < 100:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def connect(path: Path, timeout: float | None = None) -> socket.socket:
    """A connected Unix stream socket to `path`, waiting up to `timeout` seconds (None: as long as
    it takes) while the service's backlog is full (it is out of open files, say, until its
    silent clients' deadline closes them). Raises OSError (ENOENT: no socket; ECONNREFUSED: a
    socket nobody serves; EACCES: its mode keeps us out), BlockfoldError (still full)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        with socket_address(path) as address:
            while True:
                try:
                    sock.connect(address)
                    break
                except BlockingIOError:    # with a timeout, a full backlog fails at once
                    if time.monotonic() >= deadline:
                        raise BlockfoldError(
                            f"the service at {path} takes no new connection (waited"
                            f" {timeout:g} s): its log says why (out of open files?)") from None
                    time.sleep(CONNECT_RETRY_S)
    except BaseException:
        sock.close()
        raise
    sock.settimeout(None)
    return sock
