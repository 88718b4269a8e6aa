//! Hash-throughput scenarios (`kind = "hash-throughput"`): how fast each
//! chunk hash algorithm of `hashsync` hashes a region in memory, by
//! threads and chunk size, beside the memory-bandwidth ceiling measured in
//! the same run. `hash-throughput` is the built-in one.
//!
//! A cell is one algorithm at one (threads, chunk size): the region is
//! hashed with `hashsync::HashList::compute` once untimed (warm-up), then
//! pass after pass until `measure_s` has passed (at least one pass).
//! Throughput is region bytes x passes / time, in `hash_throughput_mib_s`;
//! `cpu_s` is the process's CPU time over the timed passes. The first
//! pass's list must equal one computed with a single thread, or the cell
//! fails (`integrity`).
//!
//! The ceiling, per thread count: `memory-read` (each thread sums its share
//! of the region as u64 words: the least work that reads every byte, and
//! what every hash must do) and `memcpy` (each thread copies its share
//! into a second region; region bytes per second). They record
//! `hash_throughput_mib_s` too, under `algorithm = memory-read` or
//! `memcpy` and without `chunk_kib`, so the figures draw them as
//! horizontal reference lines. Every cell's `implementation` is
//! `memory-pass`.
//!
//! No link, no remote: `--emulation` other than the default is refused.

use serde::{Deserialize, Serialize};

use crate::scenario::ScenarioError;

mod run;

pub use run::{ceiling_lines, run, table};

/// The `kind` that selects this module.
pub const KIND: &str = "hash-throughput";
/// What `implementation` says in every record: each cell is one pass
/// over the region in memory, and `algorithm` says which, so the figures
/// draw hashes and ceilings side by side.
const IMPLEMENTATION: &str = "memory-pass";
/// `algorithm` of the read-only ceiling cells.
const MEMORY_READ: &str = "memory-read";
/// `algorithm` of the copy ceiling cells.
const MEMCPY: &str = "memcpy";

/// The file, with the chosen profile merged in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    name: String,
    #[allow(dead_code)] // checked before this is parsed
    kind: String,
    description: String,
    #[serde(default)]
    figures: Vec<String>,
    algorithms: Vec<String>,
    threads: Vec<usize>,
    chunk_kib: Vec<u64>,
    region_mib: u64,
    repetitions: u32,
    #[serde(default)]
    seed: u64,
    measure_s: f64,
}

/// A hash-throughput scenario with one profile applied.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HashThroughputScenario {
    pub name: String,
    pub kind: &'static str,
    pub description: String,
    pub figures: Vec<String>,
    pub profile: String,
    #[serde(serialize_with = "names")]
    pub algorithms: Vec<hashsync::Algorithm>,
    pub threads: Vec<usize>,
    pub chunk_kib: Vec<u64>,
    pub region_mib: u64,
    pub repetitions: u32,
    pub seed: u64,
    pub measure_s: f64,
    pub origin: String,
}

fn names<S: serde::Serializer>(a: &[hashsync::Algorithm], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(a.iter().map(|a| a.name()))
}

impl HashThroughputScenario {
    /// Cells per repetition: two ceilings per thread count, then every
    /// algorithm x chunk size.
    pub fn cells_per_repetition(&self) -> usize {
        self.threads.len() * (2 + self.algorithms.len() * self.chunk_kib.len())
    }
}

/// Parses `text` (whose `kind` is [`KIND`]) with `profile` merged in.
pub fn parse(
    origin: &str,
    text: &str,
    profile: &str,
) -> Result<HashThroughputScenario, ScenarioError> {
    // A typo in another profile is reported now, not when it is first used.
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
    let algorithms = validate(&file).map_err(|(key, message)| ScenarioError::Invalid {
        origin: origin.to_owned(),
        key,
        message,
    })?;
    Ok(HashThroughputScenario {
        name: file.name,
        kind: KIND,
        description: file.description,
        figures: file.figures,
        profile: profile.to_owned(),
        algorithms,
        threads: file.threads,
        chunk_kib: file.chunk_kib,
        region_mib: file.region_mib,
        repetitions: file.repetitions,
        seed: file.seed,
        measure_s: file.measure_s,
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

/// Checks every setting; returns the algorithms, or the bad key and why.
fn validate(file: &File) -> Result<Vec<hashsync::Algorithm>, (String, String)> {
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
    if algorithms.is_empty() {
        return err(
            "algorithms",
            "must name at least one of crc32, xxh3, blake3, sha256".into(),
        );
    }
    if file.threads.is_empty() || file.threads.iter().any(|t| !(1..=64).contains(t)) {
        return err(
            "threads",
            format!("{:?}: each must be in 1..=64, at least one", file.threads),
        );
    }
    if file.chunk_kib.is_empty()
        || file
            .chunk_kib
            .iter()
            .any(|c| !c.is_power_of_two() || !(1..=(1 << 20)).contains(c))
    {
        return err(
            "chunk_kib",
            format!(
                "{:?}: each must be a power of two from 1 KiB to 1 GiB, at least one",
                file.chunk_kib
            ),
        );
    }
    if !(1..=16_384).contains(&file.region_mib) {
        return err(
            "region_mib",
            format!("{} is not in 1..=16384 MiB", file.region_mib),
        );
    }
    if let Some(c) = file.chunk_kib.iter().find(|&&c| c > file.region_mib << 10) {
        return err(
            "chunk_kib",
            format!(
                "chunk {c} KiB is larger than the region ({} MiB)",
                file.region_mib
            ),
        );
    }
    if !(1..=100).contains(&file.repetitions) {
        return err(
            "repetitions",
            format!("{} is not in 1..=100", file.repetitions),
        );
    }
    if !(0.0..=600.0).contains(&file.measure_s) {
        return err(
            "measure_s",
            format!("{} is not in 0..=600 s", file.measure_s),
        );
    }
    Ok(algorithms)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = include_str!("../../../scenarios/hash-throughput.toml");

    #[test]
    fn built_in_file_parses_in_every_profile() {
        for profile in ["quick", "default", "thesis"] {
            let s = parse("test", TEXT, profile).unwrap();
            assert_eq!(s.algorithms, hashsync::Algorithm::ALL, "{profile}");
            assert_eq!(s.threads, [1, 2, 4], "{profile}");
            assert!(s.chunk_kib.contains(&4) && s.chunk_kib.contains(&1024));
        }
        let quick = parse("test", TEXT, "quick").unwrap();
        assert_eq!(
            quick.cells_per_repetition(),
            3 * (2 + 4 * quick.chunk_kib.len())
        );
    }

    #[test]
    fn bad_values_are_named_with_what_is_allowed() {
        let cases = [
            ("algorithms = [\"md5\"]", "algorithms", "sha256"),
            ("algorithms = [\"crc32\", \"crc32\"]", "algorithms", "twice"),
            ("algorithms = []", "algorithms", "at least one"),
            ("threads = [0]", "threads", "1..=64"),
            ("chunk_kib = [3]", "chunk_kib", "power of two"),
            ("region_mib = 0", "region_mib", "1..=16384"),
            ("repetitions = 0", "repetitions", "1..=100"),
            ("measure_s = -1", "measure_s", "0..=600"),
        ];
        for (line, key, allowed) in cases {
            let text = crate::scenario::with_key_replaced(TEXT, line);
            let err = parse("t.toml", &text, "default").unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(allowed), "{line}: {err}");
        }
        let small = crate::scenario::with_key_replaced(TEXT, "region_mib = 1");
        let text = crate::scenario::with_key_replaced(&small, "chunk_kib = [4, 2048]");
        let err = parse("t.toml", &text, "default").unwrap_err().to_string();
        assert!(err.contains("larger than the region"), "{err}");
        let err = parse("t.toml", &format!("surprise = 1\n{TEXT}"), "default")
            .unwrap_err()
            .to_string();
        assert!(err.contains("surprise"), "{err}");
    }
}
