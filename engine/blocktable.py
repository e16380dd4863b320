"""Per-layer block tables: LBN -> block address, in pages of 512 entries.

An entry is INHERIT (look further down the chain), ZERO (reads as zeros), or a block address (a
slot in a local pool, a block id in a cluster). In a layer with no parent, INHERIT already means
zeros, and ZERO is written only where the chain beneath shows data: zeroing what already reads as
zeros changes nothing, and a page of nothing but INHERIT is not kept at all.

Reads must not slow down as chains grow, so a frozen layer's page is resolved through its chain once
and kept: frozen layers never change what they show. A read then costs one look at the top page and
one at the resolved page beneath it, at any depth.

Pages live in sqlite (table bmap) and are cached here. A change marks its page dirty with a new
version; a commit takes a `Snapshot` of the dirty pages (those of provisional layers excepted), and
once it is durable `end()` marks clean every page that did not change again meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .layergraph import LayerEdit, LayerGraph, Merge

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


@dataclass
class Snapshot:
    """The dirty pages a commit writes: (layer, page number, entries or None to drop the row)."""
    pages: list[tuple[int, int, bytes | None]] = field(default_factory=list)
    versions: dict[tuple[int, int], int] = field(default_factory=dict)


class BlockTables:
    def __init__(self, conn, graph: LayerGraph):
        self.conn = conn                # reads committed pages on a cache miss
        self.graph = graph
        self._pages: dict[tuple[int, int], np.ndarray | None] = {}
        self._dirty: dict[tuple[int, int], int] = {}      # page -> version of its last change
        self._version = 0
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

    def _page_for_write(self, layer: int, pno: int) -> np.ndarray:
        page = self.page(layer, pno)
        if page is None:
            page = np.zeros(PAGE_ENTRIES, dtype=np.uint64)
            self._pages[(layer, pno)] = page
        self._version += 1
        self._dirty[(layer, pno)] = self._version
        return page

    def page_numbers(self, layer: int) -> list[int]:
        stored = {p for (p,) in self.conn.execute("SELECT page FROM bmap WHERE layer=?", (layer,))}
        stored.update(pno for (lid, pno) in self._pages if lid == layer)
        return sorted(stored)

    def is_empty(self, layer: int) -> bool:
        """True if the layer holds no entry at all (it shows only what lies beneath it)."""
        return not any(self.page(layer, pno) is not None and self.page(layer, pno).any()
                       for pno in self.page_numbers(layer))

    def layer_entries(self, layer: int) -> np.ndarray:
        """Every block address the layer holds (with repeats)."""
        parts = [owned(page) for pno in self.page_numbers(layer)
                 if (page := self.page(layer, pno)) is not None]
        return np.concatenate(parts) if parts else np.zeros(0, np.uint64)

    # -- resolution ---------------------------------------------------------------------------

    def resolved(self, layer: int, pno: int) -> np.ndarray | None:
        """What `layer` shows for page `pno`: ZERO or INHERIT where nothing, else addresses.

        None means nothing anywhere in the chain.
        """
        chain = []
        below = None
        lid = layer
        graph = self.graph
        while lid is not None:
            if not graph.is_top(lid):
                hit = self._resolved.get((lid, pno))
                if hit is not None:
                    below = None if hit is _NOTHING else hit
                    break
            chain.append(lid)
            lid = graph.parent(lid)
        for lid in reversed(chain):
            own = self.page(lid, pno)
            if own is not None:
                below = own if below is None else np.where(own == INHERIT, below, own)
            if not graph.is_top(lid):
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

    def zero_fill(self, layer: int, lbn0: int, count: int) -> np.ndarray:
        """The entries that make `count` blocks from lbn0 (within one page) of `layer` read as
        zeros: ZERO where the chain beneath shows data, INHERIT elsewhere."""
        fill = np.zeros(count, dtype=np.uint64)
        parent = self.graph.parent(layer)
        if parent is None:
            return fill
        pno, first = divmod(lbn0, PAGE_ENTRIES)
        below = self.resolved(parent, pno)
        if below is not None:
            shown = below[first:first + count]
            fill[(shown != INHERIT) & (shown != ZERO)] = ZERO
        return fill

    # -- changes by data ops ------------------------------------------------------------------

    def set_entries(self, layer: int, lbn0: int, entries: np.ndarray) -> np.ndarray:
        """Writes consecutive entries from lbn0 (within one page); returns the addresses replaced.

        Writing nothing but INHERIT where there is no page changes nothing."""
        pno, first = divmod(lbn0, PAGE_ENTRIES)
        if self.page(layer, pno) is None and not entries.any():
            return np.zeros(0, np.uint64)
        page = self._page_for_write(layer, pno)
        old = owned(page[first:first + len(entries)])
        page[first:first + len(entries)] = entries
        return old

    # -- commits ------------------------------------------------------------------------------

    def snapshot(self, exclude: frozenset[int] = frozenset()) -> Snapshot:
        """The dirty pages outside `exclude` (provisional layers), as they are now."""
        snap = Snapshot()
        for (layer, pno), version in self._dirty.items():
            if layer in exclude:
                continue
            page = self._pages[(layer, pno)]
            snap.pages.append((layer, pno, page.tobytes() if page is not None and page.any()
                               else None))
            snap.versions[(layer, pno)] = version
        return snap

    def end(self, snap: Snapshot) -> None:
        """The snapshot is durable: its pages are clean unless they changed since."""
        for key, version in snap.versions.items():
            if self._dirty.get(key) == version:
                del self._dirty[key]

    def dirty_count(self) -> int:
        return len(self._dirty)

    # -- structural edits ---------------------------------------------------------------------

    def merged_pages(self, merge: Merge, root: bool) -> tuple[dict, np.ndarray]:
        """What folding frozen `merge.layer` into its only child gives: the child's new pages
        and the addresses the child's own entries shadow. The child's entries win; if the child
        becomes a root, its ZERO entries turn into INHERIT, which means the same there."""
        layer, child = merge.layer, merge.child
        pages, shadowed = {}, []
        for pno in sorted(set(self.page_numbers(layer)) | set(self.page_numbers(child))):
            below = self.page(layer, pno)
            mine = self.page(child, pno)
            page = np.zeros(PAGE_ENTRIES, np.uint64) if mine is None else mine.copy()
            if below is not None:
                own = page != INHERIT
                shadowed.append(owned(below[own]))
                page[~own] = below[~own]
            if root:
                page[page == ZERO] = INHERIT
            pages[(child, pno)] = page if page.any() else None
        return pages, (np.concatenate(shadowed) if shadowed else np.zeros(0, np.uint64))

    def apply(self, edit: LayerEdit) -> None:
        """Applies a committed edit: dropped layers' pages go, the edit's pages are installed
        clean (they are durable already)."""
        dropped = set(edit.dropped)
        if dropped:
            for key in [k for k in self._pages if k[0] in dropped]:
                del self._pages[key]
                self._dirty.pop(key, None)
        for key, page in edit.pages.items():
            self._pages[key] = page
            self._dirty.pop(key, None)
        self._resolved.clear()       # resolved pages may name layers that are gone or merged

    def forget_layer(self, layer: int) -> np.ndarray:
        """Drops an uncommitted (provisional) layer's pages; returns the addresses they held."""
        held = self.layer_entries(layer)
        for key in [k for k in self._pages if k[0] == layer]:
            del self._pages[key]
            self._dirty.pop(key, None)
        return held
