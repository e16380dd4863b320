"""The `blockfold` command: scriptable pool administration, and the console's front door.

Exit codes: 0 success, 1 runtime error, 2 usage error. Errors are one line on stderr.
Textual is imported only when a console opens, so scripted commands start fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

EPILOG = """\
examples:
  blockfold pool init /srv/pool
  blockfold -p /srv/pool vm import golden golden.raw
  blockfold -p /srv/pool vm clone golden desk --count 100
  blockfold -p /srv/pool stats --json
  blockfold                      open the console on the default pool

The pool is -p DIR, or $BLOCKFOLD_POOL.
"""


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        print(f"blockfold: error: {message}", file=sys.stderr)
        sys.exit(2)


def _nonnegative(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text}")
    return value


def _positive(text: str) -> int:
    value = _nonnegative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="blockfold", description="Blockfold: a deduplicating storage pool for "
               "virtual-desktop disk images.", epilog=EPILOG,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-p", "--pool", metavar="DIR", help="the pool directory ($BLOCKFOLD_POOL)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def cmd(parent, name, help, **kw):
        sp = parent.add_parser(name, help=help, description=help, **kw)
        sp.add_argument("--json", action="store_true", help="print machine-readable JSON")
        return sp

    pool = sub.add_parser("pool", help="create pools").add_subparsers(dest="action",
                                                                       metavar="ACTION")
    init = cmd(pool, "init", "create an empty pool in DIR")
    init.add_argument("dir", metavar="DIR")
    init.add_argument("--block-size", type=_positive, default=4096, metavar="N",
                      help="block size in bytes: a power of two from 4096 to 65536 (default 4096)")

    vm = sub.add_parser("vm", help="import, export, write, clone, delete and list VMs"
                        ).add_subparsers(dest="action", metavar="ACTION")
    imp = cmd(vm, "import", "import a raw disk image as a new VM (holes and zeros take no space)")
    imp.add_argument("name", metavar="NAME")
    imp.add_argument("image", metavar="IMAGE", help="a raw image file, or - for stdin")
    exp = cmd(vm, "export", "write a VM out byte for byte (sparse where it has holes)")
    exp.add_argument("name", metavar="NAME")
    exp.add_argument("out", metavar="OUT", help="a file, or - for stdout")
    wr = cmd(vm, "write", "write a file's bytes into a VM at an offset")
    wr.add_argument("name", metavar="NAME")
    wr.add_argument("--offset", type=_nonnegative, required=True, metavar="N",
                    help="byte offset in the VM")
    wr.add_argument("file", metavar="FILE", help="the bytes to write, or - for stdin")
    cl = cmd(vm, "clone", "make linked clones of a VM: O(1) each, whatever its size")
    cl.add_argument("source", metavar="SRC")
    cl.add_argument("new", metavar="NEW")
    cl.add_argument("--count", type=_positive, default=1, metavar="K",
                    help="make K clones named NEW-1 … NEW-K in one transaction")
    rm = cmd(vm, "rm", "delete a VM and free what only it referenced")
    rm.add_argument("name", metavar="NAME")
    rm.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    cmd(vm, "ls", "list VMs with their size, logical, unique and shared blocks and chain depth")

    cmd(sub, "stats", "pool-wide figures: logical and physical bytes, dedup ratio, refcounts")
    blocks = cmd(sub, "blocks", "the block table: one row per physical block")
    blocks.add_argument("--vm", metavar="NAME", help="only blocks this VM reads")
    blocks.add_argument("--limit", type=_nonnegative, default=50, metavar="N",
                        help="at most N rows (default 50)")
    blocks.add_argument("--offset", type=_nonnegative, default=0, metavar="N",
                        help="skip the first N rows")
    blocks.add_argument("--min-refs", type=_nonnegative, metavar="N")
    blocks.add_argument("--max-refs", type=_nonnegative, metavar="N")
    blocks.add_argument("--prefix", metavar="HEX", help="fingerprints starting with HEX")
    rb = cmd(sub, "rebuild", "rebuild the RAM dedup metadata and print its figures")
    rb.add_argument("--full", action="store_true",
                    help="re-read and re-hash every block, reporting corrupt ones")
    cmd(sub, "fsck", "check every promise the pool makes; exit 1 if any is broken")

    con = sub.add_parser("console", help="open the console on a pool")
    con.add_argument("-p", "--pool", metavar="DIR", default=argparse.SUPPRESS,
                     help="the pool directory ($BLOCKFOLD_POOL)")
    con.add_argument("--read-only", action="store_true", help="hide destructive actions")
    return p


def pool_path(args) -> str:
    path = args.pool or os.environ.get("BLOCKFOLD_POOL")
    if not path:
        raise UsageError("no pool given: use -p DIR or set BLOCKFOLD_POOL")
    return path


def emit(args, data, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UsageError as e:
        print(f"blockfold: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("blockfold: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except Exception as e:     # noqa: BLE001 - one clear line, never a traceback
        from engine.api import BlockfoldError
        if isinstance(e, BlockfoldError):
            print(f"blockfold: error: {e}", file=sys.stderr)
        elif isinstance(e, OSError):
            print(f"blockfold: error: {e.strerror or e}"
                  f"{': ' + str(e.filename) if e.filename else ''}", file=sys.stderr)
        else:
            print(f"blockfold: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


def run(args) -> int:
    from . import commands
    if args.command is None:
        return commands.console_default(args)
    if args.command == "pool":
        if args.action != "init":
            raise UsageError("pool needs an action: init")
        return commands.pool_init(args)
    if args.command == "vm" and args.action is None:
        raise UsageError("vm needs an action: import, export, write, clone, rm or ls")
    if args.command == "console":
        return commands.console(args)
    return commands.dispatch(args)

