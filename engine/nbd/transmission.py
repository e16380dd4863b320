"""The transmission phase of one connection: handed to the native core's request loop.

Once negotiation reaches GO, the connection's socket goes to a thread of the crate's own
(native/src/nbd.rs) that runs the request loop without the GIL: it reads, writes, trims, zeroes
and answers block status straight from the pool's core, and sends simple or structured replies.
Only what Python owns comes back here, through `Host`, with the GIL: a flush (the pool's commit)
and what a client is told of an engine error (logged). Requests, bytes and latencies are counted
by the native loop in a `Meter` (engine/service/metrics.py reads it at each scrape).
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from .. import _native
from ..errors import BlockfoldError, CorruptBlockError, NoSpaceError, OutOfRangeError, ReadOnlyError
from . import protocol as p
from .handshake import Session

# Engine errors and the NBD error each becomes; anything else is EIO.
ENGINE_ERRORS = ((ReadOnlyError, p.EPERM), (OutOfRangeError, p.EINVAL), (NoSpaceError, p.ENOSPC),
                 (CorruptBlockError, p.EIO))


def nbd_error(e: BlockfoldError) -> int:
    """The NBD error value a client gets for an engine error."""
    return next((code for kind, code in ENGINE_ERRORS if isinstance(e, kind)), p.EIO)


class Host:
    """What the native loop asks of the engine for one connection (each call holds the GIL)."""

    def __init__(self, admin, export: str, log: Callable[[str], None]):
        self.admin = admin
        self.export = export
        self.log = log

    def flush(self) -> None:
        """The pool's commit, judged for this export's VM: it fails while that VM's writes are
        left out for copies lost (engine.pool.Pool.flush), not for another VM's."""
        self.admin.pool.flush(self.export)

    def failure(self, error: BaseException) -> tuple[int, str]:
        """(NBD error, message) for what a request raised: the core's error as the engine words
        it, or the engine's own (a failed commit, a cluster's replication error)."""
        if isinstance(error, (_native.NativeError, OSError)):
            error = self.admin.pool.data_error(error)
        if isinstance(error, BlockfoldError):
            self.log(f"{self.export}: {error}")
            return nbd_error(error), str(error)
        self.log(f"{self.export}: internal error: {type(error).__name__}: {error}")
        return p.EIO, "internal error (logged by the server)"


def transmit(server, sock: socket.socket, session: Session, greeting: bytes,
             peer: str) -> _native.Transmission:
    """Hands `sock` over to a native thread that sends `greeting` (the replies ending
    negotiation), then serves the session's export until the client leaves; the socket is the
    thread's from then on. RuntimeError (and the socket still the caller's) if no thread can be
    started."""
    sock.setblocking(True)
    export = session.export
    handle = _native.Transmission(
        server.admin.pool.core, sock.fileno(), greeting, export.name, export.size,
        structured=session.structured, context=session.context, read_only=server.read_only,
        peer=peer, host=Host(server.admin, export.name, server.log), meter=server.meter)
    sock.detach()
    return handle
