"""`python -m engine.node --data DIR --listen HOST:PORT`: how `cluster up` starts a local node.

The same as `blockfold node serve` without the console package; prints `ready HOST:PORT` once
listening, and an error as one line on stderr (the node's log) with exit status 1 (2: usage).
"""

from __future__ import annotations

import argparse
import sys

from ..errors import BlockfoldError
from ..options import listen_address, positive, size
from .server import run


def _ready(host: str, port: int) -> None:
    print(f"ready {f'[{host}]' if ':' in host else host}:{port}", flush=True)


def main() -> int:
    # The values `blockfold node serve` takes, checked alike (engine.options): --memory 0 and
    # --block-size 0 read as none (a node on disk, of the default block size).
    parser = argparse.ArgumentParser(prog="python -m engine.node")
    parser.add_argument("--data", required=True)
    parser.add_argument("--listen", required=True, type=listen_address)
    parser.add_argument("--memory", type=size)
    parser.add_argument("--block-size", type=positive)
    parser.add_argument("--cluster")
    parser.add_argument("--etcd", help="client URLs of the cluster's etcd, comma-separated")
    parser.add_argument("--etcd-prefix", help="the cluster's keys there: /blockfold/ID/")
    a = parser.parse_args()
    if bool(a.etcd) != bool(a.etcd_prefix):
        parser.error("give --etcd and --etcd-prefix together")
    try:
        etcd = (a.etcd.split(","), a.etcd_prefix) if a.etcd else None
        run(a.data, *a.listen, a.memory, a.block_size, a.cluster, ready=_ready, etcd=etcd)
    except (BlockfoldError, OSError) as e:
        print(f"blockfold: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
