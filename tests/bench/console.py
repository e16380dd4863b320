"""Console responsiveness, measured in a real terminal (tmux) on a real pool.

    python -m tests.bench.console [--data bench-data] [--golden-mib 2048] [--clones 200]

Figures, each beside the same figure for the peer (a bare two-screen Textual app, the floor any
Textual console stands on), and the ratio:
  first frame   launch -> the Overview is drawn, and -> the pool's figures are shown
  screen switch a number key -> the other screen drawn, idle and while an import runs
  block page    Admin.blocks(offset, limit=100) on the pool, in process (the Blocks screen's cost)
  poll          Admin.snapshot() on the pool, in process (what each console poll costs)
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engine.api import LocalAdmin, create_pool

BIN = Path(sys.executable).parent
PEER = '''
from textual.app import App
from textual.screen import Screen
from textual.widgets import Footer, Header, Label
class One(Screen):
    def compose(self):
        yield Header(); yield Label(self.name); yield Footer()
class Peer(App):
    MODES = {"one": lambda: One(name="Screen one"), "two": lambda: One(name="Screen two")}
    DEFAULT_MODE = "one"
    BINDINGS = [("1", "switch_mode('one')", "One"), ("2", "switch_mode('two')", "Two"),
                ("q", "quit", "Quit")]
Peer().run()
'''


class Terminal:
    def __init__(self, socket: str, command: str, cwd: str):
        self.socket = socket
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        self.started = time.monotonic()
        subprocess.run(["tmux", "-S", socket, "new-session", "-d", "-x", "120", "-y", "34",
                        "-c", cwd, command], check=True, env=env)

    def screen(self) -> str:
        return subprocess.run(["tmux", "-S", self.socket, "capture-pane", "-p"],
                              capture_output=True, text=True).stdout

    def wait(self, text: str, since: float | None = None, timeout: float = 120) -> float:
        since = self.started if since is None else since
        while text not in self.screen():
            if time.monotonic() - since > timeout:
                raise SystemExit(f"{text!r} never appeared:\n{self.screen()}")
            time.sleep(0.002)
        return time.monotonic() - since

    def keys(self, *keys: str) -> float:
        subprocess.run(["tmux", "-S", self.socket, "send-keys", *keys], check=True)
        return time.monotonic()

    def switches(self, marks: tuple[str, str], n: int = 10) -> list[float]:
        out = []
        for i in range(n):
            key, text = ("1", marks[0]) if i % 2 == 0 else ("2", marks[1])
            out.append(self.wait(text, self.keys(key)))
        return out

    def close(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True)


def build_pool(where: Path, golden_mib: int, clones: int) -> Path:
    pool = where / "pool"
    if (pool / "catalog.db").exists():
        return pool
    create_pool(pool)
    image = where / "golden.raw"
    with open(image, "wb") as f:
        for _ in range(golden_mib):
            f.write(os.urandom(1 << 20))
    with LocalAdmin.open(pool) as admin:
        admin.import_image("golden", str(image))
        admin.clone("golden", "desk", clones)
    image.unlink()
    return pool


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("bench-data"), metavar="DIR")
    p.add_argument("--golden-mib", type=int, default=2048)
    p.add_argument("--clones", type=int, default=200)
    p.add_argument("--import-mib", type=int, default=1024)
    args = p.parse_args()
    if shutil.which("tmux") is None:
        print("needs tmux", file=sys.stderr)
        return 1
    where = (args.data / "console").resolve()
    where.mkdir(parents=True, exist_ok=True)
    pool = build_pool(where, args.golden_mib, args.clones)
    with LocalAdmin.open(pool, readonly=True) as admin:
        stats = admin.stats()
        total = stats.unique_blocks
        pages = []
        for offset in (0, total // 3, total // 2, max(total - 100, 0)):
            t = time.perf_counter()
            admin.blocks(offset=offset, limit=100)
            pages.append(time.perf_counter() - t)
        polls = []
        for _ in range(5):
            t = time.perf_counter()
            admin.snapshot(200)
            polls.append(time.perf_counter() - t)
    extra = where / "import.raw"
    with open(extra, "wb") as f:
        for _ in range(args.import_mib):
            f.write(os.urandom(1 << 20))
    with tempfile.TemporaryDirectory() as tmp:
        peer = Path(tmp) / "peer.py"
        peer.write_text(PEER)
        t = Terminal(f"{tmp}/peer.sock", f"{BIN}/python {peer}", tmp)
        peer_frame = t.wait("Screen one")
        peer_switch = t.switches(("Screen one", "Screen two"))
        t.close()

        t = Terminal(f"{tmp}/console.sock", f"{BIN}/blockfold console -p {pool}", str(where))
        try:
            frame = t.wait("Blockfold · Overview")
            figures = t.wait(f"VMs       {len(stats.vms)}")
            t.keys("2")
            t.wait("desk-1")
            idle = t.switches(("Blockfold · Overview", "Blockfold · VMs"))
            t.keys("2")
            t.wait("Blockfold · VMs")
            t.keys("i")
            t.wait("Disk image file")
            name = f"import-{os.getpid()}"      # the pool is kept between runs
            for keys in ("import.raw", "Enter", name, "Enter"):
                t.keys(keys)
                time.sleep(0.2)
            t.wait(f"importing {name}")
            busy = t.switches(("Blockfold · Overview", "Blockfold · VMs"))
            t.keys("2")
            still_importing = f"importing {name}" in t.screen()
            t.wait(f"{name} ", timeout=600)
            t.keys("q")
        finally:
            t.close()
    result = {
        "bench": "console",
        "pool_logical_bytes": stats.logical_bytes, "pool_blocks": total,
        "vms": len(stats.vms),
        "first_frame_s": round(frame, 3), "first_figures_s": round(figures, 3),
        "peer_first_frame_s": round(peer_frame, 3),
        "first_frame_vs_peer": round(frame / peer_frame, 2),
        "switch_idle_median_ms": round(statistics.median(idle) * 1000, 1),
        "switch_idle_max_ms": round(max(idle) * 1000, 1),
        "switch_importing_median_ms": round(statistics.median(busy) * 1000, 1),
        "switch_importing_max_ms": round(max(busy) * 1000, 1),
        "import_still_running_after_switches": still_importing,
        "peer_switch_median_ms": round(statistics.median(peer_switch) * 1000, 1),
        "switch_idle_vs_peer": round(statistics.median(idle) / statistics.median(peer_switch), 2),
        "block_page_median_ms": round(statistics.median(pages) * 1000, 1),
        "block_page_max_ms": round(max(pages) * 1000, 1),
        "poll_median_ms": round(statistics.median(polls) * 1000, 1),
        "load_average": os.getloadavg()[0],
    }
    extra.unlink()
    rows = [
        ("first frame (s)", result["first_frame_s"], result["peer_first_frame_s"],
         result["first_frame_vs_peer"]),
        ("first figures (s)", result["first_figures_s"], "", ""),
        ("screen switch idle, median ms", result["switch_idle_median_ms"],
         result["peer_switch_median_ms"], result["switch_idle_vs_peer"]),
        ("screen switch during import, median ms", result["switch_importing_median_ms"],
         result["peer_switch_median_ms"],
         round(result["switch_importing_median_ms"] / result["peer_switch_median_ms"], 2)),
        ("block page (100 rows), median ms", result["block_page_median_ms"], "", ""),
        ("poll (Admin.snapshot), median ms", result["poll_median_ms"], "", ""),
    ]
    print(f"pool: {result['vms']} VMs, {total:,} blocks, "
          f"{result['pool_logical_bytes'] / (1 << 30):.1f} GiB logical; "
          f"load average {result['load_average']:.1f}")
    print(f"{'figure':42} {'console':>10} {'peer':>10} {'ratio':>7}")
    for name, mine, peer, ratio in rows:
        print(f"{name:42} {mine!s:>10} {peer!s:>10} {ratio!s:>7}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
