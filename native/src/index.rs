//! The fingerprint index: 64-bit key -> slot, in RAM, 8 bytes a cell.
//!
//! The index is advice: a hit is trusted only once the slot is live, holds the same 16-byte
//! fingerprint and the same bytes (the caller checks). So a cell keeps only what finds candidates:
//! a 32-bit tag (the key's low half) and the 32-bit slot (up to 4 G slots, 16 TiB of 4 KiB blocks);
//! the full key of a candidate is read from the slot's stored fingerprint when a tag matches.
//!
//! The table is 256 shards (picked by the key's top 8 bits), each open addressing with linear
//! probing. A shard grows alone, by rehashing only its live cells into a table sized for 65 % load
//! when it passes 85 %: the whole index never needs two copies of itself, so RAM stays near
//! 8 / 0.65 ≈ 12.3 bytes a key at worst, growth included, plus each shard's rounding up to whole
//! pages (an empty index takes 256 pages, 1 MiB; 256 shards rather than more keep that rounding
//! under 0.6 B a key from 1 M keys on). Stale cells (slots since freed or reused) are dropped when
//! their shard is rehashed.

use std::ops::{Deref, DerefMut};

use memmap2::{MmapMut, MmapOptions};

const SHARD_BITS: u32 = 8;
const SHARDS: usize = 1 << SHARD_BITS;
const MAX_LOAD: f64 = 0.85;
const GROWN_LOAD: f64 = 0.65;
/// A rebuilt index starts here: 10.7 bytes a key.
pub const REBUILD_LOAD: f64 = 0.75;

/// Cells of one page: a table is a whole number of pages, and never smaller than one.
const PAGE_CELLS: usize = 4096 / 8;

/// A shard's table: an anonymous map of whole pages, not heap memory, so that the table a
/// growing shard gives up goes back to the system at once. From the heap, the holes that old
/// tables left cost 3.3 B per unique block more than the index held at 4 M blocks, and the heap
/// kept what the tables held while small: both broke the 16 B target. Sizes are rounded up to
/// whole pages (the cells are used: a lower load), since a page is what RAM is counted in.
struct Cells(MmapMut);

impl Cells {
    fn zeroed(n: usize) -> Self {
        let n = n.div_ceil(PAGE_CELLS).max(1) * PAGE_CELLS;
        // Anonymous memory is zeroed and page-aligned.
        let map = MmapOptions::new().len(n * 8).map_anon();
        Cells(map.expect("no memory left for the fingerprint index"))
    }
}

impl Deref for Cells {
    type Target = [u64];

    fn deref(&self) -> &[u64] {
        // SAFETY: a page-aligned map of a whole number of u64, alive as long as self.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr() as *const u64, self.0.len() / 8) }
    }
}

impl DerefMut for Cells {
    fn deref_mut(&mut self) -> &mut [u64] {
        // SAFETY: as in deref, and `&mut self` is the only access.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr() as *mut u64, self.0.len() / 8) }
    }
}

struct Shard {
    cells: Cells, // tag << 32 | slot; slot 0 = empty
    used: usize,
}

impl Shard {
    fn with_cells(n: usize) -> Self {
        Shard {
            cells: Cells::zeroed(n),
            used: 0,
        }
    }

    fn home(&self, tag: u32) -> usize {
        ((tag as u64 * self.cells.len() as u64) >> 32) as usize
    }

    fn place(&mut self, tag: u32, slot: u32) {
        let n = self.cells.len();
        let mut pos = self.home(tag);
        while self.cells[pos] != 0 {
            pos = if pos + 1 == n { 0 } else { pos + 1 };
        }
        self.cells[pos] = cell(tag, slot);
        self.used += 1;
    }
}

pub struct Index {
    shards: Vec<Shard>,
    cells: u64, // over all shards
    peak: u64,  // most cells ever held at once, a rehash's two copies of a shard included
}

fn shard_of(key: u64) -> usize {
    (key >> (64 - SHARD_BITS)) as usize
}

fn tag_of(key: u64) -> u32 {
    key as u32
}

fn cell(tag: u32, slot: u32) -> u64 {
    (tag as u64) << 32 | slot as u64
}

impl Default for Index {
    fn default() -> Self {
        Self::from_shards((0..SHARDS).map(|_| Shard::with_cells(0)).collect())
    }
}

impl Index {
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty index sized for these keys at REBUILD_LOAD; fill it with `insert_new`.
    pub fn sized_for(keys: impl Iterator<Item = u64>) -> Self {
        let mut counts = vec![0usize; SHARDS];
        for key in keys {
            counts[shard_of(key)] += 1;
        }
        let shards = counts
            .iter()
            .map(|&n| Shard::with_cells((n as f64 / REBUILD_LOAD) as usize + 1))
            .collect();
        Self::from_shards(shards)
    }

    fn from_shards(shards: Vec<Shard>) -> Self {
        let cells = shards.iter().map(|s| s.cells.len() as u64).sum();
        Index {
            shards,
            cells,
            peak: cells,
        }
    }

    /// The first slot whose cell matches `key`'s tag and that `accept` takes (the caller reads
    /// the slot's stored fingerprint, and checks it is live and equal).
    pub fn find(&self, key: u64, mut accept: impl FnMut(u64) -> bool) -> Option<u64> {
        let shard = &self.shards[shard_of(key)];
        let tag = tag_of(key);
        let n = shard.cells.len();
        let mut pos = shard.home(tag);
        loop {
            let c = shard.cells[pos];
            if c == 0 {
                return None;
            }
            if (c >> 32) as u32 == tag && accept(c & 0xFFFF_FFFF) {
                return Some(c & 0xFFFF_FFFF);
            }
            pos = if pos + 1 == n { 0 } else { pos + 1 };
        }
    }

    /// Points `key` at `slot`, replacing a cell whose slot `same_key` says holds this key.
    ///
    /// `live(slot, tag)` says whether an existing cell is still worth keeping when its shard is
    /// rehashed; the new slot must already count as live.
    pub fn insert(
        &mut self,
        key: u64,
        slot: u64,
        mut same_key: impl FnMut(u64) -> bool,
        mut live: impl FnMut(u64, u32) -> bool,
    ) {
        assert!(
            slot > 0 && slot <= u32::MAX as u64,
            "slot {slot} does not fit the index"
        );
        let s = shard_of(key);
        let tag = tag_of(key);
        {
            let shard = &mut self.shards[s];
            let n = shard.cells.len();
            let mut pos = shard.home(tag);
            loop {
                let c = shard.cells[pos];
                if c == 0 {
                    break;
                }
                if (c >> 32) as u32 == tag && same_key(c & 0xFFFF_FFFF) {
                    shard.cells[pos] = cell(tag, slot as u32);
                    return;
                }
                pos = if pos + 1 == n { 0 } else { pos + 1 };
            }
        }
        if (self.shards[s].used + 1) as f64 > MAX_LOAD * self.shards[s].cells.len() as f64 {
            self.rehash(s, &mut live);
        }
        self.shards[s].place(tag, slot as u32);
    }

    /// Adds a key known to be absent (a rebuild, where every live slot is inserted once).
    pub fn insert_new(&mut self, key: u64, slot: u64) {
        let s = shard_of(key);
        if (self.shards[s].used + 1) as f64 > MAX_LOAD * self.shards[s].cells.len() as f64 {
            self.rehash(s, &mut |_, _| true);
        }
        self.shards[s].place(tag_of(key), slot as u32);
    }

    fn rehash(&mut self, s: usize, live: &mut dyn FnMut(u64, u32) -> bool) {
        let kept: Vec<u64> = self.shards[s]
            .cells
            .iter()
            .copied()
            .filter(|&c| c != 0 && live(c & 0xFFFF_FFFF, (c >> 32) as u32))
            .collect();
        // Sized for the kept cells plus the one about to come, at GROWN_LOAD.
        let mut shard = Shard::with_cells(((kept.len() + 1) as f64 / GROWN_LOAD) as usize + 1);
        for c in kept {
            shard.place((c >> 32) as u32, (c & 0xFFFF_FFFF) as u32);
        }
        let old = self.shards[s].cells.len() as u64;
        let new = shard.cells.len() as u64;
        self.peak = self.peak.max(self.cells + new);
        self.cells = self.cells - old + new;
        self.shards[s] = shard;
    }

    /// Occupied cells (live and stale).
    pub fn len(&self) -> u64 {
        self.shards.iter().map(|s| s.used as u64).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of RAM held.
    pub fn nbytes(&self) -> u64 {
        self.cells * 8 + (SHARDS * std::mem::size_of::<Shard>()) as u64
    }

    /// The most bytes ever held at once, growth included.
    pub fn peak_nbytes(&self) -> u64 {
        self.peak * 8 + (SHARDS * std::mem::size_of::<Shard>()) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A stand-in for hashes.dat: slot -> key.
    struct Stored(HashMap<u64, u64>);

    fn mix(i: u64) -> u64 {
        // splitmix64: spreads test keys over shards and tags like real fingerprints
        let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    #[test]
    fn find_what_was_inserted_across_growth() {
        let mut index = Index::new();
        let mut stored = Stored(HashMap::new());
        for slot in 1..=200_000u64 {
            let key = mix(slot);
            stored.0.insert(slot, key);
            let st = &stored;
            index.insert(key, slot, |s| st.0[&s] == key, |_, _| true);
        }
        for slot in 1..=200_000u64 {
            let key = mix(slot);
            assert_eq!(index.find(key, |s| stored.0[&s] == key), Some(slot));
        }
        assert_eq!(index.find(mix(0), |s| stored.0[&s] == mix(0)), None);
        // Worst-moment RAM: 8 bytes a cell at no less than 65 % load, plus each shard's
        // rounding up to a whole page, plus shard headers.
        let rounding = (SHARDS * 4096) as f64 / 200_000.0;
        let per_key = index.nbytes() as f64 / 200_000.0;
        assert!(
            per_key < 8.0 / GROWN_LOAD + rounding + 0.5,
            "{per_key} bytes a key"
        );
    }

    #[test]
    fn same_key_replaces_and_stale_cells_go_at_rehash() {
        let mut index = Index::new();
        let key = mix(7);
        index.insert(key, 3, |_| false, |_, _| true);
        index.insert(key, 9, |s| s == 3, |_, _| true);
        assert_eq!(index.len(), 1);
        assert_eq!(index.find(key, |_| true), Some(9));
        // Fill the key's shard with keys whose slots are dead until it is rehashed: the rehash
        // keeps none of them.
        let s = shard_of(key);
        let mut n = 0u64;
        let mut i = 1000u64;
        let mut used = index.shards[s].used;
        while index.shards[s].used >= used {
            used = index.shards[s].used;
            let k = mix(i);
            if shard_of(k) == s {
                index.insert(k, 100 + n, |_| false, |slot, _| slot == 9);
                n += 1;
            }
            i += 1;
        }
        assert!(n > 100, "{n} inserts before the rehash");
        assert_eq!(index.shards[s].used, 2, "the live key and the new one");
        assert_eq!(index.find(key, |_| true), Some(9));
    }

    #[test]
    fn find_skips_candidates_the_caller_refuses() {
        let mut index = Index::new();
        let key = mix(1);
        index.insert(key, 5, |_| false, |_, _| true);
        index.insert(key, 6, |_| false, |_, _| true); // same tag, "another key"
        assert_eq!(index.find(key, |s| s == 6), Some(6));
        assert_eq!(index.find(key, |_| false), None);
    }

    #[test]
    fn sized_for_then_insert_new() {
        let keys: Vec<u64> = (1..50_000).map(mix).collect();
        let mut index = Index::sized_for(keys.iter().copied());
        let before = index.nbytes();
        for (i, &k) in keys.iter().enumerate() {
            index.insert_new(k, i as u64 + 1);
        }
        assert_eq!(
            index.nbytes(),
            before,
            "a rebuilt index does not grow while filled"
        );
        assert_eq!(index.find(keys[77], |_| true), Some(78));
    }
}
