//! Per-4-KiB-block costs of the data path and RAM per unique block, printed as a table.
//!
//!   cargo bench --bench figures             (BLOCKFOLD_BENCH_GIB=1, BLOCKFOLD_BENCH_KEYS=10000000)
//!
//! Single thread unless said. The pool's slot files are in a temporary directory (page cache).

use std::time::Instant;

use blockfold_native::core::Core;
use blockfold_native::fingerprint::{fingerprint, Fingerprinter};
use blockfold_native::freespace::FreeSpace;
use blockfold_native::index::Index;
use blockfold_native::progress::Report;
use blockfold_native::refcounts::Refcounts;

const BS: usize = 4096;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `blocks` distinct random blocks, each stamped with `stamp` so that runs differ.
fn fill(buf: &mut [u8], seed: u64) {
    let mut x = seed;
    for w in buf.chunks_exact_mut(8) {
        w.copy_from_slice(&(splitmix(&mut x) | 1).to_le_bytes());
    }
}

fn row(what: &str, blocks: u64, secs: f64) {
    let ns = secs * 1e9 / blocks as f64;
    let gbs = blocks as f64 * BS as f64 / secs / 1e9;
    println!("| {what:<52} | {ns:>9.0} ns | {gbs:>7.2} GB/s |");
}

fn main() {
    let gib = env("BLOCKFOLD_BENCH_GIB", 1);
    let keys = env("BLOCKFOLD_BENCH_KEYS", 10_000_000);
    let total_blocks = gib * (1 << 30) / BS as u64;
    let dir = tempfile::tempdir().unwrap();
    let core = Core::open(Some(dir.path()), BS, false, true, Fingerprinter::Xxh3).unwrap();
    let mut quiet = |_: &Report| Ok(());
    core.rebuild(false, true, &mut quiet).unwrap();
    for (layer, name) in [(1, "a"), (2, "b"), (3, "c")] {
        core.state_mut().tables.add_layer(layer, None, true).unwrap();
        core.set_vm(name, layer, 1 << 40).unwrap();
    }
    let req = 1 << 20;
    let mut buf = vec![0u8; req];

    println!("| {:<52} | {:>12} | {:>12} |", "per 4 KiB block", "cost", "throughput");
    println!("|{}|{}|{}|", "-".repeat(54), "-".repeat(14), "-".repeat(14));

    // xxh3-128 alone, the floor of every step that fingerprints
    fill(&mut buf, 1);
    let t = Instant::now();
    let mut sink = 0u8;
    for _ in 0..64 {
        for b in buf.chunks_exact(BS) {
            sink ^= fingerprint(b)[0];
        }
    }
    row("xxh3-128 of a block (reference)", 64 * 256, t.elapsed().as_secs_f64());
    std::hint::black_box(sink);

    // store of fresh blocks: 1 MiB requests
    let requests = total_blocks * BS as u64 / req as u64;
    let mut gen = 0.0;
    let t = Instant::now();
    for i in 0..requests {
        let g = Instant::now();
        fill(&mut buf, 1000 + i);
        gen += g.elapsed().as_secs_f64();
        core.write("a", i * req as u64, &buf).unwrap();
    }
    row("write, fresh blocks, 1 MiB requests", total_blocks, t.elapsed().as_secs_f64() - gen);

    // store of duplicates: the same data into another VM (index hit + memcmp verification)
    let mut gen = 0.0;
    let t = Instant::now();
    for i in 0..requests {
        let g = Instant::now();
        fill(&mut buf, 1000 + i);
        gen += g.elapsed().as_secs_f64();
        core.write("b", i * req as u64, &buf).unwrap();
    }
    row("write, duplicate blocks, 1 MiB requests", total_blocks, t.elapsed().as_secs_f64() - gen);

    // 4 KiB random writes, fresh and duplicate
    let n4k = 65_536u64;
    let mut block = vec![0u8; BS];
    let mut x = 7u64;
    let offsets: Vec<u64> = (0..n4k).map(|_| splitmix(&mut x) % total_blocks * BS as u64).collect();
    let mut gen = 0.0;
    let t = Instant::now();
    for (i, &off) in offsets.iter().enumerate() {
        let g = Instant::now();
        fill(&mut block, 1 << 40 | i as u64);
        gen += g.elapsed().as_secs_f64();
        core.write("c", off, &block).unwrap();
    }
    row("write, fresh block, 4 KiB random requests", n4k, t.elapsed().as_secs_f64() - gen);
    let t = Instant::now();
    for &off in &offsets {
        core.write("c", off, &buf[..BS]).unwrap();
    }
    row("write, duplicate block, 4 KiB random requests", n4k, t.elapsed().as_secs_f64());

    // reads, every block verified against its fingerprint
    let t = Instant::now();
    for i in 0..requests {
        core.read_into("a", i * req as u64, &mut buf).unwrap();
    }
    row("read + verify, 1 MiB requests", total_blocks, t.elapsed().as_secs_f64());
    let t = Instant::now();
    for &off in &offsets {
        core.read_into("a", off, &mut block).unwrap();
    }
    row("read + verify, 4 KiB random requests", n4k, t.elapsed().as_secs_f64());
    let threads = 2;
    let t = Instant::now();
    std::thread::scope(|s| {
        for k in 0..threads {
            let core = &core;
            let offsets = &offsets;
            s.spawn(move || {
                let mut block = vec![0u8; BS];
                for &off in offsets.iter().skip(k).step_by(threads) {
                    core.read_into("a", off, &mut block).unwrap();
                }
            });
        }
    });
    row("read + verify, 4 KiB random, 2 threads (per block)", n4k, t.elapsed().as_secs_f64());

    // full rebuild: re-read and re-hash every live block
    let unique = core.state().blocks.unique_blocks();
    let t = Instant::now();
    let figures = core.rebuild(true, true, &mut quiet).unwrap();
    row("full rebuild (re-hash every unique block, 2 cores)", unique, t.elapsed().as_secs_f64());
    let t = Instant::now();
    core.rebuild(false, true, &mut quiet).unwrap();
    row("fast rebuild (stored fingerprints)", unique, t.elapsed().as_secs_f64());
    assert!(figures.corrupt_blocks.is_empty());

    let per = core.state().blocks.metadata_bytes() as f64 / unique as f64;
    println!();
    println!("pool above: {unique} unique blocks, index + refcounts + free space {per:.2} B/block");

    // RAM per unique block, growing to `keys` unique blocks as a pool does: slots added in steps
    // of a quarter of the capacity, refcounts and free space grown to match, every new block
    // indexed. The index's peak counts a shard's two copies during its rehash.
    let mut index = Index::new();
    let mut refs = Refcounts::default();
    let mut space = FreeSpace::new();
    let mut stored: Vec<u64> = vec![0]; // the keys hashes.dat holds (on disk, not counted)
    let mut capacity = 1u64;
    let mut peak_per_block = 0f64;
    let mut last_peak = index.peak_nbytes();
    let mut x = 99u64;
    let t = Instant::now();
    for slot in 1..=keys {
        if slot >= capacity {
            let new = capacity + (capacity / 4).max(1024);
            refs.set_len(new);
            let before_bitmap = space.nbytes();
            space.set_len(new);
            // the bitmap's growth copies it once: both copies exist for a moment
            let moment = index.nbytes() + refs.nbytes() + space.nbytes() + before_bitmap;
            if slot > 1_000_000 {
                peak_per_block = peak_per_block.max(moment as f64 / slot as f64);
            }
            capacity = new;
        }
        let key = splitmix(&mut x).max(1);
        stored.push(key);
        refs.incr(slot);
        let st = &stored;
        let rf = &refs;
        index.insert(key, slot, |s| st[s as usize] == key, |s, _| rf.get(s) > 0);
        if index.peak_nbytes() != last_peak {
            // a shard was rehashed during this insert: its two copies existed at this moment
            last_peak = index.peak_nbytes();
            let moment = last_peak + refs.nbytes() + space.nbytes();
            if slot > 1_000_000 {
                peak_per_block = peak_per_block.max(moment as f64 / slot as f64);
            }
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let end = index.nbytes() + refs.nbytes() + space.nbytes();
    println!(
        "{keys} unique blocks: index {:.2} + refcounts {:.2} + free space {:.2} = {:.2} B/block at the end; \
         peak over growth (past 1 M blocks) {:.2} B/block; index insert {:.0} ns/block",
        index.nbytes() as f64 / keys as f64,
        refs.nbytes() as f64 / keys as f64,
        space.nbytes() as f64 / keys as f64,
        end as f64 / keys as f64,
        peak_per_block,
        secs * 1e9 / keys as f64
    );
}
