//! Faults during a migration: the seeder's server killed during the pull
//! (a clear error naming the missing chunks, no hang), and a seeder whose
//! Sync fails (a clear error, the source application resumed, finalize
//! retried). They mount devices, so they need root and skip otherwise.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backends::testing::{injected, Probe};
use backends::{Backend, BackendError, MemoryBackend, SharedBackend};
use common::*;
use migration::{AppGate, FinalizePolicy, Leecher, MigrationError, Phase, Seeder};
use parking_lot::Mutex;
use transports::TransportKind;

/// Storage whose reads, once armed, let `n` more through and then hang
/// forever: a pull that is deterministically half done.
#[derive(Debug)]
struct Stall {
    inner: SharedBackend,
    /// Reads still let through; `None` until armed (all pass).
    passes: Mutex<Option<u64>>,
    stalled: AtomicU64,
}

impl Stall {
    fn new(bytes: Vec<u8>) -> Self {
        Self {
            inner: Arc::new(MemoryBackend::from_bytes(bytes)),
            passes: Mutex::new(None),
            stalled: AtomicU64::new(0),
        }
    }

    fn arm(&self, passes: u64) {
        *self.passes.lock() = Some(passes);
    }
}

#[async_trait]
impl Backend for Stall {
    async fn read_at(&self, buf: &mut [u8], offset: u64) -> backends::Result<usize> {
        let pass = match self.passes.lock().as_mut() {
            None => true,
            Some(0) => false,
            Some(n) => {
                *n -= 1;
                true
            }
        };
        if !pass {
            self.stalled.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<()>().await;
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
        self.inner.sync().await
    }
}

/// Chunks a half-done pull lets through before its storage hangs.
const PASSED: u64 = 8;

/// A migration whose pull has taken [`PASSED`] chunks and hangs on the
/// next: a seeder over [`Stall`] storage of `seed`'s pattern, served over
/// `kind`, and a leecher connected to it. Fields drop in order, the
/// watchdog and the directory last.
struct HalfPulled {
    leecher: Leecher,
    server: migration::SeederServer,
    seeder: Seeder,
    gate: Arc<AppGate>,
    rt: tokio::runtime::Runtime,
    _dog: Watchdog,
    dir: tempfile::TempDir,
}

fn half_pulled(kind: TransportKind, seed: u64, what: &'static str) -> HalfPulled {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let dog = Watchdog::arm(what, Duration::from_secs(60), &dir);
    let storage = Arc::new(Stall::new(pattern(seed)));
    let gate = Arc::new(AppGate::default());
    let seeder = Seeder::open(
        storage.clone(),
        seeder_options(&dir),
        gate.clone(),
        rt.handle(),
    )
    .unwrap();
    let server = seeder
        .serve(kind, "127.0.0.1:0".parse().unwrap(), config())
        .unwrap();
    let client = rt.block_on(kind.connect(server.addr(), &config())).unwrap();
    storage.arm(PASSED);
    let leecher = Leecher::open(client.seeder(), leecher_options(&dir), rt.handle()).unwrap();
    wait_until(|| {
        storage.stalled.load(Ordering::SeqCst) >= 1 && leecher.progress().local_chunks == PASSED
    });
    HalfPulled {
        leecher,
        server,
        seeder,
        gate,
        rt,
        _dog: dog,
        dir,
    }
}

/// The seeder's server dies with pulls in flight: the leecher fails with
/// the count of chunks it lacks, without calling Sync, within a deadline.
fn seeder_killed_during_the_pull(kind: TransportKind) {
    if !can_mount() {
        return;
    }
    let HalfPulled {
        rt: _rt,
        dir,
        gate,
        seeder,
        server,
        mut leecher,
        _dog,
    } = half_pulled(kind, 4, "the killed-seeder migration");
    server.kill();

    let error = {
        let _dog = Watchdog::arm(
            "finalize_when after the kill",
            Duration::from_secs(20),
            &dir,
        );
        leecher
            .finalize_when(FinalizePolicy::AfterFractionLocal(1.0))
            .unwrap_err()
    };
    match &error {
        MigrationError::PullFailed {
            missing,
            total,
            first_missing,
            ..
        } => {
            assert_eq!((*missing, *total), (CHUNKS - PASSED, CHUNKS), "{kind}");
            assert_eq!(first_missing.len(), 8, "{kind}");
            assert!(first_missing.windows(2).all(|w| w[0] < w[1]), "{kind}");
        }
        other => panic!("{kind}: expected PullFailed, got {other}"),
    }
    let message = error.to_string();
    assert!(
        message.contains(&format!("{} of {CHUNKS} chunks not local", CHUNKS - PASSED)),
        "{kind}: {message}"
    );
    // finalize does not suspend the source for a migration that cannot end.
    assert!(matches!(
        leecher.finalize(),
        Err(MigrationError::PullFailed { .. })
    ));
    assert_eq!(gate.suspends(), 0, "{kind}: Sync was never called");
    assert!(!seeder.stats().suspended);
    assert!(leecher.region().is_none());
    assert_eq!(leecher.progress().phase, Phase::Pulling);

    leecher.close().unwrap();
    seeder.close().unwrap();
    assert_unmounted(&dir);
}

#[test]
fn frpc_seeder_killed_during_the_pull() {
    seeder_killed_during_the_pull(TransportKind::Frpc);
}

#[test]
fn tarpc_seeder_killed_during_the_pull() {
    seeder_killed_during_the_pull(TransportKind::Tarpc);
}

/// The seeder's server dies after finalize, with the rest of the pull in
/// flight: `wait_complete` fails with the count of chunks still missing.
#[test]
fn seeder_killed_after_finalize_is_reported_by_wait_complete() {
    if !can_mount() {
        return;
    }
    let HalfPulled {
        rt: _rt,
        dir,
        seeder,
        server,
        mut leecher,
        _dog,
        ..
    } = half_pulled(
        TransportKind::Frpc,
        7,
        "the killed-after-finalize migration",
    );
    leecher.finalize().unwrap();
    assert_eq!(leecher.dirty_chunks(), Some(vec![]));
    server.kill();

    match leecher.wait_complete() {
        Err(MigrationError::PullFailed { missing, total, .. }) => {
            assert_eq!((missing, total), (CHUNKS - PASSED, CHUNKS));
        }
        other => panic!("expected PullFailed, got {other:?}"),
    }
    assert_eq!(leecher.progress().phase, Phase::Failed);
    assert!(!seeder.is_closed(), "Close is only sent at 100%");
    leecher.close().unwrap();
    seeder.close().unwrap();
    assert_unmounted(&dir);
}

/// The seeder's flush fails during Sync: finalize fails clearly, the
/// source application is resumed and runs on, the region stays locked; a
/// retry once the storage recovers migrates every byte.
fn sync_fails_and_the_source_resumes(kind: TransportKind) {
    if !can_mount() {
        return;
    }
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let _dog = Watchdog::arm("the failed-sync migration", Duration::from_secs(120), &dir);
    let expected = pattern(5);
    let storage = Arc::new(Probe::memory(expected.clone()));
    let gate = Arc::new(AppGate::default());
    let seeder = Seeder::open(
        storage.clone(),
        seeder_options(&dir),
        gate.clone(),
        rt.handle(),
    )
    .unwrap();
    let writer = Writer::start(seeder.region().map().unwrap(), expected, gate.clone());
    let server = seeder
        .serve(kind, "127.0.0.1:0".parse().unwrap(), config())
        .unwrap();
    let client = rt.block_on(kind.connect(server.addr(), &config())).unwrap();
    let mut leecher = Leecher::open(client.seeder(), leecher_options(&dir), rt.handle()).unwrap();
    writer.tracked.store(true, Ordering::SeqCst);

    storage.fail_syncs(injected);
    let error = leecher.finalize().unwrap_err();
    match &error {
        MigrationError::Sync {
            source: BackendError::Remote(message),
        } => {
            assert!(message.contains("flushing"), "{kind}: {message}");
            assert!(message.contains("resumed"), "{kind}: {message}");
        }
        other => panic!("{kind}: expected a Sync error, got {other}"),
    }
    assert_eq!((gate.suspends(), gate.resumes()), (1, 1), "{kind}");
    assert!(!gate.is_suspended());
    let at_error = writer.count();
    wait_until(|| writer.count() > at_error + 5);
    assert!(leecher.region().is_none(), "{kind}: still locked");
    assert!(!seeder.stats().suspended);

    // The storage recovers; finalize again loses nothing written meanwhile.
    storage.heal();
    leecher.finalize().unwrap();
    assert_eq!((gate.suspends(), gate.resumes()), (2, 1), "{kind}");
    leecher.wait_complete().unwrap();
    let written = writer.stop();
    let dirty: std::collections::BTreeSet<u64> =
        leecher.dirty_chunks().unwrap().into_iter().collect();
    assert!(
        dirty.is_superset(&written.after_track),
        "{kind}: chunks written after Track missing from the dirty set"
    );
    let got = leecher.region().unwrap().map().unwrap();
    assert_eq!(sha256(got.as_slice()), sha256(&written.expected), "{kind}");
    drop(got);
    drop(written.map);
    leecher.close().unwrap();
    seeder.close().unwrap();
    server.stop().unwrap();
    assert_unmounted(&dir);
}

#[test]
fn frpc_sync_fails_and_the_source_resumes() {
    sync_fails_and_the_source_resumes(TransportKind::Frpc);
}

#[test]
fn grpc_sync_fails_and_the_source_resumes() {
    sync_fails_and_the_source_resumes(TransportKind::Grpc);
}
