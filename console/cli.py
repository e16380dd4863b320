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

  blockfold cluster up /srv/cl --nodes 3 --replicas 2
  blockfold -c /srv/cl vm import golden golden.raw

The pool is -p DIR, or $BLOCKFOLD_POOL; a cluster is -c DIR.
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


def _listen_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"not HOST:PORT: {text!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _nbd_commands(sub) -> None:
    nbd = sub.add_parser("nbd", help="serve VM disks over NBD").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    serve = nbd.add_parser("serve", help="export every VM under its own name until SIGTERM",
                           description="export every VM under its own name until SIGTERM; "
                           "prints 'ready HOST:PORT' once listening")
    serve.add_argument("--listen", type=_listen_address, default=("127.0.0.1", 10809),
                       metavar="HOST:PORT", help="default 127.0.0.1:10809; port 0 picks a free one")
    serve.add_argument("--read-only", action="store_true", help="refuse writes and trims (EPERM)")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="blockfold", description="Blockfold: a deduplicating storage pool for "
               "virtual-desktop disk images.", epilog=EPILOG,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-p", "--pool", metavar="DIR", help="the pool directory ($BLOCKFOLD_POOL)")
    p.add_argument("-c", "--cluster", metavar="DIR",
                   help="run the command against the cluster in DIR (see `cluster up`)")
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
    _nbd_commands(sub)

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

    _cluster_commands(sub, cmd)

    con = sub.add_parser("console", help="open the console on a pool or a cluster")
    con.add_argument("-p", "--pool", metavar="DIR", default=argparse.SUPPRESS,
                     help="the pool directory ($BLOCKFOLD_POOL)")
    con.add_argument("-c", "--cluster", metavar="DIR", default=argparse.SUPPRESS,
                     help="the cluster directory")
    con.add_argument("--read-only", action="store_true", help="hide destructive actions")
    demo = sub.add_parser("demo", help="start a demo cluster of 3 local nodes with data in it, "
                          "and open the console on it; quitting stops the nodes",
                          description="Starts 3 node processes on 127.0.0.1 (R=2) in a fresh "
                          "directory, seeds a golden image and a dozen linked clones, opens the "
                          "console on the cluster, and stops every node on quit.")
    demo.add_argument("--dir", metavar="DIR", help="where the demo cluster lives (default: a new "
                      "temporary directory, removed on quit)")
    return p


def _cluster_commands(sub, cmd) -> None:
    cluster = sub.add_parser("cluster", help="create, start and stop a cluster of nodes"
                             ).add_subparsers(dest="action", metavar="ACTION")
    up = cmd(cluster, "up", "create a local cluster in DIR if new, and start its nodes")
    up.add_argument("dir", metavar="DIR")
    up.add_argument("--nodes", type=_positive, default=3, metavar="N")
    up.add_argument("--replicas", type=_positive, default=2, metavar="R",
                    help="copies of every block (default 2)")
    up.add_argument("--min-replicas", type=_positive, metavar="M",
                    help="refuse writes that would have fewer copies (default min(2, R))")
    up.add_argument("--memory", metavar="SIZE", help="keep each node's blocks in RAM, up to SIZE")
    up.add_argument("--block-size", type=_positive, default=4096, metavar="N")
    up.add_argument("--repair-delay", type=float, default=0.0, metavar="S",
                    help="seconds a block may stay under-replicated before heal (default 0)")
    down = cmd(cluster, "down", "stop the cluster's local nodes")
    down.add_argument("dir", metavar="DIR")
    add = cmd(cluster, "add", "join a node running elsewhere, pinning its host key now")
    add.add_argument("dir", metavar="DIR")
    add.add_argument("address", metavar="HOST:PORT")
    add.add_argument("--name", metavar="NAME")
    add.add_argument("--weight", type=float, default=1.0, metavar="W")

    node = sub.add_parser("node", help="serve a node; list, fail and restore a cluster's nodes"
                          ).add_subparsers(dest="action", metavar="ACTION")
    serve = node.add_parser("serve", help="run one node (an SSH server) in the foreground")
    serve.add_argument("--data", required=True, metavar="DIR")
    serve.add_argument("--listen", type=_listen_address, required=True, metavar="HOST:PORT",
                       help="port 0: any free")
    serve.add_argument("--memory", metavar="SIZE", help="keep blocks in RAM, up to SIZE")
    serve.add_argument("--block-size", type=_positive, metavar="N")
    serve.add_argument("--cluster", metavar="DIR",
                       help="serve the console on this cluster to the keys in DATA/admin_keys"
                            " (DATA/admin_keys_readonly: read-only) over SSH")
    cmd(node, "ls", "the nodes: state, latency, capacity, blocks")
    for name, text in (("fail", "make a node unreachable (kill its process)"),
                       ("restore", "bring a failed node back")):
        sp = cmd(node, name, text)
        sp.add_argument("name", metavar="NAME")
        if name == "fail":
            sp.add_argument("-y", "--yes", action="store_true",
                            help="do not ask for confirmation")
    heal = cmd(sub, "heal", "re-replicate under-replicated blocks")
    heal.add_argument("--wait", action="store_true", help="until none is under-replicated")


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
    if args.command == "demo":
        return commands.demo(args)
    if args.command in ("cluster", "node") and args.action is None:
        raise UsageError(f"{args.command} needs an action")
    if args.command == "cluster":
        return commands.cluster(args)
    if (args.command, getattr(args, "action", None)) == ("node", "serve"):
        return commands.node_serve(args)
    return commands.dispatch(args)

