"""The Blocks screen's page at 10 M blocks (issue 16): `Admin.blocks(offset, limit=100)`.

Target: a 100-row page in at most 50 ms over 10 M live blocks. The page is what the console's
Blocks screen asks for: each row with its fingerprint, how many VMs read it (from the layer
graph), its refcount and up to 1000 VM names.

The pool: a golden image whose frozen layer holds BLOCKS - CLONES × WRITTEN blocks, its own empty
top and CLONES linked clones, each of which has written WRITTEN blocks of its own at random LBNs
(so shadows exist and the golden's blocks are read by all but the clones that wrote over them).
Building 10 M blocks of data through the engine takes long and 40 GB, so the pool's files are
laid out directly as the engine writes them: blocks.dat sparse (a fast rebuild reads no data),
hashes.dat with a random fingerprint per slot, and the catalog's rows (VMs, layers, block-table
pages). Opened with LocalAdmin (a fast rebuild, as every open), then timed, in process:

  first page       right after the open: builds the reverse map and the sharing counts, once
                   per change of the tables or the VMs
  page             REPEATS pages at random offsets, median and worst: the steady cost
  filtered page    min_refs=CLONES+1 (blocks every VM reads) and vm=desk-1, once built
  stats            Admin.stats(): the histograms (refcounts and VMs reading) over every block
  page after write one block written to desk-1, then a page: the first page after a change

    python -m tests.bench.blockpage [--data bench-data] [--blocks 10000000] [--clones 50]
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import statistics
import time

import numpy as np

from engine import _native
from engine.localadmin import LocalAdmin
from engine.pool import Pool

from .common import BLOCK, parser, scratch, timer

TARGET_MS = 50.0
PAGE = _native.PAGE_ENTRIES
MAGIC = b"BLOCKFOLD-SLOTS\n"       # slot 0 of blocks.dat (tests/bench/memory.py builds alike)
WRITTEN = 1000                     # blocks each clone wrote
REPEATS = 20


def build(where, blocks: int, clones: int, seed: int) -> int:
    """The pool in `where`; returns how many blocks the golden's frozen layer holds."""
    Pool.create(where)
    golden = blocks - clones * WRITTEN
    rng = np.random.default_rng(seed)
    with open(where / "blocks.dat", "r+b") as f:
        f.write(MAGIC)
        f.truncate((blocks + 1) * BLOCK)
    hashes = np.zeros((blocks + 1, 2), np.uint64)
    hashes[1:] = rng.integers(1, 2**64 - 1, (blocks, 2), dtype=np.uint64)
    hashes.tofile(where / "hashes.dat")
    del hashes
    now = time.time()
    db = sqlite3.connect(where / "catalog.db")
    with db:
        # layer 1: the golden's frozen base; 2: its top; 3..: the clones' tops
        db.executemany("INSERT INTO layers (id, parent) VALUES (?, ?)",
                       [(1, None)] + [(layer, 1) for layer in range(2, clones + 3)])
        size = golden * BLOCK
        db.executemany("INSERT INTO vms (name, size, top, created, origin) VALUES (?,?,?,?,?)",
                       [("golden", size, 2, now, None)]
                       + [(f"desk-{k}", size, k + 2, now, "golden")
                          for k in range(1, clones + 1)])
        db.execute("UPDATE meta SET value=? WHERE key='next_layer'", (str(clones + 3),))
        slots = np.arange(1, golden + 1, dtype=np.uint64)
        db.executemany("INSERT INTO bmap (layer, page, entries) VALUES (1, ?, ?)",
                       ((pno, np.pad(slots[first:first + PAGE], (0, max(
                           0, PAGE - len(slots[first:first + PAGE])))).tobytes())
                        for pno, first in enumerate(range(0, golden, PAGE))))
        next_slot = golden + 1
        for k in range(1, clones + 1):
            lbns = np.sort(rng.choice(golden, WRITTEN, replace=False))
            pages: dict[int, np.ndarray] = {}
            for lbn in lbns.tolist():
                page = pages.setdefault(lbn // PAGE, np.zeros(PAGE, np.uint64))
                page[lbn % PAGE] = next_slot
                next_slot += 1
            db.executemany("INSERT INTO bmap (layer, page, entries) VALUES (?, ?, ?)",
                           [(k + 2, pno, e.tobytes()) for pno, e in pages.items()])
    db.close()
    return golden


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--blocks", type=int, default=10_000_000, help="live blocks (default 10 M)")
    p.add_argument("--clones", type=int, default=50, help="linked clones of the golden")
    p.add_argument("--seed", type=int, default=16)
    args = p.parse_args()
    where = scratch(args.data, "blockpage")
    with timer() as built:
        golden = build(where, args.blocks, args.clones, args.seed)
    build_s = built()
    with timer() as opened:
        admin = LocalAdmin.open(where)
    open_s = opened()
    rng = random.Random(args.seed)
    try:
        first = timed(lambda: admin.blocks(offset=0, limit=100))
        total = admin.blocks(limit=1).total
        offsets = [rng.randrange(total - 100) for _ in range(REPEATS)]
        pages = [timed(lambda o=o: admin.blocks(offset=o, limit=100)) for o in offsets]
        everyone = admin.blocks(min_refs=args.clones + 1, limit=100)
        by_all = [timed(lambda: admin.blocks(min_refs=args.clones + 1, limit=100))
                  for _ in range(3)]
        by_vm = [timed(lambda: admin.blocks(vm="desk-1", limit=100)) for _ in range(3)]
        stats = [timed(admin.stats) for _ in range(3)]
        admin.write("desk-1", 0, os.urandom(BLOCK))
        after_write = timed(lambda: admin.blocks(offset=0, limit=100))
        row = admin.blocks(limit=1).rows[0]
    finally:
        admin.close()
    median = statistics.median(pages) * 1000
    result = {
        "bench": "blockpage", "blocks": total, "golden_blocks": golden, "vms": args.clones + 1,
        "build_s": round(build_s, 1), "open_s": round(open_s, 2),
        "first_page_ms": round(first * 1000, 1),
        "page_median_ms": round(median, 1), "page_max_ms": round(max(pages) * 1000, 1),
        "read_by_all_blocks": everyone.total,
        "filtered_page_median_ms": round(statistics.median(by_all) * 1000, 1),
        "vm_page_median_ms": round(statistics.median(by_vm) * 1000, 1),
        "stats_median_ms": round(statistics.median(stats) * 1000, 1),
        "page_after_write_ms": round(after_write * 1000, 1),
        "first_row_readers": row.readers, "first_row_refcount": row.refcount,
        "target_ms": TARGET_MS, "met": median <= TARGET_MS,
        "load_average": os.getloadavg()[0],
    }
    print(f"pool: {total:,} blocks, {args.clones + 1} VMs (golden: {golden:,} blocks; each clone"
          f" wrote {WRITTEN:,}); built in {build_s:.0f} s, opened in {open_s:.1f} s;"
          f" load average {result['load_average']:.1f}")
    for label, key in (("first page after the open", "first_page_ms"),
                       ("page (100 rows), median", "page_median_ms"),
                       ("page (100 rows), worst", "page_max_ms"),
                       (f"page read by all {args.clones + 1} VMs, median",
                        "filtered_page_median_ms"),
                       ("page of desk-1's blocks, median", "vm_page_median_ms"),
                       ("stats (both histograms), median", "stats_median_ms"),
                       ("first page after a write", "page_after_write_ms")):
        print(f"{label:44} {result[key]:>10.1f} ms")
    print(f"target: page median <= {TARGET_MS:.0f} ms: {'met' if result['met'] else 'missed'}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
