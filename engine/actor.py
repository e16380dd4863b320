"""Who is acting: the actor of the request being served, named in the event log.

A pool names one actor for the process that opened it (Pool.actor: "cli", "console" …). A service
serves many clients through one pool, so it sets the actor of each request here, around the call,
in the thread that runs it, and the pool logs the request's events under that name. It is a
contextvar: every thread and task sees only its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_ACTOR: ContextVar[str | None] = ContextVar("blockfold_actor", default=None)


def current(default: str) -> str:
    """The actor of the request being served here, else `default` (the opener's)."""
    return _ACTOR.get() or default


def requested() -> str | None:
    """The actor of the client request being served here; None outside one (the opener's own
    calls: a console on the pool it serves)."""
    return _ACTOR.get()


@contextmanager
def acting(name: str) -> Iterator[None]:
    """Names `name` as the actor of everything done inside the block, in this thread."""
    token = _ACTOR.set(name)
    try:
        yield
    finally:
        _ACTOR.reset(token)
