"""A reproducible VDI-like image set: a golden OS image plus per-desktop variants.

The golden tree is a seeded selection of real files from /usr/lib and /usr/share on this machine.
Each desktop is the golden tree plus some modified files (a few bytes changed in one block, as
updates and config edits do) plus unique random files (the user's own data). Every tree becomes a
real ext4 image with `mke2fs -t ext4 -b 4096 -d DIR` (4 KiB blocks, as a real OS disk has;
mke2fs would pick 1 KiB for a disk this small), with a fixed UUID, hash seed and clock. mke2fs
copies each inode's times from the host, where reading a file moves its atime and copying it sets
its ctime, so debugfs then pins every inode's times: the same parameters on the same machine give
the same bytes. The set is cached under DATA/ and reused when
its manifest matches.

    python -m tests.bench.imageset [--data bench-data] [--golden-mib 256] [--variants 8]
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .common import MiB, parser, report, timer

SOURCES = ("/usr/lib", "/usr/share")
MIN_FILE, MAX_FILE = 1024, 8 * MiB
FAKE_TIME = "1700000000"        # mke2fs's clock (E2FSPROGS_FAKE_TIME) and every inode's times


def _source_files() -> list[tuple[str, int]]:
    """Every plain, readable file of a sensible size under SOURCES, sorted: (path, size)."""
    found = []
    for root in SOURCES:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if (st.st_mode & 0o170000) == 0o100000 and MIN_FILE <= st.st_size <= MAX_FILE \
                        and os.access(path, os.R_OK):
                    found.append((path, st.st_size))
    return found


def _pick(files: list[tuple[str, int]], total: int, rng: random.Random) -> list[tuple[str, int]]:
    files = list(files)
    rng.shuffle(files)
    chosen, size = [], 0
    for path, n in files:
        if size >= total:
            break
        chosen.append((path, n))
        size += n
    return sorted(chosen)


def _golden_tree(tree: Path, chosen) -> None:
    for src, _ in chosen:
        dst = tree / src.lstrip("/")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)


def _variant_tree(tree: Path, golden: Path, chosen, rng: random.Random, modified_pct: float,
                  unique_bytes: int) -> dict:
    """Golden files hard-linked (mke2fs copies them), a few modified, plus unique random files."""
    rels = [src.lstrip("/") for src, _ in chosen]
    modified = set(rng.sample(rels, max(1, int(len(rels) * modified_pct / 100))))
    for rel in rels:
        dst = tree / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if rel in modified:
            data = bytearray((golden / rel).read_bytes())
            at = rng.randrange(len(data))
            data[at:at + 16] = rng.randbytes(16)
            dst.write_bytes(data)
        else:
            os.link(golden / rel, dst)
    home = tree / "home" / "user"
    home.mkdir(parents=True)
    written, n = 0, 0
    while written < unique_bytes:
        size = min(rng.randrange(4096, 2 * MiB), unique_bytes - written)
        path = home / f"doc-{n:04d}.bin"
        path.write_bytes(rng.randbytes(size))
        written += size
        n += 1
    return {"modified_files": len(modified), "unique_files": n, "unique_bytes": written}


def _mke2fs(tree: Path, image: Path, size_mib: int, rng: random.Random) -> None:
    fixed = str(uuid.UUID(int=rng.getrandbits(128)))
    image.unlink(missing_ok=True)
    subprocess.run(["mke2fs", "-q", "-t", "ext4", "-b", "4096", "-d", str(tree), "-F", "-U", fixed,
                    "-E", f"root_owner=0:0,hash_seed={fixed}", str(image), f"{size_mib}M"],
                   check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "E2FSPROGS_FAKE_TIME": FAKE_TIME})
    _pin_times(image)


def _pin_times(image: Path) -> None:
    """Sets atime, ctime and mtime of every inode in use to FAKE_TIME.

    mke2fs -d hands out inodes in order, so those in use are the root (2), lost+found (11) and
    12 up to the count in use; inode numbers spare debugfs a path walk per command.
    """
    header = subprocess.run(["dumpe2fs", "-h", str(image)], capture_output=True, text=True,
                            check=True).stdout
    field = dict(line.split(":", 1) for line in header.splitlines() if ":" in line)
    used = int(field["Inode count"]) - int(field["Free inodes"])
    commands = "".join(f"sif <{ino}> {name} @{FAKE_TIME}\n"
                       for ino in [2, *range(11, used + 1)] for name in ("atime", "ctime", "mtime"))
    subprocess.run(["debugfs", "-w", "-f", "-", str(image)], input=commands, text=True,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "E2FSPROGS_FAKE_TIME": FAKE_TIME})


def build(data: Path, golden_mib: int = 256, variants: int = 8, unique_mib: int = 8,
          modified_pct: float = 3.0, seed: int = 2) -> tuple[list[Path], dict]:
    """The image paths (golden first) and the set's manifest; builds the set unless cached."""
    params = {"golden_mib": golden_mib, "variants": variants, "unique_mib": unique_mib,
              "modified_pct": modified_pct, "seed": seed}
    where = data / f"imageset-g{golden_mib}-v{variants}-u{unique_mib}-m{modified_pct:g}-s{seed}"
    manifest_path = where / "manifest.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        images = [where / name for name in manifest["images"]]
        if manifest["params"] == params and all(p.exists() for p in images):
            manifest["cached"] = True
            return images, manifest

    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    rng = random.Random(seed)
    chosen = _pick(_source_files(), golden_mib * MiB, rng)
    golden_bytes = sum(n for _, n in chosen)
    # Room for the files rounded up to blocks, the unique data, and ext4's own metadata.
    size_mib = int((golden_bytes * 1.15 + unique_mib * MiB) / MiB * 1.1) + 64

    trees = where / "trees"
    golden_tree = trees / "golden"
    _golden_tree(golden_tree, chosen)

    def make(k: int) -> dict | None:
        # Each image has its own seeded generator, so building them in parallel stays reproducible.
        rng_k = random.Random(seed * 1000 + k)
        if k == 0:
            _mke2fs(golden_tree, where / "golden.raw", size_mib, rng_k)
            return None
        tree = trees / f"desk-{k}"
        info = _variant_tree(tree, golden_tree, chosen, rng_k, modified_pct, unique_mib * MiB)
        _mke2fs(tree, where / f"desk-{k}.raw", size_mib, rng_k)
        shutil.rmtree(tree)
        return info

    with ThreadPoolExecutor(os.cpu_count() or 2) as workers:
        variant_info = list(workers.map(make, range(variants + 1)))[1:]
    shutil.rmtree(trees)
    os.sync()       # settle delayed allocation, so every reader sees the same data extents
    names = ["golden.raw"] + [f"desk-{k}.raw" for k in range(1, variants + 1)]

    listing = hashlib.sha256("\n".join(p for p, _ in chosen).encode()).hexdigest()[:16]
    manifest = {"params": params, "images": names, "image_mib": size_mib,
                "golden_files": len(chosen), "golden_file_bytes": golden_bytes,
                "golden_listing_sha256": listing, "variants": variant_info}
    manifest_path.write_text(json.dumps(manifest, indent=1))
    manifest["cached"] = False
    return [where / n for n in names], manifest


def add_arguments(p) -> None:
    p.add_argument("--golden-mib", type=int, default=256, help="golden file data (default 256)")
    p.add_argument("--variants", type=int, default=8, help="desktop variants (default 8)")
    p.add_argument("--unique-mib", type=int, default=8,
                   help="unique random data per desktop (default 8)")
    p.add_argument("--modified-pct", type=float, default=3.0,
                   help="percent of golden files each desktop modifies (default 3)")
    p.add_argument("--seed", type=int, default=2)


def build_from(args) -> tuple[list[Path], dict]:
    return build(args.data, args.golden_mib, args.variants, args.unique_mib, args.modified_pct,
                 args.seed)


def main(argv=None) -> None:
    p = parser(__doc__.split("\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    with timer() as t:
        images, manifest = build_from(args)
    apparent = sum(p.stat().st_size for p in images)
    allocated = sum(p.stat().st_blocks * 512 for p in images)
    rows = [("image set", "value"),
            ("images", f"{len(images)} ({images[0].parent})"),
            ("image size", f"{manifest['image_mib']} MiB each"),
            ("golden files",
             f"{manifest['golden_files']} ({manifest['golden_file_bytes'] / MiB:.0f} MiB)"),
            ("apparent bytes", f"{apparent / MiB:.0f} MiB"),
            ("allocated bytes", f"{allocated / MiB:.0f} MiB (holes are not stored)"),
            ("built in", f"{t():.1f} s" + (" (cached)" if manifest["cached"] else ""))]
    report("imageset", "VDI-like image set", rows,
           {"image_count": len(images), "apparent_bytes": apparent, "allocated_bytes": allocated,
            "seconds": round(t(), 2), **manifest})


if __name__ == "__main__":
    main()
