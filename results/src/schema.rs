//! The records of a run: one manifest, one record per cell and repetition.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::HistogramRecord;

/// Bumped whenever a field changes meaning or is removed.
pub const SCHEMA_VERSION: u32 = 1;

/// Everything needed to know where and how a run's numbers were made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub schema_version: u32,
    pub run_id: String,
    pub scenario: String,
    pub profile: String,
    /// RFC 3339, UTC.
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    pub host: HostInfo,
    pub build: BuildInfo,
    /// What the host offers, as `harness doctor` found it.
    pub capabilities: Vec<Capability>,
    pub emulation: EmulationInfo,
    /// The scenario after the profile was applied, exactly as run.
    pub scenario_resolved: serde_json::Value,
    pub cells_planned: usize,
    #[serde(default)]
    pub cells_recorded: usize,
    /// Free-form warnings a reader of the numbers must see (for example a
    /// build with debug assertions).
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// The machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostInfo {
    pub hostname: String,
    pub kernel: String,
    pub arch: String,
    pub cpu_model: String,
    pub cpus: usize,
    pub memory_bytes: u64,
    pub is_root: bool,
}

/// The binary that measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildInfo {
    /// Cargo profile name ("dev", "release", ...).
    pub profile: String,
    pub opt_level: String,
    pub debug_assertions: bool,
    /// False when the numbers come from code not built to be measured.
    pub fit_for_numbers: bool,
    pub git_revision: Option<String>,
    pub git_dirty: Option<bool>,
    pub version: String,
}

/// One host capability, present or not, and what it enables.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Capability {
    pub name: String,
    pub present: bool,
    pub detail: String,
    pub enables: String,
}

/// How the network between the two sides was made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmulationInfo {
    /// `inproc`, `per-call`, `userspace-link` or `kernel-netem`.
    pub mode: String,
    /// What did the delaying, in words.
    pub emulator: String,
    /// The emulator's measured departure error over the whole run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<HistogramRecord>,
    /// Measurements through the link before the cells ran, one per RTT
    /// the run uses: configured against measured, and each target's verdict.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calibration: Vec<serde_json::Value>,
}

/// How a cell ended. Only `Ok` and `Truncated` cells are data points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CellStatus {
    /// Measured completely, integrity verified.
    Ok,
    /// Stopped at its time budget; the metrics cover what ran until then.
    Truncated,
    /// Not run: the host lacks what it needs (the reason says what).
    Skipped,
    /// Ran and failed, including a failed integrity check.
    Failed,
}

impl CellStatus {
    /// Whether the cell's metrics may be plotted.
    pub fn is_data(self) -> bool {
        matches!(self, CellStatus::Ok | CellStatus::Truncated)
    }
}

/// Scalar metrics of one cell repetition. Absent means not measured.
///
/// Definitions are those of DESIGN.md ("Metrics").
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_chunk_latency_us: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_throughput_mib_s: Option<f64>,
    /// Bytes the workload read (all of the region for sequential and random
    /// workloads; the sampled accesses for zipfian).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_read: Option<u64>,
    /// Bytes the workload wrote through the region, per second, from its
    /// first write until the flush (`msync`) that puts them in the source
    /// has returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_throughput_mib_s: Option<f64>,
    /// Bytes the workload wrote (write workloads only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_written: Option<u64>,
    /// Bytes that crossed the link, both directions, as counted by the link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transferred_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_amplification: Option<f64>,
    /// Faults (uffd) or remote requests served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faults: Option<u64>,
    /// User + system CPU seconds of the process during the cell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_ms: Option<f64>,
    /// SHA-256 of the destination region equals the source's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integrity: Option<bool>,
    /// Metrics of scenarios the fields above do not cover (a link
    /// calibration's `rtt_p50_ms`, `goodput_mbit_s`, ...), by name. Kept
    /// flat in the record so every metric is looked up the same way.
    #[serde(flatten)]
    pub other: BTreeMap<String, f64>,
}

/// One repetition of one cell.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CellRecord {
    /// `scenario/implementation/key=value,...`: unique per cell, the same for
    /// every repetition, safe as a directory name.
    pub cell_id: String,
    pub scenario: String,
    pub implementation: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<String>,
    /// How the destination saw the region, where that varies by host:
    /// `kernel-nbd` or `fuse`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    pub emulation: String,
    /// Every axis value of the cell, by axis name.
    pub params: BTreeMap<String, serde_json::Value>,
    pub repetition: u32,
    pub status: CellStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub wall_ms: f64,
    pub metrics: Metrics,
    /// Named distributions: `fault_latency_ns`, `access_latency_ns`,
    /// `emulator_error_ns`, ...
    #[serde(default)]
    pub histograms: BTreeMap<String, HistogramRecord>,
    /// Where threads ran: role (`workload`, `handler`) -> CPU -> samples.
    #[serde(default)]
    pub placement: BTreeMap<String, BTreeMap<String, u64>>,
    /// SHA-256 of the source and the destination, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_sha256: Option<String>,
}
