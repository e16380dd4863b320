"""Per-layer block tables: LBN -> block address, stored in pages of 512 entries.

A VM reads through a chain of layers: its own writable top layer, then the frozen layers it was
cloned from. An entry is INHERIT (look further down the chain), ZERO (reads as zeros), or a block
address (a slot in a local pool). In a layer with no parent, INHERIT already means zeros.

Reads must not slow down as chains grow, so a frozen layer's page is resolved through its chain
once and kept: frozen layers never change what they show. A read then costs one look at the top
page and one at the resolved page beneath it, at any depth.

Pages live in sqlite (table bmap) and are cached in RAM; changed pages are written at commit.
"""

from __future__ import annotations

import numpy as np

PAGE_ENTRIES = 512
INHERIT = np.uint64(0)
ZERO = np.uint64(0xFFFF_FFFF_FFFF_FFFF)
RESOLVED_CACHE_PAGES = 1 << 16
_NOTHING = np.zeros(0, dtype=np.uint64)   # cached "no page anywhere in the chain"


def owned(entries: np.ndarray) -> np.ndarray:
    """The block addresses among `entries` (not INHERIT, not ZERO)."""
    return entries[(entries != INHERIT) & (entries != ZERO)]


def visible(entries: np.ndarray) -> np.ndarray:
    """Resolved entries as addresses, with 0 for zeros."""
    return np.where(entries == ZERO, INHERIT, entries)


class BlockTables:
    def __init__(self, conn, parents: dict[int, int | None], tops: set[int]):
        self.conn = conn
        self.parents = parents          # layer -> parent layer, shared with the pool
        self.tops = tops                # writable layers (a VM's top); all others are frozen
        self._pages: dict[tuple[int, int], np.ndarray | None] = {}
        self._dirty: set[tuple[int, int]] = set()
        self._resolved: dict[tuple[int, int], np.ndarray] = {}

    # -- raw pages ----------------------------------------------------------------------------

    def page(self, layer: int, pno: int) -> np.ndarray | None:
        key = (layer, pno)
        try:
            return self._pages[key]
        except KeyError:
            pass
        row = self.conn.execute("SELECT entries FROM bmap WHERE layer=? AND page=?", key).fetchone()
        page = np.frombuffer(row[0], dtype=np.uint64).copy() if row else None
        self._pages[key] = page
        return page

    def page_for_write(self, layer: int, pno: int) -> np.ndarray:
        page = self.page(layer, pno)
        if page is None:
            page = np.zeros(PAGE_ENTRIES, dtype=np.uint64)
            self._pages[(layer, pno)] = page
        self._dirty.add((layer, pno))
        return page

    def page_numbers(self, layer: int) -> list[int]:
        stored = {p for (p,) in self.conn.execute("SELECT page FROM bmap WHERE layer=?", (layer,))}
        stored.update(pno for (lid, pno) in self._dirty if lid == layer)
        return sorted(stored)

    def is_empty(self, layer: int) -> bool:
        if any(lid == layer for lid, _ in self._dirty):
            return False
        return self.conn.execute("SELECT 1 FROM bmap WHERE layer=? LIMIT 1",
                                 (layer,)).fetchone() is None

    def layer_entries(self, layer: int) -> np.ndarray:
        """Every block address the layer holds (with repeats)."""
        parts = [owned(self.page(layer, pno)) for pno in self.page_numbers(layer)]
        return np.concatenate(parts) if parts else np.zeros(0, np.uint64)

    # -- resolution ---------------------------------------------------------------------------

    def resolved(self, layer: int, pno: int) -> np.ndarray | None:
        """What `layer` shows for page `pno`: ZERO or INHERIT where nothing, else addresses.

        None means nothing anywhere in the chain.
        """
        chain = []
        below = None
        lid = layer
        while lid is not None:
            if lid not in self.tops:
                hit = self._resolved.get((lid, pno))
                if hit is not None:
                    below = None if hit is _NOTHING else hit
                    break
            chain.append(lid)
            lid = self.parents.get(lid)
        for lid in reversed(chain):
            own = self.page(lid, pno)
            if own is not None:
                below = own if below is None else np.where(own == INHERIT, below, own)
            if lid not in self.tops:
                if len(self._resolved) >= RESOLVED_CACHE_PAGES:
                    self._resolved.clear()
                self._resolved[(lid, pno)] = _NOTHING if below is None else below
        return below

    def lookup_range(self, layer: int, lbn0: int, count: int) -> np.ndarray:
        """The visible address of `count` blocks from lbn0 through `layer`; 0 reads as zeros."""
        out = np.zeros(count, dtype=np.uint64)
        lbn, end = lbn0, lbn0 + count
        while lbn < end:
            pno, first = divmod(lbn, PAGE_ENTRIES)
            n = min(PAGE_ENTRIES - first, end - lbn)
            page = self.resolved(layer, pno)
            if page is not None:
                out[lbn - lbn0:lbn - lbn0 + n] = visible(page[first:first + n])
            lbn += n
        return out

    def forget_resolved(self) -> None:
        """Layers were dropped or merged: resolved pages may name layers that are gone."""
        self._resolved.clear()

    # -- changes ------------------------------------------------------------------------------

    def set_entries(self, layer: int, lbn0: int, entries: np.ndarray) -> np.ndarray:
        """Writes consecutive entries from lbn0 (in one page); returns the addresses replaced."""
        pno, first = divmod(lbn0, PAGE_ENTRIES)
        page = self.page_for_write(layer, pno)
        old = owned(page[first:first + len(entries)])
        page[first:first + len(entries)] = entries
        return old

    def drop_layer(self, layer: int) -> None:
        for pno in self.page_numbers(layer):
            self._pages.pop((layer, pno), None)
            self._dirty.discard((layer, pno))
        self.conn.execute("DELETE FROM bmap WHERE layer=?", (layer,))

    def merge_into_child(self, layer: int, child: int, root: bool) -> np.ndarray:
        """Folds frozen `layer` into its only child; returns the addresses the child shadowed.

        The child's own entries win. If `layer` was a root, the child becomes one, and its ZERO
        entries turn into INHERIT, which means the same there.
        """
        shadowed = []
        for pno in sorted(set(self.page_numbers(layer)) | set(self.page_numbers(child))):
            below = self.page(layer, pno)
            page = self.page_for_write(child, pno)
            if below is not None:
                mine = page != INHERIT
                shadowed.append(owned(below[mine]))
                page[~mine] = below[~mine]
            if root:
                page[page == ZERO] = INHERIT
        self.drop_layer(layer)
        return np.concatenate(shadowed) if shadowed else np.zeros(0, np.uint64)

    def flush(self) -> None:
        """Writes changed pages into the open transaction."""
        rows = [(lid, pno, self._pages[(lid, pno)].tobytes()) for lid, pno in self._dirty]
        self.conn.executemany("INSERT OR REPLACE INTO bmap (layer, page, entries) VALUES (?,?,?)",
                              rows)
        self._dirty.clear()

    def reset(self) -> None:
        """Forgets every cached page (after a rollback)."""
        self._pages.clear()
        self._dirty.clear()
        self._resolved.clear()
