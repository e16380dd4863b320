"""Pilot helpers shared by the console tests."""

from __future__ import annotations

from textual.widgets import Label

from console.pilot import settle
from console.screens.confirm import ConfirmDialog

__all__ = ["asked", "press", "settle"]


async def press(pilot, *keys: str) -> None:
    """Presses the keys, then lets the engine calls they started finish."""
    await pilot.press(*keys)
    await settle(pilot)


def asked(app) -> str:
    """The question of the confirm dialog on top, as shown."""
    assert isinstance(app.screen, ConfirmDialog), app.screen
    return str(app.screen.query_one(Label).render())
