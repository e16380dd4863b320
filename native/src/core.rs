//! The core: block layer, block tables and VMs behind one lock, with the data path over a VM.
//!
//! Data ops (TARGET.md, "Transactions"): `write`, `trim` (also write-zeroes) are atomic per
//! request in RAM. A write fingerprints its whole blocks before taking the lock, then, under the
//! lock: reads the partial blocks at either end, plans every block (dedup lookups with byte
//! verification), reserves the new slots (`NoSpace` refuses the request with nothing changed),
//! and applies: slot data, refcounts, block-table pages. No catalog work per data op.
//!
//! A block of zeros takes no slot: its entry is INHERIT where the layers beneath read zeros there
//! too (always so in a root layer), else ZERO. A trim of a range that already reads as zeros
//! changes nothing and adds no page.
//!
//! `read` checks every block against its stored fingerprint as it copies it; a mismatch is a
//! `Corrupt` error naming the byte offset, never data, and the slot joins the known-corrupt set.
//!
//! Locking: many threads call in at once with the GIL released. Reads share the lock and run in
//! parallel; writes and structural edits take it alone; a write hashes its blocks before it
//! takes the lock.
//!
//! Commits are Python's (it owns the catalog): `snapshot` (dirty pages + seal the pending frees),
//! `sync`, then Python writes the pages and commits sqlite, then `end` (pages clean, frees
//! released) or, if anything failed, `abort` (pages stay dirty, frees wait again).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;

use std::sync::Arc;

use parking_lot::{Mutex, RwLock, RwLockUpgradableReadGuard};
use rayon::prelude::*;

use crate::blocks::Blocks;
use crate::error::{Error, Result};
use crate::fingerprint::{is_zero, Digest, Fingerprinter};
use crate::gate::Gate;
use crate::progress::Sink;
use crate::rebuild::{self, Figures};
use crate::slots::{SlotFiles, SlotStore};
use crate::tables::{is_address, DirtyPage, Tables, INHERIT, PAGE_ENTRIES, ZERO};

/// Above this many bytes, a write fingerprints its blocks on all cores.
const PARALLEL_HASH_BYTES: usize = 1 << 20;

#[derive(Clone, Debug)]
pub struct Vm {
    pub top: u64,
    pub size: u64,
}

pub struct State {
    pub blocks: Blocks,
    pub tables: Tables,
    pub vms: HashMap<String, Vm>,
    commits: HashMap<u64, u64>, // snapshot token -> sealed epoch
}

impl State {
    fn vm(&self, name: &str) -> Result<&Vm> {
        self.vms
            .get(name)
            .ok_or_else(|| Error::UnknownVm(name.to_string()))
    }

    /// The VM to write to; refused until a rebuild has built the index.
    fn writable_vm(&self, name: &str) -> Result<Vm> {
        let vm = self.vm(name)?.clone();
        if !self.blocks.ready {
            return Err(Error::State(
                "the pool's index is not built: rebuild first".into(),
            ));
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
}

/// A run of blocks for NBD block status: `length` bytes, allocated or reading as zeros.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub length: u64,
    pub zero: bool,
}

/// (address, layer, LBN) of every reference, sorted; rebuilt when the tables' generation moves.
type ReverseMap = Arc<Vec<(u64, u64, u64)>>;

pub struct Core {
    state: RwLock<State>,
    reverse: Mutex<Option<(u64, ReverseMap)>>,
    gate: Gate,
    block_size: usize,
    fp: Fingerprinter,
    readonly: bool,
    files: Option<SlotFiles>,
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

impl Core {
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
        let files = store.files();
        let gate = Gate::new();
        gate.hold_writes();
        Ok(Core {
            state: RwLock::new(State {
                blocks: Blocks::new(store, fp),
                tables: Tables::new(),
                vms: HashMap::new(),
                commits: HashMap::new(),
            }),
            reverse: Mutex::new(None),
            gate,
            block_size,
            fp,
            readonly,
            files,
        })
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
    pub fn state(&self) -> parking_lot::RwLockReadGuard<'_, State> {
        self.state.read()
    }

    pub fn state_mut(&self) -> parking_lot::RwLockWriteGuard<'_, State> {
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
    /// `OutOfRange`, `ReadOnly`, `NoSpace`, `Corrupt` (a partial block to merge with is rotten).
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
        let bs = self.block_size as u64;
        let _pass = self.gate.enter(true);
        let mut st = self.state.write();
        let vm = st.writable_vm(name)?;
        Self::check_range(name, &vm, offset, length)?;
        if length == 0 {
            return Ok(());
        }
        let end = offset + length;
        let first_whole = offset.div_ceil(bs);
        let last_whole = end / bs; // one past
                                   // Partial blocks at either end: zero their part (read, modify, write).
        let mut edges = Vec::new();
        let mut edge_lbns = Vec::new();
        for lbn in [offset / bs, (end - 1) / bs] {
            let start = lbn * bs;
            let partial = start < offset || start + bs > end;
            if partial && !edge_lbns.contains(&lbn) {
                let mut buf = vec![0u8; bs as usize];
                self.read_block(&st, name, &vm, lbn, &mut buf)?;
                let from = offset.max(start);
                let to = end.min(start + bs);
                buf[(from - start) as usize..(to - start) as usize].fill(0);
                edges.push(self.owned(buf));
                edge_lbns.push(lbn);
            }
        }
        // Reserve for the edges first: the whole-block part cannot fail.
        let (plan, blocks, digests, zeros) = Self::plan_srcs(&st, &edges);
        st.blocks.reserve(plan.new_slots())?;
        let mut addrs = st.blocks.apply(plan, &blocks, &digests)?.into_iter();
        for (lbn, zero) in edge_lbns.iter().zip(zeros) {
            let entry = if zero {
                Self::zero_entry(&st.tables, vm.top, *lbn)
            } else {
                addrs.next().unwrap()
            };
            Self::set_run(&mut st, vm.top, *lbn, &[entry]);
        }
        let mut lbn = first_whole;
        while lbn < last_whole {
            let pno = lbn / PAGE_ENTRIES as u64;
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
                Self::set_run(&mut st, vm.top, lbn, &entries);
            }
            lbn += n;
        }
        Ok(())
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

    #[allow(clippy::type_complexity)]
    fn plan_srcs<'s>(
        st: &State,
        srcs: &'s [Src<'s>],
    ) -> (crate::blocks::Plan, Vec<&'s [u8]>, Vec<Digest>, Vec<bool>) {
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
        (st.blocks.plan(&blocks, &digests), blocks, digests, zeros)
    }

    /// Stores, shares or zeroes consecutive blocks of layer `top` from `lbn0`: all or nothing.
    fn put_blocks(st: &mut State, top: u64, lbn0: u64, srcs: Vec<Src>) -> Result<()> {
        let (plan, blocks, digests, zeros) = Self::plan_srcs(st, &srcs);
        st.blocks.reserve(plan.new_slots())?;
        // Once the new slots are written, nothing can fail: the request is applied whole.
        let mut addrs = st.blocks.apply(plan, &blocks, &digests)?.into_iter();
        let mut entries = Vec::with_capacity(srcs.len());
        for (i, zero) in zeros.into_iter().enumerate() {
            entries.push(if zero {
                Self::zero_entry(&st.tables, top, lbn0 + i as u64)
            } else {
                addrs.next().unwrap()
            });
        }
        let mut done = 0usize;
        while done < entries.len() {
            let lbn = lbn0 + done as u64;
            let n = (PAGE_ENTRIES - (lbn % PAGE_ENTRIES as u64) as usize).min(entries.len() - done);
            Self::set_run(st, top, lbn, &entries[done..done + n]);
            done += n;
        }
        Ok(())
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

    /// set_entries within one page, then drops the references the page no longer holds.
    fn set_run(st: &mut State, top: u64, lbn: u64, entries: &[u64]) {
        let replaced = st
            .tables
            .set_entries(top, lbn, entries)
            .expect("top layer checked");
        for addr in replaced {
            st.blocks.decref(addr);
        }
    }

    // -- reads -------------------------------------------------------------------------------------

    /// Reads `out.len()` bytes at `offset` of VM `name` into `out`, every block verified.
    /// Errors: `UnknownVm`, `OutOfRange`, `Corrupt` (naming the byte offset of the bad block).
    ///
    /// Each block is hashed right after it is copied, while it is in the L1 cache: memory, not
    /// hashing, bounds a read (measured: hashing a copied block afterwards, even on all cores,
    /// cost more than hashing it hot under the shared lock).
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
        let store = &st.blocks.store;
        let mut corrupt = st.blocks.corrupt.lock();
        for (i, &e) in entries.iter().enumerate() {
            let start = (first + i as u64) * bs;
            let from = offset.max(start);
            let to = (offset + len).min(start + bs);
            let dst = &mut out[(from - offset) as usize..(to - offset) as usize];
            if !is_address(e) {
                dst.fill(0);
                continue;
            }
            let bad = || Error::Corrupt {
                vm: name.to_string(),
                offset: start,
                slot: e,
            };
            if corrupt.contains(&e) {
                return Err(bad());
            }
            let block = store.block(e);
            let digest = if dst.len() == bs as usize {
                dst.copy_from_slice(block);
                self.fp.of(dst)
            } else {
                dst.copy_from_slice(&block[(from - start) as usize..(to - start) as usize]);
                self.fp.of(block)
            };
            if digest != store.digest(e) {
                corrupt.insert(e);
                return Err(bad());
            }
        }
        Ok(())
    }

    pub fn read(&self, name: &str, offset: u64, length: u64) -> Result<Vec<u8>> {
        let mut out = vec![0u8; length as usize];
        self.read_into(name, offset, &mut out)?;
        Ok(out)
    }

    /// One block of a VM, verified, for a read-modify-write under the write lock.
    fn read_block(&self, st: &State, name: &str, vm: &Vm, lbn: u64, buf: &mut [u8]) -> Result<()> {
        let mut e = [0u64];
        st.tables.lookup(vm.top, lbn, &mut e)?;
        if !is_address(e[0]) {
            buf.fill(0);
            return Ok(());
        }
        let slot = e[0];
        let offset = lbn * buf.len() as u64;
        let corrupt = || Error::Corrupt {
            vm: name.to_string(),
            offset,
            slot,
        };
        if st.blocks.is_corrupt(slot) {
            return Err(corrupt());
        }
        buf.copy_from_slice(st.blocks.store.block(slot));
        if self.fp.of(buf) != st.blocks.store.digest(slot) {
            st.blocks.mark_corrupt(slot);
            return Err(corrupt());
        }
        Ok(())
    }

    /// Runs of allocated and zero blocks over the range, for NBD block status: lengths add up to
    /// `length`. Errors: `UnknownVm`, `OutOfRange`.
    pub fn extents(&self, name: &str, offset: u64, length: u64) -> Result<Vec<Extent>> {
        let bs = self.block_size as u64;
        let _pass = self.gate.enter(false);
        let st = self.state.read();
        let vm = st.vm(name)?;
        Self::check_range(name, vm, offset, length)?;
        let mut out: Vec<Extent> = Vec::new();
        if length == 0 {
            return Ok(out);
        }
        let first = offset / bs;
        let last = (offset + length - 1) / bs;
        let mut entries = vec![0u64; (last - first + 1) as usize];
        st.tables.lookup(vm.top, first, &mut entries)?;
        for (i, &e) in entries.iter().enumerate() {
            let start = (first + i as u64) * bs;
            let piece = (offset + length).min(start + bs) - offset.max(start);
            let zero = !is_address(e);
            match out.last_mut() {
                Some(x) if x.zero == zero => x.length += piece,
                _ => out.push(Extent {
                    length: piece,
                    zero,
                }),
            }
        }
        Ok(out)
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
    pub fn snapshot(&self, exclude: &HashSet<u64>) -> Snapshot {
        let mut st = self.state.write();
        let (token, pages) = st.tables.snapshot(exclude);
        let epoch = st.blocks.seal();
        st.commits.insert(token, epoch);
        Snapshot { token, pages }
    }

    /// fdatasync the slot files (no lock held: data ops go on meanwhile).
    pub fn sync(&self) -> Result<()> {
        match &self.files {
            Some(f) => f.sync(),
            None => Ok(()),
        }
    }

    /// The snapshot is committed: its pages are clean unless changed since; its frees are
    /// released (slots allocatable, fingerprints zeroed). Returns how many slots were released.
    pub fn end(&self, token: u64) -> u64 {
        let mut st = self.state.write();
        st.tables.end(token);
        match st.commits.remove(&token) {
            Some(epoch) => st.blocks.release(epoch),
            None => 0,
        }
    }

    /// The snapshot's commit failed: its pages stay dirty, its frees wait for the next commit.
    pub fn abort(&self, token: u64) {
        let mut st = self.state.write();
        st.tables.abort(token);
        if let Some(epoch) = st.commits.remove(&token) {
            st.blocks.unseal(epoch);
        }
    }

    // -- rebuild -----------------------------------------------------------------------------------

    /// Rebuilds refcounts, index and free space from the pages in RAM (see `rebuild`). Writes
    /// wait meanwhile; reads go on. Errors: `Cancelled` (nothing changed), `Io`.
    pub fn rebuild(&self, full: bool, reclaim: bool, sink: Sink) -> Result<Figures> {
        self.gate.hold_writes();
        let result = (|| {
            let st = self.state.upgradable_read();
            let rebuilt = rebuild::rebuild(&st, full, sink)?;
            let mut st = RwLockUpgradableReadGuard::upgrade(st);
            rebuild::install(&mut st, rebuilt, reclaim && !self.readonly)
        })();
        // Even a failed first rebuild lets writes in: they are refused (no index), never hung.
        self.gate.release_writes();
        result
    }

    // -- views -------------------------------------------------------------------------------------

    pub fn corrupt_slots(&self) -> Vec<u64> {
        self.state
            .read()
            .blocks
            .corrupt
            .lock()
            .iter()
            .copied()
            .collect()
    }

    /// Remembers slots known to be corrupt (e.g. restored from the catalog at open).
    pub fn mark_corrupt(&self, slots: &[u64]) {
        let st = self.state.read();
        let mut set = st.blocks.corrupt.lock();
        set.extend(
            slots
                .iter()
                .copied()
                .filter(|&s| s > 0 && s < st.blocks.store.capacity()),
        );
    }

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

    fn reverse_map(&self, st: &State) -> ReverseMap {
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

    /// The VMs that read block `addr` somewhere (the block view): those reading through a layer
    /// that holds it, at an LBN where nothing above in their chain shadows it. Sorted.
    pub fn vms_reading(&self, addr: u64) -> Vec<String> {
        let held = self.references(addr);
        let st = self.state.read();
        let layers: BTreeSet<u64> = held.iter().map(|&(l, _)| l).collect();
        let mut names = Vec::new();
        for (name, vm) in &st.vms {
            let Ok(chain) = st.tables.chain(vm.top) else {
                continue;
            };
            if !chain.iter().any(|l| layers.contains(l)) {
                continue;
            }
            let reads = held.iter().any(|&(layer, lbn)| {
                let mut e = [0u64];
                chain.contains(&layer)
                    && st.tables.lookup(vm.top, lbn, &mut e).is_ok()
                    && e[0] == addr
            });
            if reads {
                names.push(name.clone());
            }
        }
        names.sort();
        names
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
        let snap = c.snapshot(&HashSet::new());
        assert_eq!(snap.pages.len(), 1);
        assert_eq!(c.end(snap.token), 1);
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
        let snap = c.snapshot(&HashSet::new());
        c.end(snap.token);
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
        let e = c.extents("a", 100, 5 * 4096).unwrap();
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
}
