//! A guard that lets through only whole, aligned chunks.
//!
//! Some backends (one file per chunk, a remote service) assume every access
//! is exactly one chunk at a chunk offset but cannot check it; an oversized
//! write there could grow a chunk file without bound. This stage checks and
//! rejects, so such a backend can be exposed safely.
//!
//! # Behavior
//!
//! An access passes if its offset is a multiple of the chunk size and its
//! length is exactly the length of that chunk: `chunk_size`, or the short
//! length of the last chunk when the size is not a multiple of the chunk
//! size. An offset that is misaligned, or a length that is anything else
//! (including 0), is [`BackendError::Unaligned`]; an aligned offset at or past
//! the end is [`BackendError::OutOfRange`]. Nothing reaches the inner backend
//! unless it passes.

use async_trait::async_trait;
use backends::{Backend, BackendError, Result, SharedBackend};

use crate::{ChunkGeometry, StageError};

/// Passes only one whole, aligned chunk per access. See the module docs.
#[derive(Debug)]
pub struct ChunkedReadWriterAt {
    inner: SharedBackend,
    geometry: ChunkGeometry,
}

impl ChunkedReadWriterAt {
    /// Wraps `inner`, asking it once for its size (fixed for its lifetime).
    pub async fn new(inner: SharedBackend, chunk_size: u64) -> Result<Self, StageError> {
        let geometry = ChunkGeometry::of(inner.as_ref(), chunk_size).await?;
        Ok(Self::with_geometry(inner, geometry))
    }

    /// Wraps `inner`, whose size the caller already knows.
    pub fn with_geometry(inner: SharedBackend, geometry: ChunkGeometry) -> Self {
        Self { inner, geometry }
    }

    /// The chunk layout this stage enforces.
    pub fn geometry(&self) -> ChunkGeometry {
        self.geometry
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &SharedBackend {
        &self.inner
    }

    fn check(&self, offset: u64, len: usize) -> Result<()> {
        let g = self.geometry;
        let len = len as u64;
        let unaligned = BackendError::Unaligned {
            offset,
            len,
            chunk_size: g.chunk_size(),
        };
        if !offset.is_multiple_of(g.chunk_size()) {
            return Err(unaligned);
        }
        if offset >= g.size() {
            return Err(BackendError::OutOfRange {
                offset,
                len,
                size: g.size(),
            });
        }
        if len != g.chunk_len(g.chunk_of(offset)) {
            return Err(unaligned);
        }
        Ok(())
    }
}

#[async_trait]
impl Backend for ChunkedReadWriterAt {
    async fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        self.check(offset, buf.len())?;
        self.inner.read_at(buf, offset).await
    }

    async fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
        self.check(offset, data.len())?;
        self.inner.write_at(data, offset).await
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

    use backends::conformance::pattern;
    use backends::testing::Probe;

    use super::*;

    async fn stage(size: usize) -> (ChunkedReadWriterAt, Arc<Probe>) {
        let probe = Arc::new(Probe::memory(pattern(5, 0, size)));
        let stage = ChunkedReadWriterAt::new(probe.clone(), 32).await.unwrap();
        (stage, probe)
    }

    #[tokio::test]
    async fn whole_aligned_chunks_pass() {
        let (stage, probe) = stage(100).await;
        let mut buf = [0u8; 32];
        assert_eq!(stage.read_at(&mut buf, 32).await.unwrap(), 32);
        assert_eq!(&buf[..], &pattern(5, 0, 100)[32..64]);
        stage.write_at(&[7; 32], 64).await.unwrap();
        // The last chunk is 4 bytes long and passes at that length.
        let mut last = [0u8; 4];
        assert_eq!(stage.read_at(&mut last, 96).await.unwrap(), 4);
        stage.write_at(&[8; 4], 96).await.unwrap();
        let contents = probe.contents().await.unwrap();
        assert_eq!(&contents[64..96], &[7; 32][..]);
        assert_eq!(&contents[96..], &[8; 4][..]);
    }

    #[tokio::test]
    async fn unaligned_and_wrongly_sized_accesses_are_rejected() {
        let (stage, probe) = stage(100).await;
        let mut small = [0u8; 16];
        let mut big = [0u8; 64];
        let mut full = [0u8; 32];
        let unaligned = |r: Result<usize>| matches!(r, Err(BackendError::Unaligned { .. }));
        assert!(unaligned(stage.read_at(&mut full, 1).await));
        assert!(unaligned(stage.read_at(&mut small, 0).await));
        assert!(unaligned(stage.read_at(&mut big, 0).await));
        assert!(unaligned(stage.read_at(&mut [], 0).await));
        // A full-size chunk at the short last chunk is oversized.
        assert!(unaligned(stage.read_at(&mut full, 96).await));
        assert!(matches!(
            stage.write_at(&[0; 33], 32).await,
            Err(BackendError::Unaligned {
                offset: 32,
                len: 33,
                chunk_size: 32
            })
        ));
        assert!(matches!(
            stage.write_at(&[0; 32], 128).await,
            Err(BackendError::OutOfRange { offset: 128, .. })
        ));
        assert_eq!(probe.reads() + probe.writes(), 0);
    }
}
