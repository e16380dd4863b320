"""The cluster's fsck: the promises of its block layer, each broken one reported (engine.fsck).

- every referenced id has a row, and its refcount equals its references in the block tables;
  no row is counted that nothing references
- every node holds what the row map says it holds, and every copy it holds still hashes to its
  fingerprint (the node scrubs itself)
- every live id has a copy (else it is lost, and counted), a reachable one, and R of them
  (else: run heal)

At most MAX_SHOWN problems of a kind are reported per check: one broken promise is usually
thousands of blocks.
"""

from __future__ import annotations

import numpy as np

from .. import formats
from ..progress import Meter
from .copies import Copies
from .rowmap import RowMap

MAX_SHOWN = 10


def check(members, rows: RowMap, copies: Copies, replicas: int, references: np.ndarray,
          report, progress, why_lost) -> None:
    """Checks the row map against `references` (every table entry) and the nodes against the
    row map; calls report(kind, message, **where) for each problem found. `why_lost(id)`: why
    no node holds a copy of it (engine.cluster.losses)."""
    with rows.lock:
        ids, counts = np.unique(references, return_counts=True)
        at = rows.rows_of(ids)
        for block_id in ids[at == 0][:MAX_SHOWN].tolist():
            report("reference", f"block {block_id:016x} is referenced but unknown", pbn=block_id)
        have = rows.refcounts_at(at).astype(np.int64)
        for j in np.flatnonzero((have != counts) & (at != 0)).tolist():
            report("refcount", f"block {int(ids[j]):016x} has refcount {have[j]} but"
                   f" {counts[j]} references", pbn=int(ids[j]))
        live = rows.live_rows()
        live_ids = rows.ids_at(live)
        for block_id in live_ids[~np.isin(live_ids, ids)][:MAX_SHOWN].tolist():
            report("refcount", f"block {block_id:016x} is counted but not referenced",
                   pbn=block_id)
        held = rows.holders_at(live)
    # The nodes are asked without the lock: the copies taken above are what is checked.
    up = members.up_mask()
    names = members.names()
    meter = Meter(progress, "fsck", len(members.nodes))
    for node in range(len(members.nodes)):
        meter.advance()
        if not up[node]:
            continue
        inv = copies.inventory(node)
        if inv is None:
            continue
        claimed = live_ids[held[:, node]]
        absent = claimed[~np.isin(claimed, inv[0])]
        for block_id in absent[:MAX_SHOWN].tolist():
            report("replica", f"node {names[node]} should hold block {block_id:016x} but does"
                   " not", pbn=block_id, node=names[node])
        for block_id in copies.scrub(node)[:MAX_SHOWN].tolist():
            report("corrupt", f"node {names[node]}: block {block_id:016x} no longer matches its"
                   " hash", pbn=block_id, node=names[node])
    meter.finish()
    # No copy on any node, up or not: lost, and counted; no reachable copy: its nodes are down.
    lost = ~held.any(axis=1)
    for block_id in live_ids[lost][:MAX_SHOWN].tolist():
        report("lost", f"block {block_id:016x} has no copy left: {why_lost(block_id)}",
               pbn=block_id)
    if lost.sum() > MAX_SHOWN:
        report("lost", f"{formats.count(int(lost.sum()))} blocks in all have no copy left on any"
               " node")
    reachable = (held & up[None, :]).sum(axis=1)
    for block_id in live_ids[(reachable == 0) & ~lost][:MAX_SHOWN].tolist():
        report("missing", f"block {block_id:016x} has no reachable copy: its nodes are down",
               pbn=block_id)
    short = np.count_nonzero((reachable > 0) & (reachable < replicas))
    if short:
        report("replication", f"{formats.count(short)} blocks have fewer than {replicas}"
               " reachable copies: run heal")
