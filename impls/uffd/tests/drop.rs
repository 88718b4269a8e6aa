//! Dropping a region gives back everything it took. Alone in its binary so
//! no other test opens descriptors, maps memory or starts threads meanwhile.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use backends::MemoryBackend;
use common::*;
use uffd::UffdConfig;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn handler_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == "uffd-handler")
        .count()
}

fn mapped(start: usize, end: usize) -> bool {
    let prefix = format!("{start:x}-{end:x} ");
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .any(|line| line.starts_with(&prefix))
}

#[test]
fn drop_releases_fds_mapping_and_thread() {
    let rt = runtime();
    let size = 8 * KIB * KIB;
    let bytes = random_bytes(size, 23);
    let fds_before = open_fds();
    assert_eq!(handler_threads(), 0);

    let Some(region) = open_or_skip(
        UffdConfig::new(size, 64 * KIB),
        Arc::new(MemoryBackend::from_bytes(bytes.clone())),
        &rt,
    ) else {
        return;
    };
    assert_same(&region.as_slice()[..KIB * KIB], &bytes[..KIB * KIB]);
    let start = region.as_ptr() as usize;
    let end = start + size;
    assert!(
        mapped(start, end),
        "the region is in /proc/self/maps while open"
    );
    assert_eq!(handler_threads(), 1);
    assert_eq!(
        open_fds(),
        fds_before + 2,
        "a userfaultfd and an eventfd while open"
    );

    drop(region);

    assert_eq!(open_fds(), fds_before);
    assert!(!mapped(start, end), "the region is unmapped after drop");
    // join() returns once the thread has run to completion; the kernel may
    // list the exiting task for a moment longer.
    let deadline = Instant::now() + Duration::from_secs(10);
    while handler_threads() != 0 {
        assert!(
            Instant::now() < deadline,
            "the handler thread is still alive"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
