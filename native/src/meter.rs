//! What the NBD export serves, counted as it goes: requests and bytes per VM, a latency histogram
//! per kind of request, and how many changes the export made. Atomic counters, bumped by the
//! connections' threads without a lock and read whenever asked (a Prometheus scrape).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

/// The kinds of request timed, in the order `Meter::latency` reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read = 0,
    Write = 1,
    Trim = 2,
    Flush = 3,
}

pub const OPS: [&str; 4] = ["read", "write", "trim", "flush"];

/// One VM's counters: requests served (read, write, trim) and bytes read and written.
#[derive(Default)]
pub struct VmCounters {
    pub requests: [AtomicU64; 3],
    pub read_bytes: AtomicU64,
    pub written_bytes: AtomicU64,
}

/// A latency histogram: a count per bucket (`bounds` in seconds, ascending; the last bucket is
/// everything above), how many, and their sum.
pub struct Histogram {
    bounds: Vec<f64>,
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histogram {
    fn new(bounds: &[f64]) -> Self {
        Histogram {
            bounds: bounds.to_vec(),
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
        }
    }

    fn observe(&self, took: Duration) {
        let s = took.as_secs_f64();
        let i = self.bounds.partition_point(|&b| b < s);
        self.buckets[i].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(took.as_nanos() as u64, Relaxed);
    }

    /// (count per bucket, the last one above every bound; how many; their sum in seconds).
    pub fn read(&self) -> (Vec<u64>, u64, f64) {
        let buckets = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        (
            buckets,
            self.count.load(Relaxed),
            self.sum_ns.load(Relaxed) as f64 / 1e9,
        )
    }
}

pub struct Meter {
    vms: Mutex<BTreeMap<String, Arc<VmCounters>>>,
    latency: [Histogram; 4],
    changes: AtomicU64,
}

impl Meter {
    /// A meter whose histograms have buckets up to each of `bounds` (seconds, ascending).
    pub fn new(bounds: &[f64]) -> Self {
        Meter {
            vms: Mutex::new(BTreeMap::new()),
            latency: std::array::from_fn(|_| Histogram::new(bounds)),
            changes: AtomicU64::new(0),
        }
    }

    /// VM `name`'s counters (made on first use: once per connection, not per request).
    pub fn vm(&self, name: &str) -> Arc<VmCounters> {
        self.vms.lock().entry(name.to_owned()).or_default().clone()
    }

    /// Every VM counted so far, by name.
    pub fn vms(&self) -> Vec<(String, Arc<VmCounters>)> {
        self.vms
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub fn observe(&self, op: Op, took: Duration) {
        self.latency[op as usize].observe(took);
    }

    pub fn latency(&self, op: usize) -> &Histogram {
        &self.latency[op]
    }

    /// A write, a trim or a rotten block found: what the pool's figures count may have moved.
    pub fn changed(&self) {
        self.changes.fetch_add(1, Relaxed);
    }

    pub fn changes(&self) -> u64 {
        self.changes.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_upper_bounds() {
        let m = Meter::new(&[0.001, 0.01]);
        m.observe(Op::Read, Duration::from_micros(500));
        m.observe(Op::Read, Duration::from_millis(1));
        m.observe(Op::Read, Duration::from_millis(5));
        m.observe(Op::Read, Duration::from_secs(1));
        let (buckets, count, sum) = m.latency(Op::Read as usize).read();
        assert_eq!(buckets, vec![2, 1, 1]);
        assert_eq!(count, 4);
        assert!((sum - 1.0065).abs() < 1e-9);
        assert_eq!(m.latency(Op::Write as usize).read().1, 0);
    }

    #[test]
    fn a_vm_keeps_its_counters_across_connections() {
        let m = Meter::new(&[]);
        m.vm("a").read_bytes.fetch_add(4096, Relaxed);
        m.vm("a").read_bytes.fetch_add(4096, Relaxed);
        let vms = m.vms();
        assert_eq!(vms.len(), 1);
        assert_eq!(vms[0].1.read_bytes.load(Relaxed), 8192);
    }
}
