"""What each CLI command does, in terms of engine.api only."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

from engine import api
from engine.api import (BlockfoldError, LocalAdmin, create_pool, default_pool_path, human_bytes,
                        parse_size)

from .cli import UsageError, emit, pool_path
from .progressbar import ProgressBar

# Commands that only look need no write lock, so they run beside a serving process.
# Failing and restoring a node act on its process, so they run beside a cluster's writer too.
READ_ONLY = {("vm", "export"), ("vm", "ls"), ("stats", None), ("blocks", None), ("fsck", None),
             ("node", "ls"), ("node", "fail"), ("node", "restore")}
CLUSTER_ONLY = {("node", "ls"), ("node", "fail"), ("node", "restore"), ("heal", None)}


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
    if key in CLUSTER_ONLY and not args.cluster:
        raise UsageError(f"{' '.join(k for k in key if k)} needs a cluster: use -c DIR")
    options = dict(readonly=readonly, rebuild=rebuild,
                   progress=bar if args.command == "rebuild" else None)
    try:
        with (api.open_cluster(args.cluster, **options) if args.cluster
              else LocalAdmin.open(pool_path(args), **options)) as admin:
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


def confirmed(args, question: str) -> bool:
    """Asks before destruction on a terminal; scripts (no TTY) and --yes go straight on."""
    if args.yes or not sys.stdin.isatty():
        return True
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def vm_rm(admin, args, bar) -> int:
    admin.vm_size(args.name)      # a clear error for an unknown name, before asking
    if not confirmed(args, f"Delete VM {args.name}? Its own blocks are freed."):
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


def nbd_serve(admin, args, bar) -> int:
    from engine.api import serve_nbd

    def ready(host, port):
        print(f"ready {f'[{host}]' if ':' in host else host}:{port}", flush=True)
    serve_nbd(admin, *args.listen, read_only=args.read_only, ready=ready)
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
    ] + ([f"nodes           {sum(n['state'] == 'up' for n in s['nodes'])} of {len(s['nodes'])} up",
          f"under-replicated {s['under_replicated_blocks']} blocks"] if "nodes" in s else []))
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


def _size(text):
    try:
        return parse_size(text) if text is not None else None
    except ValueError as e:
        raise UsageError(str(e)) from None


def cluster(args) -> int:
    if args.action == "up":
        rows = api.cluster_up(args.dir, nodes=args.nodes, replicas=args.replicas,
                              min_replicas=args.min_replicas, memory=_size(args.memory),
                              block_size=args.block_size, repair_delay=args.repair_delay)
    elif args.action == "down":
        rows = api.cluster_down(args.dir)
    else:
        row = api.cluster_add(args.dir, args.address, name=args.name, weight=args.weight)
        emit(args, row, f"added {row['name']} at {row['address']}")
        return 0
    print(json.dumps({"cluster": args.dir, "nodes": rows}, indent=2))
    return 0


def node_serve(args) -> int:
    def ready(host, port):
        print(f"ready {f'[{host}]' if ':' in host else host}:{port}", flush=True)
    api.serve_node(args.data, *args.listen, _size(args.memory), args.block_size, args.cluster,
                   ready=ready)
    return 0


def node_ls(admin, args, bar) -> int:
    nodes = admin.nodes()
    rows = [(n["name"], n["address"], n["state"], f"{n['latency_ms']:.1f}",
             human_bytes(n["capacity_bytes"]), str(n["live_blocks"]),
             str(n["under_replicated"])) for n in nodes]
    emit(args, nodes, table(("NAME", "ADDRESS", "STATE", "LATENCY MS", "CAPACITY", "BLOCKS",
                             "UNDER-REPLICATED"), rows))
    return 0


def node_fail(admin, args, bar) -> int:
    if not confirmed(args, f"Fail node {args.name}? Its process is killed."):
        print("not failed", file=sys.stderr)
        return 1
    admin.fail_node(args.name)
    emit(args, {"failed": args.name}, f"failed {args.name}")
    return 0


def node_restore(admin, args, bar) -> int:
    admin.restore_node(args.name)
    emit(args, {"restored": args.name}, f"restored {args.name}")
    return 0


def heal(admin, args, bar) -> int:
    figures = admin.heal(wait=args.wait, progress=bar)
    emit(args, figures, f"copied {figures['copied']} blocks, dropped {figures['dropped']};"
         f" {figures['under_replicated']} under-replicated")
    return 0


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
    # A console served over SSH logs its actions under the key's comment (engine/net/node.py).
    options = dict(readonly=args.read_only, wait=False,
                   actor=os.environ.get("BLOCKFOLD_ACTOR") or "console")
    with (api.open_cluster(args.cluster, **options) if getattr(args, "cluster", None)
          else LocalAdmin.open(pool_path(args), **options)) as admin:
        app = BlockfoldApp(admin, read_only=args.read_only)
        _quit_on_hangup(app)
        app.run()
    return 0


def _quit_on_hangup(app) -> None:
    """A lost terminal (an SSH client gone) or SIGTERM quits the app like `q`, so the cluster is
    closed cleanly and its write lease freed at once."""
    def quit_(signum, frame):
        try:
            asyncio.get_running_loop().call_soon_threadsafe(app.exit)
        except RuntimeError:            # before the app runs: leave, closing the cluster
            raise SystemExit(1) from None
    for sig in (signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, quit_)


def demo(args) -> int:
    """A demo cluster: 3 local nodes, R=2, seeded; the console on it; every node stopped on quit."""
    import shutil
    import tempfile

    from . import demo as demo_data
    path = args.dir or tempfile.mkdtemp(prefix="blockfold-demo-")
    print(f"starting 3 nodes in {path} …", file=sys.stderr)
    try:
        api.cluster_up(path, nodes=3, replicas=2)
        with api.open_cluster(path, actor="demo") as admin:
            if not admin.vm_names():
                print("seeding a golden image and 12 linked clones …", file=sys.stderr)
                demo_data.seed(admin)
        args.cluster, args.read_only = path, False
        return console(args)
    finally:
        api.cluster_down(path)
        if not args.dir:
            shutil.rmtree(path, ignore_errors=True)


def table(headers, rows) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


HANDLERS = {
    ("nbd", "serve"): nbd_serve,
    ("vm", "import"): vm_import, ("vm", "export"): vm_export, ("vm", "write"): vm_write,
    ("vm", "clone"): vm_clone, ("vm", "rm"): vm_rm, ("vm", "ls"): vm_ls,
    ("stats", None): stats, ("blocks", None): blocks, ("rebuild", None): rebuild,
    ("fsck", None): fsck,
    ("node", "ls"): node_ls, ("node", "fail"): node_fail, ("node", "restore"): node_restore,
    ("heal", None): heal,
}
