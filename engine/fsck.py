"""fsck: check every promise the pool makes about its own state, and report each problem.

- the layer graph is sound: every VM's top exists, every parent exists, no cycles, no layer
  that nothing reads through, no block-table page of a layer that is gone
- refcounts in RAM equal the references in the block tables
- no slot is both free and live, none is lost (unreferenced yet not free), and no table
  points past the end of the data file
- every live block's bytes still hash to its stored fingerprint
"""

from __future__ import annotations

import numpy as np

from .progress import Meter

MAX_REPORTED = 50


def check(pool, progress=None) -> list[dict]:
    problems: list[dict] = []

    def report(kind: str, message: str, **where) -> None:
        if sum(1 for p in problems if p["kind"] == kind) < MAX_REPORTED:
            problems.append({"kind": kind, "message": message, **where})

    _check_layers(pool, report)
    references = [pool.tables.layer_entries(layer) for layer in pool.graph.layers()]
    references = np.concatenate(references) if references else np.zeros(0, dtype=np.uint64)
    pool.blocks.fsck(references, report, progress)
    return problems


def check_slots(blocks, references: np.ndarray, report, progress) -> None:
    """The checks of a local block layer (engine.localblocks)."""
    _check_refcounts(blocks, references, report)
    _check_space(blocks, report)
    _check_hashes(blocks, report, progress)


def _check_layers(pool, report) -> None:
    graph = pool.graph
    layers = set(graph.layers())
    for vm in graph.vms():
        if vm.top not in layers:
            report("layer", f"VM {vm.name} has top layer {vm.top}, which does not exist",
                   vm=vm.name)
    for layer in layers:
        parent = graph.parent(layer)
        if parent is not None and parent not in layers:
            report("layer", f"layer {layer} has parent {parent}, which does not exist",
                   layer=layer)
        seen, lid = set(), layer
        while lid is not None and lid in layers:
            if lid in seen:
                report("layer", f"layer {layer} is on a cycle", layer=layer)
                break
            seen.add(lid)
            lid = graph.parent(lid)
        if not graph.is_top(layer) and not graph.children(layer):
            report("layer", f"frozen layer {layer} has no children: nothing reads it",
                   layer=layer)
    for layer in pool.catalog.stale_page_layers():
        report("layer", f"block-table pages remain for deleted layer {layer}", layer=layer)


def _check_refcounts(blocks, refs: np.ndarray, report) -> None:
    capacity = blocks.store.capacity
    outside = refs[refs >= capacity]
    for addr in np.unique(outside)[:10].tolist():
        report("reference", f"a block table points at slot {addr}, past the end of the data file",
               pbn=addr)
    counted = np.bincount(refs[refs < capacity].astype(np.int64), minlength=capacity)
    have = blocks.space.refcounts.astype(np.int64)
    have = np.concatenate([have, np.zeros(max(0, capacity - len(have)), np.int64)])[:capacity]
    for addr in np.flatnonzero(counted != have).tolist():
        report("refcount", f"slot {addr} has refcount {have[addr]} but {counted[addr]} references",
               pbn=addr)


def _check_space(blocks, report) -> None:
    refcounts = blocks.space.refcounts
    free = blocks.space.free_slots().astype(np.int64)
    pending = blocks.space.pending_slots().astype(np.int64)
    for addr in free[refcounts[free] > 0].tolist():
        report("space", f"slot {addr} is both free and live", pbn=addr)
    values, counts = np.unique(free, return_counts=True)
    for addr in values[counts > 1].tolist():
        report("space", f"slot {addr} is on the free list twice", pbn=addr)
    if (free == 0).any():
        report("space", "the header slot 0 is on the free list", pbn=0)
    unreferenced = np.flatnonzero(refcounts == 0)
    unreferenced = unreferenced[unreferenced != 0]
    lost = np.setdiff1d(unreferenced, np.concatenate([free, pending]))
    for addr in lost.tolist():
        report("space", f"slot {addr} is neither referenced nor free: leaked", pbn=addr)


def _check_hashes(blocks, report, progress) -> None:
    live = np.flatnonzero(blocks.space.refcounts)
    meter = Meter(progress, "fsck", len(live), unit_bytes=blocks.block_size)
    for start in range(0, len(live), 4096):
        chunk = live[start:start + 4096]
        fresh = blocks.fingerprints.of_slots(blocks.store.view(), chunk)
        bad = (fresh != blocks.store.hashes[chunk]).any(axis=1)
        for addr in chunk[bad].tolist():
            report("corrupt", f"slot {addr}: its bytes no longer match its fingerprint", pbn=addr)
        meter.advance(len(chunk))
    meter.finish()
