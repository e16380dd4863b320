"""Bytes that travel with a call, in DATA frames: a client's image to import, its data to write,
and an export back to it.

The client reads and writes its own files (with its own permissions); the service sees only
(offset, bytes) pieces. Those coming in wait in the call's inbox, a bounded queue, so a client
that sends faster than the pool stores is held back by its socket.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

from ..errors import BadImageError, CancelledError, OutOfRangeError
from ..imageio import mapped_runs

INBOX_PIECES = 8            # DATA frames a call holds before the client is made to wait
WAIT_STEP = 0.1             # how often a wait for the client looks at the call's cancel event
MAX_OFFSET = 1 << 56        # no image or VM is this big: an offset past it is garbage

END = "end"                 # in an inbox: the client sent the end of the bytes
GONE = "gone"               # in an inbox: the client went away


def pieces(inbox: queue.Queue, cancel: threading.Event, what: str) -> Iterator[tuple[int, bytes]]:
    """The (offset, bytes) pieces a client sends for `what`, until their end. Raises
    CancelledError once the call is cancelled or its client has gone."""
    while True:
        try:
            item = inbox.get(timeout=WAIT_STEP)
        except queue.Empty:
            if cancel.is_set():
                raise CancelledError(f"{what} cancelled") from None
            continue
        if item == END:
            return
        if item == GONE or cancel.is_set():
            raise CancelledError(f"{what} cancelled: the client went away"
                                 if item == GONE else f"{what} cancelled")
        offset, data = item
        if not 0 <= offset < MAX_OFFSET:
            raise BadImageError(f"{what}: a piece at offset {offset} is out of any range")
        yield offset, data


class StreamImage:
    """An image a client streams: what Pool.import_image and Pool.write_from read instead of a
    file (see engine.imageio.Image). `size` None: a stream whose length is known at its end."""

    def __init__(self, inbox: queue.Queue, cancel: threading.Event, size: int | None,
                 name: str, what: str = "import"):
        self.inbox, self.cancel, self.name, self.what = inbox, cancel, name, what
        self.size, self.seekable = size or 0, size is not None

    def chunks(self, chunk: int) -> Iterator[tuple[int, bytes]]:
        """The pieces as the client sends them (holes are never sent)."""
        return pieces(self.inbox, self.cancel, f"{self.what} of {self.name}")

    def close(self) -> None:
        pass


def gather(inbox: queue.Queue, cancel: threading.Event, limit: int, what: str) -> bytearray:
    """All the bytes a client sends for one request, at most `limit` of them (the room left in
    the VM): a write is applied whole or not at all, so it is held until complete."""
    data = bytearray()
    for offset, piece in pieces(inbox, cancel, what):
        end = offset + len(piece)
        if end > limit:
            raise OutOfRangeError(f"{what}: {end} bytes do not fit the {limit} bytes left in the"
                                  " VM from that offset")
        if end > len(data):
            data.extend(bytes(end - len(data)))
        data[offset:end] = piece
    return data


class ExportSink:
    """Where Pool.export writes when the destination is a client's file: mapped runs of blocks
    go out as DATA frames (what is not sent reads as zeros, and stays a hole)."""

    def __init__(self, send: Callable[[dict, bytes], None], cancel: threading.Event):
        self.send, self.cancel = send, cancel

    def write_blocks(self, offset: int, data: bytes, mapped, block_size: int) -> None:
        if self.cancel.is_set():
            raise CancelledError("export cancelled")
        view = memoryview(data)
        for i, j in mapped_runs(mapped):
            self.send({"offset": offset + i * block_size},
                      view[i * block_size:j * block_size])

    def finish(self, size: int) -> None:
        pass
