"""Delete (or rename) a golden image with many linked clones, while another VM writes over NBD.

A pool holds `golden` (DATA MiB of seeded random data), CLONES linked clones of it (made
in-process, `Pool.clone`) and `other`, a VM of its own. `blockfold serve --nbd` serves them; one
NBD client writes a 4 KiB block to `other` and flushes, over and over, while
`blockfold -p POOL vm rm golden -y` (--op rm, the default) or `blockfold -p POOL vm rename
golden golden-2` (--op rename) runs through the service. Reported: the command's wall time
(the CLI from start to exit; a delete unpins every clone's base and collects the golden's
layers, a rename gives every clone its new origin; each one edit) and the NBD write+flush
latency before and during it (the edit holds the pool's lock; a write on another VM waits for
it). The pool is opened again afterwards to check every clone lost (rm) or follows (rename) its
golden. Targets: none set; it must grow linearly with CLONES (the delete was quadratic: 128 s
at 40,000, 418 s at 100,000).

    python -m tests.bench.delete [--data bench-data] [--clones 40000] [--data-mib 16]
                                 [--op rm|rename]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import threading
import time
from collections import Counter

import numpy as np

from engine.pool import Pool
from tests.nbdclient import CMD_FLUSH, RawClient
from tests.serviceproc import Served

from .common import BLOCK, MiB, arguments, blockfold_cli, measure, parser, report

OTHER_BLOCKS = 4096             # `other`: 16 MiB, written a block at a time at random places
MAX_WRITES = 1_000_000          # the writer's bound, whatever happens to the delete
RENAMED = "golden-2"
# --op: (the benchmark's name in its JSON line, the command's words after `-p POOL`)
OPS = {"rm": ("delete", ["vm", "rm", "golden", "-y"]),
       "rename": ("rename", ["vm", "rename", "golden", RENAMED])}


def writer(port: int, stop: threading.Event, latencies: list[tuple[float, float]]) -> None:
    """Writes and flushes `other` until `stop`: (when it started, seconds) for each pair."""
    client = RawClient(port, timeout=600)
    client.connect("other")
    rng = np.random.default_rng(5)
    try:
        for _ in range(MAX_WRITES):
            if stop.is_set():
                break
            block = rng.bytes(BLOCK)
            at = int(rng.integers(OTHER_BLOCKS)) * BLOCK
            start = time.perf_counter()
            assert client.write(at, block) == 0
            assert client.simple(CMD_FLUSH) == 0
            latencies.append((start, time.perf_counter() - start))
    finally:
        client.close()


def ms(values: list[float], q: float) -> str:
    if not values:
        return "-"
    return f"{np.quantile(values, q) * 1e3:.1f} ms"


def main(argv=None) -> None:
    p = parser(__doc__, seed=2)
    p.add_argument("--clones", type=int, default=40_000, help="linked clones (default 40000)")
    p.add_argument("--data-mib", type=int, default=16,
                   help="MiB of data in the golden image (default 16)")
    p.add_argument("--op", choices=sorted(OPS), default="rm",
                   help="what is done to the golden image: rm (delete it, the default) or"
                        f" rename (to {RENAMED})")
    args, where = arguments(p, "delete", argv)
    bench, words = OPS[args.op]
    pool_dir = where / "pool"
    image = where / "golden.raw"
    image.write_bytes(np.random.default_rng(args.seed).bytes(args.data_mib * MiB))
    Pool.create(pool_dir)
    with Pool.open(pool_dir) as pool:
        pool.import_image("golden", str(image))
        pool.create_vm("other", OTHER_BLOCKS * BLOCK)
        clone_s, _, _ = measure(pool.clone, "golden", "d", args.clones)
    os.unlink(image)

    served = Served(["-p", str(pool_dir)], "--nbd", "127.0.0.1:0")
    stop, latencies = threading.Event(), []
    try:
        thread = threading.Thread(target=writer, daemon=True,
                                  args=(int(served.nbd.rpartition(":")[2]), stop, latencies))
        thread.start()
        time.sleep(2)                                   # the writer alone, for a baseline
        command = [blockfold_cli(), "-p", str(pool_dir), *words]
        began = time.perf_counter()
        op_s, op_cpu, _ = measure(subprocess.run, command, check=True,
                                  stdout=subprocess.DEVNULL)
        ended = time.perf_counter()
        time.sleep(1)
        stop.set()
        thread.join(timeout=600)
    finally:
        served.stop()
    with Pool.open(pool_dir) as pool:
        origins = Counter(pool.vm(name).origin for name in pool.vm_names())
    expected = ({None: 2, RENAMED: args.clones} if args.op == "rename"
                else {None: args.clones + 1})
    assert origins == expected, f"the VMs' origins after the {bench}: {dict(origins)}"
    before = [s for t, s in latencies if t < began]
    during = [s for t, s in latencies if began <= t < ended]
    # A pair that began before the command and waited for it counts as during it.
    during += [s for t, s in latencies if t < began < t + s]
    subprocess.run(["rm", "-rf", str(where)], check=True)

    rows = [("", "wall", "detail")]
    rows.append((f"Pool.clone(count={args.clones:,}) in-process", f"{clone_s:.2f} s", ""))
    rows.append((f"blockfold {' '.join(words)} ({args.clones:,} clones, via the service)",
                 f"{op_s:.2f} s", f"CLI CPU {op_cpu:.2f} s"))
    rows.append(("NBD write+flush on other, before", ms(before, 0.5),
                 f"median of {len(before)}; max {ms(before, 1.0)}"))
    rows.append((f"NBD write+flush on other, during the {bench}", ms(during, 1.0),
                 f"max of {len(during)}; median {ms(during, 0.5)}"))
    report(bench, f"{bench} a golden image with {args.clones:,} linked clones"
                  f" ({args.data_mib} MiB of data)", rows,
           {"clones": args.clones, "data_mib": args.data_mib, "clone_s": round(clone_s, 3),
            f"{bench}_s": round(op_s, 3), f"{bench}_cli_cpu_s": round(op_cpu, 3),
            "nbd_before_median_s": round(statistics.median(before), 4) if before else None,
            "nbd_during_max_s": round(max(during), 4) if during else None,
            "nbd_during_count": len(during), "command": " ".join(command[1:])})


if __name__ == "__main__":
    main()
