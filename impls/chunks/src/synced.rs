//! A local copy in front of a remote, filled chunk by chunk on first read.
//!
//! This is the stage that turns a remote region into a mount that gets faster
//! as it is used: every chunk is fetched from the remote at most once, then
//! served from the local backend. Together with the [`crate::Puller`] reading
//! through it in the background it is the pre-copy half of a managed mount;
//! reads of chunks the puller has not reached yet are the post-copy half.
//!
//! # Behavior
//!
//! Each chunk is *remote*, *busy* (being pulled, or receiving its first
//! write) or *local*.
//!
//! - **Reads** take any offset and length. Every touched chunk that is
//!   remote is pulled first: read whole from the remote, written to local,
//!   reported to the `on_chunk_local` hook, marked local. Then the read is
//!   served from local. Concurrent readers of a busy chunk wait for the
//!   pull under way instead of starting their own, so a chunk is fetched
//!   once however many readers ask. A failed pull leaves the chunk remote and
//!   hands the error to every reader that was waiting on it; the next read
//!   tries again. Chunks of one multi-chunk read are pulled one after
//!   another; put an [`crate::ArbitraryReadWriterAt`] in front (as the
//!   managed pipeline does) and reads arrive one chunk at a time anyway.
//! - **Writes** take whole chunks only: the offset is a multiple of the chunk
//!   size and the end is a chunk boundary or the end of the region. Anything
//!   else is [`BackendError::Unaligned`], because a partial write to a remote
//!   chunk would mark it local with the rest of it never fetched. A write
//!   never reads the remote: it marks the chunk local and reports it to the
//!   hook. A write to a chunk that is being pulled waits for that pull, so
//!   the pulled (older) bytes cannot land on top of the write.
//! - **`sync`** syncs the local backend only; this stage never writes the
//!   remote (that is [`crate::Pusher`]'s job).
//! - **[`SyncedReadWriterAt::mark_remote`]** makes chunks remote again so the
//!   next read re-pulls them (migration: chunks the source dirtied after
//!   they were pulled). A chunk that is busy when marked goes back to remote
//!   when its pull or write finishes, and readers that were waiting on that
//!   pull pull it again rather than read the bytes it left in local.
//!
//! # The hook
//!
//! `on_chunk_local(chunk)` runs once each time a chunk becomes local, while
//! the chunk is still busy: after the pulled bytes are in local, and before
//! a first write's bytes are written to local. So when it runs, no write
//! other than the pull's own has reached local for that chunk. The pusher
//! relies on this: it starts recording writes to a chunk when the hook marks
//! the chunk pushable, so the pull's own write is not pushed back, and the
//! first real write is. The hook must not block (it runs inside the read or
//! write that made the chunk local).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use backends::{check_range, Backend, BackendError, Result, SharedBackend};
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::chunkset::ChunkSet;
use crate::{copy_error, ChunkGeometry, StageError};

/// Called with a chunk index each time that chunk becomes local.
pub type ChunkHook = Arc<dyn Fn(u64) + Send + Sync>;

/// What the chunk's busy period ended with, as seen by its waiters.
type Outcome = Result<(), Arc<BackendError>>;

#[derive(Debug)]
struct Busy {
    /// `None` until the busy period ends; waiters watch for `Some`. If the
    /// sender is dropped without a value, the owner was cancelled and the
    /// waiters retry.
    done: watch::Receiver<Option<Outcome>>,
    /// `mark_remote` was called meanwhile: end remote instead of local.
    stale: bool,
}

#[derive(Debug)]
struct States {
    local: ChunkSet,
    busy: HashMap<u64, Busy>,
}

/// A local copy in front of a remote. See the module docs.
pub struct SyncedReadWriterAt {
    remote: SharedBackend,
    local: SharedBackend,
    geometry: ChunkGeometry,
    states: Mutex<States>,
    on_chunk_local: Option<ChunkHook>,
}

impl std::fmt::Debug for SyncedReadWriterAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncedReadWriterAt")
            .field("remote", &self.remote)
            .field("local", &self.local)
            .field("geometry", &self.geometry)
            .field("local_chunks", &self.local_chunks())
            .field("has_hook", &self.on_chunk_local.is_some())
            .finish()
    }
}

/// What `claim` found a chunk to be.
enum Claim<'a> {
    Local,
    Wait(watch::Receiver<Option<Outcome>>),
    Own(Owner<'a>),
}

/// The one task allowed to fill a busy chunk. Ending it publishes the new
/// state; dropping it unfinished (cancellation) returns the chunk to remote
/// and lets the waiters retry.
struct Owner<'a> {
    stage: &'a SyncedReadWriterAt,
    chunk: u64,
    done: Option<watch::Sender<Option<Outcome>>>,
}

impl Owner<'_> {
    fn end(&mut self, outcome: Option<Outcome>) {
        let Some(done) = self.done.take() else {
            return;
        };
        let made_local = matches!(outcome, Some(Ok(())));
        {
            let mut states = self.stage.states.lock();
            let stale = states
                .busy
                .remove(&self.chunk)
                .is_some_and(|busy| busy.stale);
            if made_local && !stale {
                states.local.insert(self.chunk);
            }
        }
        // Publish after the state changed, so woken waiters see it.
        if let Some(outcome) = outcome {
            done.send_replace(Some(outcome));
        }
    }

    fn succeed(mut self) {
        self.end(Some(Ok(())));
    }

    fn fail(mut self, error: Arc<BackendError>) {
        self.end(Some(Err(error)));
    }

    /// Ends without an outcome: waiters retry (used when a write fails,
    /// since the waiters' reads can still pull the chunk themselves).
    fn abandon(mut self) {
        self.end(None);
    }
}

impl Drop for Owner<'_> {
    fn drop(&mut self) {
        self.end(None);
    }
}

impl SyncedReadWriterAt {
    /// A synced stage over `remote` with `local` as the cache. Both are asked
    /// for their size once and must agree.
    ///
    /// Every chunk starts remote: `local`'s current contents are ignored
    /// until a chunk is pulled or written.
    pub async fn new(
        remote: SharedBackend,
        local: SharedBackend,
        chunk_size: u64,
    ) -> Result<Self, StageError> {
        let geometry = ChunkGeometry::of(remote.as_ref(), chunk_size).await?;
        let local_size = local.size().await?;
        if local_size != geometry.size() {
            return Err(StageError::SizeMismatch {
                remote: geometry.size(),
                local: local_size,
            });
        }
        Ok(Self {
            remote,
            local,
            geometry,
            states: Mutex::new(States {
                local: ChunkSet::new(geometry.chunk_count()),
                busy: HashMap::new(),
            }),
            on_chunk_local: None,
        })
    }

    /// Sets the hook called each time a chunk becomes local (see the module
    /// docs for exactly when).
    pub fn with_on_chunk_local(mut self, hook: impl Fn(u64) + Send + Sync + 'static) -> Self {
        self.on_chunk_local = Some(Arc::new(hook));
        self
    }

    /// Whether `chunk` is served from local. False for indices out of range.
    pub fn is_local(&self, chunk: u64) -> bool {
        self.states.lock().local.contains(chunk)
    }

    /// How many chunks are local.
    pub fn local_chunks(&self) -> u64 {
        self.states.lock().local.len()
    }

    /// Makes `chunks` remote again, so their next read pulls them. Checks
    /// every index before changing anything.
    pub fn mark_remote(&self, chunks: impl IntoIterator<Item = u64>) -> Result<(), StageError> {
        let chunks: Vec<u64> = chunks.into_iter().collect();
        for &chunk in &chunks {
            self.geometry.check_chunk(chunk)?;
        }
        let mut states = self.states.lock();
        for chunk in chunks {
            states.local.remove(chunk);
            if let Some(busy) = states.busy.get_mut(&chunk) {
                busy.stale = true;
            }
        }
        Ok(())
    }

    /// The chunk layout local state is kept in.
    pub fn geometry(&self) -> ChunkGeometry {
        self.geometry
    }

    /// The backend chunks are pulled from.
    pub fn remote(&self) -> &SharedBackend {
        &self.remote
    }

    /// The backend serving local chunks.
    pub fn local(&self) -> &SharedBackend {
        &self.local
    }

    fn claim(&self, chunk: u64) -> Claim<'_> {
        let mut states = self.states.lock();
        if states.local.contains(chunk) {
            return Claim::Local;
        }
        if let Some(busy) = states.busy.get(&chunk) {
            return Claim::Wait(busy.done.clone());
        }
        let (done, rx) = watch::channel(None);
        states.busy.insert(
            chunk,
            Busy {
                done: rx,
                stale: false,
            },
        );
        Claim::Own(Owner {
            stage: self,
            chunk,
            done: Some(done),
        })
    }

    /// Waits for a busy period to end; `None` means its owner went away
    /// without an outcome and the caller should look again.
    async fn wait(mut done: watch::Receiver<Option<Outcome>>) -> Option<Outcome> {
        match done.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone(),
            Err(_) => None,
        }
    }

    fn report_local(&self, chunk: u64) {
        if let Some(hook) = &self.on_chunk_local {
            hook(chunk);
        }
    }

    /// Makes `chunk` local, pulling it unless someone else already is.
    async fn ensure_local(&self, chunk: u64) -> Result<()> {
        loop {
            match self.claim(chunk) {
                Claim::Local => return Ok(()),
                // A pull that succeeded may still have left the chunk
                // remote (`mark_remote` made it stale meanwhile), so look
                // again rather than trust it: local now, or ours to pull.
                Claim::Wait(done) => match Self::wait(done).await {
                    Some(Ok(())) | None => continue,
                    Some(Err(error)) => return Err(copy_error(&error)),
                },
                Claim::Own(owner) => {
                    return match self.pull(chunk).await {
                        Ok(()) => {
                            self.report_local(chunk);
                            owner.succeed();
                            Ok(())
                        }
                        Err(error) => {
                            tracing::debug!(chunk, %error, "pull failed; chunk stays remote");
                            let error = Arc::new(error);
                            owner.fail(error.clone());
                            Err(copy_error(&error))
                        }
                    };
                }
            }
        }
    }

    async fn pull(&self, chunk: u64) -> Result<()> {
        let offset = self.geometry.chunk_offset(chunk);
        let mut buf = vec![0; self.geometry.chunk_len(chunk) as usize];
        self.remote.read_exact_at(&mut buf, offset).await?;
        self.local.write_at(&buf, offset).await
    }

    async fn write_chunk(&self, chunk: u64, data: &[u8]) -> Result<()> {
        let offset = self.geometry.chunk_offset(chunk);
        loop {
            match self.claim(chunk) {
                Claim::Local => return self.local.write_at(data, offset).await,
                // Whatever the pull ended with, look again: local now, or
                // remote and ours to write.
                Claim::Wait(done) => {
                    Self::wait(done).await;
                }
                Claim::Own(owner) => {
                    self.report_local(chunk);
                    return match self.local.write_at(data, offset).await {
                        Ok(()) => {
                            owner.succeed();
                            Ok(())
                        }
                        Err(error) => {
                            owner.abandon();
                            Err(error)
                        }
                    };
                }
            }
        }
    }
}

#[async_trait]
impl Backend for SyncedReadWriterAt {
    async fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        let n = check_range(offset, buf.len() as u64, self.geometry.size(), false)?;
        for chunk in self.geometry.chunks_touched(offset, n) {
            self.ensure_local(chunk).await?;
        }
        self.local.read_at(&mut buf[..n as usize], offset).await
    }

    async fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
        let g = self.geometry;
        check_range(offset, data.len() as u64, g.size(), true)?;
        if !g.is_whole_chunks(offset, data.len() as u64) {
            return Err(BackendError::Unaligned {
                offset,
                len: data.len() as u64,
                chunk_size: g.chunk_size(),
            });
        }
        for chunk in g.chunks_touched(offset, data.len() as u64) {
            let start = (g.chunk_offset(chunk) - offset) as usize;
            let len = g.chunk_len(chunk) as usize;
            self.write_chunk(chunk, &data[start..start + len]).await?;
        }
        Ok(())
    }

    async fn size(&self) -> Result<u64> {
        Ok(self.geometry.size())
    }

    async fn sync(&self) -> Result<()> {
        self.local.sync().await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use backends::conformance::pattern;
    use backends::testing::{injected, Probe};
    use backends::MemoryBackend;

    use super::*;

    struct Fixture {
        stage: Arc<SyncedReadWriterAt>,
        remote: Arc<Probe>,
        local: Arc<Probe>,
        hook_calls: Arc<Vec<AtomicU64>>,
        data: Vec<u8>,
    }

    async fn fixture(size: usize, chunk_size: u64, remote: Probe) -> Fixture {
        let data = remote.contents().await.unwrap();
        assert_eq!(data.len(), size);
        let remote = Arc::new(remote);
        let local = Arc::new(Probe::over(Arc::new(MemoryBackend::new(size as u64))));
        let chunks = (size as u64).div_ceil(chunk_size);
        let hook_calls: Arc<Vec<AtomicU64>> =
            Arc::new((0..chunks).map(|_| AtomicU64::new(0)).collect());
        let calls = hook_calls.clone();
        let stage = SyncedReadWriterAt::new(remote.clone(), local.clone(), chunk_size)
            .await
            .unwrap()
            .with_on_chunk_local(move |chunk| {
                calls[chunk as usize].fetch_add(1, Ordering::SeqCst);
            });
        Fixture {
            stage: Arc::new(stage),
            remote,
            local,
            hook_calls,
            data,
        }
    }

    impl Fixture {
        fn hook_counts(&self) -> Vec<u64> {
            self.hook_calls
                .iter()
                .map(|c| c.load(Ordering::SeqCst))
                .collect()
        }
    }

    #[tokio::test]
    async fn first_read_pulls_second_read_is_local() {
        let f = fixture(256, 64, Probe::memory(pattern(6, 0, 256))).await;
        let mut buf = [0u8; 16];
        f.stage.read_exact_at(&mut buf, 70).await.unwrap();
        assert_eq!(&buf, &f.data[70..86]);
        assert_eq!(f.remote.reads(), 1);
        assert_eq!(f.remote.accesses(), vec![(64, 64)]);
        assert!(f.stage.is_local(1));
        assert!(!f.stage.is_local(0));
        assert_eq!(f.stage.local_chunks(), 1);

        f.stage.read_exact_at(&mut buf, 100).await.unwrap();
        assert_eq!(&buf, &f.data[100..116]);
        assert_eq!(f.remote.reads(), 1, "second read must be served locally");
        assert_eq!(f.hook_counts(), vec![0, 1, 0, 0]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hundred_concurrent_readers_pull_once() {
        let remote = Probe::memory(pattern(7, 0, 256)).with_delay(Duration::from_millis(20));
        let f = fixture(256, 64, remote).await;
        let readers: Vec<_> = (0..100u64)
            .map(|i| {
                let stage = f.stage.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8];
                    let offset = 128 + (i % 56);
                    stage.read_exact_at(&mut buf, offset).await.unwrap();
                    (offset, buf)
                })
            })
            .collect();
        for reader in readers {
            let (offset, buf) = reader.await.unwrap();
            assert_eq!(buf, f.data[offset as usize..offset as usize + 8]);
        }
        assert_eq!(f.remote.reads(), 1);
        assert_eq!(f.hook_counts(), vec![0, 0, 1, 0]);
    }

    #[tokio::test]
    async fn hook_runs_once_per_chunk() {
        let f = fixture(100, 32, Probe::memory(pattern(8, 0, 100))).await;
        for _ in 0..3 {
            let mut all = vec![0u8; 100];
            f.stage.read_exact_at(&mut all, 0).await.unwrap();
            assert_eq!(all, f.data);
        }
        assert_eq!(f.hook_counts(), vec![1, 1, 1, 1]);
        assert_eq!(f.remote.reads(), 4);
        assert_eq!(f.stage.local_chunks(), 4);
        // The short last chunk was pulled at its real length.
        assert!(f.remote.accesses().contains(&(96, 4)));
    }

    #[tokio::test]
    async fn write_marks_local_without_a_remote_read() {
        let f = fixture(256, 64, Probe::memory(pattern(9, 0, 256))).await;
        f.stage.write_at(&[0xAB; 128], 64).await.unwrap();
        assert_eq!(f.remote.reads(), 0);
        assert_eq!(f.remote.writes(), 0);
        assert!(f.stage.is_local(1) && f.stage.is_local(2));
        assert_eq!(f.hook_counts(), vec![0, 1, 1, 0]);
        let mut buf = vec![0u8; 128];
        f.stage.read_exact_at(&mut buf, 64).await.unwrap();
        assert_eq!(buf, vec![0xAB; 128]);
        assert_eq!(f.remote.reads(), 0);
        // A second write to a local chunk does not report it again.
        f.stage.write_at(&[1; 64], 64).await.unwrap();
        assert_eq!(f.hook_counts(), vec![0, 1, 1, 0]);
    }

    #[tokio::test]
    async fn partial_writes_are_unaligned() {
        let f = fixture(100, 32, Probe::memory(pattern(10, 0, 100))).await;
        for (offset, len) in [(0u64, 31usize), (1, 32), (32, 40), (96, 3)] {
            let result = f.stage.write_at(&vec![0; len], offset).await;
            assert!(
                matches!(result, Err(BackendError::Unaligned { .. })),
                "{offset}+{len} gave {result:?}"
            );
        }
        // The short last chunk is whole at its real length.
        f.stage.write_at(&[5; 4], 96).await.unwrap();
        assert_eq!(f.local.writes(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_pull_reaches_every_waiter_and_leaves_chunk_remote() {
        let remote = Probe::memory(pattern(11, 0, 128)).with_delay(Duration::from_millis(20));
        remote.fail_reads(injected);
        let f = fixture(128, 64, remote).await;
        let readers: Vec<_> = (0..10)
            .map(|_| {
                let stage = f.stage.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4];
                    stage.read_at(&mut buf, 0).await
                })
            })
            .collect();
        for reader in readers {
            assert!(matches!(
                reader.await.unwrap(),
                Err(BackendError::Remote(message)) if message.contains("injected")
            ));
        }
        assert_eq!(f.remote.reads(), 1);
        assert!(!f.stage.is_local(0));
        assert_eq!(f.hook_counts(), vec![0, 0]);

        f.remote.heal();
        let mut buf = [0u8; 4];
        f.stage.read_exact_at(&mut buf, 0).await.unwrap();
        assert_eq!(&buf, &f.data[..4]);
        assert!(f.stage.is_local(0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn write_during_pull_is_not_overwritten_by_it() {
        let remote = Probe::memory(pattern(12, 0, 128)).with_delay(Duration::from_millis(50));
        let f = fixture(128, 64, remote).await;
        let reader = {
            let stage = f.stage.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                stage.read_exact_at(&mut buf, 0).await.unwrap();
                buf
            })
        };
        // Let the pull start, then write the same chunk.
        while f.remote.reads() == 0 {
            tokio::task::yield_now().await;
        }
        f.stage.write_at(&[0xCD; 64], 0).await.unwrap();
        // The reader raced the write: it sees the chunk before or after it,
        // never a mix.
        let pulled = reader.await.unwrap();
        assert!(pulled[..] == f.data[..64] || pulled == [0xCD; 64]);
        let mut now = [0u8; 64];
        f.stage.read_exact_at(&mut now, 0).await.unwrap();
        assert_eq!(now, [0xCD; 64]);
        assert_eq!(f.hook_counts(), vec![1, 0]);
    }

    #[tokio::test]
    async fn mark_remote_makes_the_next_read_pull_again() {
        let f = fixture(128, 64, Probe::memory(pattern(13, 0, 128))).await;
        let mut buf = [0u8; 128];
        f.stage.read_exact_at(&mut buf, 0).await.unwrap();
        assert_eq!(f.stage.local_chunks(), 2);
        // The remote changes; the stage is told.
        f.remote.write_at(&[0x11; 64], 64).await.unwrap();
        f.stage.mark_remote([1]).unwrap();
        assert_eq!(f.stage.local_chunks(), 1);
        f.stage.read_exact_at(&mut buf, 0).await.unwrap();
        assert_eq!(&buf[64..], &[0x11; 64][..]);
        assert_eq!(f.remote.reads(), 3);
        assert_eq!(f.hook_counts(), vec![1, 2]);
        assert!(matches!(
            f.stage.mark_remote([0, 2]),
            Err(StageError::ChunkOutOfRange { index: 2, count: 2 })
        ));
        assert!(f.stage.is_local(0), "a rejected call changes nothing");
    }

    /// Migration's finalize marks a chunk remote while a pull of its old
    /// bytes is under way; a reader that waited on that pull must not be
    /// served the old bytes the pull left in local.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_waiting_on_a_pull_marked_stale_gets_the_new_bytes() {
        let remote = Arc::new(MemoryBackend::from_bytes(vec![1; 64]));
        // The pull reads the remote at once, then spends 50 ms writing local.
        let local = Arc::new(Probe::zeros(64).with_delay(Duration::from_millis(50)));
        let stage = Arc::new(
            SyncedReadWriterAt::new(remote.clone(), local.clone(), 64)
                .await
                .unwrap(),
        );
        let first = {
            let stage = stage.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 8];
                stage.read_exact_at(&mut buf, 0).await.map(|()| buf)
            })
        };
        // The pull has read the old bytes and is writing them to local.
        while local.writes() == 0 {
            tokio::task::yield_now().await;
        }
        remote.write_at(&[2; 64], 0).await.unwrap();
        stage.mark_remote([0]).unwrap();
        let mut buf = [0u8; 8];
        stage.read_exact_at(&mut buf, 0).await.unwrap();
        assert_eq!(buf, [2; 8], "a read after mark_remote got the old bytes");
        assert!(stage.is_local(0));
        // The read that started before the mark may see either version.
        let early = first.await.unwrap().unwrap();
        assert!(early == [1; 8] || early == [2; 8]);
    }

    #[tokio::test]
    async fn cancelled_pull_lets_the_next_reader_retry() {
        let remote = Probe::memory(pattern(14, 0, 64)).with_delay(Duration::from_secs(3600));
        let f = fixture(64, 64, remote).await;
        let mut buf = [0u8; 8];
        let timed_out =
            tokio::time::timeout(Duration::from_millis(10), f.stage.read_at(&mut buf, 0)).await;
        assert!(timed_out.is_err());
        assert!(!f.stage.is_local(0));
        assert!(f.stage.states.lock().busy.is_empty());
    }

    #[tokio::test]
    async fn sizes_must_match() {
        let result = SyncedReadWriterAt::new(
            Arc::new(MemoryBackend::new(100)),
            Arc::new(MemoryBackend::new(99)),
            10,
        )
        .await;
        assert!(matches!(
            result,
            Err(StageError::SizeMismatch {
                remote: 100,
                local: 99
            })
        ));
    }
}
