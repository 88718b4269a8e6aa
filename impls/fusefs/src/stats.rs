//! Request counters: [`FuseStats`] and the live counters behind it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

/// A snapshot of what the kernel asked of the file system so far.
///
/// Latencies are measured from the moment the request thread saw the
/// request to the moment the reply went back, so they include time queued
/// on the runtime but not time queued in the kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FuseStats {
    /// Read requests answered (successfully or not).
    pub reads: u64,
    /// Bytes returned by successful reads.
    pub bytes_read: u64,
    /// Write requests answered.
    pub writes: u64,
    /// Bytes accepted by successful writes.
    pub bytes_written: u64,
    /// Flush and fsync requests answered (each calls the backend's `sync`).
    pub syncs: u64,
    /// Requests answered with an error, of any kind.
    pub errors: u64,
    /// Most read and write requests ever waiting on the backend at once.
    pub max_in_flight: u64,
    /// Sum of read latencies, nanoseconds.
    pub read_nanos_total: u64,
    /// Longest read latency, nanoseconds.
    pub read_nanos_max: u64,
}

impl FuseStats {
    /// Mean read latency in nanoseconds, or 0 before the first read.
    pub fn mean_read_nanos(&self) -> u64 {
        self.read_nanos_total.checked_div(self.reads).unwrap_or(0)
    }
}

/// The live counters, shared by the request threads and reply tasks.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    reads: AtomicU64,
    bytes_read: AtomicU64,
    writes: AtomicU64,
    bytes_written: AtomicU64,
    syncs: AtomicU64,
    errors: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    read_nanos_total: AtomicU64,
    read_nanos_max: AtomicU64,
}

/// What kind of request an [`InFlight`] guard tracks.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Op {
    Read,
    Write,
    Sync,
}

impl Counters {
    /// Marks a request as waiting on the backend until the guard is finished.
    pub(crate) fn begin(self: &Arc<Self>, op: Op) -> InFlight {
        // Relaxed: the counters are statistics; nothing is ordered by them.
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_in_flight.fetch_max(now, Ordering::Relaxed);
        InFlight {
            counters: Arc::clone(self),
            op,
            started: Instant::now(),
            done: false,
        }
    }

    /// Counts a request answered with an error before reaching the backend.
    pub(crate) fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> FuseStats {
        FuseStats {
            reads: self.reads.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            syncs: self.syncs.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            max_in_flight: self.max_in_flight.load(Ordering::Relaxed),
            read_nanos_total: self.read_nanos_total.load(Ordering::Relaxed),
            read_nanos_max: self.read_nanos_max.load(Ordering::Relaxed),
        }
    }
}

/// One request waiting on the backend; [`InFlight::finish`] records its
/// outcome. Dropping it unfinished (a reply task cancelled by a runtime
/// shutdown) counts an error, so `in_flight` never leaks.
#[derive(Debug)]
pub(crate) struct InFlight {
    counters: Arc<Counters>,
    op: Op,
    started: Instant,
    done: bool,
}

impl InFlight {
    /// Records the request's outcome: `Some(bytes)` on success.
    pub(crate) fn finish(mut self, bytes: Option<u64>) {
        self.record(bytes);
    }

    fn record(&mut self, bytes: Option<u64>) {
        if self.done {
            return;
        }
        self.done = true;
        let c = &self.counters;
        c.in_flight.fetch_sub(1, Ordering::Relaxed);
        match self.op {
            Op::Read => {
                c.reads.fetch_add(1, Ordering::Relaxed);
                let nanos = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                c.read_nanos_total.fetch_add(nanos, Ordering::Relaxed);
                c.read_nanos_max.fetch_max(nanos, Ordering::Relaxed);
                if let Some(n) = bytes {
                    c.bytes_read.fetch_add(n, Ordering::Relaxed);
                }
            }
            Op::Write => {
                c.writes.fetch_add(1, Ordering::Relaxed);
                if let Some(n) = bytes {
                    c.bytes_written.fetch_add(n, Ordering::Relaxed);
                }
            }
            Op::Sync => {
                c.syncs.fetch_add(1, Ordering::Relaxed);
            }
        }
        if bytes.is_none() {
            c.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.record(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_count_outcomes_and_peak_concurrency() {
        let c = Arc::new(Counters::default());
        let a = c.begin(Op::Read);
        let b = c.begin(Op::Write);
        a.finish(Some(10));
        b.finish(None);
        drop(c.begin(Op::Read)); // cancelled: an error, not a leak
        c.begin(Op::Sync).finish(Some(0));
        let s = c.snapshot();
        assert_eq!((s.reads, s.bytes_read), (2, 10));
        assert_eq!((s.writes, s.bytes_written), (1, 0));
        assert_eq!(s.syncs, 1);
        assert_eq!(s.errors, 2);
        assert_eq!(s.max_in_flight, 2);
        assert_eq!(c.in_flight.load(Ordering::Relaxed), 0);
    }
}
