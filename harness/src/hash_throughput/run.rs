//! Running a hash-throughput scenario: the region, the timed passes, the
//! records and the table.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::num::NonZeroUsize;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hashsync::{Algorithm, HashList};
use results::schema::Capability;
use results::{CellRecord, CellStatus, EmulationInfo, RunWriter, SummaryRow};

use crate::host::process_cpu_seconds;
use crate::runner::{new_manifest, progress_bar, run_id, utc_now, RunReport};

use super::{HashThroughputScenario, IMPLEMENTATION, MEMCPY, MEMORY_READ};

const MIB: f64 = (1u64 << 20) as f64;

/// What a cell measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    Hash { algorithm: Algorithm, chunk: usize },
    MemoryRead,
    Memcpy,
}

/// Runs `scenario`, writing into a new directory below `out`.
pub fn run(
    scenario: &HashThroughputScenario,
    capabilities: Vec<Capability>,
    out: &Path,
) -> anyhow::Result<RunReport> {
    let total = scenario.cells_per_repetition() * scenario.repetitions as usize;
    let run_id = run_id(&scenario.name);
    let dir = out.join(&run_id);
    let manifest = new_manifest(
        run_id,
        (&scenario.name, &scenario.profile),
        serde_json::to_value(scenario).context("encoding the scenario")?,
        EmulationInfo {
            mode: "none".into(),
            emulator: "none: hashing in memory, no link".into(),
            accuracy: None,
            calibration: vec![],
        },
        capabilities,
        total,
    );
    let mut warnings = manifest.warnings.clone();
    let mut writer = RunWriter::create(&dir, manifest)
        .with_context(|| format!("creating the run directory under {}", out.display()))?;

    let len = usize::try_from(scenario.region_mib << 20).context("region size")?;
    let region = pattern(len, scenario.seed);
    // The copy target, touched once so page faults stay out of the timing.
    let mut copy = vec![1u8; len];
    let mut references: BTreeMap<(Algorithm, usize), HashList> = BTreeMap::new();

    let progress = progress_bar(total);
    let mut interrupted = false;
    let measure = Duration::from_secs_f64(scenario.measure_s);
    'reps: for repetition in 0..scenario.repetitions {
        for &threads in &scenario.threads {
            let threads = NonZeroUsize::new(threads).context("threads validated as >= 1")?;
            let mut works = vec![Work::MemoryRead, Work::Memcpy];
            for &algorithm in &scenario.algorithms {
                for &chunk_kib in &scenario.chunk_kib {
                    let chunk = usize::try_from(chunk_kib << 10).context("chunk size")?;
                    works.push(Work::Hash { algorithm, chunk });
                }
            }
            for work in works {
                if crate::interrupt::requested() {
                    interrupted = true;
                    break 'reps;
                }
                progress.set_message(format!("{} threads, {work:?}", threads.get()));
                let mut record = new_record(scenario, work, threads.get(), repetition);
                let start = Instant::now();
                let outcome = match work {
                    Work::Hash { algorithm, chunk } => {
                        let reference = match references.entry((algorithm, chunk)) {
                            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                            std::collections::btree_map::Entry::Vacant(v) => v.insert(
                                HashList::compute(&region, chunk, algorithm, NonZeroUsize::MIN)
                                    .context("chunk size validated")?,
                            ),
                        };
                        measure_hash(&region, algorithm, chunk, threads, measure, reference)
                    }
                    Work::MemoryRead => measure_read(&region, threads, measure),
                    Work::Memcpy => measure_copy(&region, &mut copy, threads, measure),
                };
                record.metrics.integrity = Some(outcome.intact);
                if outcome.intact {
                    let mib_s = outcome.bytes as f64 / MIB / outcome.elapsed.as_secs_f64();
                    record
                        .metrics
                        .other
                        .insert("hash_throughput_mib_s".into(), mib_s);
                    record
                        .metrics
                        .other
                        .insert("passes".into(), outcome.passes as f64);
                    record.metrics.cpu_s = Some(outcome.cpu_s);
                } else {
                    record.status = CellStatus::Failed;
                    record.reason = Some(match work {
                        Work::Hash { .. } => {
                            "the parallel hash list differs from the one-thread reference".into()
                        }
                        _ => "the pass did not see the region's bytes".into(),
                    });
                }
                record.wall_ms = start.elapsed().as_secs_f64() * 1e3;
                tracing::info!(cell = %record.cell_id, status = ?record.status, "cell done");
                writer.append(record).context("recording a cell")?;
                progress.inc(1);
            }
        }
    }
    progress.finish_and_clear();
    if interrupted {
        warnings.push(format!(
            "interrupted by Ctrl-C after {} of {total} cell repetitions",
            writer.records().len()
        ));
    }
    if crate::host::cpu_count() < scenario.threads.iter().copied().max().unwrap_or(1) {
        warnings.push(format!(
            "{} CPUs: cells with more threads than CPUs time-share them",
            crate::host::cpu_count()
        ));
    }
    writer.manifest_mut().warnings = warnings.clone();
    let rows = results::summarize(writer.records());
    let dir = writer
        .finish(utc_now())
        .context("finishing the run directory")?;
    Ok(RunReport {
        dir,
        rows,
        interrupted,
        warnings,
    })
}

fn new_record(
    scenario: &HashThroughputScenario,
    work: Work,
    threads: usize,
    repetition: u32,
) -> CellRecord {
    let (algorithm, chunk) = match work {
        Work::Hash { algorithm, chunk } => (algorithm.name(), Some(chunk >> 10)),
        Work::MemoryRead => (MEMORY_READ, None),
        Work::Memcpy => (MEMCPY, None),
    };
    let mut params = BTreeMap::from([
        ("algorithm".to_owned(), serde_json::json!(algorithm)),
        ("threads".to_owned(), serde_json::json!(threads)),
        (
            "region_mib".to_owned(),
            serde_json::json!(scenario.region_mib),
        ),
    ]);
    if let Some(kib) = chunk {
        params.insert("chunk_kib".to_owned(), serde_json::json!(kib));
    }
    let id: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", results::summary::param_text(v)))
        .collect();
    crate::runner::new_cell_record(
        format!("{}/{IMPLEMENTATION}/{}", scenario.name, id.join(",")),
        &scenario.name,
        IMPLEMENTATION,
        "none",
        params,
        repetition,
    )
}

/// What the timed passes of one cell did.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    bytes: u64,
    passes: u64,
    elapsed: Duration,
    cpu_s: f64,
    intact: bool,
}

/// One untimed pass (caches, page tables, thread start-up paths), then
/// passes until `measure` has passed, at least one.
fn timed(len: usize, measure: Duration, mut pass: impl FnMut()) -> (u64, u64, Duration, f64) {
    pass();
    let cpu = process_cpu_seconds();
    let start = Instant::now();
    let mut passes = 0u64;
    while passes == 0 || start.elapsed() < measure {
        pass();
        passes += 1;
    }
    let elapsed = start.elapsed();
    (
        len as u64 * passes,
        passes,
        elapsed,
        process_cpu_seconds() - cpu,
    )
}

fn measure_hash(
    region: &[u8],
    algorithm: Algorithm,
    chunk: usize,
    threads: NonZeroUsize,
    measure: Duration,
    reference: &HashList,
) -> Outcome {
    let first = HashList::compute(region, chunk, algorithm, threads);
    let intact = first.as_ref().is_ok_and(|l| l == reference);
    let (bytes, passes, elapsed, cpu_s) = timed(region.len(), measure, || {
        // The chunk size was validated, so the result is always a list.
        black_box(HashList::compute(black_box(region), chunk, algorithm, threads).ok());
    });
    Outcome {
        bytes,
        passes,
        elapsed,
        cpu_s,
        intact,
    }
}

/// Sums the region as little-endian u64 words, `threads` shares at once.
fn sum_words(region: &[u8], threads: NonZeroUsize) -> u64 {
    // Shares are whole 64-byte blocks, so only the last one has a tail and
    // the sum is the same for any thread count.
    let share = region.len().div_ceil(threads.get()).next_multiple_of(64);
    std::thread::scope(|scope| {
        let parts: Vec<_> = region
            .chunks(share.max(64))
            .map(|part| scope.spawn(move || sum_part(part)))
            .collect();
        parts
            .into_iter()
            .map(|p| p.join().unwrap_or(0))
            .fold(0, u64::wrapping_add)
    })
}

/// Eight independent lanes over 64-byte blocks, so the compiler keeps
/// the loop in vector registers and the pass runs at memory speed rather
/// than at one add per word.
fn sum_part(part: &[u8]) -> u64 {
    let mut lanes = [0u64; 8];
    let blocks = part.chunks_exact(64);
    let tail = blocks.remainder();
    for block in blocks {
        for (lane, word) in lanes.iter_mut().zip(block.chunks_exact(8)) {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            *lane = lane.wrapping_add(u64::from_le_bytes(w));
        }
    }
    let mut sum = lanes.iter().fold(0u64, |a, &l| a.wrapping_add(l));
    for word in tail.chunks(8) {
        let mut w = [0u8; 8];
        w[..word.len()].copy_from_slice(word);
        sum = sum.wrapping_add(u64::from_le_bytes(w));
    }
    sum
}

fn measure_read(region: &[u8], threads: NonZeroUsize, measure: Duration) -> Outcome {
    let expected = sum_words(region, NonZeroUsize::MIN);
    let intact = sum_words(region, threads) == expected;
    let (bytes, passes, elapsed, cpu_s) = timed(region.len(), measure, || {
        black_box(sum_words(black_box(region), threads));
    });
    Outcome {
        bytes,
        passes,
        elapsed,
        cpu_s,
        intact,
    }
}

fn copy_parallel(region: &[u8], copy: &mut [u8], threads: NonZeroUsize) {
    let share = region.len().div_ceil(threads.get()).max(1);
    std::thread::scope(|scope| {
        for (from, to) in region.chunks(share).zip(copy.chunks_mut(share)) {
            scope.spawn(move || to.copy_from_slice(from));
        }
    });
}

fn measure_copy(
    region: &[u8],
    copy: &mut [u8],
    threads: NonZeroUsize,
    measure: Duration,
) -> Outcome {
    copy.fill(0);
    copy_parallel(region, copy, threads);
    let intact = copy == region;
    let (bytes, passes, elapsed, cpu_s) = timed(region.len(), measure, || {
        copy_parallel(black_box(region), black_box(&mut *copy), threads);
    });
    Outcome {
        bytes,
        passes,
        elapsed,
        cpu_s,
        intact,
    }
}

/// `len` bytes of xorshift output: incompressible, and no two chunks alike.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = vec![0u8; len];
    for word in out.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        word.copy_from_slice(&state.to_le_bytes()[..word.len()]);
    }
    out
}

fn param<'a>(row: &'a SummaryRow, name: &str) -> Option<&'a serde_json::Value> {
    row.params.get(name)
}

fn gib_s(row: &SummaryRow) -> Option<f64> {
    row.other_medians
        .get("hash_throughput_mib_s")
        .map(|m| m / 1024.0)
}

/// GiB/s per algorithm (rows) and chunk size (columns), one block per
/// thread count; the ceilings first.
pub fn table(rows: &[SummaryRow]) -> comfy_table::Table {
    use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
    let mut chunks: Vec<u64> = rows
        .iter()
        .filter_map(|r| param(r, "chunk_kib")?.as_u64())
        .collect();
    chunks.sort_unstable();
    chunks.dedup();
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    let mut header = vec!["threads".to_owned(), "algorithm".to_owned()];
    header.extend(chunks.iter().map(|c| format!("{c} KiB GiB/s")));
    header.push("CPU s/GiB".to_owned());
    t.set_header(header);
    let mut keys: Vec<(u64, String)> = Vec::new();
    for r in rows {
        let key = (
            param(r, "threads").and_then(|v| v.as_u64()).unwrap_or(0),
            param(r, "algorithm")
                .map(results::summary::param_text)
                .unwrap_or_default(),
        );
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    for (threads, algorithm) in keys {
        let of_key: Vec<&SummaryRow> = rows
            .iter()
            .filter(|r| {
                param(r, "threads").and_then(|v| v.as_u64()) == Some(threads)
                    && param(r, "algorithm")
                        .map(results::summary::param_text)
                        .as_deref()
                        == Some(algorithm.as_str())
            })
            .collect();
        let mut line = vec![threads.to_string(), algorithm.clone()];
        if of_key.iter().all(|r| param(r, "chunk_kib").is_none()) {
            let v = of_key.first().and_then(|r| gib_s(r));
            line.push(format!("{} (no chunks)", fmt(v)));
            line.extend(chunks.iter().skip(1).map(|_| String::new()));
        } else {
            for c in &chunks {
                let v = of_key
                    .iter()
                    .find(|r| param(r, "chunk_kib").and_then(|v| v.as_u64()) == Some(*c))
                    .and_then(|r| gib_s(r));
                line.push(fmt(v));
            }
        }
        // CPU per GiB hashed, over every chunk size of the key.
        let (cpu, gib): (f64, f64) = of_key
            .iter()
            .filter_map(|r| {
                let cpu = r.medians.get("cpu_s")?;
                let passes = r.other_medians.get("passes")?;
                let mib = param(r, "region_mib")?.as_f64()?;
                Some((*cpu, passes * mib / 1024.0))
            })
            .fold((0.0, 0.0), |(a, b), (c, g)| (a + c, b + g));
        line.push(if gib > 0.0 {
            format!("{:.3}", cpu / gib)
        } else {
            "-".into()
        });
        t.add_row(line);
    }
    t
}

fn fmt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.2}"))
}

/// Per thread count: the fastest hashing cell against the memory-read
/// ceiling, and which algorithm and chunk size it was.
pub fn ceiling_lines(rows: &[SummaryRow]) -> Vec<String> {
    let mut threads: Vec<u64> = rows
        .iter()
        .filter_map(|r| param(r, "threads")?.as_u64())
        .collect();
    threads.sort_unstable();
    threads.dedup();
    let mut lines = Vec::new();
    for n in threads {
        let at = |r: &&SummaryRow| param(r, "threads").and_then(|v| v.as_u64()) == Some(n);
        let ceiling = rows
            .iter()
            .filter(at)
            .find(|r| {
                param(r, "algorithm")
                    .map(results::summary::param_text)
                    .as_deref()
                    == Some(MEMORY_READ)
            })
            .and_then(gib_s);
        for algorithm in Algorithm::ALL {
            let best = rows
                .iter()
                .filter(at)
                .filter(|r| {
                    param(r, "algorithm")
                        .map(results::summary::param_text)
                        .as_deref()
                        == Some(algorithm.name())
                })
                .filter_map(|r| Some((gib_s(r)?, param(r, "chunk_kib")?.as_u64()?)))
                .max_by(|a, b| a.0.total_cmp(&b.0));
            if let (Some((best, chunk)), Some(ceiling)) = (best, ceiling) {
                lines.push(format!(
                    "{n} thread(s): {algorithm} peaks at {best:.2} GiB/s ({chunk} KiB chunks) = {:.1} % of the memory-read ceiling ({ceiling:.2} GiB/s)",
                    best / ceiling * 100.0
                ));
            }
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_passes_see_every_byte_with_any_thread_count() {
        let region = pattern(1_000_003, 7);
        let one = sum_words(&region, NonZeroUsize::MIN);
        for n in [2, 3, 4, 16] {
            let threads = NonZeroUsize::new(n).unwrap();
            assert_eq!(sum_words(&region, threads), one, "{n} threads");
            let mut copy = vec![0u8; region.len()];
            copy_parallel(&region, &mut copy, threads);
            assert!(copy == region, "{n} threads");
        }
        // A changed byte changes the sum, so the check can fail.
        let mut changed = region.clone();
        changed[999_999] ^= 1;
        assert_ne!(sum_words(&changed, NonZeroUsize::MIN), one);
    }

    #[test]
    fn a_cell_records_throughput_or_fails_on_a_wrong_list() {
        let region = pattern(1 << 20, 1);
        let threads = NonZeroUsize::new(2).unwrap();
        let reference =
            HashList::compute(&region, 4096, Algorithm::Crc32, NonZeroUsize::MIN).unwrap();
        let ok = measure_hash(
            &region,
            Algorithm::Crc32,
            4096,
            threads,
            Duration::ZERO,
            &reference,
        );
        assert!(ok.intact && ok.passes == 1 && ok.bytes == 1 << 20);
        let other = HashList::compute(&region[1..], 4096, Algorithm::Crc32, threads).unwrap();
        let bad = measure_hash(
            &region,
            Algorithm::Crc32,
            4096,
            threads,
            Duration::ZERO,
            &other,
        );
        assert!(!bad.intact);
    }
}
