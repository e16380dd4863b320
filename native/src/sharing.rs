//! Who reads each block: how many VMs, and which, from the layer graph (the block view's
//! "VMs reading", beside the refcount, which counts layer references).
//!
//! The VMs' tops are numbered in depth-first order of the layer forest, so the VMs reading through
//! a layer are one run of numbers, its *span*. A reference (layer L, LBN n) is read by the VMs of
//! L's span except those beneath a descendant that has an entry of its own at n (a *shadow*: the
//! nearest such descendant on each path, so shadows never nest). A block's readers are the union
//! of its references' runs. Built once per generation of the tables and of the VMs (the core
//! caches it), in one pass over the entries of layers that have a parent plus the reverse map.

use std::collections::HashMap;

use crate::tables::{is_address, Tables, INHERIT, PAGE_ENTRIES};

type Run = (u32, u32); // [lo, hi) of VM numbers

pub struct Sharing {
    /// The VMs' names, by number (depth-first order of their tops).
    names: Vec<String>,
    /// layer -> the run of VMs reading through it.
    span: HashMap<u64, Run>,
    /// (layer, LBN) -> runs of VMs beneath it that read another entry there.
    shadows: HashMap<(u64, u64), Vec<Run>>,
    /// Every referenced address, ascending, and how many VMs read it.
    pub addrs: Vec<u64>,
    pub readers: Vec<u64>,
}

impl Sharing {
    /// `vms`: (name, top layer) of every VM; `reverse`: (address, layer, LBN) sorted by address.
    pub fn build(tables: &Tables, vms: &[(String, u64)], reverse: &[(u64, u64, u64)]) -> Self {
        let top_name: HashMap<u64, &str> = vms.iter().map(|(n, t)| (*t, n.as_str())).collect();
        let mut children: HashMap<u64, Vec<u64>> = HashMap::new();
        let mut roots = Vec::new();
        for (layer, parent) in tables.graph() {
            match parent {
                Some(p) => children.entry(p).or_default().push(layer),
                None => roots.push(layer),
            }
        }
        roots.sort_unstable();
        children.values_mut().for_each(|c| c.sort_unstable());

        // Depth-first: a layer's span opens when it is entered and closes when it is left.
        let mut names = Vec::new();
        let mut span = HashMap::new();
        let mut stack: Vec<(u64, bool)> = roots.iter().rev().map(|&r| (r, false)).collect();
        let mut open: HashMap<u64, u32> = HashMap::new();
        while let Some((layer, left)) = stack.pop() {
            if left {
                span.insert(layer, (open[&layer], names.len() as u32));
                continue;
            }
            open.insert(layer, names.len() as u32);
            if let Some(name) = top_name.get(&layer) {
                names.push(name.to_string());
            }
            stack.push((layer, true));
            if let Some(c) = children.get(&layer) {
                stack.extend(c.iter().rev().map(|&c| (c, false)));
            }
        }

        // Each entry of a layer with a parent shadows the nearest entry beneath it.
        let mut shadows: HashMap<(u64, u64), Vec<Run>> = HashMap::new();
        for (layer, parent) in tables.graph() {
            let (Some(parent), Some(&run)) = (parent, span.get(&layer)) else {
                continue;
            };
            if run.0 == run.1 {
                continue;
            }
            let beneath = tables.chain(parent).unwrap_or_default();
            for (pno, page) in tables.layer_pages(layer) {
                let below: Vec<_> = beneath
                    .iter()
                    .filter_map(|&a| tables.page(a, pno).map(|p| (a, p)))
                    .collect();
                if below.is_empty() {
                    continue;
                }
                for (i, &e) in page.iter().enumerate() {
                    if e == INHERIT {
                        continue;
                    }
                    if let Some(&(a, p)) = below.iter().find(|(_, p)| p[i] != INHERIT) {
                        if is_address(p[i]) {
                            let lbn = pno * PAGE_ENTRIES as u64 + i as u64;
                            shadows.entry((a, lbn)).or_default().push(run);
                        }
                    }
                }
            }
        }

        let mut sharing = Sharing {
            names,
            span,
            shadows,
            addrs: Vec::new(),
            readers: Vec::new(),
        };
        let mut runs = Vec::new();
        for group in reverse.chunk_by(|a, b| a.0 == b.0) {
            runs.clear();
            for &(_, layer, lbn) in group {
                sharing.runs_of(layer, lbn, &mut runs);
            }
            sharing.addrs.push(group[0].0);
            sharing
                .readers
                .push(union(&mut runs).iter().map(|r| (r.1 - r.0) as u64).sum());
        }
        sharing
    }

    /// Appends the runs of VMs that read (layer, lbn): its span less its shadows.
    fn runs_of(&self, layer: u64, lbn: u64, out: &mut Vec<Run>) {
        let Some(&(mut lo, hi)) = self.span.get(&layer) else {
            return;
        };
        if let Some(shadows) = self.shadows.get(&(layer, lbn)) {
            let mut cut = shadows.clone();
            cut.sort_unstable();
            for (a, b) in cut {
                if a > lo {
                    out.push((lo, a));
                }
                lo = lo.max(b);
            }
        }
        if hi > lo {
            out.push((lo, hi));
        }
    }

    /// How many VMs read each of `addrs` (0: not referenced). Near-linear when `addrs` ascend
    /// (an exponential search from the last one found).
    pub fn readers_of(&self, addrs: &[u64]) -> Vec<u64> {
        let (mut at, mut prev) = (0, 0);
        addrs
            .iter()
            .map(|&a| {
                if a < prev {
                    at = 0;
                }
                prev = a;
                let rest = &self.addrs[at..];
                let mut step = 1;
                while step < rest.len() && rest[step - 1] < a {
                    step *= 2;
                }
                at += rest[..step.min(rest.len())].partition_point(|&x| x < a);
                match self.addrs.get(at) {
                    Some(&x) if x == a => self.readers[at],
                    _ => 0,
                }
            })
            .collect()
    }

    /// The names of the VMs that read `addr`, sorted; `reverse` as for `build`.
    pub fn names_of(&self, addr: u64, reverse: &[(u64, u64, u64)]) -> Vec<String> {
        let from = reverse.partition_point(|r| r.0 < addr);
        let mut runs = Vec::new();
        for &(_, layer, lbn) in reverse[from..].iter().take_while(|r| r.0 == addr) {
            self.runs_of(layer, lbn, &mut runs);
        }
        let mut names: Vec<String> = union(&mut runs)
            .iter()
            .flat_map(|&(lo, hi)| self.names[lo as usize..hi as usize].iter().cloned())
            .collect();
        names.sort();
        names
    }
}

/// The runs merged into disjoint ascending ones.
fn union(runs: &mut [Run]) -> Vec<Run> {
    runs.sort_unstable();
    let mut out: Vec<Run> = Vec::with_capacity(runs.len());
    for &(lo, hi) in runs.iter() {
        match out.last_mut() {
            Some(last) if lo <= last.1 => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}
