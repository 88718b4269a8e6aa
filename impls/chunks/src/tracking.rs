//! Records which chunks were written, for migration's dirty-chunk rounds.
//!
//! # Behavior
//!
//! Every access is forwarded unchanged. After [`TrackingReadWriterAt::track`],
//! each write marks every chunk it touches; [`TrackingReadWriterAt::take_dirty`]
//! returns those chunk indices in ascending order and clears them. Writes
//! before the first `track()` are not recorded; calling `track()` again
//! clears what was recorded and starts over.
//!
//! A chunk is marked after its write returns, and also when the write
//! fails (a failed write may have changed some bytes; reporting a clean
//! chunk dirty costs one resend, reporting a dirty chunk clean corrupts the
//! destination). Marking after the write means a `take_dirty` that races a
//! write either sees the chunk now or in the next take, never misses it.

use async_trait::async_trait;
use backends::{Backend, Result, SharedBackend};
use parking_lot::Mutex;

use crate::chunkset::ChunkSet;
use crate::{ChunkGeometry, StageError};

/// Forwards accesses and records written chunks. See the module docs.
#[derive(Debug)]
pub struct TrackingReadWriterAt {
    inner: SharedBackend,
    geometry: ChunkGeometry,
    /// `None` until `track()` is first called.
    dirty: Mutex<Option<ChunkSet>>,
}

impl TrackingReadWriterAt {
    /// Wraps `inner`, asking it once for its size (fixed for its lifetime).
    pub async fn new(inner: SharedBackend, chunk_size: u64) -> Result<Self, StageError> {
        let geometry = ChunkGeometry::of(inner.as_ref(), chunk_size).await?;
        Ok(Self::with_geometry(inner, geometry))
    }

    /// Wraps `inner`, whose size the caller already knows.
    pub fn with_geometry(inner: SharedBackend, geometry: ChunkGeometry) -> Self {
        Self {
            inner,
            geometry,
            dirty: Mutex::new(None),
        }
    }

    /// Starts recording written chunks, forgetting anything recorded so far.
    pub fn track(&self) {
        *self.dirty.lock() = Some(ChunkSet::new(self.geometry.chunk_count()));
    }

    /// Whether writes are being recorded.
    pub fn is_tracking(&self) -> bool {
        self.dirty.lock().is_some()
    }

    /// The chunks written since `track()` or the previous take, ascending;
    /// clears them. Empty when not tracking.
    pub fn take_dirty(&self) -> Vec<u64> {
        self.dirty
            .lock()
            .as_mut()
            .map_or_else(Vec::new, |set| set.take_where(None))
    }

    /// The chunk layout writes are recorded in.
    pub fn geometry(&self) -> ChunkGeometry {
        self.geometry
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &SharedBackend {
        &self.inner
    }
}

#[async_trait]
impl Backend for TrackingReadWriterAt {
    async fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        self.inner.read_at(buf, offset).await
    }

    async fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
        // Range-check first so a bad access marks nothing (and the chunk
        // indices below are in range).
        backends::check_range(offset, data.len() as u64, self.geometry.size(), true)?;
        let result = self.inner.write_at(data, offset).await;
        if let Some(set) = self.dirty.lock().as_mut() {
            for chunk in self.geometry.chunks_touched(offset, data.len() as u64) {
                set.insert(chunk);
            }
        }
        result
    }

    async fn size(&self) -> Result<u64> {
        Ok(self.geometry.size())
    }

    async fn sync(&self) -> Result<()> {
        self.inner.sync().await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use backends::{BackendError, MemoryBackend};

    use super::*;

    #[tokio::test]
    async fn records_only_writes_after_track() {
        let inner = Arc::new(MemoryBackend::new(1000));
        let stage = TrackingReadWriterAt::new(inner.clone(), 100).await.unwrap();
        stage.write_at(&[1; 10], 0).await.unwrap();
        stage.write_at(&[1; 10], 500).await.unwrap();
        assert!(stage.take_dirty().is_empty());

        stage.track();
        stage.write_at(&[2; 10], 905).await.unwrap();
        stage.write_at(&[2; 150], 250).await.unwrap(); // chunks 2 and 3
        stage.write_at(&[2; 1], 260).await.unwrap(); // chunk 2 again
        let mut buf = [0u8; 10];
        stage.read_at(&mut buf, 700).await.unwrap(); // reads mark nothing
        assert_eq!(stage.take_dirty(), vec![2, 3, 9]);
        assert!(stage.take_dirty().is_empty());

        stage.write_at(&[3; 1], 0).await.unwrap();
        assert_eq!(stage.take_dirty(), vec![0]);
        // Writes went through unchanged.
        assert_eq!(inner.snapshot()[250..400], [2; 150]);
    }

    #[tokio::test]
    async fn track_again_starts_over_and_bad_writes_mark_nothing() {
        let stage = TrackingReadWriterAt::new(Arc::new(MemoryBackend::new(100)), 10)
            .await
            .unwrap();
        stage.track();
        stage.write_at(&[1], 5).await.unwrap();
        stage.track();
        assert!(matches!(
            stage.write_at(&[1; 20], 90).await,
            Err(BackendError::OutOfRange { .. })
        ));
        assert!(stage.take_dirty().is_empty());
    }
}
