"""Scale, in simulation: the real placement code over 100 weighted nodes and tens of millions of
block ids, and what a cluster of that size costs per node at 1 PB logical.

    python -m tests.bench.scale [--nodes 100] [--ids 20000000] [--replicas 3] [--data DIR]

Reports:
  balance       copies per unit of weight on each node (engine.cluster.placement.targets, every
                node up), max / mean over the nodes: target <= 1.05 (issue 14)
  heal traffic  one node lost (the heaviest): which blocks move, from which nodes to which. Only
                blocks the lost node held may move (rendezvous hashing moves nothing else); each
                is read from its first surviving holder in placement order, as heal.py's reads
                do, and written to the node that takes the lost node's place
  RAM           per TiB of unique data: the native core's measured bytes per block (a real pool's
                stats(), after writing unique data) for whoever holds a pool's index of every
                block; a node's own index (engine.index.FingerprintIndex as NodeStore sizes it,
                plus its 16-byte slot record) per TiB of copies it holds
  catalog       per node at 1 PB logical: the bytes per logical block of a real pool's catalog
                after writing unique data, times the logical blocks; every node keeps a whole
                replica today (engine.cluster.catalog)

Figures scale from the simulated ids to 1 PB logical with the dedup ratio given (--dedup, VDI
default 10: 100 TB unique).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from engine.cluster import placement
from engine.index import FingerprintIndex
from engine.options import positive
from engine.pool import Pool

from .common import BLOCK, MiB, report, verdict

TARGET = 1.05
PB, TiB = 10 ** 15, 1 << 40
CHUNK = 200_000                    # ids per placement call: 200 k x 100 nodes of float64 scores


def node_weights(n: int) -> np.ndarray:
    """A farm of mixed servers: a third of weight 1, a third 2, a third 4 (capacity in units)."""
    return np.array([(1, 2, 4)[i % 3] for i in range(n)], dtype=np.float64)


def simulate(nodes: int, ids: int, replicas: int, seed: int) -> dict:
    names = [f"node{i + 1}" for i in range(nodes)]
    seeds = np.array([placement.node_seed(x) for x in names], dtype=np.uint64)
    weights = node_weights(nodes)
    up = np.ones(nodes, bool)
    lost = int(np.argmax(weights))
    down = up.copy()
    down[lost] = False
    held = np.zeros(nodes, np.int64)
    sent = np.zeros(nodes, np.int64)
    taken = np.zeros(nodes, np.int64)
    moved = others_moved = 0
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    for start in range(0, ids, CHUNK):
        block_ids = rng.integers(1, 2 ** 63, size=min(CHUNK, ids - start), dtype=np.uint64)
        order = placement.ranking(block_ids, seeds, weights)
        before = placement.targets(block_ids, seeds, weights, up, replicas, order)
        after = placement.targets(block_ids, seeds, weights, down, replicas, order)
        held += before.sum(axis=0)
        hit = before[:, lost]
        others_moved += int((before[~hit] != after[~hit]).any(axis=1).sum())
        gain = after[hit] & ~before[hit]
        moved += int(gain.sum())
        taken += gain.sum(axis=0)
        # The source: the first surviving holder in placement order.
        order = order[hit]
        holders = np.take_along_axis(before[hit] & down[None, :], order, axis=1)
        source = order[np.arange(len(order)), holders.argmax(axis=1)]
        np.add.at(sent, source, 1)
    seconds = time.perf_counter() - started
    per_weight = held / weights
    senders, takers = sent[sent > 0], taken[taken > 0]
    return {
        "nodes": nodes, "ids": ids, "replicas": replicas, "seconds": round(seconds, 1),
        "balance": round(float(per_weight.max() / per_weight.mean()), 4),
        "balance_min": round(float(per_weight.min() / per_weight.mean()), 4),
        "lost_node": names[lost], "lost_weight": float(weights[lost]),
        "lost_held": int(held[lost]), "moved_copies": moved,
        "moved_other_blocks": others_moved,
        "senders": len(senders),
        "sent_max_over_mean": round(float(senders.max() / senders.mean()), 3),
        "takers": len(takers),
        "taken_max_over_mean": round(float(takers.max() / takers.mean()), 3),
        "held_share": (held / held.sum()).tolist(), "weights": weights.tolist(),
    }


def measured_costs(mib: int) -> dict:
    """A real pool written with `mib` MiB of unique data: the native core's RAM per block, and
    catalog bytes per logical block; a node's index bytes per block."""
    where = Path(tempfile.mkdtemp(prefix="blockfold-scale-"))
    try:
        Pool.create(where / "pool")
        rng = np.random.default_rng(3)
        with Pool.open(where / "pool") as pool:
            pool.create_vm("unique", mib * MiB)
            for off in range(0, mib * MiB, 2 * MiB):     # an odd count's last write: 1 MiB
                pool.write("unique", off, rng.bytes(min(2 * MiB, mib * MiB - off)))
            core = pool.stats()["metadata_ram_bytes_per_block"]
        catalog = sum(p.stat().st_size for p in (where / "pool").glob("catalog*"))
    finally:
        shutil.rmtree(where, ignore_errors=True)
    n = 1_000_000
    index = FingerprintIndex(int(n / 0.5) + 1)      # as NodeStore sizes it for n blocks held
    return {"core_bytes_per_block": round(float(core), 2),
            "catalog_bytes_per_logical_block": round(catalog / (mib * MiB // BLOCK), 2),
            "node_bytes_per_block": round(index.nbytes / n + 16, 2)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=100)
    p.add_argument("--ids", type=int, default=20_000_000, help="block ids simulated")
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--dedup", type=float, default=10.0,
                   help="logical / unique at 1 PB (VDI: 10)")
    p.add_argument("--real-mib", type=positive, default=64,
                   help="unique data written to the real pool measured, MiB")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)
    sim = simulate(a.nodes, a.ids, a.replicas, a.seed)
    cost = measured_costs(a.real_mib)

    unique = PB / a.dedup
    copies_per_weight = unique * a.replicas / sum(sim["weights"])
    heaviest = max(sim["weights"])
    held_tib = copies_per_weight * heaviest / TiB         # on the heaviest node
    blocks_per_tib = TiB // BLOCK
    logical_blocks = PB // BLOCK
    lost_bytes = copies_per_weight * sim["lost_weight"]
    figures = {
        **{k: v for k, v in sim.items() if k not in ("held_share", "weights")}, **cost,
        "unique_bytes_at_1pb": unique,
        "core_ram_per_tib_unique": cost["core_bytes_per_block"] * blocks_per_tib,
        "node_ram_per_tib_held": cost["node_bytes_per_block"] * blocks_per_tib,
        "heaviest_node_tib_held": round(held_tib, 1),
        "heaviest_node_ram": cost["node_bytes_per_block"] * blocks_per_tib * held_tib,
        "heal_bytes_after_loss": lost_bytes,
        "catalog_per_node_at_1pb": cost["catalog_bytes_per_logical_block"] * logical_blocks,
        "catalog_per_node_at_1pb_if_on_r_nodes": (cost["catalog_bytes_per_logical_block"]
                                                  * logical_blocks * a.replicas / a.nodes),
    }
    g = 1 << 30
    rows = [
        ("figure", "value", "note"),
        ("nodes x ids x R", f"{a.nodes} x {a.ids:,} x {a.replicas}",
         f"weights 1/2/4, {sim['seconds']} s of placement"),
        ("balance (max/mean)", f"{sim['balance']:.4f}",
         f"copies per unit weight; min/mean {sim['balance_min']:.4f}; "
         + verdict(sim["balance"], TARGET, higher_is_better=False)),
        ("lost node", f"{sim['lost_node']} (weight {sim['lost_weight']:.0f})",
         f"held {sim['lost_held']:,} copies"),
        ("copies moved", f"{sim['moved_copies']:,}",
         f"blocks not on the lost node moved: {sim['moved_other_blocks']}"),
        ("heal senders", f"{sim['senders']} nodes", f"max/mean sent {sim['sent_max_over_mean']}"),
        ("heal receivers", f"{sim['takers']} nodes",
         f"max/mean taken {sim['taken_max_over_mean']}"),
        ("heal bytes at 1 PB", f"{lost_bytes / TiB:,.1f} TiB",
         f"the lost node's copies, dedup {a.dedup:g}:1, R={a.replicas}"),
        ("core RAM / block", f"{cost['core_bytes_per_block']} B",
         f"{figures['core_ram_per_tib_unique'] / g:.2f} GiB per TiB unique"),
        ("node RAM / block", f"{cost['node_bytes_per_block']} B",
         f"{figures['node_ram_per_tib_held'] / g:.2f} GiB per TiB held; heaviest node "
         f"{held_tib:.1f} TiB -> {figures['heaviest_node_ram'] / g:.1f} GiB"),
        ("catalog / logical block", f"{cost['catalog_bytes_per_logical_block']} B",
         "a real pool's catalog files after unique writes"),
        ("catalog per node, 1 PB", f"{figures['catalog_per_node_at_1pb'] / TiB:,.2f} TiB",
         "whole replica on every node (today); "
         f"{figures['catalog_per_node_at_1pb_if_on_r_nodes'] / TiB:,.3f} TiB if on R nodes"),
    ]
    report("scale", "Scale: placement at 100 weighted nodes, costs at 1 PB logical", rows,
           figures)


if __name__ == "__main__":
    main()
