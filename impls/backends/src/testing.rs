//! Test support: [`Probe`], a backend that wraps another so a test can see
//! and steer what reaches it.
//!
//! Built only with the crate's `testing` feature (and for this crate's own
//! unit tests). Other crates turn it on for their tests:
//!
//! ```toml
//! [dev-dependencies]
//! backends = { workspace = true, features = ["testing"] }
//! ```
//!
//! A [`Probe`] forwards every call to the backend it wraps and on the way
//!
//! - counts reads, writes and syncs, and logs each read and write as
//!   `(offset, len)` in the order they started;
//! - gauges accesses (reads and writes) in flight: now and the peak;
//! - optionally holds every read at a [`tokio::sync::Barrier`] until a given
//!   number of reads are inside at once (a caller that serialised requests
//!   deadlocks there instead of passing);
//! - optionally sleeps before each read and write ([`tokio::time::sleep`],
//!   so a paused test clock controls it), or yields once to the scheduler;
//! - optionally fails reads, writes or syncs with an error the test picks,
//!   switchable while the probe is in use.
//!
//! A read or write counts, logs and enters the gauge before it waits at the
//! barrier, sleeps or fails, so failed attempts are counted too.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use backends::testing::Probe;
//! use backends::{Backend, BackendError};
//!
//! let probe = Probe::memory(vec![7; 64]);
//! let mut buf = [0; 8];
//! probe.read_exact_at(&mut buf, 16).await.unwrap();
//! probe.sync().await.unwrap();
//! assert_eq!((probe.reads(), probe.syncs()), (1, 1));
//! assert_eq!(probe.accesses(), vec![(16, 8)]);
//!
//! probe.fail_writes(|| BackendError::Closed);
//! assert!(probe.write_at(&[1], 0).await.is_err());
//! probe.heal();
//! probe.write_at(&[1], 0).await.unwrap();
//! assert_eq!(probe.writes(), 2);
//! # }
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::Barrier;

use crate::{Backend, BackendError, MemoryBackend, Result, SharedBackend};

/// Makes the error an injected failure returns. A fresh error per call,
/// since [`BackendError`] is not `Clone`; closures that capture nothing
/// coerce to it: `probe.fail_reads(|| BackendError::Closed)`.
pub type ErrorFn = fn() -> BackendError;

/// The error [`Probe`] tests usually inject: a remote failure whose message
/// contains "injected".
pub fn injected() -> BackendError {
    BackendError::Remote("injected failure".to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
}

/// A counting, gauging, delaying, gating and failing wrapper around another
/// backend. See the module docs.
#[derive(Debug)]
pub struct Probe {
    inner: SharedBackend,
    delay: Option<Duration>,
    yield_in_access: bool,
    read_barrier: Option<Barrier>,
    reads: AtomicU64,
    writes: AtomicU64,
    syncs: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    log: Mutex<Vec<(Kind, u64, usize)>>,
    read_fault: Mutex<Option<ErrorFn>>,
    write_fault: Mutex<Option<ErrorFn>>,
    sync_fault: Mutex<Option<ErrorFn>>,
}

impl Probe {
    /// A probe over `inner` that forwards everything at once and fails nothing.
    pub fn over(inner: SharedBackend) -> Self {
        Self {
            inner,
            delay: None,
            yield_in_access: false,
            read_barrier: None,
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
            read_fault: Mutex::new(None),
            write_fault: Mutex::new(None),
            sync_fault: Mutex::new(None),
        }
    }

    /// A probe over a [`MemoryBackend`] holding exactly `bytes`.
    pub fn memory(bytes: Vec<u8>) -> Self {
        Self::over(Arc::new(MemoryBackend::from_bytes(bytes)))
    }

    /// A probe over a zero-filled [`MemoryBackend`] of `size` bytes.
    pub fn zeros(size: u64) -> Self {
        Self::over(Arc::new(MemoryBackend::new(size)))
    }

    /// Every read and write sleeps `delay` before it reaches the inner
    /// backend, like a remote across a slow link.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Every read and write yields to the scheduler once before it reaches
    /// the inner backend, so interleavings a lock is meant to prevent get
    /// the chance to happen.
    pub fn yielding(mut self) -> Self {
        self.yield_in_access = true;
        self
    }

    /// Every read waits until `parties` reads are inside the probe at once,
    /// then the whole group goes on (and the next group gathers the same
    /// way). A caller that never has `parties` reads outstanding hangs, so
    /// bound the test's waits.
    pub fn with_read_barrier(mut self, parties: usize) -> Self {
        self.read_barrier = Some(Barrier::new(parties));
        self
    }

    /// From now on reads fail with `error()` instead of reaching the inner
    /// backend (after the barrier and delay, which still apply).
    pub fn fail_reads(&self, error: ErrorFn) {
        *self.read_fault.lock() = Some(error);
    }

    /// From now on writes fail with `error()` and write nothing.
    pub fn fail_writes(&self, error: ErrorFn) {
        *self.write_fault.lock() = Some(error);
    }

    /// From now on syncs fail with `error()`.
    pub fn fail_syncs(&self, error: ErrorFn) {
        *self.sync_fault.lock() = Some(error);
    }

    /// Ends every injected failure: calls reach the inner backend again.
    pub fn heal(&self) {
        *self.read_fault.lock() = None;
        *self.write_fault.lock() = None;
        *self.sync_fault.lock() = None;
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &SharedBackend {
        &self.inner
    }

    /// Reads started so far, failed ones included.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::SeqCst)
    }

    /// Writes started so far, failed ones included.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    /// Syncs started so far, failed ones included.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::SeqCst)
    }

    /// Reads and writes inside the probe right now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// The most reads and writes that were inside the probe at once.
    pub fn max_in_flight(&self) -> u64 {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    /// Every read and write as `(offset, len)`, in the order they started.
    pub fn accesses(&self) -> Vec<(u64, usize)> {
        self.log
            .lock()
            .iter()
            .map(|&(_, offset, len)| (offset, len))
            .collect()
    }

    /// Offsets of the reads, in the order they started.
    pub fn read_order(&self) -> Vec<u64> {
        self.offsets(Kind::Read)
    }

    /// Offsets of the writes, in the order they started.
    pub fn write_order(&self) -> Vec<u64> {
        self.offsets(Kind::Write)
    }

    /// How many reads started at each offset.
    pub fn reads_by_offset(&self) -> BTreeMap<u64, usize> {
        let mut counts = BTreeMap::new();
        for offset in self.read_order() {
            *counts.entry(offset).or_default() += 1;
        }
        counts
    }

    /// The inner backend's whole content, read past the probe (nothing is
    /// counted, delayed or failed).
    pub async fn contents(&self) -> Result<Vec<u8>> {
        let mut buf = vec![0; self.inner.size().await? as usize];
        self.inner.read_exact_at(&mut buf, 0).await?;
        Ok(buf)
    }

    fn offsets(&self, kind: Kind) -> Vec<u64> {
        self.log
            .lock()
            .iter()
            .filter(|&&(k, _, _)| k == kind)
            .map(|&(_, offset, _)| offset)
            .collect()
    }

    /// Counts and logs one access, enters the gauge, then applies the
    /// barrier (reads only), the delay and the yield. The gauge is left when
    /// the returned guard drops, after the inner call.
    async fn enter(&self, kind: Kind, offset: u64, len: usize) -> InFlight<'_> {
        let counter = match kind {
            Kind::Read => &self.reads,
            Kind::Write => &self.writes,
        };
        counter.fetch_add(1, Ordering::SeqCst);
        self.log.lock().push((kind, offset, len));
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let guard = InFlight(&self.in_flight);
        if kind == Kind::Read {
            if let Some(barrier) = &self.read_barrier {
                barrier.wait().await;
            }
        }
        if let Some(delay) = self.delay {
            tokio::time::sleep(delay).await;
        }
        if self.yield_in_access {
            tokio::task::yield_now().await;
        }
        guard
    }
}

/// Leaves the in-flight gauge on drop, so a cancelled access leaves it too.
struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The injected error if `fault` is set. The lock is released before the
/// caller awaits anything.
fn fault(fault: &Mutex<Option<ErrorFn>>) -> Result<()> {
    match *fault.lock() {
        Some(error) => Err(error()),
        None => Ok(()),
    }
}

#[async_trait]
impl Backend for Probe {
    async fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        let _guard = self.enter(Kind::Read, offset, buf.len()).await;
        fault(&self.read_fault)?;
        self.inner.read_at(buf, offset).await
    }

    async fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
        let _guard = self.enter(Kind::Write, offset, data.len()).await;
        fault(&self.write_fault)?;
        self.inner.write_at(data, offset).await
    }

    async fn size(&self) -> Result<u64> {
        self.inner.size().await
    }

    async fn sync(&self) -> Result<()> {
        self.syncs.fetch_add(1, Ordering::SeqCst);
        fault(&self.sync_fault)?;
        self.inner.sync().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_and_logs_every_call_and_forwards_it() {
        let probe = Probe::memory((0..32).collect());
        let mut buf = [0; 4];
        probe.read_exact_at(&mut buf, 8).await.unwrap();
        assert_eq!(buf, [8, 9, 10, 11]);
        probe.write_at(&[0xAA; 2], 30).await.unwrap();
        probe.read_exact_at(&mut buf, 8).await.unwrap();
        probe.sync().await.unwrap();
        assert_eq!((probe.reads(), probe.writes(), probe.syncs()), (2, 1, 1));
        assert_eq!(probe.accesses(), vec![(8, 4), (30, 2), (8, 4)]);
        assert_eq!(probe.read_order(), vec![8, 8]);
        assert_eq!(probe.write_order(), vec![30]);
        assert_eq!(probe.reads_by_offset(), BTreeMap::from([(8, 2)]));
        let contents = probe.contents().await.unwrap();
        assert_eq!(contents[30..], [0xAA, 0xAA]);
        assert_eq!(probe.size().await.unwrap(), 32);
        // Reading the contents went past the probe.
        assert_eq!(probe.reads(), 2);
    }

    #[tokio::test]
    async fn injected_failures_stop_calls_until_healed() {
        let probe = Probe::zeros(16);
        probe.fail_reads(injected);
        probe.fail_writes(|| BackendError::Io(std::io::Error::from_raw_os_error(28)));
        probe.fail_syncs(|| BackendError::Closed);
        let mut buf = [0; 4];
        assert!(matches!(
            probe.read_at(&mut buf, 0).await,
            Err(BackendError::Remote(m)) if m.contains("injected")
        ));
        assert!(matches!(
            probe.write_at(&[1; 4], 0).await,
            Err(BackendError::Io(e)) if e.raw_os_error() == Some(28)
        ));
        assert!(matches!(probe.sync().await, Err(BackendError::Closed)));
        assert_eq!(
            probe.contents().await.unwrap(),
            vec![0; 16],
            "a failed write wrote"
        );
        assert_eq!((probe.reads(), probe.writes(), probe.syncs()), (1, 1, 1));
        assert_eq!(probe.in_flight(), 0, "a failed access left the gauge");

        probe.heal();
        probe.write_at(&[1; 4], 0).await.unwrap();
        probe.read_exact_at(&mut buf, 0).await.unwrap();
        probe.sync().await.unwrap();
        assert_eq!(buf, [1; 4]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_read_barrier_lets_reads_through_in_groups_and_gauges_them() {
        let probe = Arc::new(Probe::memory((0..64).collect()).with_read_barrier(4));
        let reads: Vec<_> = (0..8u64)
            .map(|i| {
                let probe = probe.clone();
                tokio::spawn(async move {
                    let mut buf = [0; 8];
                    probe.read_exact_at(&mut buf, i * 8).await.unwrap();
                    (i, buf)
                })
            })
            .collect();
        for read in reads {
            let (i, buf) = tokio::time::timeout(Duration::from_secs(20), read)
                .await
                .expect("a group of four reads never met")
                .unwrap();
            assert_eq!(buf[0], i as u8 * 8);
        }
        assert_eq!(probe.reads(), 8);
        assert!(probe.max_in_flight() >= 4, "{}", probe.max_in_flight());
        assert_eq!(probe.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_read_without_its_group_waits_at_the_barrier() {
        let probe = Probe::zeros(8).with_read_barrier(2);
        let mut buf = [0; 1];
        let alone = tokio::time::timeout(Duration::from_millis(50), probe.read_at(&mut buf, 0));
        assert!(alone.await.is_err(), "one read passed a barrier of two");
        // Cancelling the waiting read left the gauge.
        assert_eq!((probe.in_flight(), probe.max_in_flight()), (0, 1));
        // Writes do not wait.
        probe.write_at(&[1], 0).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_accesses_overlap_in_the_gauge() {
        let probe = Arc::new(Probe::zeros(64).with_delay(Duration::from_secs(3600)));
        let started = tokio::time::Instant::now();
        let tasks: Vec<_> = (0..3u64)
            .map(|i| {
                let probe = probe.clone();
                tokio::spawn(async move {
                    if i == 0 {
                        probe.write_at(&[1], 0).await.unwrap();
                    } else {
                        let mut buf = [0; 1];
                        probe.read_at(&mut buf, i).await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert!(started.elapsed() >= Duration::from_secs(3600), "no delay");
        assert_eq!(probe.max_in_flight(), 3);
        assert_eq!(probe.in_flight(), 0);
    }
}
