//! The block layer of a local pool: slots on disk, with the fingerprint index, refcounts, free
//! space, the known-corrupt set and the collision count in RAM.
//!
//! Storing a batch is three steps, so that a request is atomic (TARGET.md, "Transactions"):
//!   plan     (read-only) look each block up; a hit is shared only if the slot is live, not known
//!            corrupt, holds the same 16-byte fingerprint and the same bytes; equal blocks within
//!            the batch share one new slot; counts the new slots needed
//!   reserve  make sure that many slots are free, growing the files: `NoSpace` refuses the whole
//!            request with nothing changed
//!   apply    write the new slots (an I/O error gives them back, nothing changed), then (cannot
//!            fail) take a reference on every block and index the new ones
//! Same fingerprint but other bytes is a collision: counted, and the block is stored apart.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::backend::{Backend, ReadFault, Syncer};
use crate::error::Result;
use crate::fingerprint::{key_of, Digest, Fingerprinter};
use crate::freespace::FreeSpace;
use crate::index::Index;
use crate::refcounts::Refcounts;
use crate::slots::SlotStore;

/// The shortest run of free slots whose space goes back to the filesystem.
pub const PUNCH_BYTES: u64 = 1 << 20;

pub struct Blocks {
    pub(crate) fp: Fingerprinter,
    pub(crate) store: SlotStore,
    pub(crate) index: Index,
    pub(crate) refs: Refcounts,
    pub(crate) space: FreeSpace,
    /// Slots whose bytes were found not to match their fingerprint: never shared nor served.
    /// Behind its own lock because readers (sharing the core's lock) discover rot; readers
    /// share it too, so parallel reads do not queue on it.
    pub(crate) corrupt: RwLock<BTreeSet<u64>>,
    pub(crate) collisions: u64,
    pub(crate) live: u64,
}

/// What `plan` found for a batch; consumed by `apply`.
pub struct Plan {
    addrs: Vec<u64>,             // the shared slot, or 0 until apply assigns one
    fresh: Vec<usize>,           // blocks that take a new slot
    copies: Vec<(usize, usize)>, // (block, earlier block of the batch it equals)
    collisions: u64,
}

impl Plan {
    pub fn new_slots(&self) -> usize {
        self.fresh.len()
    }
}

impl Blocks {
    /// A block layer over `store` with nothing counted yet: `rebuild` fills it.
    pub fn new(store: SlotStore, fp: Fingerprinter) -> Self {
        let mut refs = Refcounts::default();
        refs.set_len(store.capacity());
        let mut space = FreeSpace::new();
        space.set_len(store.capacity());
        Blocks {
            fp,
            store,
            index: Index::new(),
            refs,
            space,
            corrupt: RwLock::new(BTreeSet::new()),
            collisions: 0,
            live: 0,
        }
    }

    pub fn block_size(&self) -> usize {
        self.store.block_size()
    }

    /// The slot files, for reading.
    pub fn slots(&self) -> &SlotStore {
        &self.store
    }

    pub fn plan(&self, blocks: &[&[u8]], digests: &[Digest]) -> Plan {
        let mut plan = Plan {
            addrs: vec![0; blocks.len()],
            fresh: Vec::new(),
            copies: Vec::new(),
            collisions: 0,
        };
        let mut first_of: HashMap<Digest, usize> = HashMap::new();
        for (j, (block, digest)) in blocks.iter().zip(digests).enumerate() {
            if let Some(slot) = self.candidate(digest) {
                if self.store.block(slot) == *block {
                    plan.addrs[j] = slot;
                    continue;
                }
                if self.fp.of(self.store.block(slot)) == *digest {
                    plan.collisions += 1;
                } else {
                    self.corrupt.write().insert(slot); // rot, not a collision
                }
            }
            match first_of.get(digest) {
                None => {
                    first_of.insert(*digest, j);
                    plan.fresh.push(j);
                }
                Some(&k) if blocks[k] == *block => plan.copies.push((j, k)),
                Some(_) => {
                    plan.collisions += 1;
                    plan.fresh.push(j);
                }
            }
        }
        plan
    }

    /// The live, sound slot the index offers for `digest`, if any.
    fn candidate(&self, digest: &Digest) -> Option<u64> {
        let corrupt = self.corrupt.read();
        self.index.find(key_of(digest), |slot| {
            self.refs.get(slot) > 0
                && self.store.digest(slot) == *digest
                && !corrupt.contains(&slot)
        })
    }

    /// For each digest, 1 if a live, sound block has it, else 0: a read-only lookup (a dedup
    /// estimate asks before anything is written). Matches the stored 128-bit fingerprint; the
    /// bytes are not compared (a write would compare them).
    pub fn known(&self, digests: &[Digest]) -> Vec<u8> {
        digests
            .iter()
            .map(|d| u8::from(self.candidate(d).is_some()))
            .collect()
    }

    /// Makes sure the `n` slots `apply` will take are free and have disk behind them, filling
    /// holes, then growing the files. Error: `NoSpace`, nothing changed that anyone can see
    /// (holes filled for it are punched again).
    /// Holes first: growth takes a quarter of the capacity when it fits, which could leave no
    /// room for the holes among the slots taken, and refuse a write the disk has room for.
    pub fn reserve(&mut self, n: usize) -> Result<()> {
        let free = self.space.free_count();
        let lowest = self
            .space
            .peek(n.min(free as usize))
            .expect("that many slots are free");
        let hollow = self.space.hollow_runs(&lowest);
        let mut result = Ok(None);
        for (i, &(first, count)) in hollow.iter().enumerate() {
            if let Err(e) = self.store.back(first, count) {
                result = Err((e, i + 1));
                break;
            }
        }
        if result.is_ok() && (n as u64) > free {
            result = self
                .store
                .grow(n as u64 - free)
                .map(Some)
                .map_err(|e| (e, hollow.len()));
        }
        match result {
            Err((e, tried)) => {
                for &(first, count) in &hollow[..tried] {
                    // A hole that cannot be made again only keeps space the file had.
                    let _ = self.store.punch(first, count);
                }
                Err(e)
            }
            Ok(grown) => {
                for &(first, count) in &hollow {
                    self.space.set_hollow(first, count, false);
                }
                if let Some(first) = grown {
                    let capacity = self.store.capacity();
                    self.refs.set_len(capacity);
                    self.space.set_len(capacity);
                    for slot in first..capacity {
                        self.space.put(slot);
                    }
                }
                Ok(())
            }
        }
    }

    /// Gives the disk space of long runs of free slots back to the filesystem (holes): the run
    /// around each slot of `around`, or every run if None. Only where a run is at least
    /// `PUNCH_BYTES` long, so that the data file is not cut into small pieces.
    pub fn give_back_space(&mut self, around: Option<&[u64]>) {
        if self.store.readonly() || self.store.files().is_none() {
            return;
        }
        let min = (PUNCH_BYTES / self.block_size() as u64).max(1);
        let runs = match around {
            None => self.space.solid_runs(),
            Some(slots) => {
                let mut runs = Vec::new();
                let mut past = 0;
                for &slot in slots {
                    if slot >= past && self.space.is_free(slot) && !self.space.is_hollow(slot) {
                        let (first, count) = self.space.solid_run_around(slot);
                        past = first + count;
                        runs.push((first, count));
                    }
                }
                runs
            }
        };
        for (first, count) in runs.into_iter().filter(|&(_, count)| count >= min) {
            // A hole that could not be made only keeps space the file had: nothing to undo.
            if self.store.punch(first, count).is_ok() {
                self.space.set_hollow(first, count, true);
            }
        }
    }

    /// Carries out a plan whose new slots are reserved; returns each block's address, referenced.
    /// Error: `Io` writing the slot files, with nothing changed (the slots are given back).
    pub fn apply(&mut self, plan: Plan, blocks: &[&[u8]], digests: &[Digest]) -> Result<Vec<u64>> {
        let Plan {
            mut addrs,
            fresh,
            copies,
            collisions,
        } = plan;
        let slots = self
            .space
            .take(fresh.len())
            .expect("slots reserved before apply");
        let new_blocks: Vec<&[u8]> = fresh.iter().map(|&j| blocks[j]).collect();
        let new_digests: Vec<Digest> = fresh.iter().map(|&j| digests[j]).collect();
        if let Err(e) = self.store.put_many(&slots, &new_blocks, &new_digests) {
            for slot in slots {
                self.space.put(slot);
            }
            return Err(e);
        }
        // From here on nothing can fail.
        for (&j, &slot) in fresh.iter().zip(&slots) {
            addrs[j] = slot;
        }
        for (j, k) in copies {
            addrs[j] = addrs[k];
        }
        for &addr in &addrs {
            self.incref(addr);
        }
        let Blocks {
            index, store, refs, ..
        } = self;
        for &j in &fresh {
            let key = key_of(&digests[j]);
            index.insert(
                key,
                addrs[j],
                |s| key_of(&store.digest(s)) == key,
                |s, tag| refs.get(s) > 0 && key_of(&store.digest(s)) as u32 == tag,
            );
        }
        self.collisions += collisions;
        Ok(addrs)
    }

    pub fn incref(&mut self, addr: u64) {
        if self.refs.incr(addr) == 1 {
            self.live += 1;
        }
    }

    /// Drops a reference; a slot left with none waits for the commit of the current epoch.
    pub fn decref_one(&mut self, addr: u64) {
        if self.refs.decr(addr) == 0 {
            self.live -= 1;
            self.space.defer(addr);
        }
    }

    pub fn is_corrupt(&self, slot: u64) -> bool {
        self.corrupt.read().contains(&slot)
    }

    pub fn mark_corrupt(&self, slot: u64) {
        self.corrupt.write().insert(slot);
    }

    // -- views ------------------------------------------------------------------------------

    pub fn refcount(&self, addr: u64) -> u64 {
        self.refs.get(addr)
    }

    pub fn live_slots(&self) -> Vec<u64> {
        self.refs.live().collect()
    }

    /// How many slots are live, and `limit` of them from the `offset`-th on, ascending: a page
    /// of `live_slots` without building it whole (the Blocks screen's page at 10 M blocks).
    pub fn live_page(&self, offset: u64, limit: usize) -> (u64, Vec<u64>) {
        let page = self.refs.live().skip(offset as usize).take(limit).collect();
        (self.live, page)
    }

    pub fn unique_blocks(&self) -> u64 {
        self.live
    }

    /// Bytes of RAM for index, refcounts and free space (the figure of issue 11's target).
    pub fn metadata_bytes(&self) -> u64 {
        self.index.nbytes() + self.refs.nbytes() + self.space.nbytes()
    }

    /// Live slots by refcount in power-of-two buckets: ("1", n), ("2", n), ("3-4", n), ...
    pub fn refcount_histogram(&self) -> Vec<(String, u64)> {
        let mut buckets = [0u64; 64];
        for slot in self.refs.live() {
            let n = self.refs.get(slot);
            buckets[(64 - (n - 1).leading_zeros()) as usize] += 1;
        }
        let mut out = Vec::new();
        for (b, &n) in buckets.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let (lo, hi) = if b == 0 {
                (1u64, 1u64)
            } else {
                ((1u64 << (b - 1)) + 1, 1u64 << b)
            };
            let label = if lo == hi {
                hi.to_string()
            } else {
                format!("{lo}-{hi}")
            };
            out.push((label, n));
        }
        out
    }
}

impl Backend for Blocks {
    /// plan + reserve + apply: stores or shares each block; all or nothing.
    fn store(&mut self, blocks: &[&[u8]], digests: &[Digest]) -> Result<Vec<u64>> {
        let plan = self.plan(blocks, digests);
        self.reserve(plan.new_slots())?;
        self.apply(plan, blocks, digests)
    }

    fn keep_for_catalog(&mut self, bytes: u64, check: bool) -> Result<()> {
        self.store.keep_for_catalog(bytes, check)
    }

    fn decref(&mut self, addrs: &[u64]) -> Result<()> {
        for &addr in addrs {
            self.decref_one(addr);
        }
        Ok(())
    }

    /// Each block is hashed right after it is copied, while it is in the L1 cache: memory, not
    /// hashing, bounds a read (measured: hashing a copied block afterwards, even on all cores,
    /// cost more than hashing it hot under the shared lock; and copying and hashing a 1 MiB
    /// read on both cores served NBD 25 % slower than one core, the other being busy in the
    /// kernel sending the replies).
    fn read(&self, pieces: &mut [(u64, &mut [u8])]) -> std::result::Result<(), ReadFault> {
        let capacity = self.store.capacity();
        for (i, (slot, dst)) in pieces.iter_mut().enumerate() {
            let slot = *slot;
            // A reference past the end of the data file names no block: no data either.
            if slot >= capacity || self.is_corrupt(slot) {
                return Err(ReadFault::Rotten(i));
            }
            dst.copy_from_slice(self.store.block(slot));
            if self.fp.of(dst) != self.store.digest(slot) {
                self.mark_corrupt(slot);
                return Err(ReadFault::Rotten(i));
            }
        }
        Ok(())
    }

    fn seal(&mut self) -> Result<(u64, bool)> {
        let any = self.space.pending_count() > 0;
        Ok((self.space.seal(), any))
    }

    /// After the commit of `epoch`: its slots become free and their fingerprints are zeroed.
    fn release(&mut self, epoch: u64) -> Result<u64> {
        let mut freed = Vec::new();
        for slot in self.space.take_sealed(epoch) {
            if self.refs.get(slot) == 0 && !self.space.is_free(slot) {
                if !self.store.readonly() {
                    self.store.clear_digest(slot);
                }
                self.space.put(slot);
                self.corrupt.write().remove(&slot);
                freed.push(slot);
            }
        }
        freed.sort_unstable();
        self.give_back_space(Some(&freed));
        Ok(freed.len() as u64)
    }

    fn unseal(&mut self, epoch: u64) -> Result<()> {
        self.space.unseal(epoch);
        Ok(())
    }

    fn unreadable(&self) -> Option<String> {
        self.store.unreadable()
    }

    fn syncer(&self) -> Syncer {
        match self.store.files() {
            Some(files) => Arc::new(move || files.sync()),
            None => Arc::new(|| Ok(())),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::fingerprint::{fingerprint, fingerprints};

    pub fn ready_blocks() -> Blocks {
        Blocks::new(SlotStore::in_memory(4096).unwrap(), Fingerprinter::Xxh3)
    }

    fn store(b: &mut Blocks, data: &[Vec<u8>]) -> Vec<u64> {
        let refs: Vec<&[u8]> = data.iter().map(|v| v.as_slice()).collect();
        let digests: Vec<Digest> = refs.iter().map(|b| fingerprint(b)).collect();
        b.store(&refs, &digests).unwrap()
    }

    #[test]
    fn a_live_page_is_a_slice_of_the_live_slots() {
        let mut b = ready_blocks();
        let blocks: Vec<Vec<u8>> = (1..=5u8).map(|i| vec![i; 4096]).collect();
        let addrs = store(&mut b, &blocks);
        let all = b.live_slots();
        assert_eq!(all.len(), 5);
        assert_eq!(b.live_page(0, 2), (5, all[..2].to_vec()));
        assert_eq!(b.live_page(3, 10), (5, all[3..].to_vec()));
        assert_eq!(b.live_page(5, 10), (5, vec![]));
        b.decref_one(addrs[0]);
        assert_eq!(b.live_page(0, 10), (4, all[1..].to_vec()));
    }

    #[test]
    fn known_finds_live_blocks_only_and_changes_nothing() {
        let mut b = ready_blocks();
        let a = store(&mut b, &[vec![1; 4096], vec![2; 4096]]);
        let digests = [
            fingerprint(&[1; 4096]),
            fingerprint(&[3; 4096]),
            fingerprint(&[2; 4096]),
        ];
        assert_eq!(b.known(&digests), vec![1, 0, 1]);
        assert_eq!(b.refcount(a[0]), 1);
        b.mark_corrupt(a[1]);
        assert_eq!(b.known(&digests), vec![1, 0, 0]);
    }

    #[test]
    fn equal_blocks_share_a_slot_within_and_across_batches() {
        let mut b = ready_blocks();
        let a = store(&mut b, &[vec![1; 4096], vec![2; 4096], vec![1; 4096]]);
        assert_eq!(a[0], a[2]);
        assert_ne!(a[0], a[1]);
        assert_eq!(b.refcount(a[0]), 2);
        let again = store(&mut b, &[vec![2; 4096]]);
        assert_eq!(again, vec![a[1]]);
        assert_eq!(b.refcount(a[1]), 2);
        assert_eq!(b.unique_blocks(), 2);
    }

    #[test]
    fn a_collision_is_stored_apart_and_counted() {
        let d = [0x42; 16];
        let mut b = Blocks::new(
            SlotStore::in_memory(4096).unwrap(),
            Fingerprinter::Constant(d),
        );
        let x = vec![5u8; 4096];
        let y = vec![6u8; 4096];
        let ax = b.store(&[&x], &[d]).unwrap();
        let ay = b.store(&[&y], &[d]).unwrap();
        assert_ne!(ax, ay);
        assert_eq!(b.collisions, 1);
        assert!(!b.is_corrupt(ax[0]) && !b.is_corrupt(ay[0]));
        // Within one batch too. The index now offers y's slot: x collides with it, then y
        // shares it; x is stored apart again.
        let a = b.store(&[&x[..], &y[..]], &[d, d]).unwrap();
        assert_ne!(a[0], a[1]);
        assert_eq!(a[1], ay[0]);
        assert_eq!(b.collisions, 2);
    }

    #[test]
    fn freed_slots_wait_for_the_commit_then_are_reused() {
        let mut b = ready_blocks();
        let a = store(&mut b, &[vec![1; 4096]]);
        b.decref_one(a[0]);
        assert_eq!(b.unique_blocks(), 0);
        // not live: a new copy of the same bytes takes another slot, the freed one still waits
        let again = store(&mut b, &[vec![1; 4096]]);
        assert_ne!(again, a);
        let (epoch, any) = b.seal().unwrap();
        assert!(any);
        b.unseal(epoch).unwrap();
        let (epoch, _) = b.seal().unwrap();
        assert_eq!(b.release(epoch).unwrap(), 1);
        assert_eq!(b.store.digest(a[0]), [0; 16]);
        let reused = store(&mut b, &[vec![9; 4096]]);
        assert_eq!(reused, a, "lowest free slot first");
    }

    #[test]
    fn known_corrupt_slots_are_never_shared() {
        let mut b = ready_blocks();
        let a = store(&mut b, &[vec![1; 4096]]);
        b.store.overwrite_raw(a[0], 0, &[0xFF]);
        let fresh = store(&mut b, &[vec![1; 4096]]);
        assert_ne!(fresh, a);
        assert!(
            b.is_corrupt(a[0]),
            "rot found by the byte comparison is remembered"
        );
        assert_eq!(b.collisions, 0);
    }

    /// Bytes of disk behind a file.
    fn allocated(path: &std::path::Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).unwrap().blocks() * 512
    }

    #[test]
    fn freed_runs_go_back_to_the_filesystem_and_come_back_on_reuse() {
        let dir = tempfile::tempdir().unwrap();
        let slots = SlotStore::open(dir.path(), 4096, false, true).unwrap();
        let mut b = Blocks::new(slots, Fingerprinter::Xxh3);
        let data: Vec<Vec<u8>> = (0..600u32)
            .map(|i| {
                let mut v = vec![0u8; 4096];
                v[..4].copy_from_slice(&i.to_le_bytes());
                v
            })
            .collect();
        let addrs = store(&mut b, &data);
        let file = dir.path().join(crate::slots::DATA_FILE);
        let before = allocated(&file);
        if before == 0 {
            return; // a filesystem that allocates nothing: nothing to give back
        }
        for &a in &addrs[..300] {
            b.decref_one(a);
        }
        let (epoch, _) = b.seal().unwrap();
        assert_eq!(b.release(epoch).unwrap(), 300);
        let after = allocated(&file);
        assert!(
            after <= before - 256 * 4096,
            "{before} -> {after}: a 1.2 MiB free run is a hole"
        );
        assert!(b.space.is_hollow(addrs[0]) && !b.space.is_hollow(addrs[300]));
        // The file itself tells where the holes are (what a rebuild learns them from).
        let holes = b.store.holes().unwrap();
        assert!(
            holes
                .iter()
                .any(|&(f, c)| f <= addrs[0] && f + c >= addrs[0] + 256),
            "{holes:?}"
        );
        // Reuse fills the hole again at reservation, and the bytes read back.
        let again = store(&mut b, &[vec![7; 4096], vec![8; 4096]]);
        assert_eq!(again, vec![addrs[0], addrs[1]]);
        assert_eq!(b.store.block(addrs[1]), &[8; 4096][..]);
        assert!(allocated(&file) > after);
    }

    #[test]
    fn growth_leaves_the_slop_free() {
        assert_eq!(crate::slots::slop_bytes(24 << 20), 1 << 20);
        assert_eq!(crate::slots::slop_bytes(64 << 30), 2 << 30 >> 1);
        assert_eq!(crate::slots::slop_bytes(1 << 50), 1 << 30);
    }

    #[test]
    fn reservation_failure_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = SlotStore::open(dir.path(), 4096, false, true).unwrap();
        let mut b = Blocks::new(store, Fingerprinter::Xxh3);
        let data: Vec<u8> = (0..4096 * 4).map(|i| (i / 4096 + 1) as u8).collect();
        let refs: Vec<&[u8]> = data.chunks(4096).collect();
        let digests = fingerprints(&data, 4096);
        let plan = b.plan(&refs, &digests);
        assert_eq!(plan.new_slots(), 4);
        assert!(b.reserve(1 << 42).is_err());
        assert_eq!(b.store.capacity(), 1);
        b.reserve(4).unwrap();
        let addrs = b.apply(plan, &refs, &digests).unwrap();
        assert_eq!(addrs, vec![1, 2, 3, 4]);
    }

    #[test]
    fn histogram_buckets_by_powers_of_two() {
        let mut b = ready_blocks();
        let a = store(&mut b, &[vec![1; 4096], vec![2; 4096], vec![3; 4096]]);
        for _ in 0..2 {
            b.incref(a[1]);
        }
        for _ in 0..4 {
            b.incref(a[2]);
        }
        assert_eq!(
            b.refcount_histogram(),
            vec![
                ("1".to_string(), 1),
                ("3-4".to_string(), 1),
                ("5-8".to_string(), 1)
            ]
        );
    }
}
