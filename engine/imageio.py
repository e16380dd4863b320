"""Raw disk images in and out: holes are skipped on the way in and left on the way out.
(Other formats are engine/diskformats.py's.)"""

from __future__ import annotations

import errno
import os
import stat
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from .errors import BadImageError


class Image:
    """A raw image to import: a regular file (size known, holes found by SEEK_DATA), a block
    device (its size) or stdin."""

    def __init__(self, fd: int, size: int, seekable: bool, name: str, owned: bool | None = None):
        self.fd, self.size, self.seekable, self.name = fd, size, seekable, name
        self.owned = seekable if owned is None else owned     # close() closes fd
        self._head = b""            # a stream's first bytes, read by peek()

    def peek(self, n: int) -> bytes:
        """The first `n` bytes (fewer if the image is shorter), still to come in chunks()."""
        if self.seekable:
            return os.pread(self.fd, n, 0)
        if len(self._head) < n:
            self._head += _read_full(self.fd, n - len(self._head))
        return self._head[:n]

    def chunks(self, chunk: int):
        """(offset, bytes) for every chunk-aligned piece that may hold data."""
        if not self.seekable:
            offset = 0
            while True:
                data = self._head + _read_full(self.fd, chunk - len(self._head))
                self._head = b""
                if not data:
                    return
                yield offset, data
                offset += len(data)
        done = 0                      # everything below this was read already
        for start, end in self._extents():
            offset = max(start - start % chunk, done)
            while offset < end:
                n = min(chunk, self.size - offset)
                data = os.pread(self.fd, n, offset)
                if len(data) != n:
                    raise BadImageError(f"{self.name} changed size while being read")
                yield offset, data
                offset += n
            done = offset

    def _extents(self):
        """Data extents (start, end); where SEEK_DATA is unsupported, the whole file."""
        try:
            pos = 0
            while pos < self.size:
                start = os.lseek(self.fd, pos, os.SEEK_DATA)
                end = os.lseek(self.fd, start, os.SEEK_HOLE)
                yield start, end
                pos = end
        except OSError as e:
            if e.errno == errno.ENXIO:      # no data after pos
                return
            if pos == 0:
                yield 0, self.size
            else:
                raise

    def close(self) -> None:
        """Lets the file go (again: nothing)."""
        if self.owned and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def read_ahead(image, chunk: int):
    """image.chunks(chunk), with the next chunk of a file read on a thread while the caller
    stores this one (both release the GIL: the reads overlap the hashing). A pipe or a stream is
    read as it comes: a read of one may never return, and nothing may be left waiting on it."""
    if not (isinstance(image, Image) and image.seekable):
        yield from image.chunks(chunk)
        return
    pieces = image.chunks(chunk)
    with ThreadPoolExecutor(1, thread_name_prefix="blockfold-read") as reader:
        pending = reader.submit(next, pieces, None)
        while (piece := pending.result()) is not None:
            pending = reader.submit(next, pieces, None)
            yield piece


def _read_full(fd: int, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        part = os.read(fd, n - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def open_image(source) -> Image:
    """The image at path `source`, or stdin for "-"; an image already open (a service's stream
    of a client's file, say) is `source` itself."""
    if not isinstance(source, str):
        return source
    if source == "-":
        fd = sys.stdin.buffer.fileno()
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode):
            return Image(os.dup(fd), os.fstat(fd).st_size, True, "stdin")
        return Image(fd, 0, False, "stdin")
    try:
        # O_NONBLOCK: opening a FIFO with no writer would wait for one, forever.
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise BadImageError(f"cannot read image {source}: {e.strerror}") from None
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode):
        size = os.fstat(fd).st_size
    elif stat.S_ISBLK(mode):
        size = os.lseek(fd, 0, os.SEEK_END)
    else:
        os.close(fd)
        raise not_a_source(source)
    os.set_blocking(fd, True)
    if size == 0:
        os.close(fd)
        raise empty_image(source)
    return Image(fd, size, True, source)


def open_source(source: str) -> Image:
    """What `vm write` writes: the file or block device at path `source` (its size known, holes
    found), else stdin ("-"), a FIFO or a character device, read to its end as it comes (a FIFO
    with no writer reads as empty, at once). Raises BadImageError (cannot open it, or a
    directory)."""
    if source == "-":
        fd = sys.stdin.buffer.fileno()
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return Image(os.dup(fd), os.fstat(fd).st_size, True, "stdin")
        return Image(fd, 0, False, "stdin")
    try:
        # O_NONBLOCK: opening a FIFO with no writer would wait for one, forever.
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK)
        os.set_blocking(fd, True)
        mode = os.fstat(fd).st_mode
    except OSError as e:
        raise BadImageError(f"cannot read {source}: {e.strerror}") from None
    if stat.S_ISDIR(mode):          # it opens, and its first read fails with a bare EISDIR
        os.close(fd)
        raise BadImageError(f"cannot read {source}: it is a directory")
    if stat.S_ISREG(mode):
        return Image(fd, os.fstat(fd).st_size, True, source)
    if stat.S_ISBLK(mode):
        return Image(fd, os.lseek(fd, 0, os.SEEK_END), True, source)
    return Image(fd, 0, False, source, owned=True)


def empty_image(source: str) -> BadImageError:
    return BadImageError(f"image {source} is empty")


def not_a_source(source: str) -> BadImageError:
    """A FIFO, a socket, a directory: nothing an import can read a disk from."""
    return BadImageError(f"image {source} is not a regular file or a block device: give one, or"
                         " - to read stdin")


def mapped_runs(mapped):
    """(i, j) for every run mapped[i:j] of true values."""
    i = 0
    while i < len(mapped):
        if not mapped[i]:
            i += 1
            continue
        j = i
        while j < len(mapped) and mapped[j]:
            j += 1
        yield i, j
        i = j


class _Output:
    """Where an export goes: a file, where unmapped blocks stay holes, or a stream."""

    def __init__(self, fd: int, sparse: bool, name: str | None = None):
        self.fd, self.sparse, self.name = fd, sparse, name
        self.position = 0

    def write_blocks(self, offset: int, data: bytes, mapped, block_size: int) -> None:
        """Writes `data` (at `offset`); in a file, runs of unmapped blocks are skipped."""
        if not self.sparse:
            self.write_at(offset, data)
            return
        for i, j in mapped_runs(mapped):
            self._write(data[i * block_size:j * block_size], offset + i * block_size)

    def write_at(self, offset: int, data: bytes) -> None:
        """Writes `data` at `offset`; a stream is padded with zeros up to it (offsets only
        grow)."""
        if self.sparse:
            self._write(data, offset)
        else:
            self._pad_to(offset)
            self._write(data, None)

    def _pad_to(self, offset: int) -> None:
        """A stream has no holes: what was skipped is written as zeros."""
        while self.position < offset:
            self._write(bytes(min(1 << 20, offset - self.position)), None)

    def _write(self, data: bytes, offset: int | None) -> None:
        view = memoryview(data)
        with self._naming_errors():
            while view:
                n = (os.write(self.fd, view) if offset is None
                     else os.pwrite(self.fd, view, offset))
                if offset is not None:
                    offset += n
                else:
                    self.position += n
                view = view[n:]

    def finish(self, size: int) -> None:
        if self.sparse:
            with self._naming_errors():
                os.ftruncate(self.fd, size)
                os.fsync(self.fd)
        else:
            self._pad_to(size)

    @contextmanager
    def _naming_errors(self):
        """A file that cannot take the bytes (a full disk, /dev/full) is named in the error;
        a stream's errors (a closed pipe) pass as they are."""
        try:
            yield
        except OSError as e:
            if self.name is None:
                raise
            raise BadImageError(f"cannot write {self.name}: {e.strerror or e}") from None


@contextmanager
def open_output(dest, size: int):
    """Where an export of `size` bytes goes: the file at path `dest` (sparse), stdout for "-", or
    `dest` itself when it is an output already (a service's stream to a client)."""
    if not isinstance(dest, str):
        yield dest
        dest.finish(size)
        return
    if dest == "-":
        out = _Output(sys.stdout.buffer.fileno(), sparse=False)
        yield out
        out.finish(size)
        return
    try:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as e:
        raise BadImageError(f"cannot write {dest}: {e.strerror}") from None
    try:
        out = _Output(fd, sparse=True, name=dest)
        yield out
        out.finish(size)
    finally:
        os.close(fd)
