//! fsck's checks of the RAM state (engine/fsck.py runs the layer-graph and catalog checks):
//!   references  no table points past the end of the data file
//!   refcount    each slot's refcount equals a recount of the references in every page
//!   space       no slot both free and live, the header never free, none leaked (unreferenced,
//!               yet neither free nor waiting for a commit)
//!   corrupt     `rehash`: each given slot's bytes still hash to its stored fingerprint (fsck over
//!               every live slot, scrub over a range at a time)
//! At most 50 problems of each kind are reported.

use std::collections::{HashMap, HashSet};

use rayon::prelude::*;

use crate::core::State;
use crate::error::Result;
use crate::progress::{Meter, Sink};
use crate::tables::is_address;

pub const MAX_REPORTED: usize = 50;
const REHASH_ROUND: usize = 1 << 15;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub kind: &'static str,
    pub message: String,
    pub pbn: Option<u64>,
}

#[derive(Default)]
struct Report {
    problems: Vec<Problem>,
    counts: HashMap<&'static str, usize>,
}

impl Report {
    fn add(&mut self, kind: &'static str, message: String, pbn: Option<u64>) {
        let n = self.counts.entry(kind).or_default();
        if *n < MAX_REPORTED {
            *n += 1;
            self.problems.push(Problem { kind, message, pbn });
        }
    }
}

/// The reference, refcount and space checks, over one consistent state (the caller holds the
/// lock, shared, for the whole check).
pub fn check(st: &State) -> Vec<Problem> {
    let mut report = Report::default();
    let blocks = &st.blocks;
    let capacity = blocks.store.capacity();
    let mut counted = vec![0u32; capacity as usize];
    let mut past_end = std::collections::BTreeSet::new();
    for page in st.tables.pages() {
        for &e in page.iter().filter(|&&e| is_address(e)) {
            if e < capacity {
                counted[e as usize] = counted[e as usize].saturating_add(1);
            } else {
                past_end.insert(e);
            }
        }
    }
    for &addr in past_end.iter().take(10) {
        report.add(
            "reference",
            format!("a block table points at slot {addr}, past the end of the data file"),
            Some(addr),
        );
    }
    for (slot, &n) in counted.iter().enumerate() {
        let have = blocks.refs.get(slot as u64);
        if have != n as u64 {
            report.add(
                "refcount",
                format!("slot {slot} has refcount {have} but {n} references"),
                Some(slot as u64),
            );
        }
    }
    if blocks.space.is_free(0) {
        report.add(
            "space",
            "the header slot 0 is on the free list".into(),
            Some(0),
        );
    }
    let waiting: HashSet<u64> = blocks.space.waiting().collect();
    for slot in 1..capacity {
        let free = blocks.space.is_free(slot);
        let live = blocks.refs.get(slot) > 0;
        if free && live {
            report.add(
                "space",
                format!("slot {slot} is both free and live"),
                Some(slot),
            );
        } else if !free && !live && !waiting.contains(&slot) {
            report.add(
                "space",
                format!("slot {slot} is neither referenced nor free: leaked"),
                Some(slot),
            );
        }
    }
    report.problems
}

/// Re-hashes the given slots against their stored fingerprints on every core; returns those that
/// no longer match (and remembers them as corrupt). Progress phase "fsck"; cancellable.
pub fn rehash(st: &State, slots: &[u64], mut sink: Sink) -> Result<Vec<u64>> {
    let blocks = &st.blocks;
    let store = &blocks.store;
    let mut meter = Meter::new(
        &mut sink,
        "fsck",
        slots.len() as u64,
        store.block_size() as u64,
    );
    let mut bad = Vec::new();
    for round in slots.chunks(REHASH_ROUND) {
        let found: Vec<u64> = round
            .par_chunks(1024)
            .flat_map_iter(|chunk| {
                chunk.iter().copied().filter(|&s| {
                    s > 0 && s < store.capacity() && blocks.fp.of(store.block(s)) != store.digest(s)
                })
            })
            .collect();
        bad.extend(found);
        meter.advance(round.len() as u64)?;
    }
    meter.finish()?;
    for &slot in &bad {
        blocks.mark_corrupt(slot);
    }
    Ok(bad)
}

/// The rehash problems, as fsck reports them.
pub fn corrupt_problems(bad: &[u64]) -> Vec<Problem> {
    let mut report = Report::default();
    for &slot in bad {
        report.add(
            "corrupt",
            format!("slot {slot}: its bytes no longer match its fingerprint"),
            Some(slot),
        );
    }
    report.problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Core;
    use crate::fingerprint::Fingerprinter;
    use crate::progress::Report as Progress;

    fn core() -> Core {
        let c = Core::open(None, 4096, false, true, Fingerprinter::Xxh3).unwrap();
        c.rebuild(false, true, &mut |_: &Progress| Ok(())).unwrap();
        c.state_mut().tables.add_layer(1, None, true).unwrap();
        c.set_vm("a", 1, 1 << 20).unwrap();
        c
    }

    #[test]
    fn a_sound_state_has_no_problems() {
        let c = core();
        c.write("a", 0, &[1; 3 * 4096]).unwrap();
        c.write("a", 0, &[2; 4096]).unwrap();
        assert_eq!(check(&c.state()), vec![]);
        let live = c.state().blocks.live_slots();
        assert!(rehash(&c.state(), &live, &mut |_: &Progress| Ok(()))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn each_broken_promise_is_reported() {
        let c = core();
        c.write("a", 0, &[1; 4096]).unwrap();
        c.write("a", 4096, &[2; 4096]).unwrap();
        {
            let mut st = c.state_mut();
            st.blocks.incref(1); // refcount 2, one reference
            st.tables.set_entries(1, 5, &[1 << 40]).unwrap();
            st.blocks.store.overwrite_raw(2, 9, &[0]);
            st.blocks.reserve(1).unwrap();
            st.blocks.space.take(1).unwrap(); // slot 3 leaked
        }
        let problems = check(&c.state());
        let kinds: Vec<_> = problems.iter().map(|p| (p.kind, p.pbn)).collect();
        assert!(kinds.contains(&("refcount", Some(1))), "{problems:?}");
        assert!(
            kinds.contains(&("reference", Some(1 << 40))),
            "{problems:?}"
        );
        assert!(kinds.contains(&("space", Some(3))), "{problems:?}");
        let bad = rehash(&c.state(), &[1, 2], &mut |_: &Progress| Ok(())).unwrap();
        assert_eq!(bad, vec![2]);
        assert_eq!(
            corrupt_problems(&bad)[0].message,
            "slot 2: its bytes no longer match its fingerprint"
        );
        assert_eq!(c.corrupt_slots(), vec![2]);
    }
}
