"""Driving the console headless (screenshots, tests): wait until it has nothing left to do."""

from __future__ import annotations


async def settle(pilot, rounds: int = 40) -> None:
    """Waits until every engine call and the messages it posts have been handled, then clears
    the notifications, whose timing would make screenshots differ from run to run."""
    app = pilot.app
    for _ in range(rounds):
        await app.workers.wait_for_complete()
        await pilot.pause()
        if not any(w.is_running for w in app.workers) and not app._polling:
            await pilot.pause()
            if not any(w.is_running for w in app.workers):
                break
    # Widgets such as DataTable lay out new rows when idle: give a loaded machine time for it.
    await pilot.pause(0.1)
    await pilot.wait_for_animation()        # progress bars glide to their value
    await pilot.pause()
    app.clear_notifications()
