"""Exports one SVG per console screen, from the real app on `blockfold demo`'s cluster:
`make screenshots` (and a PNG of each, for a look, where rsvg-convert is installed).

The cluster is the demo's (3 nodes, R=2, a golden image and 12 linked clones with writes of their
own), with nodes that keep their blocks in 1 GiB of RAM, so their capacity is the same on every
machine. The console runs on a FixedClock (console/clock.py), so the files only change when the
console or the data does. The Nodes shot has node2 failed through the console, as an operator
would: its blocks wait out the repair delay, under-replicated.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from engine import api

from . import demo
from .app import BlockfoldApp
from .clock import FixedClock
from .pilot import settle
from .registry import SCREENS

SIZE = (120, 34)
MEMORY = 1 << 30             # per node
REPAIR_DELAY = 3600.0        # the Nodes shot shows the blocks a lost node leaves short
HEARTBEATS = 1.5             # seconds: a few heartbeats (members.py), so nodes' figures are fresh


async def shoot(admin: api.Admin, out: Path, size: tuple[int, int] = SIZE) -> list[Path]:
    app = BlockfoldApp(admin, clock=FixedClock(), poll_interval=3600)
    written = []

    async def save(key: str, mode: str) -> None:
        await pilot.press(key)
        await settle(pilot)
        path = out / f"{key}-{mode}.svg"
        app.save_screenshot(path.name, str(out))
        written.append(path)

    async with app.run_test(size=size) as pilot:
        await settle(pilot)
        await workday(admin, pilot)
        # Something to look at: a finished rebuild, and the desktops on the VMs screen.
        await pilot.press("4", "f")
        await settle(pilot)
        await pilot.press("2", "down", "down")
        for mode, key, _ in SCREENS:
            if mode != "nodes":
                await save(key, mode)
        await pilot.press("5", "down", "x", "y")      # fail node2, confirmed
        await settle(pilot)
        await pilot.press("r")
        await settle(pilot)
        await save("5", "nodes")
    return written


async def workday(admin: api.Admin, pilot, polls: int = 40, seed: int = 5) -> None:
    """The desktops write a little, a poll after each burst (5 s apart on the FixedClock): the
    trends on the Overview get their history from real writes and real polls."""
    rng = random.Random(seed)
    for _ in range(polls):
        blocks = rng.choice((0, 0, 0, 4, 16, 32, 64, 128, 256))
        if blocks:
            name = f"desk-{rng.randrange(1, demo.DESKTOPS + 1)}"
            admin.write(name, rng.randrange(6000, 7000) * demo.BLOCK,
                        rng.randbytes(blocks * demo.BLOCK))
            admin.flush()
        await pilot.press("r")
        await settle(pilot)
    await asyncio.sleep(HEARTBEATS)        # the nodes' own block counts catch up
    await pilot.press("r")
    await settle(pilot)


def png(svg: Path) -> Path | None:
    """The SVG drawn as a PNG by rsvg-convert (Debian's librsvg2-bin), if it is installed.
    Textual's SVGs do not say that spaces count (xml:space), and librsvg would drop the leading
    ones of right-aligned cells: the copy it draws says so."""
    if shutil.which("rsvg-convert") is None:
        return None
    out = svg.with_suffix(".png")
    text = svg.read_text().replace("<svg ", '<svg xml:space="preserve" ', 1)
    subprocess.run(["rsvg-convert", "-o", str(out)], input=text.encode(), check=True)
    return out


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else "screenshots").resolve()
    out.mkdir(parents=True, exist_ok=True)
    pngs = Path(argv[1]) if len(argv) > 1 else None
    with tempfile.TemporaryDirectory(prefix="blockfold-shots-") as tmp:
        try:
            demo.up(tmp, memory=MEMORY, repair_delay=REPAIR_DELAY)
            with api.open_cluster(tmp, actor="demo") as admin:
                demo.seed(admin)
            with api.open_cluster(tmp, actor="console") as admin:
                for path in asyncio.run(shoot(admin, out)):
                    print(path)
                    if pngs is not None:
                        pngs.mkdir(parents=True, exist_ok=True)
                        drawn = png(path)
                        if drawn:
                            print(shutil.move(drawn, pngs / drawn.name))
        finally:
            api.cluster_down(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
