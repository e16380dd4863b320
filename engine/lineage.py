"""Catalog replica versions that cannot repeat: (epoch, counter) and the lineage behind them.

A writable cluster open takes a new epoch, promised by a majority of the configured nodes (each
promises only an epoch above every one it promised before), so no two writers ever share one.
Its commits count on from the counter it loaded: version (epoch, counter). A replica's lineage is
the list of [epoch, start] pairs it went through: epoch `e` took the catalog on from counter
`start`. Two replicas at the same counter from different epochs are different catalogs; a
replica may be replaced only by one whose lineage runs through it (`descends`).

The epoch scheme is Paxos's ballot numbers (Lamport, "Paxos Made Simple", 2001) and Raft's terms
(Ongaro & Ousterhout, 2014, section 5.1): a majority promise, then writes under it.
"""

from __future__ import annotations

MAX_ENTRIES = 256       # a lineage keeps its latest epochs; older replicas are never installed over


def descends(lineage: list[list[int]], epoch: int, counter: int) -> bool:
    """Whether the replica at (epoch, counter) lies on `lineage` (a list of [epoch, start]):
    epoch e's segment covers counters start..(the next epoch's start). An empty replica (counter
    0) lies on every lineage. An epoch the lineage no longer lists is not on it."""
    if counter == 0:
        return True
    for k, (e, start) in enumerate(lineage):
        if e == epoch:
            end = lineage[k + 1][1] if k + 1 < len(lineage) else counter
            return start <= counter <= end
    return False


def extend(lineage: list[list[int]], epoch: int, start: int) -> list[list[int]]:
    """The lineage once `epoch` commits on top of counter `start` (unchanged if it is already
    the last epoch)."""
    if lineage and lineage[-1][0] == epoch:
        return lineage
    return [*lineage, [epoch, start]][-MAX_ENTRIES:]


def majority(nodes: int) -> int:
    """How many of `nodes` configured nodes make a majority."""
    return nodes // 2 + 1
