"""One writer per pool: a POSIX record lock (fcntl F_SETLK) on DIR/lock, released by the kernel
when the process dies.

Not flock: a flock belongs to the open file, which every child shares from fork() until its
exec() closes it (or for good, if it never execs). A writer killed while spawning qemu-img left
the pool locked for that instant, so an open right after the kill could be refused with the dead
writer's pid (5 kills in 200, a child spawning in a loop). A record lock belongs to the process:
children never hold it. Its catch, a lock that goes when the process closes *any* descriptor of
the file, is kept away by opening DIR/lock only here, and refusing a second lock of the same
file in this process before it is opened (_HELD).

A file can be removed under its lock, and a second opener would lock a new one: the pool's
catalog names its writer as well (engine.pool, meta `writer`), which such an opener checks.

The file says who holds it: the holder's pid on the first line, and, once a Blockfold process
serves the pool (a service, or a console serving its own pool: held_by), a JSON line naming it,
its command line and what to do; a refused opener names it from there.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import threading
from pathlib import Path

from .errors import PoolLockedError

LOCK_FILE = "lock"

_HELD: set[tuple[int, int]] = set()     # (device, inode) of the lock files this process holds
_HELD_LOCK = threading.Lock()


class PoolLock:
    def __init__(self, directory: Path):
        """Takes the pool's write lock and writes our pid in it. Raises PoolLockedError (held
        by another process, or by this one already), OSError (cannot open DIR/lock)."""
        self.path = directory / LOCK_FILE
        with _HELD_LOCK:
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                pass
            else:
                if (st.st_dev, st.st_ino) in _HELD:
                    raise PoolLockedError(f"pool {directory} is in use by this process already"
                                          f" (pid {os.getpid()})")
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                said = os.pread(fd, 4096, 0)
                os.close(fd)
                if e.errno not in (errno.EACCES, errno.EAGAIN):
                    raise
                raise PoolLockedError(_refusal(directory, said)) from None
            st = os.fstat(fd)
            self.key = (st.st_dev, st.st_ino)
            _HELD.add(self.key)
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
                _HELD.discard(self.key)
                os.close(self.fd)
                self.fd = -1


def _refusal(directory: Path, said: bytes) -> str:
    """The refusal of `directory`, from what its lock file `said` (see held_by)."""
    lines = said.decode(errors="replace").split("\n")
    pid = lines[0].strip() or "?"
    try:
        holder = json.loads(lines[1])
        return (f"pool {directory} is held by {holder['what']} (pid {pid},"
                f" `{holder['command']}`): {holder['advice']}")
    except (IndexError, ValueError, TypeError, KeyError):      # a plain opener: its pid alone
        return f"pool {directory} is in use by another process (pid {pid})"
