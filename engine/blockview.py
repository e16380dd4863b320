"""The block table as operators see it: one row per physical block, paged and filtered.

Sharing is what operators mean by "how shared": how many VMs read a block (a golden's block read
by 51 clones through one frozen layer: 52 VMs, refcount 1), not how many layer references it has.
The core counts it from the layer graph (engine._native's `readers_of`, `vms_reading`: the VMs
whose chain reaches a layer holding the block where nothing above shadows it), once per change of
the tables or the VMs. Filters run vectorised over those counts and the stored fingerprints.
"""

from __future__ import annotations

import numpy as np

from . import formats
from .errors import RefusedError

MOST_NAMES = 1000    # VM names a row carries (its `readers` counts them all)


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


class BlockView:
    """The block table of one pool, for operators. The VMs behind a block come from the core's
    reverse map of the block tables (block -> layer, LBN), built once per change of the tables."""

    def __init__(self, pool):
        self.pool = pool

    def _ranks(self) -> dict[str, int]:
        """Each VM's place in natural order: sorting a row's names by it costs a lookup each
        (natural_key on 3,000 names of 100 rows took 3.6 s)."""
        names = sorted((vm.name for vm in self.pool.graph.vms()), key=formats.natural_key)
        return {name: i for i, name in enumerate(names)}

    @staticmethod
    def _in_order(names: list[str], ranks: dict[str, int]) -> list[str]:
        return sorted(names, key=lambda name: ranks.get(name, len(ranks)))

    def vm_addresses(self, name: str) -> np.ndarray:
        """The addresses VM `name` reads, one per LBN that holds data (repeats kept)."""
        pool = self.pool
        vm = pool.graph.vm(name)
        blocks = -(-vm.size // pool.block_size)
        addrs = pool.core.lookup(vm.top, 0, blocks)
        return addrs[addrs != 0]

    def page(self, vm: str | None = None, min_refs: int | None = None,
             max_refs: int | None = None, prefix: str | None = None, offset: int = 0,
             limit: int = 100, with_vms: bool = True) -> dict:
        """Rows {pbn, fingerprint, readers, refcount, vms, nodes} from `offset`, at most
        `limit`, of the live blocks that `vm` reads, read by [min_refs, max_refs] VMs, whose
        fingerprint starts with the hex `prefix`; and how many match in all. Raises RefusedError
        (bad prefix)."""
        blocks, core = self.pool.blocks, self.pool.core
        if vm is None and min_refs is None and max_refs is None and not prefix:
            total, page = blocks.live_page(offset, limit)     # no 10 M-id array for 100 rows
            return {"total": total, "offset": offset, "rows": self._rows(page, with_vms)}
        live = blocks.live()
        if vm is not None:
            # isin picks a lookup table for a pool's dense slot numbers: no sort of 10 M ids.
            live = live[np.isin(live, self.vm_addresses(vm))]
        if min_refs is not None or max_refs is not None:
            readers = core.readers_of(live)
            keep = np.ones(len(live), dtype=bool)
            if min_refs is not None:
                keep &= readers >= min_refs
            if max_refs is not None:
                keep &= readers <= max_refs
            live = live[keep]
        if prefix:
            if len(prefix) > 32 or any(c not in "0123456789abcdefABCDEF" for c in prefix):
                raise RefusedError(f"bad fingerprint prefix {prefix!r}: use up to 32 hex digits")
            live = live[_prefix_mask(blocks.fingerprints_of(live), prefix)]
        return {"total": len(live), "offset": offset,
                "rows": self._rows(live[offset:offset + limit], with_vms)}

    def _rows(self, page: np.ndarray, with_vms: bool) -> list[dict]:
        blocks, core = self.pool.blocks, self.pool.core
        rows = []
        ranks = self._ranks() if with_vms else {}
        holders = [None] * len(page) if self.pool.local else self.pool.blocks.holders_of(page)
        for addr, readers, refs, words, nodes in zip(
                page.tolist(), core.readers_of(page).tolist(), blocks.refcounts_of(page).tolist(),
                blocks.fingerprints_of(page), holders):
            row = {"pbn": addr, "fingerprint": fingerprint_hex(words), "readers": int(readers),
                   "refcount": int(refs), "nodes": nodes}
            if with_vms:
                row["vms"] = self._in_order(core.vms_reading(addr), ranks)[:MOST_NAMES]
            rows.append(row)
        return rows
