"""The pool's reserve: disk space held back so that the catalog can always commit.

A full filesystem must not wedge a pool: the catalog commit of writes already acknowledged, and of
the deletes that would give space back, needs a little room in the sqlite WAL. Two things keep it
(as dm-vdo and ZFS keep slop space): the native core never grows the slot files into the last
1/32 of the filesystem (native/src/slots.rs) nor into the room the catalog's block-table pages
need to be committed and deleted (`catalog_bytes`, native/src/core.rs; a write that would add a
page without that room is refused), and `DIR/reserve`, a preallocated file of
`reserve_bytes` made here, stands for the room a commit needs when something else (another file,
another program) has filled the disk. A commit that fails with SQLITE_FULL deletes the reserve and
commits again; once the filesystem has room, the reserve is made again after the next commit.

The reserve is kept through a writable open unless the filesystem has less than OPEN_ROOM free
(sqlite could not open its WAL): a crash leaves a WAL that takes some of the room a clean close
gives back, and deleting the reserve at every open with less room than the reserve itself lost
it for good on a small, nearly full disk (brk7 finding 2: `vm rm` then failed at 100 %). It is
made again as soon as it fits with OPEN_ROOM to spare, so that the next open keeps it.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

RESERVE_FILE = "reserve"
MIN_RESERVE = 1 << 20
MAX_RESERVE = 4 << 20
OPEN_ROOM = 256 << 10   # what sqlite needs to open a catalog and commit the open: its WAL
                        # index (32 KiB) and a few WAL pages, with room to spare


def reserve_bytes(filesystem_bytes: int) -> int:
    """The reserve of a pool on a filesystem of that size: 1/64 of it, from 1 to 4 MiB (what a
    commit needs is WAL pages, a few MiB even for the delete of a VM of hundreds of GiB)."""
    return min(max(filesystem_bytes // 64, MIN_RESERVE), MAX_RESERVE)


def disk_full(e: BaseException) -> bool:
    """sqlite could not write because the filesystem is full."""
    return (isinstance(e, sqlite3.OperationalError)
            and (getattr(e, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_FULL
                 or "disk is full" in str(e)))


COMMIT_FAILED = ("the catalog cannot commit, so nothing of this change was made (acknowledged"
                 " writes are kept in RAM)")
OPEN_FAILED = "sqlite cannot open the catalog there"


def filesystem_full(pool_dir: Path, what: str = COMMIT_FAILED) -> str:
    """What to do when the catalog cannot commit (or open: OPEN_FAILED) for a full filesystem,
    in one line."""
    return (f"the filesystem holding {pool_dir} is full: {what}. Free space on that filesystem"
            f" (delete or move other files on it), then try again: once the catalog can commit,"
            f" `vm rm` gives a VM's blocks back")


def filesystem_nearly_full(pool_dir: Path) -> bool:
    """Less than OPEN_ROOM free where the pool is: sqlite cannot count on opening its WAL."""
    st = os.statvfs(pool_dir)
    return st.f_bavail * st.f_frsize < OPEN_ROOM


class Reserve:
    """DIR/reserve: held when it exists whole. Not thread-safe: the pool's lock guards it."""

    def __init__(self, pool_dir: Path):
        self.path = Path(pool_dir) / RESERVE_FILE
        self.held = False

    def _space(self) -> tuple[int, int]:
        """(bytes free, reserve size) of the pool's filesystem."""
        st = os.statvfs(self.path.parent)
        return st.f_bavail * st.f_frsize, reserve_bytes(st.f_blocks * st.f_frsize)

    def held_bytes(self) -> int:
        """Bytes the reserve holds on disk now (0: none), whoever holds the pool."""
        try:
            return self.path.stat().st_blocks * 512
        except FileNotFoundError:
            return 0

    def hold(self) -> None:
        """Makes the reserve if it is missing and the filesystem has room for it and OPEN_ROOM
        beside (so that making it never fills the disk); keeps none otherwise, which `stats`
        shows (`reserve_bytes` 0)."""
        if self.held:
            return
        free, size = self._space()
        if self.held_bytes() >= size:
            self.held = True
            return
        if free < size + OPEN_ROOM:
            return
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, size)
            finally:
                os.close(fd)
            self.held = True
        except OSError:
            self.path.unlink(missing_ok=True)

    def release(self) -> bool:
        """Gives the reserve's space to whoever needs it next; True if there was any."""
        self.held = False
        try:
            self.path.unlink()
            return True
        except FileNotFoundError:
            return False

    def release_if_full(self) -> None:
        """Before a writable open: a filesystem with less than OPEN_ROOM free gets the
        reserve's room, so that sqlite can open its WAL (a commit that finds the disk full
        gets it later, see Pool._durably)."""
        if filesystem_nearly_full(self.path.parent):
            self.release()
