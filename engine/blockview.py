"""The block table as operators see it: one row per physical block, paged and filtered.

Filters run vectorised over the RAM refcounts and stored fingerprints, so a page costs the same
over millions of blocks. Naming the VMs behind a block needs the reverse of the block tables
(block -> layer, LBN); it is built once per pool generation and kept.
"""

from __future__ import annotations

import numpy as np

from .blocktable import INHERIT, PAGE_ENTRIES, ZERO
from .errors import BlockfoldError

MAX_VM_NAMES = 1000


def fingerprint_hex(words: np.ndarray) -> str:
    return words.astype("<u8").tobytes().hex()


def _prefix_mask(hashes: np.ndarray, prefix: str) -> np.ndarray:
    """Which stored fingerprints start with the hex `prefix`."""
    prefix = prefix.lower()
    raw = hashes.astype("<u8").view(np.uint8).reshape(-1, 16)
    n = len(prefix)
    whole = bytes.fromhex(prefix[: n - n % 2])
    mask = np.ones(len(hashes), dtype=bool)
    if whole:
        mask &= (raw[:, :len(whole)] == np.frombuffer(whole, dtype=np.uint8)).all(axis=1)
    if n % 2:
        mask &= (raw[:, len(whole)] >> 4) == int(prefix[-1], 16)
    return mask


def _reverse_map(pool):
    """(addresses sorted, their layers, their LBNs) over every layer; cached per generation."""
    cached = getattr(pool, "_reverse", None)
    if cached is not None and cached[0] == pool.generation:
        return cached[1]
    addrs, layers, lbns = [], [], []
    for layer in pool.parents:
        for pno in pool.tables.page_numbers(layer):
            page = pool.tables.page(layer, pno)
            idx = np.flatnonzero((page != INHERIT) & (page != ZERO))
            addrs.append(page[idx])
            layers.append(np.full(len(idx), layer, dtype=np.int64))
            lbns.append(idx.astype(np.int64) + pno * PAGE_ENTRIES)
    if addrs:
        a, ls, b = np.concatenate(addrs), np.concatenate(layers), np.concatenate(lbns)
        order = np.argsort(a, kind="stable")
        result = (a[order], ls[order], b[order])
    else:
        empty = np.zeros(0, dtype=np.int64)
        result = (empty.astype(np.uint64), empty, empty)
    pool._reverse = (pool.generation, result)
    return result


def _readers(pool) -> dict[int, list[tuple[str, list[int]]]]:
    """layer -> the VMs that read through it, each with its chain from the top down."""
    cached = getattr(pool, "_readers", None)
    if cached is not None and cached[0] == pool.generation:
        return cached[1]
    readers: dict[int, list[tuple[str, list[int]]]] = {}
    for vm in pool.vms.values():
        chain = pool.chain(vm.top)
        for layer in chain:
            readers.setdefault(layer, []).append((vm.name, chain))
    pool._readers = (pool.generation, readers)
    return readers


def referencing_vms(pool, addr: int) -> list[str]:
    """The VMs that read block `addr` somewhere: those that read through a layer holding it,
    unless a layer above it in their chain shadows that LBN."""
    a, layers, lbns = _reverse_map(pool)
    lo, hi = np.searchsorted(a, addr, "left"), np.searchsorted(a, addr, "right")
    readers = _readers(pool)
    names = set()
    for layer, lbn in zip(layers[lo:hi].tolist(), lbns[lo:hi].tolist()):
        pno, idx = divmod(lbn, PAGE_ENTRIES)
        for name, chain in readers.get(layer, ()):
            for lid in chain:
                if lid == layer:
                    names.add(name)
                    break
                page = pool.tables.page(lid, pno)
                if page is not None and page[idx] != INHERIT:
                    break
    return sorted(names)


def vm_addresses(pool, name: str) -> np.ndarray:
    vm = pool.vm(name)
    blocks = -(-vm.size // pool.block_size)
    addrs = pool.tables.lookup_range(vm.top, 0, blocks)
    return np.unique(addrs[addrs != 0])


def block_page(pool, vm: str | None = None, min_refs: int | None = None,
               max_refs: int | None = None, prefix: str | None = None, offset: int = 0,
               limit: int = 100, with_vms: bool = True) -> dict:
    blocks = pool.blocks
    live = blocks.live()
    if vm is not None:
        live = np.intersect1d(live, vm_addresses(pool, vm))
    if min_refs is not None:
        live = live[blocks.refcounts_of(live) >= min_refs]
    if max_refs is not None:
        live = live[blocks.refcounts_of(live) <= max_refs]
    if prefix:
        if len(prefix) > 32 or any(c not in "0123456789abcdefABCDEF" for c in prefix):
            raise BlockfoldError(f"bad fingerprint prefix {prefix!r}: use up to 32 hex digits")
        live = live[_prefix_mask(blocks.fingerprints_of(live), prefix)]
    rows = []
    page = live[offset:offset + limit]
    for addr, refs, words in zip(page.tolist(), blocks.refcounts_of(page).tolist(),
                                 blocks.fingerprints_of(page)):
        row = {"pbn": addr, "fingerprint": fingerprint_hex(words), "refcount": int(refs)}
        if with_vms:
            row["vms"] = referencing_vms(pool, addr)
        rows.append(row)
    return {"total": len(live), "offset": offset, "rows": rows}
