//! The core: a block layer, the block tables and the VMs behind one lock, with the data path over
//! a VM. Written once over `Backend` (backend.rs): a local pool's slots (`Core<Blocks>`, the
//! default) or a block layer in Python (a cluster's).
//!
//! Data ops (TARGET.md, "Transactions"): `write`, `trim` (also write-zeroes) are atomic per
//! request in RAM. A write fingerprints its whole blocks before taking the lock, then, under the
//! lock: reads the partial blocks at either end, stores or shares the rest through the backend
//! (all or nothing: `NoSpace` refuses the request with nothing changed), and then sets the
//! block-table entries, which cannot fail, and drops the references they replace. No catalog work
//! per data op.
//!
//! A block of zeros takes no slot: its entry is INHERIT where the layers beneath read zeros there
//! too (always so in a root layer), else ZERO. A trim of a range that already reads as zeros
//! changes nothing and adds no page.
//!
//! `read` checks every block against its fingerprint (the backend does, as it copies it); a
//! mismatch is a `Corrupt` error naming the byte offset, never data.
//!
//! Locking: many threads call in at once with the GIL released. Reads share the lock and run in
//! parallel; writes, commits' bookkeeping and structural edits take it alone; a write hashes its
//! blocks before it takes the lock. A backend in Python is called with the lock held and then the
//! GIL taken: that order only, since no caller ever waits for the lock while it holds the GIL.
//!
//! Commits are Python's (it owns the catalog): `snapshot` (dirty pages + seal the pending frees),
//! `sync`, then Python writes the pages and commits sqlite, then `end` (pages clean, frees
//! released) or, if anything failed, `abort` (pages stay dirty, frees wait again). A structural
//! edit, once committed, is applied whole by `apply_edit`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock, RwLockUpgradableReadGuard};
use rayon::prelude::*;

use crate::backend::{Backend, ReadFault, Syncer};
use crate::blocks::Blocks;
use crate::error::{Error, Result};
use crate::fingerprint::{is_zero, Digest, Fingerprinter};
use crate::gate::Gate;
use crate::progress::{Meter, Sink};
use crate::rebuild::{self, Figures};
use crate::sharing::Sharing;
use crate::slots::{PoolId, SlotStore};
use crate::tables::{is_address, DirtyPage, Merged, Tables, INHERIT, PAGE_ENTRIES, ZERO};

/// Above this many bytes, a write fingerprints its blocks on all cores.
const PARALLEL_HASH_BYTES: usize = 1 << 20;

/// Disk the catalog needs for one block-table page: its row (4 KiB of entries and sqlite's
/// b-tree: 4.6 KB measured) or the WAL frames that delete it (4.7 KB: a delete rewrites the
/// row's pages). Writes leave free one such for each stored page (its delete) and two for each
/// dirty or new one (its commit's WAL frames and its row), so that at 100 % a VM can always be
/// deleted (ARCHITECTURE.md, "A full or damaged pool").
pub const CATALOG_PAGE_BYTES: u64 = 5 << 10;

/// Disk to leave free for the catalog's block-table pages, `adds` new ones about to be made.
pub fn catalog_bytes(tables: &Tables, adds: u64) -> u64 {
    let dirty = tables.dirty_count() as u64 + adds;
    (tables.stored_pages() + 2 * dirty) * CATALOG_PAGE_BYTES
}

#[derive(Clone, Debug)]
pub struct Vm {
    pub top: u64,
    pub size: u64,
}

pub struct State<B: Backend = Blocks> {
    pub blocks: B,
    pub tables: Tables,
    pub vms: HashMap<String, Vm>,
    /// A rebuild has counted the references: writes may go to the backend.
    pub ready: bool,
    /// What the last rebuild found wrong with the slot files that makes writing unsafe
    /// (references past the end of the data file, live blocks without a fingerprint): every
    /// write and structural edit is refused with it until a repair. A page found unreadable
    /// since the open refuses them too (`State::damage()`).
    pub damage: Option<String>,
    commits: HashMap<u64, u64>, // snapshot token -> sealed epoch
}

impl<B: Backend> State<B> {
    fn vm(&self, name: &str) -> Result<&Vm> {
        self.vms
            .get(name)
            .ok_or_else(|| Error::UnknownVm(name.to_string()))
    }

    /// What refuses writes: a page of a slot file found unreadable since the open (it holds
    /// zeros in the map now), else what the last rebuild found.
    fn damage(&self) -> Option<String> {
        self.blocks.unreadable().or_else(|| self.damage.clone())
    }

    /// The VM to write to; refused until a rebuild has counted the references.
    fn writable_vm(&self, name: &str) -> Result<Vm> {
        let vm = self.vm(name)?.clone();
        if !self.ready {
            return Err(Error::State(
                "the pool's index is not built: rebuild first".into(),
            ));
        }
        if let Some(damage) = self.damage() {
            return Err(Error::Format(damage));
        }
        if !self.tables.is_top(vm.top) {
            return Err(Error::State(format!(
                "VM '{name}': layer {} is frozen",
                vm.top
            )));
        }
        Ok(vm)
    }
}

/// The pages and sealed frees of one commit; hand the token back to `end` or `abort`.
pub struct Snapshot {
    pub token: u64,
    pub pages: Vec<DirtyPage>,
    /// Blocks were sealed with it (so the commit has work even with no page).
    pub frees: bool,
}

/// A structural edit the catalog has committed, as the core applies it (engine/layergraph.py's
/// LayerEdit, less what only the catalog needs).
#[derive(Default)]
pub struct Edit {
    pub removed_vms: Vec<String>,
    /// Layers that go, in order: (layer, None) is dropped with its pages, (layer, Some(child)) is
    /// folded into its only child.
    pub drops: Vec<(u64, Option<u64>)>,
    /// Tops folded down into their parent, after the drops: (top, parent). The parent takes
    /// the top's entries and becomes a top again (a VM's, by `vms`); the top goes.
    pub folds: Vec<(u64, u64)>,
    /// New writable layers, parents first: (layer, parent).
    pub new_layers: Vec<(u64, Option<u64>)>,
    /// Tops that become frozen (a clone's source).
    pub frozen: Vec<u64>,
    /// VMs registered or updated: (name, top, size).
    pub vms: Vec<(String, u64, u64)>,
}

/// A run of blocks for NBD block status: `length` bytes, allocated or reading as zeros.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub length: u64,
    pub zero: bool,
}

/// Extents being gathered over the bytes [start, end): blocks [from, to) join the last run
/// when of its kind; a new run past `limit` is refused.
struct Runs {
    out: Vec<Extent>,
    start: u64,
    end: u64,
    block_size: u64,
    limit: usize,
}

impl Runs {
    fn add(&mut self, from: u64, to: u64, zero: bool) -> bool {
        let bytes = self.end.min(to * self.block_size) - self.start.max(from * self.block_size);
        let full = self.out.len() >= self.limit;
        match self.out.last_mut() {
            Some(x) if x.zero == zero => x.length += bytes,
            _ if full => return false,
            _ => self.out.push(Extent {
                length: bytes,
                zero,
            }),
        }
        true
    }
}

/// (address, layer, LBN) of every reference, sorted; rebuilt when the tables' generation moves.
type ReverseMap = Arc<Vec<(u64, u64, u64)>>;

/// Who reads each block, for the tables' generation and the VMs (name, top) it was built for.
type SharingCache = Option<(u64, Vec<(String, u64)>, Arc<Sharing>)>;

pub struct Core<B: Backend = Blocks> {
    state: RwLock<State<B>>,
    reverse: Mutex<Option<(u64, ReverseMap)>>,
    sharing: Mutex<SharingCache>,
    gate: Gate,
    block_size: usize,
    fp: Fingerprinter,
    readonly: bool,
    syncer: Syncer,
}

/// One block of a request, as the write path sees it.
enum Src<'a> {
    Data(&'a [u8], Digest),
    Owned(Vec<u8>, Digest),
    Zero,
}

impl Src<'_> {
    fn bytes(&self) -> Option<(&[u8], &Digest)> {
        match self {
            Src::Data(b, d) => Some((b, d)),
            Src::Owned(b, d) => Some((b.as_slice(), d)),
            Src::Zero => None,
        }
    }
}

/// The blocks to store of a run of sources, their digests, and which sources are zeros.
fn split<'s>(srcs: &'s [Src<'s>]) -> (Vec<&'s [u8]>, Vec<Digest>, Vec<bool>) {
    let mut blocks = Vec::with_capacity(srcs.len());
    let mut digests = Vec::with_capacity(srcs.len());
    let mut zeros = Vec::with_capacity(srcs.len());
    for s in srcs {
        match s.bytes() {
            Some((b, d)) => {
                blocks.push(b);
                digests.push(*d);
                zeros.push(false);
            }
            None => zeros.push(true),
        }
    }
    (blocks, digests, zeros)
}

impl Core<Blocks> {
    /// A core over a pool directory's slot files (see `SlotStore::open`), or in RAM if `dir` is
    /// None. Writes wait until the first `rebuild`.
    pub fn open(
        dir: Option<&Path>,
        block_size: usize,
        readonly: bool,
        create: bool,
        fp: Fingerprinter,
    ) -> Result<Self> {
        let store = match dir {
            Some(dir) => SlotStore::open(dir, block_size, readonly, create)?,
            None => SlotStore::in_memory(block_size)?,
        };
        Ok(Core::over(Blocks::new(store, fp), block_size, readonly, fp))
    }

    /// Rebuilds refcounts, index and free space from the pages in RAM (see `rebuild`). Writes
    /// wait meanwhile; reads go on. Errors: `Cancelled` (nothing changed), `Io`.
    pub fn rebuild(&self, full: bool, reclaim: bool, sink: Sink) -> Result<Figures> {
        self.gate.hold_writes();
        let result = (|| {
            let st = self.state.upgradable_read();
            let rebuilt = rebuild::rebuild(&st, full, &mut *sink)?;
            let mut st = RwLockUpgradableReadGuard::upgrade(st);
            let figures = rebuild::install(&mut st, rebuilt, reclaim && !self.readonly)?;
            drop(st);
            // Reported once the lock is let go: a progress callback may look at the pool.
            let mut sink: Sink = &mut *sink;
            Meter::new(&mut sink, "space", 1, 1).finish()?;
            Ok(figures)
        })();
        // Even a failed first rebuild lets writes in: they are refused (no index), never hung.
        self.gate.release_writes();
        result
    }

    /// Repairs what a truncated, deleted or replaced slot file left (`rebuild --full --repair`;
    /// run a full rebuild after it): every slot the tables reference past the end of the data
    /// file gets a place (the file grows) and is known corrupt, its data being gone; every
    /// referenced slot without a fingerprint gets one computed from its data (which cannot tell
    /// rot from a lost fingerprint: the data is trusted). Returns (fingerprints computed, slots
    /// whose data is gone). Errors: `NoSpace`, `Io`, `ReadOnly`.
    pub fn repair(&self) -> Result<(u64, Vec<u64>)> {
        self.refuse_readonly()?;
        let mut st = self.state.write();
        let st = &mut *st;
        let capacity = st.blocks.store.capacity();
        let mut referenced = BTreeSet::new();
        for page in st.tables.pages() {
            referenced.extend(
                page.iter()
                    .copied()
                    .filter(|&e| crate::tables::is_address(e)),
            );
        }
        let lost: Vec<u64> = referenced.range(capacity..).copied().collect();
        if let Some(&last) = lost.last() {
            st.blocks.store.grow(last + 1 - capacity)?;
        }
        let mut computed = 0;
        let store = &mut st.blocks.store;
        for &slot in referenced.range(..capacity) {
            if store.digest(slot) == [0; 16] {
                let digest = st.blocks.fp.of(store.block(slot));
                store.put_digest(slot, &digest);
                computed += 1;
            }
        }
        store.sync()?;
        st.blocks.corrupt.write().extend(lost.iter().copied());
        Ok((computed, lost))
    }

    /// The pool id stamped in the slot files (see `SlotStore::owner`).
    pub fn owner(&self) -> (PoolId, PoolId) {
        self.state.read().blocks.store.owner()
    }

    /// Stamps the slot files with the pool's id (see `SlotStore::stamp`). Error: `ReadOnly`.
    pub fn stamp_owner(&self, id: &PoolId) -> Result<()> {
        self.refuse_readonly()?;
        self.state.write().blocks.store.stamp(id);
        Ok(())
    }

    /// What makes writing unsafe: a page of a slot file found unreadable since the open, or what
    /// the last rebuild found (see `State::damage`).
    pub fn damage(&self) -> Option<String> {
        self.state.read().damage()
    }

    pub fn corrupt_slots(&self) -> Vec<u64> {
        let st = self.state.read();
        let slots = st.blocks.corrupt.read().iter().copied().collect();
        slots
    }

    /// Remembers slots known to be corrupt (e.g. restored from the catalog at open).
    pub fn mark_corrupt(&self, slots: &[u64]) {
        let st = self.state.read();
        let mut set = st.blocks.corrupt.write();
        set.extend(
            slots
                .iter()
                .copied()
                .filter(|&s| s > 0 && s < st.blocks.store.capacity()),
        );
    }

    /// Verifies up to `limit` live slots above `after` against their fingerprints (a scrub's
    /// step): (the last slot checked, or 0 when none was left; how many; those found rotten,
    /// now known corrupt).
    pub fn scrub(&self, after: u64, limit: usize) -> Result<(u64, usize, Vec<u64>)> {
        let st = self.state.read();
        let slots: Vec<u64> = st.blocks.refs.live_from(after + 1).take(limit).collect();
        let bad = crate::check::rehash(&st, &slots, &mut |_: &crate::progress::Report| Ok(()))?;
        Ok((slots.last().copied().unwrap_or(0), slots.len(), bad))
    }
}

impl<B: Backend> Core<B> {
    /// A core over a block layer. Writes wait until the first rebuild (`rebuild` for a local
    /// core, `rebuild_with` for any).
    pub fn over(blocks: B, block_size: usize, readonly: bool, fp: Fingerprinter) -> Self {
        let syncer = blocks.syncer();
        let gate = Gate::new();
        gate.hold_writes();
        Core {
            state: RwLock::new(State {
                blocks,
                tables: Tables::new(),
                vms: HashMap::new(),
                ready: false,
                damage: None,
                commits: HashMap::new(),
            }),
            reverse: Mutex::new(None),
            sharing: Mutex::new(None),
            gate,
            block_size,
            fp,
            readonly,
            syncer,
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn readonly(&self) -> bool {
        self.readonly
    }

    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// The state, shared (views) or alone (structural edits, which Python makes with the gate
    /// closed).
    pub fn state(&self) -> parking_lot::RwLockReadGuard<'_, State<B>> {
        self.state.read()
    }

    pub fn state_mut(&self) -> parking_lot::RwLockWriteGuard<'_, State<B>> {
        self.state.write()
    }

    // -- VMs ---------------------------------------------------------------------------------------

    /// Registers (or updates) a VM: a top layer that must exist, and a size in bytes.
    pub fn set_vm(&self, name: &str, top: u64, size: u64) -> Result<()> {
        let mut st = self.state.write();
        if !st.tables.has_layer(top) {
            return Err(Error::State(format!(
                "VM '{name}': top layer {top} does not exist"
            )));
        }
        st.vms.insert(name.to_string(), Vm { top, size });
        Ok(())
    }

    pub fn remove_vm(&self, name: &str) -> Result<()> {
        self.state
            .write()
            .vms
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| Error::UnknownVm(name.into()))
    }

    fn check_range(vm_name: &str, vm: &Vm, offset: u64, length: u64) -> Result<()> {
        match offset.checked_add(length) {
            Some(end) if end <= vm.size => Ok(()),
            _ => Err(Error::OutOfRange(format!(
                "range {offset}+{length} is outside VM '{vm_name}' ({} bytes)",
                vm.size
            ))),
        }
    }

    fn refuse_readonly(&self) -> Result<()> {
        if self.readonly {
            return Err(Error::ReadOnly("the pool is open read-only".into()));
        }
        Ok(())
    }

    // -- writes ------------------------------------------------------------------------------------

    /// Writes `data` at byte `offset` of VM `name`. Errors (nothing changed): `UnknownVm`,
    /// `OutOfRange`, `ReadOnly`, `NoSpace`, `Corrupt` (a partial block to merge with is rotten),
    /// or the backend's own.
    pub fn write(&self, name: &str, offset: u64, data: &[u8]) -> Result<()> {
        self.refuse_readonly()?;
        let bs = self.block_size as u64;
        let len = data.len() as u64;
        // The whole blocks of the request are fingerprinted before the lock is taken.
        let lead = ((bs - offset % bs) % bs).min(len);
        let whole = (len - lead) / bs;
        let body = &data[lead as usize..(lead + whole * bs) as usize];
        let digests = self.fingerprint_nonzero(body);

        let _pass = self.gate.enter(true);
        let mut st = self.state.write();
        let vm = st.writable_vm(name)?;
        Self::check_range(name, &vm, offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let first = offset / bs;
        let last = (offset + len - 1) / bs;
        let body_lbn = (offset + lead) / bs;
        let mut srcs = Vec::with_capacity((last - first + 1) as usize);
        for lbn in first..=last {
            let start = lbn * bs;
            if start >= offset && start + bs <= offset + len {
                let i = (lbn - body_lbn) as usize;
                let block = &body[i * bs as usize..(i + 1) * bs as usize];
                srcs.push(match digests[i] {
                    Some(d) => Src::Data(block, d),
                    None => Src::Zero,
                });
            } else {
                // A partial block: read, modify, write.
                let mut buf = vec![0u8; bs as usize];
                self.read_block(&st, name, &vm, lbn, &mut buf)?;
                let from = offset.max(start);
                let to = (offset + len).min(start + bs);
                buf[(from - start) as usize..(to - start) as usize]
                    .copy_from_slice(&data[(from - offset) as usize..(to - offset) as usize]);
                srcs.push(self.owned(buf));
            }
        }
        Self::put_blocks(&mut st, vm.top, first, srcs)
    }

    /// Frees the range: it reads back as zeros (NBD TRIM and WRITE_ZEROES). A range that already
    /// reads as zeros changes nothing. Errors as `write`.
    pub fn trim(&self, name: &str, offset: u64, length: u64) -> Result<()> {
        self.refuse_readonly()?;
        let _pass = self.gate.enter(true);
        let mut st = self.state.write();
        let vm = st.writable_vm(name)?;
        Self::check_range(name, &vm, offset, length)?;
        if length == 0 {
            return Ok(());
        }
        self.trim_range(&mut st, name, &vm, offset, offset + length)
    }

    /// Trims whatever VM `name`'s chain holds from its end on (`trim` stops at the end): a VM
    /// put on a base larger than itself (a refresh of a clone made before its golden's size was
    /// kept) would otherwise read the base's data there once grown, and count it meanwhile.
    /// Costs the pages the chain holds past the end. Errors as `write`.
    pub fn cut_past_end(&self, name: &str) -> Result<()> {
        self.refuse_readonly()?;
        let bs = self.block_size as u64;
        let _pass = self.gate.enter(true);
        let mut st = self.state.write();
        let vm = st.writable_vm(name)?;
        // The last LBN a page can hold: no block lies past it.
        self.trim_range(&mut st, name, &vm, vm.size, u64::MAX / bs * bs)
    }

    /// `trim` of [offset, end) under the write lock, with no check of the VM's size.
    fn trim_range(
        &self,
        st: &mut State<B>,
        name: &str,
        vm: &Vm,
        offset: u64,
        end: u64,
    ) -> Result<()> {
        let bs = self.block_size as u64;
        if offset >= end {
            return Ok(());
        }
        let first_whole = offset.div_ceil(bs);
        let last_whole = end / bs; // one past
        let adds = Self::pages_trim_adds(&st.tables, vm.top, offset / bs, end.div_ceil(bs));
        Self::keep_for_catalog(st, adds)?;

        // Partial blocks at either end: zero their part (read, modify, write).
        let mut edges = Vec::new();
        let mut edge_lbns = Vec::new();
        for lbn in [offset / bs, (end - 1) / bs] {
            let start = lbn * bs;
            let partial = start < offset || start + bs > end;
            if partial && !edge_lbns.contains(&lbn) {
                let mut buf = vec![0u8; bs as usize];
                self.read_block(st, name, vm, lbn, &mut buf)?;
                let from = offset.max(start);
                let to = end.min(start + bs);
                buf[(from - start) as usize..(to - start) as usize].fill(0);
                edges.push(self.owned(buf));
                edge_lbns.push(lbn);
            }
        }
        // The edges are stored first: the whole-block part cannot fail.
        let (blocks, digests, zeros) = split(&edges);
        let mut addrs = st.blocks.store(&blocks, &digests)?.into_iter();
        let mut replaced = Vec::new();
        for (lbn, zero) in edge_lbns.iter().zip(zeros) {
            let entry = if zero {
                Self::zero_entry(&st.tables, vm.top, *lbn)
            } else {
                addrs.next().unwrap()
            };
            Self::set_run(st, vm.top, *lbn, &[entry], &mut replaced);
        }
        let mut lbn = first_whole;
        while lbn < last_whole {
            let mut pno = lbn / PAGE_ENTRIES as u64;
            // Pages no layer of the chain holds read as zeros already: jump past them, so that
            // trimming (or shrinking) a huge sparse VM does not visit every page of its size.
            match st.tables.next_page_in_chain(vm.top, pno) {
                None => break,
                Some(next) if next > pno => {
                    pno = next;
                    lbn = next * PAGE_ENTRIES as u64;
                    if lbn >= last_whole {
                        break;
                    }
                }
                Some(_) => {}
            }
            let n = (PAGE_ENTRIES as u64 - lbn % PAGE_ENTRIES as u64).min(last_whole - lbn);
            let below = st.tables.below(vm.top, pno);
            let own = st.tables.page(vm.top, pno).copied();
            if own.is_some() || below.is_some() {
                let first = (lbn % PAGE_ENTRIES as u64) as usize;
                let entries: Vec<u64> = (first..first + n as usize)
                    .map(|i| {
                        let cur = own.map_or(INHERIT, |p| p[i]);
                        let below_zero = below.as_ref().is_none_or(|b| !is_address(b[i]));
                        match cur {
                            ZERO => ZERO,
                            _ if below_zero => INHERIT,
                            _ => ZERO,
                        }
                    })
                    .collect();
                Self::set_run(st, vm.top, lbn, &entries, &mut replaced);
            }
            lbn += n;
        }
        st.blocks.decref(&replaced)
    }

    fn owned(&self, buf: Vec<u8>) -> Src<'static> {
        if is_zero(&buf) {
            Src::Zero
        } else {
            let d = self.fp.of(&buf);
            Src::Owned(buf, d)
        }
    }

    /// The fingerprint of each block of `body`, None for a block of zeros.
    fn fingerprint_nonzero(&self, body: &[u8]) -> Vec<Option<Digest>> {
        let bs = self.block_size;
        let one = |b: &[u8]| {
            if is_zero(b) {
                None
            } else {
                Some(self.fp.of(b))
            }
        };
        if body.len() >= PARALLEL_HASH_BYTES {
            body.par_chunks_exact(bs).map(one).collect()
        } else {
            body.chunks_exact(bs).map(one).collect()
        }
    }

    /// Stores, shares or zeroes consecutive blocks of layer `top` from `lbn0`: all or nothing.
    fn put_blocks(st: &mut State<B>, top: u64, lbn0: u64, srcs: Vec<Src>) -> Result<()> {
        let (blocks, digests, zeros) = split(&srcs);
        let adds = Self::pages_added(&st.tables, top, lbn0, &zeros);
        Self::keep_for_catalog(st, adds)?;
        // Once the blocks are stored, nothing can fail: the request is applied whole.
        let mut addrs = st.blocks.store(&blocks, &digests)?.into_iter();
        let mut entries = Vec::with_capacity(srcs.len());
        for (i, zero) in zeros.into_iter().enumerate() {
            entries.push(if zero {
                Self::zero_entry(&st.tables, top, lbn0 + i as u64)
            } else {
                addrs.next().unwrap()
            });
        }
        let mut replaced = Vec::new();
        let mut done = 0usize;
        while done < entries.len() {
            let lbn = lbn0 + done as u64;
            let n = (PAGE_ENTRIES - (lbn % PAGE_ENTRIES as u64) as usize).min(entries.len() - done);
            Self::set_run(st, top, lbn, &entries[done..done + n], &mut replaced);
            done += n;
        }
        st.blocks.decref(&replaced)
    }

    /// How many pages writing blocks from `lbn0` adds to `top` (`zeros[i]`: block i is all
    /// zeros): those it lacks where an entry other than INHERIT goes.
    fn pages_added(tables: &Tables, top: u64, lbn0: u64, zeros: &[bool]) -> u64 {
        let per = PAGE_ENTRIES as u64;
        let mut added = 0;
        let mut i = 0usize;
        while i < zeros.len() {
            let lbn = lbn0 + i as u64;
            let n = ((per - lbn % per) as usize).min(zeros.len() - i);
            if tables.page(top, lbn / per).is_none()
                && (i..i + n)
                    .any(|j| !zeros[j] || Self::zero_entry(tables, top, lbn0 + j as u64) != INHERIT)
            {
                added += 1;
            }
            i += n;
        }
        added
    }

    /// How many pages trimming LBNs `first..past` adds to `top`: those it lacks where a layer
    /// beneath names a block (the trim leaves ZERO tombstones there).
    fn pages_trim_adds(tables: &Tables, top: u64, first: u64, past: u64) -> u64 {
        let per = PAGE_ENTRIES as u64;
        let mut added = 0;
        let mut pno = first / per;
        while let Some(p) = tables.next_page_in_chain(top, pno) {
            let start = p * per;
            if start >= past {
                break;
            }
            if tables.page(top, p).is_none() {
                if let Some(below) = tables.below(top, p) {
                    let from = (first.max(start) - start) as usize;
                    let to = (past.min(start + per) - start) as usize;
                    added += u64::from(below[from..to].iter().any(|&e| is_address(e)));
                }
            }
            pno = p + 1;
        }
        added
    }

    /// Tells the backend what to leave free for the catalog's pages, `adds` more of them about
    /// to be made: refused (`NoSpace`, nothing changed) if the disk has not that room now.
    fn keep_for_catalog(st: &mut State<B>, adds: u64) -> Result<()> {
        let bytes = catalog_bytes(&st.tables, adds);
        st.blocks.keep_for_catalog(bytes, adds > 0)
    }

    /// The entry for a block of zeros at `lbn` of `top`: INHERIT where the layers beneath read
    /// zeros too, else a ZERO tombstone.
    fn zero_entry(tables: &Tables, top: u64, lbn: u64) -> u64 {
        let pno = lbn / PAGE_ENTRIES as u64;
        match tables.below(top, pno) {
            Some(b) if is_address(b[(lbn % PAGE_ENTRIES as u64) as usize]) => ZERO,
            _ => INHERIT,
        }
    }

    /// set_entries within one page; the addresses the page no longer holds join `replaced`
    /// (the caller drops their references once, at the end).
    fn set_run(st: &mut State<B>, top: u64, lbn: u64, entries: &[u64], replaced: &mut Vec<u64>) {
        let old = st
            .tables
            .set_entries(top, lbn, entries)
            .expect("top layer checked");
        replaced.extend(old);
    }

    // -- reads -------------------------------------------------------------------------------------

    /// Reads `out.len()` bytes at `offset` of VM `name` into `out`, every block verified.
    /// Errors: `UnknownVm`, `OutOfRange`, `Corrupt` (naming the byte offset of the bad block), or
    /// the backend's own.
    pub fn read_into(&self, name: &str, offset: u64, out: &mut [u8]) -> Result<()> {
        let bs = self.block_size as u64;
        let len = out.len() as u64;
        let _pass = self.gate.enter(false);
        let st = self.state.read();
        let vm = st.vm(name)?;
        Self::check_range(name, vm, offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let first = offset / bs;
        let last = (offset + len - 1) / bs;
        let mut entries = vec![0u64; (last - first + 1) as usize];
        st.tables.lookup(vm.top, first, &mut entries)?;
        if offset.is_multiple_of(bs) && len.is_multiple_of(bs) {
            return self.read_blocks(&st, name, first, &entries, out);
        }
        // Unaligned: whole blocks into a buffer, then the part asked for.
        let mut buf = vec![0u8; entries.len() * bs as usize];
        self.read_blocks(&st, name, first, &entries, &mut buf)?;
        let start = (offset - first * bs) as usize;
        out.copy_from_slice(&buf[start..start + out.len()]);
        Ok(())
    }

    pub fn read(&self, name: &str, offset: u64, length: u64) -> Result<Vec<u8>> {
        let mut out = vec![0u8; length as usize];
        self.read_into(name, offset, &mut out)?;
        Ok(out)
    }

    /// The blocks behind `entries` (from `lbn0`) into `out`, one block each: zeros where no block,
    /// the rest from the backend, verified.
    fn read_blocks(
        &self,
        st: &State<B>,
        name: &str,
        lbn0: u64,
        entries: &[u64],
        out: &mut [u8],
    ) -> Result<()> {
        let mut pieces = Vec::with_capacity(entries.len());
        let mut lbns = Vec::with_capacity(entries.len());
        for (i, (&e, dst)) in entries
            .iter()
            .zip(out.chunks_mut(self.block_size))
            .enumerate()
        {
            if is_address(e) {
                pieces.push((e, dst));
                lbns.push(lbn0 + i as u64);
            } else {
                dst.fill(0);
            }
        }
        if pieces.is_empty() {
            return Ok(());
        }
        st.blocks.read(&mut pieces).map_err(|fault| match fault {
            ReadFault::Rotten(i) => Error::Corrupt {
                vm: name.to_string(),
                offset: lbns[i] * self.block_size as u64,
                slot: pieces[i].0,
            },
            ReadFault::Failed(e) => e,
        })
    }

    /// One block of a VM, verified, for a read-modify-write under the write lock.
    fn read_block(
        &self,
        st: &State<B>,
        name: &str,
        vm: &Vm,
        lbn: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        let mut e = [0u64];
        st.tables.lookup(vm.top, lbn, &mut e)?;
        self.read_blocks(st, name, lbn, &e, buf)
    }

    /// Runs of allocated and zero blocks over the range, for NBD block status: lengths add up to
    /// `length`, or, once `limit` runs are made, to less (the last run then ends where the next
    /// would start). Walks only the pages the VM's chain holds: a hole of any size is one step,
    /// so the cost follows the mapped data, not the range. Errors: `UnknownVm`, `OutOfRange`.
    pub fn extents(
        &self,
        name: &str,
        offset: u64,
        length: u64,
        limit: usize,
    ) -> Result<Vec<Extent>> {
        let bs = self.block_size as u64;
        let pe = PAGE_ENTRIES as u64;
        let _pass = self.gate.enter(false);
        let st = self.state.read();
        let vm = st.vm(name)?;
        Self::check_range(name, vm, offset, length)?;
        let mut runs = Runs {
            out: Vec::new(),
            start: offset,
            end: offset + length,
            block_size: bs,
            limit: limit.max(1),
        };
        if length == 0 {
            return Ok(runs.out);
        }
        let stop = (offset + length - 1) / bs + 1;
        let mut lbn = offset / bs;
        let mut entries = [INHERIT; PAGE_ENTRIES];
        'walk: while lbn < stop {
            let pno = lbn / pe;
            match st.tables.next_page_in_chain(vm.top, pno) {
                Some(next) if next == pno => {}
                next => {
                    // No page of the chain until `next`: all of it reads as zeros.
                    let to = next.map_or(stop, |n| stop.min(n * pe));
                    if !runs.add(lbn, to, true) {
                        break;
                    }
                    lbn = to;
                    continue;
                }
            }
            let n = (pe - lbn % pe).min(stop - lbn) as usize;
            st.tables.lookup(vm.top, lbn, &mut entries[..n])?;
            for (i, &e) in entries[..n].iter().enumerate() {
                let at = lbn + i as u64;
                if !runs.add(at, at + 1, !is_address(e)) {
                    break 'walk;
                }
            }
            lbn += n as u64;
        }
        Ok(runs.out)
    }

    /// The first LBN at or after `lbn` of VM `name` whose block is stored (None: none up to the
    /// end of its tables); see Tables::next_mapped. Errors: `UnknownVm`.
    pub fn next_mapped(&self, name: &str, lbn: u64) -> Result<Option<u64>> {
        let _pass = self.gate.enter(false);
        let st = self.state.read();
        let vm = st.vm(name)?;
        st.tables.next_mapped(vm.top, lbn)
    }

    /// The visible address of `out.len()` blocks of a layer from `lbn` (0 reads as zeros).
    pub fn lookup(&self, layer: u64, lbn: u64, out: &mut [u64]) -> Result<()> {
        self.state.read().tables.lookup(layer, lbn, out)?;
        for e in out.iter_mut() {
            if *e == ZERO {
                *e = 0;
            }
        }
        Ok(())
    }

    // -- commits -----------------------------------------------------------------------------------

    /// The dirty pages of every layer outside `exclude` (provisional layers), and the pending
    /// frees sealed with them.
    pub fn snapshot(&self, exclude: &HashSet<u64>) -> Result<Snapshot> {
        let mut st = self.state.write();
        let (epoch, frees) = st.blocks.seal()?;
        let (token, pages) = st.tables.snapshot(exclude);
        st.commits.insert(token, epoch);
        Ok(Snapshot {
            token,
            pages,
            frees,
        })
    }

    /// Makes every block stored so far durable (no lock held: data ops go on meanwhile).
    pub fn sync(&self) -> Result<()> {
        (self.syncer)()
    }

    /// The snapshot is committed: its pages are clean unless changed since; its frees are
    /// released (slots allocatable, fingerprints zeroed). Returns how many were released.
    pub fn end(&self, token: u64) -> Result<u64> {
        let mut st = self.state.write();
        st.tables.end(token);
        match st.commits.remove(&token) {
            Some(epoch) => st.blocks.release(epoch),
            None => Ok(0),
        }
    }

    /// The snapshot's commit failed: its pages stay dirty, its frees wait for the next commit.
    pub fn abort(&self, token: u64) -> Result<()> {
        let mut st = self.state.write();
        st.tables.abort(token);
        match st.commits.remove(&token) {
            Some(epoch) => st.blocks.unseal(epoch),
            None => Ok(()),
        }
    }

    // -- structural edits --------------------------------------------------------------------------

    /// What merging frozen `layer` into its only child makes of the child's pages (see
    /// `Tables::merged`): for the edit's log, before the edit is applied.
    pub fn merged(&self, layer: u64, child: u64) -> Result<Merged> {
        self.state.read().tables.merged(layer, child)
    }

    /// What folding top `top` down into its parent `layer` makes of the parent's pages (see
    /// `Tables::folded`): for the edit's log, before the edit is applied.
    pub fn folded(&self, top: u64, layer: u64) -> Result<Merged> {
        self.state.read().tables.folded(top, layer)
    }

    /// Applies a committed structural edit whole, under one lock (Python calls it with the
    /// gate closed, right after the commit that logged the edit): VMs removed, layers dropped
    /// or merged, tops folded into their parents (their pages are durable already: nothing is
    /// left dirty), new tops, frozen
    /// tops, VMs put; then the references the dropped and shadowed entries held are released at
    /// once, since their removal is durable. Returns how many blocks were freed.
    pub fn apply_edit(&self, edit: &Edit) -> Result<u64> {
        let mut st = self.state.write();
        for name in &edit.removed_vms {
            st.vms.remove(name);
        }
        let mut released = Vec::new();
        for &(layer, into) in &edit.drops {
            released.extend(match into {
                None => st.tables.drop_layer_as(layer, true)?,
                Some(child) => st.tables.merge_as(layer, child, true)?,
            });
        }
        for &(top, layer) in &edit.folds {
            released.extend(st.tables.fold_as(top, layer, true)?);
        }
        for &(layer, parent) in &edit.new_layers {
            if !st.tables.has_layer(layer) {
                st.tables.add_layer(layer, parent, true)?;
            }
        }
        for &layer in &edit.frozen {
            st.tables.set_top(layer, false)?;
        }
        for (name, top, size) in &edit.vms {
            if !st.tables.has_layer(*top) {
                return Err(Error::State(format!(
                    "VM '{name}': top layer {top} does not exist"
                )));
            }
            st.vms.insert(
                name.clone(),
                Vm {
                    top: *top,
                    size: *size,
                },
            );
        }
        st.tables.count_stored();
        if released.is_empty() {
            return Ok(0);
        }
        // With the gate closed and the edit's commit just done, nothing else waits to be freed:
        // the epoch sealed here holds exactly what the edit released.
        st.blocks.decref(&released)?;
        let (epoch, _) = st.blocks.seal()?;
        st.blocks.release(epoch)
    }

    // -- rebuild -----------------------------------------------------------------------------------

    /// A rebuild by the backend itself (a Python block layer's): holds writes back, hands
    /// `rebuild` every reference (each address once per entry naming it) and the number of pages,
    /// and lets writes go to the backend once it succeeds. Reads go on meanwhile.
    pub fn rebuild_with<T>(&self, rebuild: impl FnOnce(Vec<u64>, u64) -> Result<T>) -> Result<T> {
        self.gate.hold_writes();
        let (refs, pages) = {
            let st = self.state.read();
            (st.tables.references(), st.tables.page_count())
        };
        let result = rebuild(refs, pages);
        if result.is_ok() {
            self.state.write().ready = true;
        }
        self.gate.release_writes();
        result
    }

    /// Runs `f` over every reference (with repeats) while no change can happen: a Python block
    /// layer's fsck judges one consistent state.
    pub fn with_references<T>(&self, f: impl FnOnce(&[u64]) -> T) -> T {
        let st = self.state.read();
        f(&st.tables.references())
    }

    // -- views -------------------------------------------------------------------------------------

    /// Where block `addr` is referenced: (layer, LBN) pairs, from the reverse map (built once per
    /// generation of the tables, so a page of the block view costs one build).
    pub fn references(&self, addr: u64) -> Vec<(u64, u64)> {
        let st = self.state.read();
        let map = self.reverse_map(&st);
        let from = map.partition_point(|r| r.0 < addr);
        map[from..]
            .iter()
            .take_while(|r| r.0 == addr)
            .map(|r| (r.1, r.2))
            .collect()
    }

    fn reverse_map(&self, st: &State<B>) -> ReverseMap {
        let mut cached = self.reverse.lock();
        match &*cached {
            Some((generation, map)) if *generation == st.tables.generation => map.clone(),
            _ => {
                let map = Arc::new(st.tables.reverse_map());
                *cached = Some((st.tables.generation, map.clone()));
                map
            }
        }
    }

    /// Who reads each block (built once per generation of the tables and of the VMs).
    fn sharing(&self, st: &State<B>) -> (ReverseMap, Arc<Sharing>) {
        let reverse = self.reverse_map(st);
        let mut vms: Vec<(String, u64)> =
            st.vms.iter().map(|(n, vm)| (n.clone(), vm.top)).collect();
        vms.sort();
        let mut cached = self.sharing.lock();
        if let Some((generation, key, sharing)) = &*cached {
            if *generation == st.tables.generation && *key == vms {
                return (reverse, sharing.clone());
            }
        }
        let sharing = Arc::new(Sharing::build(&st.tables, &vms, &reverse));
        *cached = Some((st.tables.generation, vms, sharing.clone()));
        (reverse, sharing)
    }

    /// The VMs that read block `addr` somewhere (the block view): those reading through a layer
    /// that holds it, at an LBN where nothing above in their chain shadows it. Sorted.
    pub fn vms_reading(&self, addr: u64) -> Vec<String> {
        let st = self.state.read();
        let (reverse, sharing) = self.sharing(&st);
        sharing.names_of(addr, &reverse)
    }

    /// How many VMs read each of `addrs` (as `vms_reading` counts them; 0: not referenced).
    pub fn readers_of(&self, addrs: &[u64]) -> Vec<u64> {
        let st = self.state.read();
        self.sharing(&st).1.readers_of(addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Report;

    pub(crate) fn no_progress() -> impl FnMut(&Report) -> Result<()> {
        |_: &Report| Ok(())
    }

    pub(crate) fn core() -> Core {
        let c = Core::open(None, 4096, false, true, Fingerprinter::Xxh3).unwrap();
        c.rebuild(false, true, &mut no_progress()).unwrap();
        c
    }

    #[test]
    fn a_page_is_added_only_where_more_than_inherit_goes() {
        let mut t = Tables::new();
        t.add_layer(1, None, false).unwrap();
        t.add_layer(2, Some(1), true).unwrap();
        t.set_entries(1, 0, &[7]).unwrap(); // page 0 of the frozen base names a block at LBN 0
        t.add_layer(3, None, true).unwrap();
        t.set_entries(3, 0, &[8]).unwrap();
        let added = |top, lbn0, zeros: &[bool]| Core::<Blocks>::pages_added(&t, top, lbn0, zeros);
        assert_eq!(added(3, 0, &[false]), 0); // its page is there
        assert_eq!(added(3, 511, &[false, false, true]), 1); // page 1 only
        assert_eq!(added(3, 1023, &[false, false]), 2); // pages 1 and 2
        assert_eq!(added(3, 1024, &[true; 4]), 0); // zeros in a root: INHERIT
        assert_eq!(added(2, 0, &[true]), 1); // a ZERO tombstone over the base's block
        assert_eq!(added(2, 1, &[true]), 0); // zeros over zeros
        let trimmed = |first, past| Core::<Blocks>::pages_trim_adds(&t, 2, first, past);
        assert_eq!(trimmed(0, 512), 1);
        assert_eq!(trimmed(1, 4096), 0);
    }

    pub(crate) fn with_vm(c: &Core, name: &str, layer: u64, parent: Option<u64>, size: u64) {
        c.state_mut().tables.add_layer(layer, parent, true).unwrap();
        c.set_vm(name, layer, size).unwrap();
    }

    /// Bytes that never repeat a block (splitmix64 words), different for each seed.
    pub(crate) fn pattern(len: usize, seed: u8) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        let mut x = (seed as u64) << 56 | 1;
        while out.len() < len {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            out.extend_from_slice(&(z ^ (z >> 31) | 1).to_le_bytes());
        }
        out.truncate(len);
        out
    }

    #[test]
    fn write_read_partial_blocks_and_zero_blocks() {
        let c = core();
        with_vm(&c, "a", 1, None, 1 << 20);
        let data = pattern(10_000, 1);
        c.write("a", 1000, &data).unwrap();
        assert_eq!(c.read("a", 1000, 10_000).unwrap(), data);
        assert_eq!(c.read("a", 0, 1000).unwrap(), vec![0; 1000]);
        assert_eq!(c.read("a", 999, 3).unwrap(), vec![0, data[0], data[1]]);
        // zeros take no slot
        c.write("a", 65536, &vec![0u8; 8192]).unwrap();
        let st = c.state();
        assert_eq!(st.blocks.unique_blocks(), 3);
        assert_eq!(st.tables.page_count(), 1);
    }

    #[test]
    fn duplicates_share_and_overwrites_free_at_commit() {
        let c = core();
        with_vm(&c, "a", 1, None, 1 << 20);
        let block = pattern(4096, 2);
        for lbn in 0..10 {
            c.write("a", lbn * 4096, &block).unwrap();
        }
        assert_eq!(c.state().blocks.unique_blocks(), 1);
        c.write("a", 0, &pattern(4096, 3)).unwrap();
        let other = c.state().tables.page(1, 0).unwrap()[0];
        c.write("a", 0, &block).unwrap();
        assert_eq!(c.state().blocks.refcount(other), 0);
        let snap = c.snapshot(&HashSet::new()).unwrap();
        assert_eq!(snap.pages.len(), 1);
        assert!(snap.frees);
        assert_eq!(c.end(snap.token).unwrap(), 1);
        assert_eq!(c.state().blocks.store.digest(other), [0; 16]);
    }

    #[test]
    fn no_space_refuses_the_whole_request() {
        let dir = tempfile::tempdir().unwrap();
        let c = Core::open(Some(dir.path()), 4096, false, true, Fingerprinter::Xxh3).unwrap();
        c.rebuild(false, true, &mut no_progress()).unwrap();
        with_vm(&c, "a", 1, None, 1 << 50);
        c.write("a", 0, &pattern(4096, 1)).unwrap();
        let before = c.read("a", 0, 4096).unwrap();
        // A request needing more slots than any disk here holds: refused, nothing changed.
        let err = {
            let mut st = c.state_mut();
            st.blocks.reserve(1 << 40).err().unwrap()
        };
        assert!(matches!(err, Error::NoSpace(_) | Error::Io(_)));
        assert_eq!(c.read("a", 0, 4096).unwrap(), before);
        assert_eq!(c.state().tables.dirty_count(), 1);
    }

    #[test]
    fn rewriting_the_same_bytes_keeps_refcounts_and_dirties_nothing() {
        let c = core();
        with_vm(&c, "a", 1, None, 1 << 20);
        let mut data = vec![1u8; 4096];
        data[0] = 0;
        c.write("a", 0, &data).unwrap();
        let snap = c.snapshot(&HashSet::new()).unwrap();
        c.end(snap.token).unwrap();
        c.trim("a", 0, 1).unwrap(); // byte 0 is already zero: the block is stored again as is
        c.write("a", 0, &data).unwrap();
        assert_eq!(c.state().tables.dirty_count(), 0);
        assert_eq!(crate::check::check(&c.state()), vec![]);
    }

    #[test]
    fn range_readonly_and_unknown_vm_errors() {
        let c = core();
        with_vm(&c, "a", 1, None, 8192);
        assert!(matches!(
            c.write("a", 8000, &[1; 200]),
            Err(Error::OutOfRange(_))
        ));
        assert!(matches!(c.read("b", 0, 1), Err(Error::UnknownVm(_))));
        assert!(matches!(
            c.trim("a", u64::MAX, 2),
            Err(Error::OutOfRange(_))
        ));
        let e = c.read("a", 8192, 1).err().unwrap().to_string();
        assert_eq!(e, "range 8192+1 is outside VM 'a' (8192 bytes)");
        assert_eq!(c.read("a", 8192, 0).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn trim_of_zeros_adds_nothing_and_trim_frees() {
        let c = core();
        with_vm(&c, "a", 1, None, 64 << 30);
        c.trim("a", 0, 1 << 30).unwrap();
        assert_eq!(c.state().tables.dirty_count(), 0);
        assert_eq!(c.state().tables.page_count(), 0);
        c.write("a", 4096, &pattern(3 * 4096, 5)).unwrap();
        c.trim("a", 4096 + 100, 2 * 4096).unwrap();
        let got = c.read("a", 4096, 3 * 4096).unwrap();
        let mut want = pattern(3 * 4096, 5);
        want[100..100 + 2 * 4096].fill(0);
        assert_eq!(got, want);
        c.trim("a", 0, 1 << 20).unwrap();
        assert_eq!(
            c.state().tables.page_count(),
            0,
            "a page of nothing but INHERIT is dropped"
        );
        assert_eq!(c.state().blocks.unique_blocks(), 0);
    }

    #[test]
    fn readers_count_vms_once_through_shadows_at_any_depth() {
        let c = core();
        with_vm(&c, "gold", 1, None, 1 << 20);
        let a = pattern(4096, 1);
        let b = pattern(4096, 2);
        // the golden holds block a twice (LBN 0 and 2) and b once
        c.write("gold", 0, &[a.clone(), b.clone(), a.clone()].concat())
            .unwrap();
        {
            let mut st = c.state_mut();
            st.tables.set_top(1, false).unwrap();
            for l in 2..=5 {
                st.tables.add_layer(l, Some(1), true).unwrap();
            }
        }
        c.set_vm("gold", 2, 1 << 20).unwrap();
        for (name, l) in [("d1", 3), ("d2", 4), ("d3", 5)] {
            c.set_vm(name, l, 1 << 20).unwrap();
        }
        let (addr_a, addr_b) = {
            let st = c.state();
            let p = st.tables.page(1, 0).unwrap();
            (p[0], p[1])
        };
        // d1 writes over LBN 0 (still reads a at LBN 2); d2 over both a's; d3 writes b at LBN 2
        c.write("d1", 0, &pattern(4096, 3)).unwrap();
        c.write("d2", 0, &pattern(4096, 4)).unwrap();
        c.write("d2", 8192, &pattern(4096, 5)).unwrap();
        c.write("d3", 8192, &b).unwrap();
        assert_eq!(c.vms_reading(addr_a), vec!["d1", "d3", "gold"]);
        assert_eq!(c.vms_reading(addr_b), vec!["d1", "d2", "d3", "gold"]);
        assert_eq!(c.readers_of(&[addr_a, addr_b, 999_999]), vec![3, 4, 0]);
        // d1 frozen under a clone of its own: its layer's shadow covers both VMs beneath it
        {
            let mut st = c.state_mut();
            st.tables.set_top(3, false).unwrap();
            st.tables.add_layer(6, Some(3), true).unwrap();
            st.tables.add_layer(7, Some(3), true).unwrap();
        }
        c.set_vm("d1", 6, 1 << 20).unwrap();
        c.set_vm("d1-clone", 7, 1 << 20).unwrap();
        c.write("d1-clone", 8192, &pattern(4096, 6)).unwrap();
        assert_eq!(c.vms_reading(addr_a), vec!["d1", "d3", "gold"]);
        assert_eq!(c.readers_of(&[addr_b, addr_a]), vec![5, 3]);
    }

    #[test]
    fn clones_read_through_and_zero_over_data_takes_a_tombstone() {
        let c = core();
        with_vm(&c, "gold", 1, None, 1 << 20);
        let data = pattern(8192, 9);
        c.write("gold", 0, &data).unwrap();
        {
            let mut st = c.state_mut();
            st.tables.set_top(1, false).unwrap();
            st.tables.add_layer(2, Some(1), true).unwrap();
            st.tables.add_layer(3, Some(1), true).unwrap();
        }
        c.set_vm("gold", 2, 1 << 20).unwrap();
        c.set_vm("desk", 3, 1 << 20).unwrap();
        assert_eq!(c.read("desk", 0, 8192).unwrap(), data);
        c.trim("desk", 0, 4096).unwrap();
        c.trim("desk", 8192, 8192).unwrap(); // already zeros below: nothing
        assert_eq!(
            c.state().tables.page(3, 0).unwrap()[..3],
            [ZERO, INHERIT, INHERIT]
        );
        assert_eq!(c.read("desk", 0, 8192).unwrap()[..4096], [0; 4096]);
        assert_eq!(c.read("gold", 0, 8192).unwrap(), data);
        c.write("desk", 8192, &[0u8; 4096]).unwrap();
        assert_eq!(c.state().tables.page(3, 0).unwrap()[2], INHERIT);
        assert_eq!(
            c.vms_reading(c.state().tables.page(1, 0).unwrap()[1]),
            vec!["desk", "gold"]
        );
        assert_eq!(
            c.vms_reading(c.state().tables.page(1, 0).unwrap()[0]),
            vec!["gold"]
        );
    }

    #[test]
    fn a_rotten_block_is_an_error_naming_its_offset_and_is_remembered() {
        let c = core();
        with_vm(&c, "a", 1, None, 1 << 20);
        c.write("a", 0, &pattern(4 * 4096, 4)).unwrap();
        let slot = c.state().tables.page(1, 0).unwrap()[2];
        c.state_mut().blocks.store.overwrite_raw(slot, 17, &[0]);
        let err = c.read("a", 0, 4 * 4096).err().unwrap();
        assert!(matches!(err, Error::Corrupt { offset: 8192, .. }), "{err}");
        assert!(err.to_string().contains("byte 8192 of VM 'a'"), "{err}");
        assert_eq!(c.corrupt_slots(), vec![slot]);
        assert!(c.read("a", 0, 8192).is_ok());
        assert!(matches!(
            c.read("a", 8192 + 5, 1),
            Err(Error::Corrupt { .. })
        ));
        // a partial write over it is refused too, not merged with rot
        assert!(matches!(
            c.write("a", 8192 + 5, &[1]),
            Err(Error::Corrupt { .. })
        ));
        // a whole-block write replaces it
        c.write("a", 8192, &pattern(4096, 8)).unwrap();
        assert!(c.read("a", 0, 4 * 4096).is_ok());
    }

    #[test]
    fn large_reads_verify_in_parallel() {
        let c = core();
        with_vm(&c, "a", 1, None, 64 << 20);
        let data = pattern(4 << 20, 6);
        c.write("a", 4096, &data).unwrap();
        assert_eq!(c.read("a", 4096, 4 << 20).unwrap(), data);
        let slot = c.state().tables.page(1, 1).unwrap()[7];
        c.state_mut().blocks.store.overwrite_raw(slot, 0, &[0]);
        let err = c.read("a", 0, 8 << 20).err().unwrap();
        assert!(matches!(err, Error::Corrupt { offset, .. } if offset == (512 + 7) * 4096));
    }

    #[test]
    fn extents_merge_runs() {
        let c = core();
        with_vm(&c, "a", 1, None, 1 << 20);
        c.write("a", 8192, &pattern(8192, 1)).unwrap();
        let e = c.extents("a", 100, 5 * 4096, usize::MAX).unwrap();
        assert_eq!(
            e,
            vec![
                Extent {
                    length: 8192 - 100,
                    zero: true
                },
                Extent {
                    length: 8192,
                    zero: false
                },
                Extent {
                    length: 4096 + 100,
                    zero: true
                },
            ]
        );
    }

    #[test]
    fn extents_jump_holes_through_the_chain_and_stop_at_the_limit() {
        let c = core();
        let size = 1u64 << 60; // an EiB: a walk over its blocks would never end
        let far = 1u64 << 50;
        with_vm(&c, "a", 1, None, size);
        c.write("a", 8192, &pattern(4096, 1)).unwrap();
        c.state_mut().tables.set_top(1, false).unwrap();
        with_vm(&c, "b", 2, Some(1), size);
        c.write("b", far, &pattern(4096, 2)).unwrap();
        let run = |length, zero| Extent { length, zero };
        assert_eq!(
            c.extents("b", 0, size, usize::MAX).unwrap(),
            vec![
                run(8192, true),
                run(4096, false),
                run(far - 12288, true),
                run(4096, false),
                run(size - far - 4096, true),
            ]
        );
        assert_eq!(
            c.extents("b", 100, size - 100, 2).unwrap(),
            vec![run(8092, true), run(4096, false)]
        );
        assert_eq!(c.next_mapped("b", 0).unwrap(), Some(2));
        assert_eq!(c.next_mapped("b", 3).unwrap(), Some(far / 4096));
        assert_eq!(c.next_mapped("b", far / 4096 + 1).unwrap(), None);
        assert_eq!(c.next_mapped("a", 3).unwrap(), None);
    }

    #[test]
    fn writes_wait_for_the_first_rebuild_and_the_gate() {
        let c =
            std::sync::Arc::new(Core::open(None, 4096, false, true, Fingerprinter::Xxh3).unwrap());
        with_vm(&c, "a", 1, None, 1 << 20);
        assert!(c.read("a", 0, 10).is_ok(), "reads need no index");
        let c2 = c.clone();
        let writer = std::thread::spawn(move || c2.write("a", 0, &[1; 10]).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!writer.is_finished());
        c.rebuild(false, true, &mut no_progress()).unwrap();
        writer.join().unwrap();
        c.gate().close();
        let c2 = c.clone();
        let reader = std::thread::spawn(move || c2.read("a", 0, 10).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!reader.is_finished());
        c.gate().open();
        assert_eq!(reader.join().unwrap(), vec![1; 10]);
    }

    #[test]
    fn concurrent_writers_and_readers_keep_every_vm_right() {
        let c = std::sync::Arc::new(core());
        for v in 0..4u64 {
            with_vm(&c, &format!("vm{v}"), v + 1, None, 4 << 20);
        }
        let threads: Vec<_> = (0..4u64)
            .map(|v| {
                let c = c.clone();
                std::thread::spawn(move || {
                    let name = format!("vm{v}");
                    for i in 0..200u64 {
                        let data = pattern(4096 * 3, (i % 7) as u8);
                        let off = (i * 7919 % 1000) * 4096;
                        c.write(&name, off, &data).unwrap();
                        assert_eq!(c.read(&name, off, data.len() as u64).unwrap(), data);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let problems = crate::check::check(&c.state());
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn a_clone_then_deletes_applied_as_edits_leave_nothing_dirty_and_free_at_once() {
        let c = core();
        with_vm(&c, "a", 1, None, 1 << 20);
        c.write("a", 0, &pattern(4 * 4096, 1)).unwrap();
        c.end(c.snapshot(&HashSet::new()).unwrap().token).unwrap();
        // clone a to b: a's top freezes, a and b get new tops on it
        c.apply_edit(&Edit {
            new_layers: vec![(2, Some(1)), (3, Some(1))],
            frozen: vec![1],
            vms: vec![("a".into(), 2, 1 << 20), ("b".into(), 3, 1 << 20)],
            ..Edit::default()
        })
        .unwrap();
        c.write("b", 0, &pattern(4096, 2)).unwrap(); // shadows a's block 0
        c.write("a", 4096, &pattern(4096, 3)).unwrap(); // shadows a's block 1
        c.end(c.snapshot(&HashSet::new()).unwrap().token).unwrap();
        // delete a: its top goes, layer 1 merges into b's top; the merge is planned first
        let planned = c.merged(1, 3).unwrap();
        assert_eq!(
            planned.shadowed.len(),
            1,
            "b's own block 0 shadows layer 1's"
        );
        let freed = c
            .apply_edit(&Edit {
                removed_vms: vec!["a".into()],
                drops: vec![(2, None), (1, Some(3))],
                ..Edit::default()
            })
            .unwrap();
        assert_eq!(freed, 2, "a's own block and the one b shadows");
        assert_eq!(
            c.state().tables.dirty_count(),
            0,
            "the edit's pages are durable"
        );
        assert_eq!(
            c.state().tables.page(3, 0).unwrap()[..4],
            planned.pages[0].1.as_ref().unwrap()[..4]
        );
        let mut want = pattern(4 * 4096, 1);
        want[..4096].copy_from_slice(&pattern(4096, 2));
        assert_eq!(c.read("b", 0, 4 * 4096).unwrap(), want);
        assert!(matches!(c.read("a", 0, 1), Err(Error::UnknownVm(_))));
        let st = c.state();
        assert_eq!(st.blocks.unique_blocks(), 4);
        assert_eq!(st.blocks.space.waiting_count(), 0);
        assert_eq!(crate::check::check(&st), vec![]);
    }

    #[test]
    fn a_top_folded_into_its_frozen_parent_keeps_its_writes_and_frees_what_it_shadowed() {
        let c = core();
        with_vm(&c, "a", 1, None, 1 << 20);
        c.write("a", 0, &pattern(4 * 4096, 1)).unwrap();
        c.end(c.snapshot(&HashSet::new()).unwrap().token).unwrap();
        // an export's freeze: a's top freezes under a new top
        c.apply_edit(&Edit {
            new_layers: vec![(2, Some(1))],
            frozen: vec![1],
            vms: vec![("a".into(), 2, 1 << 20)],
            ..Edit::default()
        })
        .unwrap();
        c.write("a", 4096, &pattern(4096, 3)).unwrap(); // shadows block 1
        c.write("a", 8 * 4096, &pattern(4096, 1)).unwrap(); // shares block 0's slot
        c.end(c.snapshot(&HashSet::new()).unwrap().token).unwrap();
        let planned = c.folded(2, 1).unwrap();
        assert_eq!(planned.shadowed.len(), 1);
        let freed = c
            .apply_edit(&Edit {
                folds: vec![(2, 1)],
                vms: vec![("a".into(), 1, 1 << 20)],
                ..Edit::default()
            })
            .unwrap();
        assert_eq!(freed, 1, "only the block a's write shadowed");
        assert_eq!(c.state().tables.dirty_count(), 0);
        let mut want = vec![0u8; 9 * 4096];
        want[..4 * 4096].copy_from_slice(&pattern(4 * 4096, 1));
        want[4096..8192].copy_from_slice(&pattern(4096, 3));
        want[8 * 4096..].copy_from_slice(&pattern(4096, 1));
        assert_eq!(c.read("a", 0, 9 * 4096).unwrap(), want);
        // a writes on into layer 1, its top again
        c.write("a", 0, &pattern(4096, 4)).unwrap();
        assert!(c.state().tables.is_top(1) && !c.state().tables.has_layer(2));
        let st = c.state();
        assert_eq!(st.blocks.unique_blocks(), 5);
        assert_eq!(crate::check::check(&st), vec![]);
    }

    /// The local block layer, with a store that can be made to fail (a cluster refusing blocks).
    struct Flaky {
        inner: Blocks,
        refuse: bool,
    }

    impl Backend for Flaky {
        fn store(&mut self, blocks: &[&[u8]], digests: &[Digest]) -> Result<Vec<u64>> {
            if self.refuse {
                return Err(Error::NoSpace("the nodes".into()));
            }
            self.inner.store(blocks, digests)
        }
        fn decref(&mut self, addrs: &[u64]) -> Result<()> {
            self.inner.decref(addrs)
        }
        fn read(&self, pieces: &mut [(u64, &mut [u8])]) -> std::result::Result<(), ReadFault> {
            self.inner.read(pieces)
        }
        fn seal(&mut self) -> Result<(u64, bool)> {
            self.inner.seal()
        }
        fn release(&mut self, epoch: u64) -> Result<u64> {
            self.inner.release(epoch)
        }
        fn unseal(&mut self, epoch: u64) -> Result<()> {
            self.inner.unseal(epoch)
        }
        fn syncer(&self) -> Syncer {
            self.inner.syncer()
        }
    }

    #[test]
    fn over_another_backend_a_refused_store_changes_nothing_and_writes_wait_for_its_rebuild() {
        let store = SlotStore::in_memory(4096).unwrap();
        let flaky = Flaky {
            inner: Blocks::new(store, Fingerprinter::Xxh3),
            refuse: false,
        };
        let c = Arc::new(Core::over(flaky, 4096, false, Fingerprinter::Xxh3));
        c.state_mut().tables.add_layer(1, None, true).unwrap();
        c.set_vm("a", 1, 1 << 20).unwrap();
        let c2 = c.clone();
        let writer = std::thread::spawn(move || c2.write("a", 0, &pattern(4096, 1)));
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!writer.is_finished(), "writes wait for the first rebuild");
        let (refs, pages) = c.rebuild_with(|refs, pages| Ok((refs, pages))).unwrap();
        assert_eq!((refs.len(), pages), (0, 0));
        writer.join().unwrap().unwrap();
        // the index of the local blocks is built by its own rebuild; here it starts empty and
        // grows with the stores, which is all this test needs
        let before = c.read("a", 0, 3 * 4096).unwrap();
        let dirty = c.state().tables.dirty_count();
        c.state_mut().blocks.refuse = true;
        for result in [
            c.write("a", 100, &pattern(3 * 4096, 2)),
            c.trim("a", 100, 4096),
        ] {
            assert!(
                matches!(result, Err(Error::NoSpace(_))),
                "{:?}",
                result.err()
            );
        }
        assert_eq!(c.read("a", 0, 3 * 4096).unwrap(), before);
        assert_eq!(c.state().tables.dirty_count(), dirty);
        c.state_mut().blocks.refuse = false;
        c.write("a", 100, &pattern(4096, 2)).unwrap();
        assert_eq!(c.with_references(|r| r.len()), 2);
    }

    #[test]
    fn scrub_steps_through_the_live_slots_and_finds_rot() {
        let c = core();
        with_vm(&c, "a", 1, None, 1 << 20);
        c.write("a", 0, &pattern(10 * 4096, 7)).unwrap();
        c.state_mut().blocks.store.overwrite_raw(6, 3, &[0]);
        let (mut after, mut seen, mut bad) = (0, 0, Vec::new());
        loop {
            let (last, n, found) = c.scrub(after, 4).unwrap();
            if n == 0 {
                assert_eq!(last, 0);
                break;
            }
            (after, seen) = (last, seen + n);
            bad.extend(found);
        }
        assert_eq!((seen, bad), (10, vec![6]));
        assert_eq!(c.corrupt_slots(), vec![6]);
    }
}
