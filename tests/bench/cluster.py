"""Cluster benchmarks: replicated import against a single-node import, heal after a node loss,
and the read stall while a node is killed.

    python -m tests.bench.cluster [--mib 256] [--heal-mib 1024] [--dir /var/tmp/bench]

Prints a table and one JSON line. The peers, in the same run: an embedded (single-node) pool
importing the same images, and a one-node cluster (R=1) that pays SSH but no replication.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from engine import api
from engine.cluster.config import ClusterConfig

from .common import write_unique


def make_images(directory: Path, mib: int) -> list[Path]:
    """A VDI-like set: a golden image and three desktops that differ from it in 10 % of blocks."""
    rng = np.random.default_rng(7)
    golden = rng.integers(0, 256, size=(mib * 256, 4096), dtype=np.uint8)
    golden[::9] = 0
    paths = []
    for k in range(4):
        img = golden.copy()
        if k:
            changed = rng.choice(len(img), size=len(img) // 10, replace=False)
            img[changed] = rng.integers(0, 256, size=(len(changed), 4096), dtype=np.uint8)
        path = directory / f"desk{k}.raw"
        path.write_bytes(img.tobytes())
        paths.append(path)
    return paths


def timed_import(admin, images) -> float:
    started = time.monotonic()
    for path in images:
        admin.import_image(path.stem, str(path))
    return time.monotonic() - started


def bench_import(work: Path, images) -> dict:
    logical = sum(p.stat().st_size for p in images)
    api.create_pool(work / "pool")
    with api.LocalAdmin.open(work / "pool") as admin:
        local = timed_import(admin, images)
    out = {"logical_bytes": logical, "local_s": local}
    for label, nodes, replicas in (("one_node", 1, 1), ("r2_of_3", 3, 2)):
        path = work / label
        api.cluster_up(path, nodes=nodes, replicas=replicas)
        try:
            with api.open_cluster(path) as admin:
                out[f"{label}_s"] = timed_import(admin, images)
        finally:
            api.cluster_down(path)
    return out


def bench_heal(work: Path, mib: int) -> dict:
    path = work / "heal"
    api.cluster_up(path, nodes=3, replicas=2)
    try:
        image = write_unique(work / "unique.raw", mib)
        with api.open_cluster(path) as admin:
            admin.import_image("unique", str(image))
            image.unlink()
            # From the loss on: the coordinator's own healer starts at once (repair delay 0),
            # and heal --wait returns when nothing is under-replicated.
            started = time.monotonic()
            admin.fail_node("node1")
            admin.heal(wait=True)
            seconds = time.monotonic() - started
        return {"heal_bytes": mib << 20, "heal_s": seconds}
    finally:
        api.cluster_down(path)


def bench_failover(work: Path, images) -> dict:
    path = work / "failover"
    api.cluster_up(path, nodes=3, replicas=2)
    try:
        with api.open_cluster(path) as admin:
            admin.import_image("golden", str(images[0]))
            size = admin.vm_size("golden")
            gaps, stop = [], threading.Event()

            def reader():
                off, last = 0, time.monotonic()
                while not stop.is_set():
                    admin.read("golden", off, 1 << 20)
                    now = time.monotonic()
                    gaps.append(now - last)
                    last, off = now, (off + (1 << 20)) % (size - (1 << 20))

            t = threading.Thread(target=reader)
            t.start()
            time.sleep(1.0)
            os.kill(ClusterConfig.load(path).node("node2").pid, signal.SIGKILL)
            time.sleep(2.0)
            stop.set()
            t.join()
        return {"failover_max_stall_s": max(gaps), "failover_reads": len(gaps)}
    finally:
        api.cluster_down(path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=256, help="size of each of the 4 images")
    parser.add_argument("--heal-mib", type=int, default=1024, help="unique data to heal")
    parser.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    args = parser.parse_args()
    if args.dir:
        Path(args.dir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-cluster-", dir=args.dir))
    try:
        images = make_images(work, args.mib)
        r = bench_import(work, images)
        r.update(bench_heal(work, args.heal_mib))
        r.update(bench_failover(work, images))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    mbs = lambda seconds: r["logical_bytes"] / seconds / 1e6   # noqa: E731
    r.update({"local_mb_s": mbs(r["local_s"]), "one_node_mb_s": mbs(r["one_node_s"]),
              "r2_of_3_mb_s": mbs(r["r2_of_3_s"]),
              "r2_vs_local": r["local_s"] / r["r2_of_3_s"],
              "heal_mb_s": r["heal_bytes"] / r["heal_s"] / 1e6})
    rows = [("import, embedded pool (peer)", f"{r['local_mb_s']:.0f} MB/s logical", ""),
            ("import, 1-node cluster R=1", f"{r['one_node_mb_s']:.0f} MB/s logical", ""),
            ("import, 3 nodes R=2", f"{r['r2_of_3_mb_s']:.0f} MB/s logical",
             f"{100 * r['r2_vs_local']:.0f} % of embedded"),
            (f"heal {args.heal_mib} MiB after a node loss", f"{r['heal_s']:.1f} s",
             f"{r['heal_mb_s']:.0f} MB/s"),
            ("read stall during a node kill", f"{r['failover_max_stall_s'] * 1000:.0f} ms",
             f"{r['failover_reads']} reads of 1 MiB")]
    for row in rows:
        print(f"{row[0]:<36} {row[1]:>22}  {row[2]}")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}))


if __name__ == "__main__":
    main()
