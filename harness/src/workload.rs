//! What the application does with its region: the access patterns, and the
//! loops that perform and time them.
//!
//! Orders are seeded, so a cell is reproducible and every implementation in a
//! run sees the same sequence of accesses.
//!
//! Writing is a property of the workload, not a separate `operation` axis:
//! a pattern is what the application does to its memory, and keeping reads
//! and writes in one list leaves the cell ids of every read-only scenario as
//! they were, needs no axis that every implementation would have to expand,
//! and lets a figure facet by `workload` to split read and write patterns.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use results::LatencyHistogram;
use serde::{Deserialize, Serialize};

/// Access patterns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadKind {
    /// Reads every access slot once, in ascending order.
    Sequential,
    /// Reads every access slot once, in a seeded random order.
    Random,
    /// Reads as many accesses as there are slots, drawn from a Zipf
    /// distribution (exponent [`ZIPF_EXPONENT`]) over slots scattered by a
    /// seeded permutation, so hot data is not all at the front (YCSB's
    /// scrambled zipfian). Touches only part of the region.
    Zipfian,
    /// Indexed lookups in a SQLite database that fills the region, opened
    /// in place (see `sqlite_app`): a real application's access pattern.
    /// One lookup per [`crate::sqlite_app::SLOTS_PER_LOOKUP`] access slots.
    Sqlite,
    /// No reads at all: the cell measures a managed mount's background
    /// pull alone (its rate against what its workers and the link allow),
    /// then checks the whole region once every chunk is local.
    Idle,
    /// Writes every access slot once, in ascending order, then flushes.
    SequentialWrite,
    /// Writes every access slot once, in the same seeded random order as
    /// `random`, then flushes.
    RandomWrite,
    /// Writes the slots `zipfian` reads, in its order, then flushes: a hot
    /// set updated again and again, the rest untouched, so the flush writes
    /// scattered runs of pages rather than the whole region.
    ZipfianWrite,
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
            WorkloadKind::SequentialWrite => "sequential-write",
            WorkloadKind::RandomWrite => "random-write",
            WorkloadKind::ZipfianWrite => "zipfian-write",
        })
    }
}

impl WorkloadKind {
    /// Whether the pattern touches every byte of the region exactly once.
    pub fn covers_region(self) -> bool {
        !matches!(
            self,
            WorkloadKind::Zipfian
                | WorkloadKind::ZipfianWrite
                | WorkloadKind::Sqlite
                | WorkloadKind::Idle
        )
    }

    /// Whether the application writes (and then flushes) instead of reading.
    pub fn writes(self) -> bool {
        matches!(
            self,
            WorkloadKind::SequentialWrite | WorkloadKind::RandomWrite | WorkloadKind::ZipfianWrite
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

/// The offsets the application reads or writes, `access_bytes` each, in
/// order (a write pattern has the order of its read counterpart); for
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
        WorkloadKind::Sequential
        | WorkloadKind::SequentialWrite
        | WorkloadKind::Sqlite
        | WorkloadKind::Idle => {}
        WorkloadKind::Random | WorkloadKind::RandomWrite => order.shuffle(&mut rng),
        WorkloadKind::Zipfian | WorkloadKind::ZipfianWrite => {
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
    pub bytes_written: u64,
    /// From the first access to the last; for writes, to the end of the
    /// flush.
    pub elapsed: Duration,
    /// How long the flush after the writes took (writes only).
    pub flush: Option<Duration>,
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
            bytes_written: 0,
            elapsed: Duration::ZERO,
            flush: None,
            first_access: None,
            latency: LatencyHistogram::new(),
            truncated: false,
            cpus: BTreeMap::new(),
        }
    }
}

/// How often the loop samples which CPU it runs on.
const CPU_SAMPLE_EVERY: usize = 64;

/// What [`timed_accesses`] saw.
#[derive(Debug)]
pub struct TimedAccesses {
    /// Accesses completed.
    pub done: usize,
    /// Each access, from its start to its return.
    pub latency: LatencyHistogram,
    /// The first access alone.
    pub first_access: Option<Duration>,
    /// Stopped at the deadline (or by Ctrl-C) before the last access.
    pub truncated: bool,
    /// CPU the loop was seen on -> samples.
    pub cpus: BTreeMap<String, u64>,
}

/// The loop every workload times its accesses with: `access(item)` for each
/// item of `order` until done, `deadline` or Ctrl-C, each one timed, the
/// CPU sampled every `cpu_every` accesses. An access that fails ends the
/// loop with its error.
pub fn timed_accesses<T: Copy, E>(
    order: &[T],
    deadline: Instant,
    cpu_every: usize,
    mut access: impl FnMut(T) -> Result<(), E>,
) -> Result<TimedAccesses, E> {
    let mut timed = TimedAccesses {
        done: 0,
        latency: LatencyHistogram::new(),
        first_access: None,
        truncated: false,
        cpus: BTreeMap::new(),
    };
    for (i, &item) in order.iter().enumerate() {
        let t0 = Instant::now();
        if t0 >= deadline || crate::interrupt::requested() {
            timed.truncated = true;
            break;
        }
        access(item)?;
        let took = t0.elapsed();
        timed.latency.record(took.as_nanos() as u64);
        if i == 0 {
            timed.first_access = Some(took);
        }
        if i % cpu_every.max(1) == 0 {
            crate::host::count_cpu(&mut timed.cpus, crate::host::current_cpu());
        }
        timed.done += 1;
    }
    Ok(timed)
}

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
    let start = Instant::now();
    let timed = timed_accesses(order, deadline, CPU_SAMPLE_EVERY, |offset| {
        let at = offset as usize;
        scratch.copy_from_slice(&region[at..at + access_bytes]);
        std::hint::black_box(&mut scratch);
        Ok::<(), std::convert::Infallible>(())
    });
    let Ok(timed) = timed;
    WorkloadOutcome {
        accesses: timed.done,
        bytes_read: timed.done as u64 * access_bytes as u64,
        bytes_written: 0,
        elapsed: start.elapsed(),
        flush: None,
        first_access: timed.first_access,
        latency: timed.latency,
        truncated: timed.truncated,
        cpus: timed.cpus,
    }
}

/// What a write workload writes over `source` bytes: their complement. It
/// differs from the source in every byte (a write that never arrived, or
/// arrived at the wrong offset, changes the hash), depends on the position
/// (the source is random, so no two chunks carry the same payload), and
/// needs no second region-sized buffer to know what the result must be.
/// Writing it twice gives the same bytes, so repeated slots are harmless.
pub fn write_payload(dest: &mut [u8], source: &[u8]) {
    for (d, s) in dest.iter_mut().zip(source) {
        *d = !*s;
    }
}

/// The region after the first `done` writes of `order`, `access_bytes`
/// each, over `source`: what the source must hold once the writes are
/// flushed.
pub fn expected_after_writes(
    source: &[u8],
    order: &[u64],
    done: usize,
    access_bytes: usize,
) -> Vec<u8> {
    let mut expected = source.to_vec();
    for &offset in &order[..done.min(order.len())] {
        let at = offset as usize;
        write_payload(
            &mut expected[at..at + access_bytes],
            &source[at..at + access_bytes],
        );
    }
    expected
}

/// Writes [`write_payload`] of `source` into `region` at each offset of
/// `order`, `access_bytes` at a time, until done or `deadline`, then calls
/// `flush` on it (which must put the writes where they are going: `msync`
/// for a mapping). The flush runs even after a deadline, so what was written
/// can be checked; its time counts in `elapsed`, as an application must wait
/// for it too.
pub fn run_writes<R: std::ops::DerefMut<Target = [u8]>>(
    region: &mut R,
    source: &[u8],
    order: &[u64],
    access_bytes: usize,
    deadline: Instant,
    flush: impl FnOnce(&mut R) -> Result<(), String>,
) -> Result<WorkloadOutcome, String> {
    let bytes: &mut [u8] = region;
    let start = Instant::now();
    let timed = timed_accesses(order, deadline, CPU_SAMPLE_EVERY, |offset| {
        let at = offset as usize;
        write_payload(
            &mut bytes[at..at + access_bytes],
            &source[at..at + access_bytes],
        );
        std::hint::black_box(&mut bytes[at]);
        Ok::<(), std::convert::Infallible>(())
    });
    let Ok(timed) = timed;
    let flush_start = Instant::now();
    flush(region)?;
    let flushed = flush_start.elapsed();
    Ok(WorkloadOutcome {
        accesses: timed.done,
        bytes_read: 0,
        bytes_written: timed.done as u64 * access_bytes as u64,
        elapsed: start.elapsed(),
        flush: Some(flushed),
        first_access: timed.first_access,
        latency: timed.latency,
        truncated: timed.truncated,
        cpus: timed.cpus,
    })
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
    fn write_patterns_have_the_order_of_their_read_counterparts() {
        for (read, write) in [
            (WorkloadKind::Sequential, WorkloadKind::SequentialWrite),
            (WorkloadKind::Random, WorkloadKind::RandomWrite),
            (WorkloadKind::Zipfian, WorkloadKind::ZipfianWrite),
        ] {
            assert_eq!(
                access_order(read, 1 << 20, 4096, 5),
                access_order(write, 1 << 20, 4096, 5)
            );
            assert!(write.writes() && !read.writes());
            assert_eq!(write.covers_region(), read.covers_region());
        }
        let names: Vec<String> = [
            WorkloadKind::SequentialWrite,
            WorkloadKind::RandomWrite,
            WorkloadKind::ZipfianWrite,
        ]
        .iter()
        .map(|k| {
            serde_json::to_value(k)
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
        assert_eq!(names, ["sequential-write", "random-write", "zipfian-write"]);
        assert_eq!(WorkloadKind::RandomWrite.to_string(), "random-write");
    }

    #[test]
    fn the_expected_image_complements_exactly_the_written_slots() {
        let source: Vec<u8> = (0..32u8).collect();
        let order = [16, 0, 8, 24];
        let expected = expected_after_writes(&source, &order, 2, 8);
        let mut want = source.clone();
        for b in &mut want[0..8] {
            *b = !*b;
        }
        for b in &mut want[16..24] {
            *b = !*b;
        }
        assert_eq!(expected, want);
        // Every byte of a written slot differs from the source.
        assert!(expected[16..24]
            .iter()
            .zip(&source[16..24])
            .all(|(e, s)| e != s));
        // Writing a slot twice leaves what writing it once does.
        assert_eq!(expected_after_writes(&source, &[16, 0, 16, 0], 4, 8), want);
        assert_eq!(expected_after_writes(&source, &order, 0, 8), source);
    }

    #[test]
    fn run_writes_writes_the_payload_then_flushes_once() {
        let mut source = vec![0u8; 64 * 1024];
        fill_pattern(&mut source, 9);
        let mut region = source.clone();
        let order = access_order(WorkloadKind::RandomWrite, 64 * 1024, 4096, 0);
        let mut flushes = 0;
        let out = run_writes(
            &mut region,
            &source,
            &order,
            4096,
            Instant::now() + Duration::from_secs(60),
            |_| {
                flushes += 1;
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(flushes, 1);
        assert_eq!(
            (
                out.accesses,
                out.bytes_written,
                out.bytes_read,
                out.truncated
            ),
            (16, 65536, 0, false)
        );
        assert!(out.flush.is_some() && out.first_access.is_some());
        assert_eq!(region, expected_after_writes(&source, &order, 16, 4096));

        // Past the deadline nothing is written, and the flush still runs.
        let mut untouched = source.clone();
        let late = run_writes(
            &mut untouched,
            &source,
            &order,
            4096,
            Instant::now(),
            |_| Err("the flush failed".into()),
        );
        assert_eq!(late.unwrap_err(), "the flush failed");
        assert_eq!(untouched, source);
        let late = run_writes(
            &mut untouched,
            &source,
            &order,
            4096,
            Instant::now(),
            |_| Ok(()),
        )
        .unwrap();
        assert!(late.truncated && late.accesses == 0 && late.flush.is_some());
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
