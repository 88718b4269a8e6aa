//! Background push: writes changed chunks back to the remote, every interval
//! and on `sync`.
//!
//! The pusher is a stage in front of the local backend, so every write to
//! the local copy passes through it and it knows which chunks changed.
//!
//! # Behavior
//!
//! - `read_at` forwards to local.
//! - `write_at` writes to local, then marks every touched chunk dirty if it
//!   is *pushable*. Dirty is a set: a chunk written five times between pushes
//!   is pushed once, with its latest bytes.
//! - A background task pushes the dirty chunks every `interval`: `workers`
//!   tasks each take the next dirty chunk, read it whole from local and write
//!   it whole to the remote. A chunk whose push fails is marked dirty again
//!   and retried next time (background failures are logged with `tracing`).
//! - `sync` pushes every dirty chunk now, waits for that, then syncs the
//!   remote and the local backend. It returns the first push error, after
//!   trying every chunk.
//! - One push round runs at a time, so two pushes of one chunk can never
//!   reach the remote out of order. A round runs in its own task and
//!   finishes even if the `sync` that started it is cancelled.
//! - [`Pusher::close`] stops the background task, pushes what is left and
//!   rejects further reads and writes with [`BackendError::Closed`]. Dropping
//!   the pusher stops the background task without a final push.
//!
//! # Pushable chunks
//!
//! With [`Pushable::All`], every write is recorded. With
//! [`Pushable::Marked`], only writes to chunks passed to
//! [`Pusher::mark_pushable`] are; writes to other chunks reach local but are
//! never pushed. That is how the managed pipeline keeps pulled bytes from
//! being pushed straight back: the synced stage writes a pulled chunk into
//! local (through the pusher) *before* its `on_chunk_local` hook marks the
//! chunk pushable, and calls the hook *before* a first local write lands. So
//! the pull's own write is not recorded and every later write is. Use
//! `Marked` only behind a synced stage wired that way (see the crate
//! README); anywhere else use `All`.
//!
//! A dirty mark is set after the local write returns (and also if it
//! failed: pushing an unchanged chunk costs one write, missing a changed one
//! loses data), and a round clears a chunk's mark before reading it from
//! local. So a write racing a round is pushed by that round or the next.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backends::{check_range, Backend, BackendError, Result, SharedBackend};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tokio::time::{Instant, MissedTickBehavior};

use crate::chunkset::ChunkSet;
use crate::{ChunkGeometry, StageError};

/// Which chunks' writes are recorded for pushing. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushable {
    /// Every chunk.
    All,
    /// Only chunks passed to [`Pusher::mark_pushable`].
    Marked,
}

/// How a [`Pusher`] works.
#[derive(Debug, Clone, Copy)]
pub struct PusherOptions {
    /// Chunk size of the dirty set and of every push.
    pub chunk_size: u64,
    /// Time between background pushes.
    pub interval: Duration,
    /// Push tasks per round.
    pub workers: usize,
    /// Which chunks' writes are recorded.
    pub pushable: Pushable,
}

impl PusherOptions {
    /// Pushes every written chunk each second with 16 workers: frequent
    /// enough that little is lost on a crash, rare enough that a chunk being
    /// rewritten in a loop is pushed once per second, not once per write.
    pub fn new(chunk_size: u64) -> Self {
        Self {
            chunk_size,
            interval: Duration::from_secs(1),
            workers: 16,
            pushable: Pushable::All,
        }
    }
}

#[derive(Debug)]
struct Sets {
    dirty: ChunkSet,
    /// `None` means every chunk is pushable.
    pushable: Option<ChunkSet>,
    closed: bool,
}

#[derive(Debug)]
struct Shared {
    local: SharedBackend,
    remote: SharedBackend,
    geometry: ChunkGeometry,
    workers: usize,
    sets: Mutex<Sets>,
    /// Held by the running push round.
    round: Arc<tokio::sync::Mutex<()>>,
    pushed: AtomicU64,
}

impl Shared {
    /// Pushes every dirty pushable chunk; one round at a time.
    async fn push_round(self: Arc<Self>) -> Result<u64> {
        let _round = self.round.clone().lock_owned().await;
        let chunks: Arc<[u64]> = {
            let mut sets = self.sets.lock();
            let Sets {
                dirty, pushable, ..
            } = &mut *sets;
            dirty.take_where(pushable.as_ref()).into()
        };
        if chunks.is_empty() {
            return Ok(0);
        }
        let next = Arc::new(AtomicUsize::new(0));
        let mut workers = JoinSet::new();
        for _ in 0..self.workers.min(chunks.len()) {
            let (shared, chunks, next) = (self.clone(), chunks.clone(), next.clone());
            workers.spawn(async move { shared.push_worker(&chunks, &next).await });
        }
        let mut first_error = None;
        while let Some(joined) = workers.join_next().await {
            match joined.map_err(join_error)? {
                Ok(()) => {}
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(chunks.len() as u64),
        }
    }

    /// Pushes chunks off the shared list until it is used up. Keeps going
    /// after a failure so that one bad chunk does not hold up the others;
    /// returns the first failure.
    async fn push_worker(&self, chunks: &[u64], next: &AtomicUsize) -> Result<()> {
        let mut first_error = None;
        let mut buf = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(&chunk) = chunks.get(i) else {
                break;
            };
            let offset = self.geometry.chunk_offset(chunk);
            buf.resize(self.geometry.chunk_len(chunk) as usize, 0);
            let pushed = async {
                self.local.read_exact_at(&mut buf, offset).await?;
                self.remote.write_at(&buf, offset).await
            }
            .await;
            match pushed {
                Ok(()) => {
                    self.pushed.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    tracing::debug!(chunk, %error, "push failed; chunk stays dirty");
                    self.sets.lock().dirty.insert(chunk);
                    first_error.get_or_insert(error);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Runs a push round in its own task, so that cancelling the caller
    /// cannot stop a round halfway with chunks taken off the dirty set.
    async fn push_detached(self: &Arc<Self>) -> Result<u64> {
        tokio::spawn(self.clone().push_round())
            .await
            .map_err(join_error)?
    }
}

/// A panicking backend is a bug: let the panic through. A cancelled round
/// means the runtime is shutting down.
fn join_error(error: JoinError) -> BackendError {
    if error.is_panic() {
        std::panic::resume_unwind(error.into_panic());
    }
    BackendError::Closed
}

async fn run_background(shared: Arc<Shared>, interval: Duration, mut stop: watch::Receiver<()>) {
    let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
    // After a slow round, wait a full interval rather than pushing again at once.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            // A signal or a dropped sender both mean stop.
            _ = stop.changed() => return,
        }
        if let Err(error) = shared.push_detached().await {
            tracing::warn!(%error, "background push failed; will retry next interval");
        }
    }
}

/// Write-back of dirty chunks to a remote. See the module docs.
#[derive(Debug)]
pub struct Pusher {
    shared: Arc<Shared>,
    stop: watch::Sender<()>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Pusher {
    /// A pusher in front of `local`, writing back to `remote`. Both are asked
    /// for their size once and must agree. Starts the background task on the
    /// current tokio runtime.
    pub async fn start(
        local: SharedBackend,
        remote: SharedBackend,
        options: PusherOptions,
    ) -> Result<Self, StageError> {
        if options.workers == 0 {
            return Err(StageError::ZeroWorkers);
        }
        if options.interval.is_zero() {
            return Err(StageError::ZeroInterval);
        }
        let geometry = ChunkGeometry::of(local.as_ref(), options.chunk_size).await?;
        let remote_size = remote.size().await?;
        if remote_size != geometry.size() {
            return Err(StageError::SizeMismatch {
                remote: remote_size,
                local: geometry.size(),
            });
        }
        let count = geometry.chunk_count();
        let shared = Arc::new(Shared {
            local,
            remote,
            geometry,
            workers: options.workers,
            sets: Mutex::new(Sets {
                dirty: ChunkSet::new(count),
                pushable: match options.pushable {
                    Pushable::All => None,
                    Pushable::Marked => Some(ChunkSet::new(count)),
                },
                closed: false,
            }),
            round: Arc::new(tokio::sync::Mutex::new(())),
            pushed: AtomicU64::new(0),
        });
        let (stop, stopped) = watch::channel(());
        let task = tokio::spawn(run_background(shared.clone(), options.interval, stopped));
        Ok(Self {
            shared,
            stop,
            task: Mutex::new(Some(task)),
        })
    }

    /// Lets writes to `chunk` be recorded and pushed from now on (a no-op
    /// with [`Pushable::All`]).
    pub fn mark_pushable(&self, chunk: u64) -> Result<(), StageError> {
        self.shared.geometry.check_chunk(chunk)?;
        if let Some(pushable) = self.shared.sets.lock().pushable.as_mut() {
            pushable.insert(chunk);
        }
        Ok(())
    }

    /// Whether writes to `chunk` are recorded. False for indices out of range.
    pub fn is_pushable(&self, chunk: u64) -> bool {
        chunk < self.shared.geometry.chunk_count()
            && self
                .shared
                .sets
                .lock()
                .pushable
                .as_ref()
                .is_none_or(|set| set.contains(chunk))
    }

    /// Chunks waiting to be pushed.
    pub fn dirty_chunks(&self) -> u64 {
        self.shared.sets.lock().dirty.len()
    }

    /// Chunk pushes that succeeded since the start.
    pub fn pushed_chunks(&self) -> u64 {
        self.shared.pushed.load(Ordering::Relaxed)
    }

    /// The chunk layout dirty chunks are tracked in.
    pub fn geometry(&self) -> ChunkGeometry {
        self.shared.geometry
    }

    /// Stops the background task, pushes every dirty chunk and syncs the
    /// remote. Reads and writes fail with [`BackendError::Closed`] from the
    /// moment this is called; call it after the last write has returned.
    pub async fn close(&self) -> Result<()> {
        self.shared.sets.lock().closed = true;
        self.stop.send_replace(());
        let task = self.task.lock().take();
        if let Some(task) = task {
            task.await.map_err(join_error)?;
        }
        self.shared.push_detached().await?;
        self.shared.remote.sync().await
    }

    fn check_open(&self) -> Result<()> {
        if self.shared.sets.lock().closed {
            Err(BackendError::Closed)
        } else {
            Ok(())
        }
    }
}

impl Drop for Pusher {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().take() {
            task.abort();
        }
    }
}

#[async_trait]
impl Backend for Pusher {
    async fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        self.check_open()?;
        self.shared.local.read_at(buf, offset).await
    }

    async fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
        self.check_open()?;
        let g = self.shared.geometry;
        // Checked here so a bad access marks nothing and indices are valid.
        check_range(offset, data.len() as u64, g.size(), true)?;
        let written = self.shared.local.write_at(data, offset).await;
        let mut sets = self.shared.sets.lock();
        let Sets {
            dirty, pushable, ..
        } = &mut *sets;
        for chunk in g.chunks_touched(offset, data.len() as u64) {
            if pushable.as_ref().is_none_or(|set| set.contains(chunk)) {
                dirty.insert(chunk);
            }
        }
        written
    }

    async fn size(&self) -> Result<u64> {
        Ok(self.shared.geometry.size())
    }

    async fn sync(&self) -> Result<()> {
        self.check_open()?;
        self.shared.push_detached().await?;
        self.shared.remote.sync().await?;
        self.shared.local.sync().await
    }
}

#[cfg(test)]
mod tests {
    use backends::conformance::pattern;
    use backends::testing::{injected, Probe};
    use backends::MemoryBackend;

    use super::*;

    async fn pusher(
        size: usize,
        options: PusherOptions,
        remote: Probe,
    ) -> (Pusher, Arc<MemoryBackend>, Arc<Probe>) {
        let local = Arc::new(MemoryBackend::new(size as u64));
        let remote = Arc::new(remote);
        let pusher = Pusher::start(local.clone(), remote.clone(), options)
            .await
            .unwrap();
        (pusher, local, remote)
    }

    fn hourly(chunk_size: u64) -> PusherOptions {
        PusherOptions {
            interval: Duration::from_secs(3600),
            ..PusherOptions::new(chunk_size)
        }
    }

    #[tokio::test]
    async fn chunk_written_five_times_is_pushed_once() {
        let (pusher, local, remote) = pusher(256, hourly(64), Probe::memory(vec![0; 256])).await;
        for version in 1..=5u8 {
            pusher.write_at(&[version; 10], 70).await.unwrap();
        }
        assert_eq!(remote.writes(), 0);
        assert_eq!(pusher.dirty_chunks(), 1);
        pusher.sync().await.unwrap();
        assert_eq!(remote.writes(), 1);
        assert_eq!(remote.write_order(), vec![64]);
        assert_eq!(remote.contents().await.unwrap(), local.snapshot());
        assert_eq!(remote.contents().await.unwrap()[70..80], [5; 10]);
        assert_eq!(pusher.pushed_chunks(), 1);
        // Nothing dirty: the next sync pushes nothing.
        pusher.sync().await.unwrap();
        assert_eq!(remote.writes(), 1);
    }

    #[tokio::test]
    async fn reads_come_from_local() {
        let (pusher, local, remote) = pusher(64, hourly(16), Probe::memory(vec![7; 64])).await;
        local.write_at(&[3; 4], 8).await.unwrap();
        let mut buf = [0u8; 4];
        pusher.read_exact_at(&mut buf, 8).await.unwrap();
        assert_eq!(buf, [3; 4]);
        assert_eq!(remote.reads(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn background_task_pushes_every_interval() {
        let options = PusherOptions {
            interval: Duration::from_millis(100),
            ..PusherOptions::new(32)
        };
        let (pusher, _local, remote) = pusher(100, options, Probe::memory(vec![0; 100])).await;
        pusher.write_at(&[1; 50], 10).await.unwrap();
        pusher.write_at(&[2; 2], 98).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(remote.writes(), 3);
        let contents = remote.contents().await.unwrap();
        assert_eq!(contents[10..60], [1; 50]);
        assert_eq!(contents[98..], [2; 2]);
        // The short last chunk was pushed at its length.
        assert!(remote.accesses().contains(&(96, 4)));

        pusher.write_at(&[9; 1], 0).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(remote.writes(), 4);
        assert_eq!(remote.contents().await.unwrap()[0], 9);
    }

    #[tokio::test]
    async fn marked_mode_pushes_only_writes_after_mark_pushable() {
        let options = PusherOptions {
            pushable: Pushable::Marked,
            ..hourly(16)
        };
        let (pusher, local, remote) = pusher(64, options, Probe::memory(vec![0; 64])).await;
        pusher.write_at(&[1; 16], 0).await.unwrap();
        assert_eq!(local.snapshot()[..16], [1; 16]);
        assert!(!pusher.is_pushable(0));
        assert_eq!(pusher.dirty_chunks(), 0);

        pusher.mark_pushable(0).unwrap();
        pusher.sync().await.unwrap();
        assert_eq!(
            remote.writes(),
            0,
            "a write before mark_pushable is never pushed"
        );

        pusher.write_at(&[2; 16], 0).await.unwrap();
        pusher.write_at(&[3; 16], 16).await.unwrap();
        pusher.sync().await.unwrap();
        assert_eq!(remote.write_order(), vec![0]);
        assert_eq!(
            remote.contents().await.unwrap()[..32],
            [[2; 16], [0; 16]].concat()[..]
        );
        assert!(matches!(
            pusher.mark_pushable(4),
            Err(StageError::ChunkOutOfRange { index: 4, count: 4 })
        ));
    }

    #[tokio::test]
    async fn failed_push_keeps_chunk_dirty_until_it_succeeds() {
        let (pusher, _local, remote) = pusher(64, hourly(16), Probe::memory(vec![0; 64])).await;
        remote.fail_writes(injected);
        pusher.write_at(&[4; 20], 10).await.unwrap();
        assert!(matches!(
            pusher.sync().await,
            Err(BackendError::Remote(message)) if message.contains("injected")
        ));
        assert_eq!(pusher.dirty_chunks(), 2);
        remote.heal();
        pusher.sync().await.unwrap();
        assert_eq!(pusher.dirty_chunks(), 0);
        assert_eq!(remote.contents().await.unwrap()[10..30], [4; 20]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_round_uses_up_to_workers_concurrent_pushes() {
        let options = PusherOptions {
            workers: 16,
            ..hourly(8)
        };
        let remote = Probe::memory(vec![0; 64 * 8]).with_delay(Duration::from_millis(50));
        let (pusher, local, remote) = pusher(64 * 8, options, remote).await;
        pusher.write_at(&pattern(16, 0, 64 * 8), 0).await.unwrap();
        pusher.sync().await.unwrap();
        assert_eq!(remote.writes(), 64);
        assert_eq!(remote.contents().await.unwrap(), local.snapshot());
        let max = remote.max_in_flight();
        assert!(
            (8..=16).contains(&max),
            "{max} pushes in flight with 16 workers"
        );
    }

    #[tokio::test]
    async fn close_pushes_the_rest_and_rejects_access() {
        let (pusher, _local, remote) = pusher(64, hourly(16), Probe::memory(vec![0; 64])).await;
        pusher.write_at(&[6; 16], 48).await.unwrap();
        pusher.close().await.unwrap();
        assert_eq!(remote.contents().await.unwrap()[48..], [6; 16]);
        assert!(pusher.task.lock().is_none());
        assert!(matches!(
            pusher.write_at(&[1], 0).await,
            Err(BackendError::Closed)
        ));
        assert!(matches!(
            pusher.read_at(&mut [0], 0).await,
            Err(BackendError::Closed)
        ));
    }

    #[tokio::test]
    async fn dropping_stops_the_background_task() {
        let (pusher, local, _remote) = pusher(64, hourly(16), Probe::memory(vec![0; 64])).await;
        assert_eq!(Arc::strong_count(&local), 2);
        drop(pusher);
        // The aborted task drops its handle on the shared state, which
        // releases the local backend.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(Arc::strong_count(&local), 1);
    }

    #[tokio::test]
    async fn bad_options_are_rejected() {
        let local: SharedBackend = Arc::new(MemoryBackend::new(64));
        let check = |options: PusherOptions, remote_size: u64| {
            let local = local.clone();
            async move { Pusher::start(local, Arc::new(MemoryBackend::new(remote_size)), options).await }
        };
        let zero_workers = PusherOptions {
            workers: 0,
            ..hourly(16)
        };
        assert!(matches!(
            check(zero_workers, 64).await,
            Err(StageError::ZeroWorkers)
        ));
        let zero_interval = PusherOptions {
            interval: Duration::ZERO,
            ..hourly(16)
        };
        assert!(matches!(
            check(zero_interval, 64).await,
            Err(StageError::ZeroInterval)
        ));
        assert!(matches!(
            check(hourly(16), 65).await,
            Err(StageError::SizeMismatch {
                remote: 65,
                local: 64
            })
        ));
    }
}
