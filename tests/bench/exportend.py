"""The end of an export: how long data ops wait when `vm export` lets its frozen layer go.

A pool holds `desk`, a VM of SIZE GiB whose every block-table page is full (each 2 MiB a few
distinct 4 KiB blocks, so the slots stay few while the tables are those of a fully written VM).
`Pool.frozen` freezes it as `vm export` does; one page in each is read through the frozen view
(an export's reads fill the core's resolved pages); a writer thread writes 4 KiB blocks to
`desk` meanwhile, and once more while the frozen state is let go. Reported: the seconds the
let-go takes (`Pool.frozen`'s exit) and the writer's longest write then, and the chain depth
after (1: nothing left behind). The peer is the same run on main, where the frozen layer
merges into the VM's top at a cost in its pages.

    python -m tests.bench.exportend [--data bench-data] [--size-gib 16] [--written-mib 4]
"""

from __future__ import annotations

import threading
import time

import numpy as np

from engine.pool import Pool

from .common import BLOCK, GiB, MiB, arguments, parser, report, timer

CHUNK = 2 * MiB                 # one block-table page of 4 KiB blocks


def fill(pool: Pool, name: str, size: int) -> None:
    """Every page of `name` full: each 2 MiB chunk a rotation of 8 distinct blocks."""
    blocks = [bytes([i + 1]) * BLOCK for i in range(8)]
    for n, off in enumerate(range(0, size, CHUNK)):
        pool.write(name, off, b"".join(blocks[(n + i) % 8] for i in range(CHUNK // BLOCK)))
    pool.flush()


class Writer:
    """Writes a 4 KiB block of `desk` at a time until stopped: (start, seconds) of each."""

    def __init__(self, pool: Pool, span: int):
        self.pool, self.span = pool, span
        self.latencies: list[tuple[float, float]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        rng = np.random.default_rng(3)
        while not self.stop.is_set():
            at = int(rng.integers(self.span // BLOCK)) * BLOCK
            start = time.perf_counter()
            self.pool.write("desk", at, rng.bytes(BLOCK))
            self.latencies.append((start, time.perf_counter() - start))
            time.sleep(0.001)

    def longest(self, since: float, until: float) -> float:
        """The longest write that was under way in [since, until]."""
        return max((s for t, s in self.latencies if t <= until and t + s >= since), default=0)

    def end(self) -> None:
        self.stop.set()
        self.thread.join(timeout=60)


def main(argv=None) -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--size-gib", type=int, default=16, help="the VM's size, all mapped")
    p.add_argument("--written-mib", type=int, default=4,
                   help="span the writer writes in, during the export (default 4)")
    args, where = arguments(p, "exportend", argv)
    size = args.size_gib * GiB
    Pool.create(where / "pool")
    with Pool.open(where / "pool") as pool:
        pool.create_vm("desk", size)
        with timer() as filled:
            fill(pool, "desk", size)
        writer = Writer(pool, args.written_mib * MiB)
        try:
            frozen = pool.frozen("desk")
            view, _ = frozen.__enter__()
            for off in range(0, size, CHUNK):
                pool.read(view, off, BLOCK)
            time.sleep(0.2)
            start = time.perf_counter()
            with timer() as ending:
                frozen.__exit__(None, None, None)
            time.sleep(0.2)
            longest = writer.longest(start, start + ending())
        finally:
            writer.end()
        depth = {vm["name"]: vm["depth"] for vm in pool.vm_list()}["desk"]
    pages = size // CHUNK
    report("exportend", f"End of an export of a {args.size_gib} GiB VM ({pages:,} pages) beside"
           " a writer",
           [("figure", "value"), ("fill (s)", f"{filled():.1f}"),
            ("let-go (s)", f"{ending():.3f}"), ("longest write then (s)", f"{longest:.3f}"),
            ("chain depth after", depth)],
           {"size_gib": args.size_gib, "pages": pages, "let_go_s": round(ending(), 4),
            "longest_write_s": round(longest, 4), "depth_after": depth})


if __name__ == "__main__":
    main()
