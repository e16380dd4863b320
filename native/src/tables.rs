//! Block tables in RAM: per layer, LBN -> block address, in pages of 512 entries, with the mirror
//! of the layer graph needed to resolve chains, and the dirty tracking a commit needs.
//!
//! An entry is INHERIT (0: look further down the chain; zeros in a root layer), ZERO (u64::MAX: a
//! tombstone that reads as zeros) or a block address. A page of nothing but INHERIT is never kept:
//! it is dropped (and deleted from the catalog at the next commit).
//!
//! Reads must not slow down with depth: a frozen layer never changes what it shows, so each of its
//! pages is resolved through the whole chain once and cached (up to 65536 pages). A lookup through
//! a top layer costs one look at its own page and one at the resolved page beneath it.
//!
//! Dirty tracking: every page change stamps the page with a new version. `snapshot` hands out the
//! dirty pages with a token; `end(token)` marks clean those whose version did not move since, so a
//! page changed during the commit stays dirty for the next one; `abort(token)` leaves all dirty.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::error::{Error, Result};

pub const PAGE_ENTRIES: usize = 512;
pub const INHERIT: u64 = 0;
pub const ZERO: u64 = u64::MAX;
const RESOLVED_CACHE_PAGES: usize = 1 << 16;

pub type Page = [u64; PAGE_ENTRIES];
type Key = (u64, u64); // (layer, page number)

/// An entry that names a block.
pub fn is_address(entry: u64) -> bool {
    entry != INHERIT && entry != ZERO
}

fn all_inherit(page: &Page) -> bool {
    page.iter().fold(0u64, |acc, &e| acc | e) == 0
}

struct Layer {
    parent: Option<u64>,
    top: bool,
    pages: BTreeMap<u64, Box<Page>>,
}

/// What a merge makes of a child's pages: (page number, entries or None) for each page that
/// changes, and the addresses the child shadows.
#[derive(Default)]
pub struct Merged {
    pub pages: Vec<(u64, Option<Box<Page>>)>,
    pub shadowed: Vec<u64>,
}

/// A page handed to a commit: its bytes (512 little-endian u64), or None for a dropped page.
pub struct DirtyPage {
    pub layer: u64,
    pub page: u64,
    pub entries: Option<Box<Page>>,
}

#[derive(Default)]
pub struct Tables {
    layers: HashMap<u64, Layer>,
    dirty: HashMap<Key, u64>,
    version: u64,
    snapshots: HashMap<u64, Vec<(Key, u64)>>,
    next_token: u64,
    resolved: RwLock<HashMap<Key, Option<Arc<Page>>>>,
    visible: Mutex<HashMap<u64, u64>>,
    /// Bumped on every change of a page or of the graph: derived views key their caches on it.
    pub generation: u64,
    /// Pages in RAM, every layer's, kept as they come and go (a sum over 40,000 layers at every
    /// commit would cost more than the commit).
    held: u64,
    /// Pages the catalog holds, as of the last load, commit or structural edit (`count_stored`).
    stored: u64,
}

impl Tables {
    pub fn new() -> Self {
        Self::default()
    }

    // -- the layer graph (a mirror of Python's) ----------------------------------------------

    pub fn add_layer(&mut self, layer: u64, parent: Option<u64>, top: bool) -> Result<()> {
        if self.layers.contains_key(&layer) {
            return Err(Error::State(format!("layer {layer} already exists")));
        }
        if let Some(p) = parent {
            if !self.layers.contains_key(&p) {
                return Err(Error::State(format!(
                    "layer {layer}: parent {p} does not exist"
                )));
            }
        }
        self.layers.insert(
            layer,
            Layer {
                parent,
                top,
                pages: BTreeMap::new(),
            },
        );
        self.graph_changed();
        Ok(())
    }

    /// A top is writable; a frozen layer never changes what it shows.
    pub fn set_top(&mut self, layer: u64, top: bool) -> Result<()> {
        self.layer_mut(layer)?.top = top;
        self.graph_changed();
        Ok(())
    }

    pub fn set_parent(&mut self, layer: u64, parent: Option<u64>) -> Result<()> {
        if let Some(p) = parent {
            let mut lid = Some(p);
            while let Some(l) = lid {
                if l == layer {
                    return Err(Error::State(format!("layer {layer} would be on a cycle")));
                }
                lid = self.layer(l)?.parent;
            }
        }
        self.layer_mut(layer)?.parent = parent;
        self.graph_changed();
        Ok(())
    }

    pub fn has_layer(&self, layer: u64) -> bool {
        self.layers.contains_key(&layer)
    }

    pub fn parent(&self, layer: u64) -> Result<Option<u64>> {
        Ok(self.layer(layer)?.parent)
    }

    pub fn is_top(&self, layer: u64) -> bool {
        self.layers.get(&layer).is_some_and(|l| l.top)
    }

    /// The layer and every layer beneath it, top first.
    pub fn chain(&self, layer: u64) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        let mut lid = Some(layer);
        while let Some(l) = lid {
            out.push(l);
            lid = self.layer(l)?.parent;
        }
        Ok(out)
    }

    fn children(&self, layer: u64) -> Vec<u64> {
        self.layers
            .iter()
            .filter(|(_, l)| l.parent == Some(layer))
            .map(|(&id, _)| id)
            .collect()
    }

    fn layer(&self, layer: u64) -> Result<&Layer> {
        self.layers
            .get(&layer)
            .ok_or_else(|| Error::State(format!("no layer {layer}")))
    }

    fn layer_mut(&mut self, layer: u64) -> Result<&mut Layer> {
        self.layers
            .get_mut(&layer)
            .ok_or_else(|| Error::State(format!("no layer {layer}")))
    }

    fn graph_changed(&mut self) {
        self.resolved.write().clear();
        self.visible.lock().clear();
        self.generation += 1;
    }

    // -- raw pages -----------------------------------------------------------------------------

    /// Loads a stored page (at open); a page of nothing but INHERIT is dropped instead. Returns
    /// false (and loads nothing) for a layer not in the graph. Error: a blob of the wrong size.
    pub fn load_page(&mut self, layer: u64, pno: u64, blob: &[u8]) -> Result<bool> {
        if blob.len() != PAGE_ENTRIES * 8 {
            return Err(Error::Format(format!(
                "block-table page {pno} of layer {layer} is {} bytes, not {}",
                blob.len(),
                PAGE_ENTRIES * 8
            )));
        }
        let Some(l) = self.layers.get_mut(&layer) else {
            return Ok(false);
        };
        let mut page = Box::new([0u64; PAGE_ENTRIES]);
        for (e, b) in page.iter_mut().zip(blob.chunks_exact(8)) {
            *e = u64::from_le_bytes(b.try_into().unwrap());
        }
        if all_inherit(&page) {
            self.version += 1;
            self.dirty.insert((layer, pno), self.version);
        } else if l.pages.insert(pno, page).is_none() {
            self.held += 1;
            self.stored += 1;
        }
        self.generation += 1;
        Ok(true)
    }

    /// Every layer and its parent.
    pub fn graph(&self) -> impl Iterator<Item = (u64, Option<u64>)> + '_ {
        self.layers.iter().map(|(&id, l)| (id, l.parent))
    }

    /// A layer's pages: (page number, entries), ascending.
    pub fn layer_pages(&self, layer: u64) -> impl Iterator<Item = (u64, &Page)> {
        self.layers
            .get(&layer)
            .into_iter()
            .flat_map(|l| l.pages.iter().map(|(&n, p)| (n, &**p)))
    }

    pub fn page(&self, layer: u64, pno: u64) -> Option<&Page> {
        self.layers.get(&layer)?.pages.get(&pno).map(|p| &**p)
    }

    pub fn page_numbers(&self, layer: u64) -> Vec<u64> {
        self.layers
            .get(&layer)
            .map(|l| l.pages.keys().copied().collect())
            .unwrap_or_default()
    }

    /// The first page number at or after `pno` that `layer` or any layer beneath it holds
    /// (None: none does, so all from `pno` on reads as zeros). O(chain depth × log pages), so
    /// that a range over an enormous sparse VM costs what its pages do, not its size.
    pub fn next_page_in_chain(&self, layer: u64, pno: u64) -> Option<u64> {
        let mut next: Option<u64> = None;
        let mut lid = Some(layer);
        while let Some(l) = lid.and_then(|id| self.layers.get(&id)) {
            if let Some((&n, _)) = l.pages.range(pno..).next() {
                next = Some(next.map_or(n, |m| m.min(n)));
            }
            lid = l.parent;
        }
        next
    }

    /// The first LBN at or after `lbn` whose entry, as `layer` shows it, names a block (None:
    /// none does). Visits only the pages the chain holds (next_page_in_chain), one page lookup
    /// each, so a hole of any size costs what the pages around it do. Errors: unknown layer.
    pub fn next_mapped(&self, layer: u64, lbn: u64) -> Result<Option<u64>> {
        let pe = PAGE_ENTRIES as u64;
        let mut buf = [INHERIT; PAGE_ENTRIES];
        let mut lbn = lbn;
        loop {
            let Some(pno) = self.next_page_in_chain(layer, lbn / pe) else {
                return Ok(None);
            };
            lbn = lbn.max(pno * pe);
            let n = (pe - lbn % pe) as usize;
            self.lookup(layer, lbn, &mut buf[..n])?;
            if let Some(i) = buf[..n].iter().position(|&e| is_address(e)) {
                return Ok(Some(lbn + i as u64));
            }
            lbn = (pno + 1) * pe;
        }
    }

    pub fn is_empty(&self, layer: u64) -> bool {
        self.layers.get(&layer).is_none_or(|l| l.pages.is_empty())
    }

    pub fn page_count(&self) -> u64 {
        self.held
    }

    /// Pages the catalog holds as of the last load, commit or structural edit.
    pub fn stored_pages(&self) -> u64 {
        self.stored
    }

    /// The catalog now holds the pages in RAM (a commit or a structural edit is durable).
    pub fn count_stored(&mut self) {
        self.stored = self.held;
    }

    /// Every block address a layer holds, with repeats.
    pub fn layer_entries(&self, layer: u64) -> Vec<u64> {
        let mut out = Vec::new();
        if let Some(l) = self.layers.get(&layer) {
            for page in l.pages.values() {
                out.extend(page.iter().copied().filter(|&e| is_address(e)));
            }
        }
        out
    }

    /// Calls `f(layer, lbn, address)` for every address in every page of every layer.
    pub fn for_each_reference(&self, mut f: impl FnMut(u64, u64, u64)) {
        for (&layer, l) in &self.layers {
            for (&pno, page) in &l.pages {
                for (i, &e) in page.iter().enumerate() {
                    if is_address(e) {
                        f(layer, pno * PAGE_ENTRIES as u64 + i as u64, e);
                    }
                }
            }
        }
    }

    /// Every address in every page, with repeats (a Python block layer's rebuild and fsck).
    pub fn references(&self) -> Vec<u64> {
        let mut out = Vec::new();
        for page in self.pages() {
            out.extend(page.iter().copied().filter(|&e| is_address(e)));
        }
        out
    }

    /// Every page, for a pass over all references (rebuild, checks).
    pub fn pages(&self) -> impl Iterator<Item = &Page> {
        self.layers
            .values()
            .flat_map(|l| l.pages.values().map(|p| &**p))
    }

    // -- resolution ----------------------------------------------------------------------------

    /// What `layer` shows for page `pno` (raw entries: INHERIT where nothing), or None if no
    /// layer of its chain has that page. Frozen layers' results are cached.
    pub fn resolved(&self, layer: u64, pno: u64) -> Option<Arc<Page>> {
        let mut chain = Vec::new();
        let mut below: Option<Arc<Page>> = None;
        let mut lid = Some(layer);
        while let Some(l) = lid {
            let Some(entry) = self.layers.get(&l) else {
                break;
            };
            if !entry.top {
                if let Some(hit) = self.resolved.read().get(&(l, pno)) {
                    below = hit.clone();
                    break;
                }
            }
            chain.push(l);
            lid = entry.parent;
        }
        for &l in chain.iter().rev() {
            let entry = &self.layers[&l];
            if let Some(own) = entry.pages.get(&pno) {
                below = Some(Arc::new(match &below {
                    None => **own,
                    Some(b) => {
                        std::array::from_fn(|i| if own[i] != INHERIT { own[i] } else { b[i] })
                    }
                }));
            }
            if !entry.top {
                let mut cache = self.resolved.write();
                if cache.len() >= RESOLVED_CACHE_PAGES {
                    cache.clear();
                }
                cache.insert((l, pno), below.clone());
            }
        }
        below
    }

    /// The raw entries `layer` shows for `out.len()` blocks from `lbn0` (INHERIT where nothing).
    /// Two page lookups a page at any depth: the layer's own, and the resolved one beneath it.
    pub fn lookup(&self, layer: u64, lbn0: u64, out: &mut [u64]) -> Result<()> {
        let l = self.layer(layer)?;
        let mut done = 0usize;
        while done < out.len() {
            let lbn = lbn0 + done as u64;
            let pno = lbn / PAGE_ENTRIES as u64;
            let first = (lbn % PAGE_ENTRIES as u64) as usize;
            let n = (PAGE_ENTRIES - first).min(out.len() - done);
            let dst = &mut out[done..done + n];
            if !l.top {
                match self.resolved(layer, pno) {
                    Some(page) => dst.copy_from_slice(&page[first..first + n]),
                    None => dst.fill(INHERIT),
                }
            } else {
                let own = l.pages.get(&pno);
                let below = l.parent.and_then(|p| self.resolved(p, pno));
                for (i, d) in dst.iter_mut().enumerate() {
                    let e = own.map_or(INHERIT, |p| p[first + i]);
                    *d = if e != INHERIT {
                        e
                    } else {
                        below.as_ref().map_or(INHERIT, |b| b[first + i])
                    };
                }
            }
            done += n;
        }
        Ok(())
    }

    /// What the layers beneath `layer` show for page `pno` (None: nothing).
    pub fn below(&self, layer: u64, pno: u64) -> Option<Arc<Page>> {
        self.layers
            .get(&layer)?
            .parent
            .and_then(|p| self.resolved(p, pno))
    }

    // -- changes -------------------------------------------------------------------------------

    /// Writes consecutive entries from `lbn0`, within one page; returns the addresses replaced
    /// (an address written over itself counts as replaced). Dirties nothing if the entries are
    /// already there; a page left with nothing but INHERIT is dropped.
    pub fn set_entries(&mut self, layer: u64, lbn0: u64, entries: &[u64]) -> Result<Vec<u64>> {
        let pno = lbn0 / PAGE_ENTRIES as u64;
        let first = (lbn0 % PAGE_ENTRIES as u64) as usize;
        if first + entries.len() > PAGE_ENTRIES {
            return Err(Error::OutOfRange(format!(
                "{} entries from LBN {lbn0} cross a page boundary",
                entries.len()
            )));
        }
        let l = self.layer_mut(layer)?;
        let frozen = !l.top;
        let mut replaced = Vec::new();
        match l.pages.get_mut(&pno) {
            None => {
                if entries.iter().all(|&e| e == INHERIT) {
                    return Ok(replaced);
                }
                let mut page = Box::new([INHERIT; PAGE_ENTRIES]);
                page[first..first + entries.len()].copy_from_slice(entries);
                l.pages.insert(pno, page);
                self.held += 1;
            }
            Some(page) => {
                let slice = &mut page[first..first + entries.len()];
                if slice == entries {
                    // Replaced by themselves: the caller, which took a reference on each new
                    // address, drops the old ones all the same.
                    replaced.extend(slice.iter().copied().filter(|&e| is_address(e)));
                    return Ok(replaced);
                }
                replaced.extend(slice.iter().copied().filter(|&e| is_address(e)));
                slice.copy_from_slice(entries);
                if all_inherit(page) {
                    l.pages.remove(&pno);
                    self.held -= 1;
                }
            }
        }
        self.touch(layer, pno, frozen);
        Ok(replaced)
    }

    fn touch(&mut self, layer: u64, pno: u64, frozen: bool) {
        self.version += 1;
        self.dirty.insert((layer, pno), self.version);
        self.generation += 1;
        if frozen {
            // Only structural edits change a frozen layer; every cached view may name it.
            self.resolved.write().clear();
            self.visible.lock().clear();
        }
    }

    /// Drops a layer nobody reads any more: its pages (deleted at the next commit) and its place
    /// in the graph. Returns the addresses it held, with repeats. Error: it has children.
    pub fn drop_layer(&mut self, layer: u64) -> Result<Vec<u64>> {
        self.drop_layer_as(layer, false)
    }

    /// `drop_layer`; `durable`: the catalog already lost the layer's pages (an applied edit), so
    /// nothing is left for a commit to do.
    pub fn drop_layer_as(&mut self, layer: u64, durable: bool) -> Result<Vec<u64>> {
        self.layer(layer)?;
        if let Some(child) = self.children(layer).first() {
            return Err(Error::State(format!(
                "layer {layer} still has child layer {child}"
            )));
        }
        let addrs = self.layer_entries(layer);
        let l = self.layers.remove(&layer).unwrap();
        self.held -= l.pages.len() as u64;
        if durable {
            self.dirty.retain(|k, _| k.0 != layer);
        } else {
            for pno in l.pages.keys() {
                self.version += 1;
                self.dirty.insert((layer, *pno), self.version);
            }
        }
        self.graph_changed();
        Ok(addrs)
    }

    /// What folding frozen `layer` into its child `child` makes of the child's pages, without
    /// doing it (a delete plans its merges before it drops the layer's other child): the pages
    /// that change (None: left all INHERIT, so dropped), and the addresses the child's own
    /// entries shadow. The child's entries win; a ZERO left over what reads as zeros beneath the
    /// layer (always so under a root) becomes INHERIT, as a write of zeros made there would
    /// leave it (`zero_kept`).
    pub fn merged(&self, layer: u64, child: u64) -> Result<Merged> {
        let l = self.layer(layer)?;
        if l.top {
            return Err(Error::State(format!(
                "layer {layer} is a top: only frozen layers merge"
            )));
        }
        let c = self.layer(child)?;
        if c.parent != Some(layer) {
            return Err(Error::State(format!(
                "layer {child} is not a child of layer {layer}"
            )));
        }
        let root = l.parent.is_none();
        let mut pnos: Vec<u64> = l.pages.keys().copied().collect();
        if root {
            pnos.extend(c.pages.keys().copied());
            pnos.sort_unstable();
            pnos.dedup();
        }
        let mut merged = Merged::default();
        for pno in pnos {
            let before = c.pages.get(&pno).map_or([INHERIT; PAGE_ENTRIES], |p| **p);
            let mut page = Box::new(before);
            if let Some(below) = l.pages.get(&pno) {
                for (mine, &b) in page.iter_mut().zip(below.iter()) {
                    if *mine == INHERIT {
                        *mine = b;
                    } else if is_address(b) {
                        merged.shadowed.push(b);
                    }
                }
            }
            self.zero_kept(layer, pno, &mut page);
            if *page != before {
                let kept = (!all_inherit(&page)).then_some(page);
                merged.pages.push((pno, kept));
            }
        }
        Ok(merged)
    }

    /// Folds frozen `layer` into `child`, its only child (see `merged`); returns the addresses
    /// the child shadows (they lose the layer's reference). The child takes the layer's place in
    /// the graph.
    pub fn merge_into_child(&mut self, layer: u64, child: u64) -> Result<Vec<u64>> {
        self.merge_as(layer, child, false)
    }

    /// `merge_into_child`; `durable`: the catalog already holds the merged pages (an applied
    /// edit), so they are clean.
    pub fn merge_as(&mut self, layer: u64, child: u64, durable: bool) -> Result<Vec<u64>> {
        let children = self.children(layer);
        if children != [child] {
            return Err(Error::State(format!(
                "layer {layer} has children {children:?}: it merges only into its one child"
            )));
        }
        let Merged { pages, shadowed } = self.merged(layer, child)?;
        let gone = self.layers.remove(&layer).unwrap();
        self.held -= gone.pages.len() as u64;
        let c = self.layers.get_mut(&child).unwrap();
        c.parent = gone.parent;
        for (pno, page) in pages {
            let had = match page {
                Some(p) => c.pages.insert(pno, p),
                None => c.pages.remove(&pno),
            };
            self.held =
                self.held + u64::from(c.pages.contains_key(&pno)) - u64::from(had.is_some());
            if durable {
                self.dirty.remove(&(child, pno));
            } else {
                self.version += 1;
                self.dirty.insert((child, pno), self.version);
            }
        }
        if durable {
            self.dirty.retain(|k, _| k.0 != layer);
        } else {
            for pno in gone.pages.keys() {
                self.version += 1;
                self.dirty.insert((layer, *pno), self.version);
            }
        }
        self.graph_changed();
        Ok(shadowed)
    }

    /// What folding top `top` down into `layer`, its parent (frozen, with no other child), makes
    /// of the parent's pages, without doing it: for each page the top holds, the parent's page
    /// that changes (None: left all INHERIT, so dropped), and the parent's addresses the top's
    /// entries shadow. The top's entries win, as in `merged`; the cost is the top's pages, not
    /// the parent's. A ZERO left over what reads as zeros beneath the parent becomes INHERIT
    /// (`zero_kept`): the fold leaves what a write of zeros made straight to the parent would.
    pub fn folded(&self, top: u64, layer: u64) -> Result<Merged> {
        let t = self.layer(top)?;
        if !t.top || t.parent != Some(layer) {
            return Err(Error::State(format!(
                "layer {top} is not a top on layer {layer}: only a top folds into its parent"
            )));
        }
        let l = self.layer(layer)?;
        if l.top {
            return Err(Error::State(format!(
                "layer {layer} is a top: a top folds only into a frozen layer"
            )));
        }
        let mut merged = Merged::default();
        for (&pno, own) in &t.pages {
            let before = l.pages.get(&pno).map_or([INHERIT; PAGE_ENTRIES], |p| **p);
            let mut page = Box::new(before);
            for (below, &mine) in page.iter_mut().zip(own.iter()) {
                if mine != INHERIT {
                    if is_address(*below) {
                        merged.shadowed.push(*below);
                    }
                    *below = mine;
                }
            }
            self.zero_kept(layer, pno, &mut page);
            if *page != before {
                let kept = (!all_inherit(&page)).then_some(page);
                merged.pages.push((pno, kept));
            }
        }
        Ok(merged)
    }

    /// Page `pno` of frozen `layer` as it will be once a layer above is merged or folded into
    /// it: each ZERO kept only where the layers beneath `layer` read data, INHERIT where they
    /// read zeros. A write of zeros leaves exactly that (core.rs, `zero_entry`); a tombstone the
    /// layer took from above over zeros beneath would outlive a later `rebase --keep-writes`
    /// as zeros over the new golden's data, where the same write made with no layer between
    /// shows the golden's.
    fn zero_kept(&self, layer: u64, pno: u64, page: &mut Page) {
        if !page.contains(&ZERO) {
            return;
        }
        let beneath = self.below(layer, pno);
        for (i, e) in page.iter_mut().enumerate() {
            if *e == ZERO && !beneath.as_ref().is_some_and(|b| is_address(b[i])) {
                *e = INHERIT;
            }
        }
    }

    /// Folds top `top` into `layer`, its parent (see `folded`): the parent takes the top's
    /// entries and becomes a top itself, and the top goes. Returns the addresses shadowed (they
    /// lose the parent's reference; the top's own references move with its entries).
    /// `durable`: the catalog already holds the folded pages and lost the top's (an applied
    /// edit), so nothing is left dirty. Errors: not a top on a frozen parent, or the parent has
    /// another child.
    pub fn fold_as(&mut self, top: u64, layer: u64, durable: bool) -> Result<Vec<u64>> {
        let children = self.children(layer);
        if children != [top] {
            return Err(Error::State(format!(
                "layer {layer} has children {children:?}: only its one child folds into it"
            )));
        }
        let Merged { pages, shadowed } = self.folded(top, layer)?;
        let gone = self.layers.remove(&top).unwrap();
        self.held -= gone.pages.len() as u64;
        let l = self.layers.get_mut(&layer).unwrap();
        l.top = true;
        for (pno, page) in pages {
            let had = match page {
                Some(p) => l.pages.insert(pno, p),
                None => l.pages.remove(&pno),
            };
            self.held =
                self.held + u64::from(l.pages.contains_key(&pno)) - u64::from(had.is_some());
            if durable {
                self.dirty.remove(&(layer, pno));
            } else {
                self.version += 1;
                self.dirty.insert((layer, pno), self.version);
            }
        }
        if durable {
            self.dirty.retain(|k, _| k.0 != top);
        } else {
            for pno in gone.pages.keys() {
                self.version += 1;
                self.dirty.insert((top, *pno), self.version);
            }
        }
        self.graph_changed();
        Ok(shadowed)
    }

    // -- commits -------------------------------------------------------------------------------

    /// The dirty pages of every layer not in `exclude` (copies), and a token for `end`/`abort`.
    pub fn snapshot(&mut self, exclude: &HashSet<u64>) -> (u64, Vec<DirtyPage>) {
        let mut taken = Vec::new();
        let mut pages = Vec::new();
        for (&(layer, pno), &version) in &self.dirty {
            if exclude.contains(&layer) {
                continue;
            }
            taken.push(((layer, pno), version));
            let entries = self.page(layer, pno).map(|p| Box::new(*p));
            pages.push(DirtyPage {
                layer,
                page: pno,
                entries,
            });
        }
        pages.sort_by_key(|p| (p.layer, p.page));
        let token = self.next_token;
        self.next_token += 1;
        self.snapshots.insert(token, taken);
        (token, pages)
    }

    /// The snapshot committed: its pages are clean unless they changed since.
    pub fn end(&mut self, token: u64) {
        for (key, version) in self.snapshots.remove(&token).unwrap_or_default() {
            if self.dirty.get(&key) == Some(&version) {
                self.dirty.remove(&key);
            }
        }
        self.count_stored();
    }

    /// The snapshot's commit failed: its pages stay dirty.
    pub fn abort(&mut self, token: u64) {
        self.snapshots.remove(&token);
    }

    pub fn dirty_count(&self) -> usize {
        self.dirty.len()
    }

    // -- views ---------------------------------------------------------------------------------

    /// How many blocks read as data through `layer`. Frozen layers never change: cached.
    pub fn visible_blocks(&self, layer: u64) -> Result<u64> {
        let mut chain = Vec::new();
        let mut base = 0u64;
        let mut lid = Some(layer);
        while let Some(l) = lid {
            let entry = self.layer(l)?;
            if !entry.top {
                if let Some(&n) = self.visible.lock().get(&l) {
                    base = n;
                    break;
                }
            }
            chain.push(l);
            lid = entry.parent;
        }
        for &l in chain.iter().rev() {
            let entry = &self.layers[&l];
            let mut delta = 0i64;
            for (&pno, own) in &entry.pages {
                let below = entry.parent.and_then(|p| self.resolved(p, pno));
                for (i, &e) in own.iter().enumerate() {
                    if e != INHERIT {
                        let was = below.as_ref().is_some_and(|b| is_address(b[i]));
                        delta += is_address(e) as i64 - was as i64;
                    }
                }
            }
            base = (base as i64 + delta) as u64;
            if !entry.top {
                self.visible.lock().insert(l, base);
            }
        }
        Ok(base)
    }

    /// (address, layer, LBN) of every reference, sorted by address: the block view's reverse map.
    pub fn reverse_map(&self) -> Vec<(u64, u64, u64)> {
        let mut out = Vec::new();
        self.for_each_reference(|layer, lbn, addr| out.push((addr, layer, lbn)));
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(u64, Option<u64>, bool)]) -> Tables {
        let mut t = Tables::new();
        for &(l, p, top) in edges {
            t.add_layer(l, p, top).unwrap();
        }
        t
    }

    /// The pages counted as they come and go are the pages there, `n` of them.
    fn counted(t: &Tables, n: u64) -> bool {
        let there: u64 = t.layers.values().map(|l| l.pages.len() as u64).sum();
        t.page_count() == there && there == n
    }

    fn look(t: &Tables, layer: u64, lbn: u64, n: usize) -> Vec<u64> {
        let mut out = vec![0; n];
        t.lookup(layer, lbn, &mut out).unwrap();
        out
    }

    #[test]
    fn lookups_resolve_through_the_chain() {
        let mut t = graph(&[(1, None, true)]);
        t.set_entries(1, 0, &[10, 11, 12]).unwrap();
        t.set_top(1, false).unwrap();
        t.add_layer(2, Some(1), true).unwrap();
        t.add_layer(3, Some(1), true).unwrap();
        t.set_entries(2, 1, &[ZERO, 21]).unwrap();
        assert_eq!(look(&t, 2, 0, 4), vec![10, ZERO, 21, 0]);
        assert_eq!(look(&t, 3, 0, 4), vec![10, 11, 12, 0]);
        assert_eq!(look(&t, 1, 0, 3), vec![10, 11, 12]);
        // across a page boundary
        t.set_entries(2, 512, &[7]).unwrap();
        assert_eq!(look(&t, 2, 511, 2), vec![0, 7]);
    }

    #[test]
    fn unchanged_entries_dirty_nothing_and_inherit_pages_drop() {
        let mut t = graph(&[(1, None, true)]);
        assert!(t.set_entries(1, 5, &[INHERIT; 3]).unwrap().is_empty());
        assert_eq!(t.dirty_count(), 0);
        assert_eq!(t.page_count(), 0);
        t.set_entries(1, 5, &[4, 5]).unwrap();
        let (token, pages) = t.snapshot(&HashSet::new());
        assert_eq!(pages.len(), 1);
        t.end(token);
        assert_eq!(t.dirty_count(), 0);
        t.set_entries(1, 5, &[4, 5]).unwrap();
        assert_eq!(t.dirty_count(), 0);
        assert_eq!(
            t.set_entries(1, 5, &[INHERIT, INHERIT]).unwrap(),
            vec![4, 5]
        );
        assert_eq!(t.page_count(), 0);
        let (_, pages) = t.snapshot(&HashSet::new());
        assert!(
            pages[0].entries.is_none(),
            "a dropped page is deleted at commit"
        );
    }

    #[test]
    fn a_page_changed_during_a_commit_stays_dirty() {
        let mut t = graph(&[(1, None, true), (2, None, true)]);
        t.set_entries(1, 0, &[1]).unwrap();
        t.set_entries(2, 0, &[2]).unwrap();
        let (token, pages) = t.snapshot(&HashSet::from([2]));
        assert_eq!(pages.len(), 1, "provisional layer 2 excluded");
        t.set_entries(1, 1, &[3]).unwrap();
        t.end(token);
        assert_eq!(t.dirty_count(), 2);
        let (token, _) = t.snapshot(&HashSet::new());
        t.abort(token);
        assert_eq!(t.dirty_count(), 2);
    }

    #[test]
    fn merge_into_child_returns_shadowed_and_roots_lose_zero() {
        let mut t = graph(&[(1, None, false), (2, Some(1), true)]);
        t.set_entries(1, 0, &[10, 11, 12]).unwrap();
        t.set_entries(2, 0, &[20, ZERO]).unwrap();
        t.set_entries(2, 700, &[ZERO]).unwrap();
        assert!(counted(&t, 3));
        let shadowed = t.merge_into_child(1, 2).unwrap();
        assert!(counted(&t, 1));
        assert_eq!(shadowed, vec![10, 11]);
        assert_eq!(look(&t, 2, 0, 4), vec![20, INHERIT, 12, 0]);
        assert!(t.page(2, 1).is_none(), "a page left all INHERIT is dropped");
        assert_eq!(t.parent(2).unwrap(), None);
        assert!(!t.has_layer(1));
    }

    #[test]
    fn fold_moves_the_tops_entries_down_and_returns_only_what_they_shadow() {
        let mut t = graph(&[(1, None, false), (2, Some(1), false), (3, Some(2), true)]);
        t.set_top(2, true).unwrap();
        t.set_entries(2, 0, &[10, 11, 12]).unwrap();
        t.set_entries(2, 5000, &[13]).unwrap();
        t.set_top(2, false).unwrap();
        t.set_entries(3, 0, &[20, ZERO]).unwrap();
        t.set_entries(3, 1030, &[21]).unwrap();
        let (token, _) = t.snapshot(&HashSet::new());
        t.end(token);
        let planned = t.folded(3, 2).unwrap();
        assert_eq!(planned.shadowed, vec![10, 11]);
        assert_eq!(
            planned.pages.iter().map(|p| p.0).collect::<Vec<_>>(),
            vec![0, 2],
            "only the top's pages are written"
        );
        assert!(
            t.fold_as(2, 1, true).is_err(),
            "a frozen layer does not fold"
        );
        let shadowed = t.fold_as(3, 2, true).unwrap();
        assert_eq!(shadowed, vec![10, 11]);
        assert!(!t.has_layer(3) && t.is_top(2) && t.parent(2).unwrap() == Some(1));
        // LBN 1: zeros over the root's zeros need no tombstone (a_zero_is_kept_only_over_data).
        assert_eq!(look(&t, 2, 0, 3), vec![20, INHERIT, 12]);
        assert_eq!(look(&t, 2, 1030, 1), vec![21]);
        assert_eq!(look(&t, 2, 5000, 1), vec![13]);
        assert!(
            counted(&t, 3) && t.stored_pages() == 4,
            "stored: as of the last commit"
        );
        assert_eq!(t.dirty_count(), 0, "durable: the commit wrote it all");
        // Writable again: a write changes it in place.
        t.set_entries(2, 5000, &[22]).unwrap();
        assert_eq!(look(&t, 2, 5000, 1), vec![22]);
        // Onto a root, ZERO is INHERIT; a parent with another child refuses.
        let mut r = graph(&[(1, None, false), (2, Some(1), true), (4, Some(1), true)]);
        r.set_entries(2, 0, &[ZERO]).unwrap();
        assert!(r.fold_as(2, 1, false).is_err());
        r.drop_layer(4).unwrap();
        assert_eq!(r.fold_as(2, 1, false).unwrap(), Vec::<u64>::new());
        assert!(r.page(1, 0).is_none() && r.is_top(1) && counted(&r, 0));
    }

    #[test]
    fn a_zero_is_kept_only_over_data_beneath_after_a_fold_or_a_merge() {
        // 1 (root: data at LBN 0) <- 2 (data at 0 and 1) <- 3 (zeros at 0 and 1), frozen.
        let build = || {
            let mut t = graph(&[(1, None, true), (2, Some(1), true), (3, Some(2), true)]);
            t.set_entries(1, 0, &[10]).unwrap();
            t.set_entries(2, 0, &[20, 21]).unwrap();
            t.set_entries(3, 0, &[ZERO, ZERO]).unwrap();
            t.set_top(1, false).unwrap();
            t.set_top(2, false).unwrap();
            t
        };
        let own = |t: &Tables, layer| t.page(layer, 0).map(|p| p[..2].to_vec());
        // A write of zeros made straight to layer 2 would leave a tombstone over the root's data
        // only, INHERIT over its zeros: a fold and a merge into layer 2 leave the same.
        let mut folded = build();
        assert_eq!(folded.fold_as(3, 2, false).unwrap(), vec![20, 21]);
        assert_eq!(own(&folded, 2), Some(vec![ZERO, INHERIT]));
        let mut merged = build();
        merged.set_top(3, false).unwrap();
        merged.add_layer(4, Some(3), true).unwrap();
        assert_eq!(merged.merge_into_child(2, 3).unwrap(), vec![20, 21]);
        assert_eq!(own(&merged, 3), Some(vec![ZERO, INHERIT]));
        assert_eq!(look(&merged, 4, 0, 2), vec![ZERO, INHERIT]);
    }

    #[test]
    fn drop_layer_refuses_a_parent_and_returns_addresses() {
        let mut t = graph(&[(1, None, false), (2, Some(1), true)]);
        t.set_entries(2, 3, &[5, 5, ZERO]).unwrap();
        assert!(t.drop_layer(1).is_err());
        assert_eq!(t.drop_layer(2).unwrap(), vec![5, 5]);
        assert!(t.drop_layer(1).unwrap().is_empty());
        assert!(counted(&t, 0));
        let (_, pages) = t.snapshot(&HashSet::new());
        assert_eq!(pages.len(), 1);
        assert!(pages[0].entries.is_none());
    }

    #[test]
    fn visible_blocks_count_through_chains_and_cache_frozen_layers() {
        let mut t = graph(&[(1, None, true)]);
        t.set_entries(1, 0, &[1, 2, 3]).unwrap();
        t.set_top(1, false).unwrap();
        t.add_layer(2, Some(1), true).unwrap();
        t.set_entries(2, 0, &[ZERO, 9]).unwrap();
        t.set_entries(2, 10, &[8]).unwrap();
        assert_eq!(t.visible_blocks(1).unwrap(), 3);
        assert_eq!(t.visible_blocks(2).unwrap(), 3); // 1 gone, 2 replaced, one added
        assert_eq!(t.visible.lock().get(&1), Some(&3));
    }

    #[test]
    fn resolved_cache_follows_graph_changes() {
        let mut t = graph(&[(1, None, true)]);
        t.set_entries(1, 0, &[1]).unwrap();
        t.set_top(1, false).unwrap();
        t.add_layer(2, Some(1), false).unwrap();
        t.add_layer(3, Some(2), true).unwrap();
        assert_eq!(look(&t, 3, 0, 1), vec![1]);
        t.set_entries(2, 0, &[2]).unwrap(); // a structural edit into a frozen layer
        assert_eq!(look(&t, 3, 0, 1), vec![2]);
    }

    #[test]
    fn load_page_skips_unknown_layers_and_drops_inherit_pages() {
        let mut t = graph(&[(1, None, true)]);
        let mut blob = vec![0u8; 4096];
        assert!(t.load_page(1, 0, &blob).unwrap());
        assert_eq!(t.page_count(), 0);
        assert_eq!(
            t.dirty_count(),
            1,
            "deleted from the catalog at the next commit"
        );
        blob[8] = 3;
        assert!(!t.load_page(9, 0, &blob).unwrap());
        assert!(t.load_page(1, 2, &blob).unwrap());
        assert_eq!(look(&t, 1, 1024, 2), vec![0, 3]);
        assert!(t.load_page(1, 0, &blob[..10]).is_err());
    }
}
