//! The pushing side: a `MAP_SHARED` file, hashed every cycle, whose changed
//! chunks go to the peer.

use std::fs::File;
use std::future::Future;
use std::num::NonZeroUsize;
use std::path::Path;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt, TryStreamExt};
use memmap2::MmapMut;

use crate::algorithm::Algorithm;
use crate::delta::{Delta, DeltaError};
use crate::hashes::{check_chunk_size, BadChunkSize, HashList};
use crate::sink::{Sink, SinkError};

/// How a [`SyncSource`] hashes and sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncConfig {
    /// Bytes per hashed (and sent) chunk: a power of two, 512 B..1 GiB.
    pub chunk_size: usize,
    pub algorithm: Algorithm,
    /// Threads hashing at once.
    pub threads: NonZeroUsize,
    /// Writes kept in flight to the peer; at a high RTT one at a time
    /// would take a round trip per chunk.
    pub in_flight: NonZeroUsize,
}

impl SyncConfig {
    /// 64 KiB chunks, xxh3, one hashing thread, 16 writes in flight.
    pub fn new(chunk_size: usize, algorithm: Algorithm) -> Self {
        Self {
            chunk_size,
            algorithm,
            threads: NonZeroUsize::MIN,
            in_flight: NonZeroUsize::new(16).unwrap_or(NonZeroUsize::MIN),
        }
    }
}

/// Why a cycle (or opening) failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("opening {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    ChunkSize(#[from] BadChunkSize),
    #[error("the region file: {0}")]
    File(std::io::Error),
    #[error("mapping the region file ({len} bytes): {source}")]
    Map { len: u64, source: std::io::Error },
    #[error("msync of the region failed: {0}")]
    Msync(std::io::Error),
    #[error("the region file of {0} bytes does not fit the address space")]
    TooLarge(u64),
    #[error(transparent)]
    Delta(#[from] DeltaError),
    #[error("pushing to the peer: {0}")]
    Sink(#[from] SinkError),
}

/// What one cycle found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CycleReport {
    /// Time in `msync`.
    pub msync: Duration,
    /// Time hashing (wall clock, all threads).
    pub hash: Duration,
    /// Time writing to the peer and syncing it.
    pub push: Duration,
    /// Chunks in the region.
    pub chunks: usize,
    /// Chunks sent.
    pub chunks_sent: usize,
    /// Payload bytes sent.
    pub bytes_sent: u64,
    /// The region's length.
    pub region_len: u64,
    /// Whether the peer's length changed.
    pub resized: bool,
}

/// The hashing half of a cycle: what [`SyncSource::push`] will send.
#[derive(Debug, Clone)]
pub struct Plan {
    local: HashList,
    delta: Delta,
    msync: Duration,
    hash: Duration,
}

impl Plan {
    /// The chunks to send and the length the peer must take.
    pub fn delta(&self) -> &Delta {
        &self.delta
    }
    /// The region's hashes this cycle.
    pub fn hashes(&self) -> &HashList {
        &self.local
    }
    /// Time in `msync`.
    pub fn msync_time(&self) -> Duration {
        self.msync
    }
    /// Time hashing.
    pub fn hash_time(&self) -> Duration {
        self.hash
    }
}

/// Adjacent chunks are sent as one write up to this many bytes.
const MAX_WRITE: u64 = 1 << 20;

/// A region file mapped `MAP_SHARED`, pushed to a peer cycle by cycle
/// (thesis 3.2, 4.2.7).
///
/// # Behavior
///
/// Each cycle `msync`s the mapping, hashes every chunk with
/// [`SyncConfig::threads`] threads, compares with the hashes the peer is
/// known to hold, sets the peer's length if it changed and writes the
/// differing chunks (adjacent ones merged up to 1 MiB), then syncs the
/// peer. The peer's hashes are then this cycle's. Before the first cycle
/// they are unknown (everything is sent) unless
/// [`SyncSource::set_peer_hashes`] gives the receiver's list.
///
/// If the file's length changed since the last cycle (another process
/// truncated it, or [`SyncSource::set_len`]), the mapping follows.
///
/// # Limitations
///
/// - Another process writing the file through its own mapping while a
///   cycle hashes races with the hashing: the cycle may send a torn chunk,
///   which the next cycle corrects (its hash differs). In this process,
///   [`SyncSource::region_mut`] takes `&mut self`, so it cannot race.
/// - After a failed push the peer's state is unknown, so the next cycle
///   sends everything.
#[derive(Debug)]
pub struct SyncSource {
    file: File,
    map: Option<MmapMut>,
    config: SyncConfig,
    peer: Option<HashList>,
}

impl SyncSource {
    /// Opens the existing region file at `path` read-write and maps it.
    pub fn open(path: &Path, config: SyncConfig) -> Result<Self, SyncError> {
        check_chunk_size(config.chunk_size)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| SyncError::Open {
                path: path.display().to_string(),
                source,
            })?;
        let mut source = Self {
            file,
            map: None,
            config,
            peer: None,
        };
        source.remap()?;
        Ok(source)
    }

    /// The configuration.
    pub fn config(&self) -> SyncConfig {
        self.config
    }

    /// The region's bytes, for the application in this process to write.
    pub fn region_mut(&mut self) -> &mut [u8] {
        self.map.as_deref_mut().unwrap_or(&mut [])
    }

    /// The region's bytes.
    pub fn region(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    /// Grows (with zeros) or truncates the region file and remaps it.
    pub fn set_len(&mut self, len: u64) -> Result<(), SyncError> {
        // Unmap first: shrinking under a live mapping would leave pages past
        // the end that raise SIGBUS when touched.
        self.map = None;
        self.file.set_len(len).map_err(SyncError::File)?;
        self.remap()
    }

    /// Uses the receiver's hash list (decoded with [`HashList::decode`])
    /// as what the peer holds, so the first cycle sends only differences.
    pub fn set_peer_hashes(&mut self, peer: HashList) {
        self.peer = Some(peer);
    }

    /// Forgets what the peer holds: the next cycle sends everything.
    pub fn forget_peer(&mut self) {
        self.peer = None;
    }

    fn remap(&mut self) -> Result<(), SyncError> {
        let len = self.file.metadata().map_err(SyncError::File)?.len();
        usize::try_from(len).map_err(|_| SyncError::TooLarge(len))?;
        self.map = if len == 0 {
            None
        } else {
            // SAFETY: the mapping is of a file this value owns open; its
            // length is the file's current one. Truncation of the file by
            // another process while mapped would make pages past the new end
            // raise SIGBUS; `plan` remaps when the length changes, and the
            // type's docs say concurrent writers race with hashing.
            Some(
                unsafe { MmapMut::map_mut(&self.file) }
                    .map_err(|source| SyncError::Map { len, source })?,
            )
        };
        Ok(())
    }

    /// The hashing half of a cycle: `msync`, hash, compare.
    pub fn plan(&mut self) -> Result<Plan, SyncError> {
        let len = self.file.metadata().map_err(SyncError::File)?.len();
        if len != self.region().len() as u64 {
            tracing::debug!(
                from = self.region().len(),
                to = len,
                "region file resized; remapping"
            );
            self.map = None;
            self.remap()?;
        }
        let start = Instant::now();
        if let Some(map) = &self.map {
            map.flush().map_err(SyncError::Msync)?;
        }
        let msync = start.elapsed();
        let start = Instant::now();
        let local = HashList::compute(
            self.region(),
            self.config.chunk_size,
            self.config.algorithm,
            self.config.threads,
        )?;
        let hash = start.elapsed();
        let delta = Delta::between(&local, self.peer.as_ref())?;
        Ok(Plan {
            local,
            delta,
            msync,
            hash,
        })
    }

    /// The sending half: resize the peer if needed, write the chunks, sync.
    pub async fn push(&mut self, plan: Plan, sink: &dyn Sink) -> Result<CycleReport, SyncError> {
        let start = Instant::now();
        let delta = &plan.delta;
        // Until the peer acknowledges, it holds something between old and new.
        let known = self.peer.take();
        let resized = delta.resizes();
        let result = async {
            if resized {
                sink.set_len(delta.region_len).await?;
            }
            let region = self.region();
            stream::iter(merged_writes(delta))
                .map(|range| {
                    // Ranges come from this region's own hash list.
                    let data = &region[range.start as usize..range.end as usize];
                    sink.write_at(data, range.start)
                })
                .buffer_unordered(self.config.in_flight.get())
                .try_collect::<()>()
                .await?;
            sink.sync().await
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, had_peer_hashes = known.is_some(), "push failed; the next cycle sends everything");
            return Err(e.into());
        }
        let report = CycleReport {
            msync: plan.msync,
            hash: plan.hash,
            push: start.elapsed(),
            chunks: plan.local.len(),
            chunks_sent: delta.chunks.len(),
            bytes_sent: delta.bytes(),
            region_len: delta.region_len,
            resized,
        };
        self.peer = Some(plan.local);
        Ok(report)
    }

    /// Takes `plan` as delivered without sending it: the next cycle
    /// compares against its hashes. For measuring what tracking costs
    /// apart from the network (the harness's `precopy-cost` scenario).
    pub fn mark_sent(&mut self, plan: Plan) {
        self.peer = Some(plan.local);
    }

    /// One whole cycle: [`Self::plan`] then [`Self::push`].
    pub async fn cycle(&mut self, sink: &dyn Sink) -> Result<CycleReport, SyncError> {
        let plan = self.plan()?;
        self.push(plan, sink).await
    }

    /// Cycles every `interval` (the thesis's polling) until `stop`
    /// completes; returns the reports. A failed cycle ends the loop.
    ///
    /// Hashing runs on the calling task's thread, so run this on a thread
    /// (or runtime) that may block for a cycle's hashing time.
    pub async fn poll_until(
        &mut self,
        sink: &dyn Sink,
        interval: Duration,
        stop: impl Future<Output = ()>,
    ) -> Result<Vec<CycleReport>, SyncError> {
        let mut reports = Vec::new();
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return Ok(reports),
                _ = ticks.tick() => reports.push(self.cycle(sink).await?),
            }
        }
    }
}

/// The delta's chunks as byte ranges, adjacent ones merged up to
/// [`MAX_WRITE`].
fn merged_writes(delta: &Delta) -> Vec<std::ops::Range<u64>> {
    let mut out: Vec<std::ops::Range<u64>> = Vec::new();
    for &i in &delta.chunks {
        let r = delta.range(i);
        match out.last_mut() {
            Some(last) if last.end == r.start && r.end - last.start <= MAX_WRITE => {
                last.end = r.end
            }
            _ => out.push(r),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjacent_chunks_merge_up_to_the_write_limit() {
        let delta = Delta {
            region_len: 10 << 20,
            peer_len: None,
            chunks: (0..20).chain([30, 32]).collect(),
            chunk_size: 256 << 10,
        };
        let writes = merged_writes(&delta);
        assert_eq!(
            writes,
            vec![
                0..(1 << 20),
                (1 << 20)..(2 << 20),
                (2 << 20)..(3 << 20),
                (3 << 20)..(4 << 20),
                (4 << 20)..(5 << 20),
                (30 << 18)..(31 << 18),
                (32 << 18)..(33 << 18),
            ]
        );
    }
}
