//! [`ManagedMount`]: the managed pipeline behind the local NBD server
//! (thesis 3.5.2-3, 4.5).
//!
//! ```text
//! device -> NBD -> ArbitraryReadWriterAt -> SyncedReadWriterAt -> remote
//!                                              |        ^
//!                                           Pusher   Puller (N workers)
//!                                              |
//!                                            local
//! ```
//!
//! The puller starts before the device comes up (the thesis's concurrent
//! initialization, 4.5.6), so chunks arrive while the mount is still being
//! set up; [`ManagedOptions::prepull_chunks`] makes `open` wait for the
//! first chunks of the pull order, trading set-up time for a first access
//! that is already local.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use backends::{MemoryBackend, SharedBackend};
use chunks::{
    ArbitraryReadWriterAt, PullHeuristic, Puller, Pushable, Pusher, PusherOptions,
    SyncedReadWriterAt,
};
use tokio::runtime::Handle;
use tokio::sync::Notify;

use crate::device::Device;
use crate::region::{MountOptions, MountedRegion};
use crate::MountError;

/// How a managed mount pulls and pushes.
#[derive(Debug, Clone)]
pub struct ManagedOptions {
    /// Bytes one pull or push moves; a power of two.
    pub chunk_size: u64,
    /// Background pull tasks; 0 pulls nothing ahead (chunks are still
    /// fetched, once, when first read).
    pub pull_workers: usize,
    /// The order the puller fetches chunks in.
    pub pull_heuristic: PullHeuristic,
    /// Time between background pushes of dirty chunks.
    pub push_interval: Duration,
    /// Push tasks per round.
    pub push_workers: usize,
    /// Chunks, first in pull order, that must be local before `open`
    /// returns.
    pub prepull_chunks: u64,
    /// The local cache; a memory backend of the remote's size when `None`.
    pub local: Option<SharedBackend>,
}

impl ManagedOptions {
    /// The thesis's defaults: 512 pull workers in linear order, a push
    /// every second by 16 workers, nothing waited for at open.
    pub fn new(chunk_size: u64) -> Self {
        Self {
            chunk_size,
            pull_workers: 512,
            pull_heuristic: PullHeuristic::Linear,
            push_interval: Duration::from_secs(1),
            push_workers: 16,
            prepull_chunks: 0,
            local: None,
        }
    }

    fn validate(&self) -> Result<(), MountError> {
        if !self.chunk_size.is_power_of_two() {
            return Err(MountError::Option {
                option: "chunk_size",
                value: self.chunk_size.to_string(),
                allowed: "a power of two",
            });
        }
        if self.push_workers == 0 {
            return Err(MountError::Option {
                option: "push_workers",
                value: "0".into(),
                allowed: "at least 1",
            });
        }
        if self.push_interval.is_zero() {
            return Err(MountError::Option {
                option: "push_interval",
                value: "0s".into(),
                allowed: "more than zero",
            });
        }
        Ok(())
    }
}

/// What a managed mount has done so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManagedStats {
    pub chunk_size: u64,
    pub chunk_count: u64,
    /// Chunks served from the local cache (pulled or written).
    pub local_chunks: u64,
    /// Chunk reads the background puller completed.
    pub pulled_chunks: u64,
    /// Chunks written and not yet pushed.
    pub dirty_chunks: u64,
    /// Chunk pushes done.
    pub pushed_chunks: u64,
    /// From the start of `open` to the background pull's end, once it
    /// has pulled every chunk.
    pub pull_time: Option<Duration>,
}

/// A remote region behind the managed pipeline, as a local device.
#[derive(Debug)]
pub struct ManagedMount {
    region: MountedRegion,
    synced: Arc<SyncedReadWriterAt>,
    pusher: Arc<Pusher>,
    puller: Option<Arc<Puller>>,
    opened_at: Instant,
    pulled_at: Arc<OnceLock<Instant>>,
    /// Dropped with the mount: tells the pull's watcher to let go.
    _alive: tokio::sync::oneshot::Sender<()>,
    runtime: Handle,
}

impl ManagedMount {
    /// Builds the pipeline over `remote`, starts pulling, then brings the
    /// device up. Blocks on `runtime`: call it from outside the runtime.
    pub fn open(
        remote: SharedBackend,
        managed: ManagedOptions,
        options: MountOptions,
        runtime: &Handle,
    ) -> Result<Self, MountError> {
        managed.validate()?;
        let opened_at = Instant::now();
        let chunk_size = managed.chunk_size;
        let size = runtime.block_on(remote.size())?;
        let local = match managed.local.clone() {
            Some(local) => local,
            None => Arc::new(MemoryBackend::new(size)) as SharedBackend,
        };
        let pusher = Arc::new(runtime.block_on(Pusher::start(
            local,
            remote.clone(),
            PusherOptions {
                chunk_size,
                interval: managed.push_interval,
                workers: managed.push_workers,
                pushable: Pushable::Marked,
            },
        ))?);
        let became_local = Arc::new(Notify::new());
        let synced = {
            let pusher = pusher.clone();
            let notify = became_local.clone();
            let user_hook = options.hooks.on_chunk_local.clone();
            let synced = runtime.block_on(SyncedReadWriterAt::new(
                remote,
                pusher.clone() as SharedBackend,
                chunk_size,
            ))?;
            Arc::new(synced.with_on_chunk_local(move |chunk| {
                // Pulled bytes are not pushed back; writes after this are.
                if let Err(e) = pusher.mark_pushable(chunk) {
                    tracing::error!(chunk, "marking a local chunk pushable: {e}");
                }
                if let Some(hook) = &user_hook {
                    hook(chunk * chunk_size);
                }
                notify.notify_waiters();
            }))
        };
        let served: SharedBackend = Arc::new(ArbitraryReadWriterAt::with_geometry(
            synced.clone(),
            synced.geometry(),
        ));

        // Concurrent initialization: the pull runs while the device comes up.
        let first_chunks = managed
            .pull_heuristic
            .order(synced.geometry().chunk_count())?;
        let pulled_at = Arc::new(OnceLock::new());
        let (alive, mount_gone) = tokio::sync::oneshot::channel::<()>();
        let puller = if managed.pull_workers == 0 {
            None
        } else {
            let _entered = runtime.enter();
            let puller = Arc::new(Puller::start(
                synced.clone(),
                chunk_size,
                size,
                managed.pull_workers,
                managed.pull_heuristic.clone(),
            )?);
            let (watched, done) = (puller.clone(), pulled_at.clone());
            // Records when the pull completes. It lets go of the puller when
            // the mount is dropped, so the puller's own drop aborts it.
            runtime.spawn(async move {
                tokio::select! {
                    ended = watched.wait() => {
                        if ended.is_ok() {
                            let _ = done.set(Instant::now());
                        }
                    }
                    _ = mount_gone => {}
                }
            });
            Some(puller)
        };
        let wanted: Vec<u64> = first_chunks
            .into_iter()
            .take(usize::try_from(managed.prepull_chunks).unwrap_or(usize::MAX))
            .collect();
        let device = Device::expose(served, size, &options.device, runtime)?;
        let mount = Self {
            region: MountedRegion::new(device, size, options.device.read_only, options.hooks),
            synced,
            pusher,
            puller,
            opened_at,
            pulled_at,
            _alive: alive,
            runtime: runtime.clone(),
        };
        if !wanted.is_empty() {
            mount.wait_local(&wanted, &became_local)?;
        }
        Ok(mount)
    }

    /// Waits until every chunk of `wanted` is local, or the pull ends
    /// without them (then the pull's error, if it failed).
    fn wait_local(&self, wanted: &[u64], became_local: &Notify) -> Result<(), MountError> {
        let Some(puller) = &self.puller else {
            return Err(MountError::Option {
                option: "prepull_chunks",
                value: wanted.len().to_string(),
                allowed: "0 when pull_workers is 0",
            });
        };
        self.runtime.block_on(async {
            loop {
                let changed = became_local.notified();
                if wanted.iter().all(|&c| self.synced.is_local(c)) {
                    return Ok(());
                }
                if puller.is_finished() {
                    puller.wait().await?;
                    return Ok(());
                }
                // A short bound: a worker finishing without a new local
                // chunk (it failed) wakes no one.
                let _ = tokio::time::timeout(Duration::from_millis(50), changed).await;
            }
        })
    }

    /// The path, file and slice APIs.
    pub fn region(&self) -> &MountedRegion {
        &self.region
    }

    /// Counters of the pipeline.
    pub fn stats(&self) -> ManagedStats {
        let geometry = self.synced.geometry();
        ManagedStats {
            chunk_size: geometry.chunk_size(),
            chunk_count: geometry.chunk_count(),
            local_chunks: self.synced.local_chunks(),
            pulled_chunks: self.puller.as_ref().map_or(0, |p| p.progress().pulled),
            dirty_chunks: self.pusher.dirty_chunks(),
            pushed_chunks: self.pusher.pushed_chunks(),
            pull_time: self.pulled_at.get().map(|t| *t - self.opened_at),
        }
    }

    /// Whether the chunk holding byte `offset` is local.
    pub fn is_local(&self, offset: u64) -> bool {
        let chunk_size = self.synced.geometry().chunk_size();
        self.synced.is_local(offset / chunk_size)
    }

    /// Blocks until the background pull is done; its error if it failed.
    pub fn wait_pulled(&self) -> Result<(), MountError> {
        match &self.puller {
            Some(puller) => {
                self.runtime.block_on(puller.wait())?;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Runs the before-close hook, syncs (which pushes every dirty chunk),
    /// takes the device down, stops the pull and the pusher.
    pub fn close(self) -> Result<(), MountError> {
        let synced = self.region.prepare_close();
        let closed = self.region.into_device().close();
        if let Some(puller) = &self.puller {
            puller.abort();
        }
        let pushed = self
            .runtime
            .block_on(self.pusher.close())
            .map_err(MountError::from);
        synced.and(closed).and(pushed)
    }
}
