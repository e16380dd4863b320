"""What a command line's values must be, checked as argparse parses them (its `type=`): sizes,
rates, weights, durations, counts, addresses. One set for both command lines that take them:
`blockfold` (console/commands.py, through engine.api) and `python -m engine.node`, which `cluster
up` runs; a bad value is a usage error (exit 2) before anything starts.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from .formats import parse_size


# The largest count a catalog query takes (sqlite's INTEGER is 64-bit signed): a larger --limit
# or --offset was an OverflowError, an internal error, where a usage error belongs.
LARGEST = 2**63 - 1


def nonnegative(text: str) -> int:
    """A whole number from 0 to LARGEST (a count, an offset in rows, an id). Raises
    argparse.ArgumentTypeError: not a number, below 0, above LARGEST."""
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text}")
    if value > LARGEST:
        raise argparse.ArgumentTypeError(f"too large: {text} (at most {LARGEST})")
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


# The block sizes a pool and a node's store take (bytes): powers of two, 4 KiB to 64 KiB.
BLOCK_SIZES = tuple(1 << n for n in range(12, 17))


def block_size(text: str) -> int:
    """A block size as `pool init` and `cluster up` take it ('4096', '64K'): one of
    BLOCK_SIZES. Raises argparse.ArgumentTypeError."""
    try:
        value = byte_size(text)
    except argparse.ArgumentTypeError:
        value = None
    if value not in BLOCK_SIZES:
        raise argparse.ArgumentTypeError(f"not a block size: {text!r} (a power of two from 4K"
                                         " to 64K: 4K, 8K, 16K, 32K or 64K)")
    return value


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


def above_zero(hint: str = "") -> Callable[[str], int]:
    """An argparse type for a count of bytes above 0 (engine.formats.parse_size: 4096, 512M,
    20G …); `hint` follows "must be above 0: TEXT" in the message, to say what the user meant
    by 0 instead."""
    def check(text: str) -> int:
        try:
            value = parse_size(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be above 0: {text}{hint}")
        return value
    return check


# Local nodes a new cluster may have (cluster up's --nodes): each is a Python process of this
# machine (1000 of them took a 2-core machine to a load of 135, and cluster up never finished).
MAX_LOCAL_NODES = 64


def local_nodes(text: str) -> int:
    """A count of local nodes, 1 to MAX_LOCAL_NODES. Raises argparse.ArgumentTypeError."""
    value = positive(text)
    if value > MAX_LOCAL_NODES:
        raise argparse.ArgumentTypeError(
            f"at most {MAX_LOCAL_NODES} local nodes, not {text} (each is a process of its own on"
            " this machine; add nodes on other hosts with `cluster add`)")
    return value


# A size in bytes (a node's --memory): 0 made a node on disk (`if memory`).
size = above_zero()
# Bytes a second (a scrub's --rate): 0 read as no limit (`if rate`), a scrub of the whole pool at
# full speed; no limit is the option left out.
rate = above_zero(" (without the option: no limit)")


def listen_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"not HOST:PORT: {text!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)
