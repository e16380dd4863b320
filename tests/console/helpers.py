"""Pilot helpers shared by the console tests."""

from __future__ import annotations


async def settle(pilot, rounds: int = 40) -> None:
    """Waits until every engine call and the messages they post have been handled."""
    app = pilot.app
    for _ in range(rounds):
        await app.workers.wait_for_complete()
        await pilot.pause()
        if not any(w.is_running for w in app.workers) and not app._polling:
            await pilot.pause()
            if not any(w.is_running for w in app.workers):
                break
    app.clear_notifications()


async def press(pilot, *keys: str) -> None:
    """Presses the keys, then lets the engine calls they started finish."""
    await pilot.press(*keys)
    await settle(pilot)
