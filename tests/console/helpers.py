"""Pilot helpers shared by the console tests."""

from __future__ import annotations

from console.pilot import settle

__all__ = ["press", "settle"]


async def press(pilot, *keys: str) -> None:
    """Presses the keys, then lets the engine calls they started finish."""
    await pilot.press(*keys)
    await settle(pilot)
