"""Every `blockfold` command, each declared once beside what it does, in terms of engine.api only.

The order here is the order of `blockfold --help`. console/cli.py builds the parser and the
dispatch from COMMANDS and GROUPS.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import shlex
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager

from engine import api
from engine.api import (AttachedError, BlockfoldError, PoolLockedError, create_pool,
                        default_pool_path, formats, options, parse_size, plain)

from .command import Command, UsageError, arg
from .progressbar import ProgressBar
from .wording import delete_question, listed, refresh_question, refreshed, removal_question

GROUPS = {  # the first word of two-word commands, and its help
    "pool": "create pools",
    "vm": "import, export, write, clone, delete and list VMs; refresh, rebase, snapshots",
    "nbd": "serve VM disks over NBD",
    "cluster": "create, start and stop a cluster of nodes",
    "node": "serve a node; list, fail and restore a cluster's nodes",
    "job": "list and cancel the long work a service runs",
}
LOCK_WAIT_S = 5.0       # how long a short writer waits for another to let the pool go

COMMANDS: list[Command] = []


def command(*words: str, help: str, args=(), **declared) -> Callable:
    """Declares the function below as the command `words` (see console.command.Command)."""
    def declare(run):
        COMMANDS.append(Command(words, help, run, tuple(args), **declared))
        return run
    return declare


NAME = arg("name", metavar="NAME", help="the VM's name")
YES = arg("-y", "--yes", action="store_true", help="do not ask for confirmation (a script"
          " must pass it: without a terminal, only a line of stdin answers)")
FORCE = arg("--force", action="store_true", help="if NBD clients have the VM attached, detach"
            " them first (asks first)")
CLUSTER_DIR = arg("dir", metavar="DIR", help="the cluster directory")


def pool_path(args) -> str:
    """-p DIR, else $BLOCKFOLD_POOL, else the console's default pool
    ($XDG_DATA_HOME/blockfold/pool)."""
    return args.pool or os.environ.get("BLOCKFOLD_POOL") or str(default_pool_path())


def open_admin(args, *, readonly: bool = False, restrict: bool = False,
               actor: str | None = None, **options) -> api.Admin:
    """The Admin a command runs on: the service of --service, or the one serving the cluster of
    -c or the pool of -p / $BLOCKFOLD_POOL if one runs (`restrict`: it lets us only look); else
    that cluster or pool opened here (`readonly`: without the write lock, beside a writer), with
    `options`. A writer that finds it held by another process waits LOCK_WAIT_S for it (or for a
    service to answer) before giving up (api.unreachable: a holder that serves the pool, whose
    admin socket is gone, is named so). `actor` names the caller in events (by default the
    local user)."""
    if getattr(args, "service", None):
        return api.connect_service(args.service, read_only=restrict)
    directory = args.cluster or pool_path(args)
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        served = api.find_service(directory, actor=actor, read_only=restrict)
        if served is not None:
            return served
        try:
            return open_here(args, readonly=readonly, actor=actor or local_user(), **options)
        except PoolLockedError as e:
            if readonly:
                raise
            if time.monotonic() >= deadline:
                raise api.unreachable(directory, e) from None
            time.sleep(0.25)


def open_here(args, **options) -> api.Admin:
    """The cluster of -c, else the pool of -p or $BLOCKFOLD_POOL, opened in this process."""
    if getattr(args, "cluster", None):
        return api.open_cluster(args.cluster, **options)
    return api.LocalAdmin.open(pool_path(args), **options)


def local_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def emit(args, data, text: str, file=None) -> None:
    """Prints the result: `text` for people, or `data` as JSON with --json, on stdout (or
    `file`). A progress bar still on screen is closed first, so the result comes after it."""
    if getattr(args, "progress", None):
        args.progress.close()
    print(json.dumps(plain(data), indent=2, default=str) if args.json else text, file=file)


def table(headers, rows) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def confirmed(args, question: str) -> bool:
    """-y goes on; a terminal is asked; otherwise one line of stdin is the answer ("y" or
    "yes" goes on). No line at all (/dev/null, a closed pipe) refuses with a UsageError naming
    -y: a script that forgot -y used to delete and fail nodes unasked."""
    if args.yes:
        return True
    stdin = sys.stdin
    if stdin is not None and stdin.isatty():
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
    # stdin that is the data being written (`vm write NAME -`) holds no answer.
    line = "" if stdin is None or getattr(args, "file", None) == "-" else stdin.readline()
    if not line:
        words = " ".join(args.declared.words)
        raise UsageError(f"{words} not confirmed: stdin is not a terminal and gave no answer;"
                         " pass -y to confirm from a script")
    answer = line.strip()
    print(f"{question} [y/N] {answer}", file=sys.stderr)    # what was asked, and answered
    return answer.lower() in ("y", "yes")


def _size(text):
    try:
        return parse_size(text) if text is not None else None
    except ValueError as e:
        raise UsageError(str(e)) from None


# -- pools and VMs ------------------------------------------------------------------------------

@command("pool", "init",
         json='{"pool": DIR, "block_size": bytes}',
         help="create an empty pool in DIR", opens=False, args=[
    arg("dir", metavar="DIR", help="where the pool goes: a new or empty directory"),
    arg("--block-size", type=options.block_size, default=4096, metavar="SIZE",
        help="block size: a power of two from 4K to 64K (default 4K)")])
def pool_init(args) -> int:
    path = create_pool(args.dir, args.block_size)
    emit(args, {"pool": str(path), "block_size": args.block_size},
         f"created pool {path} (block size {args.block_size})")
    return 0


@command("vm", "import",
         json='the VM made (ImportResult: name, size)',
         help="import a disk image as a new VM: qcow2, vmdk, vhdx, vdi or raw "
         "(holes and zeros take no space)",
         description="Imports the disk an image holds as a new VM. The format is qemu-img's "
         "probe (--format forces one); a qcow2's backing chain imports as the one disk it "
         "makes. Images are read through qemu-nbd and nbdcopy, streaming: never a temporary "
         "copy. A block device (LVM, a LUN) or - (stdin) is read as a raw disk. An image that "
         "is not a disk (a compressed file, a damaged container) is refused.", args=[
             NAME, arg("image", metavar="IMAGE", help="an image file, a block device, or - for "
                       "stdin (raw)"),
             arg("--format", choices=api.IMPORT_FORMATS, help="the image's format (default: "
                 "what qemu-img finds)")])
def vm_import(admin, args, bar) -> int:
    image = api.open_disk(args.image, args.format)
    try:
        vm = admin.import_image(args.name, image, bar)
    finally:
        image.close()
    emit(args, vm, f"imported {vm.name}: {formats.size(vm.size)}")
    return 0


@command("vm", "export",
         json='{"name": NAME, "out": OUT, "snapshot": SNAP or null}',
         help="write a VM out: raw (sparse where it has holes), qcow2 or vmdk",
         description="Writes the VM to OUT as a raw (sparse where it has holes), qcow2 or vmdk"
         " image, as it was when the export began: what NBD clients write meanwhile is not in"
         " it (or as it was at its snapshot SNAP, with --snapshot). A file is written beside"
         " OUT and takes its place (its mode, owner and group) only once complete: a failed or"
         " interrupted export leaves the file that was there."
         " A device (a LUN, /dev/null) is written in place, every byte. OUT inside the pool's"
         " own directory is refused. When OUT is stdout (/dev/stdout), the line saying what was"
         " exported goes to stderr, so stdout is the image alone.",
         looks=True, args=[NAME, arg("out", metavar="OUT", help="a file, or - for stdout (raw)"),
                           arg("--format", choices=api.EXPORT_FORMATS,
                               help="the image's format (default: OUT's suffix, .qcow2 or"
                                    " .vmdk, else raw)"),
                           arg("--snapshot", metavar="SNAP",
                               help="the VM's snapshot of that name, not the VM now")])
def vm_export(admin, args, bar) -> int:
    # (looked at before the export: a file replaced is another file after it)
    stdout = args.out == "-" or _is_stdout(args.out)
    if stdout and sys.stdout.isatty():
        raise UsageError("refusing to write a disk image to a terminal: give a file, or pipe it")
    home = None if args.service else args.cluster or pool_path(args)
    # A file named disk.qcow2 that held raw bytes would be taken for raw by whoever opens it.
    suffix = os.path.splitext(args.out)[1].lstrip(".").lower()
    args.format = args.format or (suffix if suffix in api.EXPORT_FORMATS else "raw")
    with terminated_as_interrupted():
        api.export_disk(admin, args.name, args.out, args.format, bar, home=home,
                        snapshot=args.snapshot)
    if args.out == "-":
        return 0
    # On stdout behind the image's last byte, the line would be part of the image: a pipe's
    # reader takes every byte as the disk.
    what = args.name + (f" (snapshot {args.snapshot})" if args.snapshot else "")
    emit(args, {"name": args.name, "out": args.out, "format": args.format,
                "snapshot": args.snapshot},
         f"exported {what} to {args.out} ({args.format})",
         file=sys.stderr if stdout else None)
    return 0


def _is_stdout(path: str) -> bool:
    """Whether `path` names the file stdout is (/dev/stdout, /dev/fd/1, /proc/self/fd/1, or the
    file it was redirected to)."""
    try:
        return os.path.samestat(os.stat(path), os.fstat(sys.stdout.fileno()))
    except (OSError, ValueError):
        return False


@command("vm", "write",
         json='{"name": NAME, "offset": bytes, "bytes": bytes written}',
         help="write a file's bytes into a VM at an offset",
         description="Writes all of FILE into the VM from byte --offset, as one change and one"
         " event: it is streamed in pieces (memory stays small whatever its size; a file's"
         " holes are not read and write zeros) into a provisional layer, and lands on the VM"
         " only once FILE has ended. A FILE too long for the VM from that offset is refused"
         " with nothing written: at once for a file or a block device (their size is known),"
         " else when the stream passes the VM's end. An error or Ctrl-C half-way writes"
         " nothing either.", args=[
    NAME, arg("--offset", type=options.byte_size, required=True, metavar="N",
              help="byte offset in the VM (4K, 1M: as sizes are given)"),
    arg("file", metavar="FILE", help="the bytes to write: a file, a block device, a FIFO, or -"
        " for stdin"), YES, FORCE])
def vm_write(admin, args, bar) -> int:
    source = api.open_source(args.file)
    try:
        written = detaching(args, f"Overwrite part of VM {args.name}", lambda force:
                             admin.write_file(args.name, args.offset, source, force=force,
                                              progress=bar))
    finally:
        source.close()
    emit(args, {"name": args.name, "offset": args.offset, "bytes": written},
         f"wrote {formats.size(written)} to {args.name} at byte {formats.count(args.offset)}")
    return 0


@command("vm", "clone",
         json='{"source": SRC, "clones": [names]}',
         help="make linked clones of a VM: O(1) each, whatever its size",
         description="Makes linked clones of SRC as it is now. With --count, they are made"
         " 1000 at a time, each batch one commit and one event, and the pool is let go between"
         " batches, so NBD clients and other commands carry on meanwhile; every name is checked"
         " first (one taken: nothing made). Ctrl-C (or an error) stops it between batches:"
         " the clones made so far are kept, and the error names them (NEW-1 … NEW-J); a second"
         " Ctrl-C stops at once.", args=[
    arg("source", metavar="SRC", help="the VM to clone"),
    arg("new", metavar="NEW", help="the clone's name"),
    arg("--count", type=options.positive, default=1, metavar="K",
        help="make K clones named NEW-1 … NEW-K, in batches of 1000 (K at most 1,000,000)")])
def vm_clone(admin, args, bar) -> int:
    with ctrl_c_cancels() as cancel:
        names = admin.clone(args.source, args.new, args.count, progress=bar, cancel=cancel)
    text = (f"cloned {args.source} to {names[0]}" if len(names) == 1
            else f"cloned {args.source} to {names[0]} … {names[-1]}"
                 f" ({formats.count(len(names))} VMs)")
    emit(args, {"source": args.source, "clones": names}, text)
    return 0


@contextmanager
def ctrl_c_cancels():
    """Yields a threading.Event that the first Ctrl-C (SIGINT) sets, for work that stops
    cleanly between steps; a second Ctrl-C interrupts at once (KeyboardInterrupt)."""
    cancel = threading.Event()

    def stop(signum, frame):
        cancel.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)
    before = signal.signal(signal.SIGINT, stop)
    try:
        yield cancel
    finally:
        signal.signal(signal.SIGINT, before)


@contextmanager
def terminated_as_interrupted():
    """SIGTERM and SIGHUP (`timeout`, a closed terminal) stop the work inside as Ctrl-C does
    (KeyboardInterrupt), so it cleans up: a signal's default end left an export's temporary
    file beside OUT."""
    # One ignored (nohup's SIGHUP) stays ignored.
    taken = [sig for sig in (signal.SIGTERM, signal.SIGHUP)
             if signal.getsignal(sig) == signal.SIG_DFL]
    for sig in taken:
        signal.signal(sig, signal.default_int_handler)
    try:
        yield
    finally:
        for sig in taken:
            signal.signal(sig, signal.SIG_DFL)


@command("vm", "rm",
         json='{"deleted": NAME}',
         help="delete a VM and free what only it referenced",
         args=[NAME, YES, FORCE])
def vm_rm(admin, args, bar) -> int:
    clones = admin.clones_of(args.name)     # a clear error for an unknown name, before asking
    if not confirmed(args, delete_question(args.name, clones)):
        print("not deleted", file=sys.stderr)
        return 1
    detaching(args, f"Delete VM {args.name}", lambda force: admin.delete(args.name, force=force))
    emit(args, {"deleted": args.name}, f"deleted {args.name}")
    return 0


def detaching(args, doing: str, change: Callable[[bool], object]):
    """change(force=False); if the VM is attached and --force was given, asks (`confirmed`),
    then change(force=True), which detaches its NBD clients first. Returns what change
    returned."""
    try:
        return change(False)
    except AttachedError as e:
        if not args.force:
            raise
        if not confirmed(args, f"{e}. {doing} and cut its clients off?"):
            raise BlockfoldError("not forced: nothing changed") from None
        return change(True)


@command("vm", "ls",
         json='a list of VMStats (every field in engine/results.py)',
         help="list VMs with their size, logical, unique and shared blocks and "
         "chain depth", looks=True)
def vm_ls(admin, args, bar) -> int:
    vms = sorted(admin.vms(), key=lambda v: formats.natural_key(v.name))
    rows = [(v.name, formats.size(v.size), formats.size(v.logical_bytes),
             formats.count(v.unique_blocks), formats.count(v.shared_blocks), str(v.depth))
            for v in vms]
    emit(args, vms, table(("NAME", "SIZE", "LOGICAL", "UNIQUE", "SHARED", "DEPTH"), rows))
    return 0


@command("vm", "info",
         json='VMInfo (engine/results.py)',
         help="one VM: size, logical, own and shared blocks, origin, clones,"
         " snapshots, attached clients", looks=True, args=[NAME])
def vm_info(admin, args, bar) -> int:
    info = admin.vm_info(args.name)
    v = info.stats
    snaps = ", ".join(f"{s.name} ({formats.count(s.blocks_alone)} blocks alone)"
                      for s in info.snapshots) or "-"
    lines = [
        f"name            {v.name}",
        f"size            {formats.size(v.size)} ({v.size} bytes)",
        f"logical         {formats.size(v.logical_bytes)}"
        f" ({formats.count(v.logical_blocks)} blocks)",
        f"own blocks      {formats.count(v.unique_blocks)}",
        f"shared blocks   {formats.count(v.shared_blocks)}",
        f"chain depth     {v.depth}",
        f"origin          {v.origin or '-'}"
        + ("" if info.refreshable or not v.origin else " (not refreshable)"),
        f"clones          {formats.count(len(info.clones))}"
        + (f" ({listed(info.clones)})" if info.clones else ""),
        f"snapshots       {snaps}",
        f"attached        {', '.join(info.attached) or '-'}",
    ]
    emit(args, info, "\n".join(lines))
    return 0


@command("vm", "rename",
         json='{"old": NAME, "new": NEW}',
         help="rename a VM (its snapshots and its clones' origin follow)",
         args=[arg("old", metavar="NAME", help="the VM's name"),
               arg("new", metavar="NEW", help="its new name"), YES, FORCE])
def vm_rename(admin, args, bar) -> int:
    detaching(args, f"Rename VM {args.old}",
              lambda force: admin.rename(args.old, args.new, force=force))
    emit(args, {"old": args.old, "new": args.new}, f"renamed {args.old} to {args.new}")
    return 0


@command("vm", "resize",
         json='{"name": NAME, "old_size": bytes, "size": bytes}',
         help="grow a VM (shrinking needs --force: it cuts off the end)", args=[
    NAME, arg("size", metavar="SIZE", help="the new size: bytes, or 20G, 512M …"), YES,
    arg("--force", action="store_true", help="allow shrinking (what lies past the new end is"
        " lost; asks first), and detach NBD clients first")])
def vm_resize(admin, args, bar) -> int:
    size = api.check_vm_size(_size(args.size))     # a size refused is not warned about first
    old = admin.vm_size(args.name)
    shrink = size < old
    exact = formats.exact_size
    if shrink:
        if not args.force:
            raise BlockfoldError(formats.shrink_refused(size, [(args.name, old)]))
        _warn_cut(f"shrinking VM {args.name}", old, size)
        if not confirmed(args, "Shrink it?"):
            print("not resized", file=sys.stderr)
            return 1
    detaching(args, f"Resize VM {args.name}",
              lambda force: admin.resize(args.name, size, shrink=shrink, force=force))
    emit(args, {"name": args.name, "old_size": old, "size": size},
         f"resized {args.name} from {exact(old)} to {exact(size)}")
    return 0


def _warn_cut(doing: str, old: int, size: int, link: str = "") -> None:
    """The warning before a shrink (forced) from `old` to `size` bytes: "`doing` from OLD to
    SIZE`link` cuts off its last …"."""
    exact = formats.exact_size
    print(f"blockfold: warning: {doing} from {exact(old)} to {exact(size)}{link} cuts off its last"
          f" {exact(old - size)} (bytes {size} to {old - 1}): whatever a filesystem keeps there"
          " is lost", file=sys.stderr)


@command("vm", "refresh",
         json='{"refreshed": NAME, "golden": its golden image, "size": bytes}',
         help="drop a desktop's own writes: back to the golden image it was "
         "cloned from (O(1))",
         description="Drops everything the desktop wrote since it was cloned from its golden"
         " image (or last rebased onto one): it reads as that golden image did then, at its size"
         " then (a desktop cloned before Blockfold kept that size keeps its own). The golden"
         " image's own later changes are not taken (`vm rebase` takes them); the desktop's"
         " snapshots stay. A VM with no golden image (imported, or its golden deleted) is"
         " refused.", args=[NAME, YES, FORCE])
def vm_refresh(admin, args, bar) -> int:
    info = admin.vm_info(args.name)
    name, golden, size = args.name, info.stats.origin, info.stats.size
    # A VM with no golden image is not asked about: the refresh refuses it.
    if golden and not confirmed(args, refresh_question(name, golden, size, info.base_size)):
        print("not refreshed", file=sys.stderr)
        return 1
    detaching(args, f"Refresh VM {name}", lambda force: admin.refresh(name, force=force))
    emit(args, {"refreshed": name, "golden": golden, "size": admin.vm_size(name)},
         refreshed(name, golden, size, info.base_size))
    return 0


@command("vm", "rebase",
         json='{"rebased": [names], "golden": NAME, "kept_writes": true or false, "size":'
         ' bytes}',
         help="move desktops onto another golden image's current state "
         "(O(1) each)",
         description="`vm rebase NAME NEW_GOLDEN` moves one desktop, `vm rebase --all-of OLD "
         "NEW_GOLDEN` every desktop cloned from OLD, in one edit (Horizon's recompose, MCS's "
         "catalog update). NEW_GOLDEN's top is frozen first if it wrote since it was last "
         "frozen. The desktops' own writes are dropped unless --keep-writes. Each takes "
         "NEW_GOLDEN's size: keeping its writes, a desktop larger than NEW_GOLDEN is shrunk "
         "only with --force (what lies past NEW_GOLDEN's end is cut off, as `vm resize` cuts "
         "it). A VM with no golden image (imported, or its golden deleted) is refused: all its "
         "disk is its own.",
         args=[
             arg("names", nargs="+", metavar="NAME", help="NAME NEW_GOLDEN, or NEW_GOLDEN"
                 " with --all-of"),
             arg("--all-of", metavar="OLD", help="every desktop cloned from OLD"),
             arg("--keep-writes", action="store_true",
                 help="keep each desktop's own writes on top of the new golden image"),
             YES, arg("--force", action="store_true", help="allow shrinking a desktop that"
                      " keeps its writes (what lies past NEW_GOLDEN's end is lost; asks on a"
                      " terminal), and detach NBD clients first")])
def vm_rebase(admin, args, bar) -> int:
    exact = formats.exact_size
    if args.all_of:
        if len(args.names) != 1:
            raise UsageError("with --all-of, give only NEW_GOLDEN")
        golden = args.names[0]
        names = [n for n in admin.clones_of(args.all_of) if n != golden]
        if not names:
            raise BlockfoldError(f"no VM was cloned from {args.all_of}: nothing to rebase")
    else:
        if len(args.names) != 2:
            raise UsageError("give NAME NEW_GOLDEN (or --all-of OLD NEW_GOLDEN)")
        names, golden = [args.names[0]], args.names[1]
    # A VM with no golden image (never one of --all-of's) is not asked about: the rebase
    # refuses it.
    orphan = not args.all_of and not admin.vm_info(names[0]).refreshable
    size = admin.vm_size(golden)
    what = (names[0] if len(names) == 1
            else f"{formats.count(len(names))} desktops ({listed(names)})")
    sizes = {} if orphan else {name: admin.vm_size(name) for name in names}
    resized = sorted((n for n, s in sizes.items() if s != size), key=formats.natural_key)
    shrunk = [(n, sizes[n]) for n in resized if sizes[n] > size] if args.keep_writes else []
    if shrunk:
        if not args.force:
            raise BlockfoldError(formats.shrink_refused(
                size, shrunk, "rebasing keeping its writes" if len(shrunk) == 1
                else "rebasing them keeping their writes", f"{golden} ({exact(size)})"))
        for name, old in shrunk[:4]:
            _warn_cut(f"rebasing VM {name} onto {golden} shrinks it", old, size, " and")
        if len(shrunk) > 4:
            print(f"blockfold: warning: and {formats.count(len(shrunk) - 4)} more desktops"
                  f" larger than {golden} lose what lies past {exact(size)}", file=sys.stderr)
    keep = "keeping" if args.keep_writes else "dropping"
    becomes = ""
    if resized:
        becomes = (f" ({resized[0]} becomes {exact(size)}, {golden}'s size; it is"
                   f" {exact(sizes[resized[0]])} now)" if len(resized) == 1 else
                   f" ({listed(resized)} become {exact(size)}, {golden}'s size)")
    if not orphan and not confirmed(args, f"Rebase {what} onto {golden}, {keep} their own"
                                          f" writes{becomes}?"):
        print("not rebased", file=sys.stderr)
        return 1
    detaching(args, f"Rebase {what}", lambda force: admin.rebase(
        names, golden, keep_writes=args.keep_writes, force=force, shrink=bool(shrunk)))
    emit(args, {"rebased": names, "golden": golden, "kept_writes": args.keep_writes,
                "size": size},
         f"rebased {what} onto {golden}"
         + (f"; {exact(size)} now, {golden}'s size" if resized else ""))
    return 0


SNAP = arg("snap", metavar="SNAP", help="the snapshot's name")


@command("vm", "snapshot",
         json='{"name": NAME, "snapshot": SNAP}',
         help="name a VM's state now, to roll back to (O(1))",
         args=[NAME, SNAP])
def vm_snapshot(admin, args, bar) -> int:
    admin.take_snapshot(args.name, args.snap)
    emit(args, {"name": args.name, "snapshot": args.snap},
         f"snapshot {args.snap} of {args.name}")
    return 0


@command("vm", "snapshots",
         json='a list of VMSnapshot (every field in engine/results.py)',
         help="a VM's snapshots, with the blocks each holds alone",
         looks=True, args=[NAME])
def vm_snapshots(admin, args, bar) -> int:
    snaps = admin.snapshots(args.name)
    rows = [(s.name, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.created)),
             formats.size(s.size), formats.count(s.blocks_alone)) for s in snaps]
    emit(args, snaps, table(("SNAPSHOT", "TAKEN", "SIZE", "BLOCKS ALONE"), rows))
    return 0


def _need_snapshot(admin, name: str, snap: str) -> None:
    """A clear error for an unknown snapshot, before anything is asked."""
    if snap not in {s.name for s in admin.snapshots(name)}:
        raise BlockfoldError(f"VM {name} has no snapshot named {snap!r}")


@command("vm", "rollback",
         json='{"name": NAME, "snapshot": SNAP}',
         help="bring a VM back to a snapshot (what it wrote since is dropped)",
         args=[NAME, SNAP, YES, FORCE])
def vm_rollback(admin, args, bar) -> int:
    _need_snapshot(admin, args.name, args.snap)
    if not confirmed(args, f"Roll VM {args.name} back to {args.snap}? What it wrote since is"
                           " dropped."):
        print("not rolled back", file=sys.stderr)
        return 1
    detaching(args, f"Roll VM {args.name} back",
              lambda force: admin.rollback(args.name, args.snap, force=force))
    emit(args, {"name": args.name, "snapshot": args.snap},
         f"rolled {args.name} back to {args.snap}")
    return 0


@command("vm", "snapshot-rm",
         json='{"name": NAME, "removed": SNAP}',
         help="forget a snapshot and free the blocks only it held",
         args=[NAME, SNAP, YES])
def vm_snapshot_rm(admin, args, bar) -> int:
    _need_snapshot(admin, args.name, args.snap)
    if not confirmed(args, f"Remove snapshot {args.snap} of VM {args.name}?"):
        print("not removed", file=sys.stderr)
        return 1
    admin.remove_snapshot(args.name, args.snap)
    emit(args, {"name": args.name, "removed": args.snap},
         f"removed snapshot {args.snap} of {args.name}")
    return 0


@command("estimate",
         json='Estimate (every field in engine/results.py)',
         help="how many blocks images would add, and the dedup ratio after "
         "importing them, without writing", looks=True,
         description="Reads each image as `vm import` would (any format, holes skipped), "
         "fingerprints its blocks and looks them up in the pool, writing nothing: the blocks "
         "each image would add (new to the pool and to the images before it) and the pool's "
         "dedup ratio once all are imported (the anchors are `zdb -S` and VDO's estimator).",
         args=[arg("images", nargs="+", metavar="IMAGE", help="image files or block devices"),
               arg("--format", choices=api.IMPORT_FORMATS,
                   help="the images' format (default: what qemu-img finds in each)")])
def estimate(admin, args, bar) -> int:
    e = api.estimate(admin, args.images, bar, format=args.format)
    rows = [(i.image, formats.size(i.size), formats.count(i.data_blocks),
             formats.count(i.known_blocks), formats.count(i.new_blocks)) for i in e.images]
    text = table(("IMAGE", "SIZE", "DATA BLOCKS", "IN POOL", "NEW"), rows)
    text += (f"\nnew blocks      {formats.count(e.new_blocks)}"
             f" ({formats.size(e.new_blocks * e.block_size)})"
             f"\ndedup ratio     {formats.ratio(e.pool_dedup_ratio)} now,"
             f" {formats.ratio(e.dedup_ratio)} after importing them")
    emit(args, e, text)
    return 0


# -- the service: one process holds the pool, serves it, and answers every other command ---------

SERVICE_ARGS = (
    arg("--metrics", type=options.listen_address, metavar="HOST:PORT",
        help="serve Prometheus metrics over HTTP here (port 0: any free)"),
    arg("--group", metavar="GROUP", help="let GROUP's members use the admin socket too (mode"
        " 0660; by default only this user: 0600)"),
    arg("--standby", action="store_true", help="(-c only) when another service holds the"
        " cluster, listen at once, as a fenced service does (NBD has no export, stats says"
        " standby), and take the cluster over once that service's lease runs out (it died or"
        " stopped); run it on another host, from a copy of the cluster directory"
        " (cluster.json and the keys)"))


@command("serve", help="serve the pool: the admin socket for every CLI and console, and NBD and "
         "metrics if asked, until SIGTERM",
         description="Holds the pool (-p) or the cluster's write lease (-c) and serves it until "
         "SIGTERM or SIGINT: every other blockfold command and console on this pool goes "
         "through it (DIR/admin.sock), NBD exports every VM if --nbd is given, and Prometheus "
         "metrics are served if --metrics is. Prints 'admin PATH', then 'nbd HOST:PORT' and "
         "'metrics HOST:PORT' once listening. On SIGTERM it drains: NBD answers what it "
         "received, admin calls finish or are cancelled, the pool is flushed and marked clean.",
         opens=False, args=[
             arg("--nbd", type=options.listen_address, metavar="HOST:PORT",
                 help="export every VM over NBD here (port 0: any free)"),
             arg("--nbd-read-only", action="store_true",
                 help="NBD refuses writes and trims (EPERM)"), *SERVICE_ARGS])
def serve(args) -> int:
    def ready(bound):
        print(f"admin {bound['admin']}", flush=True)
        for what in ("nbd", "metrics"):
            if what in bound:
                print(f"{what} {address(*bound[what])}", flush=True)
    return run_service(args, args.nbd, args.nbd_read_only, ready, "--nbd")


@command("nbd", "serve", help="export every VM under its own name until SIGTERM",
         description="`blockfold serve --nbd HOST:PORT`: exports every VM under its own name "
         "and serves the pool to every other command, until SIGTERM; prints 'ready HOST:PORT' "
         "once listening", opens=False, args=[
             arg("--listen", type=options.listen_address, default=("127.0.0.1", 10809),
                 metavar="HOST:PORT", help="default 127.0.0.1:10809; port 0 picks a free one"),
             arg("--read-only", action="store_true", help="refuse writes and trims (EPERM)"),
             *SERVICE_ARGS])
def nbd_serve(args) -> int:
    def ready(bound):
        print(f"ready {address(*bound['nbd'])}", flush=True)
        if "metrics" in bound:
            print(f"metrics {address(*bound['metrics'])}", flush=True)
    return run_service(args, args.listen, args.read_only, ready, "--listen")


def address(host: str, port: int) -> str:
    return f"{f'[{host}]' if ':' in host else host}:{port}"


def _one_listener(a: tuple[str, int], b: tuple[str, int]) -> bool:
    """Whether listeners on (host, port) `a` and `b` would take the same address: one port
    (0 is any free one: two never meet) on hosts that resolve alike (localhost and
    127.0.0.1), or one of them every address (0.0.0.0, ::). A host that does not resolve is
    left to the bind to say."""
    if a[1] != b[1] or not a[1]:
        return False
    if {a[0], b[0]} & {"", "0.0.0.0", "::"}:
        return True
    try:
        found = [{info[4][0] for info in socket.getaddrinfo(host, a[1])} for host in (a[0], b[0])]
    except OSError:
        return False
    return bool(found[0] & found[1])


def run_service(args, nbd, nbd_read_only: bool, ready, nbd_flag: str) -> int:
    """Opens the pool or cluster for writing and serves it until a signal; then closes it.
    `nbd_flag` names the option that gave the NBD address."""
    if getattr(args, "service", None):
        raise UsageError("a service serves a pool or cluster of this machine: use -p or -c")
    if args.standby and not args.cluster:
        raise UsageError("--standby waits for a cluster's write lease: use it with -c, not -p")
    if nbd and args.metrics and _one_listener(nbd, args.metrics):
        raise UsageError(f"{nbd_flag} {address(*nbd)} and --metrics {address(*args.metrics)}"
                         " would listen on the same address: give each its own port")
    if nbd:
        api.nbd_handshake_deadline()    # a bad setting refused before anything is opened
    actor = local_user()
    directory = args.cluster or pool_path(args)
    admin = standby(args, actor) if args.standby else hold(args, actor)
    if admin.fenced():
        print(f"blockfold: {admin.fenced()}", file=sys.stderr, flush=True)
    try:
        if not args.cluster:    # a cluster's standby is told whose lease it waits for, and when
            admin.held_by("a service", command_line(), "stop it first (SIGTERM); meanwhile"
                          " every command and console goes through it")
    except BaseException:
        admin.close()
        raise
    service = api.Service(admin, directory, actor=actor, group=args.group, nbd=nbd,
                          nbd_read_only=nbd_read_only, metrics=args.metrics)
    try:
        service.run(lambda bound: ready(dict(bound, admin=service.socket_path)))
    finally:
        service.close()     # the Admin opened here, or the one that took its place
    return 0


def command_line() -> str:
    """This process's command line as its user typed it: `blockfold console -p pl`."""
    return shlex.join(["blockfold", *sys.argv[1:]])


def standby(args, actor: str) -> api.Admin:
    """The cluster for a standby (api.standby_cluster), waited for while too few of its nodes
    answer: a standby is there to wait, and it exited at once on a minority."""
    told = False
    while True:
        try:
            return api.standby_cluster(args.cluster, actor=actor)
        except api.NoMajorityError as e:
            if not told:
                print(f"blockfold: standby: waiting: {e}", file=sys.stderr, flush=True)
                told = True
            time.sleep(1.0)


def hold(args, actor: str) -> api.Admin:
    """The pool or cluster opened for writing, for as long as a service runs. A cluster whose
    write lease another service holds is waited for, listening on nothing (--standby serves
    meanwhile: api.standby_cluster): its lease runs out if that service has died, and this one
    takes over. One that a console holds is refused, naming it:
    the console renews its lease for as long as it is open."""
    if not args.cluster:
        return api.LocalAdmin.open(pool_path(args), wait=False, actor=actor)
    waited = False
    while True:
        try:
            admin = api.open_cluster(args.cluster, actor=actor)
        except PoolLockedError as e:
            if e.held_by:       # a console said so (console_admin): it is not going away
                raise
            if not waited:
                print(f"blockfold: waiting: {e}", file=sys.stderr, flush=True)
                waited = True
            time.sleep(1.0)
            continue
        if waited:
            print(f"blockfold: took over cluster {args.cluster}: its write lease is ours now",
                  file=sys.stderr, flush=True)
        return admin


# -- the pool's figures and checks --------------------------------------------------------------

@command("stats",
         json='PoolStats (every field in engine/results.py)',
         help="pool-wide figures: logical and physical bytes, dedup ratio, capacity (room for "
              "new blocks: free slots and disk; a cluster's free disk once per filesystem, and "
              "usable: divided by R), blocks by VMs reading them and by refcount",
         looks=True)
def stats(admin, args, bar) -> int:
    s = admin.stats()
    hist = formats.histogram(s.readers_histogram)
    refs = formats.histogram(s.refcount_histogram)
    # An empty pool's JSON says 0 bytes per block; for people a figure that does not apply is -.
    per_block = s.metadata_ram_bytes_per_block if s.unique_blocks else None
    rows = [
        ("pool", s.path),
        *([("writer", s.fenced)] if s.fenced else []),
        ("block size", formats.size(s.block_size)),
        ("VMs", formats.count(len(s.vms))),
        ("logical", formats.size(s.logical_bytes)),
        ("physical", formats.size(s.physical_bytes)),
        ("dedup ratio", formats.ratio(s.dedup_ratio)),
        ("unique blocks", formats.count(s.unique_blocks)),
    ]
    rows.append(("capacity", f"{formats.size(s.capacity_bytes)} free"
                 + (f", {formats.size(s.usable_bytes)} usable at R={s.replicas}"
                    if s.replicas > 1 else "")))
    if s.free_slots is not None:
        rows.append(("free slots", formats.count(s.free_slots)))
    if s.corrupt_blocks:
        rows.append(("corrupt", f"{formats.counted(s.corrupt_blocks, 'block')} with no sound copy"
                                " (reads fail; fsck names them)"))
    if s.damage:
        rows.append(("damage", s.damage))
    if s.reserve_bytes == 0:
        rows.append(("reserve", f"none: the filesystem holding {s.path} is too full to keep"
                     " the catalog's reserve, so a commit at 100 % may fail; free space on it"))
    rows += [
        ("collisions", formats.count(s.collisions)),
        ("VMs reading", hist),
    ]
    if refs != hist:
        rows.append(("refcounts", refs))
    rows += [
        ("metadata RAM", f"{formats.size(s.metadata_ram_bytes)}"
         f" ({formats.UNKNOWN if per_block is None else f'{per_block:.1f} B'} per block)"),
    ]
    if admin.kind == "cluster":
        rows += [("nodes", f"{sum(n.state == 'up' for n in s.nodes)} of {len(s.nodes)} up"),
                 ("under-replicated", f"{formats.count(s.under_replicated_blocks)} blocks"),
                 ("no copy left", f"{formats.count(s.lost_blocks)} blocks"),
                 ("repaired copies", formats.count(s.repaired_copies))]
    width = max(len(label) for label, _ in rows) + 2
    lines = [f"{label.ljust(width)}{value}" for label, value in rows]
    emit(args, s, "\n".join(lines))
    return 0


@command("events",
         json='a list of Event, newest first (every field in engine/results.py)',
         help="the event log, newest first: who did what (imports, clones, deletes, writes, "
              "rebuilds that were asked for or found something, scrubs, heals, nodes failed, "
              "restored, down or back)", looks=True, args=[
    arg("--since", metavar="TIME", help="only events since TIME: seconds since the epoch, an"
        " ISO date/time (2026-11-30T22:00), or an age (90s, 15m, 2h, 7d)"),
    arg("--limit", type=options.nonnegative, default=20, metavar="N",
        help="the N newest events (default 20)")])
def events(admin, args, bar) -> int:
    found = admin.events(args.limit, since_time(args.since) if args.since else None)
    now = time.time()
    rows = [(formats.when(e.ts, now), e.actor, e.kind, e.message) for e in found]
    emit(args, found, table(("WHEN", "WHO", "WHAT", "MESSAGE"), rows))
    return 0


@command("blocks",
         json='a BlockPage (engine/results.py)',
         help="the block table: one row per physical block, with how many VMs read it, its "
              "refcount (layer references) where that differs, and on a cluster the nodes that "
              "hold its copies", looks=True, args=[
    arg("--vm", metavar="NAME", help="only blocks this VM reads"),
    arg("--limit", type=options.nonnegative, default=50, metavar="N",
        help="at most N rows (default 50)"),
    arg("--offset", type=options.nonnegative, default=0, metavar="N", help="skip the first N rows"),
    arg("--min-refs", type=options.nonnegative, metavar="N", help="only blocks at least N VMs read "
        "(VMs reading, not the refcount: a golden's block read by 51 clones counts 52)"),
    arg("--max-refs", type=options.nonnegative, metavar="N", help="only blocks at most N VMs read "
        "(VMs reading, not the refcount)"),
    arg("--prefix", metavar="HEX", help="fingerprints starting with HEX")])
def blocks(admin, args, bar) -> int:
    page = admin.blocks(vm=args.vm, min_refs=args.min_refs, max_refs=args.max_refs,
                        prefix=args.prefix, offset=args.offset, limit=args.limit)
    cluster = admin.kind == "cluster"
    header = ("PBN", "FINGERPRINT", "VMS", "REFS", *(("NODES",) if cluster else ()), "READ BY")
    rows = [(str(r.pbn), r.fingerprint, formats.count(r.readers),
             formats.refs_beside(r.readers, r.refcount),
             *((",".join(r.nodes or ()) or formats.UNKNOWN,) if cluster else ()),
             listed(r.vms, r.readers)) for r in page.rows]
    text = table(header, rows)
    text += f"\n{formats.count(len(rows))} of {formats.count(page.total)} blocks"
    emit(args, page, text)
    return 0


@command("rebuild",
         json='RebuildFigures (every field in engine/results.py)',
         help="rebuild the RAM dedup metadata and print its figures", rebuilds=True,
         args=[arg("--full", action="store_true",
                   help="re-read and re-hash every block, reporting corrupt ones"),
               arg("--repair", action="store_true",
                   help="with --full: repair what a truncated or deleted blocks.dat or "
                   "hashes.dat left (fingerprints computed again from the data; blocks whose "
                   "data is gone are marked corrupt) and a damaged blocks.dat header (once its "
                   "blocks match their fingerprints); needs the pool to itself")])
def rebuild(admin, args, bar) -> int:
    r = admin.last_rebuild()
    rate = formats.rate_over(r.bytes, r.seconds)
    text = (f"{r.mode} rebuild: {formats.counted(r.blocks, 'block')} ({formats.size(r.bytes)})"
            f" in {formats.duration(r.seconds)}{f', {rate}' if rate else ''}; "
            f"{formats.count(len(r.corrupt_blocks))} corrupt, "
            f"{formats.counted(r.orphans_reclaimed, 'orphan')} reclaimed")
    if r.repaired_copies:
        text += (f", {formats.counted(r.repaired_copies, 'rotten copy', 'rotten copies')}"
                 " rewritten from a sound replica")
    if r.bad_references:
        text += f", {formats.counted(r.bad_references, 'bad reference')}"
    emit(args, r, text)
    if r.damage:
        print(f"blockfold: {r.damage}", file=sys.stderr)
    return 1 if r.corrupt_blocks or r.bad_references or r.damage else 0


@command("fsck",
         json='{"clean": true or false, "problems": [Problem (engine/results.py)]}',
         help="check every promise the pool makes; exit 1 if any is broken", looks=True)
def fsck(admin, args, bar) -> int:
    problems = admin.fsck(bar)
    text = "\n".join(f"{p.kind}: {p.message}" for p in problems) or "clean"
    emit(args, {"clean": not problems, "problems": problems}, text)
    return 1 if problems else 0


@command("scrub",
         json='ScrubFigures, or the Job started (engine/results.py)',
         help="verify every live block against its fingerprint, beside reads and "
         "writes", description="Verifies every live block against its fingerprint (the anchor is "
         "`zpool scrub`); rotten blocks are remembered as corrupt (`stats`). In a cluster "
         "every node re-reads each copy it holds, and a rotten copy is rewritten from a sound "
         "replica: only a block with no sound copy left is corrupt. Exit 1 if any is. A scrub "
         "stopped resumes where it was the next time. With a service running, it runs there in the "
         "background unless --wait (`job ls` shows it); without one, this command does the "
         "work.", args=[
             arg("--rate", type=options.rate, metavar="SIZE",
                 help="at most SIZE bytes a second (e.g. 200M); without it, no limit"),
             arg("--wait", action="store_true",
                 help="wait for the end, with progress; Ctrl-C stops it")])
def scrub(admin, args, bar) -> int:
    if admin.served and not args.wait:
        job = admin.start_scrub(args.rate)
        emit(args, job, f"scrub started: job {job.id} (`blockfold job ls` shows its progress)")
        return 0
    r = admin.scrub(args.rate, bar)
    speed = formats.rate_over(r.bytes, r.seconds)
    unit = ("copy", "copies") if admin.kind == "cluster" else ("block",)  # every copy, every node
    text = (f"scrubbed {formats.counted(r.blocks, *unit)} ({formats.size(r.bytes)}) in"
            f" {formats.duration(r.seconds)}{f', {speed}' if speed else ''};"
            + ("" if r.repaired is None else f" {formats.count(r.repaired)} repaired,")
            + f" {formats.count(len(r.corrupt))} corrupt"
            + ("" if r.finished else "; stopped before the end: the next scrub resumes"))
    emit(args, r, text)
    return 1 if r.corrupt else 0


AGES = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def since_time(text: str) -> float:
    """Seconds since the epoch from an epoch number, an ISO date/time (local time unless it
    says otherwise) or an age back from now ("15m"). Raises UsageError."""
    import datetime
    try:
        return float(text)
    except ValueError:
        pass
    if text[:-1].isdigit() and text[-1:] in AGES:
        return time.time() - int(text[:-1]) * AGES[text[-1]]
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise UsageError(f"--since: not a time: {text!r} (epoch seconds, an ISO date/time,"
                         " or an age like 15m)") from None


# -- a service's jobs ----------------------------------------------------------------------------

@command("job", "ls",
         json='a list of Job (every field in engine/results.py)',
         help="the long work a service runs: imports, exports, rebuilds, scrubs …")
def job_ls(admin, args, bar) -> int:
    jobs = admin.jobs()
    rows = [(str(j.id), j.kind, j.vm or formats.UNKNOWN, j.actor, j.state,
             j.phase or formats.UNKNOWN, f"{j.done / j.total:.0%}" if j.total else formats.UNKNOWN,
             j.message) for j in jobs]
    emit(args, jobs, table(("ID", "KIND", "VM", "ACTOR", "STATE", "PHASE", "DONE", "WHY"), rows))
    return 0


@command("job", "cancel",
         json='the Job (engine/results.py)',
         help="stop a running job of the service", args=[
    arg("id", type=options.positive, metavar="ID", help="the job's id (see `job ls`)")])
def job_cancel(admin, args, bar) -> int:
    job = admin.cancel_job(args.id)
    emit(args, job, f"cancelling job {job.id} ({job.kind})")
    return 0


# -- clusters -----------------------------------------------------------------------------------

@command("cluster", "up",
         json='{"cluster": DIR, "nodes": [{name, address, pid, local, running}]}',
         help="create a local cluster in DIR if new, and start its nodes (an existing "
              "cluster keeps its shape: options that differ are refused)",
         opens=False, args=[
             CLUSTER_DIR,
             arg("--nodes", type=options.local_nodes, metavar="N",
                 help=f"local nodes to create (default 3, at most {options.MAX_LOCAL_NODES})"),
             arg("--replicas", type=options.positive, metavar="R",
                 help="copies of every block (default 2)"),
             arg("--min-replicas", type=options.positive, metavar="M",
                 help="refuse writes that would have fewer copies (default min(2, R))"),
             arg("--memory", type=options.size, metavar="SIZE",
                 help="keep each node's blocks in RAM, up to SIZE"),
             arg("--block-size", type=options.block_size, metavar="SIZE",
                 help="block size: a power of two from 4K to 64K (default 4K)"),
             arg("--repair-delay", type=options.seconds, metavar="S",
                 help="seconds a block may stay under-replicated before heal (default 0)"),
             arg("--etcd", metavar="URL[,URL…]",
                 help="use the etcd at these client URLs (http://HOST:PORT) instead of a"
                      " local member of its own; 'none': no etcd")])
def cluster_up(args) -> int:
    # SIGTERM (timeout, systemd) as Ctrl-C: the nodes started so far are stopped again, where
    # its default end left every one running.
    with terminated_as_interrupted():
        rows = api.cluster_up(args.dir, nodes=args.nodes, replicas=args.replicas,
                              min_replicas=args.min_replicas, memory=args.memory,
                              block_size=args.block_size, repair_delay=args.repair_delay,
                              etcd=args.etcd)
    emit(args, {"cluster": args.dir, "nodes": rows}, _cluster_nodes(args.dir, rows))
    return 0


@command("cluster", "down",
         json='{"cluster": DIR, "nodes": [{name, address, pid, local, running}]}',
         help="stop the cluster's local nodes (refused while a service serves the cluster,"
              " unless --force)", opens=False,
         args=[CLUSTER_DIR, arg("--force", action="store_true",
                                help="stop them even while a service serves the cluster")])
def cluster_down(args) -> int:
    rows = api.cluster_down(args.dir, force=args.force)
    emit(args, {"cluster": args.dir, "nodes": rows}, _cluster_nodes(args.dir, rows))
    return 0


@command("cluster", "status",
         json='{"cluster": DIR, "etcd": EtcdStatus or null (engine/results.py), "nodes":'
              ' [{name, address, pid, local, running, registered}]}',
         help="the cluster's nodes and etcd without reaching any node: which nodes run here,"
              " which etcd has registered, etcd's health, and the writers it knows",
         opens=False, args=[CLUSTER_DIR])
def cluster_status(args) -> int:
    status = api.cluster_status(args.dir)
    emit(args, status, _cluster_status(status))
    return 0


def _cluster_status(status: dict) -> str:
    """cluster status for people: the nodes with their etcd word, then etcd and its writers."""
    etcd = status["etcd"]
    rows = [(r["name"], r["address"], ("running here" if r["running"] else "stopped")
             if r["local"] else "elsewhere", str(r["pid"]) if r["pid"] else formats.UNKNOWN,
             formats.UNKNOWN if r["registered"] is None
             else "registered" if r["registered"] else "not registered")
            for r in status["nodes"]]
    lines = [table(("NODE", "ADDRESS", "WHERE", "PID", "ETCD"), rows)]
    if etcd is None:
        lines.append("etcd: none (this cluster has no etcd)")
    elif etcd.healthy:
        lines.append(f"etcd: {', '.join(etcd.endpoints)}: healthy, {etcd.members}"
                     f" member{'' if etcd.members == 1 else 's'};"
                     f" {sum(bool(r['registered']) for r in status['nodes'])} of {len(rows)}"
                     " nodes registered")
        lines += [f"writer: {w}" for w in etcd.writers] or ["writers: none"]
    else:
        lines.append(f"etcd: {', '.join(etcd.endpoints)}: not healthy: {etcd.error}")
    return "\n".join(lines)


def _cluster_nodes(path: str, rows: list[dict]) -> str:
    """cluster up/down for people: each node, where it listens, and whether it runs here."""
    running = sum(bool(r["running"]) for r in rows if r["local"])
    local = sum(bool(r["local"]) for r in rows)
    lines = table(("NODE", "ADDRESS", "WHERE", "PID"), [
        (r["name"], r["address"], ("running here" if r["running"] else "stopped") if r["local"]
         else "elsewhere", str(r["pid"]) if r["pid"] else formats.UNKNOWN) for r in rows])
    return f"{lines}\ncluster {path}: {running} of {local} local nodes running"


@command("cluster", "add",
         json='{name, address, host_key, peer_key} of the node added',
         help="join a node running elsewhere, pinning its host key now; it must let the"
              " cluster's key in (DIR/admin_key.pub in its DATA/authorized_keys), or nothing"
              " is added. For heal's copies"
              " from node to node, its operator puts the cluster's DIR/peer_key in the"
              " node's DATA/peer_key (mode 600) and 'restrict ' + DIR/peer_key.pub in its"
              " DATA/peer_keys; until then those copies go through the coordinator, and each"
              " heal says why",
         opens=False, args=[
             CLUSTER_DIR,
             arg("address", metavar="HOST:PORT", help="where the node listens"),
             arg("--name", metavar="NAME", help="the node's name (default nodeN)"),
             arg("--weight", type=options.weight, default=1.0, metavar="W",
                 help="its share of the blocks relative to the others (default 1)")])
def cluster_add(args) -> int:
    row = api.cluster_add(args.dir, args.address, name=args.name, weight=args.weight)
    emit(args, row, f"added {row['name']} at {row['address']}; give it the peer key:"
                    f" {row['peer_key']} as DATA/peer_key, 'restrict ' + {row['peer_key']}.pub"
                    " in DATA/peer_keys")
    return 0


@command("cluster", "remove",
         json="NodeRemoval (every field in engine/results.py): blocks it held, short, copied,"
              " lost, nodes_left, need (writes need this many of them), data (its data dir,"
              " kept), deleted, …",
         help="take a node out of the cluster: it gets no new copies, and its blocks are"
              " copied to the other nodes until every block has R copies without it; then it"
              " leaves cluster.json (writes need a majority of the nodes left) and a local"
              " node's process stops, its data dir kept and marked removed (it never serves"
              " again) unless --delete-data. Through the cluster's service when one runs",
         opens=False, args=[
             CLUSTER_DIR,
             arg("name", metavar="NODE", help="the node's name"),
             arg("--force", action="store_true",
                 help="remove a node that is down although some blocks have no copy on any"
                      " other node that answers: they are lost"),
             arg("--delete-data", action="store_true",
                 help="delete a local node's data directory as well"),
             YES])
def cluster_remove(args) -> int:
    def ask(plan: api.NodeRemoval) -> bool:
        return confirmed(args, removal_question(args.dir, plan))

    bar = args.progress = ProgressBar.if_terminal()
    try:
        with terminated_as_interrupted():
            done = api.remove_node(args.dir, args.name, force=args.force,
                                   delete_data=args.delete_data, confirm=ask, progress=bar,
                                   actor=local_user())
    finally:
        if bar:
            bar.close()
    if done is None:
        print("not removed", file=sys.stderr)
        return 1
    lost = (f"; {formats.counted(done.lost, 'block')} ({formats.size(done.lost * done.block_size)})"
            " are lost (their only copies were on it)" if done.lost else "")
    where = (f"; its data is kept in {done.data} (marked removed: it does not serve again)"
             if done.data else "; its data directory was deleted" if done.deleted else
             "" if done.local else f"; stop it on its host ({done.address})")
    emit(args, done, f"removed {args.name} from cluster {args.dir}:"
                     f" {formats.counted(done.copied, 'copy', 'copies')} made on the other"
                     f" nodes{lost}; writes now need {formats.count(done.need)} of"
                     f" {formats.counted(done.nodes_left, 'node')}{where}")
    return 0


@command("node", "serve", help="run one node (an SSH server) in the foreground", opens=False,
         args=[
             arg("--data", required=True, metavar="DIR", help="the node's data directory"),
             arg("--listen", type=options.listen_address, required=True, metavar="HOST:PORT",
                 help="port 0: any free"),
             arg("--memory", type=options.size, metavar="SIZE",
                 help="keep blocks in RAM, up to SIZE"),
             arg("--block-size", type=options.positive, metavar="N",
                 help="block size in bytes of a new node (default 4096; an existing node"
                      " keeps its own)"),
             arg("-c", "--cluster", metavar="DIR", default=argparse.SUPPRESS,
                 help="serve the console on this cluster to the keys in DATA/admin_keys"
                      " (DATA/admin_keys_readonly: read-only) over SSH"),
             arg("--etcd", metavar="URL[,URL…]",
                 help="keep the node's liveness key in the cluster's etcd at these client"
                      " URLs (cluster.json's etcd endpoints)"),
             arg("--etcd-prefix", metavar="PREFIX",
                 help="the cluster's keys there (cluster.json's etcd prefix, /blockfold/ID/)")])
def node_serve(args) -> int:
    def ready(host, port):
        print(f"ready {f'[{host}]' if ':' in host else host}:{port}", flush=True)
    if bool(args.etcd) != bool(args.etcd_prefix):
        raise UsageError("give --etcd and --etcd-prefix together")
    api.serve_node(args.data, *args.listen, args.memory, args.block_size, args.cluster,
                   ready=ready, etcd=(args.etcd.split(","), args.etcd_prefix)
                   if args.etcd else None)
    return 0


@command("node", "ls",
         json='a list of NodeStatus (every field in engine/results.py)',
         help="the nodes: state, latency, capacity (room for new blocks on the node's "
              "filesystem or memory), blocks it stores; a dash for what a down node cannot "
              "tell", looks=True,
         cluster=True)
def node_ls(admin, args, bar) -> int:
    nodes = admin.nodes()
    rows = [(n.name, n.address, n.state, formats.latency(n.latency_ms),
             formats.size(n.capacity_bytes), formats.count(n.blocks),
             formats.count(n.under_replicated)) for n in nodes]
    emit(args, nodes, table(("NAME", "ADDRESS", "STATE", "LATENCY", "CAPACITY", "BLOCKS",
                             "UNDER-REPLICATED"), rows))
    return 0


# Failing and restoring a node act on its process from the cluster directory alone: they run
# beside a cluster's writer, and with every node down. A writer sees the change at its next
# heartbeat.
@command("node", "fail",
         json='{"failed": NAME, "unreachable_blocks": blocks with no reachable copy left'
              ' (null: not counted), "event_recorded": false when the service could not'
              ' commit its event (writes were refused already; null: no service)}',
         help="make a node unreachable (kill its process); through the cluster's service when "
              "one runs, which records the event", opens=False,
         cluster=True, args=[arg("name", metavar="NAME", help="the node's name"), YES])
def node_fail(args) -> int:
    served = api.find_service(args.cluster, actor=local_user())
    unrecorded = ""
    try:
        alone, lost = _fail_costs(args, served)
        if not confirmed(args, f"Fail node {args.name}? Its process is killed.{lost}"):
            print("not failed", file=sys.stderr)
            return 1
        if served is not None:      # its coordinator records the event and marks the node down
            unrecorded = served.fail_node(args.name)
        else:
            api.fail_node(args.cluster, args.name)
    finally:
        if served is not None:
            served.close()
    if unrecorded:
        print(f"blockfold: the event was not recorded: {unrecorded}", file=sys.stderr)
    emit(args, {"failed": args.name, "unreachable_blocks": alone,
                "event_recorded": None if served is None else not unrecorded},
         f"failed {args.name}.{lost.replace('would have', 'have').replace(' will be', ' are')}"
         .removesuffix("."))
    return 0


def _fail_costs(args, served: api.Admin | None) -> tuple[int | None, str]:
    """The blocks whose only reachable copies are on node args.name, and a sentence saying how
    many and how much, then whether writes would be refused without it (empty when neither),
    asked of the service or of the cluster opened read-only here. Unknown when the cluster
    cannot be opened (every node down: failing one still works, from the directory alone)."""
    if served is not None:
        alone, block_size = served.only_copies(args.name), served.block_size
        quorum = served.writes_without(args.name)
    else:
        try:
            admin = open_here(args, readonly=True, actor=local_user())
        except BlockfoldError as e:
            return None, f" Its blocks could not be counted ({e})."
        with admin:
            alone, block_size = admin.only_copies(args.name), admin.block_size
            quorum = admin.writes_without(args.name)
    said = f" {formats.no_copy_left(alone, block_size)}." if alone else ""
    if quorum.refused:
        refused = formats.writes_refused(quorum.left, quorum.nodes, quorum.need)
        said += f" {refused[0].upper()}{refused[1:]}."
    return alone, said


@command("node", "restore",
         json='{"restored": NAME, "address": HOST:PORT, "pid": its process}',
         help="bring a failed node back (restart its process); the cluster's service, when one "
              "runs, catches it up and records the event", opens=False,
         cluster=True, args=[arg("name", metavar="NAME", help="the node's name")])
def node_restore(args) -> int:
    served = api.find_service(args.cluster, actor=local_user())
    if served is not None:          # its coordinator restarts the node, catches it up and
        with served:                # records the event
            served.restore_node(args.name)
        row = api.node_row(args.cluster, args.name)
    else:
        row = api.restore_node(args.cluster, args.name)
    emit(args, {"restored": args.name, "address": row["address"], "pid": row["pid"]},
         f"restored {args.name} (pid {row['pid']}, {row['address']})")
    return 0


@command("heal",
         json='HealFigures (every field in engine/results.py)',
         help="re-replicate under-replicated blocks", cluster=True, args=[
    arg("--wait", action="store_true", help="until none is under-replicated")])
def heal(admin, args, bar) -> int:
    figures = admin.heal(wait=args.wait, progress=bar)
    relayed = (f" ({formats.count(figures.relayed)} through the coordinator:"
               f" {figures.relayed_why})" if figures.relayed else "")
    emit(args, figures, f"copied {formats.count(figures.copied)} blocks{relayed}, dropped"
         f" {formats.count(figures.dropped)}; {formats.count(figures.under_replicated)}"
         " under-replicated")
    return 0


# -- the console --------------------------------------------------------------------------------

@command("console", help="open the console on a pool or a cluster", opens=False,
         args=[arg("-p", "--pool", metavar="DIR", default=argparse.SUPPRESS,
                   help="the pool directory ($BLOCKFOLD_POOL)"),
               arg("-c", "--cluster", metavar="DIR", default=argparse.SUPPRESS,
                   help="the cluster directory"),
               arg("--read-only", action="store_true", help="hide destructive actions")])
def console(args) -> int:
    need_terminal()
    from .app import BlockfoldApp       # Textual loads only when a console opens
    # Engine work in threads holds the GIL in long stretches; a shorter switch interval hands
    # it back to the UI thread sooner, so keys are answered while an import or rebuild runs.
    sys.setswitchinterval(0.001)
    # A hangup or SIGTERM while it opens ends the open, releasing what it took (the lease).
    stage = _Stage()
    _quit_on_hangup(stage)
    # The open (a cluster's rebuild, thousands of VMs) can take a while: say so, with its phases.
    where = f"cluster {args.cluster}" if args.cluster else f"pool {pool_path(args)}"
    print(f"blockfold: opening {where} …", file=sys.stderr, flush=True)
    # A cluster's open rebuilds before it returns; a pool's goes on behind the first frame
    # (wait=False), where a bar on the terminal would draw over the console.
    bar = ProgressBar.if_terminal() if args.cluster else None
    # A console served over SSH logs its actions under the key's comment (engine/node).
    with console_admin(args, os.environ.get("BLOCKFOLD_ACTOR") or "console", bar) as admin:
        if bar:
            bar.close()
        stage.app = BlockfoldApp(admin, read_only=args.read_only)
        try:
            stage.app.run()
        finally:
            stage.closing = True
    return 0


@contextmanager
def console_admin(args, actor: str, progress=None):
    """What a console runs on: the service of the pool or cluster if one runs; else the pool or
    cluster opened here, served from this process for as long as the console is open (so CLIs
    go on working beside it). wait=False: the first frame comes at once while the RAM metadata
    is rebuilt behind it. `progress`: the open's rebuild reports, if given."""
    admin = open_admin(args, readonly=args.read_only, restrict=args.read_only, actor=actor,
                       wait=False, **({"progress": progress} if progress else {}))
    service = None
    try:
        if not admin.served and not args.read_only:
            admin.held_by("a console", command_line(), "quit it, or start `serve` first and"
                          " consoles go through it")
            service = api.Service(admin, args.cluster or pool_path(args), actor=actor)
            service.start_in_thread()
        yield service.admin if service is not None else admin
    finally:
        try:
            if service is not None:
                service.stop(f"the console serving {admin.kind} {admin.name} quit")
        finally:
            if service is not None:
                service.close()     # its Admin: this one, or the one that took its place
            else:
                admin.close()


def console_default(args) -> int:
    """`blockfold` alone: the console on $BLOCKFOLD_POOL, or on the default pool, made if new."""
    need_terminal()
    if not args.pool and not os.environ.get("BLOCKFOLD_POOL"):
        path = default_pool_path()
        if not path.exists():
            create_pool(path)
        args.pool = str(path)
    args.read_only = False
    return console(args)


def need_terminal() -> None:
    """Refuses to open a console without a terminal on stdin and stdout (a script, a pipe, a cron
    job): it waited for keys that never came, writing escape sequences. Raises UsageError."""
    missing = [name for name, stream in (("stdin", sys.stdin), ("stdout", sys.stdout))
               if stream is None or not stream.isatty()]
    if missing:
        raise UsageError(f"the console needs a terminal, but {' and '.join(missing)}"
                         f" {'is not one' if len(missing) == 1 else 'are not terminals'}: run"
                         " it in a terminal (ssh -t), or use the commands (blockfold --help)"
                         " in scripts")


class _Stage:
    """Where a console is in its life, for a signal: opening (no app yet), running, closing."""
    app = None
    closing = False


def _quit_on_hangup(stage: _Stage) -> None:
    """A lost terminal (an SSH client gone) or SIGTERM: while the pool or cluster opens, ends
    the open (KeyboardInterrupt: "interrupted", and what the open took, its write lease too, is
    released); once the app runs, quits it like `q`, so the cluster is closed cleanly and its
    write lease freed at once; while it closes, nothing more (the close frees the lease)."""
    import asyncio

    def quit_(signum, frame):
        if stage.closing:
            return
        if stage.app is None:
            raise KeyboardInterrupt
        try:
            asyncio.get_running_loop().call_soon_threadsafe(stage.app.exit)
        except RuntimeError:            # made, not running yet: leave, closing the cluster
            raise KeyboardInterrupt from None
    for sig in (signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, quit_)


@command("demo", help="start a demo cluster of 3 local nodes with data in it, and open the "
         "console on it; quitting stops the nodes",
         description="Starts 3 node processes on 127.0.0.1 (R=2) in a fresh directory, seeds a "
         "golden image and a dozen linked clones, opens the console on the cluster, and stops "
         "every node on quit.", opens=False, args=[
             arg("--dir", metavar="DIR", help="where the demo cluster lives (default: a new "
                 "temporary directory, removed on quit)")])
def demo(args) -> int:
    """A demo cluster: 3 local nodes, R=2, seeded; the console on it; every node stopped on quit."""
    import shutil
    import tempfile

    from . import demo as demo_data
    need_terminal()                 # before any node starts
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
        api.cluster_down(path, force=True)     # the nodes it started, whoever serves them
        if not args.dir:
            shutil.rmtree(path, ignore_errors=True)
