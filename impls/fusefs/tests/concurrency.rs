//! Many reads reach the backend at once when replies are asynchronous.

#![allow(clippy::unwrap_used)] // test helpers and closures outside #[test] fns

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use backends::testing::Probe;
use common::{options, pattern, runtime};
use fusefs::{FuseFile, ReplyMode};

const READERS: usize = 16;
const RANGE: usize = 128 << 10;
const SIZE: usize = READERS * RANGE;

/// Runs READERS threads reading distinct ranges at once; returns the most
/// reads the backend saw in flight together.
fn peak_backend_concurrency(mode: ReplyMode, threads: usize) -> u64 {
    let rt = runtime();
    let backend = Arc::new(Probe::memory(pattern(SIZE)).with_delay(Duration::from_millis(20)));
    let mut o = options(&rt, "concurrency", backend.clone(), SIZE as u64);
    o.reply_mode = mode;
    o.threads = threads;
    let file = FuseFile::mount(o).unwrap();
    let barrier = Arc::new(Barrier::new(READERS));
    let readers: Vec<_> = (0..READERS)
        .map(|i| {
            let path = file.path().to_path_buf();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let f = File::open(path).unwrap();
                let mut buf = vec![0u8; RANGE];
                barrier.wait();
                f.read_exact_at(&mut buf, (i * RANGE) as u64).unwrap();
                buf
            })
        })
        .collect();
    let expected = pattern(SIZE);
    for (i, reader) in readers.into_iter().enumerate() {
        let buf = reader.join().unwrap();
        assert!(
            buf == expected[i * RANGE..(i + 1) * RANGE],
            "range {i} differs"
        );
    }
    let peak = backend.max_in_flight();
    let stats = file.stats();
    assert!(
        stats.max_in_flight >= peak,
        "{stats:?} vs backend peak {peak}"
    );
    file.unmount().unwrap();
    eprintln!("{mode:?} x{threads}: backend peak {peak}, file stats {stats:?}");
    peak
}

#[test]
fn async_replies_put_many_reads_in_flight() {
    require_fuse!();
    let peak = peak_backend_concurrency(ReplyMode::Async, 1);
    assert!(
        peak > 1,
        "one request thread with async replies: peak {peak}"
    );
}

#[test]
fn blocking_replies_on_one_thread_serialise_reads() {
    require_fuse!();
    // The contrast that shows the assertion above measures something.
    let peak = peak_backend_concurrency(ReplyMode::Blocking, 1);
    assert_eq!(peak, 1);
}

#[test]
fn several_blocking_request_threads_overlap() {
    require_fuse!();
    let peak = peak_backend_concurrency(ReplyMode::Blocking, 4);
    assert!(
        peak > 1,
        "four request threads (cloned descriptors): peak {peak}"
    );
}
