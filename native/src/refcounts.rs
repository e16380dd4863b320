//! A refcount per slot in 2 bytes: chunks of u16 (growth adds a chunk, never copies the array), and
//! the rare count of 65535 or more in an overflow map.

use std::collections::HashMap;

const CHUNK_BITS: u32 = 16;
const CHUNK: usize = 1 << CHUNK_BITS;
const MASK: u64 = CHUNK as u64 - 1;
const BIG: u16 = u16::MAX; // the count is in `overflow`

#[derive(Default)]
pub struct Refcounts {
    chunks: Vec<Box<[u16]>>,
    overflow: HashMap<u64, u64>,
    len: u64,
}

impl Refcounts {
    pub fn with_len(len: u64) -> Self {
        let mut r = Refcounts::default();
        r.set_len(len);
        r
    }

    /// Slots covered (the data file's capacity).
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Covers `len` slots; new ones count 0. Never shrinks.
    pub fn set_len(&mut self, len: u64) {
        while (self.chunks.len() as u64) << CHUNK_BITS < len {
            self.chunks.push(vec![0u16; CHUNK].into_boxed_slice());
        }
        self.len = self.len.max(len);
    }

    pub fn get(&self, slot: u64) -> u64 {
        if slot >= self.len {
            return 0;
        }
        match self.cell(slot) {
            BIG => self.overflow[&slot],
            n => n as u64,
        }
    }

    /// Adds one reference; returns the new count.
    pub fn incr(&mut self, slot: u64) -> u64 {
        let n = self.cell(slot);
        if n < BIG - 1 {
            *self.cell_mut(slot) = n + 1;
            return n as u64 + 1;
        }
        if n == BIG - 1 {
            *self.cell_mut(slot) = BIG;
            self.overflow.insert(slot, BIG as u64);
            return BIG as u64;
        }
        let count = self.overflow.get_mut(&slot).unwrap();
        *count += 1;
        *count
    }

    /// Drops one reference; returns the new count. Panics on a count of 0 (a bookkeeping bug).
    pub fn decr(&mut self, slot: u64) -> u64 {
        let n = self.cell(slot);
        assert!(n > 0, "refcount of slot {slot} is already 0");
        if n < BIG {
            *self.cell_mut(slot) = n - 1;
            return n as u64 - 1;
        }
        let count = self.overflow.get_mut(&slot).unwrap();
        *count -= 1;
        let left = *count;
        if left < BIG as u64 {
            self.overflow.remove(&slot);
            *self.cell_mut(slot) = left as u16;
        }
        left
    }

    /// Slots with a count above 0, ascending (slot 0 never has one).
    pub fn live(&self) -> impl Iterator<Item = u64> + '_ {
        self.live_from(0)
    }

    /// Counted slots from `start` on, ascending; chunks before it are not looked at.
    pub fn live_from(&self, start: u64) -> impl Iterator<Item = u64> + '_ {
        let skip = (start >> CHUNK_BITS) as usize;
        let chunks = self.chunks.iter().enumerate().skip(skip);
        chunks.flat_map(move |(c, chunk)| {
            let base = (c as u64) << CHUNK_BITS;
            chunk
                .iter()
                .enumerate()
                .filter(|(_, &n)| n != 0)
                .map(move |(i, _)| base + i as u64)
                .filter(move |&s| s >= start && s < self.len)
        })
    }

    pub fn live_count(&self) -> u64 {
        self.chunks
            .iter()
            .map(|c| c.iter().filter(|&&n| n != 0).count() as u64)
            .sum()
    }

    /// Bytes of RAM held.
    pub fn nbytes(&self) -> u64 {
        (self.chunks.len() * CHUNK * 2 + self.overflow.capacity() * 24) as u64
    }

    fn cell(&self, slot: u64) -> u16 {
        self.chunks[(slot >> CHUNK_BITS) as usize][(slot & MASK) as usize]
    }

    fn cell_mut(&mut self, slot: u64) -> &mut u16 {
        &mut self.chunks[(slot >> CHUNK_BITS) as usize][(slot & MASK) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_past_the_u16_range_and_back() {
        let mut r = Refcounts::with_len(10);
        for i in 1..=70_000u64 {
            assert_eq!(r.incr(3), i);
        }
        assert_eq!(r.get(3), 70_000);
        for i in (0..70_000u64).rev() {
            assert_eq!(r.decr(3), i);
        }
        assert_eq!(r.get(3), 0);
        assert!(r.overflow.is_empty());
    }

    #[test]
    fn growth_adds_chunks_and_live_lists_counted_slots() {
        let mut r = Refcounts::with_len(5);
        r.set_len(CHUNK as u64 * 2 + 5);
        assert_eq!(r.chunks.len(), 3);
        r.incr(1);
        r.incr(CHUNK as u64 + 7);
        r.incr(CHUNK as u64 + 7);
        assert_eq!(r.live().collect::<Vec<_>>(), vec![1, CHUNK as u64 + 7]);
        assert_eq!(r.live_count(), 2);
        assert_eq!(r.get(CHUNK as u64 * 10), 0);
    }

    #[test]
    #[should_panic]
    fn decrement_below_zero_is_a_bug() {
        Refcounts::with_len(4).decr(2);
    }
}
