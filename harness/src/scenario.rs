//! Scenario files: what to run, over which axes, under which profile.
//!
//! A scenario is one TOML file (see `scenarios/`). Base settings are the
//! `default` profile; `[profiles.NAME]` tables override any of them. The
//! resolved scenario expands into cells: one per implementation and
//! combination of the axes that implementation uses.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::implementations::{self, Axis};
use transports::TransportKind;

use crate::workload::WorkloadKind;

/// Errors loading or validating a scenario. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error(
        "no scenario named `{name}`; built-in scenarios: {known} (or give a path to a .toml file)"
    )]
    UnknownName { name: String, known: String },
    #[error("reading scenario file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("scenario {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("scenario {origin}: key `{key}`: {message}")]
    Invalid {
        origin: String,
        key: String,
        message: String,
    },
    #[error("scenario {origin} has no profile `{profile}`; it has: {known}")]
    UnknownProfile {
        origin: String,
        profile: String,
        known: String,
    },
}

/// Built-in scenarios, compiled in so the binary runs from any directory.
const BUILT_IN: &[(&str, &str)] = &[
    ("rtt-sweep", include_str!("../../scenarios/rtt-sweep.toml")),
    (
        "netem-calibration",
        include_str!("../../scenarios/netem-calibration.toml"),
    ),
    (
        "transport-sweep",
        include_str!("../../scenarios/transport-sweep.toml"),
    ),
    (
        "worker-sweep",
        include_str!("../../scenarios/worker-sweep.toml"),
    ),
    (
        "chunk-sweep",
        include_str!("../../scenarios/chunk-sweep.toml"),
    ),
    (
        "pull-heuristic",
        include_str!("../../scenarios/pull-heuristic.toml"),
    ),
    ("downtime", include_str!("../../scenarios/downtime.toml")),
    (
        "hash-throughput",
        include_str!("../../scenarios/hash-throughput.toml"),
    ),
    (
        "precopy-cost",
        include_str!("../../scenarios/precopy-cost.toml"),
    ),
];

/// Fixed cell sets for `harness bench --profile NAME`, by profile name.
/// Kept apart from [`BUILT_IN`] so `harness scenario thesis` does not run
/// them; `harness scenario NAME` still finds them.
pub const BENCH_SETS: &[(&str, &str)] = &[("ci", include_str!("../../scenarios/ci.toml"))];

/// The most pull workers a cell may ask for: the thesis's sweep went to
/// 16384, each one a task holding one chunk request in flight.
pub const MAX_PULL_WORKERS: usize = 16_384;

/// Names of the built-in scenarios.
pub fn built_in_names() -> impl Iterator<Item = &'static str> {
    BUILT_IN.iter().map(|(n, _)| *n)
}

/// How threads are placed on CPUs during a cell. On a 2-core machine this
/// moves fault latency by an order of magnitude, so it is an axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// The scheduler decides.
    Unpinned,
    /// Workload on CPU 0, fault handler on CPU 1.
    Split,
    /// Workload and fault handler both on CPU 0.
    Shared,
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Placement::Unpinned => "unpinned",
            Placement::Split => "split",
            Placement::Shared => "shared",
        })
    }
}

/// The order a managed mount's background puller fetches chunks in.
///
/// The thesis sorts chunks by a priority callback, highest first, and
/// compares `return -n` (pull from the front: right for an application that
/// reads forwards) with `return n` (from the back: the inverted heuristic
/// for the same application). Those are `linear` and `reverse` here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PullHeuristic {
    /// Ascending offsets (the thesis's `return -n`).
    Linear,
    /// Descending offsets (the thesis's `return n`).
    Reverse,
    /// A seeded random permutation.
    Random,
    /// The order the same workload first touched chunks in a recorded run
    /// (a trace taken by the cell itself before it measures).
    Trace,
}

impl fmt::Display for PullHeuristic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PullHeuristic::Linear => "linear",
            PullHeuristic::Reverse => "reverse",
            PullHeuristic::Random => "random",
            PullHeuristic::Trace => "trace",
        })
    }
}

/// Where accesses are cut into whole, aligned chunks of `chunk_kib` on their
/// way to a source whose store takes only such chunks (thesis 3.5.2).
///
/// A managed mount always cuts on the client (its cache and pulls are in
/// chunks), so only the direct mount varies over this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ChunkingSide {
    /// Nobody: the store takes any offset and length, as the thesis's direct
    /// mount has it. The chunk size does not apply.
    #[serde(rename = "none")]
    #[value(name = "none")]
    Unchunked,
    /// The destination's mount cuts every request before the wire, so the
    /// source sees only whole chunks, and a partial-chunk write costs the
    /// destination a chunk read across the link first.
    Client,
    /// The destination forwards requests as the device issued them; the
    /// source cuts them next to its store, read-modify-writing partial
    /// chunks there.
    Server,
}

impl fmt::Display for ChunkingSide {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChunkingSide::Unchunked => "none",
            ChunkingSide::Client => "client",
            ChunkingSide::Server => "server",
        })
    }
}

/// The axes of a scenario: every combination is a cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Axes {
    /// Round-trip times in milliseconds (fractions allowed).
    pub rtt_ms: Vec<f64>,
    /// Region sizes in MiB.
    pub region_mib: Vec<u64>,
    /// Chunk sizes in KiB: what one fault or request moves.
    pub chunk_kib: Vec<u64>,
    /// How the application reads the region.
    pub workload: Vec<WorkloadKind>,
    /// Thread placement.
    #[serde(default = "default_placement")]
    pub placement: Vec<Placement>,
    /// The wire between the destination and the source's service, for
    /// implementations that call a remote service.
    #[serde(default = "default_transport")]
    pub transport: Vec<TransportKind>,
    /// Background pull workers of a managed mount.
    #[serde(default = "default_pull_workers")]
    pub pull_workers: Vec<usize>,
    /// The background puller's order.
    #[serde(default = "default_pull_heuristic")]
    pub pull_heuristic: Vec<PullHeuristic>,
    /// Where a direct mount's accesses are cut into chunks.
    #[serde(default = "default_chunking")]
    pub chunking: Vec<ChunkingSide>,
    /// The link's rate in Mbit/s, each direction; absent (the default) for
    /// a link limited only by the emulator. Needs a packet-level emulation
    /// mode: the in-process ones skip rate-limited cells.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub link_mbit: Vec<u64>,
}

fn default_placement() -> Vec<Placement> {
    vec![Placement::Unpinned]
}

fn default_transport() -> Vec<TransportKind> {
    vec![TransportKind::Frpc]
}

/// The fastest link rate a scenario may ask for (100 Gbit/s).
pub const MAX_LINK_MBIT: u64 = 100_000;

/// The thesis's managed mounts ran 512 pull workers by default.
pub const DEFAULT_PULL_WORKERS: usize = 512;

fn default_pull_workers() -> Vec<usize> {
    vec![DEFAULT_PULL_WORKERS]
}

fn default_pull_heuristic() -> Vec<PullHeuristic> {
    vec![PullHeuristic::Linear]
}

/// Unchunked, so scenarios that do not ask keep the thesis's direct mount.
fn default_chunking() -> Vec<ChunkingSide> {
    vec![ChunkingSide::Unchunked]
}

/// Axis overrides of a profile; each replaces the whole list.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AxesOverride {
    rtt_ms: Option<Vec<f64>>,
    region_mib: Option<Vec<u64>>,
    chunk_kib: Option<Vec<u64>>,
    workload: Option<Vec<WorkloadKind>>,
    placement: Option<Vec<Placement>>,
    transport: Option<Vec<TransportKind>>,
    pull_workers: Option<Vec<usize>>,
    pull_heuristic: Option<Vec<PullHeuristic>>,
    chunking: Option<Vec<ChunkingSide>>,
    link_mbit: Option<Vec<u64>>,
}

/// Settings a profile may override.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileOverride {
    implementations: Option<Vec<String>>,
    repetitions: Option<u32>,
    cell_time_budget_s: Option<f64>,
    access_kib: Option<u64>,
    seed: Option<u64>,
    axes: Option<AxesOverride>,
}

/// The file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    name: String,
    /// [`REGION_KIND`] when given; [`load_any`] dispatches on it.
    #[serde(default)]
    #[allow(dead_code)]
    kind: Option<String>,
    description: String,
    #[serde(default)]
    figures: Vec<String>,
    implementations: Vec<String>,
    repetitions: u32,
    cell_time_budget_s: f64,
    /// Bytes one application access reads, in KiB.
    #[serde(default = "default_access_kib")]
    access_kib: u64,
    #[serde(default)]
    seed: u64,
    axes: Axes,
    #[serde(default)]
    profiles: BTreeMap<String, ProfileOverride>,
}

fn default_access_kib() -> u64 {
    4
}

/// A scenario with one profile applied: exactly what runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub figures: Vec<String>,
    pub profile: String,
    pub implementations: Vec<String>,
    pub repetitions: u32,
    pub cell_time_budget_s: f64,
    pub access_kib: u64,
    pub seed: u64,
    pub axes: Axes,
    /// Where it came from: a built-in name or a path.
    pub origin: String,
}

/// One cell: an implementation at one point of the axes it uses.
#[derive(Debug, Clone, PartialEq)]
pub struct CellSpec {
    pub implementation: &'static implementations::Descriptor,
    pub rtt_ms: Option<f64>,
    pub region_bytes: u64,
    pub chunk_bytes: u64,
    pub access_bytes: u64,
    pub workload: WorkloadKind,
    pub placement: Placement,
    pub transport: TransportKind,
    pub pull_workers: usize,
    pub pull_heuristic: PullHeuristic,
    pub chunking: ChunkingSide,
    /// The link's rate limit, Mbit/s each direction.
    pub link_mbit: Option<u64>,
}

impl CellSpec {
    /// Whether the chunk size changes what the cell does. An implementation
    /// that lists both the chunk-size and the chunking axes uses the size
    /// only to chunk, so an unchunked cell of it has none.
    pub fn uses_chunk_size(&self) -> bool {
        let axes = self.implementation.axes;
        axes.contains(&Axis::ChunkSize)
            && !(axes.contains(&Axis::Chunking) && self.chunking == ChunkingSide::Unchunked)
    }

    /// Every axis value the cell uses, by axis name.
    pub fn params(&self) -> BTreeMap<String, serde_json::Value> {
        let mut p = BTreeMap::new();
        if let Some(rtt) = self.rtt_ms {
            p.insert("rtt_ms".into(), serde_json::json!(rtt));
        }
        p.insert(
            "region_mib".into(),
            serde_json::json!(self.region_bytes >> 20),
        );
        if self.uses_chunk_size() {
            p.insert(
                "chunk_kib".into(),
                serde_json::json!(self.chunk_bytes >> 10),
            );
        }
        p.insert(
            "access_kib".into(),
            serde_json::json!(self.access_bytes >> 10),
        );
        p.insert(
            "workload".into(),
            serde_json::json!(self.workload.to_string()),
        );
        p.insert(
            "placement".into(),
            serde_json::json!(self.placement.to_string()),
        );
        let uses = |a: Axis| self.implementation.axes.contains(&a);
        if uses(Axis::Transport) {
            p.insert("transport".into(), serde_json::json!(self.transport.name()));
        }
        if uses(Axis::PullWorkers) {
            p.insert("pull_workers".into(), serde_json::json!(self.pull_workers));
        }
        if uses(Axis::PullHeuristic) {
            p.insert(
                "pull_heuristic".into(),
                serde_json::json!(self.pull_heuristic.to_string()),
            );
        }
        if uses(Axis::Chunking) {
            p.insert(
                "chunking".into(),
                serde_json::json!(self.chunking.to_string()),
            );
        }
        if let Some(mbit) = self.link_mbit {
            p.insert("link_mbit".into(), serde_json::json!(mbit));
        }
        p
    }

    /// What carries the cell's remote calls, if anything does.
    pub fn wire(&self) -> Option<crate::remote::Wire> {
        if self.implementation.axes.contains(&Axis::Transport) {
            Some(crate::remote::Wire::Rpc(self.transport))
        } else {
            self.implementation.wire
        }
    }

    /// `scenario/implementation/key=value,...`: unique, filename-safe.
    pub fn cell_id(&self, scenario: &str) -> String {
        let params: Vec<String> = self
            .params()
            .iter()
            .map(|(k, v)| format!("{k}={}", results::summary::param_text(v)))
            .collect();
        format!(
            "{scenario}/{}/{}",
            self.implementation.name,
            params.join(",")
        )
    }
}

/// The default `kind`: implementations reading a region over a link.
pub const REGION_KIND: &str = "region";

/// A scenario of either kind, profile applied.
#[derive(Debug)]
pub enum AnyScenario {
    Region(Scenario),
    LinkCalibration(crate::link_calibration::LinkCalibrationScenario),
    TransportSweep(crate::transport_sweep::TransportSweepScenario),
    Downtime(crate::downtime::DowntimeScenario),
    HashThroughput(crate::hash_throughput::HashThroughputScenario),
    PrecopyCost(crate::precopy_cost::PrecopyCostScenario),
}

impl AnyScenario {
    /// One line for `harness list`.
    pub fn description(&self) -> &str {
        match self {
            AnyScenario::Region(s) => &s.description,
            AnyScenario::LinkCalibration(s) => &s.description,
            AnyScenario::TransportSweep(s) => &s.description,
            AnyScenario::Downtime(s) => &s.description,
            AnyScenario::HashThroughput(s) => &s.description,
            AnyScenario::PrecopyCost(s) => &s.description,
        }
    }
}

/// `text` with one top-level or dotted key set as `line` (`key = value`)
/// says: for tests of what a scenario file refuses.
#[cfg(test)]
pub fn with_key_replaced(text: &str, line: &str) -> String {
    let mut value: toml::Table = toml::from_str(text).expect("the scenario parses");
    let (key, v) = line.split_once(" = ").expect("a `key = value` line");
    let parsed: toml::Table = toml::from_str(&format!("x = {v}")).expect("a TOML value");
    let mut path: Vec<&str> = key.split('.').collect();
    let last = path.pop().expect("a key");
    let mut table = &mut value;
    for p in path {
        table = table
            .get_mut(p)
            .and_then(toml::Value::as_table_mut)
            .expect("the key's tables exist");
    }
    table.insert(last.to_owned(), parsed["x"].clone());
    toml::to_string(&value).expect("a table serializes")
}

/// Loads a scenario of any kind by built-in name or path and applies
/// `profile`.
pub fn load_any(name_or_path: &str, profile: &str) -> Result<AnyScenario, ScenarioError> {
    let (origin, text) = read_source(name_or_path)?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| ScenarioError::Parse {
        origin: origin.clone(),
        message: e.to_string(),
    })?;
    match table.get("kind").map(|k| k.as_str()) {
        None | Some(Some(REGION_KIND)) => parse(&origin, &text, profile).map(AnyScenario::Region),
        Some(Some(crate::link_calibration::KIND)) => {
            crate::link_calibration::parse(&origin, &text, profile)
                .map(AnyScenario::LinkCalibration)
        }
        Some(Some(crate::transport_sweep::KIND)) => {
            crate::transport_sweep::parse(&origin, &text, profile).map(AnyScenario::TransportSweep)
        }
        Some(Some(crate::downtime::KIND)) => {
            crate::downtime::parse(&origin, &text, profile).map(AnyScenario::Downtime)
        }
        Some(Some(crate::hash_throughput::KIND)) => {
            crate::hash_throughput::parse(&origin, &text, profile).map(AnyScenario::HashThroughput)
        }
        Some(Some(crate::precopy_cost::KIND)) => {
            crate::precopy_cost::parse(&origin, &text, profile).map(AnyScenario::PrecopyCost)
        }
        Some(other) => Err(ScenarioError::Invalid {
            origin,
            key: "kind".into(),
            message: format!(
                "{} is not a scenario kind; allowed: \"{REGION_KIND}\" (the default), \"{}\", \"{}\", \"{}\", \"{}\", \"{}\"",
                other.map_or_else(|| "a non-string".to_owned(), |k| format!("\"{k}\"")),
                crate::link_calibration::KIND,
                crate::transport_sweep::KIND,
                crate::downtime::KIND,
                crate::hash_throughput::KIND,
                crate::precopy_cost::KIND,
            ),
        }),
    }
}

/// The file's table with `[profiles.PROFILE]` merged over it (tables merge
/// key by key, anything else is replaced) and `profiles` removed. For
/// scenario kinds whose settings are all plain data.
pub fn merge_profile(
    origin: &str,
    text: &str,
    profile: &str,
) -> Result<toml::Table, ScenarioError> {
    let mut table: toml::Table = toml::from_str(text).map_err(|e| ScenarioError::Parse {
        origin: origin.to_owned(),
        message: e.to_string(),
    })?;
    let profiles = match table.remove("profiles") {
        None => toml::Table::new(),
        Some(toml::Value::Table(t)) => t,
        Some(_) => {
            return Err(ScenarioError::Invalid {
                origin: origin.to_owned(),
                key: "profiles".into(),
                message: "must be a table of profile tables".into(),
            })
        }
    };
    for name in profiles.keys() {
        if !["quick", "default", "thesis"].contains(&name.as_str()) {
            return Err(ScenarioError::Invalid {
                origin: origin.to_owned(),
                key: format!("profiles.{name}"),
                message: "unknown profile; allowed: quick, default, thesis".into(),
            });
        }
    }
    match profiles.get(profile) {
        Some(toml::Value::Table(over)) => merge_into(&mut table, over),
        Some(_) => {
            return Err(ScenarioError::Invalid {
                origin: origin.to_owned(),
                key: format!("profiles.{profile}"),
                message: "must be a table".into(),
            })
        }
        None if profile == "default" => {}
        None => {
            let mut known: Vec<&str> = profiles.keys().map(String::as_str).collect();
            if !known.contains(&"default") {
                known.insert(0, "default");
            }
            return Err(ScenarioError::UnknownProfile {
                origin: origin.to_owned(),
                profile: profile.to_owned(),
                known: known.join(", "),
            });
        }
    }
    Ok(table)
}

fn merge_into(base: &mut toml::Table, over: &toml::Table) {
    for (key, value) in over {
        match (base.get_mut(key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge_into(b, o),
            _ => {
                base.insert(key.clone(), value.clone());
            }
        }
    }
}

/// The text of a built-in scenario or a file, and how errors name it.
fn read_source(name_or_path: &str) -> Result<(String, String), ScenarioError> {
    let is_path = name_or_path.ends_with(".toml") || name_or_path.contains('/');
    let (origin, text) = if is_path {
        let path = Path::new(name_or_path);
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.to_owned(),
            source,
        })?;
        (path.display().to_string(), text)
    } else {
        let (_, text) = BUILT_IN
            .iter()
            .chain(BENCH_SETS)
            .find(|(n, _)| *n == name_or_path)
            .ok_or_else(|| ScenarioError::UnknownName {
                name: name_or_path.to_owned(),
                known: built_in_names().collect::<Vec<_>>().join(", "),
            })?;
        (format!("`{name_or_path}` (built in)"), (*text).to_owned())
    };
    Ok((origin, text))
}

/// Parses and validates scenario text; `origin` names it in errors.
pub fn parse(origin: &str, text: &str, profile: &str) -> Result<Scenario, ScenarioError> {
    let file: ScenarioFile = toml::from_str(text).map_err(|e| ScenarioError::Parse {
        origin: origin.to_owned(),
        message: e.to_string(),
    })?;
    let invalid = |key: &str, message: String| ScenarioError::Invalid {
        origin: origin.to_owned(),
        key: key.to_owned(),
        message,
    };
    for name in file.profiles.keys() {
        if !["quick", "default", "thesis"].contains(&name.as_str()) {
            return Err(invalid(
                &format!("profiles.{name}"),
                "unknown profile; allowed: quick, default, thesis".into(),
            ));
        }
    }
    let over = match (profile, file.profiles.get(profile)) {
        (_, Some(o)) => o.clone(),
        ("default", None) => ProfileOverride::default(),
        (_, None) => {
            let mut known: Vec<&str> = file.profiles.keys().map(String::as_str).collect();
            if !known.contains(&"default") {
                known.insert(0, "default");
            }
            return Err(ScenarioError::UnknownProfile {
                origin: origin.to_owned(),
                profile: profile.to_owned(),
                known: known.join(", "),
            });
        }
    };
    let ax = over.axes.unwrap_or_default();
    let scenario = Scenario {
        name: file.name,
        description: file.description,
        figures: file.figures,
        profile: profile.to_owned(),
        implementations: over.implementations.unwrap_or(file.implementations),
        repetitions: over.repetitions.unwrap_or(file.repetitions),
        cell_time_budget_s: over.cell_time_budget_s.unwrap_or(file.cell_time_budget_s),
        access_kib: over.access_kib.unwrap_or(file.access_kib),
        seed: over.seed.unwrap_or(file.seed),
        axes: Axes {
            rtt_ms: ax.rtt_ms.unwrap_or(file.axes.rtt_ms),
            region_mib: ax.region_mib.unwrap_or(file.axes.region_mib),
            chunk_kib: ax.chunk_kib.unwrap_or(file.axes.chunk_kib),
            workload: ax.workload.unwrap_or(file.axes.workload),
            placement: ax.placement.unwrap_or(file.axes.placement),
            transport: ax.transport.unwrap_or(file.axes.transport),
            pull_workers: ax.pull_workers.unwrap_or(file.axes.pull_workers),
            pull_heuristic: ax.pull_heuristic.unwrap_or(file.axes.pull_heuristic),
            chunking: ax.chunking.unwrap_or(file.axes.chunking),
            link_mbit: ax.link_mbit.unwrap_or(file.axes.link_mbit),
        },
        origin: origin.to_owned(),
    };
    validate(&scenario).map_err(|(key, message)| invalid(&key, message))?;
    Ok(scenario)
}

fn validate(s: &Scenario) -> Result<(), (String, String)> {
    let err = |k: &str, m: String| Err((k.to_owned(), m));
    if s.name.is_empty()
        || !s
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return err(
            "name",
            format!("`{}` must be non-empty letters, digits and `-`", s.name),
        );
    }
    if s.implementations.is_empty() {
        return err(
            "implementations",
            "must name at least one implementation".into(),
        );
    }
    for name in &s.implementations {
        if implementations::find(name).is_none() {
            return err(
                "implementations",
                format!(
                    "unknown implementation `{name}`; allowed: {}",
                    implementations::names().join(", ")
                ),
            );
        }
    }
    if s.repetitions == 0 || s.repetitions > 1000 {
        return err(
            "repetitions",
            format!("{} is not in 1..=1000", s.repetitions),
        );
    }
    if !(s.cell_time_budget_s > 0.0 && s.cell_time_budget_s <= 86_400.0) {
        return err(
            "cell_time_budget_s",
            format!("{} is not in (0, 86400] seconds", s.cell_time_budget_s),
        );
    }
    let axes = &s.axes;
    for (key, empty) in [
        ("axes.rtt_ms", axes.rtt_ms.is_empty()),
        ("axes.region_mib", axes.region_mib.is_empty()),
        ("axes.chunk_kib", axes.chunk_kib.is_empty()),
        ("axes.workload", axes.workload.is_empty()),
        ("axes.placement", axes.placement.is_empty()),
        ("axes.transport", axes.transport.is_empty()),
        ("axes.pull_workers", axes.pull_workers.is_empty()),
        ("axes.pull_heuristic", axes.pull_heuristic.is_empty()),
        ("axes.chunking", axes.chunking.is_empty()),
    ] {
        if empty {
            return err(key, "must list at least one value".into());
        }
    }
    for &mbit in &axes.link_mbit {
        if !(1..=MAX_LINK_MBIT).contains(&mbit) {
            return err(
                "axes.link_mbit",
                format!(
                    "{mbit} is not in 1..={MAX_LINK_MBIT} Mbit/s; leave the axis out for a link \
                     the emulator alone limits"
                ),
            );
        }
    }
    for &workers in &axes.pull_workers {
        if !(1..=MAX_PULL_WORKERS).contains(&workers) {
            return err(
                "axes.pull_workers",
                format!("{workers} is not in 1..={MAX_PULL_WORKERS}"),
            );
        }
    }
    for &rtt in &axes.rtt_ms {
        if !(0.0..=10_000.0).contains(&rtt) {
            return err("axes.rtt_ms", format!("{rtt} is not in 0..=10000 ms"));
        }
    }
    for &mib in &axes.region_mib {
        if !(1..=65_536).contains(&mib) {
            return err("axes.region_mib", format!("{mib} is not in 1..=65536 MiB"));
        }
    }
    let page_kib = crate::host::page_size() as u64 / 1024;
    for &kib in &axes.chunk_kib {
        if kib < page_kib || !kib.is_power_of_two() || kib > 65_536 {
            return err(
                "axes.chunk_kib",
                format!(
                    "{kib} must be a power of two from the page size ({page_kib} KiB) to 65536 KiB"
                ),
            );
        }
        for &mib in &axes.region_mib {
            if kib > mib * 1024 {
                return err(
                    "axes.chunk_kib",
                    format!("chunk {kib} KiB is larger than region {mib} MiB"),
                );
            }
        }
    }
    if s.access_kib == 0 || !s.access_kib.is_power_of_two() || s.access_kib > 1024 {
        return err(
            "access_kib",
            format!("{} must be a power of two from 1 to 1024 KiB", s.access_kib),
        );
    }
    for &mib in &axes.region_mib {
        if s.access_kib > mib * 1024 {
            return err(
                "access_kib",
                format!("{} KiB exceeds region {mib} MiB", s.access_kib),
            );
        }
    }
    if axes.placement.contains(&Placement::Split) && crate::host::cpu_count() < 2 {
        return err("axes.placement", "`split` needs at least 2 CPUs".into());
    }
    Ok(())
}

impl Scenario {
    /// Every cell, in run order: implementation-major, then the axes in
    /// the order below, RTT innermost. Axes an implementation ignores take
    /// their first value and are not expanded.
    pub fn cells(&self) -> Vec<CellSpec> {
        let ax = &self.axes;
        let mut all: Vec<CellSpec> = Vec::new();
        for name in &self.implementations {
            let Some(imp) = implementations::find(name) else {
                continue; // validate() already rejected unknown names
            };
            let uses = |a: Axis| imp.axes.contains(&a);
            // Validation guarantees every axis has a first value.
            let template = CellSpec {
                implementation: imp,
                rtt_ms: None,
                region_bytes: 0,
                chunk_bytes: ax.chunk_kib[0] << 10,
                access_bytes: self.access_kib << 10,
                workload: ax.workload[0],
                placement: Placement::Unpinned,
                transport: ax.transport[0],
                pull_workers: ax.pull_workers[0],
                pull_heuristic: ax.pull_heuristic[0],
                chunking: ax.chunking[0],
                link_mbit: None,
            };
            let mut cells = vec![template];
            expand(&mut cells, true, &ax.region_mib, |c, &v| {
                c.region_bytes = v << 20
            });
            expand(&mut cells, uses(Axis::ChunkSize), &ax.chunk_kib, |c, &v| {
                c.chunk_bytes = v << 10
            });
            expand(&mut cells, true, &ax.workload, |c, &v| c.workload = v);
            expand(&mut cells, uses(Axis::Placement), &ax.placement, |c, &v| {
                c.placement = v
            });
            expand(&mut cells, uses(Axis::Transport), &ax.transport, |c, &v| {
                c.transport = v
            });
            expand(
                &mut cells,
                uses(Axis::PullWorkers),
                &ax.pull_workers,
                |c, &v| c.pull_workers = v,
            );
            expand(
                &mut cells,
                uses(Axis::PullHeuristic),
                &ax.pull_heuristic,
                |c, &v| c.pull_heuristic = v,
            );
            expand(&mut cells, uses(Axis::Chunking), &ax.chunking, |c, &v| {
                c.chunking = v
            });
            // A rate limits the link, which only implementations with a
            // remote have (those with an RTT); no rates, no limit.
            let limited = uses(Axis::Rtt) && !ax.link_mbit.is_empty();
            expand(&mut cells, limited, &ax.link_mbit, |c, &v| {
                c.link_mbit = Some(v)
            });
            expand(&mut cells, uses(Axis::Rtt), &ax.rtt_ms, |c, &v| {
                c.rtt_ms = Some(v)
            });
            for mut cell in cells {
                if !cell.uses_chunk_size() {
                    // One cell, not one per chunk size it would ignore.
                    cell.chunk_bytes = ax.chunk_kib[0] << 10;
                }
                if !all.contains(&cell) {
                    all.push(cell);
                }
            }
        }
        all
    }
}

/// Replaces every cell by one copy per value of an axis the implementation
/// uses (later axes vary faster); leaves the cells alone otherwise.
fn expand<T>(cells: &mut Vec<CellSpec>, uses: bool, values: &[T], set: impl Fn(&mut CellSpec, &T)) {
    if !uses {
        return;
    }
    *cells = cells
        .iter()
        .flat_map(|cell| {
            values.iter().map(|v| {
                let mut c = cell.clone();
                set(&mut c, v);
                c
            })
        })
        .collect();
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        name = "t"
        description = "d"
        implementations = ["baseline", "uffd"]
        repetitions = 2
        cell_time_budget_s = 10
        [axes]
        rtt_ms = [0, 5]
        region_mib = [4]
        chunk_kib = [64]
        workload = ["sequential", "random"]
        [profiles.quick]
        repetitions = 1
        axes.rtt_ms = [1]
    "#;

    #[test]
    fn every_built_in_scenario_parses_under_every_profile_it_has() {
        for (name, _) in BUILT_IN {
            for profile in ["quick", "default", "thesis"] {
                load_any(name, profile).unwrap();
            }
        }
    }

    #[test]
    fn the_ci_bench_set_stays_out_of_thesis_and_can_reach_significance() {
        assert!(!built_in_names().any(|n| n == "ci"));
        let AnyScenario::Region(ci) = load_any("ci", "default").unwrap() else {
            panic!("ci is a region scenario");
        };
        // Five a side is the least for which the exact two-sided test can
        // reach p < 0.01 (2 / C(10, 5)).
        assert!(ci.repetitions >= 5, "{}", ci.repetitions);
        let names: Vec<&str> = ci.cells().iter().map(|c| c.implementation.name).collect();
        for imp in ["baseline", "uffd", "mount-direct", "mount-managed"] {
            assert!(names.contains(&imp), "{imp} missing from {names:?}");
        }
    }

    #[test]
    fn profile_overrides_replace_settings() {
        let s = parse("t", GOOD, "quick").unwrap();
        assert_eq!(s.repetitions, 1);
        assert_eq!(s.axes.rtt_ms, vec![1.0]);
        let d = parse("t", GOOD, "default").unwrap();
        assert_eq!(d.repetitions, 2);
        assert_eq!(d.axes.rtt_ms, vec![0.0, 5.0]);
    }

    #[test]
    fn a_link_rate_expands_only_where_there_is_a_link_and_zero_is_refused() {
        let text = GOOD.replace(
            "workload = [",
            "link_mbit = [100, 200]\n        workload = [",
        );
        let cells = parse("t", &text, "default").unwrap().cells();
        for c in &cells {
            match c.implementation.name {
                "baseline" => assert_eq!(c.link_mbit, None),
                _ => assert!(matches!(c.link_mbit, Some(100 | 200)), "{c:?}"),
            }
        }
        let uffd: Vec<_> = cells
            .iter()
            .filter(|c| c.implementation.name == "uffd")
            .collect();
        // 2 rates x 2 RTTs x 2 workloads, each rate recorded as a parameter.
        assert_eq!(uffd.len(), 8);
        assert_eq!(uffd[0].params()["link_mbit"], serde_json::json!(100));
        assert!(!parse("t", GOOD, "default").unwrap().cells()[0]
            .params()
            .contains_key("link_mbit"));

        let err = parse(
            "t",
            &GOOD.replace("workload = [", "link_mbit = [0]\n        workload = ["),
            "default",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("axes.link_mbit") && err.contains("leave the axis out"),
            "{err}"
        );
    }

    #[test]
    fn baseline_does_not_expand_over_rtt() {
        let s = parse("t", GOOD, "default").unwrap();
        let cells = s.cells();
        let baseline = cells
            .iter()
            .filter(|c| c.implementation.name == "baseline")
            .count();
        let uffd = cells
            .iter()
            .filter(|c| c.implementation.name == "uffd")
            .count();
        assert_eq!((baseline, uffd), (2, 4));
        let ids: std::collections::BTreeSet<String> =
            cells.iter().map(|c| c.cell_id("t")).collect();
        assert_eq!(ids.len(), cells.len(), "cell ids must be unique");
    }

    #[test]
    fn only_implementations_using_an_axis_expand_over_it() {
        let text = with_key_replaced(GOOD, "axes.transport = [\"frpc\", \"grpc\"]");
        let text = with_key_replaced(&text, "axes.pull_workers = [1, 64]");
        let cells = parse("t", &text, "default").unwrap().cells();
        let count = |name: &str| {
            cells
                .iter()
                .filter(|c| c.implementation.name == name)
                .count()
        };
        // uffd uses the transport axis, not the pull-worker one.
        assert_eq!((count("baseline"), count("uffd")), (2, 8));
        let uffd = cells
            .iter()
            .find(|c| c.implementation.name == "uffd")
            .unwrap();
        let params = uffd.params();
        assert!(params.contains_key("transport"), "{params:?}");
        assert!(!params.contains_key("pull_workers"), "{params:?}");
        let e = parse(
            "f.toml",
            &with_key_replaced(GOOD, "axes.pull_workers = [0]"),
            "default",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("axes.pull_workers") && e.contains("16384"),
            "{e}"
        );
        let e = parse(
            "f.toml",
            &with_key_replaced(GOOD, "axes.transport = [\"smoke\"]"),
            "default",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("smoke") && e.contains("grpc"), "{e}");
    }

    #[test]
    fn a_direct_mount_expands_over_chunk_sizes_only_where_it_chunks() {
        let text = GOOD.replace("[\"baseline\", \"uffd\"]", "[\"mount-direct\"]");
        let text = with_key_replaced(&text, "axes.chunk_kib = [4, 64]");
        let text = with_key_replaced(&text, "axes.workload = [\"sequential\"]");
        let text = with_key_replaced(&text, "axes.rtt_ms = [5]");
        let unchunked = parse("t", &text, "default").unwrap().cells();
        // Not asked: unchunked, one cell whatever chunk sizes the file lists.
        assert_eq!(unchunked.len(), 1);
        assert_eq!(unchunked[0].chunking, ChunkingSide::Unchunked);
        let params = unchunked[0].params();
        assert_eq!(params["chunking"], "none");
        assert!(!params.contains_key("chunk_kib"), "{params:?}");

        let text = with_key_replaced(&text, "axes.chunking = [\"none\", \"client\", \"server\"]");
        let cells = parse("t", &text, "default").unwrap().cells();
        let ids: Vec<String> = cells.iter().map(|c| c.cell_id("t")).collect();
        assert_eq!(cells.len(), 1 + 2 + 2, "{ids:#?}");
        assert_eq!(
            ids.iter().collect::<std::collections::BTreeSet<_>>().len(),
            ids.len()
        );
        for side in [ChunkingSide::Client, ChunkingSide::Server] {
            let sizes: Vec<u64> = cells
                .iter()
                .filter(|c| c.chunking == side)
                .map(|c| c.params()["chunk_kib"].as_u64().unwrap())
                .collect();
            assert_eq!(sizes, [4, 64], "{side}");
        }
        // The managed mount always chunks, so it ignores the axis.
        let managed = with_key_replaced(&text, "implementations = [\"mount-managed\"]");
        let cells = parse("t", &managed, "default").unwrap().cells();
        assert_eq!(cells.len(), 2);
        assert!(cells.iter().all(|c| !c.params().contains_key("chunking")));
        let e = parse(
            "f.toml",
            &with_key_replaced(&text, "axes.chunking = [\"middle\"]"),
            "default",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("middle") && e.contains("server"), "{e}");
    }

    #[test]
    fn unknown_key_names_the_key_and_the_allowed_ones() {
        let text = GOOD.replace("repetitions = 2", "repetitions = 2\nrepetitons = 3");
        let e = parse("my.toml", &text, "default").unwrap_err().to_string();
        assert!(e.contains("my.toml") && e.contains("repetitons"), "{e}");
        assert!(e.contains("repetitions"), "allowed keys missing: {e}");
    }

    #[test]
    fn bad_values_name_the_key_and_what_is_allowed() {
        let cases = [
            (
                "implementations = [\"baseline\", \"uffd\"]",
                "implementations = [\"nope\"]",
                "allowed: baseline",
            ),
            ("chunk_kib = [64]", "chunk_kib = [3]", "axes.chunk_kib"),
            (
                "workload = [\"sequential\", \"random\"]",
                "workload = [\"zigzag\"]",
                "sequential",
            ),
            ("rtt_ms = [0, 5]", "rtt_ms = [-1]", "axes.rtt_ms"),
            ("repetitions = 2", "repetitions = 0", "repetitions"),
        ];
        for (from, to, expect) in cases {
            let e = parse("f.toml", &GOOD.replace(from, to), "default")
                .unwrap_err()
                .to_string();
            assert!(e.contains("f.toml") && e.contains(expect), "{to}: {e}");
        }
    }

    #[test]
    fn missing_profile_lists_the_known_ones() {
        let e = parse("f.toml", GOOD, "thesis").unwrap_err().to_string();
        assert!(e.contains("thesis") && e.contains("quick"), "{e}");
    }

    #[test]
    fn unknown_kind_names_the_allowed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.toml");
        std::fs::write(&path, format!("kind = \"fancy\"\n{GOOD}")).unwrap();
        let e = load_any(path.to_str().unwrap(), "default")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"fancy\"") && e.contains("link-calibration") && e.contains("region"),
            "{e}"
        );
        std::fs::write(&path, format!("kind = \"region\"\n{GOOD}")).unwrap();
        assert!(matches!(
            load_any(path.to_str().unwrap(), "default").unwrap(),
            AnyScenario::Region(_)
        ));
    }

    #[test]
    fn unknown_profile_table_is_rejected() {
        let text = format!("{GOOD}\n[profiles.fast]\nrepetitions = 1\n");
        let e = parse("f.toml", &text, "default").unwrap_err().to_string();
        assert!(e.contains("profiles.fast"), "{e}");
    }
}
