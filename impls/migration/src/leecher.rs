//! The destination of a migration: pulls the region from a seeder in the
//! background and takes over at finalize.
//!
//! # Behavior
//!
//! - [`Leecher::open`] asks the seeder's size, builds the pipeline, then
//!   in parallel brings the device up and calls `Track`; the background
//!   pull starts once `Track` has returned (a chunk pulled earlier could be
//!   written at the source and never reported). The device is locked: any
//!   access waits until finalize, so nothing (not even the kernel's page
//!   cache) can hold bytes the source may still change.
//! - [`Leecher::finalize`] calls `Sync`, marks the returned chunks remote,
//!   puts them first in the pull queue, unlocks and returns the region.
//!   Chunks the application touches before the pull reaches them are pulled
//!   on demand. If `Sync` fails the region stays locked and finalize can be
//!   called again. If the pull has already failed, finalize does not call
//!   `Sync` (which would suspend the source for a migration that cannot
//!   finish) and fails naming the chunks that are missing.
//! - Once every chunk is local the leecher calls `Close` on the seeder and
//!   lets go of it ([`Leecher::wait_complete`] waits for this).
//! - [`Leecher::into_seeder`] turns a complete leecher into the seeder of
//!   the next hop, on the same device, so its application keeps its
//!   mapping.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use backends::{Backend, BackendError, MemoryBackend, Result, SharedBackend};
use chunks::{
    ArbitraryReadWriterAt, ChunkGeometry, LockableReadWriterAt, PullError, PullHeuristic, Puller,
    SyncedReadWriterAt, TrackingReadWriterAt,
};
use mount::{DirectMount, MountOptions, MountedRegion};
use parking_lot::{Mutex, RwLock};
use tokio::runtime::Handle;
use tokio::sync::{watch, Notify};
use transports::SharedSeeder;

use crate::app::AppControl;
use crate::policy::FinalizePolicy;
use crate::seeder::{check_chunk_size, Seeder};
use crate::MigrationError;

/// How many missing chunk indices an error lists.
const LISTED_MISSING: usize = 8;

/// How a leecher pulls.
#[derive(Debug, Clone)]
pub struct LeecherOptions {
    /// Bytes per chunk; a power of two, and the seeder's chunk size.
    pub chunk_size: u64,
    /// Background pull tasks (requests in flight); at least 1.
    pub pull_workers: usize,
    /// The order the pull fetches chunks in before finalize.
    pub pull_heuristic: PullHeuristic,
    /// The device and its hooks.
    pub mount: MountOptions,
    /// Where pulled chunks are kept; a memory backend of the region's size
    /// when `None`.
    pub local: Option<SharedBackend>,
}

impl LeecherOptions {
    /// 64 workers in linear order, default mount options.
    pub fn new(chunk_size: u64) -> Self {
        Self {
            chunk_size,
            pull_workers: 64,
            pull_heuristic: PullHeuristic::Linear,
            mount: MountOptions::default(),
            local: None,
        }
    }

    fn validate(&self) -> Result<(), MigrationError> {
        check_chunk_size(self.chunk_size)?;
        if self.pull_workers == 0 {
            return Err(MigrationError::Option {
                option: "pull_workers",
                value: "0".into(),
                allowed: "at least 1",
            });
        }
        Ok(())
    }
}

/// Where a leecher is in the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Pulling; the region is locked.
    Pulling,
    /// Finalized: the region is unlocked, the rest is being pulled.
    Finalized,
    /// Every chunk is local and the seeder was told to close.
    Complete,
    /// The pull after finalize failed; some chunks are missing.
    Failed,
}

/// How far a migration has come.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub phase: Phase,
    pub chunk_size: u64,
    pub chunk_count: u64,
    /// Chunks served locally now.
    pub local_chunks: u64,
    /// Chunk reads the background pull completed (dirty chunks count again).
    pub pulled_chunks: u64,
    /// Chunks `Sync` reported written since `Track`; `None` before finalize.
    pub dirty_chunks: Option<u64>,
    /// Of those, chunks local again (re-pulled, or overwritten whole by the
    /// application here).
    pub dirty_local: u64,
    /// From the start of `open` to the device up and the pull running.
    pub setup: Duration,
    /// Finalize: from calling `Sync` to the region unlocked (the downtime
    /// the protocol adds to the source's suspend).
    pub finalize: Option<Duration>,
    /// From the start of `open` to every chunk local.
    pub total: Option<Duration>,
}

impl Progress {
    /// Local chunks as a fraction of all chunks (1.0 for an empty region).
    pub fn fraction_local(&self) -> f64 {
        if self.chunk_count == 0 {
            1.0
        } else {
            self.local_chunks as f64 / self.chunk_count as f64
        }
    }
}

/// The seeder seen as the synced stage's remote: reads only, and cut off
/// once the migration is complete.
#[derive(Debug)]
struct SeederBackend {
    seeder: RwLock<Option<SharedSeeder>>,
}

impl SeederBackend {
    fn seeder(&self) -> Result<SharedSeeder> {
        self.seeder.read().clone().ok_or(BackendError::Closed)
    }

    fn disconnect(&self) {
        self.seeder.write().take();
    }
}

#[async_trait]
impl Backend for SeederBackend {
    async fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        self.seeder()?.read_at(buf, offset).await
    }

    async fn write_at(&self, _data: &[u8], _offset: u64) -> Result<()> {
        // The synced stage never writes its remote; saying so beats a
        // silent success if that ever changes.
        Err(BackendError::Remote(
            "the seeder service is read-only: a leecher never writes to its source".into(),
        ))
    }

    async fn size(&self) -> Result<u64> {
        self.seeder()?.size().await
    }

    async fn sync(&self) -> Result<()> {
        // Nothing of ours lives on the seeder.
        Ok(())
    }
}

/// Counts dirty chunks becoming local again, and wakes policy waits.
#[derive(Debug, Default)]
struct Tracker {
    /// Dirty chunks not yet local again; `None` before finalize.
    dirty_left: Mutex<Option<HashSet<u64>>>,
    dirty_local: std::sync::atomic::AtomicU64,
    /// Times a chunk became local. The synced stage calls the hook before
    /// it marks the chunk local, so a waiter woken by `changed` may still
    /// read the old `local_chunks()`; this count is already up to date.
    /// Before finalize (no `mark_remote`, the region locked) it is the
    /// number of local chunks.
    reported_local: std::sync::atomic::AtomicU64,
    changed: Notify,
}

impl Tracker {
    fn chunk_local(&self, chunk: u64) {
        if let Some(left) = self.dirty_left.lock().as_mut() {
            if left.remove(&chunk) {
                self.dirty_local
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        self.reported_local
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.changed.notify_waiters();
    }
}

#[derive(Debug)]
struct Times {
    opened_at: Instant,
    setup: Duration,
    finalize: Option<Duration>,
    total: Option<Duration>,
}

#[derive(Debug)]
struct Shared {
    remote: Arc<SeederBackend>,
    synced: Arc<SyncedReadWriterAt>,
    lockable: Arc<LockableReadWriterAt>,
    tracking: Arc<TrackingReadWriterAt>,
    geometry: ChunkGeometry,
    workers: usize,
    puller: Mutex<Arc<Puller>>,
    tracker: Arc<Tracker>,
    times: Mutex<Times>,
    phase: watch::Sender<Phase>,
    dirty: Mutex<Option<Vec<u64>>>,
    failure: Mutex<Option<Arc<PullError>>>,
}

impl Shared {
    fn missing(&self) -> Vec<u64> {
        (0..self.geometry.chunk_count())
            .filter(|&c| !self.synced.is_local(c))
            .collect()
    }

    fn pull_failed(&self, source: Arc<PullError>) -> MigrationError {
        let missing = self.missing();
        MigrationError::PullFailed {
            missing: missing.len() as u64,
            total: self.geometry.chunk_count(),
            first_missing: missing.into_iter().take(LISTED_MISSING).collect(),
            source,
        }
    }

    /// The pull's error if it has stopped with one.
    async fn pull_error(&self) -> Option<PullError> {
        let puller = self.puller.lock().clone();
        if puller.is_finished() {
            puller.wait().await.err()
        } else {
            None
        }
    }

    /// Waits for the pull to fail; never returns if it succeeds.
    async fn until_pull_fails(&self) -> PullError {
        let puller = self.puller.lock().clone();
        match puller.wait().await {
            Err(e) => e,
            Ok(_) => std::future::pending().await,
        }
    }

    /// After finalize: waits for every chunk to be local, closes the seeder.
    async fn complete(self: Arc<Self>) {
        let outcome = loop {
            let puller = self.puller.lock().clone();
            if let Err(e) = puller.wait().await {
                break Err(e);
            }
            let missing = self.missing();
            if missing.is_empty() {
                break Ok(());
            }
            // A pull that was under way when finalize marked its chunk
            // remote ends with the chunk still remote: queue what is left.
            tracing::debug!(missing = missing.len(), "pulling chunks left remote");
            if let Err(e) = puller.finalize(missing) {
                break Err(e);
            }
        };
        match outcome {
            Ok(()) => {
                {
                    let mut times = self.times.lock();
                    times.total = Some(times.opened_at.elapsed());
                }
                match self.remote.seeder() {
                    Ok(seeder) => {
                        if let Err(e) = seeder.close().await {
                            // Every byte is here; a seeder that missed its
                            // Close is the source's problem, not ours.
                            tracing::warn!("closing the seeder: {e}");
                        }
                    }
                    Err(e) => tracing::warn!("closing the seeder: {e}"),
                }
                self.remote.disconnect();
                tracing::info!("migration complete");
                self.phase.send_replace(Phase::Complete);
            }
            Err(e) => {
                tracing::error!("the pull after finalize failed: {e}");
                *self.failure.lock() = Some(Arc::new(e));
                self.phase.send_replace(Phase::Failed);
            }
        }
    }
}

/// The destination of a migration. See the module docs.
#[derive(Debug)]
pub struct Leecher {
    shared: Arc<Shared>,
    /// Taken only by `close` and `into_seeder`, which consume the leecher.
    mount: Option<DirectMount>,
    runtime: Handle,
}

impl Leecher {
    /// Connects the pipeline to `seeder`, calls `Track`, brings the device
    /// up and starts the pull. Blocks on `runtime`: call it from outside.
    pub fn open(
        seeder: SharedSeeder,
        options: LeecherOptions,
        runtime: &Handle,
    ) -> Result<Self, MigrationError> {
        options.validate()?;
        let opened_at = Instant::now();
        let chunk_size = options.chunk_size;
        let remote = Arc::new(SeederBackend {
            seeder: RwLock::new(Some(seeder.clone())),
        });
        let size = runtime
            .block_on(seeder.size())
            .map_err(|source| MigrationError::Seeder {
                call: "Size",
                source,
            })?;
        let local = match options.local.clone() {
            Some(local) => local,
            None => Arc::new(MemoryBackend::new(size)) as SharedBackend,
        };
        let tracker = Arc::new(Tracker::default());
        let synced = {
            let hook = tracker.clone();
            let synced = runtime.block_on(SyncedReadWriterAt::new(
                remote.clone() as SharedBackend,
                local,
                chunk_size,
            ))?;
            Arc::new(synced.with_on_chunk_local(move |chunk| hook.chunk_local(chunk)))
        };
        let geometry = synced.geometry();
        let arbitrary = Arc::new(ArbitraryReadWriterAt::with_geometry(
            synced.clone(),
            geometry,
        ));
        let lockable = Arc::new(LockableReadWriterAt::new(arbitrary));
        let tracking = Arc::new(TrackingReadWriterAt::with_geometry(
            lockable.clone(),
            geometry,
        ));

        // Track, then pull, while the device comes up.
        let started = runtime.spawn({
            let synced = synced.clone();
            let (workers, heuristic) = (options.pull_workers, options.pull_heuristic.clone());
            async move {
                seeder
                    .track()
                    .await
                    .map_err(|source| MigrationError::Seeder {
                        call: "Track",
                        source,
                    })?;
                Ok::<_, MigrationError>(Puller::start(
                    synced, chunk_size, size, workers, heuristic,
                )?)
            }
        });
        let mounted = DirectMount::open(tracking.clone(), options.mount, runtime);
        let started = runtime
            .block_on(started)
            .map_err(|e| MigrationError::Task(format!("starting the pull: {e}")))
            .and_then(|started| started);
        let mount = match mounted {
            Ok(mount) => mount,
            Err(e) => {
                if let Ok(puller) = &started {
                    puller.abort();
                }
                return Err(e.into());
            }
        };
        let puller = match started {
            Ok(puller) => puller,
            Err(e) => {
                lockable.unlock();
                if let Err(closing) = mount.close() {
                    tracing::warn!("taking the leecher's device down: {closing}");
                }
                return Err(e);
            }
        };
        let setup = opened_at.elapsed();
        tracing::debug!(?setup, size, chunk_size, "leecher pulling");
        let (phase, _) = watch::channel(Phase::Pulling);
        Ok(Self {
            shared: Arc::new(Shared {
                remote,
                synced,
                lockable,
                tracking,
                geometry,
                workers: options.pull_workers,
                puller: Mutex::new(Arc::new(puller)),
                tracker,
                times: Mutex::new(Times {
                    opened_at,
                    setup,
                    finalize: None,
                    total: None,
                }),
                phase,
                dirty: Mutex::new(None),
                failure: Mutex::new(None),
            }),
            mount: Some(mount),
            runtime: runtime.clone(),
        })
    }

    /// How far the migration has come.
    pub fn progress(&self) -> Progress {
        let shared = &self.shared;
        let times = shared.times.lock();
        Progress {
            phase: *shared.phase.borrow(),
            chunk_size: shared.geometry.chunk_size(),
            chunk_count: shared.geometry.chunk_count(),
            local_chunks: shared.synced.local_chunks(),
            pulled_chunks: shared.puller.lock().progress().pulled,
            dirty_chunks: shared.dirty.lock().as_ref().map(|d| d.len() as u64),
            dirty_local: shared
                .tracker
                .dirty_local
                .load(std::sync::atomic::Ordering::Relaxed),
            setup: times.setup,
            finalize: times.finalize,
            total: times.total,
        }
    }

    /// The chunk indices `Sync` reported dirty, ascending; `None` before
    /// finalize.
    pub fn dirty_chunks(&self) -> Option<Vec<u64>> {
        self.shared.dirty.lock().clone()
    }

    /// The region, once finalized.
    pub fn region(&self) -> Option<&MountedRegion> {
        match *self.shared.phase.borrow() {
            Phase::Pulling => None,
            _ => self.mount.as_ref().map(DirectMount::region),
        }
    }

    fn mounted_region(&self) -> Result<&MountedRegion, MigrationError> {
        self.mount
            .as_ref()
            .map(DirectMount::region)
            .ok_or_else(|| MigrationError::Task("the leecher's device is gone".into()))
    }

    /// The critical phase: `Sync` on the seeder (suspending its
    /// application), dirty chunks marked remote and queued first, region
    /// unlocked. Returns the region; a second call returns it again.
    /// Blocks on the runtime.
    pub fn finalize(&mut self) -> Result<&MountedRegion, MigrationError> {
        if *self.shared.phase.borrow() != Phase::Pulling {
            return self.mounted_region();
        }
        let shared = self.shared.clone();
        if let Some(e) = self.runtime.block_on(shared.pull_error()) {
            return Err(shared.pull_failed(Arc::new(e)));
        }
        let started = Instant::now();
        let seeder = shared
            .remote
            .seeder()
            .map_err(|source| MigrationError::Sync { source })?;
        let offsets = self
            .runtime
            .block_on(seeder.sync())
            .map_err(|source| MigrationError::Sync { source })?;
        let g = shared.geometry;
        let mut dirty = Vec::with_capacity(offsets.len());
        for offset in offsets {
            if offset % g.chunk_size() != 0 || offset >= g.size() {
                return Err(MigrationError::BadDirtyOffset {
                    offset,
                    chunk_size: g.chunk_size(),
                    size: g.size(),
                });
            }
            dirty.push(offset / g.chunk_size());
        }
        dirty.sort_unstable();
        dirty.dedup();
        *shared.tracker.dirty_left.lock() = Some(dirty.iter().copied().collect());
        shared.synced.mark_remote(dirty.iter().copied())?;
        {
            let mut puller = shared.puller.lock();
            if let Err(e) = puller.finalize(dirty.iter().copied()) {
                // The pull stopped between our check and now. The source is
                // suspended, so go on: a fresh pull, dirty chunks first.
                tracing::warn!("the pull had stopped ({e}); starting it again");
                let _entered = self.runtime.enter();
                *puller = Arc::new(Puller::start(
                    shared.synced.clone(),
                    g.chunk_size(),
                    g.size(),
                    shared.workers,
                    PullHeuristic::Order(dirty.clone()),
                )?);
            }
        }
        shared.lockable.unlock();
        let downtime = started.elapsed();
        shared.times.lock().finalize = Some(downtime);
        tracing::info!(dirty = dirty.len(), ?downtime, "finalized");
        *shared.dirty.lock() = Some(dirty);
        shared.phase.send_replace(Phase::Finalized);
        self.runtime.spawn(shared.clone().complete());
        self.mounted_region()
    }

    /// Waits until `policy` says it is time, then [`Self::finalize`]s.
    /// Fails without finalizing if the pull fails while waiting.
    pub fn finalize_when(
        &mut self,
        policy: FinalizePolicy,
    ) -> Result<&MountedRegion, MigrationError> {
        policy.validate()?;
        if *self.shared.phase.borrow() == Phase::Pulling {
            let shared = self.shared.clone();
            self.runtime
                .block_on(policy.wait(&shared.progress_view()))?;
        }
        self.finalize()
    }

    /// Blocks until every chunk is local and the seeder was closed, or the
    /// pull failed (then which chunks are missing). Only after finalize.
    pub fn wait_complete(&self) -> Result<Progress, MigrationError> {
        let mut phase = self.shared.phase.subscribe();
        let ended = self.runtime.block_on(async {
            match *phase.borrow() {
                Phase::Pulling => return Err(MigrationError::NotFinalized("wait_complete")),
                Phase::Complete | Phase::Failed => return Ok(()),
                Phase::Finalized => {}
            }
            // The sender lives in `shared`, which we hold: the channel
            // cannot close while we wait.
            phase
                .wait_for(|p| matches!(p, Phase::Complete | Phase::Failed))
                .await
                .map(drop)
                .map_err(|_| MigrationError::Task("the completion watcher went away".into()))
        });
        ended?;
        if let Some(e) = self.shared.failure.lock().clone() {
            return Err(self.shared.pull_failed(e));
        }
        Ok(self.progress())
    }

    /// Turns a complete leecher into the seeder of the next migration, on
    /// the same device: `app` is the application now running here.
    pub fn into_seeder(mut self, app: Arc<dyn AppControl>) -> Result<Seeder, MigrationError> {
        if *self.shared.phase.borrow() != Phase::Complete {
            let missing = self.shared.missing().len() as u64;
            return Err(MigrationError::NotComplete {
                what: "into_seeder",
                missing,
                total: self.shared.geometry.chunk_count(),
            });
        }
        let mount = self
            .mount
            .take()
            .ok_or_else(|| MigrationError::Task("the leecher's device is gone".into()))?;
        Seeder::from_parts(mount, self.shared.tracking.clone(), app, &self.runtime)
    }

    /// Stops the pull and takes the device down; the seeder is not closed
    /// (unless the migration completed, which closed it). Blocks on the
    /// runtime.
    pub fn close(mut self) -> Result<(), MigrationError> {
        self.stop();
        match self.mount.take() {
            Some(mount) => Ok(mount.close()?),
            None => Ok(()),
        }
    }

    fn stop(&self) {
        self.shared.puller.lock().abort();
        // Nothing must wait on the lock while the device goes down (a
        // kernel NBD client reads the partition table on attach).
        self.shared.lockable.unlock();
    }
}

impl Drop for Leecher {
    fn drop(&mut self) {
        if self.mount.is_some() {
            self.stop();
        }
    }
}

/// What a finalize policy looks at while it waits.
#[derive(Debug)]
pub(crate) struct ProgressView<'a> {
    shared: &'a Shared,
}

impl Shared {
    fn progress_view(&self) -> ProgressView<'_> {
        ProgressView { shared: self }
    }
}

impl ProgressView<'_> {
    /// Local chunks as a fraction of all chunks.
    pub(crate) fn fraction_local(&self) -> f64 {
        let count = self.shared.geometry.chunk_count();
        if count == 0 {
            1.0
        } else {
            let reported = self
                .shared
                .tracker
                .reported_local
                .load(std::sync::atomic::Ordering::SeqCst);
            let local = self.shared.synced.local_chunks().max(reported).min(count);
            local as f64 / count as f64
        }
    }

    /// When `open` started.
    pub(crate) fn opened_at(&self) -> Instant {
        self.shared.times.lock().opened_at
    }

    /// Resolves when a chunk becomes local; register before checking.
    pub(crate) fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.shared.tracker.changed.notified()
    }

    /// Resolves with the pull's error if it fails.
    pub(crate) async fn pull_failed(&self) -> MigrationError {
        let e = self.shared.until_pull_fails().await;
        self.shared.pull_failed(Arc::new(e))
    }
}
