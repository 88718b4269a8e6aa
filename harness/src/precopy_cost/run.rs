//! Running a precopy-cost scenario: the regions, the cycles, the records,
//! the table.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use rand::SeedableRng;
use results::schema::Capability;
use results::{CellRecord, CellStatus, EmulationInfo, RunWriter, SummaryRow};

use crate::host::process_cpu_seconds;
use crate::runner::{new_manifest, progress_bar, run_id, utc_now, RunReport};

use super::{Point, PrecopyCostScenario, Tracker};

const PAGE: usize = 4096;

/// Runs `scenario`, writing into a new directory below `out`.
pub fn run(
    scenario: &PrecopyCostScenario,
    capabilities: Vec<Capability>,
    out: &Path,
) -> anyhow::Result<RunReport> {
    let points = scenario.points();
    let total = points.len() * scenario.trackers.len() * scenario.repetitions as usize;
    let run_id = run_id(&scenario.name);
    let dir = out.join(&run_id);
    let manifest = new_manifest(
        run_id,
        (&scenario.name, &scenario.profile),
        serde_json::to_value(scenario).context("encoding the scenario")?,
        EmulationInfo {
            mode: "none".into(),
            emulator: "none: tracking cost in this process, nothing sent".into(),
            accuracy: None,
            calibration: vec![],
        },
        capabilities,
        total,
    );
    let mut warnings = manifest.warnings.clone();
    let mut writer = RunWriter::create(&dir, manifest)
        .with_context(|| format!("creating the run directory under {}", out.display()))?;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| usize::try_from(p).ok())
        .unwrap_or(PAGE);

    let progress = progress_bar(total);
    let mut interrupted = false;
    'reps: for repetition in 0..scenario.repetitions {
        for point in &points {
            // One sparse file per point, shared by the hashing cells: its
            // page cache warms once, not once per algorithm.
            let file = RegionFile::create(point.region_mib << 20)
                .context("creating the hashed region's file")?;
            for &tracker in &scenario.trackers {
                if crate::interrupt::requested() {
                    interrupted = true;
                    break 'reps;
                }
                progress.set_message(format!(
                    "{} {} MiB, {} % dirty",
                    tracker.name(),
                    point.region_mib,
                    point.dirty_fraction * 100.0
                ));
                let mut record = new_record(scenario, tracker, point, repetition);
                let start = Instant::now();
                let cell = Cell {
                    point: *point,
                    page,
                    cycles: scenario.cycles,
                    seed: scenario.seed,
                };
                let outcome = match tracker {
                    Tracker::Hash(algorithm) => {
                        let config = hashsync::SyncConfig {
                            threads: NonZeroUsize::new(scenario.hash_threads)
                                .unwrap_or(NonZeroUsize::MIN),
                            ..hashsync::SyncConfig::new(
                                (scenario.chunk_kib << 10) as usize,
                                algorithm,
                            )
                        };
                        cell.run_hash(&file.path, config)
                    }
                    Tracker::Wp(mode) => cell.run_wp(mode),
                };
                match outcome {
                    Ok(m) => fill(&mut record, &m),
                    Err(CellEnd::Skipped(reason)) => {
                        record.status = CellStatus::Skipped;
                        record.reason = Some(reason);
                    }
                    Err(CellEnd::Failed { reason, integrity }) => {
                        record.status = CellStatus::Failed;
                        record.metrics.integrity = integrity;
                        record.reason = Some(reason);
                    }
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
    writer.manifest_mut().warnings = warnings.clone();
    let rows = results::summarize(writer.records());
    let dir = writer
        .finish(utc_now())
        .context("finishing the run directory")?;
    let claims = super::claim_lines(&rows, &scenario.base);
    results::writer::write_atomically(&dir.join("claims.txt"), claims.join("\n").as_bytes())
        .context("writing claims.txt")?;
    Ok(RunReport {
        dir,
        rows,
        interrupted,
        warnings,
    })
}

/// A sparse file in the temporary directory, removed on drop.
#[derive(Debug)]
struct RegionFile {
    path: PathBuf,
}

impl RegionFile {
    fn create(len: u64) -> std::io::Result<Self> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "memsync-precopy-{}-{}.region",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let file = std::fs::File::create(&path)?;
        let guard = Self { path };
        file.set_len(len)?;
        Ok(guard)
    }
}

impl Drop for RegionFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "removing a region file failed");
        }
    }
}

/// Why a cell has no data.
#[derive(Debug)]
enum CellEnd {
    Skipped(String),
    Failed {
        reason: String,
        integrity: Option<bool>,
    },
}

fn failed(reason: impl Into<String>) -> CellEnd {
    CellEnd::Failed {
        reason: reason.into(),
        integrity: None,
    }
}

/// One measured cycle.
#[derive(Debug, Clone, Copy, Default)]
struct CycleCost {
    step_ms: f64,
    step_cpu_ms: f64,
    write_ms: f64,
    write_cpu_ms: f64,
    msync_ms: Option<f64>,
    hash_ms: Option<f64>,
    bytes_to_send: u64,
    dirty_pages: usize,
    chunks: Option<usize>,
}

#[derive(Debug, Clone, Copy)]
struct Cell {
    point: Point,
    page: usize,
    cycles: u32,
    seed: u64,
}

impl Cell {
    fn pages(&self) -> usize {
        ((self.point.region_mib << 20) as usize) / self.page
    }

    /// The pages written in `cycle`: the same for every tracker at this
    /// point, ascending.
    fn written(&self, cycle: u32) -> Vec<usize> {
        let pages = self.pages();
        let count = ((pages as f64 * self.point.dirty_fraction).round() as usize).clamp(1, pages);
        let seed = self.seed
            ^ self.point.region_mib.rotate_left(20)
            ^ self.point.dirty_fraction.to_bits()
            ^ u64::from(cycle).rotate_left(48);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut v = rand::seq::index::sample(&mut rng, pages, count).into_vec();
        v.sort_unstable();
        v
    }

    /// Writes one byte in each page of `written` (a different byte each
    /// cycle, changed so its page's hash changes); returns (ms, CPU ms).
    fn write(&self, region: &mut [u8], written: &[usize], cycle: u32) -> (f64, f64) {
        let cpu = process_cpu_seconds();
        let start = Instant::now();
        let offset = cycle as usize % self.page;
        for &p in written {
            let b = &mut region[p * self.page + offset];
            *b = b.wrapping_add(1);
        }
        (
            start.elapsed().as_secs_f64() * 1e3,
            (process_cpu_seconds() - cpu) * 1e3,
        )
    }

    fn run_hash(
        &self,
        path: &Path,
        config: hashsync::SyncConfig,
    ) -> Result<Vec<CycleCost>, CellEnd> {
        let mut source = hashsync::SyncSource::open(path, config)
            .map_err(|e| failed(format!("opening the region file: {e}")))?;
        let chunk_pages = config.chunk_size / self.page;
        let mut costs = Vec::new();
        for cycle in 0..=self.cycles {
            let written = self.written(cycle);
            let (write_ms, write_cpu_ms) = self.write(source.region_mut(), &written, cycle);
            let cpu = process_cpu_seconds();
            let start = Instant::now();
            let plan = source
                .plan()
                .map_err(|e| failed(format!("cycle {cycle}: {e}")))?;
            let step_ms = start.elapsed().as_secs_f64() * 1e3;
            let step_cpu_ms = (process_cpu_seconds() - cpu) * 1e3;
            let mut expected: Vec<usize> = if cycle == 0 {
                // Nothing to compare with yet: every chunk.
                (0..plan.hashes().len()).collect()
            } else {
                written.iter().map(|p| p / chunk_pages).collect()
            };
            expected.dedup();
            if plan.delta().chunks != expected {
                return Err(CellEnd::Failed {
                    reason: format!(
                        "cycle {cycle}: the delta names {} chunks, the writes touched {}",
                        plan.delta().chunks.len(),
                        expected.len()
                    ),
                    integrity: Some(false),
                });
            }
            costs.push(CycleCost {
                step_ms,
                step_cpu_ms,
                write_ms,
                write_cpu_ms,
                msync_ms: Some(plan.msync_time().as_secs_f64() * 1e3),
                hash_ms: Some(plan.hash_time().as_secs_f64() * 1e3),
                bytes_to_send: plan.delta().bytes(),
                dirty_pages: written.len(),
                chunks: Some(plan.delta().chunks.len()),
            });
            source.mark_sent(plan);
        }
        Ok(costs)
    }

    fn run_wp(&self, mode: uffd::WpMode) -> Result<Vec<CycleCost>, CellEnd> {
        let len = (self.point.region_mib << 20) as usize;
        let mut tracker = match uffd::DirtyTracker::anonymous(len, uffd::WpChoice::Only(mode)) {
            Ok(t) => t,
            Err(e @ uffd::WpError::Unavailable { .. }) => {
                return Err(CellEnd::Skipped(e.to_string()))
            }
            Err(e) => return Err(failed(e.to_string())),
        };
        let page = tracker.page_size();
        let mut costs = Vec::new();
        for cycle in 0..=self.cycles {
            let written = self.written(cycle);
            let (write_ms, write_cpu_ms) = self.write(tracker.as_mut_slice(), &written, cycle);
            let cpu = process_cpu_seconds();
            let start = Instant::now();
            let ranges = tracker
                .collect()
                .map_err(|e| failed(format!("cycle {cycle}: {e}")))?;
            let step_ms = start.elapsed().as_secs_f64() * 1e3;
            let step_cpu_ms = (process_cpu_seconds() - cpu) * 1e3;
            let reported: Vec<usize> = ranges
                .iter()
                .flat_map(|r| r.start / page..r.end / page)
                .collect();
            if reported != written {
                return Err(CellEnd::Failed {
                    reason: format!(
                        "cycle {cycle}: {} pages reported, {} written",
                        reported.len(),
                        written.len()
                    ),
                    integrity: Some(false),
                });
            }
            costs.push(CycleCost {
                step_ms,
                step_cpu_ms,
                write_ms,
                write_cpu_ms,
                msync_ms: None,
                hash_ms: None,
                bytes_to_send: (reported.len() * page) as u64,
                dirty_pages: written.len(),
                chunks: None,
            });
        }
        Ok(costs)
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Medians over the measured cycles (the warm-up, cycle 0, left out).
fn fill(record: &mut CellRecord, costs: &[CycleCost]) {
    let measured = costs.get(1..).unwrap_or(&[]);
    let mut put = |name: &str, f: &dyn Fn(&CycleCost) -> Option<f64>| {
        if let Some(m) = median(measured.iter().filter_map(f).collect()) {
            record.metrics.other.insert(name.to_owned(), m);
        }
    };
    put("precopy_cycle_ms", &|c| Some(c.step_ms));
    put("cycle_cpu_ms", &|c| Some(c.step_cpu_ms));
    put("write_ms", &|c| Some(c.write_ms));
    put("write_cpu_ms", &|c| Some(c.write_cpu_ms));
    put("msync_ms", &|c| c.msync_ms);
    put("hash_ms", &|c| c.hash_ms);
    put("bytes_to_send", &|c| Some(c.bytes_to_send as f64));
    put("dirty_pages", &|c| Some(c.dirty_pages as f64));
    put("chunks_to_send", &|c| c.chunks.map(|n| n as f64));
    if let Some(first) = costs.first() {
        record
            .metrics
            .other
            .insert("warmup_cycle_ms".into(), first.step_ms);
    }
    record.metrics.cpu_s = Some(
        measured
            .iter()
            .map(|c| c.step_cpu_ms + c.write_cpu_ms)
            .sum::<f64>()
            / 1e3,
    );
    record.metrics.integrity = Some(true);
    record
        .metrics
        .other
        .insert("cycles".into(), measured.len() as f64);
}

fn new_record(
    scenario: &PrecopyCostScenario,
    tracker: Tracker,
    point: &Point,
    repetition: u32,
) -> CellRecord {
    let mut params = BTreeMap::from([
        ("region_mib".to_owned(), serde_json::json!(point.region_mib)),
        (
            "dirty_fraction".to_owned(),
            serde_json::json!(point.dirty_fraction),
        ),
    ]);
    if let Tracker::Hash(_) = tracker {
        params.insert(
            "chunk_kib".to_owned(),
            serde_json::json!(scenario.chunk_kib),
        );
        params.insert(
            "hash_threads".to_owned(),
            serde_json::json!(scenario.hash_threads),
        );
    }
    let id: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", results::summary::param_text(v)))
        .collect();
    let implementation = tracker.name();
    crate::runner::new_cell_record(
        format!("{}/{implementation}/{}", scenario.name, id.join(",")),
        &scenario.name,
        &implementation,
        "none",
        params,
        repetition,
    )
}

/// One row per cell: the per-cycle cost table.
pub fn table(rows: &[SummaryRow]) -> comfy_table::Table {
    use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header([
        "implementation",
        "region MiB",
        "dirty %",
        "dirty pages",
        "cycle ms",
        "cycle CPU ms",
        "msync ms",
        "hash ms",
        "app write ms",
        "MiB to send",
        "status",
    ]);
    let mut sorted: Vec<&SummaryRow> = rows.iter().collect();
    sorted.sort_by(|a, b| {
        let key = |r: &SummaryRow| {
            (
                r.implementation.clone(),
                r.params
                    .get("region_mib")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(0),
                r.params
                    .get("dirty_fraction")
                    .and_then(|v| v.as_f64())
                    .unwrap_or(0.0),
            )
        };
        let (ia, ra, da) = key(a);
        let (ib, rb, db) = key(b);
        (ia, ra).cmp(&(ib, rb)).then(da.total_cmp(&db))
    });
    let m = |r: &SummaryRow, name: &str, digits: usize| {
        r.other_medians
            .get(name)
            .map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
    };
    for r in sorted {
        let status = if r.ok > 0 {
            "ok".to_owned()
        } else {
            r.reason.clone().unwrap_or_else(|| "no data".into())
        };
        t.add_row(vec![
            r.implementation.clone(),
            r.params
                .get("region_mib")
                .map(results::summary::param_text)
                .unwrap_or_default(),
            r.params
                .get("dirty_fraction")
                .and_then(|v| v.as_f64())
                .map_or_else(String::new, |f| format!("{}", f * 100.0)),
            m(r, "dirty_pages", 0),
            m(r, "precopy_cycle_ms", 3),
            m(r, "cycle_cpu_ms", 3),
            m(r, "msync_ms", 3),
            m(r, "hash_ms", 3),
            m(r, "write_ms", 3),
            r.other_medians.get("bytes_to_send").map_or_else(
                || "-".to_owned(),
                |b| format!("{:.3}", b / (1u64 << 20) as f64),
            ),
            status,
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(region_mib: u64, dirty_fraction: f64) -> Cell {
        Cell {
            point: Point {
                region_mib,
                dirty_fraction,
            },
            page: 4096,
            cycles: 2,
            seed: 1,
        }
    }

    #[test]
    fn written_pages_are_distinct_sorted_and_at_least_one() {
        let c = cell(4, 0.5);
        let w = c.written(0);
        assert_eq!(w.len(), 512);
        assert!(w.windows(2).all(|p| p[0] < p[1]));
        assert_eq!(c.written(0), w, "the same for every tracker");
        assert_ne!(c.written(1), w, "another set each cycle");
        assert_eq!(cell(4, 1e-9).written(0).len(), 1);
    }

    #[test]
    fn both_trackers_find_exactly_the_written_pages() {
        let c = cell(8, 0.01);
        let file = RegionFile::create(8 << 20).unwrap();
        let path = file.path.clone();
        let costs = c
            .run_hash(
                &path,
                hashsync::SyncConfig::new(64 << 10, hashsync::Algorithm::Xxh3),
            )
            .unwrap();
        assert_eq!(costs.len(), 3);
        assert_eq!(costs[1].dirty_pages, 20);
        assert!(costs[1].bytes_to_send >= 64 << 10);
        drop(file);
        assert!(!path.exists(), "the region file is removed on drop");
        match c.run_wp(uffd::WpMode::Async) {
            Ok(costs) => assert_eq!(costs[2].bytes_to_send, 20 * 4096),
            Err(CellEnd::Skipped(reason)) => eprintln!("async write-protect: {reason}"),
            Err(e) => panic!("{e:?}"),
        }
    }
}
