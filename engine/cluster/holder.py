"""Who holds a cluster's write lease: a coordinator process, named for people and identified so
that a later writer on the same host can tell at once that it no longer runs.

A lease carries two strings. The nodes store both and compare only the name:

    name     := hostname " pid " pid " (" 6 hex digits ")"    what users are shown; the random
                                                               suffix tells two opens in one
                                                               process apart
    process  := engine.processid's identity                  which process: a later writer on
                                                               this host can tell that it no
                                                               longer runs

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

NOTE = "holder.json"


def name() -> str:
    """A new holder name for this process."""
    return f"{socket.gethostname()} pid {os.getpid()} ({secrets.token_hex(3)})"


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
