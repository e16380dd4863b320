"""A CLI command, declared once: its words, help, arguments, handler, and how it opens the pool.

console/commands.py declares every command; console/cli.py derives the argparse parser, the
dispatch and the read-only and cluster rules from the declarations.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.api import parse_size


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


def nonnegative(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text}")
    return value


def byte_size(text: str) -> int:
    """A count of bytes as the size options take it ('1048576', '0x100000', '4K', '1M',
    '1.5GiB'), for an option that is a byte position."""
    if text.strip().startswith("-"):
        raise argparse.ArgumentTypeError(f"must not be negative: {text}")
    try:
        return int(text, 0)
    except ValueError:
        pass
    try:
        return parse_size(text, whole=True)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of bytes: {text!r} (a number with"
                                         " an optional K, M, G or T)") from None


def positive(text: str) -> int:
    value = nonnegative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def seconds(text: str) -> float:
    """A duration in seconds, 0 or more (--repair-delay: 0 heals at once)."""
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text}")
    return value


def weight(text: str) -> float:
    """A share above 0 (a node of weight 0 would be given no blocks: fail or remove it)."""
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0: {text}")
    return value


def _number(text: str) -> float:
    """A finite number (float() takes "nan" and "inf" too, and they pass every comparison a
    check makes, or none)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def size(text: str) -> int:
    """A size above 0 in bytes: 4096, 512M, 20G … (engine.formats.parse_size)."""
    try:
        value = parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0: {text}")
    return value


def listen_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"not HOST:PORT: {text!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)
