"""fsck: check every promise the pool makes about its own state, and report each problem.

Here, the layer graph and the catalog (rows that make no graph, a missing top or parent or a
cycle, refuse the open already: LayerGraph.unsound):
- every writable top is one VM's alone, and no layer reads through it; no layer that nothing
  reads through (snapshots and the golden states kept for a refresh aside); no block-table page
  of a layer that is gone
The block layer's own promises are checked by the core over one consistent state (native
check.rs for a local pool; a cluster's block layer through it, engine/cluster/check.py):
- refcounts equal the references in the block tables
- no slot is both free and live, none is lost (unreferenced yet not free), and no table points
  past the end of the data file
- every live block's bytes still hash to its stored fingerprint
"""

from __future__ import annotations

from . import _native
from .core import engine_error
from .progress import core_callback

MAX_REPORTED = 50


class Problems:
    """Problem dicts ({"kind", "message", and where: pbn, layer, vm, node}), at most
    MAX_REPORTED of each kind: one broken promise is often thousands of blocks."""

    def __init__(self):
        self.found: list[dict] = []
        self._counts: dict[str, int] = {}

    def report(self, kind: str, message: str, **where) -> None:
        n = self._counts.get(kind, 0)
        if n < MAX_REPORTED:
            self._counts[kind] = n + 1
            self.found.append({"kind": kind, "message": message, **where})


def check(pool, progress=None) -> list[dict]:
    problems = Problems()
    _check_layers(pool, problems.report)
    if damage := pool.core.damage:
        problems.report("damage", damage)
    try:
        found = pool.core.fsck(progress=core_callback(progress))
    except _native.NativeError as e:
        raise engine_error(e) from None
    for p in found:
        problems.report(**p)
    return problems.found


def _check_layers(pool, report) -> None:
    graph = pool.graph
    pinned = graph.pinned()        # a snapshot or a golden state kept for a refresh
    for message, where in graph.shared_tops():
        report("layer", message, **where)
    for layer in graph.layers():
        if not graph.is_top(layer) and not graph.children(layer) and layer not in pinned:
            report("layer", f"frozen layer {layer} has no children: nothing reads it",
                   layer=layer)
    stored, end = int(pool.catalog.get("next_layer")), pool.catalog.layer_ids_end()
    if stored < end:
        report("layer", f"meta next_layer {stored} is not past layer {end - 1}, which is in use:"
               f" new layers take ids from {end} (the next commit records it)")
    for layer in pool.catalog.stale_page_layers():
        report("layer", f"block-table pages remain for deleted layer {layer}", layer=layer)
