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
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Random bytes.
fn fill(buf: &mut [u8], seed: u64) {
    let mut x = seed;
    for w in buf.chunks_exact_mut(8) {
        w.copy_from_slice(&(splitmix(&mut x) | 1).to_le_bytes());
    }
}

/// Makes every block of `buf` distinct from every other block ever stamped: block j of request
/// `n` carries n * 256 + j in its first 8 bytes (cheaper than fresh random data).
fn stamp(buf: &mut [u8], n: u64) {
    for (j, b) in buf.chunks_exact_mut(BS).enumerate() {
        b[..8].copy_from_slice(&(n * 256 + j as u64).to_le_bytes());
    }
}

/// CPU seconds of the whole process (all threads), user and system: on a shared machine wall
/// time measures the neighbours too.
fn cpu() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a plain syscall filling a local.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// A stopwatch of both wall and CPU time.
struct Watch(Instant, f64);

impl Watch {
    fn start() -> Self {
        Watch(Instant::now(), cpu())
    }
    fn wall(&self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }
    fn cpu(&self) -> f64 {
        cpu() - self.1
    }
}

fn row(what: &str, blocks: u64, w: &Watch) {
    let (wall, cpu) = (w.wall(), w.cpu());
    let ns = |s: f64| s * 1e9 / blocks as f64;
    let gbs = blocks as f64 * BS as f64 / wall / 1e9;
    println!(
        "| {what:<52} | {:>9.0} ns | {:>9.0} ns | {gbs:>7.2} GB/s |",
        ns(cpu),
        ns(wall)
    );
}

fn main() {
    let gib = env("BLOCKFOLD_BENCH_GIB", 1);
    let keys = env("BLOCKFOLD_BENCH_KEYS", 10_000_000);
    let total_blocks = gib * (1 << 30) / BS as u64;
    let dir = tempfile::tempdir().unwrap();
    let in_ram = env("BLOCKFOLD_BENCH_MEMORY", 0) == 1;
    let place = if in_ram { None } else { Some(dir.path()) };
    let core = Core::open(place, BS, false, true, Fingerprinter::Xxh3).unwrap();
    let mut quiet = |_: &Report| Ok(());
    core.rebuild(false, true, &mut quiet).unwrap();
    for (layer, name) in [(1, "a"), (2, "b"), (3, "c")] {
        core.state_mut()
            .tables
            .add_layer(layer, None, true)
            .unwrap();
        core.set_vm(name, layer, 1 << 40).unwrap();
    }
    let req = 1 << 20;
    let mut buf = vec![0u8; req];

    println!(
        "| {:<52} | {:>12} | {:>12} | {:>12} |",
        "per 4 KiB block", "CPU", "wall", "wall GB/s"
    );
    println!(
        "|{}|{}|{}|{}|",
        "-".repeat(54),
        "-".repeat(14),
        "-".repeat(14),
        "-".repeat(14)
    );

    // xxh3-128 alone, the floor of every step that fingerprints
    fill(&mut buf, 1);
    let t = Watch::start();
    let mut sink = 0u8;
    for _ in 0..64 {
        for b in buf.chunks_exact(BS) {
            sink ^= fingerprint(b)[0];
        }
    }
    row("xxh3-128 of a block (reference)", 64 * 256, &t);
    std::hint::black_box(sink);

    // store of fresh blocks: 1 MiB requests
    let requests = total_blocks * BS as u64 / req as u64;
    fill(&mut buf, 1000);
    let t = Watch::start();
    for i in 0..requests {
        stamp(&mut buf, i);
        core.write("a", i * req as u64, &buf).unwrap();
    }
    row(
        "write, fresh blocks, 1 MiB requests (files grow)",
        total_blocks,
        &t,
    );

    // store of duplicates: the same data into another VM (index hit + memcmp verification)
    let t = Watch::start();
    for i in 0..requests {
        stamp(&mut buf, i);
        core.write("b", i * req as u64, &buf).unwrap();
    }
    row("write, duplicate blocks, 1 MiB requests", total_blocks, &t);

    // 4 KiB random writes, fresh and duplicate
    let n4k = 65_536u64;
    let mut block = vec![0u8; BS];
    let mut x = 7u64;
    let offsets: Vec<u64> = (0..n4k)
        .map(|_| splitmix(&mut x) % total_blocks * BS as u64)
        .collect();
    fill(&mut block, 5);
    let t = Watch::start();
    for (i, &off) in offsets.iter().enumerate() {
        stamp(&mut block, 1 << 40 | i as u64);
        core.write("c", off, &block).unwrap();
    }
    row("write, fresh block, 4 KiB random requests", n4k, &t);
    let t = Watch::start();
    stamp(&mut buf, 0);
    for &off in &offsets {
        core.write("c", off, &buf[..BS]).unwrap(); // block 0 of the first request, stored in "a"
    }
    row("write, duplicate block, 4 KiB random requests", n4k, &t);

    // reads, every block verified against its fingerprint
    let t = Watch::start();
    for i in 0..requests {
        core.read_into("a", i * req as u64, &mut buf).unwrap();
    }
    row("read + verify, 1 MiB requests", total_blocks, &t);
    {
        // what memory gives: copy the slots out of the map into the same 1 MiB buffer, no more
        let st = core.state();
        let slots = st.blocks.slots().capacity() - 1;
        let t = Watch::start();
        for slot in 1..=slots {
            let at = (slot as usize % (req / BS)) * BS;
            buf[at..at + BS].copy_from_slice(st.blocks.slots().block(slot));
        }
        std::hint::black_box(&buf);
        row("copy out of the map, 1 MiB buffer (reference)", slots, &t);
    }
    let t = Watch::start();
    for &off in &offsets {
        core.read_into("a", off, &mut block).unwrap();
    }
    row("read + verify, 4 KiB random requests", n4k, &t);
    let threads = 2;
    let t = Watch::start();
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
    row(
        "read + verify, 4 KiB random, 2 threads (per block)",
        n4k,
        &t,
    );

    // fresh blocks again, into the slots of the first pass, freed by a trim and a commit (the
    // steady state of a pool: no file growth, page cache already there)
    core.trim("a", 0, total_blocks * BS as u64).unwrap();
    core.trim("b", 0, total_blocks * BS as u64).unwrap();
    let snap = core.snapshot(&Default::default()).unwrap();
    core.sync().unwrap();
    core.end(snap.token).unwrap();
    let t = Watch::start();
    for i in 0..requests {
        stamp(&mut buf, requests + i);
        core.write("a", i * req as u64, &buf).unwrap();
    }
    row(
        "write, fresh blocks into freed slots, 1 MiB requests",
        total_blocks,
        &t,
    );
    let t = Watch::start();
    for (i, &off) in offsets.iter().enumerate() {
        stamp(&mut block, 1 << 41 | i as u64);
        core.write("b", off, &block).unwrap();
    }
    row("write, fresh block into freed slots, 4 KiB random", n4k, &t);

    // full rebuild: re-read and re-hash every live block
    let unique = core.state().blocks.unique_blocks();
    let t = Watch::start();
    let figures = core.rebuild(true, true, &mut quiet).unwrap();
    row(
        "full rebuild (re-hash every unique block, 2 cores)",
        unique,
        &t,
    );
    let t = Watch::start();
    core.rebuild(false, true, &mut quiet).unwrap();
    row("fast rebuild (stored fingerprints)", unique, &t);
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
    let t = Watch::start();
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
    let secs = t.cpu();
    let end = index.nbytes() + refs.nbytes() + space.nbytes();
    println!(
        "{keys} unique blocks: index {:.2} + refcounts {:.2} + free space {:.2} = {:.2} B/block at the end; \
         peak over growth (past 1 M blocks) {:.2} B/block; index insert {:.0} ns CPU/block",
        index.nbytes() as f64 / keys as f64,
        refs.nbytes() as f64 / keys as f64,
        space.nbytes() as f64 / keys as f64,
        end as f64 / keys as f64,
        peak_per_block,
        secs * 1e9 / keys as f64
    );
}
