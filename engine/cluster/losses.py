"""Which nodes lost which copies, and why: what a read of a block with no copy left says.

A node that restarts loses what it had not made durable (a RAM node: everything). Two ways of
finding it: a commit's SYNC names another incarnation than the PUTs did (the node restarted
before the blocks were durable: engine.cluster.blocks), and a returning node's inventory lacks
copies the row map credited it with (it came back without them: engine.cluster.inventory). The
row map then credits nobody with the block; this record says who lost it. Ids are kept per node,
sorted: 8 bytes each, bounded by what the node held. A block mended (written again or healed to R
copies) or no longer referenced (trimmed, its writes dropped) is forgotten (ClusterBlocks), so a
later loss of it is told as that one, and a commit stops checking for lost blocks once none is.
"""

from __future__ import annotations

import numpy as np

BEFORE_DURABLE = "restarted before it was made durable"
CAME_BACK_WITHOUT = "came back without it"


class LostCopies:
    def __init__(self):
        self._lost: dict[str, dict[int, np.ndarray]] = {BEFORE_DURABLE: {}, CAME_BACK_WITHOUT: {}}

    def note(self, why: str, node: int, ids: np.ndarray) -> None:
        """`node` lost its copies of `ids` (BEFORE_DURABLE or CAME_BACK_WITHOUT)."""
        if len(ids):
            kept = self._lost[why]
            kept[node] = np.union1d(kept.get(node, np.zeros(0, np.uint64)),
                                    np.asarray(ids, np.uint64))

    def ids(self) -> np.ndarray:
        """Every id some node lost, ascending."""
        kept = [ids for nodes in self._lost.values() for ids in nodes.values()]
        return np.unique(np.concatenate(kept)) if kept else np.zeros(0, np.uint64)

    def forget(self, ids: np.ndarray) -> None:
        """Who lost `ids` is no longer told (they were mended, or are referenced no more)."""
        if not len(ids):
            return
        for kept in self._lost.values():
            for node in list(kept):
                left = np.setdiff1d(kept[node], ids, assume_unique=True)
                if len(left):
                    kept[node] = left
                else:
                    del kept[node]

    def __bool__(self) -> bool:
        return any(self._lost.values())

    def why(self, block_id: int, names: list[str]) -> str:
        """Why no node holds `block_id`: "its copies were lost: nodes node1, node2 restarted
        before it was made durable" (`names`: the nodes' names, by index)."""
        for why, kept in self._lost.items():
            nodes = [names[n] for n, ids in sorted(kept.items()) if _has(ids, block_id)]
            if nodes:
                which = "nodes " if len(nodes) > 1 else "node "
                return f"its copies were lost: {which}{', '.join(nodes)} {why}"
        return "no node holds a copy of it (its copies were lost)"


def _has(ids: np.ndarray, block_id: int) -> bool:
    at = int(np.searchsorted(ids, np.uint64(block_id)))
    return at < len(ids) and int(ids[at]) == block_id
