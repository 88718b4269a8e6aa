//! Shared fixtures: runtimes, sources with counters or faults, skip logic.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use backends::{Backend, BackendError, BlockingBackend, MemoryBackend, SharedBackend};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use uffd::{UffdConfig, UffdError, UffdRegion};

pub const KIB: usize = 1024;

/// A multi-thread runtime for the sources; the handler thread is not one of
/// its threads, so `BlockingBackend` may block on it.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Reproducible random bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut bytes);
    bytes
}

/// Opens a region over `source`, or prints why userfaultfd is unavailable
/// and returns `None` so the caller can skip.
pub fn open_or_skip(
    config: UffdConfig,
    source: SharedBackend,
    runtime: &tokio::runtime::Runtime,
) -> Option<UffdRegion> {
    match UffdRegion::open(
        config,
        BlockingBackend::new(source, runtime.handle().clone()),
    ) {
        Ok(region) => Some(region),
        Err(UffdError::Unavailable { reason }) => {
            println!("skipping: {reason}");
            None
        }
        Err(e) => panic!("open failed: {e}"),
    }
}

/// A memory backend that counts reads per offset and can delay each read.
#[derive(Debug)]
pub struct CountingBackend {
    inner: MemoryBackend,
    delay: Duration,
    reads: Mutex<BTreeMap<u64, usize>>,
}

impl CountingBackend {
    pub fn new(bytes: Vec<u8>, delay: Duration) -> Self {
        Self {
            inner: MemoryBackend::from_bytes(bytes),
            delay,
            reads: Mutex::new(BTreeMap::new()),
        }
    }

    /// Reads seen, by offset.
    pub fn reads(&self) -> BTreeMap<u64, usize> {
        self.reads.lock().unwrap().clone()
    }
}

#[async_trait]
impl Backend for CountingBackend {
    async fn read_at(&self, buf: &mut [u8], offset: u64) -> backends::Result<usize> {
        *self.reads.lock().unwrap().entry(offset).or_default() += 1;
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        self.inner.read_at(buf, offset).await
    }
    async fn write_at(&self, data: &[u8], offset: u64) -> backends::Result<()> {
        self.inner.write_at(data, offset).await
    }
    async fn size(&self) -> backends::Result<u64> {
        self.inner.size().await
    }
    async fn sync(&self) -> backends::Result<()> {
        Ok(())
    }
}

/// A source of `size` bytes whose every read fails with `error()`.
#[derive(Debug)]
pub struct FailingBackend {
    size: u64,
    error: fn() -> BackendError,
    attempts: AtomicU32,
}

impl FailingBackend {
    pub fn new(size: usize, error: fn() -> BackendError) -> Self {
        Self {
            size: size as u64,
            error,
            attempts: AtomicU32::new(0),
        }
    }

    pub fn attempts(&self) -> u32 {
        self.attempts.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Backend for FailingBackend {
    async fn read_at(&self, _buf: &mut [u8], _offset: u64) -> backends::Result<usize> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        Err((self.error)())
    }
    async fn write_at(&self, _data: &[u8], _offset: u64) -> backends::Result<()> {
        Err((self.error)())
    }
    async fn size(&self) -> backends::Result<u64> {
        Ok(self.size)
    }
    async fn sync(&self) -> backends::Result<()> {
        Ok(())
    }
}

/// Asserts `region` equals `expected`, reporting the first differing offset
/// rather than two megabyte-long slices.
pub fn assert_same(actual: &[u8], expected: &[u8]) {
    assert_eq!(actual.len(), expected.len(), "length differs");
    if let Some(at) = actual.iter().zip(expected).position(|(a, b)| a != b) {
        panic!(
            "bytes differ first at offset {at}: got {:#04x}, expected {:#04x}",
            actual[at], expected[at]
        );
    }
}

pub fn shared<B: Backend + 'static>(backend: &Arc<B>) -> SharedBackend {
    Arc::clone(backend) as SharedBackend
}
