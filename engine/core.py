"""The native core (engine._native.Core, native/API.md) as the engine sees it: its errors turned
into the kinds callers branch on (engine/errors.py), and the names it knows VMs by.

The core's errors leave nothing changed, so each maps to a RefusedError, but for a rotten block,
which is a CorruptBlockError naming the VM and the byte offset. A block layer written in Python (a
cluster's) raises its own errors through the core unchanged.
"""

from __future__ import annotations

from . import _native
from .errors import (BlockfoldError, CancelledError, CorruptBlockError, NoSpaceError,
                     OutOfRangeError, PoolFormatError, ReadOnlyError, RefusedError,
                     VMNotFoundError)

_KINDS = {
    _native.OutOfRangeError: OutOfRangeError,
    _native.UnknownVMError: VMNotFoundError,
    _native.NoSpaceError: NoSpaceError,
    _native.ReadOnlyError: ReadOnlyError,
    _native.FormatError: PoolFormatError,
    _native.CancelledError: CancelledError,
}


def engine_error(e: _native.NativeError) -> BlockfoldError:
    """The engine's error for one of the core's: the same line, the kind a caller branches on.
    A StateError (a call the core's state refuses: before the first rebuild, a closed pool) is
    a plain RefusedError."""
    if isinstance(e, _native.CorruptError):
        return CorruptBlockError(f"VM {e.vm}: the block at byte {e.offset} is corrupt (its bytes"
                                 " no longer match its fingerprint)", address=e.slot,
                                 offset=e.offset)
    return _KINDS.get(type(e), RefusedError)(str(e))


def import_vm(layer: int) -> str:
    """The name an import's provisional layer is written through in the core: no VM can have it
    (a VM name has no '/'), so nobody else reads or writes the image before it is whole."""
    return f"import/{layer}"
