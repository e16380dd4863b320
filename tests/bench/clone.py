"""Clone: `blockfold vm clone golden d --count 1000` of a 20 GiB VM against 1000 qemu-img overlays.

The 20 GiB VM is sparse: base.raw is a 20 GiB file holding DATA MiB of seeded random data in 1 MiB
pieces spread evenly over the disk (the rest is holes), imported as VM `golden`. Both contenders
start from the same base.raw:

  blockfold   the CLI command itself, timed from start to exit (Python start-up, pool open and
              rebuild, the clones in one transaction, commit)
  qemu-img    1000 x `qemu-img create -q -f qcow2 -F raw -b base.raw dN.qcow2`

Also reported: Pool.clone of 1000 more VMs in-process (the engine's own cost, no start-up), and
metadata bytes per clone = growth of catalog.db + catalog.db-wal over the CLI command / 1000.
Targets: >= 100x faster than qemu-img (wall time; issue 11), <= 2 KiB of metadata per clone
(issue 2). CPU time (of
the child processes) is reported beside wall time: on a shared machine wall time also counts
waiting for a core.

    python -m tests.bench.clone [--data bench-data] [--count 1000] [--data-mib 256]
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np

from engine.pool import Pool

from .common import GiB, KiB, MiB, arguments, blockfold_cli, measure, parser, report, \
    verdict

TARGET_RATIO = 100.0
TARGET_BYTES_PER_CLONE = 2 * KiB
VM_SIZE = 20 * GiB


def make_base(path: Path, data_mib: int, seed: int) -> None:
    """A sparse 20 GiB raw disk with data_mib MiB of random data spread evenly over it."""
    rng = np.random.default_rng(seed)
    stride = VM_SIZE // data_mib
    with open(path, "wb") as f:
        f.truncate(VM_SIZE)
        for k in range(data_mib):
            f.seek(k * stride)
            f.write(rng.bytes(MiB))


def catalog_bytes(pool_dir: Path) -> int:
    return sum(p.stat().st_size for p in pool_dir.glob("catalog.db*") if p.name != "catalog.db-shm")


def qemu_overlays(base: Path, where: Path, count: int) -> None:
    for k in range(1, count + 1):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(base),
                        str(where / f"d{k}.qcow2")], check=True)


def main(argv=None) -> None:
    p = parser(__doc__, seed=2)
    p.add_argument("--count", type=int, default=1000, help="clones (default 1000)")
    p.add_argument("--data-mib", type=int, default=256,
                   help="MiB of data written in the 20 GiB VM (default 256)")
    args, where = arguments(p, "clone", argv)
    base = where / "base.raw"
    make_base(base, args.data_mib, args.seed)
    pool_dir = where / "pool"
    Pool.create(pool_dir)
    with Pool.open(pool_dir) as pool:
        pool.import_image("golden", str(base))

    before = catalog_bytes(pool_dir)
    command = [blockfold_cli(), "-p", str(pool_dir), "vm", "clone", "golden", "d",
               "--count", str(args.count)]
    cli_s, cli_cpu, _ = measure(subprocess.run, command, check=True, stdout=subprocess.DEVNULL)
    per_clone = (catalog_bytes(pool_dir) - before) / args.count

    with Pool.open(pool_dir) as pool:
        api_s, _, _ = measure(pool.clone, "golden", "e", args.count)
        depth = {vm["name"]: vm["depth"] for vm in pool.vm_list()}

    overlays = where / "qemu"
    overlays.mkdir()
    qemu_s, qemu_cpu, _ = measure(qemu_overlays, base, overlays, args.count)
    qcow2_bytes = sum(f.stat().st_size for f in overlays.iterdir()) / args.count
    shutil.rmtree(where)

    ratio, cpu_ratio = qemu_s / cli_s, qemu_cpu / cli_cpu
    rows = [("contender", "wall s", "CPU s", "wall per clone", "metadata per clone")]
    rows.append((f"blockfold vm clone --count {args.count} (CLI)", f"{cli_s:.3f}",
                 f"{cli_cpu:.2f}", f"{cli_s / args.count * 1e3:.3f} ms", f"{per_clone:.0f} B"))
    rows.append((f"Pool.clone(count={args.count}) in-process", f"{api_s:.3f}", "",
                 f"{api_s / args.count * 1e3:.3f} ms", ""))
    rows.append((f"{args.count} x qemu-img create qcow2 -b base.raw", f"{qemu_s:.2f}",
                 f"{qemu_cpu:.2f}", f"{qemu_s / args.count * 1e3:.2f} ms",
                 f"{qcow2_bytes:.0f} B (qcow2 file)"))
    rows.append(("",) * 5)
    rows.append(("speed-up (CLI vs qemu-img)", f"{ratio:.1f}x", f"{cpu_ratio:.1f}x",
                 f"target >= {TARGET_RATIO:g}x (wall)", verdict(ratio, TARGET_RATIO)))
    rows.append(("metadata per clone", f"{per_clone:.0f} B", "",
                 f"target <= {TARGET_BYTES_PER_CLONE} B",
                 verdict(per_clone, TARGET_BYTES_PER_CLONE, higher_is_better=False)))
    rows.append(("clone chain depth", str(depth[f"d-{args.count}"]), "", "", ""))
    report("clone", f"{args.count} linked clones of a 20 GiB VM ({args.data_mib} MiB written)",
           rows,
           {"count": args.count, "vm_bytes": VM_SIZE, "data_mib": args.data_mib,
            "cli_s": round(cli_s, 4), "api_s": round(api_s, 4), "qemu_s": round(qemu_s, 3),
            "cli_cpu_s": round(cli_cpu, 3), "qemu_cpu_s": round(qemu_cpu, 3),
            "ratio": round(ratio, 1), "cpu_ratio": round(cpu_ratio, 1),
            "ratio_target": TARGET_RATIO,
            "ratio_verdict": verdict(ratio, TARGET_RATIO),
            "metadata_bytes_per_clone": round(per_clone, 1),
            "metadata_target": TARGET_BYTES_PER_CLONE,
            "metadata_verdict": verdict(per_clone, TARGET_BYTES_PER_CLONE, False),
            "qcow2_bytes_per_clone": round(qcow2_bytes), "command": " ".join(command[1:])})


if __name__ == "__main__":
    main()
