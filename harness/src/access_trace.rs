//! The order an application first touches its region, recorded from a run:
//! what the `trace` pull heuristic replays.
//!
//! The synthetic workloads' orders are known in advance, so their trace is
//! computed ([`first_touch_chunks`]). An application such as SQLite decides
//! what it reads as it goes, so its trace is recorded: the workload runs
//! once on a local userfaultfd region filled from the source, and the
//! order of the page faults is the order of first touches.

use std::sync::Arc;

use async_trait::async_trait;
use backends::{Backend, BlockingBackend, SharedBackend};
use parking_lot::Mutex;
use uffd::{UffdConfig, UffdRegion};

use crate::source::SourceImage;

/// The granularity of a recorded trace.
const PAGE_BYTES: u64 = 4096;

/// The chunks (of `chunk` bytes, `chunk_count` of them) that accesses of
/// `access` bytes at `offsets` touch, each once, in the order first
/// touched.
pub fn first_touch_chunks(offsets: &[u64], access: u64, chunk: u64, chunk_count: u64) -> Vec<u64> {
    let mut seen = vec![false; chunk_count as usize];
    let mut trace = Vec::new();
    for &offset in offsets {
        let first = offset / chunk;
        let last = (offset + access - 1) / chunk;
        for c in first..=last.min(chunk_count.saturating_sub(1)) {
            if !std::mem::replace(&mut seen[c as usize], true) {
                trace.push(c);
            }
        }
    }
    trace
}

/// A backend that remembers the offset of every read, in order.
#[derive(Debug)]
struct ReadLog {
    inner: SharedBackend,
    offsets: Mutex<Vec<u64>>,
}

#[async_trait]
impl Backend for ReadLog {
    async fn read_at(&self, buf: &mut [u8], offset: u64) -> backends::Result<usize> {
        self.offsets.lock().push(offset);
        self.inner.read_at(buf, offset).await
    }
    async fn write_at(&self, data: &[u8], offset: u64) -> backends::Result<()> {
        self.inner.write_at(data, offset).await
    }
    async fn size(&self) -> backends::Result<u64> {
        self.inner.size().await
    }
    async fn sync(&self) -> backends::Result<()> {
        self.inner.sync().await
    }
}

/// Runs `workload` once on a userfaultfd region holding `source` and
/// returns the chunks it touched in the order it first touched them.
/// `workload` gets the region; what it returns is ignored beyond success.
pub fn record_first_touch<T, E: std::fmt::Display>(
    source: &SourceImage,
    chunk: u64,
    runtime: &tokio::runtime::Handle,
    workload: impl FnOnce(&[u8]) -> Result<T, E>,
) -> Result<Vec<u64>, String> {
    let size = source.bytes().len() as u64;
    let log = Arc::new(ReadLog {
        inner: source.backend.clone(),
        offsets: Mutex::new(Vec::new()),
    });
    let pages = BlockingBackend::new(log.clone(), runtime.clone());
    let region = UffdRegion::open(UffdConfig::new(size as usize, PAGE_BYTES as usize), pages)
        .map_err(|e| format!("a userfaultfd region to record the trace in: {e}"))?;
    workload(region.as_slice()).map_err(|e| format!("the recording run: {e}"))?;
    if let Some(e) = region.error() {
        return Err(format!("the recording run's fault handler: {e}"));
    }
    drop(region);
    let offsets = std::mem::take(&mut *log.offsets.lock());
    Ok(first_touch_chunks(
        &offsets,
        PAGE_BYTES,
        chunk,
        size.div_ceil(chunk),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Content;

    #[test]
    fn the_trace_lists_each_touched_chunk_once_in_first_touch_order() {
        // Accesses of 4 KiB; chunks of 8 KiB; one access straddles 1 and 2.
        let order = [16384, 0, 4096, 12288, 14336];
        let trace = first_touch_chunks(&order, 4096, 8192, 4);
        assert_eq!(trace, vec![2, 0, 1]);
        let straddling = first_touch_chunks(&[6144], 4096, 8192, 4);
        assert_eq!(straddling, vec![0, 1]);
    }

    /// A runtime for the fault handler's fetches, or `None` (and why,
    /// printed) where userfaultfd is unavailable.
    fn uffd_runtime() -> Option<tokio::runtime::Runtime> {
        if !uffd::probe().available() {
            eprintln!("skipping: no userfaultfd here");
            return None;
        }
        Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .build()
                .unwrap(),
        )
    }

    #[test]
    fn a_recorded_trace_is_the_order_of_first_touches() {
        let Some(runtime) = uffd_runtime() else {
            return;
        };
        let source = SourceImage::new(1 << 20, 3, Content::Pattern).unwrap();
        // Touch chunk 3, then 0, then 3 again, then 15 (64 KiB chunks).
        let trace = record_first_touch(&source, 64 << 10, runtime.handle(), |r| {
            let sum: u64 = [3 * 65536 + 5, 17, 3 * 65536 + 9000, 15 * 65536]
                .iter()
                .map(|&at| u64::from(r[at]))
                .sum();
            Ok::<_, String>(std::hint::black_box(sum))
        })
        .unwrap();
        assert_eq!(trace, vec![3, 0, 15]);
    }

    #[test]
    fn a_recorded_sqlite_trace_starts_at_the_header() {
        let Some(runtime) = uffd_runtime() else {
            return;
        };
        let source = SourceImage::new(1 << 20, 3, Content::Sqlite).unwrap();
        let keys = crate::sqlite_app::lookup_keys(20, 1);
        let far = std::time::Instant::now() + std::time::Duration::from_secs(600);
        let trace = record_first_touch(&source, 16 << 10, runtime.handle(), |r| {
            crate::sqlite_app::run_lookups(r, &keys, far)
        })
        .unwrap();
        assert_eq!(trace.first(), Some(&0));
        assert!(trace.len() > 2 && trace.len() < 64, "{trace:?}");
        let mut sorted = trace.clone();
        sorted.sort_unstable();
        // Lookups jump about the file: read in place, not copied in order.
        assert_ne!(sorted, trace, "chunks touched in file order");
        sorted.dedup();
        assert_eq!(sorted.len(), trace.len(), "a chunk listed twice");
    }
}
