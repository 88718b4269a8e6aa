//! Two-phase live migration of a memory region (thesis 3.6, 4.6).
//!
//! Migration is split into a long pull phase, during which the source
//! application keeps running, and a short finalize, the only time it is
//! suspended:
//!
//! 1. The [`Seeder`] (source) shows its region to its application as a
//!    mount (crate `mount`) with a tracking stage under the device, and
//!    serves the transports' seeder service (`ReadAt`, `Size`, `Track`,
//!    `Sync`, `Close`) over any [`transports::TransportKind`].
//! 2. The [`Leecher`] (destination) calls `Track`, then pulls every chunk
//!    in the background (N workers, a heuristic order) while its own device
//!    comes up. Its region stays locked: nothing can read bytes that may
//!    still change at the source.
//! 3. [`Leecher::finalize`] calls `Sync`: the seeder suspends its
//!    application, flushes the mount and returns the chunks written since
//!    `Track`. The leecher marks them remote, queues them first, unlocks and
//!    hands out the mounted region. The downtime is one round trip plus the
//!    flush, whatever the region's size.
//! 4. Once every chunk is local the leecher calls `Close` on the seeder.
//!    A finished leecher can seed the next hop ([`Leecher::into_seeder`]).
//!
//! # Layout
//!
//! - [`app`]: [`AppControl`], how a seeder suspends and resumes its
//!   application, and [`AppGate`], a ready-made one for an application loop.
//! - [`seeder`]: [`Seeder`], [`SeederOptions`], [`SeederService`] (the
//!   transports' `Seeder` trait), [`SeederServer`].
//! - [`leecher`]: [`Leecher`], [`LeecherOptions`], [`Progress`], [`Phase`].
//! - [`policy`]: [`FinalizePolicy`], when to finalize.
//!
//! # Pipelines
//!
//! ```text
//! seeder:  app -> device -> NBD -> Tracking -> storage            (ReadAt reads storage)
//! leecher: app -> device -> NBD -> Tracking -> Lockable -> Arbitrary -> Synced -> remote seeder
//!                                     |                                  |  ^
//!                            (idle until it seeds)                  local   Puller (N workers)
//! ```
//!
//! The leecher's tracking stage is idle until the leecher becomes a seeder:
//! it is there so the migrated application keeps its mapping when its
//! region is migrated onward.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use backends::MemoryBackend;
//! use migration::{AppGate, Leecher, LeecherOptions, Seeder, SeederOptions};
//! use transports::{TransportConfig, TransportKind};
//!
//! let runtime = tokio::runtime::Runtime::new()?;
//! let gate = Arc::new(AppGate::default());
//! let storage = Arc::new(MemoryBackend::new(64 << 20));
//! let seeder = Seeder::open(storage, SeederOptions::new(64 << 10), gate.clone(), runtime.handle())?;
//! let server = seeder.serve(TransportKind::Frpc, "127.0.0.1:0".parse()?, TransportConfig::default())?;
//!
//! // On the destination (here the same process):
//! let client = runtime.block_on(TransportKind::Frpc.connect(server.addr(), &TransportConfig::default()))?;
//! let mut leecher = Leecher::open(client.seeder(), LeecherOptions::new(64 << 10), runtime.handle())?;
//! let region = leecher.finalize()?;        // suspends the source app via `gate`
//! let map = region.map()?;                 // the application resumes here
//! drop(map);
//! leecher.wait_complete()?;                // 100% local, seeder closed
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod app;
pub mod leecher;
pub mod policy;
pub mod seeder;

pub use app::{AppControl, AppGate, AppPass};
pub use leecher::{Leecher, LeecherOptions, Phase, Progress};
pub use policy::FinalizePolicy;
pub use seeder::{Seeder, SeederOptions, SeederServer, SeederService, SeederStats};

use std::sync::Arc;

use backends::BackendError;
use chunks::{PullError, StageError};
use mount::MountError;
use transports::TransportError;

/// Why a migration step failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// Bringing a device up or down failed.
    #[error("mount: {0}")]
    Mount(#[from] MountError),
    /// Building a pipeline stage failed.
    #[error("pipeline set-up: {0}")]
    Stage(#[from] StageError),
    /// The background pull could not be started.
    #[error("starting the background pull: {0}")]
    PullSetup(#[from] PullError),
    /// The seeder's own storage failed (e.g. asking its size).
    #[error("the seeder's storage: {0}")]
    Storage(#[source] BackendError),
    /// A call to the remote seeder failed.
    #[error("the seeder's {call} failed: {source}")]
    Seeder {
        call: &'static str,
        #[source]
        source: BackendError,
    },
    /// Finalize's `Sync` failed: the region stays locked, the seeder has
    /// resumed its application if it could, and finalize may be retried.
    #[error("finalize: the seeder's Sync failed, the region stays locked: {source}")]
    Sync {
        #[source]
        source: BackendError,
    },
    /// The background pull stopped before every chunk was local.
    #[error(
        "the pull stopped with {missing} of {total} chunks not local (first missing: {first_missing:?}): {source}"
    )]
    PullFailed {
        missing: u64,
        total: u64,
        /// Up to eight of the missing chunk indices, ascending.
        first_missing: Vec<u64>,
        #[source]
        source: Arc<PullError>,
    },
    /// The seeder's `Sync` named an offset that is not a chunk of this region.
    #[error(
        "the seeder returned dirty offset {offset}, not the start of a {chunk_size}-byte chunk of this {size}-byte region (seeder and leecher must use one chunk size)"
    )]
    BadDirtyOffset {
        offset: u64,
        chunk_size: u64,
        size: u64,
    },
    /// Serving or connecting a transport failed.
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    /// An option outside its allowed range.
    #[error("invalid migration option `{option}`: {value} (allowed: {allowed})")]
    Option {
        option: &'static str,
        value: String,
        allowed: &'static str,
    },
    /// A step that needs a finalized leecher was asked of one still pulling.
    #[error("{0} needs a finalized leecher; call finalize first")]
    NotFinalized(&'static str),
    /// A step that needs every chunk local was asked too early.
    #[error(
        "{what} needs a finished migration, but {missing} of {total} chunks are not local yet"
    )]
    NotComplete {
        what: &'static str,
        missing: u64,
        total: u64,
    },
    /// A background task of ours panicked or was cancelled.
    #[error("a background task of the migration ended abnormally: {0}")]
    Task(String),
}
