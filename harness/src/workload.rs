//! What the application does with its region: the read patterns, and the
//! loop that performs and times them.
//!
//! Orders are seeded, so a cell is reproducible and every implementation in a
//! run sees the same sequence of accesses.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use results::LatencyHistogram;
use serde::{Deserialize, Serialize};

/// Read patterns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadKind {
    /// Every access slot once, in ascending order.
    Sequential,
    /// Every access slot once, in a seeded random order.
    Random,
    /// As many accesses as there are slots, drawn from a Zipf distribution
    /// (exponent [`ZIPF_EXPONENT`]) over slots scattered by a seeded
    /// permutation, so hot data is not all at the front (YCSB's scrambled
    /// zipfian). Touches only part of the region.
    Zipfian,
    /// Indexed lookups in a SQLite database that fills the region, opened
    /// in place (see `sqlite_app`): a real application's access pattern.
    /// One lookup per [`crate::sqlite_app::SLOTS_PER_LOOKUP`] access slots.
    Sqlite,
    /// No reads at all: the cell measures a managed mount's background
    /// pull alone (its rate against what its workers and the link allow),
    /// then checks the whole region once every chunk is local.
    Idle,
}

/// YCSB's default skew.
pub const ZIPF_EXPONENT: f64 = 0.99;

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WorkloadKind::Sequential => "sequential",
            WorkloadKind::Random => "random",
            WorkloadKind::Zipfian => "zipfian",
            WorkloadKind::Sqlite => "sqlite",
            WorkloadKind::Idle => "idle",
        })
    }
}

impl WorkloadKind {
    /// Whether the pattern reads every byte of the region exactly once.
    pub fn covers_region(self) -> bool {
        !matches!(
            self,
            WorkloadKind::Zipfian | WorkloadKind::Sqlite | WorkloadKind::Idle
        )
    }

    /// The `madvise` the application gives its file mapping, if any.
    /// SQLite reads B-tree pages scattered over the file, and a database
    /// that maps its file says so (LMDB advises `MADV_RANDOM` by default):
    /// without it each fault also waits for the readahead window around
    /// the page, chunks no heuristic pulled because nothing needs them.
    /// The synthetic patterns keep the kernel's default.
    pub fn mapping_advice(self) -> Option<memmap2::Advice> {
        match self {
            WorkloadKind::Sqlite => Some(memmap2::Advice::Random),
            _ => None,
        }
    }

    /// What the source region holds for this workload.
    pub fn content(self) -> crate::source::Content {
        match self {
            WorkloadKind::Sqlite => crate::source::Content::Sqlite,
            _ => crate::source::Content::Pattern,
        }
    }
}

/// The offsets the application reads, `access_bytes` each, in order; for
/// `sqlite`, the keys it looks up.
pub fn access_order(
    kind: WorkloadKind,
    region_bytes: u64,
    access_bytes: u64,
    seed: u64,
) -> Vec<u64> {
    let slots = region_bytes / access_bytes;
    if kind == WorkloadKind::Idle {
        return Vec::new();
    }
    if kind == WorkloadKind::Sqlite {
        let lookups = (slots / crate::sqlite_app::SLOTS_PER_LOOKUP).max(1);
        return crate::sqlite_app::lookup_keys(lookups, seed);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut order: Vec<u64> = (0..slots).collect();
    match kind {
        WorkloadKind::Sequential | WorkloadKind::Sqlite | WorkloadKind::Idle => {}
        WorkloadKind::Random => order.shuffle(&mut rng),
        WorkloadKind::Zipfian => {
            let mut scatter = order.clone();
            scatter.shuffle(&mut rng);
            match Zipf::new(slots as f64, ZIPF_EXPONENT) {
                Ok(zipf) => {
                    for slot in order.iter_mut() {
                        // Zipf samples ranks 1..=slots as floats.
                        let rank = (zipf.sample(&mut rng) as u64).clamp(1, slots) - 1;
                        *slot = scatter[rank as usize];
                    }
                }
                // Only a zero-slot region fails here, and it has no accesses.
                Err(_) => order.clear(),
            }
        }
    }
    order.iter().map(|s| s * access_bytes).collect()
}

/// What one pass of the workload measured.
#[derive(Debug, Clone)]
pub struct WorkloadOutcome {
    /// Accesses completed (all of them unless truncated).
    pub accesses: usize,
    pub bytes_read: u64,
    pub elapsed: Duration,
    /// The first access, from its start to its return.
    pub first_access: Option<Duration>,
    /// Every access, from its start to its return.
    pub latency: LatencyHistogram,
    /// Stopped at the deadline (or by Ctrl-C) before the last access.
    pub truncated: bool,
    /// CPU the workload thread was seen on -> samples.
    pub cpus: BTreeMap<String, u64>,
}

impl WorkloadOutcome {
    /// What a workload that reads nothing did.
    pub fn nothing() -> Self {
        Self {
            accesses: 0,
            bytes_read: 0,
            elapsed: Duration::ZERO,
            first_access: None,
            latency: LatencyHistogram::new(),
            truncated: false,
            cpus: BTreeMap::new(),
        }
    }
}

/// How often the loop samples which CPU it runs on.
const CPU_SAMPLE_EVERY: usize = 64;

/// Reads `region` at each offset of `order`, `access_bytes` at a time, until
/// done or `deadline`. Each access copies into a scratch buffer, which is what
/// an application reading its memory does; the copy is kept from being
/// optimized away.
pub fn run_reads(
    region: &[u8],
    order: &[u64],
    access_bytes: usize,
    deadline: Instant,
) -> WorkloadOutcome {
    let mut scratch = vec![0u8; access_bytes];
    let mut latency = LatencyHistogram::new();
    let mut cpus = BTreeMap::new();
    let mut first_access = None;
    let mut truncated = false;
    let mut done = 0;
    let start = Instant::now();
    for (i, &offset) in order.iter().enumerate() {
        let t0 = Instant::now();
        if t0 >= deadline || crate::interrupt::requested() {
            truncated = true;
            break;
        }
        let at = offset as usize;
        scratch.copy_from_slice(&region[at..at + access_bytes]);
        std::hint::black_box(&mut scratch);
        let took = t0.elapsed();
        latency.record(took.as_nanos() as u64);
        if i == 0 {
            first_access = Some(took);
        }
        if i % CPU_SAMPLE_EVERY == 0 {
            crate::host::count_cpu(&mut cpus, crate::host::current_cpu());
        }
        done += 1;
    }
    WorkloadOutcome {
        accesses: done,
        bytes_read: done as u64 * access_bytes as u64,
        elapsed: start.elapsed(),
        first_access,
        latency,
        truncated,
        cpus,
    }
}

/// Fills `buf` with seeded pseudo-random bytes: incompressible, reproducible.
pub fn fill_pattern(buf: &mut [u8], seed: u64) {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    rng.fill(buf);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_and_random_cover_every_slot_once() {
        for kind in [WorkloadKind::Sequential, WorkloadKind::Random] {
            let mut o = access_order(kind, 1 << 20, 4096, 7);
            assert_eq!(o.len(), 256);
            o.sort_unstable();
            assert!(o.iter().enumerate().all(|(i, &off)| off == i as u64 * 4096));
        }
        assert_eq!(
            access_order(WorkloadKind::Sequential, 1 << 20, 4096, 7)[1],
            4096
        );
    }

    #[test]
    fn orders_are_reproducible_and_seed_dependent() {
        let a = access_order(WorkloadKind::Random, 1 << 20, 4096, 1);
        assert_eq!(a, access_order(WorkloadKind::Random, 1 << 20, 4096, 1));
        assert_ne!(a, access_order(WorkloadKind::Random, 1 << 20, 4096, 2));
    }

    #[test]
    fn zipfian_is_skewed_and_in_range() {
        let o = access_order(WorkloadKind::Zipfian, 4 << 20, 4096, 3);
        assert_eq!(o.len(), 1024);
        assert!(o.iter().all(|&off| off < 4 << 20 && off % 4096 == 0));
        let mut counts = std::collections::HashMap::new();
        for off in &o {
            *counts.entry(off).or_insert(0) += 1;
        }
        let hottest = counts.values().max().copied().unwrap_or(0);
        assert!(
            hottest > 20,
            "hottest slot read {hottest} times: not skewed"
        );
        assert!(counts.len() < 1024, "zipfian touched every slot");
    }

    #[test]
    fn run_reads_counts_and_stops_at_the_deadline() {
        let region = vec![1u8; 64 * 1024];
        let order = access_order(WorkloadKind::Sequential, 64 * 1024, 4096, 0);
        let out = run_reads(
            &region,
            &order,
            4096,
            Instant::now() + Duration::from_secs(60),
        );
        assert_eq!(
            (out.accesses, out.bytes_read, out.truncated),
            (16, 65536, false)
        );
        assert_eq!(out.latency.len(), 16);
        assert!(out.first_access.is_some());
        let late = run_reads(&region, &order, 4096, Instant::now());
        assert!(late.truncated);
        assert_eq!(late.accesses, 0);
    }
}
