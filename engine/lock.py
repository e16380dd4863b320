"""One writer per pool: a POSIX record lock (fcntl F_SETLK) on DIR/lock, released by the kernel
when the process dies.

Not flock: a flock belongs to the open file, which every child shares from fork() until its
exec() closes it (or for good, if it never execs). A writer killed while spawning qemu-img left
the pool locked for that instant, so an open right after the kill could be refused with the dead
writer's pid (5 kills in 200, a child spawning in a loop). A record lock belongs to the process:
children never hold it. Its catch, a lock that goes when the process closes *any* descriptor of
the file, is kept away by opening DIR/lock only here, and refusing a second lock of the same
file in this process before it is opened (_HELD).
"""

from __future__ import annotations

import errno
import fcntl
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
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                if e.errno not in (errno.EACCES, errno.EAGAIN):
                    raise
                raise PoolLockedError(f"pool {directory} is in use by another process"
                                      f" (pid {holder})") from None
            st = os.fstat(fd)
            self.key = (st.st_dev, st.st_ino)
            _HELD.add(self.key)
            self.fd = fd
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        with _HELD_LOCK:
            if self.fd >= 0:
                _HELD.discard(self.key)
                os.close(self.fd)
                self.fd = -1
