//! Link-calibration scenarios (`kind = "link-calibration"`): the emulated
//! link itself measured across RTT x rate, for every emulator the host
//! supports. `netem-calibration` is the built-in one.
//!
//! A cell is one emulator at one (RTT, rate): the link is shaped that way
//! and `harness netem check`'s measurement runs through it. The record's
//! metrics are configured and measured values side by side, named in
//! [`Metrics::other`]; the goodput of the unlimited cells is the
//! emulator's capacity on this host.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use netem::calibrate::{CalibrationPlan, CalibrationReport, TargetCheck, Verdict};
use netem::link::LinkConfig;
use results::schema::Capability;
use results::{CellRecord, CellStatus, EmulationInfo, Metrics, RunWriter};
use serde::{Deserialize, Serialize};

use crate::emulation::{self, Emulation, EmulationChoice};
use crate::network::{self, Namespaces};
use crate::runner::{new_manifest, progress_bar, run_id, utc_now, RunReport};
use crate::scenario::ScenarioError;

/// The `kind` that selects this module.
pub const KIND: &str = "link-calibration";
/// Fastest veth traffic assumed when sizing the relay for an unlimited
/// link; past it the relay's own overflow counter says so.
const ASSUMED_CAPACITY_BPS: f64 = 4e9;
/// Full-size frame on the wire (1500-byte MTU plus Ethernet header).
const FRAME_BYTES: f64 = 1514.0;

/// The axes: every combination is a cell, per emulator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Axes {
    /// Configured round-trip times, ms.
    pub rtt_ms: Vec<f64>,
    /// Configured rate per direction, Mbit/s; 0 means no limit.
    pub rate_mbit: Vec<f64>,
}

/// How long each measurement runs; phases also stretch with the RTT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanSettings {
    pub round_trips: u32,
    pub udp_probes: u32,
    pub bulk_warmup_s: f64,
    pub bulk_s: f64,
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
    emulators: Vec<String>,
    repetitions: u32,
    axes: Axes,
    plan: PlanSettings,
}

/// A link-calibration scenario with one profile applied.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LinkCalibrationScenario {
    pub name: String,
    pub kind: &'static str,
    pub description: String,
    pub figures: Vec<String>,
    pub profile: String,
    pub emulators: Vec<EmulationChoice>,
    pub repetitions: u32,
    pub axes: Axes,
    pub plan: PlanSettings,
    pub origin: String,
}

/// Parses `text` (whose `kind` is [`KIND`]) with `profile` merged over
/// its base settings.
pub fn parse(
    origin: &str,
    text: &str,
    profile: &str,
) -> Result<LinkCalibrationScenario, ScenarioError> {
    let invalid = |key: &str, message: String| ScenarioError::Invalid {
        origin: origin.to_owned(),
        key: key.to_owned(),
        message,
    };
    let file = merged_file(origin, text, profile)?;
    // A typo in another profile is reported now, not when it is first used.
    for other in ["quick", "default", "thesis"] {
        if other != profile {
            match merged_file(origin, text, other) {
                Ok(_) | Err(ScenarioError::UnknownProfile { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    let mut emulators = Vec::new();
    for name in &file.emulators {
        let choice = match name.as_str() {
            "userspace-link" => EmulationChoice::UserspaceLink,
            "kernel-netem" => EmulationChoice::KernelNetem,
            other => {
                return Err(invalid(
                    "emulators",
                    format!("`{other}` is not a packet-level emulator; allowed: userspace-link, kernel-netem"),
                ))
            }
        };
        if !emulators.contains(&choice) {
            emulators.push(choice);
        }
    }
    if emulators.is_empty() {
        return Err(invalid("emulators", "must name at least one".into()));
    }
    if !(1..=100).contains(&file.repetitions) {
        return Err(invalid(
            "repetitions",
            format!("{} is not in 1..=100", file.repetitions),
        ));
    }
    if file.axes.rtt_ms.is_empty() || file.axes.rate_mbit.is_empty() {
        return Err(invalid(
            "axes",
            "rtt_ms and rate_mbit must list at least one value each".into(),
        ));
    }
    for &rtt in &file.axes.rtt_ms {
        if !(0.0..=2000.0).contains(&rtt) {
            return Err(invalid(
                "axes.rtt_ms",
                format!("{rtt} is not in 0..=2000 ms"),
            ));
        }
    }
    for &rate in &file.axes.rate_mbit {
        if !(rate == 0.0 || (0.1..=100_000.0).contains(&rate)) {
            return Err(invalid(
                "axes.rate_mbit",
                format!("{rate} is neither 0 (no limit) nor in 0.1..=100000 Mbit/s"),
            ));
        }
    }
    let plan = &file.plan;
    if !(10..=100_000).contains(&plan.round_trips) {
        return Err(invalid(
            "plan.round_trips",
            format!("{} is not in 10..=100000", plan.round_trips),
        ));
    }
    if !(10..=1_000_000).contains(&plan.udp_probes) {
        return Err(invalid(
            "plan.udp_probes",
            format!("{} is not in 10..=1000000", plan.udp_probes),
        ));
    }
    for (key, value) in [
        ("plan.bulk_warmup_s", plan.bulk_warmup_s),
        ("plan.bulk_s", plan.bulk_s),
    ] {
        if !(0.05..=600.0).contains(&value) {
            return Err(invalid(key, format!("{value} is not in 0.05..=600 s")));
        }
    }
    Ok(LinkCalibrationScenario {
        name: file.name,
        kind: KIND,
        description: file.description,
        figures: file.figures,
        profile: profile.to_owned(),
        emulators,
        repetitions: file.repetitions,
        axes: file.axes,
        plan: file.plan,
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

/// One point of the axes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub rtt_ms: f64,
    /// `None`: no rate limit.
    pub rate_mbit: Option<f64>,
}

impl LinkCalibrationScenario {
    /// Every (RTT, rate), RTT-major.
    pub fn points(&self) -> Vec<Point> {
        let mut points = Vec::new();
        for &rtt_ms in &self.axes.rtt_ms {
            for &rate in &self.axes.rate_mbit {
                points.push(Point {
                    rtt_ms,
                    rate_mbit: (rate > 0.0).then_some(rate),
                });
            }
        }
        points
    }

    /// The measurement for `point`: the configured lengths, stretched so
    /// slow start is over before goodput counts and enough round trips
    /// fit on a long link.
    pub fn plan_for(&self, point: Point) -> CalibrationPlan {
        let rtt = Duration::from_secs_f64(point.rtt_ms / 1e3);
        let at_least = |secs: f64, rtts: u32| Duration::from_secs_f64(secs).max(rtt * rtts);
        CalibrationPlan {
            round_trips: self.plan.round_trips,
            udp_probes: self.plan.udp_probes,
            idle_max: at_least(1.0, 25),
            // Slow start overshoots into the queue and recovers over several
            // RTTs; a window of only a few RTTs then counts the payload a
            // retransmission releases from the receiver's buffer all at
            // once, and goodput reads above the rate.
            bulk_warmup: at_least(self.plan.bulk_warmup_s, 20),
            bulk_duration: at_least(self.plan.bulk_s, 20),
            loaded_duration: at_least(self.plan.bulk_s, 10),
            io_timeout: at_least(5.0, 4),
            ..CalibrationPlan::default()
        }
    }
}

/// The link for `point`: RTT/2 each way, the rate both ways, and a relay
/// allowed to hold what that rate keeps in flight (so the emulator's own
/// cap is not what a long fat link measures).
pub fn link_for(point: Point) -> LinkConfig {
    let rtt = Duration::from_secs_f64(point.rtt_ms / 1e3);
    let rate_bps = point.rate_mbit.map(|m| (m * 1e6) as u64);
    let mut config = network::symmetric_link(rtt, Duration::ZERO, rate_bps, 0.0);
    let rate = rate_bps.map_or(ASSUMED_CAPACITY_BPS, |r| r as f64);
    let queue_frames = config.a_to_b.queue_limit_bytes as f64 / FRAME_BYTES;
    let in_flight = rate / 8.0 * (rtt / 2).as_secs_f64() / FRAME_BYTES;
    let needed = (1.25 * (in_flight + queue_frames)).ceil() as usize;
    config.max_in_flight_packets = needed.clamp(config.max_in_flight_packets, 1 << 20);
    config
}

/// Runs `scenario`, writing into a new directory below `out`.
pub fn run(
    scenario: &LinkCalibrationScenario,
    capabilities: Vec<Capability>,
    out: &Path,
) -> anyhow::Result<RunReport> {
    let points = scenario.points();
    let total = scenario.emulators.len() * points.len() * scenario.repetitions as usize;
    let run_id = run_id(&scenario.name);
    let dir = out.join(&run_id);
    // Which emulators run, and why the others cannot.
    let resolved: Vec<(EmulationChoice, Result<Emulation, String>)> = scenario
        .emulators
        .iter()
        .map(|&choice| (choice, emulation::resolve(choice, &capabilities)))
        .collect();
    let running: Vec<Emulation> = resolved
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok().copied())
        .collect();
    let manifest = new_manifest(
        run_id,
        (&scenario.name, &scenario.profile),
        serde_json::to_value(scenario).context("encoding the scenario")?,
        EmulationInfo {
            mode: if running.is_empty() {
                "none".to_owned()
            } else {
                running
                    .iter()
                    .map(|e| e.name())
                    .collect::<Vec<_>>()
                    .join(",")
            },
            emulator: running
                .iter()
                .map(|e| format!("{}: {}", e.name(), e.emulator()))
                .collect::<Vec<_>>()
                .join("; "),
            accuracy: None,
            calibration: vec![],
        },
        capabilities,
        total,
    );
    let mut warnings = manifest.warnings.clone();
    let mut writer = RunWriter::create(&dir, manifest)
        .with_context(|| format!("creating the run directory under {}", out.display()))?;

    let progress = progress_bar(total);
    let mut interrupted = false;
    'emulators: for (choice, resolved) in &resolved {
        let emulation = match resolved {
            Ok(e) => *e,
            Err(reason) => {
                for point in &points {
                    for repetition in 0..scenario.repetitions {
                        let mut record = new_record(scenario, choice.name(), *point, repetition);
                        record.status = CellStatus::Skipped;
                        record.reason = Some(reason.clone());
                        writer.append(record).context("recording a cell")?;
                        progress.inc(1);
                    }
                }
                continue;
            }
        };
        let Some(layout) = emulation.layout() else {
            continue;
        };
        // One topology per emulator, for all its cells; removed on drop.
        let net = Namespaces::create(layout).map_err(anyhow::Error::msg)?;
        for &point in &points {
            for repetition in 0..scenario.repetitions {
                if crate::interrupt::requested() {
                    interrupted = true;
                    break 'emulators;
                }
                progress.set_message(format!(
                    "{emulation} rtt {} ms, rate {}",
                    point.rtt_ms,
                    rate_text(point.rate_mbit)
                ));
                let started_at = utc_now();
                let start = Instant::now();
                let mut record = new_record(scenario, emulation.name(), point, repetition);
                record.started_at = started_at;
                match crate::calibration::calibrate(
                    &net,
                    &link_for(point),
                    &scenario.plan_for(point),
                ) {
                    Ok((report, checks)) => {
                        record.metrics = metrics(&report, &checks, point);
                        writer
                            .manifest_mut()
                            .emulation
                            .calibration
                            .push(serde_json::json!({
                                "emulator": emulation.name(),
                                "rtt_ms": point.rtt_ms,
                                "rate_mbit": point.rate_mbit.unwrap_or(0.0),
                                "checks": checks,
                                "report": report,
                            }));
                    }
                    Err(e) => {
                        record.status = CellStatus::Failed;
                        record.reason = Some(e);
                    }
                }
                record.wall_ms = start.elapsed().as_secs_f64() * 1e3;
                tracing::info!(cell = %record.cell_id, status = ?record.status, "cell done");
                writer.append(record).context("recording a cell")?;
                progress.inc(1);
            }
        }
    }
    progress.finish_and_clear();
    if interrupted {
        warnings.push(format!(
            "interrupted by Ctrl-C after {} of {total} cell repetitions",
            writer.records().len()
        ));
    }
    writer.manifest_mut().warnings = warnings.clone();
    let rows = results::summarize(writer.records());
    let dir = writer
        .finish(utc_now())
        .context("finishing the run directory")?;
    Ok(RunReport {
        dir,
        rows,
        interrupted,
        warnings,
    })
}

fn rate_text(rate_mbit: Option<f64>) -> String {
    rate_mbit.map_or("unlimited".to_owned(), |r| format!("{r} Mbit/s"))
}

fn new_record(
    scenario: &LinkCalibrationScenario,
    emulator: &str,
    point: Point,
    repetition: u32,
) -> CellRecord {
    let rate = point.rate_mbit.unwrap_or(0.0);
    CellRecord {
        cell_id: format!(
            "{}/{emulator}/rate_mbit={rate},rtt_ms={}",
            scenario.name, point.rtt_ms
        ),
        scenario: scenario.name.clone(),
        implementation: emulator.to_owned(),
        transport: None,
        device: None,
        emulation: emulator.to_owned(),
        params: BTreeMap::from([
            ("rtt_ms".to_owned(), serde_json::json!(point.rtt_ms)),
            ("rate_mbit".to_owned(), serde_json::json!(rate)),
        ]),
        repetition,
        status: CellStatus::Ok,
        reason: None,
        started_at: utc_now(),
        wall_ms: 0.0,
        metrics: Metrics::default(),
        histograms: BTreeMap::new(),
        placement: BTreeMap::new(),
        source_sha256: None,
        destination_sha256: None,
    }
}

/// Configured and measured, side by side, in the units figures use.
fn metrics(report: &CalibrationReport, checks: &[TargetCheck], point: Point) -> Metrics {
    let ms = |ns: u64| ns as f64 / 1e6;
    let mut other = BTreeMap::from([
        ("rtt_configured_ms".to_owned(), point.rtt_ms),
        ("rtt_p50_ms".to_owned(), ms(report.idle_rtt.p50_ns)),
        ("rtt_p99_ms".to_owned(), ms(report.idle_rtt.p99_ns)),
        ("udp_rtt_p50_ms".to_owned(), ms(report.udp_rtt.p50_ns)),
        ("udp_rtt_p99_ms".to_owned(), ms(report.udp_rtt.p99_ns)),
        ("loaded_rtt_p50_ms".to_owned(), ms(report.loaded_rtt.p50_ns)),
        ("loaded_rtt_p99_ms".to_owned(), ms(report.loaded_rtt.p99_ns)),
        ("goodput_mbit_s".to_owned(), report.bulk_goodput_bps / 1e6),
        ("udp_loss_pct".to_owned(), report.udp_loss.observed * 100.0),
    ]);
    let count = |v: Verdict| checks.iter().filter(|c| c.verdict == v).count() as f64;
    other.insert("targets_met".to_owned(), count(Verdict::Met));
    other.insert("targets_missed".to_owned(), count(Verdict::Missed));
    match report.bulk.payload_ceiling_bps {
        Some(ceiling) => {
            other.insert("goodput_ceiling_mbit_s".to_owned(), ceiling / 1e6);
        }
        // Unlimited: what the bulk flow reached is the emulator's capacity.
        None => {
            other.insert("capacity_mbit_s".to_owned(), report.bulk_goodput_bps / 1e6);
        }
    }
    if let Some(relay) = &report.relay {
        other.insert("frame_rate_mbit_s".to_owned(), relay.bulk_frame_bps / 1e6);
        other.insert(
            "departure_error_p50_us".to_owned(),
            relay.departure_error_a_to_b_ns.p50_ns as f64 / 1e3,
        );
        other.insert(
            "departure_error_p99_us".to_owned(),
            relay.departure_error_a_to_b_ns.p99_ns as f64 / 1e3,
        );
        other.insert("emulator_drops".to_owned(), relay.emulator_drops() as f64);
    }
    Metrics {
        transferred_bytes: report.relay.as_ref().map(|r| r.transferred_bytes),
        other,
        ..Metrics::default()
    }
}

/// One line per emulator whose cells were all skipped, with the reason.
pub fn skipped_lines(rows: &[results::SummaryRow]) -> Vec<String> {
    let mut skipped: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.skipped == r.repetitions) {
        let entry = skipped
            .entry(&r.implementation)
            .or_insert((0, r.reason.as_deref().unwrap_or("")));
        entry.0 += 1;
    }
    skipped
        .into_iter()
        .map(|(emulator, (cells, reason))| format!("{emulator}: {cells} cells skipped: {reason}"))
        .collect()
}

/// The emulator's capacity on this host, per emulator: the best goodput
/// of its unlimited cells.
pub fn capacity_lines(rows: &[results::SummaryRow]) -> Vec<String> {
    let mut best: BTreeMap<&str, (f64, String)> = BTreeMap::new();
    for r in rows {
        if let Some(&capacity) = r.other_medians.get("capacity_mbit_s") {
            let rtt = r
                .params
                .get("rtt_ms")
                .map(results::summary::param_text)
                .unwrap_or_default();
            let entry = best
                .entry(&r.implementation)
                .or_insert((capacity, rtt.clone()));
            if capacity > entry.0 {
                *entry = (capacity, rtt);
            }
        }
    }
    best.into_iter()
        .map(|(emulator, (capacity, rtt))| {
            format!(
                "{emulator} capacity: {capacity:.0} Mbit/s of TCP goodput (unlimited link, best at RTT {rtt} ms)"
            )
        })
        .collect()
}

/// One row per cell: configured against measured, and the targets missed.
pub fn table(rows: &[results::SummaryRow]) -> comfy_table::Table {
    use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header([
        "emulator",
        "RTT ms",
        "rate Mbit/s",
        "RTT p50 ms",
        "RTT p99 ms",
        "loaded p50 ms",
        "goodput Mbit/s",
        "targets missed",
    ]);
    for r in rows.iter().filter(|r| r.skipped < r.repetitions) {
        let param = |k: &str| {
            r.params
                .get(k)
                .map(results::summary::param_text)
                .unwrap_or_default()
        };
        let m = |k: &str| r.other_medians.get(k).copied();
        let fmt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
        let rate = param("rate_mbit");
        let mut line = vec![
            r.implementation.clone(),
            param("rtt_ms"),
            if rate == "0" || rate == "0.0" {
                "unlimited".to_owned()
            } else {
                rate
            },
        ];
        if r.ok + r.truncated == 0 {
            line.push(format!("failed: {}", r.reason.clone().unwrap_or_default()));
        } else {
            line.extend([
                fmt(m("rtt_p50_ms")),
                fmt(m("rtt_p99_ms")),
                fmt(m("loaded_rtt_p50_ms")),
                fmt(m("goodput_mbit_s")),
                fmt(m("targets_missed")),
            ]);
        }
        t.add_row(line);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = include_str!("../../scenarios/netem-calibration.toml");

    #[test]
    fn built_in_file_parses_in_every_profile() {
        for profile in ["quick", "default", "thesis"] {
            let s = parse("test", TEXT, profile).unwrap();
            assert_eq!(s.profile, profile);
            assert!(!s.points().is_empty());
        }
        let quick = parse("test", TEXT, "quick").unwrap();
        assert_eq!(quick.axes.rtt_ms, [1.0, 20.0]);
        assert_eq!(quick.plan.round_trips, 100);
        // Untouched by the profile: the base value.
        assert_eq!(quick.repetitions, 1);
        assert_eq!(quick.points().len(), 4);
        assert_eq!(quick.points()[0].rate_mbit, None);
    }

    #[test]
    fn bad_values_are_named_with_what_is_allowed() {
        let cases = [
            ("emulators = [\"inproc\"]", "emulators", "userspace-link"),
            ("repetitions = 0", "repetitions", "1..=100"),
            ("axes.rate_mbit = [-5]", "axes.rate_mbit", "0 (no limit)"),
            ("axes.rtt_ms = [5000]", "axes.rtt_ms", "0..=2000"),
            ("plan.bulk_s = 0", "plan.bulk_s", "0.05..=600"),
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
        // In a profile other than the one asked for, too.
        let err = parse(
            "t.toml",
            &format!("{TEXT}\nplan.bulk_seconds = 1\n"),
            "default",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("bulk_seconds") && err.contains("thesis"),
            "{err}"
        );
    }

    #[test]
    fn plans_stretch_with_the_rtt() {
        let s = parse("test", TEXT, "default").unwrap();
        let short = s.plan_for(Point {
            rtt_ms: 1.0,
            rate_mbit: None,
        });
        assert_eq!(short.bulk_warmup, Duration::from_millis(500));
        assert_eq!(short.bulk_duration, Duration::from_millis(1500));
        let long = s.plan_for(Point {
            rtt_ms: 400.0,
            rate_mbit: None,
        });
        assert_eq!(long.bulk_warmup, Duration::from_secs(8));
        assert_eq!(long.bulk_duration, Duration::from_secs(8));
        assert_eq!(long.idle_max, Duration::from_secs(10));
        long.validate().unwrap();
    }

    #[test]
    fn the_relay_may_hold_what_a_long_fat_link_keeps_in_flight() {
        let slow = link_for(Point {
            rtt_ms: 1.0,
            rate_mbit: Some(10.0),
        });
        assert_eq!(slow.max_in_flight_packets, 32 * 1024, "the default floor");
        let long_fat = link_for(Point {
            rtt_ms: 400.0,
            rate_mbit: Some(10_000.0),
        });
        // 200 ms one way at 10 Gbit/s: 165,000 full frames, plus the queue.
        assert!(long_fat.max_in_flight_packets > 165_000);
        assert_eq!(long_fat.a_to_b.delay, Duration::from_millis(200));
        assert_eq!(long_fat.a_to_b.rate_bps, Some(10_000_000_000));
        long_fat.validate().unwrap();
    }
}
