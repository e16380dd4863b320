//! The gate in front of the data path. Python closes it to pause every data op while it applies
//! a structural edit (TARGET.md: computed while data ops are paused, logged, then applied), and
//! the core holds writes back while the index is being rebuilt (reads need only tables and
//! slots, so they go on).

use parking_lot::{Condvar, Mutex};

#[derive(Default)]
struct State {
    closed: bool,
    rebuilding: bool,
    reads: usize,
    writes: usize,
}

#[derive(Default)]
pub struct Gate {
    state: Mutex<State>,
    changed: Condvar,
}

/// A data op in flight; leaving it lets a closing gate finish closing.
pub struct Pass<'a> {
    gate: &'a Gate,
    write: bool,
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        let mut s = self.gate.state.lock();
        if self.write {
            s.writes -= 1;
        } else {
            s.reads -= 1;
        }
        self.gate.changed.notify_all();
    }
}

impl Gate {
    pub fn new() -> Self {
        Self::default()
    }

    /// Waits until data ops may run (and, for a write, the index is ready); counts this one in.
    pub fn enter(&self, write: bool) -> Pass<'_> {
        let mut s = self.state.lock();
        while s.closed || (write && s.rebuilding) {
            self.changed.wait(&mut s);
        }
        if write {
            s.writes += 1;
        } else {
            s.reads += 1;
        }
        Pass { gate: self, write }
    }

    /// Stops new data ops and waits for those in flight to finish.
    pub fn close(&self) {
        let mut s = self.state.lock();
        s.closed = true;
        while s.reads + s.writes > 0 {
            self.changed.wait(&mut s);
        }
    }

    pub fn open(&self) {
        self.state.lock().closed = false;
        self.changed.notify_all();
    }

    /// Holds new writes back and waits for those in flight (the index is about to be rebuilt).
    pub fn hold_writes(&self) {
        let mut s = self.state.lock();
        s.rebuilding = true;
        while s.writes > 0 {
            self.changed.wait(&mut s);
        }
    }

    pub fn release_writes(&self) {
        self.state.lock().rebuilding = false;
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn close_waits_for_ops_in_flight_and_blocks_new_ones() {
        let gate = Arc::new(Gate::new());
        let pass = gate.enter(true);
        let closed = Arc::new(AtomicBool::new(false));
        let (g, c) = (gate.clone(), closed.clone());
        let closer = std::thread::spawn(move || {
            g.close();
            c.store(true, Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!closed.load(Ordering::SeqCst));
        drop(pass);
        closer.join().unwrap();
        assert!(closed.load(Ordering::SeqCst));

        let entered = Arc::new(AtomicBool::new(false));
        let (g, e) = (gate.clone(), entered.clone());
        let reader = std::thread::spawn(move || {
            let _p = g.enter(false);
            e.store(true, Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!entered.load(Ordering::SeqCst));
        gate.open();
        reader.join().unwrap();
        assert!(entered.load(Ordering::SeqCst));
    }

    #[test]
    fn held_writes_let_reads_pass() {
        let gate = Gate::new();
        gate.hold_writes();
        drop(gate.enter(false));
        gate.release_writes();
        drop(gate.enter(true));
    }
}
