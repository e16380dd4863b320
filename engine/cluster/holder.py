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

A holder may say what it is, for the openers the lease refuses (as a pool's lock file does):
DIR/holder.json, {name, pid, what, command, advice} (`note`). A refusal names it only while
the lease it was refused by is that holder's (`said`): a note left by a writer that was since
fenced, or killed, names nobody.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from pathlib import Path

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
NOTE = "holder.json"


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


def note(directory, name: str, what: str, command: str, advice: str) -> None:
    """Says, in DIR/holder.json, that lease holder `name` (this process) is `what` ("a
    console"), run as `command`, and what to do about it (`advice`). Raises OSError."""
    path = Path(directory) / NOTE
    said = json.dumps({"name": name, "pid": os.getpid(), "what": what, "command": command,
                       "advice": advice})
    part = path.with_name(f".{NOTE}.{os.getpid()}")
    part.write_text(said + "\n")
    part.replace(path)      # whole or not at all, for a reader in between


def unnote(directory, name: str) -> None:
    """Removes DIR/holder.json if it is still holder `name`'s."""
    path = Path(directory) / NOTE
    if (_read(path) or {}).get("name") == name:
        path.unlink(missing_ok=True)


def said(directory, holders: set[str]) -> tuple[str, str] | None:
    """(what, the refusal in its words) if DIR/holder.json is that of one of `holders` (the
    names of the leases an open was refused by): "cluster C is held by a console (pid N,
    `blockfold console -c C`): quit it, …"; None if it is not, or there is none."""
    told = _read(Path(directory) / NOTE)
    if told is None or told.get("name") not in holders:
        return None
    try:
        return told["what"], (f"cluster {directory} is held by {told['what']} (pid {told['pid']},"
                              f" `{told['command']}`): {told['advice']}")
    except KeyError:
        return None


def _read(path: Path) -> dict | None:
    try:
        told = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return told if isinstance(told, dict) else None
