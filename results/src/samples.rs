//! Per-repetition samples of a run, by cell and metric: what `compare`
//! tests and what a baseline file keeps.
//!
//! A [`SampleSet`] comes from a run directory ([`SampleSet::from_run_dir`])
//! or a baseline file ([`Baseline::read`]); both carry the machine and build
//! they were measured on, so a comparison can say when those differ.
//!
//! Besides every scalar metric of a record, a set holds ratios measured
//! within one run: each repetition's throughput over the median of the
//! `baseline` implementation's cell at the same parameters in the same run
//! ([`IN_RUN_RATIOS`]). A machine that is slower for the whole run (another
//! tenant, a different clock) moves both sides of such a ratio together.
//! The divisor is the reference's median, not its repetition of the same
//! index: the runner runs a cell's repetitions back to back, so equal
//! indices are not measured at the same time and pairing them would only
//! add the reference's noise.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::summary::SUMMARY_METRICS;
use crate::{read_cells, BuildInfo, CellRecord, CellStatus, HostInfo, Manifest};

/// Errors reading samples from a run directory or a baseline file.
#[derive(Debug, thiserror::Error)]
pub enum SamplesError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a {what}: {source}")]
    Decode {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error(transparent)]
    Cells(#[from] crate::WriterError),
}

/// The implementation in-run ratios divide by.
pub const RATIO_REFERENCE: &str = "baseline";

/// Metrics divided by the reference's in the same run; each ratio is named
/// `<metric>/baseline`.
pub const IN_RUN_RATIOS: &[&str] = &["read_throughput_mib_s", "write_throughput_mib_s"];

/// The name of the in-run ratio of `metric`.
pub fn ratio_name(metric: &str) -> String {
    format!("{metric}/{RATIO_REFERENCE}")
}

/// The samples of one cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellSamples {
    pub implementation: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<String>,
    pub params: BTreeMap<String, serde_json::Value>,
    /// Repetitions recorded, of any status.
    pub repetitions: usize,
    /// Repetitions that failed (integrity or error); they give no samples.
    pub failed: usize,
    /// Repetitions skipped by the host; they give no samples.
    pub skipped: usize,
    /// Metric name -> one value per data repetition, in repetition order.
    pub samples: BTreeMap<String, Vec<f64>>,
}

/// Where a sample set was measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineDescription {
    pub host: HostInfo,
    pub build: BuildInfo,
    /// The run's emulation mode (`userspace-link`, `inproc`, ...).
    pub emulation_mode: String,
}

impl HostInfo {
    /// Each field that differs, as `name: self -> other`.
    pub fn differences(&self, other: &HostInfo) -> Vec<String> {
        let mut out = Vec::new();
        let mut check = |name: &str, a: String, b: String| {
            if a != b {
                out.push(format!("{name}: {a} -> {b}"));
            }
        };
        check("hostname", self.hostname.clone(), other.hostname.clone());
        check("kernel", self.kernel.clone(), other.kernel.clone());
        check("arch", self.arch.clone(), other.arch.clone());
        check("cpu model", self.cpu_model.clone(), other.cpu_model.clone());
        check("cpus", self.cpus.to_string(), other.cpus.to_string());
        check(
            "memory bytes",
            self.memory_bytes.to_string(),
            other.memory_bytes.to_string(),
        );
        check("root", self.is_root.to_string(), other.is_root.to_string());
        out
    }
}

impl MachineDescription {
    /// What differs between two machines (and builds) in ways that move
    /// numbers: the host, the emulation mode and how the binary was built.
    /// The git revision is left out: it is what a comparison is about.
    pub fn differences(&self, other: &MachineDescription) -> Vec<String> {
        let mut out = self.host.differences(&other.host);
        if self.emulation_mode != other.emulation_mode {
            out.push(format!(
                "emulation: {} -> {}",
                self.emulation_mode, other.emulation_mode
            ));
        }
        let (a, b) = (&self.build, &other.build);
        if (&a.profile, &a.opt_level, a.debug_assertions)
            != (&b.profile, &b.opt_level, b.debug_assertions)
        {
            out.push(format!(
                "build: {} opt-level {} debug-assertions {} -> {} opt-level {} debug-assertions {}",
                a.profile,
                a.opt_level,
                a.debug_assertions,
                b.profile,
                b.opt_level,
                b.debug_assertions
            ));
        }
        if !b.fit_for_numbers || !a.fit_for_numbers {
            out.push("a build not fit for numbers took part".to_owned());
        }
        out
    }
}

/// Every sample of a run, by cell id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleSet {
    pub scenario: String,
    pub profile: String,
    pub run_id: String,
    pub machine: MachineDescription,
    pub cells: BTreeMap<String, CellSamples>,
}

/// The scalar metrics of one record, by name: the summary's metrics
/// (histogram percentiles included), `total_ms`, `transfer_amplification`
/// and every metric of [`crate::Metrics::other`].
pub fn record_metrics(record: &CellRecord) -> BTreeMap<String, f64> {
    let mut out: BTreeMap<String, f64> = SUMMARY_METRICS
        .iter()
        .filter_map(|&name| crate::summary::scalar(record, name).map(|v| (name.to_owned(), v)))
        .collect();
    let m = &record.metrics;
    if let Some(v) = m.total_ms {
        out.insert("total_ms".to_owned(), v);
    }
    if let Some(v) = m.transfer_amplification {
        out.insert("transfer_amplification".to_owned(), v);
    }
    for (name, v) in &m.other {
        out.insert(name.clone(), *v);
    }
    out.retain(|_, v| v.is_finite());
    out
}

impl SampleSet {
    /// The samples of `records`, measured as `manifest` describes.
    pub fn from_records(manifest: &Manifest, records: &[CellRecord]) -> SampleSet {
        let mut cells: BTreeMap<String, CellSamples> = BTreeMap::new();
        for r in records {
            let cell = cells
                .entry(r.cell_id.clone())
                .or_insert_with(|| CellSamples {
                    implementation: r.implementation.clone(),
                    transport: r.transport.clone(),
                    params: r.params.clone(),
                    repetitions: 0,
                    failed: 0,
                    skipped: 0,
                    samples: BTreeMap::new(),
                });
            cell.repetitions += 1;
            match r.status {
                CellStatus::Failed => cell.failed += 1,
                CellStatus::Skipped => cell.skipped += 1,
                CellStatus::Ok | CellStatus::Truncated => {
                    for (name, v) in record_metrics(r) {
                        cell.samples.entry(name).or_default().push(v);
                    }
                }
            }
        }
        add_in_run_ratios(&mut cells);
        SampleSet {
            scenario: manifest.scenario.clone(),
            profile: manifest.profile.clone(),
            run_id: manifest.run_id.clone(),
            machine: MachineDescription {
                host: manifest.host.clone(),
                build: manifest.build.clone(),
                emulation_mode: manifest.emulation.mode.clone(),
            },
            cells,
        }
    }

    /// Adds `other`'s samples to this set's, cell by cell and metric by
    /// metric (a baseline pooled from several runs sees run-to-run
    /// variation that one run's back-to-back repetitions do not). Returns
    /// how `other`'s machine differs from this set's.
    pub fn absorb(&mut self, other: SampleSet) -> Vec<String> {
        let differences = self.machine.differences(&other.machine);
        for (id, cell) in other.cells {
            match self.cells.get_mut(&id) {
                None => {
                    self.cells.insert(id, cell);
                }
                Some(mine) => {
                    mine.repetitions += cell.repetitions;
                    mine.failed += cell.failed;
                    mine.skipped += cell.skipped;
                    for (metric, values) in cell.samples {
                        mine.samples.entry(metric).or_default().extend(values);
                    }
                }
            }
        }
        self.run_id = format!("{}+{}", self.run_id, other.run_id);
        differences
    }

    /// Reads `dir/manifest.json` and `dir/cells.jsonl`.
    pub fn from_run_dir(dir: &Path) -> Result<SampleSet, SamplesError> {
        let path = dir.join("manifest.json");
        let text = fs::read(&path).map_err(|source| SamplesError::Read {
            path: path.clone(),
            source,
        })?;
        let manifest: Manifest =
            serde_json::from_slice(&text).map_err(|source| SamplesError::Decode {
                path,
                what: "run manifest",
                source,
            })?;
        let (records, _torn) = read_cells(&dir.join("cells.jsonl"))?;
        Ok(SampleSet::from_records(&manifest, &records))
    }

    /// A run directory or a baseline file, whichever `path` is.
    pub fn load(path: &Path) -> Result<SampleSet, SamplesError> {
        if path.is_dir() {
            SampleSet::from_run_dir(path)
        } else {
            Baseline::read(path).map(|b| b.samples)
        }
    }
}

/// The baseline cell a cell's ratios divide by: the reference
/// implementation's cell whose every parameter the cell shares.
fn reference_cell<'a>(
    cells: &'a BTreeMap<String, CellSamples>,
    cell: &CellSamples,
) -> Option<&'a String> {
    cells
        .iter()
        .find(|(_, c)| {
            c.implementation == RATIO_REFERENCE
                && c.params.iter().all(|(k, v)| cell.params.get(k) == Some(v))
        })
        .map(|(id, _)| id)
}

fn add_in_run_ratios(cells: &mut BTreeMap<String, CellSamples>) {
    let mut ratios: Vec<(String, String, Vec<f64>)> = Vec::new();
    for (id, cell) in cells.iter() {
        if cell.implementation == RATIO_REFERENCE {
            continue;
        }
        let Some(reference) = reference_cell(cells, cell).map(|r| &cells[r]) else {
            continue;
        };
        for &metric in IN_RUN_RATIOS {
            let (Some(own), Some(theirs)) =
                (cell.samples.get(metric), reference.samples.get(metric))
            else {
                continue;
            };
            let Some(divisor) = crate::stats::median_of(theirs).filter(|d| *d != 0.0) else {
                continue;
            };
            let values: Vec<f64> = own
                .iter()
                .map(|v| v / divisor)
                .filter(|v| v.is_finite())
                .collect();
            if !values.is_empty() {
                ratios.push((id.clone(), ratio_name(metric), values));
            }
        }
    }
    for (id, name, values) in ratios {
        if let Some(cell) = cells.get_mut(&id) {
            cell.samples.insert(name, values);
        }
    }
}

/// What `results/baselines/<name>.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// Always [`Baseline::FORMAT`]: tells a baseline from other JSON.
    pub format: String,
    pub name: String,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// The run directory the samples came from, as given.
    pub source_run: String,
    pub samples: SampleSet,
}

impl Baseline {
    pub const FORMAT: &'static str = "memsync-bench-baseline/1";

    /// Reads and checks a baseline file.
    pub fn read(path: &Path) -> Result<Baseline, SamplesError> {
        let text = fs::read(path).map_err(|source| SamplesError::Read {
            path: path.to_owned(),
            source,
        })?;
        let baseline: Baseline =
            serde_json::from_slice(&text).map_err(|source| SamplesError::Decode {
                path: path.to_owned(),
                what: "baseline file",
                source,
            })?;
        if baseline.format != Self::FORMAT {
            return Err(SamplesError::Invalid {
                path: path.to_owned(),
                message: format!(
                    "format `{}`; this harness reads `{}`",
                    baseline.format,
                    Self::FORMAT
                ),
            });
        }
        Ok(baseline)
    }

    /// Writes the baseline as pretty JSON (diffs in git stay readable),
    /// atomically.
    pub fn write(&self, path: &Path) -> Result<(), SamplesError> {
        let mut json = serde_json::to_vec_pretty(self).map_err(|source| SamplesError::Decode {
            path: path.to_owned(),
            what: "baseline file",
            source,
        })?;
        json.push(b'\n');
        crate::writer::write_atomically(path, &json)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writer::tests::{manifest, record};

    fn rec(imp: &str, rep: u32, tput: f64, rtt: Option<f64>) -> CellRecord {
        let mut r = record(rep, CellStatus::Ok, tput);
        r.implementation = imp.into();
        r.params = BTreeMap::from([("region_mib".into(), serde_json::json!(8))]);
        if let Some(rtt) = rtt {
            r.params.insert("rtt_ms".into(), serde_json::json!(rtt));
        }
        r.cell_id = format!("s/{imp}/{:?}", rtt);
        r
    }

    #[test]
    fn samples_per_repetition_and_in_run_ratios() {
        let records = vec![
            rec("baseline", 0, 100.0, None),
            rec("baseline", 1, 200.0, None),
            rec("uffd", 0, 50.0, Some(10.0)),
            rec("uffd", 1, 50.0, Some(10.0)),
            {
                let mut r = rec("uffd", 2, 1.0, Some(10.0));
                r.status = CellStatus::Failed;
                r
            },
        ];
        let set = SampleSet::from_records(&manifest(), &records);
        let uffd = &set.cells["s/uffd/Some(10.0)"];
        assert_eq!(uffd.samples["read_throughput_mib_s"], vec![50.0, 50.0]);
        assert_eq!((uffd.repetitions, uffd.failed), (3, 1));
        // Over the reference's median in the run, (100 + 200) / 2.
        assert_eq!(
            uffd.samples["read_throughput_mib_s/baseline"],
            vec![50.0 / 150.0, 50.0 / 150.0]
        );
        assert!(!set.cells["s/baseline/None"]
            .samples
            .contains_key("read_throughput_mib_s/baseline"));
    }

    #[test]
    fn baseline_round_trips_and_rejects_other_json() {
        let dir = tempfile::tempdir().unwrap();
        let set = SampleSet::from_records(&manifest(), &[rec("baseline", 0, 1.0, None)]);
        let b = Baseline {
            format: Baseline::FORMAT.into(),
            name: "ci".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            source_run: "runs/x".into(),
            samples: set.clone(),
        };
        let path = dir.path().join("ci.json");
        b.write(&path).unwrap();
        assert_eq!(SampleSet::load(&path).unwrap(), set);

        let other = dir.path().join("other.json");
        fs::write(&other, br#"{"format": "x"}"#).unwrap();
        let err = Baseline::read(&other).unwrap_err();
        assert!(err.to_string().contains("other.json"), "{err}");
        let missing = SampleSet::load(&dir.path().join("missing.json")).unwrap_err();
        assert!(missing.to_string().contains("missing.json"), "{missing}");
    }

    #[test]
    fn absorbing_a_run_pools_its_samples() {
        let mut a = SampleSet::from_records(&manifest(), &[rec("uffd", 0, 1.0, Some(1.0))]);
        let b = SampleSet::from_records(
            &manifest(),
            &[
                rec("uffd", 0, 2.0, Some(1.0)),
                rec("uffd", 1, 3.0, Some(5.0)),
            ],
        );
        assert!(a.absorb(b).is_empty());
        assert_eq!(
            a.cells["s/uffd/Some(1.0)"].samples["read_throughput_mib_s"],
            vec![1.0, 2.0]
        );
        assert_eq!(a.cells["s/uffd/Some(1.0)"].repetitions, 2);
        assert!(a.cells.contains_key("s/uffd/Some(5.0)"));
    }

    #[test]
    fn machine_differences_are_named() {
        let a = SampleSet::from_records(&manifest(), &[]).machine;
        let mut b = a.clone();
        assert!(a.differences(&b).is_empty());
        b.host.cpus = 8;
        b.emulation_mode = "kernel-netem".into();
        let d = a.differences(&b);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d[0].contains("cpus: 2 -> 8"), "{d:?}");
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// A set of the test manifest's machine holding `(cell, metric, values)`.
    pub(crate) fn set(entries: &[(&str, &str, Vec<f64>)]) -> SampleSet {
        let mut set = SampleSet::from_records(&crate::writer::tests::manifest(), &[]);
        for (cell, metric, values) in entries {
            set.cells
                .entry((*cell).to_owned())
                .or_insert_with(|| CellSamples {
                    implementation: "uffd".into(),
                    transport: None,
                    params: BTreeMap::new(),
                    repetitions: values.len(),
                    failed: 0,
                    skipped: 0,
                    samples: BTreeMap::new(),
                })
                .samples
                .insert((*metric).to_owned(), values.clone());
        }
        set
    }
}
