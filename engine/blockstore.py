"""Physical slots: a data file of fixed-size blocks and a parallel file of their fingerprints.

Slot 0 of the data file holds a header, so slot number 0 can mean "no block" everywhere else.
A slot's fingerprint (16 bytes of xxh3-128) lives at the same index in hashes.dat; a free slot's
fingerprint is all zeros. Both files grow in preallocated steps, so running out of disk space is an
error at allocation time rather than a SIGBUS on a later write through the mapping.
"""

from __future__ import annotations

import errno
import mmap
import os
from pathlib import Path

import numpy as np

from .errors import NoSpaceError, PoolFormatError

DATA_FILE = "blocks.dat"
HASH_FILE = "hashes.dat"
MAGIC = b"BLOCKFOLD-SLOTS\n"
HASH_BYTES = 16
MIN_GROWTH_SLOTS = 1024


class BlockStore:
    def __init__(self, directory: Path | None, block_size: int, readonly: bool = False):
        """Opens the slot files in `directory`, creating them if absent; None keeps them in RAM."""
        self.directory = directory
        self.block_size = block_size
        self.readonly = readonly
        self._fds: list[int] = []
        if directory is None:
            self.capacity = 0
            self._maps = (None, None)
            self._map_anonymous(1)
            self._write_header()
            return
        flags = os.O_RDONLY if readonly else os.O_RDWR | os.O_CREAT
        self._fds = [os.open(directory / DATA_FILE, flags, 0o644),
                     os.open(directory / HASH_FILE, flags, 0o644)]
        size = os.fstat(self._fds[0]).st_size
        if size == 0 and not readonly:
            self._allocate(block_size, HASH_BYTES)
            self._map_files()
            self._write_header()
        else:
            self._repair_hash_file_size(size)
            self._map_files()
            if bytes(self.data[0, :len(MAGIC)]) != MAGIC:
                raise PoolFormatError(f"{directory / DATA_FILE} is not a Blockfold slot file")

    # -- mapping ------------------------------------------------------------------------------

    def _map_files(self) -> None:
        data_fd, hash_fd = self._fds
        self.capacity = os.fstat(data_fd).st_size // self.block_size
        access = mmap.ACCESS_READ if self.readonly else mmap.ACCESS_WRITE
        data_map = mmap.mmap(data_fd, self.capacity * self.block_size, access=access)
        hash_map = mmap.mmap(hash_fd, self.capacity * HASH_BYTES, access=access)
        self._set_views(data_map, hash_map)

    def _map_anonymous(self, capacity: int) -> None:
        data_map = mmap.mmap(-1, capacity * self.block_size)
        hash_map = mmap.mmap(-1, capacity * HASH_BYTES)
        if self.capacity:
            data_map[: self.capacity * self.block_size] = self._maps[0][:]
            hash_map[: self.capacity * HASH_BYTES] = self._maps[1][:]
        self.capacity = capacity
        self._set_views(data_map, hash_map)

    def _set_views(self, data_map: mmap.mmap, hash_map: mmap.mmap) -> None:
        self._maps = (data_map, hash_map)
        self.data = np.frombuffer(data_map, dtype=np.uint8).reshape(-1, self.block_size)
        self.words = self.data.view(np.uint64)        # the same bytes, for fast comparisons
        self.hashes = np.frombuffer(hash_map, dtype=np.uint64).reshape(-1, 2)

    def _write_header(self) -> None:
        self.data[0, :len(MAGIC)] = np.frombuffer(MAGIC, dtype=np.uint8)

    def _repair_hash_file_size(self, data_size: int) -> None:
        """A crash between growing the two files leaves them out of step; even them up."""
        capacity = data_size // self.block_size
        want = capacity * HASH_BYTES
        if os.fstat(self._fds[1]).st_size < want and not self.readonly:
            os.ftruncate(self._fds[1], want)

    # -- growth -------------------------------------------------------------------------------

    def grow(self, at_least: int) -> np.ndarray:
        """Adds at least `at_least` slots and returns their numbers."""
        old = self.capacity
        extra = max(at_least, old // 4, MIN_GROWTH_SLOTS)
        if self.directory is None:
            self._map_anonymous(old + extra)
        else:
            self._allocate((old + extra) * self.block_size, (old + extra) * HASH_BYTES)
            self._map_files()
        return np.arange(old, self.capacity, dtype=np.uint64)

    def _allocate(self, data_bytes: int, hash_bytes: int) -> None:
        for fd, size in zip(self._fds, (data_bytes, hash_bytes)):
            current = os.fstat(fd).st_size
            if size <= current:
                continue
            try:
                os.posix_fallocate(fd, current, size - current)
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    os.ftruncate(fd, current)
                    raise NoSpaceError(f"out of disk space in {self.directory}") from None
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                os.ftruncate(fd, size)

    # -- blocks -------------------------------------------------------------------------------

    def write(self, slots: np.ndarray, blocks: np.ndarray, digests: np.ndarray) -> None:
        """Stores `blocks` (n × block_size bytes) and their digests (n × 2 words) in `slots`."""
        self.data[slots] = blocks
        self.hashes[slots] = digests

    def block(self, slot: int) -> bytes:
        return self._maps[0][slot * self.block_size:(slot + 1) * self.block_size]

    def view(self) -> memoryview:
        """The whole data file, for reading many blocks without a copy each."""
        return memoryview(self._maps[0])

    def clear_hashes(self, slots: np.ndarray) -> None:
        self.hashes[slots] = 0

    def sync(self) -> None:
        """Makes every block and fingerprint written so far durable."""
        for fd in self._fds:
            os.fdatasync(fd)

    def close(self) -> None:
        self.data = self.words = self.hashes = None
        self._maps = (None, None)
        for fd in self._fds:
            os.close(fd)
        self._fds = []
