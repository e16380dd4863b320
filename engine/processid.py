"""A process's identity on this host, that a later process can check against the running ones:

    identity := boot_id " " pid_namespace " " pid " " start

boot_id is the kernel's (/proc/sys/kernel/random/boot_id), pid_namespace the inode of the pid
namespace, start the process's start time in clock ticks after boot (/proc/PID/stat, field 22).
The boot id and the namespace say "this host, these pids" where a hostname cannot (two machines
or containers may share one); the start time tells a reused pid from the process.
"""

from __future__ import annotations

import os
from pathlib import Path

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def this() -> str:
    """This process's identity (the grammar above)."""
    return f"{_here()} {os.getpid()} {_start(os.getpid())}"


def gone(identity: str) -> bool:
    """True if `identity` names a process of this host that no longer runs: its pid is free, a
    zombie, or another process's (another start time). False if it still runs, or if it is not
    of this host (nothing can be told from here), or `identity` is not of the grammar above."""
    mine = _parse(identity)
    return mine is not None and _start(mine[0]) != mine[1]


def running(identity: str) -> bool:
    """True if `identity` names a process of this host that still runs; False if it does not,
    or nothing can be told from here (another host or pid namespace, not of the grammar)."""
    mine = _parse(identity)
    return mine is not None and _start(mine[0]) == mine[1]


def _parse(identity: str) -> tuple[int, int] | None:
    """(pid, start) of an identity of this host, or None."""
    try:
        boot, namespace, pid, start = identity.split(" ")
        pid, start = int(pid), int(start)
    except ValueError:
        return None
    if f"{boot} {namespace}" != _here() or pid <= 0:
        return None
    return pid, start


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
