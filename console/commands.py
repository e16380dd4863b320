"""What each CLI command does, in terms of engine.api only."""

from __future__ import annotations

import os
import sys

from engine.api import BlockfoldError, LocalAdmin, create_pool, default_pool_path, human_bytes

from .cli import UsageError, emit, pool_path
from .progressbar import ProgressBar

# Commands that only look need no write lock, so they run beside a serving process.
READ_ONLY = {("vm", "export"), ("vm", "ls"), ("stats", None), ("blocks", None), ("fsck", None)}


def pool_init(args) -> int:
    path = create_pool(args.dir, args.block_size)
    emit(args, {"pool": str(path), "block_size": args.block_size},
         f"created pool {path} (block size {args.block_size})")
    return 0


def dispatch(args) -> int:
    key = (args.command, getattr(args, "action", None))
    readonly = key in READ_ONLY
    rebuild = ("full" if args.full else "fast") if args.command == "rebuild" else None
    bar = ProgressBar.if_terminal()
    try:
        with LocalAdmin.open(pool_path(args), readonly=readonly, rebuild=rebuild,
                             progress=bar if args.command == "rebuild" else None) as admin:
            return HANDLERS[key](admin, args, bar)
    finally:
        if bar:
            bar.close()


def vm_import(admin, args, bar) -> int:
    vm = admin.import_image(args.name, args.image, bar)
    emit(args, vm, f"imported {vm['name']}: {human_bytes(vm['size'])}")
    return 0


def vm_export(admin, args, bar) -> int:
    if args.out == "-" and sys.stdout.isatty():
        raise UsageError("refusing to write a disk image to a terminal: give a file, or pipe it")
    admin.export(args.name, args.out, bar)
    if args.out != "-":
        emit(args, {"name": args.name, "out": args.out}, f"exported {args.name} to {args.out}")
    return 0


def vm_write(admin, args, bar) -> int:
    if args.file == "-":
        data = sys.stdin.buffer.read()
    else:
        try:
            with open(args.file, "rb") as f:
                data = f.read()
        except OSError as e:
            raise BlockfoldError(f"cannot read {args.file}: {e.strerror}") from None
    admin.write(args.name, args.offset, data)
    emit(args, {"name": args.name, "offset": args.offset, "bytes": len(data)},
         f"wrote {len(data)} bytes to {args.name} at {args.offset}")
    return 0


def vm_clone(admin, args, bar) -> int:
    names = admin.clone(args.source, args.new, args.count)
    text = (f"cloned {args.source} to {names[0]}" if len(names) == 1
            else f"cloned {args.source} to {names[0]} … {names[-1]} ({len(names)} VMs)")
    emit(args, {"source": args.source, "clones": names}, text)
    return 0


def vm_rm(admin, args, bar) -> int:
    admin.vm_size(args.name)      # a clear error for an unknown name, before asking
    if not args.yes and sys.stdin.isatty():
        answer = input(f"Delete VM {args.name}? Its own blocks are freed. [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("not deleted", file=sys.stderr)
            return 1
    admin.delete(args.name)
    emit(args, {"deleted": args.name}, f"deleted {args.name}")
    return 0


def vm_ls(admin, args, bar) -> int:
    vms = admin.vms()
    rows = [(v["name"], human_bytes(v["size"]), human_bytes(v["logical_bytes"]),
             str(v["unique_blocks"]), str(v["shared_blocks"]), str(v["depth"])) for v in vms]
    emit(args, vms, table(("NAME", "SIZE", "LOGICAL", "UNIQUE", "SHARED", "DEPTH"), rows))
    return 0


def stats(admin, args, bar) -> int:
    s = admin.stats()
    hist = ", ".join(f"{k}: {v}" for k, v in s["refcount_histogram"].items()) or "-"
    text = "\n".join([
        f"pool            {s['path']}",
        f"block size      {s['block_size']}",
        f"VMs             {len(s['vms'])}",
        f"logical         {human_bytes(s['logical_bytes'])}",
        f"physical        {human_bytes(s['physical_bytes'])}",
        f"dedup ratio     {s['dedup_ratio']:.2f}x",
        f"unique blocks   {s['unique_blocks']}",
        f"free slots      {s['free_slots']}",
        f"collisions      {s['collisions']}",
        f"refcounts       {hist}",
        f"metadata RAM    {human_bytes(s['metadata_ram_bytes'])}"
        f" ({s['metadata_ram_bytes_per_block']} B per block)",
    ])
    emit(args, s, text)
    return 0


def blocks(admin, args, bar) -> int:
    page = admin.blocks(vm=args.vm, min_refs=args.min_refs, max_refs=args.max_refs,
                        prefix=args.prefix, offset=args.offset, limit=args.limit)
    rows = [(str(r["pbn"]), r["fingerprint"], str(r["refcount"]), _names(r["vms"]))
            for r in page["rows"]]
    text = table(("PBN", "FINGERPRINT", "REFS", "VMS"), rows)
    text += f"\n{len(rows)} of {page['total']} blocks"
    emit(args, page, text)
    return 0


def _names(names: list[str], most: int = 4) -> str:
    if len(names) <= most:
        return ",".join(names)
    return ",".join(names[:most]) + f" +{len(names) - most}"


def rebuild(admin, args, bar) -> int:
    r = admin.last_rebuild()
    text = (f"{r['mode']} rebuild: {r['blocks']} blocks ({human_bytes(r['bytes'])}) in "
            f"{r['seconds']:.2f}s, {human_bytes(r['bytes_per_s'])}/s; "
            f"{len(r['corrupt_blocks'])} corrupt, {r['orphans_reclaimed']} orphans reclaimed")
    emit(args, r, text)
    return 1 if r["corrupt_blocks"] else 0


def fsck(admin, args, bar) -> int:
    problems = admin.fsck(bar)
    text = "\n".join(f"{p['kind']}: {p['message']}" for p in problems) or "clean"
    emit(args, {"clean": not problems, "problems": problems}, text)
    return 1 if problems else 0


def console_default(args) -> int:
    """`blockfold` alone: the console on $BLOCKFOLD_POOL, or on the default pool, made if new."""
    if not args.pool and not os.environ.get("BLOCKFOLD_POOL"):
        path = default_pool_path()
        if not path.exists():
            create_pool(path)
        args.pool = str(path)
    args.read_only = False
    return console(args)


def console(args) -> int:
    from .app import BlockfoldApp       # Textual loads only when a console opens
    # Engine work in threads holds the GIL in long stretches; a shorter switch interval hands
    # it back to the UI thread sooner, so keys are answered while an import or rebuild runs.
    sys.setswitchinterval(0.001)
    # wait=False: the first frame comes at once while the RAM metadata is rebuilt behind it.
    with LocalAdmin.open(pool_path(args), readonly=args.read_only, wait=False,
                         actor="console") as admin:
        BlockfoldApp(admin, read_only=args.read_only).run()
    return 0


def table(headers, rows) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


HANDLERS = {
    ("vm", "import"): vm_import, ("vm", "export"): vm_export, ("vm", "write"): vm_write,
    ("vm", "clone"): vm_clone, ("vm", "rm"): vm_rm, ("vm", "ls"): vm_ls,
    ("stats", None): stats, ("blocks", None): blocks, ("rebuild", None): rebuild,
    ("fsck", None): fsck,
}
