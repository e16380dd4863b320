//! Block fingerprints: xxh3-128 as the canonical 16-byte digest (big-endian, the bytes
//! `xxhash.xxh3_128_digest` returns), so a pool's existing hashes.dat stays valid.
//!
//! The index key of a digest is its first 8 bytes read little-endian (what numpy's uint64 view of
//! the digest gives on x86), with 0 mapped to 1 because 0 marks an empty cell.

use rayon::prelude::*;
use xxhash_rust::xxh3::xxh3_128;

pub type Digest = [u8; 16];

/// Below this many bytes a batch is hashed on the calling thread: handing work to rayon costs more.
const PARALLEL_BYTES: usize = 1 << 20;

pub fn fingerprint(block: &[u8]) -> Digest {
    xxh3_128(block).to_be_bytes()
}

/// How a core fingerprints blocks: xxh3-128, or (for collision tests only) one constant digest
/// for every block, so that every lookup finds a candidate whose bytes differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fingerprinter {
    Xxh3,
    Constant(Digest),
}

impl Fingerprinter {
    pub fn of(&self, block: &[u8]) -> Digest {
        match self {
            Fingerprinter::Xxh3 => fingerprint(block),
            Fingerprinter::Constant(d) => *d,
        }
    }
}

/// The 64-bit index key of a digest.
pub fn key_of(digest: &Digest) -> u64 {
    let key = u64::from_le_bytes(digest[..8].try_into().unwrap());
    key.max(1)
}

/// The fingerprint of each `block_size` block of `data` (a whole number of blocks).
pub fn fingerprints(data: &[u8], block_size: usize) -> Vec<Digest> {
    debug_assert_eq!(data.len() % block_size, 0);
    if data.len() >= PARALLEL_BYTES {
        data.par_chunks_exact(block_size).map(fingerprint).collect()
    } else {
        data.chunks_exact(block_size).map(fingerprint).collect()
    }
}

/// True if every byte is zero. Blocks of zeros take no slot.
pub fn is_zero(block: &[u8]) -> bool {
    // Eight bytes at a time, no early exit: the compiler vectorises it, and data blocks are rare
    // to be mostly zeros.
    let (head, words, tail) = unsafe { block.align_to::<u64>() };
    head.iter().all(|&b| b == 0)
        && words.iter().fold(0u64, |acc, &w| acc | w) == 0
        && tail.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_canonical_big_endian() {
        // xxh3-128 of the empty input, as `xxhash.xxh3_128_hexdigest(b"")` prints it.
        let d = fingerprint(b"");
        assert_eq!(hex(&d), "99aa06d3014798d86001c324468d497f");
    }

    #[test]
    fn key_is_first_word_little_endian_and_never_zero() {
        let mut d = [0u8; 16];
        d[0] = 2;
        assert_eq!(key_of(&d), 2);
        assert_eq!(key_of(&[0u8; 16]), 1);
    }

    #[test]
    fn batch_equals_one_by_one_serial_and_parallel() {
        for blocks in [3usize, 600] {
            let data: Vec<u8> = (0..blocks * 4096).map(|i| (i * 7 % 251) as u8).collect();
            let batch = fingerprints(&data, 4096);
            assert_eq!(batch.len(), blocks);
            for (i, d) in batch.iter().enumerate() {
                assert_eq!(*d, fingerprint(&data[i * 4096..(i + 1) * 4096]));
            }
        }
    }

    #[test]
    fn zero_detection() {
        let mut b = vec![0u8; 4096];
        assert!(is_zero(&b));
        assert!(is_zero(&b[1..4095]));
        b[4095] = 1;
        assert!(!is_zero(&b));
        b[4095] = 0;
        b[3] = 1;
        assert!(!is_zero(&b[1..]));
    }

    fn hex(d: &[u8]) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }
}
