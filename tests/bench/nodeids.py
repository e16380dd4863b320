"""How fast a node stores ids a peer picks: 100 PUTs of 64 blocks over SSH to one node, ids
counting up from 1 against random ids, ROUNDS times each on fresh nodes, the median and the
slowest counted. Ids counting up once all had home cell 0 of the node's index (13 s for these
PUTs); its cells now come from the id mixed with the table's seed.

Target: the PUTs of ids counting up within 5.0 s (a timed assert in
tests/cluster/test_node_bounds.py until 2026-12-02; the test now checks every id is stored).

    python -m tests.bench.nodeids [--data bench-data] [--rounds 3]
"""

from __future__ import annotations

import asyncio
import statistics

import asyncssh
import numpy as np

from engine import api
from engine.cluster.config import ClusterConfig
from engine.net import rpc

from .common import BLOCK, parser, report, scratch, timer, verdict

TARGET = 5.0
PUTS, IDS = 100, 64


async def puts(path, ids: np.ndarray) -> float:
    """Seconds of PUTs of IDS blocks each under `ids` (PUTS × IDS), one after another."""
    config = ClusterConfig.load(path)
    host, _, port = config.node("node1").address.rpartition(":")
    data = bytes([9]) * BLOCK * IDS
    async with asyncssh.connect(host, int(port), username="blockfold", known_hosts=None,
                                agent_path=None, config=None,
                                client_keys=[str(config.admin_key)]) as conn:
        writer, reader, _ = await conn.open_session(subsystem=rpc.SUBSYSTEM, encoding=None)
        with timer() as t:
            for k in range(PUTS):
                chunk = ids[k * IDS:(k + 1) * IDS].astype("<u8").tobytes()
                writer.write(rpc.encode(rpc.PUT, 1, {"n": IDS}, chunk + data))
                kind, _, n = rpc.parse_header(await reader.readexactly(rpc.HEADER.size))
                await reader.readexactly(n)
                if kind != rpc.REPLY:
                    raise SystemExit("a PUT was refused")
        return t()


def main(argv=None) -> None:
    p = parser(__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="runs of each kind (default 3)")
    args = p.parse_args(argv)
    work = scratch(args.data, "nodeids")
    rng = np.random.default_rng(1)
    kinds = {"counting": lambda: np.arange(1, PUTS * IDS + 1, dtype=np.uint64),
             "random": lambda: rng.integers(1, 2**63, PUTS * IDS, dtype=np.uint64)}
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    for k in range(args.rounds):
        for kind, ids in kinds.items():
            path = work / f"{kind}{k}"
            api.cluster_up(path, nodes=1, replicas=1, min_replicas=1, etcd="none")
            try:
                times[kind].append(asyncio.run(puts(path, ids())))
            finally:
                api.cluster_down(path, force=True)
    s = {kind: {"median_s": round(statistics.median(v), 3), "max_s": round(max(v), 3)}
         for kind, v in times.items()}
    figures = {"rounds": args.rounds, "puts": PUTS, "ids_per_put": IDS,
               "counting_s": s["counting"], "random_s": s["random"], "target_s": TARGET,
               "verdict": verdict(s["counting"]["max_s"], TARGET, higher_is_better=False)}
    rows = [("ids", "median", "slowest", "target", "verdict"),
            ("counting up from 1", f"{s['counting']['median_s']:.2f} s",
             f"{s['counting']['max_s']:.2f} s", f"<= {TARGET:.1f} s", figures["verdict"]),
            ("random", f"{s['random']['median_s']:.2f} s", f"{s['random']['max_s']:.2f} s",
             "", "")]
    report("nodeids", f"{PUTS} PUTs of {IDS} blocks to one node over SSH, {args.rounds} rounds",
           rows, figures)


if __name__ == "__main__":
    main()
