"""`python -m engine.node --data DIR --listen HOST:PORT`: how `cluster up` starts a local node.

The same as `blockfold node serve` without the console package; prints `ready HOST:PORT` once
listening, and an error as one line on stderr (the node's log) with exit status 1 (2: usage).
"""

from __future__ import annotations

import argparse
import sys

from ..errors import BlockfoldError
from ..formats import parse_size
from .server import run


def _listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"not HOST:PORT: {text!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _memory(text: str) -> int:
    """--memory: a size above 0 (0 would quietly keep blocks on disk)."""
    try:
        value = parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0: {text}")
    return value


def _ready(host: str, port: int) -> None:
    print(f"ready {f'[{host}]' if ':' in host else host}:{port}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.node")
    parser.add_argument("--data", required=True)
    parser.add_argument("--listen", required=True, type=_listen)
    parser.add_argument("--memory", type=_memory)
    parser.add_argument("--block-size", type=int)
    parser.add_argument("--cluster")
    parser.add_argument("--etcd", help="client URLs of the cluster's etcd, comma-separated")
    parser.add_argument("--etcd-prefix", help="the cluster's keys there: /blockfold/ID/")
    a = parser.parse_args()
    try:
        etcd = (a.etcd.split(","), a.etcd_prefix) if a.etcd else None
        run(a.data, *a.listen, a.memory, a.block_size, a.cluster, ready=_ready, etcd=etcd)
    except (BlockfoldError, OSError) as e:
        print(f"blockfold: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
