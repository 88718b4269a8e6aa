//! The pipeline stages of managed mounts (thesis section 4.5), as async
//! [`Backend`]s that wrap other backends.
//!
//! A managed mount does not send every access over the network. It chunks
//! accesses, keeps a local copy that fills in the background and on demand,
//! and writes changes back periodically. Each of those jobs is one stage
//! here, and every stage is itself a [`Backend`], so stages stack freely and
//! each one is unit tested alone over [`backends::MemoryBackend`].
//!
//! # Layout
//!
//! - [`arbitrary`]: [`ArbitraryReadWriterAt`], any offset and length over a
//!   backend that takes whole chunks (read-modify-write for partial chunks).
//! - [`chunked`]: [`ChunkedReadWriterAt`], rejects anything but one whole,
//!   aligned chunk.
//! - [`synced`]: [`SyncedReadWriterAt`], a local copy in front of a remote;
//!   pulls a chunk on first read, once, however many readers ask.
//! - [`puller`]: [`Puller`], background pull of every chunk by N async
//!   workers in a [`PullHeuristic`] order.
//! - [`pusher`]: [`Pusher`], records dirty chunks and writes them back to the
//!   remote every interval and on `sync`.
//! - [`tracking`]: [`TrackingReadWriterAt`], records which chunks were written
//!   since [`TrackingReadWriterAt::track`].
//! - [`lockable`]: [`LockableReadWriterAt`], holds every access until
//!   [`LockableReadWriterAt::unlock`].
//!
//! Shared here: [`ChunkGeometry`] (chunk arithmetic, including the last short
//! chunk) and [`StageError`] (set-up errors of every stage).
//!
//! # Composition
//!
//! Stages hold their inner backends as [`SharedBackend`]
//! (`Arc<dyn Backend>`), so a pipeline is built bottom-up by wrapping
//! `Arc`s. The managed pipeline of the thesis is
//! `Puller -> ArbitraryReadWriterAt -> SyncedReadWriterAt(remote, Pusher(local, remote))`,
//! with the synced stage's `on_chunk_local` hook calling
//! [`Pusher::mark_pushable`]:
//!
//! ```
//! use std::sync::Arc;
//!
//! use backends::{Backend, MemoryBackend};
//! use chunks::{
//!     ArbitraryReadWriterAt, PullHeuristic, Puller, Pushable, Pusher, PusherOptions,
//!     SyncedReadWriterAt,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! const SIZE: u64 = 64 * 1024;
//! const CHUNK: u64 = 4096;
//! let remote = Arc::new(MemoryBackend::from_bytes(vec![7; SIZE as usize]));
//! let local = Arc::new(MemoryBackend::new(SIZE));
//!
//! // Writes to local are pushed back to the remote, but only for chunks the
//! // synced stage has reported local: pulled bytes are not pushed back.
//! let options = PusherOptions { pushable: Pushable::Marked, ..PusherOptions::new(CHUNK) };
//! let pusher = Arc::new(Pusher::start(local, remote.clone(), options).await?);
//! let hook = pusher.clone();
//! let synced = Arc::new(
//!     SyncedReadWriterAt::new(remote.clone(), pusher.clone(), CHUNK)
//!         .await?
//!         .with_on_chunk_local(move |chunk| {
//!             // Indices from the synced stage are always in range.
//!             let _ = hook.mark_pushable(chunk);
//!         }),
//! );
//! // What the application (or the NBD/uffd edge) reads and writes.
//! let mount = ArbitraryReadWriterAt::new(synced.clone(), CHUNK).await?;
//! // Pre-copy: pull everything in the background, 16 requests in flight.
//! let puller = Puller::start(synced.clone(), CHUNK, SIZE, 16, PullHeuristic::Linear)?;
//!
//! mount.write_at(b"hello", 10).await?; // post-copy: pulls chunk 0 now if needed
//! puller.wait().await?;
//! mount.sync().await?; // synced -> pusher: pushes dirty chunks, syncs the remote
//! let pushed = remote.snapshot();
//! assert_eq!(&pushed[10..15], b"hello");
//! assert_eq!((pushed[9], pushed[15]), (7, 7));
//! # Ok(())
//! # }
//! ```
//!
//! # The last chunk
//!
//! When the size is not a multiple of the chunk size, the last chunk is short
//! (`size % chunk_size` bytes). Every stage treats that short chunk as a whole
//! chunk: inner backends see exactly its length, never a chunk-size access
//! crossing the end.

pub mod arbitrary;
pub mod chunked;
pub mod lockable;
pub mod puller;
pub mod pusher;
pub mod synced;
pub mod tracking;

mod chunkset;
#[cfg(test)]
mod pipeline_tests;

use std::ops::Range;

pub use arbitrary::ArbitraryReadWriterAt;
pub use backends::{Backend, BackendError, SharedBackend};
pub use chunked::ChunkedReadWriterAt;
pub use lockable::LockableReadWriterAt;
pub use puller::{PullError, PullHeuristic, PullProgress, Puller};
pub use pusher::{Pushable, Pusher, PusherOptions};
pub use synced::SyncedReadWriterAt;
pub use tracking::TrackingReadWriterAt;

/// Errors setting up a stage or naming a chunk to one.
///
/// Runtime I/O errors are [`BackendError`]s, since every stage is a
/// [`Backend`]; these are the mistakes a caller can make before any I/O.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// A chunk size of zero bytes would make every region infinitely many chunks.
    #[error("chunk size must be at least 1 byte, got 0")]
    ZeroChunkSize,
    /// A pool of zero workers would never make progress.
    #[error("worker count must be at least 1, got 0")]
    ZeroWorkers,
    /// A period of zero would make a periodic task spin.
    #[error("interval must be longer than 0, got 0")]
    ZeroInterval,
    /// Two backends that must mirror each other have different sizes.
    #[error(
        "remote is {remote} bytes but local is {local} bytes; both sides must have the same size"
    )]
    SizeMismatch { remote: u64, local: u64 },
    /// A chunk index at or past the chunk count.
    #[error("chunk index {index} is out of range; valid indices are 0..{count}")]
    ChunkOutOfRange { index: u64, count: u64 },
    /// Asking an inner backend for its size failed.
    #[error("querying the inner backend: {0}")]
    Backend(#[from] BackendError),
}

/// How a region of `size` bytes splits into chunks of `chunk_size` bytes.
///
/// All chunks are `chunk_size` long except the last one, which is short when
/// `size` is not a multiple of `chunk_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkGeometry {
    chunk_size: u64,
    size: u64,
}

impl ChunkGeometry {
    /// Geometry of a `size`-byte region cut into `chunk_size`-byte chunks.
    pub fn new(chunk_size: u64, size: u64) -> Result<Self, StageError> {
        if chunk_size == 0 {
            return Err(StageError::ZeroChunkSize);
        }
        Ok(Self { chunk_size, size })
    }

    /// Asks `backend` for its size and cuts it into `chunk_size`-byte chunks.
    pub async fn of(backend: &dyn Backend, chunk_size: u64) -> Result<Self, StageError> {
        if chunk_size == 0 {
            return Err(StageError::ZeroChunkSize);
        }
        Self::new(chunk_size, backend.size().await?)
    }

    /// The nominal chunk length in bytes.
    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    /// The region length in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// How many chunks the region has, counting a short last one.
    pub fn chunk_count(&self) -> u64 {
        self.size.div_ceil(self.chunk_size)
    }

    /// Where chunk `index` starts.
    pub fn chunk_offset(&self, index: u64) -> u64 {
        index * self.chunk_size
    }

    /// The length of chunk `index`: `chunk_size`, or less for the last chunk;
    /// 0 past the end.
    pub fn chunk_len(&self, index: u64) -> u64 {
        let start = self.chunk_offset(index);
        self.size.saturating_sub(start).min(self.chunk_size)
    }

    /// The chunk holding byte `offset`.
    pub fn chunk_of(&self, offset: u64) -> u64 {
        offset / self.chunk_size
    }

    /// The chunks an access of `len` bytes at `offset` touches. Empty for an
    /// empty access. The caller checks the range against the size first.
    pub fn chunks_touched(&self, offset: u64, len: u64) -> Range<u64> {
        if len == 0 {
            return 0..0;
        }
        let last_byte = offset.saturating_add(len - 1);
        self.chunk_of(offset)..self.chunk_of(last_byte) + 1
    }

    /// Fails with [`StageError::ChunkOutOfRange`] unless `index` names a chunk.
    pub fn check_chunk(&self, index: u64) -> Result<(), StageError> {
        let count = self.chunk_count();
        if index < count {
            Ok(())
        } else {
            Err(StageError::ChunkOutOfRange { index, count })
        }
    }

    /// Whether `len` bytes at `offset` is a run of whole chunks: starts at a
    /// chunk boundary and ends at one (or at the end of the region).
    pub fn is_whole_chunks(&self, offset: u64, len: u64) -> bool {
        let Some(end) = offset.checked_add(len) else {
            return false;
        };
        offset.is_multiple_of(self.chunk_size) && (end % self.chunk_size == 0 || end == self.size)
    }
}

/// A copy of a backend error, for handing one failure to several waiters.
///
/// `BackendError` is not `Clone` because `std::io::Error` is not; the copy
/// keeps the variant and, for I/O errors, the kind and message.
pub(crate) fn copy_error(error: &BackendError) -> BackendError {
    match error {
        BackendError::OutOfRange { offset, len, size } => BackendError::OutOfRange {
            offset: *offset,
            len: *len,
            size: *size,
        },
        BackendError::Unaligned {
            offset,
            len,
            chunk_size,
        } => BackendError::Unaligned {
            offset: *offset,
            len: *len,
            chunk_size: *chunk_size,
        },
        BackendError::Io(e) => BackendError::Io(std::io::Error::new(e.kind(), e.to_string())),
        BackendError::Remote(message) => BackendError::Remote(message.clone()),
        BackendError::Closed => BackendError::Closed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_handles_a_short_last_chunk() {
        let g = ChunkGeometry::new(32, 100).unwrap();
        assert_eq!(g.chunk_count(), 4);
        assert_eq!(g.chunk_len(0), 32);
        assert_eq!(g.chunk_len(3), 4);
        assert_eq!(g.chunk_len(4), 0);
        assert_eq!(g.chunks_touched(30, 4), 0..2);
        assert_eq!(g.chunks_touched(96, 4), 3..4);
        assert_eq!(g.chunks_touched(5, 0), 0..0);
        assert!(g.is_whole_chunks(32, 64));
        assert!(g.is_whole_chunks(96, 4));
        assert!(!g.is_whole_chunks(96, 3));
        assert!(!g.is_whole_chunks(1, 31));
        assert!(matches!(
            g.check_chunk(4),
            Err(StageError::ChunkOutOfRange { index: 4, count: 4 })
        ));
        assert!(matches!(
            ChunkGeometry::new(0, 10),
            Err(StageError::ZeroChunkSize)
        ));
    }

    #[test]
    fn copied_errors_keep_their_variant() {
        let io = BackendError::Io(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "gone"));
        match copy_error(&io) {
            BackendError::Io(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe);
                assert!(e.to_string().contains("gone"));
            }
            other => panic!("expected Io, got {other:?}"),
        }
        assert!(matches!(
            copy_error(&BackendError::Remote("x".into())),
            BackendError::Remote(m) if m == "x"
        ));
    }
}
