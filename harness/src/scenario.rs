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
];

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
}

fn default_placement() -> Vec<Placement> {
    vec![Placement::Unpinned]
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
}

impl CellSpec {
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
        if self.implementation.axes.contains(&Axis::ChunkSize) {
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
        p
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
}

impl AnyScenario {
    /// One line for `harness list`.
    pub fn description(&self) -> &str {
        match self {
            AnyScenario::Region(s) => &s.description,
            AnyScenario::LinkCalibration(s) => &s.description,
            AnyScenario::TransportSweep(s) => &s.description,
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
        Some(other) => Err(ScenarioError::Invalid {
            origin,
            key: "kind".into(),
            message: format!(
                "{} is not a scenario kind; allowed: \"{REGION_KIND}\" (the default), \"{}\", \"{}\"",
                other.map_or_else(|| "a non-string".to_owned(), |k| format!("\"{k}\"")),
                crate::link_calibration::KIND,
                crate::transport_sweep::KIND
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
    ] {
        if empty {
            return err(key, "must list at least one value".into());
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
    /// Every cell, in run order: implementation-major, then the axes.
    pub fn cells(&self) -> Vec<CellSpec> {
        let mut cells: Vec<CellSpec> = Vec::new();
        for name in &self.implementations {
            let Some(imp) = implementations::find(name) else {
                continue; // validate() already rejected unknown names
            };
            let uses = |a: Axis| imp.axes.contains(&a);
            let rtts: Vec<Option<f64>> = if uses(Axis::Rtt) {
                self.axes.rtt_ms.iter().map(|r| Some(*r)).collect()
            } else {
                vec![None]
            };
            let chunks: Vec<u64> = if uses(Axis::ChunkSize) {
                self.axes.chunk_kib.clone()
            } else {
                vec![self.axes.chunk_kib[0]]
            };
            let placements: Vec<Placement> = if uses(Axis::Placement) {
                self.axes.placement.clone()
            } else {
                vec![Placement::Unpinned]
            };
            for &region_mib in &self.axes.region_mib {
                for &chunk_kib in &chunks {
                    for &workload in &self.axes.workload {
                        for &placement in &placements {
                            for &rtt_ms in &rtts {
                                let cell = CellSpec {
                                    implementation: imp,
                                    rtt_ms,
                                    region_bytes: region_mib << 20,
                                    chunk_bytes: chunk_kib << 10,
                                    access_bytes: self.access_kib << 10,
                                    workload,
                                    placement,
                                };
                                if !cells.contains(&cell) {
                                    cells.push(cell);
                                }
                            }
                        }
                    }
                }
            }
        }
        cells
    }
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
    fn profile_overrides_replace_settings() {
        let s = parse("t", GOOD, "quick").unwrap();
        assert_eq!(s.repetitions, 1);
        assert_eq!(s.axes.rtt_ms, vec![1.0]);
        let d = parse("t", GOOD, "default").unwrap();
        assert_eq!(d.repetitions, 2);
        assert_eq!(d.axes.rtt_ms, vec![0.0, 5.0]);
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
