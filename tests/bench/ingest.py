"""Ingest: import the whole image set into one pool, in one process, against two peers.

  blockfold   Pool.create + Pool.open + Pool.import_image of every image + close, in this
              process (the engine API that `blockfold vm import` calls; no CLI start-up per image)
  borg        borg create -C none --chunker-params fixed,4096 of the same image files into a
              repository made with `borg init -e none`
  bare loop   read the same files' data extents and xxh3-128 every 4 KiB block, nothing else
              (best of three runs; it is cheap and this machine's 2 cores are shared)

Target (issue 11): blockfold >= 10x borg, in wall time. The bare loop has no target: it shows what
reading and hashing alone cost on this machine. CPU time (user + system, borg's included) is
reported beside wall time, because on a shared machine wall time also counts waiting for a core.
Every contender starts from a warm page cache. MB/s is over the same numerator for all three: the
bytes in the images' data extents (what `vm import` and the bare loop read; borg also reads the
holes, as zeros).

    python -m tests.bench.ingest [--data bench-data] [image set options]
"""

from __future__ import annotations

import os
import shutil
import subprocess

from engine.pool import Pool

from . import imageset
from .common import MiB, bare_hash, data_extents, mb_per_s, measure, parser, report, scratch, \
    verdict, warm

TARGET_VS_BORG = 10.0


def extent_bytes(paths) -> int:
    total = 0
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            total += sum(end - start for start, end in data_extents(fd, os.fstat(fd).st_size))
        finally:
            os.close(fd)
    return total


def blockfold_import(images, pool_dir) -> None:
    Pool.create(pool_dir)
    with Pool.open(pool_dir) as pool:
        for image in images:
            pool.import_image(image.stem, str(image))


def borg_create(images, env) -> None:
    subprocess.run(["borg", "create", "-C", "none", "--chunker-params", "fixed,4096",
                    "::imageset", *map(str, images)], env=env, check=True)


def borg_env(where) -> dict:
    return {**os.environ, "BORG_REPO": str(where / "borg-repo"), "BORG_PASSPHRASE": "",
            "BORG_BASE_DIR": str(where / "borg-home"),
            "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
            "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes"}


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

    runs = {"bare": min(measure(bare_hash, images)[:2] for _ in range(3))}
    runs["blockfold"] = measure(blockfold_import, images, where / "pool")[:2]
    with Pool.open(where / "pool", readonly=True) as pool:
        stats = pool.stats()
    if not args.skip_borg and shutil.which("borg"):
        env = borg_env(where)
        subprocess.run(["borg", "init", "-e", "none"], env=env, check=True)
        runs["borg"] = measure(borg_create, images, env)[:2]
    shutil.rmtree(where)

    def rate(name, which):      # which: 0 wall, 1 CPU
        return mb_per_s(data_bytes, runs[name][which])

    figures = {"images": len(images), "apparent_bytes": apparent, "data_bytes": data_bytes}
    for name, (wall, cpu) in runs.items():
        figures.update({f"{name}_s": round(wall, 3), f"{name}_cpu_s": round(cpu, 3),
                        f"{name}_mb_s": round(rate(name, 0), 1)})
    rows = [("contender", "wall s", "MB/s", "CPU s", "MB/s per CPU s", "blockfold is (wall)",
             "(CPU)")]
    rows.append(("blockfold import (in-process)", f"{runs['blockfold'][0]:.2f}",
                 f"{rate('blockfold', 0):.0f}", f"{runs['blockfold'][1]:.2f}",
                 f"{rate('blockfold', 1):.0f}", "", ""))
    peers = [("borg", "borg create -C none fixed,4096", TARGET_VS_BORG, "vs_borg", "{:.2f}x"),
             ("bare", "bare xxh3-128 loop (no target)", None, "vs_bare", "{:.1%}")]
    for name, label, target, key, fmt in peers:
        if name not in runs:
            continue
        wall_ratio = rate("blockfold", 0) / rate(name, 0)
        cpu_ratio = rate("blockfold", 1) / rate(name, 1)
        judged = "" if target is None else \
            f" (target {fmt.format(target)}: {verdict(wall_ratio, target)})"
        rows.append((label, f"{runs[name][0]:.2f}", f"{rate(name, 0):.0f}", f"{runs[name][1]:.2f}",
                     f"{rate(name, 1):.0f}", fmt.format(wall_ratio) + judged,
                     fmt.format(cpu_ratio)))
        figures.update({key: round(wall_ratio, 3), f"{key}_cpu": round(cpu_ratio, 3)})
        if target is not None:
            figures.update({f"{key}_target": target,
                            f"{key}_verdict": verdict(wall_ratio, target)})
    rows.append(("",) * 7)
    rows.append(("image set", f"{len(images)} images", f"{data_bytes / MiB:.0f} MiB data",
                 f"{apparent / MiB:.0f} MiB apparent", "", "", ""))
    rows.append(("dedup ratio", f"{stats['dedup_ratio']:.2f}",
                 f"{stats['physical_bytes'] / MiB:.0f} MiB physical",
                 f"{stats['logical_bytes'] / MiB:.0f} MiB logical", "", "", ""))
    figures.update(dedup_ratio=stats["dedup_ratio"], logical_bytes=stats["logical_bytes"],
                   physical_bytes=stats["physical_bytes"], unique_blocks=stats["unique_blocks"],
                   imageset=manifest["params"])
    report("ingest", f"Ingest of {len(images)} images in one process", rows, figures)


if __name__ == "__main__":
    main()
