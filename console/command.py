"""A CLI command, declared once: its words, help, arguments, handler, and how it opens the pool.

console/commands.py declares every command; console/cli.py derives the argparse parser, the
dispatch and the read-only and cluster rules from the declarations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class UsageError(Exception):
    """Bad usage the parser cannot see (no pool given, a command without its action): exit 2."""


@dataclass(frozen=True)
class Arg:
    """One argument, as argparse's add_argument(*flags, **options) takes it."""

    flags: tuple[str, ...]
    options: dict[str, Any]


def arg(*flags: str, **options: Any) -> Arg:
    return Arg(flags, options)


@dataclass(frozen=True)
class Command:
    words: tuple[str, ...]
    """What the user types: ("vm", "import"), or ("stats",)."""
    help: str
    """One line, in the list of commands and atop the command's --help."""
    run: Callable[..., int]
    """Returns the exit code. run(admin, args, progress) when `opens`, else run(args)."""
    args: tuple[Arg, ...] = ()
    description: str = ""
    """--help's text when it says more than `help`."""
    opens: bool = True
    """Runs on the pool (-p) or cluster (-c), opened for it and closed after."""
    looks: bool = False
    """Only looks: opened read-only, without the write lock, so it runs beside a writer."""
    cluster: bool = False
    """Needs a cluster (-c DIR)."""
    json: str | None = None
    """What --json prints instead of text for people, documented in --help (the fields of the
    results in engine/results.py); None: the command takes no --json."""
    rebuilds: bool = False
    """Opening rebuilds the RAM metadata (full with --full), with a progress bar: the work."""

