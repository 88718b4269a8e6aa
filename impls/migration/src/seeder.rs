//! The source of a migration: the region as a mount for its application,
//! and the seeder service for the destination.
//!
//! # Behavior
//!
//! - **`Track`** flushes the device first, so writes the application made
//!   before it are in storage (and are not reported dirty), then starts
//!   recording the chunks written through the device.
//! - **`ReadAt`** reads storage, under the device. A chunk read while the
//!   application is changing it may be torn; that chunk is written after
//!   `Track`, so `Sync` reports it and the leecher pulls it again.
//! - **`Sync`** suspends the application ([`AppControl::suspend`]), flushes
//!   the device (`fsync`, which writes back the pages every mapping of it
//!   dirtied, as `msync` does) and returns the offsets of every chunk
//!   written since `Track` (or the last `Dirty`), ascending. The set is not cleared: a leecher
//!   that lost the reply and calls again gets everything again, never less
//!   (the transports' `BackendSeeder` clears; a lost reply there loses
//!   chunks). If suspending or flushing fails, the application is resumed
//!   and `Sync` fails; the dirty record is kept, so `Sync` can be retried.
//!   On success the application stays suspended: it now runs at the
//!   destination.
//! - **`Dirty`** (the rounds of an iterative pre-copy) flushes and returns
//!   the chunks written since `Track` or the previous `Dirty`, and starts a
//!   new round, without suspending the application. A later `Sync` returns
//!   only what was written after the last `Dirty`: what a pre-copy's final
//!   stop-and-copy still has to move. (A `Dirty` reply that is lost loses
//!   its round; a pre-copy that loses one must start over.)
//! - **`Close`** ends the service: every later call fails with
//!   [`BackendError::Closed`], and [`Seeder::wait_closed`] returns. Taking
//!   the device and server down is the owner's [`Seeder::close`] and
//!   [`SeederServer::stop`].
//!
//! # Limitations
//!
//! - Only writes that pass through the device are tracked; writes to the
//!   storage behind it are invisible.
//! - The dirty offsets carry no length: leecher and seeder must use one
//!   chunk size (the leecher rejects offsets that are not its chunk starts).

use std::collections::BTreeSet;
use std::fs::File;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backends::{BackendError, Result, SharedBackend};
use chunks::{ChunkGeometry, TrackingReadWriterAt};
use mount::{DirectMount, MountOptions, MountedRegion};
use parking_lot::Mutex;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use transports::{ServeStats, Services, TransportConfig, TransportError, TransportKind};

use crate::app::AppControl;
use crate::MigrationError;

/// How a seeder is set up.
#[derive(Debug, Clone)]
pub struct SeederOptions {
    /// Bytes per tracked chunk; a power of two, and the leecher's chunk size.
    pub chunk_size: u64,
    /// The device and its hooks.
    pub mount: MountOptions,
}

impl SeederOptions {
    /// Default mount options with `chunk_size`-byte chunks.
    pub fn new(chunk_size: u64) -> Self {
        Self {
            chunk_size,
            mount: MountOptions::default(),
        }
    }
}

pub(crate) fn check_chunk_size(chunk_size: u64) -> Result<(), MigrationError> {
    if chunk_size.is_power_of_two() {
        Ok(())
    } else {
        Err(MigrationError::Option {
            option: "chunk_size",
            value: chunk_size.to_string(),
            allowed: "a power of two",
        })
    }
}

/// What a seeder has done so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeederStats {
    /// `Track` was called.
    pub tracking: bool,
    /// A `Sync` succeeded: the application is suspended for good.
    pub suspended: bool,
    /// `Close` was called.
    pub closed: bool,
    /// `ReadAt` calls served and the bytes they returned.
    pub reads: u64,
    pub bytes_read: u64,
    /// `Sync` calls that succeeded.
    pub syncs: u64,
    /// Chunks written since `Track` or the last `Dirty` (as of the last
    /// `Sync`).
    pub dirty_chunks: u64,
    /// `Dirty` rounds served.
    pub rounds: u64,
    /// How long the last successful `Sync`'s flush took (the `msync` share
    /// of the downtime).
    pub last_sync_flush: Option<Duration>,
}

#[derive(Debug, Default)]
struct ServiceState {
    tracking: bool,
    suspended: bool,
    /// Chunk indices written since `Track` or the last `Dirty`, kept
    /// across `Sync`s.
    dirty: BTreeSet<u64>,
    syncs: u64,
    /// `Dirty` rounds served.
    rounds: u64,
    last_sync_flush: Option<Duration>,
}

/// The transports' [`transports::Seeder`] service of one seeder. Serve it
/// with [`Seeder::serve`] or hand it to a leecher in the same process.
pub struct SeederService {
    tracking: Arc<TrackingReadWriterAt>,
    storage: SharedBackend,
    /// Held open for the seeder's life: a FUSE open drops the file's page
    /// cache, which would make the application fault its pages in again at
    /// every flush.
    device: Mutex<Option<Arc<File>>>,
    app: Arc<dyn AppControl>,
    geometry: ChunkGeometry,
    state: Mutex<ServiceState>,
    /// `Track` and `Sync` one at a time: each flushes and then changes the
    /// record, and interleaving two would report a flush that did not cover
    /// the other's writes.
    protocol: tokio::sync::Mutex<()>,
    closed: CancellationToken,
    reads: AtomicU64,
    bytes_read: AtomicU64,
}

impl std::fmt::Debug for SeederService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeederService")
            .field("geometry", &self.geometry)
            .field("app", &self.app)
            .field("stats", &self.stats())
            .finish()
    }
}

impl SeederService {
    /// What the service has done so far.
    pub fn stats(&self) -> SeederStats {
        let state = self.state.lock();
        SeederStats {
            tracking: state.tracking,
            suspended: state.suspended,
            closed: self.closed.is_cancelled(),
            reads: self.reads.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            syncs: state.syncs,
            dirty_chunks: state.dirty.len() as u64,
            rounds: state.rounds,
            last_sync_flush: state.last_sync_flush,
        }
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.is_cancelled() {
            Err(BackendError::Closed)
        } else {
            Ok(())
        }
    }

    /// Writes every page the application dirtied back through the device,
    /// where the tracking stage sees it.
    async fn flush(&self) -> Result<()> {
        let device = self.device.lock().clone().ok_or(BackendError::Closed)?;
        // fsync blocks until the device (served by this runtime) has taken
        // every page: run it off the runtime's workers.
        tokio::task::spawn_blocking(move || device.sync_all())
            .await
            .map_err(|e| BackendError::Remote(format!("the flush task ended abnormally: {e}")))?
            .map_err(|e| BackendError::Remote(format!("flushing the region's device failed: {e}")))
    }

    async fn run_app(&self, suspend: bool) -> std::result::Result<(), String> {
        let app = self.app.clone();
        tokio::task::spawn_blocking(move || {
            if suspend {
                app.suspend()
            } else {
                app.resume();
                Ok(())
            }
        })
        .await
        .unwrap_or_else(|e| Err(format!("the application hook ended abnormally: {e}")))
    }

    async fn resume_after(&self, error: String) -> BackendError {
        tracing::warn!(%error, "Sync failed; resuming the source application");
        if let Err(e) = self.run_app(false).await {
            tracing::error!("resuming the source application: {e}");
        }
        BackendError::Remote(format!("{error}; the source application was resumed"))
    }
}

#[async_trait]
impl transports::Seeder for SeederService {
    async fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        self.check_open()?;
        let n = self.storage.read_at(buf, offset).await?;
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    async fn size(&self) -> Result<u64> {
        self.check_open()?;
        Ok(self.geometry.size())
    }

    async fn track(&self) -> Result<()> {
        self.check_open()?;
        let _protocol = self.protocol.lock().await;
        // Writes made before Track reach storage now, untracked; the
        // leecher reads only after Track returns, so it sees them.
        self.flush().await?;
        self.tracking.track();
        let mut state = self.state.lock();
        state.tracking = true;
        state.dirty.clear();
        tracing::debug!("tracking writes");
        Ok(())
    }

    async fn sync(&self) -> Result<Vec<u64>> {
        self.check_open()?;
        let _protocol = self.protocol.lock().await;
        if !self.state.lock().tracking {
            return Err(BackendError::Remote(
                "Sync before Track: no writes have been recorded".into(),
            ));
        }
        if let Err(e) = self.run_app(true).await {
            return Err(self
                .resume_after(format!("suspending the application failed: {e}"))
                .await);
        }
        let flush_started = std::time::Instant::now();
        if let Err(e) = self.flush().await {
            return Err(self.resume_after(e.to_string()).await);
        }
        let mut state = self.state.lock();
        state.last_sync_flush = Some(flush_started.elapsed());
        state.dirty.extend(self.tracking.take_dirty());
        state.suspended = true;
        state.syncs += 1;
        let chunk_size = self.geometry.chunk_size();
        tracing::debug!(dirty = state.dirty.len(), "synced; application suspended");
        Ok(state.dirty.iter().map(|c| c * chunk_size).collect())
    }

    async fn dirty(&self) -> Result<Vec<u64>> {
        self.check_open()?;
        let _protocol = self.protocol.lock().await;
        if !self.state.lock().tracking {
            return Err(BackendError::Remote(
                "Dirty before Track: no writes have been recorded".into(),
            ));
        }
        self.flush().await?;
        let mut state = self.state.lock();
        let mut round = std::mem::take(&mut state.dirty);
        round.extend(self.tracking.take_dirty());
        state.rounds += 1;
        let chunk_size = self.geometry.chunk_size();
        tracing::debug!(dirty = round.len(), round = state.rounds, "pre-copy round");
        Ok(round.into_iter().map(|c| c * chunk_size).collect())
    }

    async fn close(&self) -> Result<()> {
        self.closed.cancel();
        tracing::debug!("closed by the leecher");
        Ok(())
    }
}

/// The source of a migration. See the module docs.
#[derive(Debug)]
pub struct Seeder {
    service: Arc<SeederService>,
    mount: DirectMount,
    runtime: Handle,
}

impl Seeder {
    /// Shows `storage` to the application as a device with a tracking
    /// stage under it. Blocks on `runtime`: call it from outside.
    pub fn open(
        storage: SharedBackend,
        options: SeederOptions,
        app: Arc<dyn AppControl>,
        runtime: &Handle,
    ) -> Result<Self, MigrationError> {
        check_chunk_size(options.chunk_size)?;
        let tracking =
            Arc::new(runtime.block_on(TrackingReadWriterAt::new(storage, options.chunk_size))?);
        let mount = DirectMount::open(tracking.clone(), options.mount, runtime)?;
        Self::from_parts(mount, tracking, app, runtime)
    }

    /// A seeder over a mount whose device already writes through
    /// `tracking` (a finished leecher's).
    pub(crate) fn from_parts(
        mount: DirectMount,
        tracking: Arc<TrackingReadWriterAt>,
        app: Arc<dyn AppControl>,
        runtime: &Handle,
    ) -> Result<Self, MigrationError> {
        let path = mount.region().path().to_owned();
        // Read-only: fsync works on it, and closing it does not flush.
        let device = match File::open(&path) {
            Ok(file) => file,
            Err(source) => {
                if let Err(e) = mount.close() {
                    tracing::warn!("taking the seeder's device down: {e}");
                }
                return Err(mount::MountError::Device { path, source }.into());
            }
        };
        let service = Arc::new(SeederService {
            storage: tracking.inner().clone(),
            geometry: tracking.geometry(),
            tracking,
            device: Mutex::new(Some(Arc::new(device))),
            app,
            state: Mutex::new(ServiceState::default()),
            protocol: tokio::sync::Mutex::new(()),
            closed: CancellationToken::new(),
            reads: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
        });
        Ok(Self {
            service,
            mount,
            runtime: runtime.clone(),
        })
    }

    /// The region as the application uses it: path, file and slice APIs.
    pub fn region(&self) -> &MountedRegion {
        self.mount.region()
    }

    /// The seeder service, to serve or to call in-process.
    pub fn service(&self) -> Arc<SeederService> {
        self.service.clone()
    }

    /// What the service has done so far.
    pub fn stats(&self) -> SeederStats {
        self.service.stats()
    }

    /// Whether the leecher has called `Close`.
    pub fn is_closed(&self) -> bool {
        self.service.closed.is_cancelled()
    }

    /// Blocks until the leecher calls `Close` (true) or `limit` passes
    /// (false). Call it from outside the runtime.
    pub fn wait_closed(&self, limit: Duration) -> bool {
        let closed = self.service.closed.clone();
        self.runtime
            .block_on(async { tokio::time::timeout(limit, closed.cancelled()).await })
            .is_ok()
    }

    /// Serves the seeder service over `kind` on `addr` (port 0 picks one)
    /// until [`SeederServer::stop`]. Blocks on the runtime to bind.
    pub fn serve(
        &self,
        kind: TransportKind,
        addr: SocketAddr,
        config: TransportConfig,
    ) -> Result<SeederServer, MigrationError> {
        config.validate()?;
        let listener = self
            .runtime
            .block_on(tokio::net::TcpListener::bind(addr))
            .map_err(|source| TransportError::Serve { kind, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| TransportError::Serve { kind, source })?;
        let shutdown = CancellationToken::new();
        let services = Services::seeder(self.service.clone());
        let task = self
            .runtime
            .spawn(kind.serve(listener, services, config, shutdown.clone()));
        tracing::debug!(%kind, %addr, "serving the seeder");
        Ok(SeederServer {
            addr,
            kind,
            shutdown,
            task: Some(task),
            runtime: self.runtime.clone(),
        })
    }

    /// Takes the device down: the service fails every later call. The
    /// application must have dropped its mappings. Blocks on the runtime.
    pub fn close(self) -> Result<(), MigrationError> {
        self.service.closed.cancel();
        // Our descriptor must go first, or the unmount only detaches lazily.
        self.service.device.lock().take();
        Ok(self.mount.close()?)
    }
}

/// A running seeder server. Dropping it asks it to stop without waiting.
#[derive(Debug)]
pub struct SeederServer {
    addr: SocketAddr,
    kind: TransportKind,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<ServeStats, TransportError>>>,
    runtime: Handle,
}

impl SeederServer {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The transport it speaks.
    pub fn kind(&self) -> TransportKind {
        self.kind
    }

    /// Stops accepting, lets connections finish what is in flight (up to
    /// the config's linger) and returns what all connections carried.
    /// Blocks on the runtime.
    pub fn stop(mut self) -> Result<ServeStats, MigrationError> {
        self.shutdown.cancel();
        let Some(task) = self.task.take() else {
            return Err(MigrationError::Task(
                "the server was already stopped".into(),
            ));
        };
        match self.runtime.block_on(task) {
            Ok(served) => Ok(served?),
            Err(e) => Err(MigrationError::Task(format!("the seeder server: {e}"))),
        }
    }

    /// Ends the server at once, as a crash would: calls in flight get no
    /// reply and the connections close (for the transports whose
    /// connections live inside the server's task: frpc, jsonl, tarpc, raw).
    /// Blocks on the runtime until the task is gone.
    pub fn kill(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
            // A cancelled task's JoinError is the expected outcome here.
            let _ = self.runtime.block_on(task);
        }
    }
}

impl Drop for SeederServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
