//! Free slots and the frees that wait for a commit.
//!
//! A slot whose last reference goes is not reusable at once: until the commit that dropped the
//! reference is durable, a crash would bring the reference back. It waits in the *pending* list of
//! the current epoch. `seal()` closes the epoch (the commit's snapshot); after the commit,
//! `release(epoch)` makes its slots free; if the commit failed, `unseal(epoch)` puts them back
//! into the pending list, for the next commit.
//!
//! Free slots are a bitmap (1 bit a slot); allocation takes the lowest free slots first, so freed
//! slots are reused before the file's fresh tail. A second bitmap marks the free slots that are
//! *hollow*: their space went back to the filesystem (a hole), to be allocated again before reuse.

use std::collections::BTreeMap;

#[derive(Default)]
pub struct FreeSpace {
    bits: Vec<u64>,
    hollow: Vec<u64>,
    len: u64,
    free: u64,
    cursor: u64, // no free slot below it
    pending: Vec<u64>,
    sealed: BTreeMap<u64, Vec<u64>>,
    epoch: u64,
}

impl FreeSpace {
    pub fn new() -> Self {
        Self::default()
    }

    /// Covers `len` slots; new ones start used (callers free what is free).
    pub fn set_len(&mut self, len: u64) {
        let words = len.div_ceil(64) as usize;
        self.bits
            .reserve_exact(words.saturating_sub(self.bits.len()));
        self.bits.resize(words, 0);
        self.hollow.resize(words, 0);
        self.len = self.len.max(len);
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn free_count(&self) -> u64 {
        self.free
    }

    pub fn is_free(&self, slot: u64) -> bool {
        slot < self.len && self.bits[(slot / 64) as usize] >> (slot % 64) & 1 == 1
    }

    /// Marks a slot free. Panics if it already is (a bookkeeping bug).
    pub fn put(&mut self, slot: u64) {
        assert!(
            slot > 0 && slot < self.len,
            "slot {slot} outside 1..{}",
            self.len
        );
        let (w, b) = ((slot / 64) as usize, slot % 64);
        assert!(self.bits[w] >> b & 1 == 0, "slot {slot} freed twice");
        self.bits[w] |= 1 << b;
        self.free += 1;
        self.cursor = self.cursor.min(slot);
    }

    /// The `n` lowest free slots (what `take(n)` would take), or None if fewer are free.
    pub fn peek(&self, n: usize) -> Option<Vec<u64>> {
        if (n as u64) > self.free {
            return None;
        }
        let mut out = Vec::with_capacity(n);
        let mut w = (self.cursor / 64) as usize;
        while out.len() < n {
            let mut word = self.bits[w];
            while word != 0 && out.len() < n {
                let b = word.trailing_zeros() as u64;
                out.push(w as u64 * 64 + b);
                word &= word - 1;
            }
            w += 1;
        }
        Some(out)
    }

    /// Takes the `n` lowest free slots, or None (and takes nothing) if fewer are free. Panics if
    /// one is hollow (callers fill holes first, see `hollow_runs`).
    pub fn take(&mut self, n: usize) -> Option<Vec<u64>> {
        let out = self.peek(n)?;
        for &slot in &out {
            let (w, b) = ((slot / 64) as usize, slot % 64);
            assert!(
                self.hollow[w] >> b & 1 == 0,
                "slot {slot} taken while hollow"
            );
            self.bits[w] &= !(1 << b);
        }
        self.free -= n as u64;
        self.cursor = out.last().map_or(self.cursor, |&s| s + 1);
        Some(out)
    }

    /// Free slots that are hollow.
    pub fn hollow_count(&self) -> u64 {
        self.hollow.iter().map(|w| w.count_ones() as u64).sum()
    }

    pub fn is_hollow(&self, slot: u64) -> bool {
        slot < self.len && self.hollow[(slot / 64) as usize] >> (slot % 64) & 1 == 1
    }

    /// Marks `first..first + count` (free slots) hollow, or not.
    pub fn set_hollow(&mut self, first: u64, count: u64, hollow: bool) {
        for slot in first..first + count {
            let (w, b) = ((slot / 64) as usize, slot % 64);
            debug_assert!(self.bits[w] >> b & 1 == 1, "slot {slot} is not free");
            if hollow {
                self.hollow[w] |= 1 << b;
            } else {
                self.hollow[w] &= !(1 << b);
            }
        }
    }

    /// Marks hollow the free slots among `first..first + count` (used ones stay as they are).
    pub fn mark_hollow(&mut self, first: u64, count: u64) {
        let end = (first + count).min(self.len);
        let mut slot = first;
        while slot < end {
            let (w, b) = ((slot / 64) as usize, slot % 64);
            let n = (64 - b).min(end - slot);
            let mask = if n == 64 { !0 } else { ((1u64 << n) - 1) << b };
            self.hollow[w] |= self.bits[w] & mask;
            slot += n;
        }
    }

    /// The hollow slots among ascending `slots`, as runs (first, count).
    pub fn hollow_runs(&self, slots: &[u64]) -> Vec<(u64, u64)> {
        runs(slots.iter().copied().filter(|&s| self.is_hollow(s)))
    }

    /// The maximal run of free slots that are not hollow around `slot` (free itself), as
    /// (first, count).
    pub fn solid_run_around(&self, slot: u64) -> (u64, u64) {
        let solid = |s: u64| self.is_free(s) && !self.is_hollow(s);
        let (mut first, mut end) = (slot, slot + 1);
        while first > 1 && solid(first - 1) {
            first -= 1;
        }
        while end < self.len && solid(end) {
            end += 1;
        }
        (first, end - first)
    }

    /// Every run of free slots that are not hollow, as (first, count), ascending.
    pub fn solid_runs(&self) -> Vec<(u64, u64)> {
        runs(
            self.free_slots()
                .into_iter()
                .filter(|&s| !self.is_hollow(s)),
        )
    }

    /// Every free slot, ascending.
    pub fn free_slots(&self) -> Vec<u64> {
        let mut out = Vec::with_capacity(self.free as usize);
        for (w, &word) in self.bits.iter().enumerate() {
            let mut word = word;
            while word != 0 {
                let b = word.trailing_zeros() as u64;
                out.push(w as u64 * 64 + b);
                word &= word - 1;
            }
        }
        out
    }

    /// A slot lost its last reference: it waits for the commit of the current epoch.
    pub fn defer(&mut self, slot: u64) {
        self.pending.push(slot);
    }

    /// Closes the current epoch; returns its number. Frees from now on belong to the next one.
    pub fn seal(&mut self) -> u64 {
        let epoch = self.epoch;
        self.sealed.insert(epoch, std::mem::take(&mut self.pending));
        self.epoch += 1;
        epoch
    }

    /// The slots of a sealed epoch, removed from the waiting lists (release). Unknown: empty.
    pub fn take_sealed(&mut self, epoch: u64) -> Vec<u64> {
        self.sealed.remove(&epoch).unwrap_or_default()
    }

    /// A commit failed: the epoch's slots wait again, for the next commit.
    pub fn unseal(&mut self, epoch: u64) {
        if let Some(slots) = self.sealed.remove(&epoch) {
            self.pending.extend(slots);
        }
    }

    /// Takes over another map's waiting lists and epoch counter (a rebuild's new free map).
    pub fn adopt_waiting(&mut self, other: FreeSpace) {
        self.pending = other.pending;
        self.sealed = other.sealed;
        self.epoch = other.epoch;
    }

    /// Slots waiting for a commit, sealed or not (with repeats if a slot was freed twice).
    pub fn waiting(&self) -> impl Iterator<Item = u64> + '_ {
        self.pending
            .iter()
            .chain(self.sealed.values().flatten())
            .copied()
    }

    /// Frees waiting for the next seal.
    pub fn pending_count(&self) -> u64 {
        self.pending.len() as u64
    }

    pub fn waiting_count(&self) -> u64 {
        (self.pending.len() + self.sealed.values().map(Vec::len).sum::<usize>()) as u64
    }

    pub fn nbytes(&self) -> u64 {
        (self.bits.capacity() * 8
            + (self.pending.capacity() + self.sealed.values().map(Vec::capacity).sum::<usize>())
                * 8) as u64
    }
}

/// Ascending slots as runs of consecutive ones: (first, count).
fn runs(slots: impl Iterator<Item = u64>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for slot in slots {
        match out.last_mut() {
            Some((first, count)) if *first + *count == slot => *count += 1,
            _ => out.push((slot, 1)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space(len: u64, free: &[u64]) -> FreeSpace {
        let mut f = FreeSpace::new();
        f.set_len(len);
        for &s in free {
            f.put(s);
        }
        f
    }

    #[test]
    fn takes_lowest_first_and_all_or_nothing() {
        let mut f = space(200, &[150, 3, 70, 4]);
        assert_eq!(f.take(5), None);
        assert_eq!(f.free_count(), 4);
        assert_eq!(f.take(3), Some(vec![3, 4, 70]));
        f.put(2);
        assert_eq!(f.take(2), Some(vec![2, 150]));
        assert_eq!(f.free_count(), 0);
        assert!(f.take(1).is_none());
    }

    #[test]
    fn epochs_seal_release_unseal() {
        let mut f = space(10, &[]);
        f.defer(5);
        let e0 = f.seal();
        f.defer(6);
        let e1 = f.seal();
        assert_eq!(f.waiting_count(), 2);
        f.unseal(e0);
        assert_eq!(f.waiting().collect::<Vec<_>>(), vec![5, 6]);
        assert_eq!(f.take_sealed(e1), vec![6]);
        let e2 = f.seal();
        assert_eq!(f.take_sealed(e2), vec![5]);
        assert_eq!(f.waiting_count(), 0);
    }

    #[test]
    #[should_panic]
    fn double_free_is_a_bug() {
        let mut f = space(10, &[4]);
        f.put(4);
    }

    #[test]
    fn hollow_slots_are_found_in_runs_and_never_taken() {
        let mut f = space(300, &(1..200).collect::<Vec<_>>());
        assert_eq!(f.solid_run_around(50), (1, 199));
        f.set_hollow(10, 20, true);
        assert_eq!(f.solid_run_around(50), (30, 170));
        assert_eq!(f.solid_run_around(5), (1, 9));
        assert_eq!(f.solid_runs(), vec![(1, 9), (30, 170)]);
        let next = f.peek(12).unwrap();
        assert_eq!(f.hollow_runs(&next), vec![(10, 3)]);
        f.set_hollow(10, 3, false);
        assert_eq!(f.take(12).unwrap(), (1..13).collect::<Vec<_>>());
        assert!(f.is_hollow(13) && !f.is_hollow(12));
    }

    #[test]
    fn holes_mark_only_free_slots_hollow() {
        let mut f = space(300, &[3, 4, 63, 64, 65, 130, 200]);
        f.mark_hollow(4, 127);
        assert_eq!(f.hollow_count(), 5);
        assert!(!f.is_hollow(3) && f.is_hollow(4) && f.is_hollow(63) && f.is_hollow(130));
        assert!(!f.is_hollow(200) && !f.is_hollow(5));
    }

    #[test]
    #[should_panic]
    fn taking_a_hollow_slot_is_a_bug() {
        let mut f = space(10, &[4]);
        f.set_hollow(4, 1, true);
        f.take(1);
    }

    #[test]
    fn free_slots_lists_the_bitmap() {
        let f = space(300, &[1, 64, 65, 299]);
        assert_eq!(f.free_slots(), vec![1, 64, 65, 299]);
        assert!(f.is_free(64) && !f.is_free(63) && !f.is_free(1000));
    }
}
