"""A node's refusals, and the one map from what went wrong to the code the caller sees.

Inside the node an error is whatever was raised; `describe` alone decides which rpc.Code and
message cross the wire (dm-vdo's uds_map_to_system_error is the model), so callers branch on the
code, never on the text.
"""

from __future__ import annotations

import errno
import sqlite3

from ..changeset import ChangesetError
from ..errors import NoSpaceError
from ..net.rpc import Code, FrameError


class NodeError(Exception):
    """A request the node refuses: `code` says which kind, the message why, in one line."""

    def __init__(self, code: Code, message: str):
        super().__init__(message)
        self.code = code


def describe(e: Exception) -> tuple[Code, str]:
    """(code, one-line message) of an exception raised while answering a request."""
    if isinstance(e, NodeError):
        return e.code, str(e)
    if isinstance(e, (FrameError, ChangesetError)):
        return Code.BAD_REQUEST, str(e)
    if isinstance(e, NoSpaceError):
        return Code.NODE_FULL, str(e)
    if isinstance(e, OSError):
        full = e.errno in (errno.ENOSPC, errno.EDQUOT)
        return (Code.NODE_FULL if full else Code.IO_ERROR), f"node disk: {e.strerror or e}"
    if isinstance(e, sqlite3.Error):
        primary = (getattr(e, "sqlite_errorcode", 0) or 0) & 0xFF    # the extended code's base
        if primary == sqlite3.SQLITE_FULL:
            return Code.NODE_FULL, f"node catalog: {e}"
        if primary == sqlite3.SQLITE_IOERR:
            return Code.IO_ERROR, f"node catalog: {e}"
    return Code.INTERNAL, f"node fault: {type(e).__name__}: {e}"
