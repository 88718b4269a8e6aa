//! A probing wrapper backend for the stage tests: counts and logs accesses,
//! gauges concurrency, and injects delays, yields and failures.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backends::{Backend, BackendError, MemoryBackend, Result, SharedBackend};
use parking_lot::Mutex;

#[derive(Debug, Default)]
pub(crate) struct Probe {
    inner: Option<SharedBackend>,
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    in_flight: AtomicU64,
    pub max_in_flight: AtomicU64,
    /// Offsets of reads and writes, in the order they started.
    pub read_log: Mutex<Vec<u64>>,
    pub write_log: Mutex<Vec<u64>>,
    /// Every access (read or write) as (offset, len), in order started.
    pub accesses: Mutex<Vec<(u64, usize)>>,
    pub delay: Option<Duration>,
    /// Yield to the scheduler between the start and the end of every access,
    /// so that interleavings a lock is meant to prevent actually happen.
    pub yield_in_access: bool,
    pub fail_reads: AtomicBool,
    pub fail_writes: AtomicBool,
}

impl Probe {
    pub(crate) fn over(inner: SharedBackend) -> Self {
        Self {
            inner: Some(inner),
            ..Self::default()
        }
    }

    pub(crate) fn memory(bytes: Vec<u8>) -> Self {
        Self::over(Arc::new(MemoryBackend::from_bytes(bytes)))
    }

    pub(crate) fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    pub(crate) fn yielding(mut self) -> Self {
        self.yield_in_access = true;
        self
    }

    pub(crate) fn reads(&self) -> u64 {
        self.reads.load(Ordering::SeqCst)
    }

    pub(crate) fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::SeqCst)
    }

    pub(crate) fn max_in_flight(&self) -> u64 {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    pub(crate) fn read_order(&self) -> Vec<u64> {
        self.read_log.lock().clone()
    }

    pub(crate) fn write_order(&self) -> Vec<u64> {
        self.write_log.lock().clone()
    }

    pub(crate) async fn contents(&self) -> Vec<u8> {
        let inner = self.inner.as_ref().unwrap();
        let mut buf = vec![0; inner.size().await.unwrap() as usize];
        inner.read_exact_at(&mut buf, 0).await.unwrap();
        buf
    }

    async fn enter(&self) -> InFlight<'_> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let guard = InFlight(&self.in_flight);
        if let Some(delay) = self.delay {
            tokio::time::sleep(delay).await;
        }
        if self.yield_in_access {
            tokio::task::yield_now().await;
        }
        guard
    }
}

struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl Backend for Probe {
    async fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.read_log.lock().push(offset);
        self.accesses.lock().push((offset, buf.len()));
        let _guard = self.enter().await;
        if self.fail_reads.load(Ordering::SeqCst) {
            return Err(BackendError::Remote("injected read failure".into()));
        }
        self.inner.as_ref().unwrap().read_at(buf, offset).await
    }

    async fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.write_log.lock().push(offset);
        self.accesses.lock().push((offset, data.len()));
        let _guard = self.enter().await;
        if self.fail_writes.load(Ordering::SeqCst) {
            return Err(BackendError::Remote("injected write failure".into()));
        }
        self.inner.as_ref().unwrap().write_at(data, offset).await
    }

    async fn size(&self) -> Result<u64> {
        self.inner.as_ref().unwrap().size().await
    }

    async fn sync(&self) -> Result<()> {
        self.inner.as_ref().unwrap().sync().await
    }
}

/// `len` bytes where byte `i` is `(i * 7 + seed) % 251`: no two neighbouring
/// chunks look alike, so misplaced copies show.
pub(crate) fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 7 + usize::from(seed)) % 251) as u8)
        .collect()
}
