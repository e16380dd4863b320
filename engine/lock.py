"""One writer per pool: an advisory lock on DIR/lock, released by the kernel if the process dies."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .errors import PoolLockedError

LOCK_FILE = "lock"


class PoolLock:
    def __init__(self, directory: Path):
        self.path = directory / LOCK_FILE
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            raise PoolLockedError(f"pool {directory} is in use by another process"
                                  f" (pid {holder})") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
