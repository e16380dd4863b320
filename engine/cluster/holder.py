"""Who holds a cluster's write lease: a coordinator process, named for people and identified so
that a later writer on the same host can tell at once that it no longer runs.

A lease carries two strings. The nodes store both and compare only the name:

    name     := hostname " pid " pid " (" 6 hex digits ")"    what users are shown; the random
                                                               suffix tells two opens in one
                                                               process apart
    process  := boot_id " " pid_namespace " " pid " " start   where: the kernel's boot id
                                                               (/proc/sys/kernel/random/boot_id),
                                                               the inode of the pid namespace,
                                                               and the process's start time in
                                                               clock ticks after boot
                                                               (/proc/PID/stat, field 22)

The boot id and the namespace say "this host, these pids" where a hostname cannot (two machines
or containers may share one); the start time tells a reused pid from the holder.
"""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def name() -> str:
    """A new holder name for this process."""
    return f"{socket.gethostname()} pid {os.getpid()} ({secrets.token_hex(3)})"


def process() -> str:
    """This process's identity (the grammar above)."""
    return f"{_here()} {os.getpid()} {_start(os.getpid())}"


def gone(process: str) -> bool:
    """True if `process` names a process of this host that no longer runs: its pid is free, a
    zombie, or another process's (another start time). False if it still runs, or if it is not
    of this host (nothing can be told from here), or `process` is not of the grammar above."""
    try:
        boot, namespace, pid, start = process.split(" ")
        pid, start = int(pid), int(start)
    except ValueError:
        return False
    if f"{boot} {namespace}" != _here() or pid <= 0:
        return False
    return _start(pid) != start


def _here() -> str:
    return f"{BOOT_ID.read_text().strip()} {os.stat('/proc/self/ns/pid').st_ino}"


def _start(pid: int) -> int | None:
    """The start time of process `pid` in clock ticks after boot; None if there is no such
    process, or only its zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return None if fields[0] == "Z" else int(fields[19])
