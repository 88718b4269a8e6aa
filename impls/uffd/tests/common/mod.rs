//! Shared fixtures: runtimes, failing sources, skip logic. Counting and
//! delaying sources are `backends::testing::Probe`s.

#![allow(dead_code)] // each test binary uses a different subset

use std::sync::Arc;

use backends::testing::{ErrorFn, Probe};
use backends::{Backend, BlockingBackend, SharedBackend};
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

/// A source of `size` zero bytes whose every read and write fails with
/// `error()`; `reads()` counts the attempts.
pub fn failing_source(size: usize, error: ErrorFn) -> Probe {
    let source = Probe::zeros(size as u64);
    source.fail_reads(error);
    source.fail_writes(error);
    source
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
