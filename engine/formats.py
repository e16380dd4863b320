"""Figures for people: one format for each kind, used by the CLI and by every console screen.

    size(1_572_864)          "1.5 MiB"      IEC units, one decimal below 100 ("512 MiB" above)
    exact_size(4097)         "4,097 B (4.0 KiB)"   a size read exactly ("4.0 KiB" for 4096)
    count(24943)             "24,943"       always with thousands separators
    counted(1, "block")      "1 block"      a count of things: "24,943 blocks", "2 copies"
    rate(3.2e9)              "3.0 GiB/s"    a size per second
    duration(0.113)          "0.11 s"       "3.2 ms", "4.2 s", "42 s", "3 min 20 s", "2 h 5 min"
    latency(0.43)            "0.43 ms"      a round trip, milliseconds
    ratio(4.2)               "4.20x"
    when(ts, now)            "14:03:12"     today; "Nov 24 14:03" this year; else "2025-11-24"
    histogram({"1": 5, …})   "1: 5, 2: 1,024"   blocks by count, in its buckets
    refs_beside(52, 1)       "1"            a refcount shown beside the VMs reading, "" if equal
    any of them (None)       "—"            not known yet, or does not apply

A rate is worth showing only for work that took a while: `RATE_MIN_SECONDS` says how long.
`natural_key` sorts names as people count (desk-2 before desk-10). `parse_size` reads sizes
back ("10G", "512M", "1.5GiB").
"""

from __future__ import annotations

import re
from datetime import datetime, tzinfo
from fractions import Fraction

UNKNOWN = "—"
"""How a figure that is None reads: not known yet (during a rebuild), or does not apply."""

RATE_MIN_SECONDS = 1.0
"""Work that took less than this shows no rate: over a fraction of a second, a rate measures
start-up costs rather than throughput (5,560 blocks in 0.11 s is not 48 blocks/s)."""

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
_SUFFIX = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def size(n: float | None) -> str:
    """Bytes in IEC units: "0 B", "512 B", "1.5 KiB", "32.0 MiB", "512 MiB" (at most 8
    characters)."""
    if n is None:
        return UNKNOWN
    n = float(n)
    for unit in _UNITS:
        if abs(n) < 1024 or unit == _UNITS[-1]:
            if unit == "B":
                return f"{int(n)} B"
            return f"{n:.1f} {unit}" if abs(n) < 99.95 else f"{n:.0f} {unit}"
        n /= 1024
    raise AssertionError


def exact_size(n: int) -> str:
    """Bytes as `size` has them when that figure is exact ("1.5 KiB", "2.0 GiB"), else the count
    of bytes before it: "4,097 B (4.0 KiB)". For a size an exact cut depends on (a resize)."""
    shown = size(n)
    figure, unit = shown.split()
    if Fraction(figure) * 1024 ** _UNITS.index(unit) == n:
        return shown
    return f"{count(n)} B ({shown})"


def count(n: int | None) -> str:
    """A whole number with thousands separators: "24,943"."""
    return UNKNOWN if n is None else f"{n:,}"


def counted(n: int, thing: str, things: str | None = None) -> str:
    """A count of things, singular for one: "1 block", "24,943 blocks"; `things` where the plural
    is not thing + "s" ("copies")."""
    return f"{count(n)} {thing if n == 1 else things or thing + 's'}"


# A job's kind (an Admin method) as a word, and how it names its VM.
JOB_WORDS = {"import_image": ("import", "of"), "export": ("export", "of"),
             "write": ("write", "to"), "clone": ("clone", "of")}


def job(kind: str, vm: str) -> str:
    """What a job does, for people: "import of desk3", "write to desk3", "rebuild" (no VM)."""
    word, joint = JOB_WORDS.get(kind, (kind.replace("_", " "), "of"))
    return f"{word} {joint} {vm}" if vm else word


def no_copy_left(blocks: int, block_size: int) -> str:
    """What failing a node would cost, for its confirmation: "12 blocks (48.0 KiB) would have
    no reachable copy"."""
    return (f"{counted(blocks, 'block')} ({size(blocks * block_size)})"
            " would have no reachable copy")


def writes_refused(left: int, nodes: int, need: int) -> str:
    """What failing a node would do to writes, for its confirmation: "writes will be refused:
    1 of 3 nodes left, writes need 2"."""
    return (f"writes will be refused: {count(left)} of {count(nodes)}"
            f" node{'' if nodes == 1 else 's'} left, writes need {count(need)}")


def shrink_refused(size: int, vms: list[tuple[str, int]], doing: str = "shrinking",
                   smaller: str | None = None) -> str:
    """The refusal of a shrink not forced: VMs (name, size in bytes) would be cut to `size`
    bytes by `doing` ("shrinking", or a rebase's words); `smaller` names what is that small
    (by default the size itself). "1.0 MiB is smaller than VM dk (16.0 MiB): shrinking cuts
    off its last 15.0 MiB; allow it with --force"."""
    smaller = smaller or exact_size(size)
    if len(vms) == 1:
        ((name, old),) = vms
        return (f"{smaller} is smaller than VM {name} ({exact_size(old)}): {doing} cuts off its"
                f" last {exact_size(old - size)}; allow it with --force")
    names = [n for n, _ in sorted(vms, key=lambda v: natural_key(v[0]))]
    shown = ", ".join(names[:4]) + (f" +{count(len(names) - 4)}" if len(names) > 4 else "")
    return (f"{smaller} is smaller than {count(len(vms))} VMs ({shown}): {doing} cuts off what"
            f" each holds past {exact_size(size)}; allow it with --force")


def rate(bytes_per_s: float | None) -> str:
    """Bytes per second: "3.0 GiB/s"."""
    return UNKNOWN if bytes_per_s is None else f"{size(bytes_per_s)}/s"


def rate_over(nbytes: int, seconds: float) -> str | None:
    """The rate of work that moved `nbytes` in `seconds`, or None when it took less than
    RATE_MIN_SECONDS (too short for its rate to mean anything)."""
    return rate(nbytes / seconds) if seconds >= RATE_MIN_SECONDS else None


def duration(seconds: float | None) -> str:
    """Seconds for people: "0.15 ms", "3.2 ms", "0.11 s", "4.2 s", "42 s", "3 min 20 s",
    "2 h 5 min", "3 d 4 h"."""
    if seconds is None:
        return UNKNOWN
    if seconds == 0:
        return "0 s"
    if seconds < 0.01:
        return latency(seconds * 1000)
    if seconds < 10:
        return f"{seconds:.2f} s" if seconds < 1 else f"{seconds:.1f} s"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s" if s % 60 else f"{s // 60} min"
    m = s // 60
    if m < 24 * 60:
        return f"{m // 60} h {m % 60} min" if m % 60 else f"{m // 60} h"
    h = m // 60
    return f"{h // 24} d {h % 24} h" if h % 24 else f"{h // 24} d"


def latency(ms: float | None) -> str:
    """A round trip in milliseconds: "0.43 ms", "12.3 ms", "812 ms"."""
    if ms is None:
        return UNKNOWN
    return f"{ms:.2f} ms" if ms < 10 else f"{ms:.1f} ms" if ms < 100 else f"{ms:.0f} ms"


def ratio(r: float | None) -> str:
    """A dedup ratio: "4.20x", "49,152,000.00x"."""
    return UNKNOWN if r is None else f"{r:,.2f}x"


def when(ts: float | None, now: float, tz: tzinfo | None = None) -> str:
    """A moment (seconds since the epoch) as short as it can be next to `now`: "14:03:12" the
    same day, "Nov 24 14:03" the same year, "2025-11-24" before. tz: None for local time."""
    if ts is None:
        return UNKNOWN
    t, today = datetime.fromtimestamp(ts, tz), datetime.fromtimestamp(now, tz)
    if t.date() == today.date():
        return t.strftime("%H:%M:%S")
    if t.year == today.year:
        return t.strftime("%b %d %H:%M")
    return t.strftime("%Y-%m-%d")


def histogram(buckets: dict[str, int] | None) -> str:
    """Blocks by a count, bucket by bucket: "1: 5,000, 2: 12, 3-4: 7"."""
    if not buckets:
        return UNKNOWN
    return ", ".join(f"{k}: {count(v)}" for k, v in buckets.items())


def refs_beside(readers: int, refcount: int) -> str:
    """A block's refcount beside how many VMs read it: shown only where the two differ (a frozen
    layer's block read by 51 clones and its golden: 52 VMs, refcount 1)."""
    return "" if readers == refcount else count(refcount)


def natural_key(name: str) -> tuple:
    """Sorts names as people count: desk-2 before desk-10 (runs of digits compare as numbers)."""
    return tuple((0, int(part), part) if part.isdigit() else (1, 0, part)
                 for part in re.split(r"(\d+)", name))


def parse_size(text: str, whole: bool = False) -> int:
    """'4096', '64K', '10G', '1.5GiB' -> bytes, a fraction of a byte dropped ('1.3G'), or with
    `whole` refused (a byte position: '1.5' is no byte). Raises ValueError."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgtKMGT]?)(?:i?[bB])?\s*", text)
    if not m:
        raise ValueError(f"bad size {text!r}: use a number with an optional K, M, G or T")
    # Exact (no float): a big figure must reach the range check as it was typed.
    value = Fraction(m.group(1)) * _SUFFIX[m.group(2).lower()]
    if whole and value.denominator != 1:
        raise ValueError(f"not a whole number of bytes: {text!r}")
    return int(value)
