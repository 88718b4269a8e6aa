//! Faults resolved from a source: contents, counts, concurrency, failures.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::fd::AsRawFd;
use std::sync::{mpsc, Arc, Barrier};
use std::time::Duration;

use backends::testing::Probe;
use backends::{BackendError, MemoryBackend};
use common::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use uffd::{
    ConfigError, HandlerError, OpenMode, OpenedVia, UffdConfig, UffdError, UffdRegion,
    FETCH_ATTEMPTS,
};

const PAGE: usize = 4 * KIB;

/// Longest a test waits for a blocked reader before calling it hung.
const HANG: Duration = Duration::from_secs(30);

fn sequential(size: usize, chunk_size: usize) {
    let rt = runtime();
    let bytes = random_bytes(size, chunk_size as u64);
    let source = Arc::new(Probe::memory(bytes.clone()));
    let Some(region) = open_or_skip(UffdConfig::new(size, chunk_size), shared(&source), &rt) else {
        return;
    };
    assert_eq!(region.len(), size);
    assert_eq!(
        region.stats().chunks_installed,
        0,
        "nothing is fetched before a touch"
    );

    assert_same(region.as_slice(), &bytes);

    let stats = region.stats();
    let chunks = size.div_ceil(chunk_size) as u64;
    assert_eq!(stats.chunks_installed, chunks);
    assert_eq!(stats.bytes_fetched, size as u64);
    assert_eq!(
        stats.faults, chunks,
        "one reader touching in order faults once per chunk"
    );
    assert_eq!(stats.service_ns.len(), chunks);
    assert_eq!(stats.faults_by_cpu.values().sum::<u64>(), chunks);
    assert_eq!(stats.duplicate_faults, 0);
    assert_eq!(stats.fetch_retries, 0);
    assert!(region.error().is_none());

    // Reads are of whole chunks at chunk offsets; the last may be short.
    let reads = source.reads_by_offset();
    let expected: Vec<u64> = (0..chunks).map(|c| c * chunk_size as u64).collect();
    assert_eq!(reads.keys().copied().collect::<Vec<_>>(), expected);
    assert!(reads.values().all(|&n| n == 1), "{reads:?}");
}

#[test]
fn sequential_read_matches_source_4k_chunks() {
    sequential(2 * KIB * KIB, 4 * KIB);
}

#[test]
fn sequential_read_matches_source_64k_chunks() {
    sequential(4 * KIB * KIB, 64 * KIB);
}

#[test]
fn short_last_chunk_is_fetched_with_its_own_length() {
    sequential(3 * 64 * KIB + 2 * PAGE, 64 * KIB);
}

#[test]
fn random_access_order_is_intact() {
    let rt = runtime();
    let size = 2 * KIB * KIB;
    let chunk_size = 16 * KIB;
    let bytes = random_bytes(size, 7);
    let source = Arc::new(Probe::memory(bytes.clone()));
    let Some(region) = open_or_skip(UffdConfig::new(size, chunk_size), shared(&source), &rt) else {
        return;
    };
    let mut pages: Vec<usize> = (0..size / PAGE).collect();
    pages.shuffle(&mut StdRng::seed_from_u64(11));
    let view = region.as_slice();
    for &page in &pages {
        let at = page * PAGE + (page * 37) % PAGE;
        assert_eq!(view[at], bytes[at], "byte {at} of page {page}");
    }
    assert_same(view, &bytes);
    assert_eq!(region.stats().chunks_installed, (size / chunk_size) as u64);
    assert!(source.reads_by_offset().values().all(|&n| n == 1));
}

/// Two threads read concurrently; each assigned range is checked and every
/// chunk must be fetched exactly once. A slow source makes the threads
/// pile up on chunks being fetched.
fn two_readers(ranges: [std::ops::Range<usize>; 2]) {
    let rt = runtime();
    let size = KIB * KIB;
    let chunk_size = 64 * KIB;
    let bytes = Arc::new(random_bytes(size, 3));
    let source = Arc::new(Probe::memory(bytes.to_vec()).with_delay(Duration::from_millis(2)));
    let Some(region) = open_or_skip(UffdConfig::new(size, chunk_size), shared(&source), &rt) else {
        return;
    };
    let region = Arc::new(region);
    let barrier = Arc::new(Barrier::new(2));
    let (done_tx, done_rx) = mpsc::channel();
    for range in ranges {
        let (region, bytes, barrier, done_tx) = (
            Arc::clone(&region),
            Arc::clone(&bytes),
            Arc::clone(&barrier),
            done_tx.clone(),
        );
        std::thread::spawn(move || {
            barrier.wait();
            let ok = region.as_slice()[range.clone()] == bytes[range.clone()];
            done_tx.send((range, ok)).unwrap();
        });
    }
    for _ in 0..2 {
        let (range, ok) = done_rx.recv_timeout(HANG).expect("a reader hung");
        assert!(ok, "range {range:?} differs from the source");
    }
    let stats = region.stats();
    assert_eq!(stats.chunks_installed, (size / chunk_size) as u64);
    assert_eq!(stats.bytes_fetched, size as u64);
    let reads = source.reads_by_offset();
    assert_eq!(reads.len(), size / chunk_size);
    assert!(
        reads.values().all(|&n| n == 1),
        "a chunk was fetched more than once: {reads:?}"
    );
    println!("duplicate faults: {}", stats.duplicate_faults);
}

#[test]
fn two_threads_on_the_same_chunks_fetch_each_once() {
    let size = KIB * KIB;
    two_readers([0..size, 0..size]);
}

#[test]
fn two_threads_on_different_chunks_fetch_each_once() {
    let size = KIB * KIB;
    two_readers([0..size / 2, size / 2..size]);
}

#[test]
fn write_to_missing_page_lands_on_the_fetched_chunk() {
    let rt = runtime();
    let size = 256 * KIB;
    let chunk_size = 64 * KIB;
    let bytes = random_bytes(size, 5);
    let source = Arc::new(Probe::memory(bytes.clone()));
    let Some(mut region) = open_or_skip(UffdConfig::new(size, chunk_size), shared(&source), &rt)
    else {
        return;
    };
    let at = chunk_size + 3 * PAGE + 100;
    let value = !bytes[at];
    region.as_mut_slice()[at] = value;

    let stats = region.stats();
    assert_eq!(
        stats.chunks_installed, 1,
        "only the written chunk is fetched"
    );
    assert_eq!(stats.write_faults, 1);
    let mut expected = bytes[chunk_size..2 * chunk_size].to_vec();
    expected[at - chunk_size] = value;
    assert_same(&region.as_slice()[chunk_size..2 * chunk_size], &expected);
    assert_eq!(region.stats().chunks_installed, 1);

    // The rest of the region still comes from the source.
    let mut whole = bytes.clone();
    whole[at] = value;
    assert_same(region.as_slice(), &whole);
    assert_eq!(region.stats().chunks_installed, 4);
}

#[test]
fn user_mode_only_open_works() {
    let rt = runtime();
    let size = 512 * KIB;
    let bytes = random_bytes(size, 9);
    let mut config = UffdConfig::new(size, 64 * KIB);
    config.open_mode = OpenMode::UserModeOnly;
    let Some(region) = open_or_skip(
        config,
        Arc::new(MemoryBackend::from_bytes(bytes.clone())),
        &rt,
    ) else {
        return;
    };
    assert_eq!(region.opened_via(), OpenedVia::SyscallUserModeOnly);
    assert_same(region.as_slice(), &bytes);
    assert_eq!(region.stats().chunks_installed, 8);
}

/// The kernel reading a missing page (here `write(2)` into a pipe) is served
/// when the descriptor handles kernel faults and fails with `EFAULT` under
/// `UFFD_USER_MODE_ONLY`, as the Limitations section says.
#[test]
fn kernel_mode_faults_follow_the_open_method() {
    let rt = runtime();
    for mode in [OpenMode::Auto, OpenMode::UserModeOnly] {
        let size = 64 * KIB;
        let bytes = random_bytes(size, 13);
        let mut config = UffdConfig::new(size, PAGE);
        config.open_mode = mode;
        let Some(region) = open_or_skip(
            config,
            Arc::new(MemoryBackend::from_bytes(bytes.clone())),
            &rt,
        ) else {
            return;
        };
        let (rx, tx) = nix::unistd::pipe().unwrap();
        // SAFETY: the first page of the region is mapped and readable (or
        // faults into the handler); the pipe holds 64 KiB, more than a page.
        let written = unsafe { libc::write(tx.as_raw_fd(), region.as_ptr().cast(), PAGE) };
        if region.opened_via().handles_kernel_faults() {
            assert_eq!(written, PAGE as isize, "{mode:?}");
            let mut back = vec![0u8; PAGE];
            assert_eq!(nix::unistd::read(rx.as_raw_fd(), &mut back).unwrap(), PAGE);
            assert_same(&back, &bytes[..PAGE]);
        } else {
            assert_eq!(written, -1, "{mode:?}");
            assert_eq!(nix::errno::Errno::last(), nix::errno::Errno::EFAULT);
            assert_eq!(region.stats().faults, 0);
            // User-mode access still works.
            assert_same(region.as_slice(), &bytes);
        }
    }
}

#[test]
fn failing_source_stops_the_handler_without_hanging_readers() {
    let rt = runtime();
    let size = 256 * KIB;
    let source = Arc::new(failing_source(size, || {
        BackendError::Remote("injected failure".into())
    }));
    let Some(region) = open_or_skip(UffdConfig::new(size, 64 * KIB), shared(&source), &rt) else {
        return;
    };
    let region = Arc::new(region);
    let (tx, rx) = mpsc::channel();
    let reader = Arc::clone(&region);
    std::thread::spawn(move || {
        let first = reader.as_slice()[64 * KIB + 5 * PAGE + 1];
        tx.send(first).unwrap();
    });
    let first = rx
        .recv_timeout(HANG)
        .expect("the reader hung on a failed fetch");
    assert_eq!(first, 0, "a page the handler never installed reads as zero");

    match region.error() {
        Some(HandlerError::Fetch {
            chunk,
            offset,
            attempts,
            ..
        }) => {
            assert_eq!(chunk, 1);
            assert_eq!(offset, 64 * KIB as u64);
            assert_eq!(attempts, FETCH_ATTEMPTS);
        }
        other => panic!("expected a fetch error, got {other:?}"),
    }
    assert_eq!(source.reads(), u64::from(FETCH_ATTEMPTS));
    assert_eq!(region.stats().fetch_retries, u64::from(FETCH_ATTEMPTS - 1));
    assert_eq!(region.stats().chunks_installed, 0);
    // Other untouched pages no longer block either.
    assert!(region.as_slice().iter().all(|&b| b == 0));
    wait_until(|| !region.is_serving(), "the handler thread to exit");
}

#[test]
fn permanent_source_errors_are_not_retried() {
    let rt = runtime();
    let size = 64 * KIB;
    let source = Arc::new(failing_source(size, || BackendError::Closed));
    let Some(region) = open_or_skip(UffdConfig::new(size, 64 * KIB), shared(&source), &rt) else {
        return;
    };
    let region = Arc::new(region);
    let (tx, rx) = mpsc::channel();
    let reader = Arc::clone(&region);
    std::thread::spawn(move || tx.send(reader.as_slice()[0]).unwrap());
    rx.recv_timeout(HANG)
        .expect("the reader hung on a failed fetch");
    assert!(matches!(
        region.error(),
        Some(HandlerError::Fetch { attempts: 1, .. })
    ));
    assert_eq!(source.reads(), 1);
}

#[test]
fn discarded_pages_are_fetched_again() {
    let rt = runtime();
    let size = 256 * KIB;
    let chunk_size = 64 * KIB;
    let bytes = random_bytes(size, 17);
    let source = Arc::new(Probe::memory(bytes.clone()));
    let Some(region) = open_or_skip(UffdConfig::new(size, chunk_size), shared(&source), &rt) else {
        return;
    };
    assert_same(region.as_slice(), &bytes);

    let page = 2 * chunk_size + 5 * PAGE;
    // SAFETY: the page lies inside the region and no reference into it is
    // live; discarding it only makes its next touch fault again.
    let rc = unsafe {
        libc::madvise(
            region.as_ptr().add(page) as *mut libc::c_void,
            PAGE,
            libc::MADV_DONTNEED,
        )
    };
    assert_eq!(rc, 0);

    assert_same(region.as_slice(), &bytes);
    let stats = region.stats();
    assert_eq!(stats.chunks_refetched, 1);
    assert_eq!(stats.chunks_installed, 5);
    assert_eq!(
        stats.eexist_fallbacks, 1,
        "the rest of the chunk was present"
    );
    assert_eq!(source.reads_by_offset()[&(2 * chunk_size as u64)], 2);
}

#[test]
fn handler_runs_on_the_requested_cpu() {
    let rt = runtime();
    let allowed = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).unwrap();
    let cpu = (0..nix::sched::CpuSet::count())
        .rev()
        .find(|&c| allowed.is_set(c).unwrap_or(false))
        .unwrap();
    let size = KIB * KIB;
    let bytes = random_bytes(size, 19);
    let mut config = UffdConfig::new(size, 16 * KIB);
    config.handler_cpu = Some(cpu);
    let Some(region) = open_or_skip(
        config,
        Arc::new(MemoryBackend::from_bytes(bytes.clone())),
        &rt,
    ) else {
        return;
    };
    assert_same(region.as_slice(), &bytes);
    let stats = region.stats();
    assert_eq!(
        stats.faults_by_cpu,
        std::collections::BTreeMap::from([(cpu, stats.faults)])
    );
}

#[test]
fn open_rejects_bad_configs_and_small_sources() {
    let rt = runtime();
    let open = |config: UffdConfig, source_size: usize| {
        UffdRegion::open(
            config,
            backends::BlockingBackend::new(
                Arc::new(MemoryBackend::new(source_size as u64)),
                rt.handle().clone(),
            ),
        )
    };
    assert!(matches!(
        open(UffdConfig::new(PAGE + 1, PAGE), 2 * PAGE),
        Err(UffdError::Config(ConfigError::SizeNotPageMultiple { .. }))
    ));
    assert!(matches!(
        open(UffdConfig::new(4 * PAGE, 3 * PAGE / 2), 4 * PAGE),
        Err(UffdError::Config(ConfigError::ChunkNotPageMultiple { .. }))
    ));
    match open(UffdConfig::new(4 * PAGE, PAGE), 3 * PAGE) {
        Err(UffdError::SourceTooSmall { source_size, size }) => {
            assert_eq!((source_size, size), (3 * PAGE as u64, 4 * PAGE));
        }
        other => panic!("expected SourceTooSmall, got {other:?}"),
    }
    let mut config = UffdConfig::new(4 * PAGE, PAGE);
    config.handler_cpu = Some(nix::sched::CpuSet::count() - 1);
    let allowed = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).unwrap();
    if !allowed.is_set(nix::sched::CpuSet::count() - 1).unwrap() {
        match open(config, 4 * PAGE) {
            Err(UffdError::Pin { cpu, .. }) => assert_eq!(cpu, nix::sched::CpuSet::count() - 1),
            Err(UffdError::Unavailable { reason }) => println!("skipping pin check: {reason}"),
            other => panic!("expected a pin error, got {other:?}"),
        }
    }
}

fn wait_until(mut done: impl FnMut() -> bool, what: &str) {
    let deadline = std::time::Instant::now() + HANG;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The background pull fills the whole region without a touch; a writer
/// racing it keeps its write (the pull never installs over a present page);
/// and every page holds the source's bytes afterwards.
#[test]
fn background_pull_fills_every_chunk_and_never_overwrites_a_write() {
    let rt = runtime();
    let size = 4 * 1024 * KIB;
    let chunk_size = 64 * KIB;
    let bytes = random_bytes(size, 9);
    let source = Arc::new(Probe::memory(bytes.clone()).with_delay(Duration::from_micros(200)));
    let Some(mut region) = open_or_skip(UffdConfig::new(size, chunk_size), shared(&source), &rt)
    else {
        return;
    };
    let progress = region
        .start_background_pull(
            backends::BlockingBackend::new(shared(&source), rt.handle().clone()),
            4,
        )
        .unwrap();
    // A write to the last chunk, which the in-order pull reaches last: the
    // fault handler installs it first, and the pull must keep the write.
    let at = size - chunk_size + 17;
    let value = !bytes[at];
    region.as_mut_slice()[at] = value;
    let deadline = std::time::Instant::now() + HANG;
    while !progress.finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "the background pull hung"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(progress.error().is_none(), "{:?}", progress.error());
    assert_eq!(progress.chunks(), (size / chunk_size) as u64);
    assert_eq!(progress.installed(), progress.chunks());
    let touched_before = region.stats().faults;
    let mut expected = bytes.clone();
    expected[at] = value;
    assert_same(region.as_slice(), &expected);
    assert_eq!(
        region.stats().faults,
        touched_before,
        "every page was present: reading the region faulted no more"
    );
}
