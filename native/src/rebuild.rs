//! Rebuild the RAM dedup metadata from what is persistent: the block-table pages (loaded from the
//! catalog into RAM) and the slot files.
//!
//! Phases, each reported through the progress sink (same names and figures as the Python
//! engine's rebuild.py):
//!   tables  every page once: count references per slot; references past the end of the data
//!           file are counted as bad
//!   hashes  each live slot once (the refcounts are the reconstruction map): fast mode trusts the
//!           stored fingerprint; full mode re-reads and re-hashes the data on every core and
//!           reports a mismatch as a corrupt block
//!   index   a fresh index of every live, sound fingerprint, sized once
//!   space   (under the write lock) free every unreferenced slot that no commit is waiting for,
//!           and reclaim orphans: free slots that still hold a fingerprint (a crash mid-write)
//! Slots whose last reference went since the last commit stay in their waiting lists: the
//! committed tables may still name them.

use std::collections::BTreeSet;
use std::time::Instant;

use rayon::prelude::*;

use crate::core::State;
use crate::error::Result;
use crate::fingerprint::key_of;
use crate::freespace::FreeSpace;
use crate::index::Index;
use crate::progress::{Meter, Sink};
use crate::refcounts::Refcounts;
use crate::tables::is_address;

/// Slots hashed between two progress reports (and cancellation checks) in a full rebuild.
const HASH_ROUND: u64 = 1 << 16;
const HASH_CHUNK: usize = 2048;

/// A rebuild's figures (the keys of the Python engine's rebuild figures).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Figures {
    pub mode: &'static str,
    pub seconds: f64,
    pub pages: u64,
    pub references: u64,
    pub blocks: u64,
    pub bytes: u64,
    pub bytes_per_s: u64,
    pub corrupt_blocks: Vec<u64>,
    pub bad_references: u64,
    pub orphans_reclaimed: u64,
    pub free_slots: u64,
    pub capacity_slots: u64,
}

/// What the read-only phases computed; `install` puts it in place.
pub struct Rebuilt {
    refs: Refcounts,
    live: u64,
    index: Index,
    corrupt: Option<BTreeSet<u64>>, // None in fast mode: keep what is known
    unhashed: u64,                  // live slots without a fingerprint
    figures: Figures,
    started: Instant,
}

pub fn rebuild(st: &State, full: bool, mut sink: Sink) -> Result<Rebuilt> {
    let started = Instant::now();
    let blocks = &st.blocks;
    let store = &blocks.store;
    let capacity = store.capacity();
    let bs = store.block_size() as u64;

    // tables
    let pages = st.tables.page_count();
    let mut meter = Meter::new(&mut sink, "tables", pages, 1);
    let mut refs = Refcounts::with_len(capacity);
    let (mut live, mut references, mut bad_references) = (0u64, 0u64, 0u64);
    for page in st.tables.pages() {
        for &e in page.iter().filter(|&&e| is_address(e)) {
            references += 1;
            if e < capacity {
                live += (refs.incr(e) == 1) as u64;
            } else {
                bad_references += 1;
            }
        }
        meter.advance(1)?;
    }
    meter.finish()?;
    // A live slot never has an all-zero fingerprint, unless the fingerprint file lost it.
    let unhashed = {
        let known = blocks.corrupt.read();
        refs.live()
            .filter(|&s| store.digest(s) == [0; 16] && !known.contains(&s))
            .count() as u64
    };

    // hashes
    let mut meter = Meter::new(&mut sink, "hashes", live, bs);
    let corrupt = if full {
        let mut bad = BTreeSet::new();
        let mut start = 1u64;
        while start < capacity {
            let end = (start + HASH_ROUND).min(capacity);
            let slots: Vec<u64> = (start..end).filter(|&s| refs.get(s) > 0).collect();
            let found: Vec<u64> = slots
                .par_chunks(HASH_CHUNK)
                .flat_map_iter(|chunk| {
                    chunk
                        .iter()
                        .copied()
                        .filter(|&s| blocks.fp.of(store.block(s)) != store.digest(s))
                })
                .collect();
            bad.extend(found);
            meter.advance(slots.len() as u64)?;
            start = end;
        }
        Some(bad)
    } else {
        meter.advance(live)?;
        None
    };
    meter.finish()?;

    // index
    let mut meter = Meter::new(&mut sink, "index", live, 1);
    let sound = |s: &u64| corrupt.as_ref().is_none_or(|c| !c.contains(s));
    let mut index = Index::sized_for(refs.live().filter(sound).map(|s| key_of(&store.digest(s))));
    let mut n = 0u64;
    for slot in refs.live().filter(sound) {
        index.insert_new(key_of(&store.digest(slot)), slot);
        n += 1;
        if n.is_multiple_of(HASH_ROUND) {
            meter.advance(HASH_ROUND)?;
        }
    }
    meter.advance(n % HASH_ROUND)?;
    meter.finish()?;

    let figures = Figures {
        mode: if full { "full" } else { "fast" },
        pages,
        references,
        blocks: live,
        bytes: live * bs,
        corrupt_blocks: match &corrupt {
            Some(found) => found.iter().copied().collect(),
            // Not re-read, but the live blocks already known corrupt still are: a fast rebuild
            // after a scrub said "0 corrupt" of a block every read fails.
            None => blocks
                .corrupt
                .read()
                .iter()
                .copied()
                .filter(|&s| s < capacity && refs.get(s) > 0)
                .collect(),
        },
        bad_references,
        capacity_slots: capacity,
        ..Figures::default()
    };
    Ok(Rebuilt {
        refs,
        live,
        index,
        corrupt,
        unhashed,
        figures,
        started,
    })
}

/// The space phase, under the write lock: puts the rebuilt metadata in place, frees every
/// unreferenced slot no commit waits for, and (if `reclaim`) clears orphans' fingerprints.
pub fn install(st: &mut State, rebuilt: Rebuilt, reclaim: bool) -> Result<Figures> {
    let Rebuilt {
        refs,
        live,
        index,
        corrupt,
        unhashed,
        mut figures,
        started,
    } = rebuilt;
    let blocks = &mut st.blocks;
    let capacity = blocks.store.capacity();
    let waiting: std::collections::HashSet<u64> = blocks.space.waiting().collect();
    let mut space = std::mem::take(&mut blocks.space);
    space.reset(capacity);
    let mut orphans = Vec::new();
    for slot in 1..capacity {
        if refs.get(slot) == 0 && !waiting.contains(&slot) {
            space.put(slot);
            if blocks.store.digest(slot) != [0; 16] {
                orphans.push(slot);
            }
        }
    }
    if reclaim && !orphans.is_empty() {
        for &slot in &orphans {
            blocks.store.clear_digest(slot);
        }
        blocks.store.sync()?;
    }
    let mut known = std::mem::take(&mut *blocks.corrupt.write());
    match corrupt {
        Some(found) => known = found,
        None => known.retain(|&s| refs.get(s) > 0),
    }
    *blocks.corrupt.write() = known;
    // Free slots in holes of the data file need disk again before reuse (a hole that ends
    // part-way into a run too short to punch is known only from the file).
    for (first, count) in blocks.store.holes()? {
        space.mark_hollow(first, count);
    }
    figures.free_slots = space.free_count();
    figures.orphans_reclaimed = orphans.len() as u64;
    blocks.refs = refs;
    blocks.live = live;
    blocks.index = index;
    blocks.space = space;
    if reclaim {
        blocks.give_back_space(None);
    }
    st.damage = damage(&st.blocks.store, figures.bad_references, unhashed);
    st.ready = true;
    let seconds = started.elapsed().as_secs_f64();
    figures.seconds = (seconds * 1e4).round() / 1e4;
    figures.bytes_per_s = if seconds > 0.0 {
        (figures.bytes as f64 / seconds) as u64
    } else {
        0
    };
    Ok(figures)
}

/// What makes writing unsafe, in one line naming the file and what to do.
fn damage(store: &crate::slots::SlotStore, bad_references: u64, unhashed: u64) -> Option<String> {
    use crate::slots::{DATA_FILE, HASH_FILE};
    if bad_references > 0 {
        Some(format!(
            "{bad_references} block references point past the end of {} ({} slots): it was \
             truncated or replaced; nothing is written until `blockfold rebuild --full --repair` \
             (which marks those blocks corrupt)",
            store.path_of(DATA_FILE),
            store.capacity()
        ))
    } else if unhashed > 0 {
        Some(format!(
            "{unhashed} live blocks have no fingerprint in {}: it was truncated, deleted or \
             replaced; nothing is written until `blockfold rebuild --full --repair` (which \
             computes them again from the data)",
            store.path_of(HASH_FILE)
        ))
    } else {
        None
    }
}

impl FreeSpace {
    /// Forgets every free slot (keeping the waiting lists) and covers `len` slots, all used.
    pub fn reset(&mut self, len: u64) {
        let waiting = std::mem::take(self);
        *self = FreeSpace::new();
        self.set_len(len);
        self.adopt_waiting(waiting);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Core;
    use crate::error::Error;
    use crate::fingerprint::Fingerprinter;
    use crate::progress::Report;
    use crate::slots::{DATA_FILE as DATA, HASH_FILE as HASHES};

    fn quiet() -> impl FnMut(&Report) -> Result<()> {
        |_: &Report| Ok(())
    }

    fn pool(dir: &std::path::Path) -> Core {
        let c = Core::open(Some(dir), 4096, false, true, Fingerprinter::Xxh3).unwrap();
        c.rebuild(false, true, &mut quiet()).unwrap();
        c.state_mut().tables.add_layer(1, None, true).unwrap();
        c.set_vm("a", 1, 1 << 30).unwrap();
        c
    }

    #[test]
    fn rebuild_recounts_finds_rot_and_reclaims_orphans() {
        let dir = tempfile::tempdir().unwrap();
        let c = pool(dir.path());
        let data: Vec<u8> = (0..5 * 4096).map(|i| (i / 4096 + 1) as u8).collect();
        c.write("a", 0, &data).unwrap();
        c.write("a", 5 * 4096, &data[..4096]).unwrap(); // shares slot 1
        let orphan = {
            let mut st = c.state_mut();
            // an orphan: a slot with data that no table names, as a crash mid-write leaves
            st.blocks.reserve(1).unwrap();
            let slot = st.blocks.space.take(1).unwrap()[0];
            st.blocks.store.put(slot, &[7; 4096], &[7; 16]);
            st.blocks.store.overwrite_raw(3, 0, &[0xEE]); // rot in a live slot
            slot
        };
        let mut reports = Vec::new();
        let mut sink = |r: &Report| {
            reports.push(r.phase);
            Ok(())
        };
        let fig = c.rebuild(true, true, &mut sink).unwrap();
        assert_eq!(fig.mode, "full");
        assert_eq!((fig.blocks, fig.references, fig.pages), (5, 6, 1));
        assert_eq!(fig.corrupt_blocks, vec![3]);
        assert_eq!(fig.orphans_reclaimed, 1);
        assert_eq!(fig.capacity_slots, 1 + 1024);
        assert_eq!(fig.free_slots, 1024 - 5);
        assert!(["tables", "hashes", "index"]
            .iter()
            .all(|p| reports.contains(p)));
        let st = c.state();
        assert_eq!(st.blocks.refcount(1), 2);
        assert_eq!(st.blocks.store.digest(orphan), [0; 16]);
        assert_eq!(
            st.blocks.corrupt.read().iter().copied().collect::<Vec<_>>(),
            vec![3]
        );
        drop(st);
        // the index works: the same block shares again
        c.write("a", 6 * 4096, &data[4096..8192]).unwrap();
        assert_eq!(c.state().blocks.refcount(2), 2);
        // a fast rebuild re-reads nothing, and still counts the live block known corrupt
        let fig = c.rebuild(false, true, &mut |_: &Report| Ok(())).unwrap();
        assert_eq!((fig.mode, fig.corrupt_blocks), ("fast", vec![3]));
    }

    #[test]
    fn frees_waiting_for_a_commit_survive_a_rebuild() {
        let dir = tempfile::tempdir().unwrap();
        let c = pool(dir.path());
        c.write("a", 0, &[1; 4096]).unwrap();
        c.write("a", 0, &[2; 4096]).unwrap(); // slot 1 now waits for the commit
        let fig = c.rebuild(false, true, &mut quiet()).unwrap();
        assert_eq!(fig.orphans_reclaimed, 0, "a waiting slot is no orphan");
        assert!(!c.state().blocks.space.is_free(1));
        let snap = c.snapshot(&Default::default()).unwrap();
        assert_eq!(c.end(snap.token).unwrap(), 1);
        assert!(c.state().blocks.space.is_free(1));
    }

    #[test]
    fn damage_refuses_writes_until_a_repair() {
        let dir = tempfile::tempdir().unwrap();
        let c = pool(dir.path());
        c.write("a", 0, &[1; 4096]).unwrap();
        c.write("a", 4096, &[2; 4096]).unwrap();
        let lost = c.state().blocks.store.capacity() + 5;
        c.state_mut().tables.set_entries(1, 2, &[lost]).unwrap();
        c.state_mut().blocks.store.clear_digest(2); // a lost fingerprint
        c.rebuild(false, true, &mut quiet()).unwrap();
        let damage = c.damage().unwrap();
        assert!(
            damage.contains("past the end of") && damage.contains(DATA),
            "{damage}"
        );
        assert!(matches!(c.write("a", 0, &[3; 4096]), Err(Error::Format(_))));
        let (computed, gone) = c.repair().unwrap();
        assert_eq!((computed, gone), (1, vec![lost]));
        let fig = c.rebuild(true, true, &mut quiet()).unwrap();
        assert_eq!(fig.corrupt_blocks, vec![lost]);
        assert_eq!(c.damage(), None);
        c.write("a", 3 * 4096, &[4; 4096]).unwrap();
        let mut at = [0u64];
        c.lookup(1, 3, &mut at).unwrap();
        assert_ne!(at[0], lost, "a lost slot is never reused");
        assert_eq!(c.read("a", 4096, 4096).unwrap(), vec![2; 4096]);
    }

    #[test]
    fn a_data_file_cut_under_the_pool_fails_those_reads_and_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let c = pool(dir.path());
        let data: Vec<u8> = (0..3 * 4096).map(|i| (i / 4096 + 1) as u8).collect();
        c.write("a", 0, &data).unwrap(); // slots 1-3
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join(DATA))
            .unwrap()
            .set_len(2 * 4096) // the header and slot 1 stay
            .unwrap();
        assert!(matches!(
            c.read("a", 4096, 4096),
            Err(Error::Corrupt {
                offset: 4096,
                slot: 2,
                ..
            })
        ));
        let damage = c.damage().unwrap();
        assert!(
            damage.contains(DATA) && damage.contains("at byte 8192"),
            "{damage}"
        );
        assert_eq!(c.read("a", 0, 4096).unwrap(), data[..4096]);
        assert!(matches!(c.write("a", 0, &[9; 4096]), Err(Error::Format(_))));
        // What the map found stays until the pool is opened again.
        c.rebuild(false, true, &mut quiet()).unwrap();
        assert!(c.damage().unwrap().contains("could not be read"));
    }

    #[test]
    fn a_lost_fingerprint_alone_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        let c = pool(dir.path());
        c.write("a", 0, &[1; 4096]).unwrap();
        c.state_mut().blocks.store.clear_digest(1);
        c.rebuild(false, true, &mut quiet()).unwrap();
        assert!(c.damage().unwrap().contains(HASHES));
    }

    #[test]
    fn references_past_the_end_are_bad_and_cancel_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let c = pool(dir.path());
        c.write("a", 0, &[1; 4096]).unwrap();
        c.state_mut().tables.set_entries(1, 1, &[1 << 40]).unwrap();
        let fig = c.rebuild(false, true, &mut quiet()).unwrap();
        assert_eq!(fig.bad_references, 1);
        let mut stop = |_: &Report| Err(Error::Cancelled("rebuild".into()));
        assert!(matches!(
            c.rebuild(true, true, &mut stop),
            Err(Error::Cancelled(_))
        ));
        assert_eq!(c.state().blocks.refcount(1), 1);
        // The damage the last finished rebuild found still refuses writes: a cancelled rebuild
        // changed nothing; once the reference is sound again, writes go on.
        assert!(matches!(
            c.write("a", 8192, &[3; 4096]),
            Err(Error::Format(_))
        ));
        c.state_mut().tables.set_entries(1, 1, &[1]).unwrap();
        c.rebuild(false, true, &mut quiet()).unwrap();
        c.write("a", 8192, &[3; 4096]).unwrap();
    }
}
