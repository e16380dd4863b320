"""Exports one SVG per console screen, from the real app on the sample pool: `make screenshots`.

The pool's contents and the clock are fixed, so the files only change when the console does.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from engine.api import LocalAdmin

from .app import BlockfoldApp
from .clock import FixedClock
from .pilot import settle
from .registry import SCREENS
from .sample import sample_pool

SIZE = (120, 34)


async def shoot(admin, out: Path) -> list[Path]:
    app = BlockfoldApp(admin, clock=FixedClock(), poll_interval=3600)
    written = []
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        # Something to look at: ten clones of golden, and a finished rebuild.
        await pilot.press("2", "down", "down", "down", "c", "enter", "backspace", "1", "0",
                          "enter")
        await settle(pilot)
        await pilot.press("4", "f")
        await settle(pilot)
        for mode, key, _ in SCREENS:
            await pilot.press(key)
            await settle(pilot)
            path = out / f"{key}-{mode}.svg"
            app.save_screenshot(path.name, str(out))
            written.append(path)
    return written


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else "screenshots")
    out.mkdir(parents=True, exist_ok=True)
    with (tempfile.TemporaryDirectory() as tmp,
          LocalAdmin.open(sample_pool(tmp), actor="operator") as admin):
        for path in asyncio.run(shoot(admin, out)):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
