"""How figures read on screen: counts with separators, sizes in binary units, and a dash for a
figure that is not known (None: an Admin reports it while its RAM metadata is rebuilt, or where it
does not apply)."""

from __future__ import annotations

from engine.api import human_bytes

UNKNOWN = "—"


def count(n: int | None) -> str:
    return UNKNOWN if n is None else f"{n:,}"


def size(n: float | None) -> str:
    return UNKNOWN if n is None else human_bytes(n)


def ratio(r: float | None) -> str:
    return UNKNOWN if r is None else f"{r:.2f}x"
