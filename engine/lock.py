"""One writer per pool: a POSIX record lock (fcntl F_SETLK) on DIR/lock, released by the kernel
when the process dies; and, while a read-only opener reads a state it needs to stay put (an
export: Pool.frozen), a shared lock on the same file (F_RDLCK, ReadLock), which keeps writers
out as qemu's image locking does.

Not flock: a flock belongs to the open file, which every child shares from fork() until its
exec() closes it (or for good, if it never execs). A writer killed while spawning qemu-img left
the pool locked for that instant, so an open right after the kill could be refused with the dead
writer's pid (5 kills in 200, a child spawning in a loop). A record lock belongs to the process:
children never hold it. Its catch, a lock that goes when the process closes *any* descriptor of
the file, is kept away by opening DIR/lock only here, once per process (_HELD: the readers of a
process share one descriptor), and refusing a write lock of a file this process holds in any way
before it is opened. A read lock taken on a second descriptor beside this process's write lock
would turn that lock into a shared one, so a reader is refused there too.

A file can be removed under its lock, and a second opener would lock a new one: the pool's
catalog names its writer as well (engine.pool, meta `writer`), which such an opener checks.

The file says who holds it: the holder's pid on the first line, and, once a Blockfold process
serves the pool (a service, or a console serving its own pool: held_by), a JSON line naming it,
its command line and what to do; a refused opener names it from there. Readers write nothing in
it (they are many, and it is the writer's): a writer refused by a read lock names the reader
by the pid the kernel gives (F_GETLK).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import struct
import threading
from pathlib import Path

from .errors import PoolLockedError

LOCK_FILE = "lock"

_HELD: dict[tuple[int, int], PoolLock | ReadLock] = {}  # by (device, inode): this process's locks
_HELD_LOCK = threading.Lock()
_FLOCK = "hhqqi"            # struct flock: l_type, l_whence, l_start, l_len, l_pid (64-bit Linux)


class PoolLock:
    def __init__(self, directory: Path):
        """Takes the pool's write lock and writes our pid in it. Raises PoolLockedError (held
        by another process, or by this one already), OSError (cannot open DIR/lock)."""
        self.path = directory / LOCK_FILE
        with _HELD_LOCK:
            if _held(self.path) is not None:
                raise PoolLockedError(f"pool {directory} is in use by this process already"
                                      f" (pid {os.getpid()})")
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                said = os.pread(fd, 4096, 0)
                kind, pid = _in_the_way(fd, fcntl.F_WRLCK)
                os.close(fd)
                if e.errno not in (errno.EACCES, errno.EAGAIN):
                    raise
                if kind == fcntl.F_RDLCK:       # a reader: the file still names the last writer
                    raise PoolLockedError(f"pool {directory} is being read by {_who(pid)} (a"
                                          f" `vm export`): try again when it ends") from None
                raise _refusal(directory, said) from None
            self.key = _key(fd)
            _HELD[self.key] = self
            self.fd = fd
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def held_by(self, what: str, command: str, advice: str) -> None:
        """Says who holds the lock, for the openers it refuses: "pool P is held by `what` (pid N,
        `command`): `advice`". `what`: "a console"; `command`: its command line; `advice`: what
        to do. Raises OSError (cannot write DIR/lock)."""
        said = f"{os.getpid()}\n" + json.dumps({"what": what, "command": command,
                                                "advice": advice}) + "\n"
        # Longer than the pid line alone, so a reader in between sees that line whole.
        os.pwrite(self.fd, said.encode(), 0)
        os.ftruncate(self.fd, len(said.encode()))

    def release(self) -> None:
        with _HELD_LOCK:
            if self.fd >= 0:
                del _HELD[self.key]
                os.close(self.fd)
                self.fd = -1


class ReadLock:
    """A shared lock on DIR/lock (F_RDLCK), held while a read-only opener reads a state that
    must not change under it (an export): every writer's open is refused meanwhile, naming its
    pid (PoolLock), while other readers, and openers that take no lock (`vm ls`), go on. The
    readers of one process share it (one descriptor: closing a second would drop it)."""

    def __init__(self, fd: int, key: tuple[int, int]):
        self.fd = fd
        self.key = key
        self.readers = 1

    @classmethod
    def take(cls, directory: Path) -> ReadLock:
        """Holds the pool's read lock until release(). Raises PoolLockedError (a writer holds
        the pool, in another process or this one), OSError (cannot open DIR/lock)."""
        path = directory / LOCK_FILE
        with _HELD_LOCK:
            held = _held(path)
            if isinstance(held, ReadLock):
                held.readers += 1
                return held
            if held is not None:
                raise PoolLockedError(_being_written(directory, os.getpid()))
            fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as e:
                said = os.pread(fd, 64, 0).split(b"\n")[0].decode(errors="replace").strip()
                pid = _in_the_way(fd, fcntl.F_RDLCK)[1]
                os.close(fd)
                if e.errno not in (errno.EACCES, errno.EAGAIN):
                    raise
                raise PoolLockedError(_being_written(directory, pid or said or "?")) from None
            lock = cls(fd, _key(fd))
            _HELD[lock.key] = lock
            return lock

    def release(self) -> None:
        with _HELD_LOCK:
            self.readers -= 1
            if self.readers == 0:
                del _HELD[self.key]
                os.close(self.fd)


def holder(directory: Path) -> int | None:
    """The pid of the process that holds DIR/lock for writing (a pool's writer, a node serving
    its data dir: engine.node.server), None if none does (or the file is not there). Asked of
    the kernel (F_GETLK), not of what the file says: a pid written in a file can be stale."""
    path = directory / LOCK_FILE
    with _HELD_LOCK:
        held = _held(path)
        if held is not None:        # ours: closing another descriptor of it would drop it
            return os.getpid() if isinstance(held, PoolLock) else None
        try:
            fd = os.open(path, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            kind, pid = _in_the_way(fd, fcntl.F_WRLCK)
        finally:
            os.close(fd)
    return pid if kind == fcntl.F_WRLCK and pid > 0 else None


def _key(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _held(path: Path) -> PoolLock | ReadLock | None:
    """This process's lock of the file at `path`, if it holds one. Caller holds _HELD_LOCK."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return _HELD.get((st.st_dev, st.st_ino))


def _in_the_way(fd: int, kind: int) -> tuple[int, int]:
    """The type (F_RDLCK, F_WRLCK; F_UNLCK: none, now) and pid of another process's lock that
    a lock of `kind` on all of `fd`'s file would meet (F_GETLK). The pid is 0 when that process
    lies outside our pid namespace."""
    asked = struct.pack(_FLOCK, kind, os.SEEK_SET, 0, 0, 0)
    kind, _, _, _, pid = struct.unpack(_FLOCK, fcntl.fcntl(fd, fcntl.F_GETLK, asked))
    return kind, pid


def _who(pid: int) -> str:
    return f"pid {pid}" if pid > 0 else "another process"


def _being_written(directory: Path, pid: int | str) -> str:
    """The refusal of a reader that a writer (pid `pid`) keeps out."""
    return (f"pool {directory} is being written by pid {pid}: export through its service"
            f" (`blockfold serve`), or when it ends")


def _refusal(directory: Path, said: bytes) -> PoolLockedError:
    """The refusal of `directory`, from what its lock file `said` (see held_by)."""
    lines = said.decode(errors="replace").split("\n")
    pid = lines[0].strip() or "?"
    try:
        holder = json.loads(lines[1])
        who = f"{holder['what']} (pid {pid}, `{holder['command']}`)"
        return PoolLockedError(f"pool {directory} is held by {who}: {holder['advice']}",
                               held_by=holder["what"], holder=who)
    except (IndexError, ValueError, TypeError, KeyError):      # a plain opener: its pid alone
        return PoolLockedError(f"pool {directory} is in use by another process (pid {pid})")
