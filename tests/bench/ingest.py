"""Ingest: import the whole image set into one pool, in one process, against two peers.

  blockfold   Pool.create + Pool.open + Pool.import_image of every image + close, in this
              process (the engine API that `blockfold vm import` calls; no CLI start-up per image)
  borg        borg create -C none --chunker-params fixed,4096 of the same image files into a
              repository made with `borg init -e none`
  bare loop   read the same files' data extents and xxh3-128 every 4 KiB block, nothing else
              (best of three runs; it is cheap and this machine's 2 cores are shared)

Targets: blockfold >= 5x borg, and >= 35 % of the bare loop. Every contender starts from a warm
page cache. MB/s is over the same numerator for all three: the bytes in the images' data extents
(what `vm import` and the bare loop read; borg also reads the holes, as zeros).

    python -m tests.bench.ingest [--data bench-data] [image set options]
"""

from __future__ import annotations

import os
import shutil
import subprocess

from engine.pool import Pool

from . import imageset
from .common import MiB, bare_hash, data_extents, mb_per_s, parser, report, scratch, timer, \
    verdict, warm

TARGET_VS_BORG = 5.0
TARGET_VS_BARE = 0.35


def extent_bytes(paths) -> int:
    total = 0
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            total += sum(end - start for start, end in data_extents(fd, os.fstat(fd).st_size))
        finally:
            os.close(fd)
    return total


def run_blockfold(images, where) -> tuple[float, dict]:
    pool_dir = where / "pool"
    with timer() as t:
        Pool.create(pool_dir)
        with Pool.open(pool_dir) as pool:
            for image in images:
                pool.import_image(image.stem, str(image))
    with Pool.open(pool_dir, readonly=True) as pool:
        stats = pool.stats()
    return t(), stats


def run_borg(images, where) -> float:
    env = {**os.environ, "BORG_REPO": str(where / "borg-repo"), "BORG_PASSPHRASE": "",
           "BORG_BASE_DIR": str(where / "borg-home"),
           "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
           "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes"}
    subprocess.run(["borg", "init", "-e", "none"], env=env, check=True)
    with timer() as t:
        subprocess.run(["borg", "create", "-C", "none", "--chunker-params", "fixed,4096",
                        "::imageset", *map(str, images)], env=env, check=True)
    return t()


def main(argv=None) -> None:
    p = parser(__doc__.split("\n")[0])
    imageset.add_arguments(p)
    p.add_argument("--skip-borg", action="store_true", help="leave borg out (quick runs)")
    args = p.parse_args(argv)
    images, manifest = imageset.build_from(args)
    where = scratch(args.data, "ingest")
    data_bytes = extent_bytes(images)
    apparent = sum(path.stat().st_size for path in images)
    warm(images)

    bare_runs = []
    for _ in range(3):      # the cheap peer gets its best of three; the others run once
        with timer() as t:
            bare_hash(images)
        bare_runs.append(t())
    bare_s = min(bare_runs)
    bf_s, stats = run_blockfold(images, where)
    borg_s = None if args.skip_borg or not shutil.which("borg") else run_borg(images, where)
    shutil.rmtree(where)

    bf, bare = mb_per_s(data_bytes, bf_s), mb_per_s(data_bytes, bare_s)
    vs_bare = bf / bare
    rows = [("contender", "seconds", "MB/s", "blockfold is")]
    rows.append(("blockfold import (in-process)", f"{bf_s:.2f}", f"{bf:.0f}", ""))
    figures = {"images": len(images), "apparent_bytes": apparent, "data_bytes": data_bytes,
               "blockfold_s": round(bf_s, 3), "blockfold_mb_s": round(bf, 1),
               "bare_s": round(bare_s, 3), "bare_mb_s": round(bare, 1),
               "vs_bare": round(vs_bare, 3),
               "vs_bare_target": TARGET_VS_BARE, "vs_bare_verdict": verdict(vs_bare, TARGET_VS_BARE)}
    if borg_s is not None:
        borg = mb_per_s(data_bytes, borg_s)
        vs_borg = bf / borg
        rows.append(("borg create -C none fixed,4096", f"{borg_s:.2f}", f"{borg:.0f}",
                     f"{vs_borg:.2f}x  (target >= {TARGET_VS_BORG:g}x: {verdict(vs_borg, TARGET_VS_BORG)})"))
        figures.update(borg_s=round(borg_s, 3), borg_mb_s=round(borg, 1),
                       vs_borg=round(vs_borg, 2), vs_borg_target=TARGET_VS_BORG,
                       vs_borg_verdict=verdict(vs_borg, TARGET_VS_BORG))
    rows.append(("bare xxh3-128 loop", f"{bare_s:.2f}", f"{bare:.0f}",
                 f"{vs_bare:.1%}  (target >= {TARGET_VS_BARE:.0%}: {verdict(vs_bare, TARGET_VS_BARE)})"))
    rows.append(("", "", "", ""))
    rows.append(("image set", f"{len(images)} images", f"{data_bytes / MiB:.0f} MiB data",
                 f"{apparent / MiB:.0f} MiB apparent"))
    rows.append(("dedup ratio", f"{stats['dedup_ratio']:.2f}",
                 f"{stats['physical_bytes'] / MiB:.0f} MiB physical",
                 f"{stats['logical_bytes'] / MiB:.0f} MiB logical"))
    figures.update(dedup_ratio=stats["dedup_ratio"], logical_bytes=stats["logical_bytes"],
                   physical_bytes=stats["physical_bytes"], unique_blocks=stats["unique_blocks"],
                   imageset=manifest["params"])
    report("ingest", f"Ingest of {len(images)} images in one process", rows, figures)


if __name__ == "__main__":
    main()
