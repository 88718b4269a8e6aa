//! PerCallDelay: every call pays at least one RTT and still follows the
//! Backend rules.

// Test helpers outside #[test] fns are test code too.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use backends::{Backend, BackendError, MemoryBackend, SharedBackend};
use netem::PerCallDelay;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_pays_at_least_one_rtt() {
    let rtt = Duration::from_millis(2);
    let backend = PerCallDelay::new(MemoryBackend::new(4096), rtt);

    let start = Instant::now();
    backend.write_at(b"abc", 10).await.unwrap();
    assert!(
        start.elapsed() >= rtt,
        "write_at took {:?}",
        start.elapsed()
    );

    let start = Instant::now();
    let mut buf = [0; 3];
    assert_eq!(backend.read_at(&mut buf, 10).await.unwrap(), 3);
    assert!(start.elapsed() >= rtt, "read_at took {:?}", start.elapsed());
    assert_eq!(&buf, b"abc");

    let start = Instant::now();
    assert_eq!(backend.size().await.unwrap(), 4096);
    assert!(start.elapsed() >= rtt, "size took {:?}", start.elapsed());

    let start = Instant::now();
    backend.sync().await.unwrap();
    assert!(start.elapsed() >= rtt, "sync took {:?}", start.elapsed());

    // Errors come back after the delay too, unchanged.
    let start = Instant::now();
    assert!(matches!(
        backend.read_at(&mut buf, 4096).await,
        Err(BackendError::OutOfRange { .. })
    ));
    assert!(start.elapsed() >= rtt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_calls_add_up() {
    let rtt = Duration::from_millis(1);
    let backend = PerCallDelay::new(MemoryBackend::new(4096), rtt);
    let start = Instant::now();
    let mut buf = [0; 8];
    for i in 0..10 {
        backend.read_at(&mut buf, i * 8).await.unwrap();
    }
    assert!(
        start.elapsed() >= 10 * rtt,
        "10 calls took {:?}",
        start.elapsed()
    );
}

backends::conformance_tests!(conformance, |size| async move {
    Arc::new(PerCallDelay::new(
        MemoryBackend::new(size),
        Duration::from_micros(50),
    )) as SharedBackend
});
