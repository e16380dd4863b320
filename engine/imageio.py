"""Raw disk images in and out: holes are skipped on the way in and left on the way out.
(Other formats are engine/diskformats.py's.)"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import secrets
import shutil
import stat
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress

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
    """Where an export goes: a file, where unmapped blocks stay holes, or a stream or a device,
    written from its start with every byte (`name`: a path, named in its errors)."""

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

    def start(self, size: int) -> None:
        """A file takes its size first: one its file system cannot hold (ext4 past 16 TiB) is
        refused before any of the disk is read."""
        if self.sparse:
            with self._naming_errors():
                os.ftruncate(self.fd, size)

    def finish(self, size: int) -> None:
        if self.sparse:
            with self._naming_errors():
                os.ftruncate(self.fd, size)
                os.fsync(self.fd)
        else:
            self._pad_to(size)
            if self.name is not None and stat.S_ISBLK(os.fstat(self.fd).st_mode):
                with self._naming_errors():     # (a character device, /dev/null, has no sync)
                    os.fsync(self.fd)

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
    """Where an export of `size` bytes goes: the file at path `dest` (sparse, and replaced whole:
    see replacing), a device or a FIFO there (written in place, every byte), stdout for "-", or
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
    with replacing(dest) as path:
        try:
            fd = os.open(path, os.O_WRONLY)
        except OSError as e:
            raise BadImageError(f"cannot write {dest}: {e.strerror}") from None
        try:
            # A device's unwritten bytes are not zeros, and /dev/null has no size to set.
            out = _Output(fd, sparse=stat.S_ISREG(os.fstat(fd).st_mode), name=dest)
            out.start(size)
            yield out
            out.finish(size)
        finally:
            os.close(fd)


PART_TRIES = 100        # names tried for the temporary file beside a target


@contextmanager
def replacing(dest: str):
    """Yields the path to write the new content of file `dest` to: an empty temporary file beside
    it (".NAME.XXXXXXXX.part", in the same directory, so that the rename is atomic), renamed over
    `dest` once the `with` ends without an error, and removed if it raises: a failed or
    interrupted export leaves the file that was there as it was. The new file takes the old
    one's mode, owner and group (owner and group as far as this user may set them); a new file
    gets 0644 less the umask. A symlink's target is replaced, the link kept. A device or a FIFO
    (/dev/null, a LUN) is not replaced: `dest` itself is yielded, written in place.

    The part is locked (flock) while its writer lives, so that what a writer killed outright
    left (kill -9, a power cut: no handler of its own runs) is known as such and removed by the
    next export to `dest` (_sweep), never a part another export is writing. Raises
    BadImageError (the directory takes no new file)."""
    try:
        old = os.stat(dest)
    except FileNotFoundError:
        old = None
    except OSError as e:
        raise BadImageError(f"cannot write {dest}: {e.strerror}") from None
    if old is not None and not stat.S_ISREG(old.st_mode):
        yield dest
        return
    # (after the stat: /dev/stdout on a pipe resolves to no path at all)
    folder, base = os.path.split(os.path.realpath(dest))
    _sweep(folder, base)
    made: list[str] = []        # the part, named before it exists: a Ctrl-C in between leaves none
    lock = None
    try:
        part, lock = _new_part(folder, base, dest, made)
        yield part
        fd = os.open(part, os.O_RDONLY)     # (qemu-img makes its file afresh, and never syncs)
        try:
            if old is not None:
                os.fchmod(fd, stat.S_IMODE(old.st_mode))
                _keep_owner(fd, old)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(part, os.path.join(folder, base))
    except BaseException:
        for part in made:
            shutil.rmtree(part + SCRATCH, ignore_errors=True)
            with suppress(FileNotFoundError):
                os.unlink(part)
        raise
    finally:
        if lock is not None:
            os.close(lock)
    _sync_dir(folder)


SCRATCH = ".d"          # a part's scratch directory: PART.d (scratch)


@contextmanager
def scratch(part: str):
    """A directory beside the part `part` (replacing's) for what goes into it on the way (a
    raw copy to convert): removed at the end, and with the part if its writer is killed."""
    folder = part + SCRATCH
    try:
        os.mkdir(folder, 0o700)
    except OSError as e:
        raise BadImageError(f"cannot write beside {part}: {e.strerror}") from None
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _sweep(folder: str, base: str) -> None:
    """Removes the parts of `base` (and their scratch directories) that no living writer locks:
    left by an export killed before it could remove them. Anything it cannot remove stays."""
    left = re.compile(re.escape(f".{base}.") + r"[0-9a-f]{8}\.part(" + re.escape(SCRATCH) + ")?")
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        found = left.fullmatch(name)
        if not found:
            continue
        path = os.path.join(folder, name)
        if found.group(1):          # a scratch directory whose part is gone already
            if not os.path.lexists(path.removesuffix(SCRATCH)):
                shutil.rmtree(path, ignore_errors=True)
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                shutil.rmtree(path + SCRATCH, ignore_errors=True)
                os.unlink(path)
        except OSError:
            pass        # its writer runs (BlockingIOError), or it is not ours to remove
        finally:
            os.close(fd)


def _new_part(folder: str, base: str, dest: str, made: list[str]) -> tuple[str, int]:
    """A new empty file ".BASE.XXXXXXXX.part" in `folder`, locked: its path, in `made` from
    before it is created until the caller is done with it, and the descriptor holding its lock
    (closed by the caller)."""
    for _ in range(PART_TRIES):
        part = os.path.join(folder, f".{base}.{secrets.token_hex(4)}.part")
        made.append(part)
        try:
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            made.remove(part)       # another's
            continue
        except OSError as e:
            raise BadImageError(f"cannot write {dest}: {e.strerror}") from None
        # Blocking: a sweeper that took it before this lock lets go at once, having removed it.
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_nlink:
            return part, fd
        os.close(fd)
        made.remove(part)
    raise BadImageError(f"cannot write {dest}: {PART_TRIES} temporary names beside it are taken")


def _keep_owner(fd: int, old: os.stat_result) -> None:
    """Gives the file at `fd` the owner and group of `old`: both as root; else its group, if
    this user is in it; else it stays this user's."""
    for uid in (old.st_uid, -1):
        try:
            os.fchown(fd, uid, old.st_gid)
            return
        except PermissionError:
            continue


def _sync_dir(folder: str) -> None:
    """Makes a rename in `folder` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
