//! Pre-copy cost scenarios (`kind = "precopy-cost"`): what finding the
//! changed memory costs per sync cycle, hashing (`hashsync`, each
//! algorithm) against userfaultfd write-protect (`uffd-wp`, async and
//! sync), as the region grows and as the dirty fraction grows. The claim
//! tested: hashing costs grow with the region, write-protect costs with
//! the dirty pages. `precopy-cost` is the built-in one.
//!
//! A cell is one implementation at one point (region MiB, dirty fraction).
//! Each cycle the application writes one byte into each of
//! `dirty_fraction x pages` distinct random pages (at least one), then the
//! tracker finds them:
//!
//! - `hashsync-ALG`: the region is a sparse file in the system's temporary
//!   directory, mapped `MAP_SHARED`; `SyncSource::plan` (msync, hash with
//!   `hash_threads` threads, delta). The plan is taken as sent, not sent:
//!   this scenario measures tracking, not the network.
//! - `uffd-wp` / `uffd-wp-sync`: an anonymous region (`DirtyTracker`);
//!   `collect()`.
//!
//! The first cycle is a warm-up (hashsync's hashes of nothing to compare
//! with, the first touches of the pages) and is not recorded; the next
//! `cycles` are. Per cell, as medians over those cycles:
//! `precopy_cycle_ms` (the tracker's step), `cycle_cpu_ms` (process CPU
//! during it), `write_ms` and `write_cpu_ms` (the application's writes,
//! where sync write-protect pays its faults), `msync_ms` and `hash_ms`
//! (hashsync), `bytes_to_send` (changed chunks, or dirty pages, in bytes),
//! `dirty_pages`. Every cycle must report exactly the written pages (or
//! the chunks holding them), or the cell fails (`integrity`).
//!
//! Untouched anonymous memory stays unpopulated, so a 4 GiB write-protect
//! region costs only its dirty pages and page tables; the hashed file is
//! read whole every cycle, so its pages sit in the page cache. Each cycle
//! writes a fresh random set of pages, so some writes to the anonymous
//! region are first touches (a page allocation) while the file's pages
//! are all cached after the warm-up: `write_ms` includes that difference.
//!
//! The hashed file (`memsync-precopy-PID-N.region`, sparse) is removed
//! when its point is done; a run killed meanwhile leaves it behind.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::scenario::ScenarioError;

mod claims;
mod run;

pub use claims::claim_lines;
pub use run::{run, table};

/// The `kind` that selects this module.
pub const KIND: &str = "precopy-cost";

/// What a cell measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tracker {
    Hash(hashsync::Algorithm),
    Wp(uffd::WpMode),
}

impl Tracker {
    /// The `implementation` of its records.
    pub fn name(self) -> String {
        match self {
            Tracker::Hash(a) => format!("hashsync-{a}"),
            Tracker::Wp(uffd::WpMode::Async) => "uffd-wp".into(),
            Tracker::Wp(uffd::WpMode::Sync) => "uffd-wp-sync".into(),
        }
    }
}

/// One point. Also the `[base]` table.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Point {
    pub region_mib: u64,
    /// Share of the region's pages written per cycle, 0 < f <= 1.
    pub dirty_fraction: f64,
}

/// One `[sweeps.NAME]` table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sweep {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region_mib: Option<Vec<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirty_fraction: Option<Vec<f64>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    name: String,
    #[allow(dead_code)] // checked before this is parsed
    kind: String,
    description: String,
    #[serde(default)]
    figures: Vec<String>,
    implementations: Vec<String>,
    algorithms: Vec<String>,
    hash_threads: usize,
    chunk_kib: u64,
    cycles: u32,
    repetitions: u32,
    #[serde(default)]
    seed: u64,
    base: Point,
    #[serde(default)]
    sweeps: BTreeMap<String, Sweep>,
}

/// A precopy-cost scenario with one profile applied.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PrecopyCostScenario {
    pub name: String,
    pub kind: &'static str,
    pub description: String,
    pub figures: Vec<String>,
    pub profile: String,
    /// Implementation names in run order.
    pub implementations: Vec<String>,
    #[serde(skip)]
    pub trackers: Vec<Tracker>,
    pub hash_threads: usize,
    pub chunk_kib: u64,
    pub cycles: u32,
    pub repetitions: u32,
    pub seed: u64,
    pub base: Point,
    pub sweeps: BTreeMap<String, Sweep>,
    pub origin: String,
}

impl PrecopyCostScenario {
    /// The base point, then each sweep's points in sweep-name order, each
    /// once.
    pub fn points(&self) -> Vec<Point> {
        let mut points = vec![self.base];
        for sweep in self.sweeps.values() {
            let regions = sweep
                .region_mib
                .clone()
                .unwrap_or_else(|| vec![self.base.region_mib]);
            let fractions = sweep
                .dirty_fraction
                .clone()
                .unwrap_or_else(|| vec![self.base.dirty_fraction]);
            for &region_mib in &regions {
                for &dirty_fraction in &fractions {
                    let p = Point {
                        region_mib,
                        dirty_fraction,
                    };
                    if !points.iter().any(|q| {
                        q.region_mib == p.region_mib
                            && q.dirty_fraction.to_bits() == p.dirty_fraction.to_bits()
                    }) {
                        points.push(p);
                    }
                }
            }
        }
        points
    }
}

/// Parses `text` (whose `kind` is [`KIND`]) with `profile` merged in.
pub fn parse(
    origin: &str,
    text: &str,
    profile: &str,
) -> Result<PrecopyCostScenario, ScenarioError> {
    for other in ["quick", "default", "thesis"] {
        if other != profile {
            match merged_file(origin, text, other) {
                Ok(f) => {
                    validate(&f).map_err(|(key, message)| ScenarioError::Invalid {
                        origin: format!("{origin} (profile {other})"),
                        key,
                        message,
                    })?;
                }
                Err(ScenarioError::UnknownProfile { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    let file = merged_file(origin, text, profile)?;
    let trackers = validate(&file).map_err(|(key, message)| ScenarioError::Invalid {
        origin: origin.to_owned(),
        key,
        message,
    })?;
    Ok(PrecopyCostScenario {
        name: file.name,
        kind: KIND,
        description: file.description,
        figures: file.figures,
        profile: profile.to_owned(),
        implementations: trackers.iter().map(|t| t.name()).collect(),
        trackers,
        hash_threads: file.hash_threads,
        chunk_kib: file.chunk_kib,
        cycles: file.cycles,
        repetitions: file.repetitions,
        seed: file.seed,
        base: file.base,
        sweeps: file.sweeps,
        origin: origin.to_owned(),
    })
}

fn merged_file(origin: &str, text: &str, profile: &str) -> Result<File, ScenarioError> {
    let merged = crate::scenario::merge_profile(origin, text, profile)?;
    merged
        .try_into()
        .map_err(|e: toml::de::Error| ScenarioError::Parse {
            origin: format!("{origin} (profile {profile})"),
            message: e.to_string(),
        })
}

fn check_point(p: &Point, at: &str) -> Result<(), (String, String)> {
    if !(1..=16_384).contains(&p.region_mib) {
        return Err((
            format!("{at}.region_mib"),
            format!("{} is not in 1..=16384 MiB", p.region_mib),
        ));
    }
    if !(p.dirty_fraction > 0.0 && p.dirty_fraction <= 1.0) {
        return Err((
            format!("{at}.dirty_fraction"),
            format!("{} is not in (0, 1]", p.dirty_fraction),
        ));
    }
    Ok(())
}

/// Checks every setting; returns the trackers in run order.
fn validate(file: &File) -> Result<Vec<Tracker>, (String, String)> {
    let err = |key: &str, message: String| Err((key.to_owned(), message));
    if file.name.is_empty()
        || !file
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return err(
            "name",
            format!("`{}` must be non-empty letters, digits and `-`", file.name),
        );
    }
    let mut algorithms = Vec::new();
    for name in &file.algorithms {
        match name.parse::<hashsync::Algorithm>() {
            Ok(a) if !algorithms.contains(&a) => algorithms.push(a),
            Ok(a) => return err("algorithms", format!("{a} is listed twice")),
            Err(e) => return err("algorithms", e.to_string()),
        }
    }
    let mut trackers = Vec::new();
    for name in &file.implementations {
        match name.as_str() {
            "hashsync" if algorithms.is_empty() => {
                return err(
                    "algorithms",
                    "`hashsync` needs at least one of crc32, xxh3, blake3, sha256".into(),
                )
            }
            "hashsync" => trackers.extend(algorithms.iter().map(|&a| Tracker::Hash(a))),
            "uffd-wp" => trackers.push(Tracker::Wp(uffd::WpMode::Async)),
            "uffd-wp-sync" => trackers.push(Tracker::Wp(uffd::WpMode::Sync)),
            other => {
                return err(
                    "implementations",
                    format!("\"{other}\" is not one; allowed: hashsync, uffd-wp, uffd-wp-sync"),
                )
            }
        }
    }
    let mut seen = Vec::new();
    for t in &trackers {
        if seen.contains(t) {
            return err("implementations", format!("{} is listed twice", t.name()));
        }
        seen.push(*t);
    }
    if trackers.is_empty() {
        return err(
            "implementations",
            "must name at least one of hashsync, uffd-wp, uffd-wp-sync".into(),
        );
    }
    if !(1..=64).contains(&file.hash_threads) {
        return err(
            "hash_threads",
            format!("{} is not in 1..=64", file.hash_threads),
        );
    }
    if !file.chunk_kib.is_power_of_two() || !(4..=(1 << 20)).contains(&file.chunk_kib) {
        return err(
            "chunk_kib",
            format!(
                "{} must be a power of two from 4 KiB (a page) to 1 GiB",
                file.chunk_kib
            ),
        );
    }
    if !(1..=100).contains(&file.cycles) {
        return err("cycles", format!("{} is not in 1..=100", file.cycles));
    }
    if !(1..=100).contains(&file.repetitions) {
        return err(
            "repetitions",
            format!("{} is not in 1..=100", file.repetitions),
        );
    }
    check_point(&file.base, "base")?;
    for (name, sweep) in &file.sweeps {
        let at = format!("sweeps.{name}");
        if sweep.region_mib.is_none() && sweep.dirty_fraction.is_none() {
            return err(&at, "must vary region_mib or dirty_fraction".into());
        }
        for r in sweep.region_mib.iter().flatten() {
            check_point(
                &Point {
                    region_mib: *r,
                    dirty_fraction: file.base.dirty_fraction,
                },
                &at,
            )?;
        }
        for f in sweep.dirty_fraction.iter().flatten() {
            check_point(
                &Point {
                    region_mib: file.base.region_mib,
                    dirty_fraction: *f,
                },
                &at,
            )?;
        }
        if sweep.region_mib.as_ref().is_some_and(Vec::is_empty)
            || sweep.dirty_fraction.as_ref().is_some_and(Vec::is_empty)
        {
            return err(&at, "a list must have at least one value".into());
        }
    }
    Ok(trackers)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = include_str!("../../../scenarios/precopy-cost.toml");

    #[test]
    fn built_in_file_parses_in_every_profile() {
        for profile in ["quick", "default", "thesis"] {
            let s = parse("test", TEXT, profile).unwrap();
            assert_eq!(
                s.implementations,
                [
                    "hashsync-crc32",
                    "hashsync-xxh3",
                    "hashsync-blake3",
                    "hashsync-sha256",
                    "uffd-wp",
                    "uffd-wp-sync"
                ],
                "{profile}"
            );
            let points = s.points();
            assert_eq!(points[0], s.base);
            assert!(points.iter().any(|p| p.region_mib == 4096), "{profile}");
            assert!(points.iter().any(|p| p.dirty_fraction == 0.5), "{profile}");
            assert!(
                points.iter().any(|p| p.dirty_fraction == 0.0001),
                "{profile}"
            );
            // The catalog's figures filter on these base values.
            assert_eq!(s.base.region_mib, 1024);
            assert_eq!(s.base.dirty_fraction, 0.01);
        }
    }

    #[test]
    fn bad_values_are_named_with_what_is_allowed() {
        let cases = [
            (
                "implementations = [\"rsync\"]",
                "implementations",
                "uffd-wp",
            ),
            ("algorithms = [\"md5\"]", "algorithms", "sha256"),
            ("hash_threads = 0", "hash_threads", "1..=64"),
            ("chunk_kib = 2", "chunk_kib", "power of two"),
            ("cycles = 0", "cycles", "1..=100"),
            ("base.dirty_fraction = 0", "base.dirty_fraction", "(0, 1]"),
            ("base.region_mib = 0", "base.region_mib", "1..=16384"),
            (
                "sweeps.dirty.dirty_fraction = [2.0]",
                "sweeps.dirty",
                "(0, 1]",
            ),
        ];
        for (line, key, allowed) in cases {
            let text = crate::scenario::with_key_replaced(TEXT, line);
            let err = parse("t.toml", &text, "default").unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(allowed), "{line}: {err}");
        }
    }
}
