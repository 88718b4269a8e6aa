//! Reading a run directory: the manifest and every cell record.
//!
//! Records are read as JSON first and typed second, so a metric the
//! `results` crate does not know yet (a new scenario's) can still be
//! plotted by name.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use results::{CellRecord, Manifest};
use serde_json::Value;

/// Errors reading a run directory.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{path} is not a run directory: it has neither manifest.json nor cells.jsonl")]
    NotARun { path: PathBuf },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// One cell repetition: the typed record and its metrics by name.
#[derive(Debug, Clone)]
pub struct Record {
    pub cell: CellRecord,
    /// Every metric the record holds, including names `results::Metrics`
    /// does not declare.
    pub metrics: serde_json::Map<String, Value>,
}

impl Record {
    /// A dimension of the cell: a parameter, or `implementation` or
    /// `transport`. None when the cell does not have it.
    pub fn dim(&self, name: &str) -> Option<Value> {
        match name {
            "implementation" => Some(Value::String(self.cell.implementation.clone())),
            "transport" => self.cell.transport.clone().map(Value::String),
            _ => self.cell.params.get(name).cloned(),
        }
    }

    /// Every dimension name the cell has.
    pub fn dim_names(&self) -> impl Iterator<Item = &str> {
        let transport = self.cell.transport.as_ref().map(|_| "transport");
        std::iter::once("implementation")
            .chain(transport)
            .chain(self.cell.params.keys().map(String::as_str))
    }

    /// A scalar metric by name, if recorded and numeric.
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics.get(name).and_then(Value::as_f64)
    }
}

/// A run directory, read.
#[derive(Debug)]
pub struct Run {
    pub dir: PathBuf,
    pub manifest: Option<Manifest>,
    /// Why the manifest could not be used, when it could not.
    pub manifest_problem: Option<String>,
    pub records: Vec<Record>,
    /// Lines of cells.jsonl that were not records (a run killed mid-write
    /// leaves at most one).
    pub bad_lines: usize,
}

impl Run {
    /// Reads `dir/manifest.json` and `dir/cells.jsonl`. Either may be
    /// missing or damaged (the report says so); both missing is an error.
    pub fn load(dir: &Path) -> Result<Run, RunError> {
        let manifest_path = dir.join("manifest.json");
        let cells_path = dir.join("cells.jsonl");
        if !manifest_path.exists() && !cells_path.exists() {
            return Err(RunError::NotARun {
                path: dir.to_owned(),
            });
        }
        let (manifest, manifest_problem) = match fs::read(&manifest_path) {
            Ok(bytes) => match serde_json::from_slice::<Manifest>(&bytes) {
                Ok(m) => (Some(m), None),
                Err(e) => (
                    None,
                    Some(format!(
                        "{} is not a valid manifest: {e}",
                        manifest_path.display()
                    )),
                ),
            },
            Err(e) => (
                None,
                Some(format!(
                    "{} could not be read: {e}",
                    manifest_path.display()
                )),
            ),
        };
        let (records, bad_lines) = if cells_path.exists() {
            read_records(&cells_path)?
        } else {
            (Vec::new(), 0)
        };
        Ok(Run {
            dir: dir.to_owned(),
            manifest,
            manifest_problem,
            records,
            bad_lines,
        })
    }

    /// The scenarios this run holds data or a manifest for.
    pub fn scenarios(&self) -> BTreeSet<String> {
        let mut s: BTreeSet<String> = self
            .records
            .iter()
            .map(|r| r.cell.scenario.clone())
            .collect();
        if let Some(m) = &self.manifest {
            s.insert(m.scenario.clone());
        }
        s
    }

    /// The order the scenario declared a dimension's values in (its axis,
    /// or its implementation list), as text; empty when unknown.
    pub fn axis_order(&self, dim: &str) -> Vec<String> {
        let Some(m) = &self.manifest else {
            return Vec::new();
        };
        let r = &m.scenario_resolved;
        let list = match dim {
            "implementation" => r.get("implementations"),
            "transport" => r.get("transports"),
            _ => r.get("axes").and_then(|a| a.get(dim)),
        };
        list.and_then(Value::as_array)
            .map(|a| a.iter().map(value_text).collect())
            .unwrap_or_default()
    }

    /// The emulation mode of the run, as the manifest has it.
    pub fn emulation_mode(&self) -> Option<&str> {
        self.manifest.as_ref().map(|m| m.emulation.mode.as_str())
    }
}

fn read_records(path: &Path) -> Result<(Vec<Record>, usize), RunError> {
    let io_err = |action| {
        move |source| RunError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    };
    let f = fs::File::open(path).map_err(io_err("opening"))?;
    let mut records = Vec::new();
    let mut bad = 0;
    for line in BufReader::new(f).lines() {
        let line = line.map_err(io_err("reading"))?;
        if line.trim().is_empty() {
            continue;
        }
        let Ok(value) = serde_json::from_str::<Value>(&line) else {
            bad += 1;
            continue;
        };
        let metrics = value
            .get("metrics")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        match serde_json::from_value::<CellRecord>(value) {
            Ok(cell) => records.push(Record { cell, metrics }),
            Err(_) => bad += 1,
        }
    }
    Ok((records, bad))
}

/// A dimension value as people read it: strings unquoted, whole numbers
/// without a trailing ".0".
pub fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.as_f64().map(fmt_num).unwrap_or_else(|| n.to_string()),
        other => other.to_string(),
    }
}

/// A number in its shortest plain form: 0, 1, 2.5, 0.001, 1e-7.
pub fn fmt_num(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        let s = format!("{v}");
        if s.len() > 10 {
            format!("{v:.4}")
                .trim_end_matches('0')
                .trim_end_matches('.')
                .to_string()
        } else {
            s
        }
    }
}

/// A dimension value as a number, if it is one (or a numeric string).
pub fn value_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_print_short() {
        assert_eq!(fmt_num(0.0), "0");
        assert_eq!(fmt_num(50.0), "50");
        assert_eq!(fmt_num(2.5), "2.5");
        assert_eq!(fmt_num(1.0 / 3.0), "0.3333");
        assert_eq!(value_text(&serde_json::json!(1.0)), "1");
        assert_eq!(value_text(&serde_json::json!("seq")), "seq");
    }

    #[test]
    fn a_directory_without_records_or_manifest_is_not_a_run() {
        let dir = tempfile::tempdir().unwrap();
        let err = Run::load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("not a run directory"), "{err}");
    }

    #[test]
    fn unknown_metrics_are_kept_and_torn_lines_counted() {
        let dir = tempfile::tempdir().unwrap();
        let line = serde_json::json!({
            "cell_id": "netem-calibration/userspace-link/rtt_ms=1",
            "scenario": "netem-calibration",
            "implementation": "userspace-link",
            "emulation": "userspace-link",
            "params": {"rtt_ms": 1.0, "rate_mbit": 0},
            "repetition": 0,
            "status": "ok",
            "started_at": "2026-01-01T00:00:00Z",
            "wall_ms": 1.0,
            "metrics": {"rtt_p50_ms": 1.02}
        });
        fs::write(
            dir.path().join("cells.jsonl"),
            format!("{line}\n{{\"cell_id\": \"tor"),
        )
        .unwrap();
        let run = Run::load(dir.path()).unwrap();
        assert_eq!(run.records.len(), 1);
        assert_eq!(run.bad_lines, 1);
        assert!(run.manifest.is_none());
        assert!(run
            .manifest_problem
            .as_deref()
            .unwrap()
            .contains("manifest.json"));
        let r = &run.records[0];
        assert_eq!(r.metric("rtt_p50_ms"), Some(1.02));
        assert_eq!(
            r.dim("implementation"),
            Some(Value::String("userspace-link".into()))
        );
        assert_eq!(r.dim("transport"), None);
        assert_eq!(value_number(&r.dim("rtt_ms").unwrap()), Some(1.0));
    }
}
