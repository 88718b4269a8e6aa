//! Background pull: reads every chunk once, in a chosen order, with N async
//! workers.
//!
//! The puller copies nothing itself. It reads each chunk through the backend
//! it is given, normally a [`crate::SyncedReadWriterAt`], whose read is what
//! fetches the chunk and keeps it locally. Reading through the synced stage
//! also means chunks the application reads first (on demand) are not fetched
//! twice: the puller's later read of them is local.
//!
//! # Behavior
//!
//! - [`Puller::start`] orders the chunks with a [`PullHeuristic`] and spawns
//!   `workers` tokio tasks (not OS threads). Each task takes the next chunk
//!   off the shared queue and reads it, until the queue is empty. With a
//!   remote that answers slowly, every worker has a read in flight, so a few
//!   hundred workers keep a few hundred requests outstanding on one or two
//!   OS threads.
//! - Each read needs a chunk-sized buffer, so memory in use is about
//!   `workers * chunk_size` at worst.
//! - **Errors stop the pull.** The first failed read is kept, the queue is
//!   cleared, the other workers finish the read they are in and exit, and
//!   [`Puller::wait`] returns [`PullError::Chunk`]. Chunks not pulled stay
//!   remote in the synced stage and are still fetched on demand. Stopping
//!   rather than collecting keeps one broken remote from producing a million
//!   identical errors.
//! - [`Puller::finalize`] puts chunks at the front of the queue (migration:
//!   chunks the source dirtied after they were pulled, after marking them
//!   remote in the synced stage). If the workers have already finished,
//!   new ones are started for those chunks.
//! - [`Puller::abort`] and dropping the `Puller` cancel every worker at its
//!   next await point.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use backends::{BackendError, SharedBackend};
use parking_lot::Mutex;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::{copy_error, ChunkGeometry, StageError};

/// The order chunks are pulled in.
#[derive(Clone)]
pub enum PullHeuristic {
    /// Ascending chunk index.
    Linear,
    /// Descending chunk index.
    Reverse,
    /// A shuffle that depends only on `seed`, so runs can be repeated.
    Random { seed: u64 },
    /// These chunks first, in this order; chunks not listed follow in
    /// ascending order. An index out of range or listed twice is an error.
    Order(Vec<u64>),
    /// The thesis's "pull priority": a function of the chunk index, higher
    /// pulled first, ties in ascending index order.
    Priority(Arc<dyn Fn(u64) -> i64 + Send + Sync>),
}

impl std::fmt::Debug for PullHeuristic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Linear => f.write_str("Linear"),
            Self::Reverse => f.write_str("Reverse"),
            Self::Random { seed } => f.debug_struct("Random").field("seed", seed).finish(),
            Self::Order(order) => f.debug_tuple("Order").field(&order.len()).finish(),
            Self::Priority(_) => f.write_str("Priority(..)"),
        }
    }
}

impl PullHeuristic {
    /// A [`PullHeuristic::Priority`] from a closure.
    pub fn priority(f: impl Fn(u64) -> i64 + Send + Sync + 'static) -> Self {
        Self::Priority(Arc::new(f))
    }

    /// The pull order of `0..chunk_count` under this heuristic.
    pub fn order(&self, chunk_count: u64) -> Result<Vec<u64>, PullError> {
        let mut order: Vec<u64> = (0..chunk_count).collect();
        match self {
            Self::Linear => {}
            Self::Reverse => order.reverse(),
            Self::Random { seed } => shuffle(&mut order, *seed),
            Self::Order(first) => {
                let mut listed = HashSet::with_capacity(first.len());
                for &index in first {
                    if index >= chunk_count {
                        return Err(StageError::ChunkOutOfRange {
                            index,
                            count: chunk_count,
                        }
                        .into());
                    }
                    if !listed.insert(index) {
                        return Err(PullError::DuplicateChunk { index });
                    }
                }
                order = first.clone();
                order.extend((0..chunk_count).filter(|c| !listed.contains(c)));
            }
            Self::Priority(priority) => {
                // Stable, so equal priorities keep ascending index order.
                order.sort_by_cached_key(|&chunk| std::cmp::Reverse(priority(chunk)));
            }
        }
        Ok(order)
    }
}

/// Fisher-Yates with splitmix64: a few lines, and the order for a seed never
/// changes with a dependency's version.
fn shuffle(items: &mut [u64], seed: u64) {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    for i in (1..items.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// Why a pull could not start or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// Bad geometry, worker count or chunk index.
    #[error(transparent)]
    Setup(#[from] StageError),
    /// A custom order lists a chunk twice.
    #[error("chunk {index} appears more than once in the pull order")]
    DuplicateChunk { index: u64 },
    /// Workers are tokio tasks and need a runtime to be spawned on.
    #[error("the puller must be started from within a tokio runtime")]
    NoRuntime,
    /// Reading a chunk failed; the pull stopped there.
    #[error("pulling chunk {index} failed: {source}")]
    Chunk {
        index: u64,
        #[source]
        source: BackendError,
    },
    /// [`Puller::abort`] was called.
    #[error("the pull was aborted")]
    Aborted,
    /// A worker panicked (a bug in a backend); the pull stopped.
    #[error("a pull worker panicked")]
    WorkerPanicked,
}

/// How far a pull has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PullProgress {
    /// Chunk reads that completed.
    pub pulled: u64,
    /// Chunk reads scheduled: every chunk once, plus chunks added by
    /// [`Puller::finalize`].
    pub total: u64,
}

#[derive(Debug)]
enum Stop {
    Failed { index: u64, error: BackendError },
    Aborted,
    Panicked,
}

#[derive(Debug)]
struct State {
    queue: VecDeque<u64>,
    total: u64,
    /// Workers that have not yet decided to exit.
    running: usize,
    stop: Option<Stop>,
    tasks: Vec<AbortHandle>,
}

#[derive(Debug)]
struct Shared {
    backend: SharedBackend,
    geometry: ChunkGeometry,
    workers: usize,
    runtime: Handle,
    state: Mutex<State>,
    /// Mirrors `State::running` for `wait`, updated under the state lock.
    running: watch::Sender<usize>,
    pulled: AtomicU64,
}

impl Shared {
    /// Reserves places for new workers, up to `workers` in all and one per
    /// queued chunk. Called with the state locked, so that a worker deciding
    /// to exit and new work arriving cannot interleave; the caller spawns the
    /// reserved workers with [`Self::spawn_workers`] after unlocking.
    fn reserve_workers(&self, state: &mut State) -> usize {
        let wanted = self.workers.min(state.running + state.queue.len());
        let new = wanted.saturating_sub(state.running);
        state.running += new;
        self.running.send_replace(state.running);
        new
    }

    /// Spawns `count` reserved workers. Outside the state lock: tokio drops
    /// a task spawned on a runtime that is shutting down right away, and its
    /// slot takes the lock when dropped.
    fn spawn_workers(self: &Arc<Self>, count: usize) {
        let tasks: Vec<AbortHandle> = (0..count)
            .map(|_| {
                let slot = WorkerSlot {
                    shared: self.clone(),
                    left: false,
                };
                self.runtime.spawn(worker(slot)).abort_handle()
            })
            .collect();
        let mut state = self.state.lock();
        state.tasks.retain(|task| !task.is_finished());
        state.tasks.extend(tasks);
    }

    fn leave(&self, state: &mut State, left: &mut bool) {
        if !*left {
            *left = true;
            state.running -= 1;
            self.running.send_replace(state.running);
        }
    }
}

/// A worker's place in `State::running`. Dropping it (the worker returned,
/// was aborted, or panicked) gives the place up.
struct WorkerSlot {
    shared: Arc<Shared>,
    left: bool,
}

impl Drop for WorkerSlot {
    fn drop(&mut self) {
        if self.left {
            return;
        }
        let mut state = self.shared.state.lock();
        if std::thread::panicking() {
            state.stop.get_or_insert(Stop::Panicked);
            state.queue.clear();
        }
        self.shared.leave(&mut state, &mut self.left);
    }
}

async fn worker(mut slot: WorkerSlot) {
    let shared = slot.shared.clone();
    let geometry = shared.geometry;
    let mut buf = Vec::new();
    loop {
        let chunk = {
            let mut state = shared.state.lock();
            match state.queue.pop_front() {
                Some(chunk) if state.stop.is_none() => chunk,
                _ => {
                    shared.leave(&mut state, &mut slot.left);
                    return;
                }
            }
        };
        buf.resize(geometry.chunk_len(chunk) as usize, 0);
        let offset = geometry.chunk_offset(chunk);
        match shared.backend.read_exact_at(&mut buf, offset).await {
            Ok(()) => {
                shared.pulled.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                tracing::warn!(chunk, %error, "pull failed; stopping the pull");
                let mut state = shared.state.lock();
                state.stop.get_or_insert(Stop::Failed {
                    index: chunk,
                    error,
                });
                state.queue.clear();
                shared.leave(&mut state, &mut slot.left);
                return;
            }
        }
    }
}

/// A running background pull. Dropping it aborts the pull.
#[derive(Debug)]
pub struct Puller {
    shared: Arc<Shared>,
}

impl Puller {
    /// Starts pulling every chunk of a `size`-byte region through `backend`
    /// with `workers` tasks, in `heuristic` order. Must be called from within
    /// a tokio runtime; the workers run on it.
    pub fn start(
        backend: SharedBackend,
        chunk_size: u64,
        size: u64,
        workers: usize,
        heuristic: PullHeuristic,
    ) -> Result<Self, PullError> {
        let geometry = ChunkGeometry::new(chunk_size, size)?;
        if workers == 0 {
            return Err(StageError::ZeroWorkers.into());
        }
        let runtime = Handle::try_current().map_err(|_| PullError::NoRuntime)?;
        let order = heuristic.order(geometry.chunk_count())?;
        let (running, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            backend,
            geometry,
            workers,
            runtime,
            state: Mutex::new(State {
                total: order.len() as u64,
                queue: order.into(),
                running: 0,
                stop: None,
                tasks: Vec::new(),
            }),
            running,
            pulled: AtomicU64::new(0),
        });
        let new = shared.reserve_workers(&mut shared.state.lock());
        shared.spawn_workers(new);
        Ok(Self { shared })
    }

    /// Chunks pulled so far and chunks scheduled.
    pub fn progress(&self) -> PullProgress {
        let total = self.shared.state.lock().total;
        PullProgress {
            pulled: self.shared.pulled.load(Ordering::Relaxed),
            total,
        }
    }

    /// Whether every worker has exited (done, failed or aborted).
    pub fn is_finished(&self) -> bool {
        self.shared.state.lock().running == 0
    }

    /// Waits until every worker has exited, then reports how the pull ended.
    /// Can be called again, e.g. after [`Self::finalize`].
    pub async fn wait(&self) -> Result<PullProgress, PullError> {
        let mut running = self.shared.running.subscribe();
        // The sender lives in `self.shared`, which we hold, so the channel
        // stays open and this only returns once the count is zero.
        let _ = running.wait_for(|&n| n == 0).await;
        if let Some(stop) = self.failure() {
            return Err(stop);
        }
        Ok(self.progress())
    }

    /// Puts `chunks` at the front of the queue, in the given order, and
    /// starts workers again if they had finished. Fails without changing
    /// anything if an index is out of range or the pull was stopped.
    pub fn finalize(&self, chunks: impl IntoIterator<Item = u64>) -> Result<(), PullError> {
        let chunks: Vec<u64> = chunks.into_iter().collect();
        for &chunk in &chunks {
            self.shared.geometry.check_chunk(chunk)?;
        }
        if let Some(stop) = self.failure() {
            return Err(stop);
        }
        let new = {
            let mut state = self.shared.state.lock();
            state.total += chunks.len() as u64;
            for &chunk in chunks.iter().rev() {
                state.queue.push_front(chunk);
            }
            self.shared.reserve_workers(&mut state)
        };
        self.shared.spawn_workers(new);
        Ok(())
    }

    /// Stops the pull: clears the queue and cancels every worker.
    pub fn abort(&self) {
        let tasks = {
            let mut state = self.shared.state.lock();
            state.stop.get_or_insert(Stop::Aborted);
            state.queue.clear();
            std::mem::take(&mut state.tasks)
        };
        // Outside the lock: a cancelled worker's slot takes the lock when
        // it is dropped, which tokio may do right here if the runtime is
        // shutting down.
        for task in tasks {
            task.abort();
        }
    }

    fn failure(&self) -> Option<PullError> {
        let state = self.shared.state.lock();
        state.stop.as_ref().map(|stop| match stop {
            Stop::Failed { index, error } => PullError::Chunk {
                index: *index,
                source: copy_error(error),
            },
            Stop::Aborted => PullError::Aborted,
            Stop::Panicked => PullError::WorkerPanicked,
        })
    }
}

impl Drop for Puller {
    fn drop(&mut self) {
        self.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use backends::conformance::pattern;
    use backends::testing::{injected, Probe};
    use backends::{Backend, MemoryBackend};

    use super::*;
    use crate::SyncedReadWriterAt;

    /// Pulls 8 chunks of 16 bytes with one worker; returns the chunk order
    /// the backend saw.
    async fn order_seen(heuristic: PullHeuristic) -> Vec<u64> {
        let probe = Arc::new(Probe::memory(vec![0; 128]));
        let puller = Puller::start(probe.clone(), 16, 128, 1, heuristic).unwrap();
        let progress = puller.wait().await.unwrap();
        assert_eq!(
            progress,
            PullProgress {
                pulled: 8,
                total: 8
            }
        );
        probe
            .read_order()
            .iter()
            .map(|offset| offset / 16)
            .collect()
    }

    #[tokio::test]
    async fn heuristics_set_the_order() {
        assert_eq!(
            order_seen(PullHeuristic::Linear).await,
            (0..8).collect::<Vec<_>>()
        );
        assert_eq!(
            order_seen(PullHeuristic::Reverse).await,
            (0..8).rev().collect::<Vec<_>>()
        );
        assert_eq!(
            order_seen(PullHeuristic::Order(vec![5, 2, 7])).await,
            vec![5, 2, 7, 0, 1, 3, 4, 6]
        );
        // Closest to chunk 3 first; ties go to the lower index.
        let near_three = PullHeuristic::priority(|c| -(c as i64 - 3).abs());
        assert_eq!(order_seen(near_three).await, vec![3, 2, 4, 1, 5, 0, 6, 7]);
    }

    #[tokio::test]
    async fn random_order_is_a_seeded_permutation() {
        let a = order_seen(PullHeuristic::Random { seed: 42 }).await;
        let b = order_seen(PullHeuristic::Random { seed: 42 }).await;
        assert_eq!(a, b);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..8).collect::<Vec<_>>());
        let big = PullHeuristic::Random { seed: 42 }.order(1000).unwrap();
        let other = PullHeuristic::Random { seed: 43 }.order(1000).unwrap();
        assert_ne!(big, (0..1000).collect::<Vec<_>>());
        assert_ne!(big, other);
    }

    #[test]
    fn bad_orders_and_settings_are_rejected() {
        assert!(matches!(
            PullHeuristic::Order(vec![1, 1]).order(4),
            Err(PullError::DuplicateChunk { index: 1 })
        ));
        assert!(matches!(
            PullHeuristic::Order(vec![4]).order(4),
            Err(PullError::Setup(StageError::ChunkOutOfRange {
                index: 4,
                count: 4
            }))
        ));
        let backend: SharedBackend = Arc::new(MemoryBackend::new(64));
        assert!(matches!(
            Puller::start(backend.clone(), 16, 64, 4, PullHeuristic::Linear),
            Err(PullError::NoRuntime)
        ));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        assert!(matches!(
            Puller::start(backend.clone(), 16, 64, 0, PullHeuristic::Linear),
            Err(PullError::Setup(StageError::ZeroWorkers))
        ));
        assert!(matches!(
            Puller::start(backend, 0, 64, 1, PullHeuristic::Linear),
            Err(PullError::Setup(StageError::ZeroChunkSize))
        ));
    }

    /// 512 workers against a remote that takes 50 ms per read: with async
    /// workers, hundreds of reads are outstanding at once.
    #[tokio::test(start_paused = true)]
    async fn hundreds_of_reads_in_flight() {
        let probe =
            Arc::new(Probe::memory(vec![0; 1024 * 16]).with_delay(Duration::from_millis(50)));
        let puller =
            Puller::start(probe.clone(), 16, 1024 * 16, 512, PullHeuristic::Linear).unwrap();
        let progress = puller.wait().await.unwrap();
        assert_eq!(progress.pulled, 1024);
        assert_eq!(probe.reads(), 1024);
        let max = probe.max_in_flight();
        assert!(max >= 256, "only {max} reads were in flight at once");
        assert!(max <= 512, "{max} in flight with 512 workers");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pull_through_synced_makes_everything_local() {
        let data = pattern(15, 0, 1000);
        let remote = Arc::new(Probe::memory(data.clone()));
        let local = Arc::new(MemoryBackend::new(1000));
        let synced = Arc::new(
            SyncedReadWriterAt::new(remote.clone(), local.clone(), 64)
                .await
                .unwrap(),
        );
        let puller = Puller::start(
            synced.clone(),
            64,
            1000,
            8,
            PullHeuristic::Random { seed: 1 },
        )
        .unwrap();
        let progress = puller.wait().await.unwrap();
        assert_eq!(
            progress,
            PullProgress {
                pulled: 16,
                total: 16
            }
        );
        assert_eq!(synced.local_chunks(), 16);
        assert_eq!(local.snapshot(), data);
        assert_eq!(remote.reads(), 16);
        assert!(puller.is_finished());
    }

    #[tokio::test]
    async fn a_failed_read_stops_the_pull() {
        let probe = Arc::new(Probe::memory(vec![0; 128]));
        probe.fail_reads(injected);
        let puller = Puller::start(probe.clone(), 16, 128, 1, PullHeuristic::Reverse).unwrap();
        match puller.wait().await {
            Err(PullError::Chunk {
                index: 7,
                source: BackendError::Remote(_),
            }) => {}
            other => panic!("expected chunk 7 to fail, got {other:?}"),
        }
        assert_eq!(probe.reads(), 1);
        assert_eq!(
            puller.progress(),
            PullProgress {
                pulled: 0,
                total: 8
            }
        );
        assert!(matches!(puller.finalize([0]), Err(PullError::Chunk { .. })));
    }

    #[tokio::test]
    async fn abort_and_drop_cancel_the_workers() {
        let probe = Arc::new(Probe::memory(vec![0; 128]).with_delay(Duration::from_secs(3600)));
        let puller = Puller::start(probe.clone(), 16, 128, 4, PullHeuristic::Linear).unwrap();
        while probe.reads() < 4 {
            tokio::task::yield_now().await;
        }
        puller.abort();
        assert!(matches!(puller.wait().await, Err(PullError::Aborted)));
        assert_eq!(probe.reads(), 4);
        assert_eq!(probe.in_flight(), 0);

        let puller = Puller::start(probe.clone(), 16, 128, 2, PullHeuristic::Linear).unwrap();
        while probe.reads() < 6 {
            tokio::task::yield_now().await;
        }
        drop(puller);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(probe.in_flight(), 0);
        assert_eq!(probe.reads(), 6);
    }

    #[tokio::test]
    async fn finalize_puts_chunks_first_and_restarts_finished_workers() {
        let probe = Arc::new(Probe::memory(vec![0; 128]));
        let puller = Puller::start(probe.clone(), 16, 128, 1, PullHeuristic::Linear).unwrap();
        // The worker has not run yet on this single-threaded runtime.
        puller.finalize([6, 5]).unwrap();
        puller.wait().await.unwrap();
        let chunks = |probe: &Probe| -> Vec<u64> {
            probe
                .read_order()
                .iter()
                .map(|offset| offset / 16)
                .collect()
        };
        assert_eq!(chunks(&probe), vec![6, 5, 0, 1, 2, 3, 4, 5, 6, 7]);

        puller.finalize([2]).unwrap();
        let progress = puller.wait().await.unwrap();
        assert_eq!(
            progress,
            PullProgress {
                pulled: 11,
                total: 11
            }
        );
        assert_eq!(chunks(&probe).last(), Some(&2));
        assert!(matches!(
            puller.finalize([8]),
            Err(PullError::Setup(StageError::ChunkOutOfRange {
                index: 8,
                ..
            }))
        ));
    }

    #[tokio::test]
    async fn short_last_chunk_is_read_at_its_length() {
        let probe = Arc::new(Probe::memory(vec![0; 100]));
        Puller::start(probe.clone(), 32, 100, 2, PullHeuristic::Linear)
            .unwrap()
            .wait()
            .await
            .unwrap();
        let mut accesses = probe.accesses();
        accesses.sort_unstable();
        assert_eq!(accesses, vec![(0, 32), (32, 32), (64, 32), (96, 4)]);
        assert_eq!(probe.size().await.unwrap(), 100);
    }
}
