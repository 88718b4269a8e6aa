//! The leecher against an in-process seeder (no transport): option checks,
//! the finalize policies, a seeder answering nonsense, and the steps that
//! are refused out of order. The leecher mounts a device, so most of these
//! need root and skip with the reason otherwise.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use backends::testing::Probe;
use backends::{Backend, MemoryBackend};
use common::*;
use migration::{
    AppGate, FinalizePolicy, Leecher, LeecherOptions, MigrationError, Phase, Seeder, SeederOptions,
};
use parking_lot::Mutex;

/// A seeder in this process: reads a probe, optionally never answers
/// reads, and answers Sync with a fixed list while noting when it came
/// and how many reads had been served by then.
#[derive(Debug)]
struct TestSeeder {
    storage: Probe,
    hang_reads: bool,
    dirty: Vec<u64>,
    synced: Mutex<Option<(u64, Instant)>>,
}

impl TestSeeder {
    fn new(delay: Duration, dirty: Vec<u64>) -> Self {
        Self {
            storage: Probe::memory(pattern(6)).with_delay(delay),
            hang_reads: false,
            dirty,
            synced: Mutex::new(None),
        }
    }
}

#[async_trait]
impl transports::Seeder for TestSeeder {
    async fn read_at(&self, buf: &mut [u8], offset: u64) -> backends::Result<usize> {
        if self.hang_reads {
            std::future::pending::<()>().await;
        }
        self.storage.read_at(buf, offset).await
    }
    async fn size(&self) -> backends::Result<u64> {
        self.storage.size().await
    }
    async fn track(&self) -> backends::Result<()> {
        Ok(())
    }
    async fn sync(&self) -> backends::Result<Vec<u64>> {
        *self.synced.lock() = Some((self.storage.reads(), Instant::now()));
        Ok(self.dirty.clone())
    }
    async fn dirty(&self) -> backends::Result<Vec<u64>> {
        Ok(self.dirty.clone())
    }
    async fn close(&self) -> backends::Result<()> {
        Ok(())
    }
}

#[test]
fn bad_options_name_the_option() {
    let rt = runtime();
    let seeder = Arc::new(TestSeeder::new(Duration::ZERO, vec![]));
    let bad_chunk = LeecherOptions::new(3000);
    let e = Leecher::open(seeder.clone(), bad_chunk, rt.handle()).unwrap_err();
    assert!(
        e.to_string().contains("chunk_size") && e.to_string().contains("power of two"),
        "{e}"
    );
    let no_workers = LeecherOptions {
        pull_workers: 0,
        ..LeecherOptions::new(CHUNK)
    };
    let e = Leecher::open(seeder, no_workers, rt.handle()).unwrap_err();
    assert!(e.to_string().contains("pull_workers"), "{e}");
    let e = Seeder::open(
        Arc::new(MemoryBackend::new(SIZE as u64)),
        SeederOptions::new(0),
        Arc::new(AppGate::default()),
        rt.handle(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("chunk_size"), "{e}");
}

#[test]
fn after_fraction_local_waits_for_that_fraction() {
    if !can_mount() {
        return;
    }
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let _dog = Watchdog::arm("the policy test", Duration::from_secs(60), &dir);
    // 2 workers, 5 ms a read: the pull takes a while, so finalizing at
    // once would be caught.
    let seeder = Arc::new(TestSeeder::new(Duration::from_millis(5), vec![]));
    let options = LeecherOptions {
        pull_workers: 2,
        ..leecher_options(&dir)
    };
    let mut leecher = Leecher::open(seeder.clone(), options, rt.handle()).unwrap();
    leecher
        .finalize_when(FinalizePolicy::AfterFractionLocal(0.5))
        .unwrap();
    let (reads, _) = seeder.synced.lock().unwrap();
    assert!(
        reads >= CHUNKS / 2,
        "Sync came after {reads} of {CHUNKS} reads"
    );
    let progress = leecher.wait_complete().unwrap();
    assert_eq!(progress.local_chunks, CHUNKS);
    assert_eq!(progress.dirty_chunks, Some(0));
    let got = leecher.region().unwrap().map().unwrap();
    assert_eq!(sha256(got.as_slice()), sha256(&pattern(6)));
    drop(got);
    leecher.close().unwrap();
    assert_unmounted(&dir);
}

#[test]
fn at_time_waits_until_that_time_after_open() {
    if !can_mount() {
        return;
    }
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let _dog = Watchdog::arm("the policy test", Duration::from_secs(60), &dir);
    let seeder = Arc::new(TestSeeder::new(Duration::ZERO, vec![CHUNK]));
    let before_open = Instant::now();
    let mut leecher = Leecher::open(seeder.clone(), leecher_options(&dir), rt.handle()).unwrap();
    let after = Duration::from_millis(200);
    leecher
        .finalize_when(FinalizePolicy::AtTime(after))
        .unwrap();
    let (_, at) = seeder.synced.lock().unwrap();
    assert!(at.duration_since(before_open) >= after);
    assert_eq!(leecher.dirty_chunks(), Some(vec![1]));
    leecher.wait_complete().unwrap();
    leecher.close().unwrap();
    assert_unmounted(&dir);
}

#[test]
fn a_dirty_offset_that_is_not_a_chunk_start_is_refused() {
    if !can_mount() {
        return;
    }
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let _dog = Watchdog::arm("the bad-offset test", Duration::from_secs(60), &dir);
    for bad in [CHUNK + 1, SIZE as u64] {
        let seeder = Arc::new(TestSeeder::new(Duration::ZERO, vec![0, bad]));
        let mut leecher = Leecher::open(seeder, leecher_options(&dir), rt.handle()).unwrap();
        match leecher.finalize() {
            Err(MigrationError::BadDirtyOffset { offset, .. }) => assert_eq!(offset, bad),
            other => panic!("expected BadDirtyOffset, got {other:?}"),
        }
        assert!(leecher.region().is_none(), "still locked");
        assert_eq!(leecher.progress().phase, Phase::Pulling);
        leecher.close().unwrap();
    }
    assert_unmounted(&dir);
}

#[test]
fn steps_out_of_order_are_refused() {
    if !can_mount() {
        return;
    }
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let _dog = Watchdog::arm("the out-of-order test", Duration::from_secs(60), &dir);
    let seeder = Arc::new(TestSeeder {
        hang_reads: true,
        ..TestSeeder::new(Duration::ZERO, vec![])
    });
    let leecher = Leecher::open(seeder, leecher_options(&dir), rt.handle()).unwrap();
    assert!(matches!(
        leecher.wait_complete(),
        Err(MigrationError::NotFinalized("wait_complete"))
    ));
    match leecher.into_seeder(Arc::new(AppGate::default())) {
        Err(MigrationError::NotComplete { missing, total, .. }) => {
            assert_eq!((missing, total), (CHUNKS, CHUNKS));
        }
        other => panic!("expected NotComplete, got {other:?}"),
    }
    // The refused leecher was dropped: its device is down, its pull gone.
    assert_unmounted(&dir);
}
