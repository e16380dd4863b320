"""The `blockfold` command: scriptable pool administration, and the console's front door.

The parser, the dispatch and the read-only and cluster rules all come from the declarations in
console/commands.py. Exit codes: 0 success, 1 runtime error, 2 usage error. Errors are one line on
stderr. Textual is imported only when a console opens, so scripted commands start fast.
"""

from __future__ import annotations

import argparse
import sys

from engine.api import BlockfoldError

from . import commands
from .command import Command, UsageError
from .progressbar import ProgressBar

EPILOG = """\
examples:
  blockfold pool init /srv/pool
  blockfold -p /srv/pool vm import golden golden.raw
  blockfold -p /srv/pool vm clone golden desk --count 100
  blockfold -p /srv/pool stats --json
  blockfold                      open the console on the default pool

  blockfold cluster up /srv/cl --nodes 3 --replicas 2
  blockfold -c /srv/cl vm import golden golden.raw

The pool is -p DIR, or $BLOCKFOLD_POOL, or the console's default pool
($XDG_DATA_HOME/blockfold/pool); a cluster is -c DIR. -p, -c and --service may stand anywhere
on the line. When a service runs on it (`blockfold serve`), every command goes through it.
"""


class Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        print(f"blockfold: error: {message}", file=sys.stderr)
        sys.exit(2)


GLOBAL_VALUES = {"-p", "--pool", "-c", "--cluster", "--service"}   # global options with a value


def hoisted(argv: list[str]) -> list[str]:
    """`argv` with the global options (-p, -c, --service and their values) moved to the front,
    wherever they stood (up to a `--`), so that `blockfold vm ls -p DIR` works too."""
    front, rest = [], []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            rest += argv[i:]
            break
        name = token.split("=", 1)[0]
        if token in GLOBAL_VALUES and i + 1 < len(argv):
            front += argv[i:i + 2]
            i += 2
            continue
        if name in GLOBAL_VALUES and name.startswith("--") and "=" in token:
            front.append(token)
        else:
            rest.append(token)
        i += 1
    return front + rest


def named(argv: list[str]) -> list[Command]:
    """The declarations of the command `argv` names (every command of a group named alone);
    all of them when it names none we know (--help, a typo: they are all listed then)."""
    words: list[str] = []
    tokens = iter(argv)
    for token in tokens:
        if token in GLOBAL_VALUES:
            next(tokens, None)
        elif token.startswith("-"):
            if words:
                break
        else:
            words.append(token)
            if token not in commands.GROUPS or len(words) == 2:
                break
    found = [c for c in commands.COMMANDS if words and list(c.words[:len(words)]) == words]
    return found or commands.COMMANDS


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser of `blockfold`; given `argv`, only of the command it names (every parser
    costs a few gettext lookups on disk: all of them would cost more than the rest of a command
    a service answers)."""
    p = Parser(prog="blockfold", description="Blockfold: a deduplicating storage pool for "
               "virtual-desktop disk images.", epilog=EPILOG,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action=VersionAction)
    p.add_argument("-p", "--pool", metavar="DIR", type=given_path,
                   help="the pool directory ($BLOCKFOLD_POOL; default"
                   " $XDG_DATA_HOME/blockfold/pool)")
    p.add_argument("-c", "--cluster", metavar="DIR", type=given_path,
                   help="run the command against the cluster in DIR (see `cluster up`)")
    p.add_argument("--service", metavar="URL",
                   help="run the command through the service behind a node's SSH admin"
                        " subsystem: ssh://USER@HOST:PORT (your SSH key and known_hosts)")
    top = p.add_subparsers(metavar="COMMAND")
    groups = {}     # first word -> its subparsers
    for cmd in commands.COMMANDS if argv is None else named(argv):
        *group, word = cmd.words
        parent = top
        if group:
            if group[0] not in groups:
                gp = top.add_parser(group[0], help=commands.GROUPS[group[0]])
                gp.set_defaults(group=group[0])
                groups[group[0]] = gp.add_subparsers(metavar="ACTION")
            parent = groups[group[0]]
        sp = parent.add_parser(word, help=cmd.help, description=cmd.description or cmd.help)
        if cmd.json:
            sp.add_argument("--json", action="store_true", help=f"print JSON: {cmd.json}")
        for a in cmd.args:
            sp.add_argument(*a.flags, **a.options)
        sp.set_defaults(declared=cmd)
    return p


def given_path(text: str) -> str:
    """A -p or -c value. An empty one (`-p "$POOL"` with POOL unset) is a usage error: taken as
    no value, it sent the command to the default pool instead."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path: give a directory")
    return text


class VersionAction(argparse.Action):
    """argparse's "version" action with the version looked up only when --version is given:
    importlib.metadata costs 35 ms of CPU, a sixth of a whole `vm ls`."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help="show program's version number and exit"):
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"blockfold {version()}")
        parser.exit()


def version() -> str:
    from importlib.metadata import PackageNotFoundError, version as installed
    try:
        return installed("blockfold")
    except PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    argv = hoisted(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
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
    except BlockfoldError as e:
        print(f"blockfold: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"blockfold: error: {e.strerror or e}"
              f"{': ' + str(e.filename) if e.filename else ''}", file=sys.stderr)
        return 1
    except Exception as e:     # noqa: BLE001 - one clear line, never a traceback
        print(f"blockfold: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


def run(args) -> int:
    cmd: Command | None = getattr(args, "declared", None)
    if cmd is None:
        group = getattr(args, "group", None)
        if group is None:
            return commands.console_default(args)
        actions = [c.words[1] for c in commands.COMMANDS if c.words[0] == group]
        raise UsageError(f"{group} needs an action: {', '.join(actions[:-1])} or {actions[-1]}"
                         if len(actions) > 1 else f"{group} needs an action: {actions[0]}")
    if getattr(args, "pool", None) and getattr(args, "cluster", None):
        # -c used to win silently: a command meant for the pool went to the cluster.
        raise UsageError("give -p (a pool) or -c (a cluster), not both")
    if cmd.cluster and not (args.cluster or args.service):
        raise UsageError(f"{' '.join(cmd.words)} needs a cluster: use -c DIR")
    if not cmd.opens:
        return cmd.run(args)
    bar = args.progress = ProgressBar.if_terminal()
    try:
        rebuild = None
        if cmd.rebuilds:
            rebuild = "repair" if args.repair else ("full" if args.full else "fast")
            if args.repair and not args.full:
                raise UsageError("--repair needs --full: it re-reads every block")
        with commands.open_admin(args, readonly=cmd.looks, rebuild=rebuild,
                                 progress=bar if cmd.rebuilds else None) as admin:
            if cmd.rebuilds and admin.served:     # a service rebuilds what it holds, when asked
                if rebuild == "repair":
                    raise BlockfoldError("rebuild --repair needs the pool to itself: stop "
                                         "its service first")
                admin.rebuild(rebuild == "full", bar)
            return cmd.run(admin, args, bar)
    finally:
        if bar:
            bar.close()
