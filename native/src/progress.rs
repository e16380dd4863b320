//! Progress of long work (rebuild, rehash), reported at most every 100 ms to a sink that may ask
//! to stop. The Python binding's sink calls the caller's callable and checks its cancel event.

use std::time::{Duration, Instant};

use crate::error::Result;

pub const INTERVAL: Duration = Duration::from_millis(100);

#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub phase: &'static str,
    pub done: u64,
    pub total: u64,
    pub bytes_per_s: f64,
}

/// Where reports go: `Err(Error::Cancelled)` stops the work.
pub type Sink<'a> = &'a mut dyn FnMut(&Report) -> Result<()>;

pub struct Meter<'a, 'b> {
    sink: &'b mut Sink<'a>,
    phase: &'static str,
    total: u64,
    unit_bytes: u64,
    start: Instant,
    last: Option<Instant>,
    pub done: u64,
}

impl<'a, 'b> Meter<'a, 'b> {
    pub fn new(sink: &'b mut Sink<'a>, phase: &'static str, total: u64, unit_bytes: u64) -> Self {
        Meter {
            sink,
            phase,
            total,
            unit_bytes,
            start: Instant::now(),
            last: None,
            done: 0,
        }
    }

    /// Counts `n` more units done; reports if 100 ms have passed since the last report.
    pub fn advance(&mut self, n: u64) -> Result<()> {
        self.done += n;
        let now = Instant::now();
        if self.last.is_none_or(|t| now - t >= INTERVAL) {
            self.last = Some(now);
            let report = self.report(now);
            (self.sink)(&report)?;
        }
        Ok(())
    }

    /// The phase is over: one last report, with done = total.
    pub fn finish(&mut self) -> Result<()> {
        self.done = self.done.max(self.total);
        let report = self.report(Instant::now());
        (self.sink)(&report)
    }

    fn report(&self, now: Instant) -> Report {
        let elapsed = (now - self.start).as_secs_f64().max(1e-9);
        Report {
            phase: self.phase,
            done: self.done,
            total: self.total,
            bytes_per_s: (self.done * self.unit_bytes) as f64 / elapsed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn reports_are_throttled_and_cancel_stops() {
        let mut seen = Vec::new();
        let mut f = |r: &Report| {
            seen.push(r.clone());
            Ok(())
        };
        let mut sink: Sink = &mut f;
        let mut m = Meter::new(&mut sink, "hashes", 1000, 4096);
        for _ in 0..1000 {
            m.advance(1).unwrap();
        }
        m.finish().unwrap();
        assert_eq!(
            seen.len(),
            2,
            "the first advance and the finish, all within 100 ms"
        );
        assert_eq!(seen[1].done, 1000);

        let mut stop = |_: &Report| Err(Error::Cancelled("rebuild".into()));
        let mut sink: Sink = &mut stop;
        let mut m = Meter::new(&mut sink, "tables", 10, 1);
        assert!(matches!(m.advance(1), Err(Error::Cancelled(_))));
    }
}
