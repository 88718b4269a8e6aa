//! What the fault handler did: counters, per-CPU counts and service times.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;

/// Largest service time the histogram tracks exactly: one hour. Anything
/// slower is recorded as one hour (a fault that slow is a failure anyway).
const MAX_TRACKED_NS: u64 = 3_600 * 1_000_000_000;

/// A snapshot of one region's fault handling, from [`crate::UffdRegion::stats`].
#[derive(Debug, Clone)]
pub struct FaultStats {
    /// Service time (ns) of each fault that installed a chunk: from the
    /// `read(2)` that returned its event to the `UFFDIO_COPY` installing the
    /// chunk returning. It includes the fetch from the source, and for
    /// events read in one batch the time spent on the earlier ones, since
    /// the faulting thread waits through both. Duplicates are not recorded.
    pub service_ns: Histogram<u64>,
    /// Page-fault events read, duplicates included.
    pub faults: u64,
    /// Of `faults`, those raised by a write.
    pub write_faults: u64,
    /// Of `faults`, events for a chunk that was already installed: another
    /// thread faulted on the same chunk before it was installed. Served
    /// without fetching.
    pub duplicate_faults: u64,
    /// Chunks fetched and installed, refetches included.
    pub chunks_installed: u64,
    /// Of `chunks_installed`, chunks installed before whose pages the
    /// application had since discarded (`MADV_DONTNEED`), fetched again.
    pub chunks_refetched: u64,
    /// Bytes read from the source.
    pub bytes_fetched: u64,
    /// Source reads that failed and were tried again.
    pub fetch_retries: u64,
    /// Copies that met an already present page and went page by page.
    pub eexist_fallbacks: u64,
    /// `UFFDIO_COPY` calls answered with `EAGAIN` and retried.
    pub eagain_retries: u64,
    /// Faults handled while the handler ran on each CPU (per `sched_getcpu`
    /// after the fault was served); CPUs never used are absent.
    pub faults_by_cpu: BTreeMap<usize, u64>,
}

impl FaultStats {
    pub(crate) fn new() -> Self {
        Self {
            // 3 significant digits: 0.1 % resolution, a few tens of KiB.
            service_ns: Histogram::new_with_bounds(1, MAX_TRACKED_NS, 3)
                .expect("constant histogram bounds are valid"),
            faults: 0,
            write_faults: 0,
            duplicate_faults: 0,
            chunks_installed: 0,
            chunks_refetched: 0,
            bytes_fetched: 0,
            fetch_retries: 0,
            eexist_fallbacks: 0,
            eagain_retries: 0,
            faults_by_cpu: BTreeMap::new(),
        }
    }

    pub(crate) fn count_cpu(&mut self, cpu: Option<usize>) {
        if let Some(cpu) = cpu {
            *self.faults_by_cpu.entry(cpu).or_default() += 1;
        }
    }

    pub(crate) fn record_service(&mut self, ns: u64) {
        self.service_ns
            .saturating_record(ns.clamp(1, MAX_TRACKED_NS));
    }
}

impl Default for FaultStats {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_cpus_sparsely_and_clamps_times() {
        let mut stats = FaultStats::new();
        stats.count_cpu(Some(3));
        stats.count_cpu(Some(3));
        stats.count_cpu(Some(0));
        stats.count_cpu(None);
        assert_eq!(stats.faults_by_cpu, BTreeMap::from([(0, 1), (3, 2)]));

        stats.record_service(0);
        stats.record_service(u64::MAX);
        assert_eq!(stats.service_ns.len(), 2);
        assert_eq!(stats.service_ns.min(), 1);
        assert!(stats.service_ns.max() >= MAX_TRACKED_NS);
    }
}
