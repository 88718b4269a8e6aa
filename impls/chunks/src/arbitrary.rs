//! Any offset and length over a backend that only takes whole, aligned chunks.
//!
//! # Behavior
//!
//! - Reads fetch every touched chunk whole from the inner backend. A chunk
//!   the read covers completely is read straight into the caller's buffer;
//!   a partly covered one goes through a scratch buffer.
//! - Writes pass whole covered chunks straight through and do
//!   read-modify-write for partly covered ones.
//! - The inner backend only ever sees whole chunks at chunk offsets. The last
//!   chunk of a region whose size is not a multiple of the chunk size is
//!   short, and the inner backend sees exactly its short length.
//!
//! # Concurrency
//!
//! Two partial writes to one chunk would each read the old chunk and the
//! later write-back would erase the earlier one. Every write to a chunk
//! (whole or partial: a whole write racing a read-modify-write is lost the
//! same way) holds that chunk's lock, taken from a fixed table of striped
//! async mutexes indexed by chunk index. A write spanning chunks takes one
//! chunk lock at a time, so it cannot deadlock, and it is not atomic as a
//! whole (no backend promises that). Reads take no lock: the inner backend
//! serves each chunk read whole, so a read sees a chunk before or after a
//! write-back, never a mix of two read-modify-writes.

use async_trait::async_trait;
use backends::{check_range, Backend, Result, SharedBackend};
use tokio::sync::Mutex;

use crate::{ChunkGeometry, StageError};

/// Lock stripes: enough that unrelated chunks rarely share one with a few
/// hundred writers in flight, small enough (~40 KiB) to not matter.
const MAX_STRIPES: u64 = 1024;

/// Arbitrary-offset reads and writes over a whole-chunk backend. See the
/// module docs.
#[derive(Debug)]
pub struct ArbitraryReadWriterAt {
    inner: SharedBackend,
    geometry: ChunkGeometry,
    stripes: Box<[Mutex<()>]>,
}

impl ArbitraryReadWriterAt {
    /// Wraps `inner`, asking it once for its size (fixed for its lifetime).
    pub async fn new(inner: SharedBackend, chunk_size: u64) -> Result<Self, StageError> {
        let geometry = ChunkGeometry::of(inner.as_ref(), chunk_size).await?;
        Ok(Self::with_geometry(inner, geometry))
    }

    /// Wraps `inner`, whose size the caller already knows.
    pub fn with_geometry(inner: SharedBackend, geometry: ChunkGeometry) -> Self {
        let stripes = geometry.chunk_count().clamp(1, MAX_STRIPES);
        Self {
            inner,
            geometry,
            stripes: (0..stripes).map(|_| Mutex::new(())).collect(),
        }
    }

    /// The chunk layout this stage cuts accesses into.
    pub fn geometry(&self) -> ChunkGeometry {
        self.geometry
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &SharedBackend {
        &self.inner
    }

    fn stripe(&self, chunk: u64) -> &Mutex<()> {
        &self.stripes[(chunk % self.stripes.len() as u64) as usize]
    }
}

#[async_trait]
impl Backend for ArbitraryReadWriterAt {
    async fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        let g = self.geometry;
        let n = check_range(offset, buf.len() as u64, g.size(), false)? as usize;
        let mut scratch = Vec::new();
        let mut done = 0usize;
        for chunk in g.chunks_touched(offset, n as u64) {
            let chunk_start = g.chunk_offset(chunk);
            let chunk_len = g.chunk_len(chunk) as usize;
            // Where this step starts inside the chunk and how much of it we need.
            let within = (offset + done as u64 - chunk_start) as usize;
            let take = (chunk_len - within).min(n - done);
            let dest = &mut buf[done..done + take];
            if take == chunk_len {
                self.inner.read_exact_at(dest, chunk_start).await?;
            } else {
                scratch.resize(chunk_len, 0);
                self.inner.read_exact_at(&mut scratch, chunk_start).await?;
                dest.copy_from_slice(&scratch[within..within + take]);
            }
            done += take;
        }
        Ok(n)
    }

    async fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
        let g = self.geometry;
        check_range(offset, data.len() as u64, g.size(), true)?;
        let mut scratch = Vec::new();
        let mut done = 0usize;
        for chunk in g.chunks_touched(offset, data.len() as u64) {
            let chunk_start = g.chunk_offset(chunk);
            let chunk_len = g.chunk_len(chunk) as usize;
            let within = (offset + done as u64 - chunk_start) as usize;
            let take = (chunk_len - within).min(data.len() - done);
            let src = &data[done..done + take];
            let _lock = self.stripe(chunk).lock().await;
            if take == chunk_len {
                self.inner.write_at(src, chunk_start).await?;
            } else {
                scratch.resize(chunk_len, 0);
                self.inner.read_exact_at(&mut scratch, chunk_start).await?;
                scratch[within..within + take].copy_from_slice(src);
                self.inner.write_at(&scratch, chunk_start).await?;
            }
            done += take;
        }
        Ok(())
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
    use backends::{BackendError, MemoryBackend};

    use super::*;
    use crate::ChunkedReadWriterAt;

    /// Arbitrary over Chunked over a probe: any access the arbitrary stage
    /// sends that is not one whole aligned chunk fails in the chunked stage.
    async fn stack(bytes: Vec<u8>, chunk_size: u64) -> (ArbitraryReadWriterAt, Arc<Probe>) {
        let probe = Arc::new(Probe::memory(bytes));
        let chunked = ChunkedReadWriterAt::new(probe.clone(), chunk_size)
            .await
            .unwrap();
        let arbitrary = ArbitraryReadWriterAt::new(Arc::new(chunked), chunk_size)
            .await
            .unwrap();
        (arbitrary, probe)
    }

    #[tokio::test]
    async fn reads_smaller_than_a_chunk() {
        let data = pattern(1, 0, 256);
        let (stage, probe) = stack(data.clone(), 64).await;
        let mut buf = [0u8; 10];
        assert_eq!(stage.read_at(&mut buf, 70).await.unwrap(), 10);
        assert_eq!(&buf, &data[70..80]);
        // One whole-chunk read of chunk 1.
        assert_eq!(probe.accesses(), vec![(64, 64)]);
    }

    #[tokio::test]
    async fn reads_across_chunks_and_the_end() {
        let data = pattern(2, 0, 100);
        let (stage, _probe) = stack(data.clone(), 32).await;
        let mut buf = vec![0u8; 90];
        assert_eq!(stage.read_at(&mut buf, 20).await.unwrap(), 80);
        assert_eq!(&buf[..80], &data[20..]);
        let mut whole = vec![0u8; 100];
        stage.read_exact_at(&mut whole, 0).await.unwrap();
        assert_eq!(whole, data);
    }

    #[tokio::test]
    async fn unaligned_write_spanning_three_chunks_keeps_neighbours() {
        let original = pattern(3, 0, 64 * 5);
        let (stage, probe) = stack(original.clone(), 64).await;
        // Starts inside chunk 1, covers chunk 2, ends inside chunk 3.
        let patch = vec![0xEE; 150];
        stage.write_at(&patch, 100).await.unwrap();

        let mut expected = original.clone();
        expected[100..250].copy_from_slice(&patch);
        let mut back = vec![0u8; expected.len()];
        stage.read_exact_at(&mut back, 0).await.unwrap();
        assert_eq!(back, expected);
        assert_eq!(probe.contents().await.unwrap(), expected);
        // Chunk 2 went straight through; chunks 1 and 3 were read first.
        assert_eq!(probe.write_order(), vec![64, 128, 192]);
        assert_eq!(probe.read_order()[..2], [64, 192]);
    }

    #[tokio::test]
    async fn partial_write_to_the_short_last_chunk() {
        let original = pattern(4, 0, 100);
        let (stage, probe) = stack(original.clone(), 32).await;
        stage.write_at(&[1, 2, 3], 97).await.unwrap();
        let mut expected = original;
        expected[97..].copy_from_slice(&[1, 2, 3]);
        assert_eq!(probe.contents().await.unwrap(), expected);
        // The inner stage saw the short chunk at its real length.
        assert_eq!(probe.accesses(), vec![(96, 4), (96, 4)]);
    }

    #[tokio::test]
    async fn whole_chunk_write_skips_the_read() {
        let (stage, probe) = stack(vec![0; 128], 64).await;
        stage.write_at(&[9; 64], 64).await.unwrap();
        assert_eq!(probe.reads(), 0);
        assert_eq!(probe.writes(), 1);
    }

    #[tokio::test]
    async fn out_of_range_is_rejected_and_writes_nothing() {
        let (stage, probe) = stack(vec![0; 100], 32).await;
        let mut buf = [0u8; 4];
        assert!(matches!(
            stage.read_at(&mut buf, 100).await,
            Err(BackendError::OutOfRange { .. })
        ));
        assert!(matches!(
            stage.write_at(&[1; 10], 95).await,
            Err(BackendError::OutOfRange { .. })
        ));
        assert_eq!(probe.writes(), 0);
        assert_eq!(stage.read_at(&mut [], 100).await.unwrap(), 0);
    }

    /// 64 tasks each patch a different byte of one chunk at once, over an
    /// inner backend that yields between every access so read-modify-writes
    /// interleave. Without the chunk lock most patches would be lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_partial_writes_to_one_chunk_lose_nothing() {
        let inner = Arc::new(Probe::over(Arc::new(MemoryBackend::new(128))).yielding());
        let stage = Arc::new(ArbitraryReadWriterAt::new(inner.clone(), 64).await.unwrap());
        let tasks: Vec<_> = (0..64u8)
            .map(|i| {
                let stage = stage.clone();
                tokio::spawn(async move { stage.write_at(&[i + 1], u64::from(i)).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let contents = inner.contents().await.unwrap();
        let expected: Vec<u8> = (1..=64).collect();
        assert_eq!(&contents[..64], &expected[..]);
        assert_eq!(&contents[64..], &[0; 64][..]);
    }
}
