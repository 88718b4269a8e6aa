//! Transport-sweep scenarios (`kind = "transport-sweep"`): the transports
//! of `impls/transports` and the raw TCP baseline compared as the wire
//! between a mount and its remote, across RTT, concurrent workers, chunk
//! size and region size. `transport-sweep` is the built-in one.
//!
//! A cell is one transport at one point (RTT, workers, chunk, region): a
//! server serves the seeded region's backend service over the transport;
//! `workers` tasks each keep one `ReadAt(chunk)` in flight at offsets that
//! cover the region over and over, first for a warm-up, then for the
//! measured window. Every reply is compared with the source: one wrong
//! byte fails the cell.
//!
//! Where things run: in the packet-level modes (`userspace-link`,
//! `kernel-netem`) the server is a `remote-backend` role process in the
//! `src` namespace and the client runs in `dst`, across the shaped link;
//! in `inproc` both run in this process over loopback TCP, so a cell with
//! an RTT cannot be emulated and is recorded as skipped.
//!
//! Recorded per cell: `read_throughput_mib_s`, `requests_per_s` and the
//! `request_latency_ns` histogram over the measured window (requests
//! completed in it); `cpu_s` (the client's threads) and `server_cpu_s`
//! (the role process, or the in-process server's threads), both over the
//! whole cell's traffic (warm-up and window); `transferred_bytes` as the
//! link (or the client's sockets) counted them; and `efficiency`, the
//! throughput over raw's at the same point and repetition. Raw runs first
//! at every point so that ratio is known when a cell is written.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use transports::TransportKind;

use crate::scenario::ScenarioError;

mod ratios;
mod run;

#[cfg(test)]
use ratios::targets;
pub use ratios::{skipped_lines, table, target_lines};
pub use run::run;

/// The `kind` that selects this module.
pub const KIND: &str = "transport-sweep";
/// What `implementation` says in every record: the transport is the
/// series, so this stays one value.
const IMPLEMENTATION: &str = "remote-read";
/// Most bytes a cell may keep in flight (workers x chunk): every worker
/// holds a buffer and the server as much again.
const MAX_IN_FLIGHT_BYTES: u64 = 1 << 30;
/// Why a cell with an RTT does not run in `inproc`.
const NEEDS_PACKETS: &str = "RTT needs a packet-level emulation mode, which needs root";
/// How long a role may take to start serving (it generates the region).
const ROLE_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopping server may take to report.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// One point: the four axes. Also the `[base]` table.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Point {
    /// Round-trip time, ms.
    pub rtt_ms: f64,
    /// Requests kept in flight at once.
    pub workers: u32,
    /// Bytes one request reads, KiB.
    pub chunk_kib: u64,
    /// Size of the served region, MiB.
    pub region_mib: u64,
}

impl Point {
    fn chunk_bytes(&self) -> u64 {
        self.chunk_kib << 10
    }
    fn region_bytes(&self) -> u64 {
        self.region_mib << 20
    }
    fn rtt(&self) -> Duration {
        Duration::from_secs_f64(self.rtt_ms / 1e3)
    }
    /// Whether `other` is the same point (RTTs compared as written).
    fn same(&self, other: &Point) -> bool {
        self.rtt_ms.to_bits() == other.rtt_ms.to_bits()
            && self.workers == other.workers
            && self.chunk_kib == other.chunk_kib
            && self.region_mib == other.region_mib
    }
}

/// One `[sweeps.NAME]` table: the axes it varies (their product), the
/// rest taken from `[base]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sweep {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<Vec<u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_kib: Option<Vec<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region_mib: Option<Vec<u64>>,
}

/// The file, with the chosen profile already merged in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    name: String,
    #[allow(dead_code)] // checked before this is parsed
    kind: String,
    description: String,
    #[serde(default)]
    figures: Vec<String>,
    transports: Vec<String>,
    repetitions: u32,
    #[serde(default)]
    seed: u64,
    connections: usize,
    warmup_s: f64,
    measure_s: f64,
    base: Point,
    #[serde(default)]
    sweeps: BTreeMap<String, Sweep>,
}

/// Every value an axis takes, the base value first (figures that vary
/// another axis hold this one at its first value).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AxisValues {
    pub rtt_ms: Vec<f64>,
    pub workers: Vec<u32>,
    pub chunk_kib: Vec<u64>,
    pub region_mib: Vec<u64>,
}

/// A transport-sweep scenario with one profile applied.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TransportSweepScenario {
    pub name: String,
    pub kind: &'static str,
    pub description: String,
    pub figures: Vec<String>,
    pub profile: String,
    /// Transport names, in the order given (reports order series by it).
    pub transports: Vec<String>,
    pub repetitions: u32,
    pub seed: u64,
    pub connections: usize,
    pub warmup_s: f64,
    pub measure_s: f64,
    pub base: Point,
    pub sweeps: BTreeMap<String, Sweep>,
    pub axes: AxisValues,
    pub origin: String,
}

/// Parses `text` (whose `kind` is [`KIND`]) with `profile` merged over
/// its base settings.
pub fn parse(
    origin: &str,
    text: &str,
    profile: &str,
) -> Result<TransportSweepScenario, ScenarioError> {
    let file = merged_file(origin, text, profile)?;
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
    let kinds = validate(&file).map_err(|(key, message)| ScenarioError::Invalid {
        origin: origin.to_owned(),
        key,
        message,
    })?;
    let points = points_of(&file.base, &file.sweeps);
    let mut axes = AxisValues {
        rtt_ms: vec![file.base.rtt_ms],
        workers: vec![file.base.workers],
        chunk_kib: vec![file.base.chunk_kib],
        region_mib: vec![file.base.region_mib],
    };
    for p in &points {
        if !axes
            .rtt_ms
            .iter()
            .any(|r| r.to_bits() == p.rtt_ms.to_bits())
        {
            axes.rtt_ms.push(p.rtt_ms);
        }
        push_new(&mut axes.workers, p.workers);
        push_new(&mut axes.chunk_kib, p.chunk_kib);
        push_new(&mut axes.region_mib, p.region_mib);
    }
    Ok(TransportSweepScenario {
        name: file.name,
        kind: KIND,
        description: file.description,
        figures: file.figures,
        profile: profile.to_owned(),
        transports: kinds.iter().map(|k| k.name().to_owned()).collect(),
        repetitions: file.repetitions,
        seed: file.seed,
        connections: file.connections,
        warmup_s: file.warmup_s,
        measure_s: file.measure_s,
        base: file.base,
        sweeps: file.sweeps,
        axes,
        origin: origin.to_owned(),
    })
}

fn push_new<T: PartialEq>(list: &mut Vec<T>, value: T) {
    if !list.contains(&value) {
        list.push(value);
    }
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

/// Checks every setting; returns the transports, or the bad key and why.
fn validate(file: &File) -> Result<Vec<TransportKind>, (String, String)> {
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
    let mut kinds = Vec::new();
    for name in &file.transports {
        match name.parse::<TransportKind>() {
            Ok(k) => push_new(&mut kinds, k),
            Err(e) => return err("transports", e.to_string()),
        }
    }
    if kinds.is_empty() {
        return err(
            "transports",
            "must name at least one of jsonl, grpc, frpc, tarpc, raw".into(),
        );
    }
    if !(1..=100).contains(&file.repetitions) {
        return err(
            "repetitions",
            format!("{} is not in 1..=100", file.repetitions),
        );
    }
    if !(1..=64).contains(&file.connections) {
        return err(
            "connections",
            format!("{} is not in 1..=64", file.connections),
        );
    }
    if !(0.0..=600.0).contains(&file.warmup_s) {
        return err("warmup_s", format!("{} is not in 0..=600 s", file.warmup_s));
    }
    if !(0.05..=3600.0).contains(&file.measure_s) {
        return err(
            "measure_s",
            format!("{} is not in 0.05..=3600 s", file.measure_s),
        );
    }
    check_point(&file.base, "base")?;
    for (name, sweep) in &file.sweeps {
        let key = |axis: &str| format!("sweeps.{name}.{axis}");
        let lists = [
            sweep.rtt_ms.as_ref().map(|v| ("rtt_ms", v.is_empty())),
            sweep.workers.as_ref().map(|v| ("workers", v.is_empty())),
            sweep
                .chunk_kib
                .as_ref()
                .map(|v| ("chunk_kib", v.is_empty())),
            sweep
                .region_mib
                .as_ref()
                .map(|v| ("region_mib", v.is_empty())),
        ];
        if lists.iter().all(Option::is_none) {
            return err(
                &format!("sweeps.{name}"),
                "must vary at least one axis; allowed: rtt_ms, workers, chunk_kib, region_mib"
                    .into(),
            );
        }
        if let Some((axis, _)) = lists.iter().flatten().find(|(_, empty)| *empty) {
            return err(&key(axis), "must list at least one value".into());
        }
        for point in points_of(&file.base, &BTreeMap::from([(name.clone(), sweep.clone())])) {
            check_point(&point, &format!("sweeps.{name}"))?;
        }
    }
    Ok(kinds)
}

/// Checks one point; `at` names the table it comes from.
fn check_point(p: &Point, at: &str) -> Result<(), (String, String)> {
    let err = |axis: &str, message: String| Err((format!("{at}.{axis}"), message));
    if !(0.0..=100.0).contains(&p.rtt_ms) {
        return err("rtt_ms", format!("{} is not in 0..=100 ms", p.rtt_ms));
    }
    if !(1..=4096).contains(&p.workers) {
        return err("workers", format!("{} is not in 1..=4096", p.workers));
    }
    if !(4..=4096).contains(&p.chunk_kib) || !p.chunk_kib.is_power_of_two() {
        return err(
            "chunk_kib",
            format!("{} must be a power of two from 4 to 4096 KiB", p.chunk_kib),
        );
    }
    if !(1..=4096).contains(&p.region_mib) {
        return err(
            "region_mib",
            format!("{} is not in 1..=4096 MiB", p.region_mib),
        );
    }
    if p.chunk_bytes() > p.region_bytes() {
        return err(
            "chunk_kib",
            format!(
                "chunk {} KiB is larger than region {} MiB",
                p.chunk_kib, p.region_mib
            ),
        );
    }
    let in_flight = u64::from(p.workers) * p.chunk_bytes();
    if in_flight > MAX_IN_FLIGHT_BYTES {
        return err(
            "workers",
            format!(
                "{} workers x {} KiB chunks keep {} MiB in flight; allowed: at most {} MiB",
                p.workers,
                p.chunk_kib,
                in_flight >> 20,
                MAX_IN_FLIGHT_BYTES >> 20
            ),
        );
    }
    Ok(())
}

/// The base point, then every sweep's points in sweep-name order, each
/// point once.
fn points_of(base: &Point, sweeps: &BTreeMap<String, Sweep>) -> Vec<Point> {
    let mut points = vec![*base];
    for sweep in sweeps.values() {
        let rtts = sweep.rtt_ms.clone().unwrap_or_else(|| vec![base.rtt_ms]);
        let workers = sweep.workers.clone().unwrap_or_else(|| vec![base.workers]);
        let chunks = sweep
            .chunk_kib
            .clone()
            .unwrap_or_else(|| vec![base.chunk_kib]);
        let regions = sweep
            .region_mib
            .clone()
            .unwrap_or_else(|| vec![base.region_mib]);
        for &region_mib in &regions {
            for &chunk_kib in &chunks {
                for &workers in &workers {
                    for &rtt_ms in &rtts {
                        let p = Point {
                            rtt_ms,
                            workers,
                            chunk_kib,
                            region_mib,
                        };
                        if !points.iter().any(|q| q.same(&p)) {
                            points.push(p);
                        }
                    }
                }
            }
        }
    }
    points
}

impl TransportSweepScenario {
    /// Every point the cells run at, each once.
    pub fn points(&self) -> Vec<Point> {
        points_of(&self.base, &self.sweeps)
    }

    /// The transports in run order: raw first, so efficiency against it is
    /// known when the others' cells are written.
    pub fn run_order(&self) -> Vec<TransportKind> {
        let mut kinds: Vec<TransportKind> = self
            .transports
            .iter()
            .filter_map(|t| t.parse().ok())
            .collect();
        kinds.sort_by_key(|k| *k != TransportKind::Raw);
        kinds
    }

    /// Warm-up and measured window at `point`: the configured lengths,
    /// stretched to 10 and 20 round trips.
    pub fn timing(&self, point: &Point) -> (Duration, Duration) {
        let rtt = point.rtt();
        (
            Duration::from_secs_f64(self.warmup_s).max(rtt * 10),
            Duration::from_secs_f64(self.measure_s).max(rtt * 20),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = include_str!("../../../scenarios/transport-sweep.toml");

    #[test]
    fn built_in_file_parses_in_every_profile() {
        for profile in ["quick", "default", "thesis"] {
            let s = parse("test", TEXT, profile).unwrap();
            assert_eq!(s.profile, profile);
            assert_eq!(s.transports.len(), 5);
            assert!(s.points().len() > 3);
        }
        let quick = parse("test", TEXT, "quick").unwrap();
        // Base, then rtt 2 and 10, 1 worker, chunks 4 and 1024; the base
        // point every sweep shares runs once.
        assert_eq!(quick.points().len(), 6);
        assert_eq!(quick.points()[0], quick.base);
        assert_eq!(quick.base.region_mib, 16);
        assert!(quick.points().iter().all(|p| p.region_mib == 16));
        assert_eq!(quick.axes.workers, [64, 1], "the base value first");
        assert_eq!(quick.run_order()[0], TransportKind::Raw);
    }

    #[test]
    fn sweeps_vary_their_axes_around_the_base() {
        let base = Point {
            rtt_ms: 0.0,
            workers: 8,
            chunk_kib: 64,
            region_mib: 4,
        };
        let sweeps = BTreeMap::from([
            (
                "a".to_owned(),
                Sweep {
                    rtt_ms: Some(vec![0.0, 5.0]),
                    ..Sweep::default()
                },
            ),
            (
                "b".to_owned(),
                Sweep {
                    workers: Some(vec![1, 8]),
                    chunk_kib: Some(vec![4, 64]),
                    ..Sweep::default()
                },
            ),
        ]);
        let points = points_of(&base, &sweeps);
        // base, rtt 5, then the 2 x 2 product of b less the base.
        assert_eq!(points.len(), 5, "{points:?}");
        assert!(points.iter().all(|p| p.region_mib == 4));
        assert!(points
            .iter()
            .any(|p| p.rtt_ms == 5.0 && p.workers == 8 && p.chunk_kib == 64));
        assert!(points
            .iter()
            .any(|p| p.rtt_ms == 0.0 && p.workers == 1 && p.chunk_kib == 4));
    }

    #[test]
    fn bad_values_are_named_with_what_is_allowed() {
        let cases = [
            ("transports = [\"http\"]", "transports", "frpc"),
            ("repetitions = 0", "repetitions", "1..=100"),
            ("connections = 0", "connections", "1..=64"),
            ("measure_s = 0", "measure_s", "0.05..=3600"),
            ("base.chunk_kib = 3", "base.chunk_kib", "power of two"),
            ("base.rtt_ms = 500", "base.rtt_ms", "0..=100"),
            (
                "sweeps.workers.workers = [0]",
                "sweeps.workers.workers",
                "1..=4096",
            ),
            (
                "sweeps.workers.workers = [4096, 8192]",
                "sweeps.workers.workers",
                "1..=4096",
            ),
            (
                "sweeps.chunk.chunk_kib = []",
                "sweeps.chunk.chunk_kib",
                "at least one",
            ),
            (
                "base.workers = 4096",
                "sweeps.chunk.workers",
                "at most 1024 MiB",
            ),
        ];
        for (line, key, allowed) in cases {
            let text = crate::scenario::with_key_replaced(TEXT, line);
            let err = parse("t.toml", &text, "default").unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(allowed), "{line}: {err}");
        }
        let err = parse("t.toml", &format!("surprise = 1\n{TEXT}"), "default")
            .unwrap_err()
            .to_string();
        assert!(err.contains("surprise"), "{err}");
        let err = parse(
            "t.toml",
            &TEXT.replace("[sweeps.rtt]\n", "[sweeps.rtt]\nrtts = [1]\n"),
            "default",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("rtts"), "{err}");
        // In a profile other than the one asked for, too.
        let err = parse(
            "t.toml",
            &TEXT.replace("measure_s = 5.0", "measure_s = -1"),
            "default",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("measure_s") && err.contains("thesis"), "{err}");
    }

    #[test]
    fn timing_stretches_with_the_rtt() {
        let s = parse("test", TEXT, "default").unwrap();
        let mut p = s.base;
        assert_eq!(
            s.timing(&p),
            (Duration::from_millis(500), Duration::from_secs(2))
        );
        p.rtt_ms = 100.0;
        assert_eq!(
            s.timing(&p),
            (Duration::from_secs(1), Duration::from_secs(2))
        );
    }

    fn row(transport: &str, chunk: u64, workers: u32, tput: f64, rps: f64) -> results::SummaryRow {
        results::SummaryRow {
            cell_id: format!("x/{transport}/{chunk}"),
            scenario: "x".into(),
            implementation: IMPLEMENTATION.into(),
            transport: Some(transport.into()),
            emulation: "inproc".into(),
            params: BTreeMap::from([
                ("rtt_ms".to_owned(), serde_json::json!(0.0)),
                ("workers".to_owned(), serde_json::json!(workers)),
                ("chunk_kib".to_owned(), serde_json::json!(chunk)),
                ("region_mib".to_owned(), serde_json::json!(16)),
            ]),
            repetitions: 1,
            ok: 1,
            truncated: 0,
            skipped: 0,
            failed: 0,
            integrity: Some(true),
            reason: None,
            medians: BTreeMap::from([("read_throughput_mib_s", tput)]),
            other_medians: BTreeMap::from([("requests_per_s".to_owned(), rps)]),
        }
    }

    #[test]
    fn targets_are_ratios_at_the_same_point() {
        let rows = [
            row("raw", 1024, 64, 1000.0, 1000.0),
            row("frpc", 1024, 64, 850.0, 850.0),
            row("frpc", 4, 64, 100.0, 30_000.0),
            row("grpc", 4, 64, 50.0, 20_000.0),
            // Another point: must not pair with the ones above.
            row("raw", 1024, 1, 10.0, 10.0),
        ];
        let checks = targets(&rows);
        assert_eq!(checks.len(), 2, "{checks:?}");
        assert_eq!(checks[0].target, "frpc/raw read_throughput_mib_s");
        assert!((checks[0].value - 0.85).abs() < 1e-9 && checks[0].met);
        assert_eq!(checks[1].target, "frpc/grpc requests_per_s");
        assert!((checks[1].value - 1.5).abs() < 1e-9 && !checks[1].met);
        // At RTT >= 10 ms a transport is judged against the smaller of its
        // latency bound and what raw carried at the same point; raw against
        // what it carried at RTT 0.
        let at_rtt = |mut r: results::SummaryRow, rtt: f64, bound: f64| {
            r.params.insert("rtt_ms".to_owned(), serde_json::json!(rtt));
            r.other_medians
                .insert("latency_bound_mib_s".to_owned(), bound);
            r
        };
        let delayed = [
            row("raw", 1024, 64, 1000.0, 1000.0),
            at_rtt(row("raw", 64, 64, 300.0, 0.0), 10.0, 400.0),
            at_rtt(row("frpc", 64, 64, 285.0, 0.0), 10.0, 400.0),
        ];
        let shares: Vec<_> = targets(&delayed)
            .into_iter()
            .filter(|c| c.target.contains("share"))
            .collect();
        assert_eq!(shares.len(), 2, "{shares:?}");
        assert!(shares[0].target.starts_with("raw") && (shares[0].value - 0.75).abs() < 1e-9);
        assert!(shares[1].target.starts_with("frpc") && (shares[1].value - 0.95).abs() < 1e-9);
        assert!(shares[1].at.contains("at this point") && shares[1].met);
        let lines = target_lines(&rows[..1]);
        assert!(
            lines.iter().all(|l| l.contains("not measured")),
            "{lines:?}"
        );
    }
}
