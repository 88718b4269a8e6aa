//! A header announcing a huge body must be refused before anything of that
//! size is allocated. Its own test binary, because it swaps the global
//! allocator for one that records the largest allocation, and one test, so
//! no other test's allocations blur the record.

// Test helpers outside #[test] fns are test code too.
#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backends::{MemoryBackend, SharedBackend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use transports::wire::{Op, MAGIC_VERSION};
use transports::{serve, ServeError, WireError, DEFAULT_MAX_MESSAGE};

static LARGEST: AtomicUsize = AtomicUsize::new(0);

struct Recording;

// SAFETY: every method forwards its arguments unchanged to `System`, which
// upholds the GlobalAlloc contract; recording a size has no effect on it.
unsafe impl GlobalAlloc for Recording {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's layout obligations are passed on as they are.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: as in `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `System` through this allocator
        // with `layout`, as the caller guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as in `realloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Recording = Recording;

fn header(op: Op, length: u32) -> Vec<u8> {
    let mut v = vec![MAGIC_VERSION];
    v.extend_from_slice(&1u64.to_le_bytes());
    v.push(op as u8);
    v.extend_from_slice(&0u64.to_le_bytes());
    v.extend_from_slice(&length.to_le_bytes());
    v
}

/// Sends `bytes` to a server and returns how the server ended.
async fn send(bytes: &[u8]) -> Result<transports::ServeStats, ServeError> {
    let (mut peer, end) = tokio::io::duplex(64 * 1024);
    let backend: SharedBackend = Arc::new(MemoryBackend::new(4096));
    let server = tokio::spawn(serve(end, backend, DEFAULT_MAX_MESSAGE));
    peer.write_all(bytes).await.unwrap();
    peer.shutdown().await.unwrap();
    let mut sink = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n) = peer.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        sink.extend_from_slice(&chunk[..n]);
    }
    tokio::time::timeout(Duration::from_secs(20), server)
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_allocate_nothing_of_their_size() {
    // Control: a legal 8 MiB write is read into memory (the record works),
    // even though the small backend then refuses it as out of range.
    let mut legal = header(Op::WriteAt, 8 << 20);
    legal.resize(legal.len() + (8 << 20), 0x5A);
    LARGEST.store(0, Ordering::SeqCst);
    send(&legal).await.unwrap();
    assert!(
        LARGEST.load(Ordering::SeqCst) >= 8 << 20,
        "the recording allocator missed an 8 MiB body"
    );
    drop(legal);

    for op in [Op::WriteAt, Op::ReadAt] {
        LARGEST.store(0, Ordering::SeqCst);
        let result = send(&header(op, u32::MAX)).await;
        assert!(
            matches!(
                result,
                Err(ServeError::Protocol(WireError::TooLarge { .. }))
            ),
            "{op:?}: got {result:?}"
        );
        let largest = LARGEST.load(Ordering::SeqCst);
        // Not the 4 GiB announced, nor the 32 MiB allowed: only the read
        // buffer (64 KiB) and the runtime's own small allocations.
        assert!(
            largest < 1 << 20,
            "{op:?}: a refused header led to a {largest}-byte allocation"
        );
    }
}
