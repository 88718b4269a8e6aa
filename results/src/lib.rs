//! What a run produces, as data.
//!
//! A run directory (`results/runs/<utc-time>-<scenario>/`) holds:
//!
//! - `manifest.json`: the host, kernel, capabilities found, build, emulation
//!   mode and the resolved scenario ([`Manifest`]); rewritten atomically when
//!   the run ends with what only the end knows (emulator accuracy, counts).
//! - `cells.jsonl`: one [`CellRecord`] per cell and repetition, appended and
//!   flushed as each is measured, so a run that dies keeps what it measured.
//! - `summary.csv`: one row per cell (repetitions folded), see [`summary`].
//!
//! Metric names follow DESIGN.md ("Metrics"); where QEMU's migration
//! statistics have a counterpart, its name is used in snake case.
//!
//! # Layout
//!
//! - [`schema`]: the records.
//! - [`histogram`]: HdrHistogram recording and its serialized summary.
//! - [`writer`]: the run directory writer.
//! - [`summary`]: folding repetitions into one row per cell, and the CSV.
//! - [`samples`]: per-repetition samples by cell and metric, in-run ratios,
//!   baseline files.
//! - [`stats`]: permutation test and bootstrap interval.
//! - [`compare`]: directions, noise thresholds and verdicts of two sample sets.

pub mod compare;
pub mod histogram;
pub mod samples;
pub mod schema;
pub mod stats;
pub mod summary;
pub mod writer;

pub use compare::{compare, CompareConfig, CompareReport, Direction, MetricComparison, Verdict};
pub use histogram::{HistogramRecord, LatencyHistogram};
pub use samples::{Baseline, SampleSet, SamplesError};
pub use schema::{
    BuildInfo, CellRecord, CellStatus, EmulationInfo, HostInfo, Manifest, Metrics, SCHEMA_VERSION,
};
pub use summary::{summarize, SummaryRow};
pub use writer::{read_cells, RunWriter, WriterError};
