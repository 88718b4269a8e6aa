//! The run directory writer.
//!
//! Records are appended to `cells.jsonl` and flushed one by one, so a run
//! killed at any moment leaves every record it finished on disk. Whole files
//! (`manifest.json`, `summary.csv`) are written to a temporary name and
//! renamed, so a reader sees either the old or the new file, never half.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use crate::{summarize, CellRecord, Manifest};

/// Errors writing or reading a run directory.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("encoding a record as JSON: {0}")]
    Encode(#[from] serde_json::Error),
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> WriterError + 'a {
    move |source| WriterError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Writes one run directory.
#[derive(Debug)]
pub struct RunWriter {
    dir: PathBuf,
    manifest: Manifest,
    cells: File,
    records: Vec<CellRecord>,
}

impl RunWriter {
    /// Creates `dir` (and parents), writes the manifest and opens the cell log.
    pub fn create(dir: impl Into<PathBuf>, manifest: Manifest) -> Result<Self, WriterError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io_err("creating directory", &dir))?;
        let cells_path = dir.join("cells.jsonl");
        let cells = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&cells_path)
            .map_err(io_err("opening", &cells_path))?;
        let writer = Self {
            dir,
            manifest,
            cells,
            records: Vec::new(),
        };
        writer.write_manifest()?;
        Ok(writer)
    }

    /// The run directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest as it will be written at the end.
    pub fn manifest_mut(&mut self) -> &mut Manifest {
        &mut self.manifest
    }

    /// Every record appended so far.
    pub fn records(&self) -> &[CellRecord] {
        &self.records
    }

    /// Appends one record and flushes it to the file.
    pub fn append(&mut self, record: CellRecord) -> Result<(), WriterError> {
        let mut line = serde_json::to_vec(&record)?;
        line.push(b'\n');
        let path = self.dir.join("cells.jsonl");
        // One write call per record: with O_APPEND a concurrent reader never
        // sees two records interleaved.
        self.cells
            .write_all(&line)
            .map_err(io_err("appending to", &path))?;
        self.cells.flush().map_err(io_err("flushing", &path))?;
        self.records.push(record);
        self.manifest.cells_recorded = self.records.len();
        Ok(())
    }

    /// Writes `summary.csv` and the final manifest.
    pub fn finish(mut self, finished_at: String) -> Result<PathBuf, WriterError> {
        self.manifest.finished_at = Some(finished_at);
        let rows = summarize(&self.records);
        let mut csv = Vec::new();
        crate::summary::write_csv(&rows, &mut csv)
            .map_err(io_err("formatting", &self.dir.join("summary.csv")))?;
        write_atomically(&self.dir.join("summary.csv"), &csv)?;
        self.write_manifest()?;
        let path = self.dir.join("cells.jsonl");
        self.cells.sync_data().map_err(io_err("syncing", &path))?;
        Ok(self.dir)
    }

    fn write_manifest(&self) -> Result<(), WriterError> {
        let mut json = serde_json::to_vec_pretty(&self.manifest)?;
        json.push(b'\n');
        write_atomically(&self.dir.join("manifest.json"), &json)
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), WriterError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(io_err("creating", &tmp))?;
    f.write_all(bytes).map_err(io_err("writing", &tmp))?;
    f.sync_data().map_err(io_err("syncing", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("renaming into", path))
}

/// Reads a `cells.jsonl`; returns the valid records and how many lines were
/// not valid records (a run killed mid-write leaves at most a partial last line).
pub fn read_cells(path: &Path) -> Result<(Vec<CellRecord>, usize), WriterError> {
    let f = File::open(path).map_err(io_err("opening", path))?;
    let mut records = Vec::new();
    let mut bad = 0;
    for line in BufReader::new(f).lines() {
        let line = line.map_err(io_err("reading", path))?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(&line) {
            Ok(r) => records.push(r),
            Err(_) => bad += 1,
        }
    }
    Ok((records, bad))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::schema::*;
    use std::collections::BTreeMap;

    pub(crate) fn manifest() -> Manifest {
        Manifest {
            schema_version: SCHEMA_VERSION,
            run_id: "t".into(),
            scenario: "s".into(),
            profile: "quick".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
            finished_at: None,
            host: HostInfo {
                hostname: "h".into(),
                kernel: "k".into(),
                arch: "x86_64".into(),
                cpu_model: "c".into(),
                cpus: 2,
                memory_bytes: 1,
                is_root: true,
            },
            build: BuildInfo {
                profile: "dev".into(),
                opt_level: "3".into(),
                debug_assertions: false,
                fit_for_numbers: true,
                git_revision: None,
                git_dirty: None,
                version: "0".into(),
            },
            capabilities: vec![],
            emulation: EmulationInfo {
                mode: "inproc".into(),
                emulator: "delay line".into(),
                accuracy: None,
                calibration: vec![],
            },
            scenario_resolved: serde_json::json!({}),
            cells_planned: 1,
            cells_recorded: 0,
            warnings: vec![],
        }
    }

    pub(crate) fn record(rep: u32, status: CellStatus, tput: f64) -> CellRecord {
        CellRecord {
            cell_id: "s/uffd/rtt_ms=1".into(),
            scenario: "s".into(),
            implementation: "uffd".into(),
            transport: Some("frpc".into()),
            device: None,
            emulation: "inproc".into(),
            params: BTreeMap::from([("rtt_ms".into(), serde_json::json!(1))]),
            repetition: rep,
            status,
            reason: None,
            started_at: "2026-01-01T00:00:00Z".into(),
            wall_ms: 1.0,
            metrics: Metrics {
                read_throughput_mib_s: Some(tput),
                integrity: Some(status == CellStatus::Ok),
                ..Metrics::default()
            },
            histograms: BTreeMap::new(),
            placement: BTreeMap::new(),
            source_sha256: None,
            destination_sha256: None,
        }
    }

    #[test]
    fn records_are_on_disk_before_finish_and_survive_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let mut w = RunWriter::create(&run, manifest()).unwrap();
        w.append(record(0, CellStatus::Ok, 10.0)).unwrap();
        w.append(record(1, CellStatus::Ok, 12.0)).unwrap();
        // Not finished: as if the process was killed now.
        let cells = run.join("cells.jsonl");
        let (recs, bad) = read_cells(&cells).unwrap();
        assert_eq!((recs.len(), bad), (2, 0));
        // A torn last line, as a kill mid-write would leave.
        let mut f = OpenOptions::new().append(true).open(&cells).unwrap();
        f.write_all(b"{\"cell_id\": \"s/uf").unwrap();
        let (recs, bad) = read_cells(&cells).unwrap();
        assert_eq!((recs.len(), bad), (2, 1));
        let m: Manifest =
            serde_json::from_slice(&fs::read(run.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(m.finished_at, None);
    }

    #[test]
    fn finish_writes_summary_and_final_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = RunWriter::create(dir.path(), manifest()).unwrap();
        w.append(record(0, CellStatus::Ok, 10.0)).unwrap();
        let out = w.finish("2026-01-01T00:01:00Z".into()).unwrap();
        let csv = fs::read_to_string(out.join("summary.csv")).unwrap();
        assert!(csv.starts_with("cell_id,"), "{csv}");
        assert!(csv.contains("s/uffd/rtt_ms=1"));
        let m: Manifest =
            serde_json::from_slice(&fs::read(out.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(m.cells_recorded, 1);
        assert!(m.finished_at.is_some());
        assert!(!out.join("manifest.tmp").exists());
    }

    #[test]
    fn unwritable_directory_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        fs::write(&file, b"x").unwrap();
        let err = RunWriter::create(file.join("run"), manifest()).unwrap_err();
        assert!(err.to_string().contains("plain-file"), "{err}");
    }
}
