//! Downtime scenarios (`kind = "downtime"`): live migration of a region
//! whose application keeps writing, by four strategies over the same
//! application, link and transport (thesis 3.6, 4.6; figures: setup time,
//! downtime one-step vs two-step):
//!
//! - `two-step`: the thesis's migration (crate `migration`): pull while the
//!   source runs, finalize (suspend, flush, the dirty set), resume on the
//!   mount at once and pull the dirty chunks first.
//! - `stop-and-copy`: suspend, copy every chunk, resume.
//! - `precopy-iterative`: QEMU-style rounds of `Dirty` while the source
//!   runs, until the rest would move within `downtime_target_ms` at the
//!   last round's rate or `max_rounds` ran; then suspend and copy the rest.
//! - `postcopy`: suspend at once, resume on a userfaultfd region whose
//!   faults are served from the source first while `pull_workers` threads
//!   pull every chunk in the background.
//!
//! Every strategy is driven from the destination over the transports'
//! seeder service, against one source: the application on a seeder's mount
//! (so the source's memory, and what its writes cost, are the same for
//! all). The application ([`app`]) dirties pages at `dirty_rate` per
//! second and checks what it reads; it carries its state in page 0, so it
//! resumes on the destination from what migrated, and the destination's
//! final bytes are compared with the source's image with every op applied.
//!
//! Cells need the packet-level emulation (root: namespaces and mounts); in
//! `inproc` they are recorded as skipped.
//!
//! Not here yet: a dirty-rate-settled finalize policy, and faults during
//! the migration.

pub mod app;
mod migrate;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use results::schema::Capability;
use results::{CellRecord, CellStatus, SummaryRow};
use serde::{Deserialize, Serialize};
use transports::TransportKind;

use crate::emulation::Emulation;
use crate::runner::{new_cell_record, open_run, progress_bar, utc_now, OpenedRun, RunReport};
use crate::scenario::ScenarioError;
use crate::source::SourceCache;
use app::{AppSpec, DirtyPattern, PAGE};
use migrate::{run_cell, CellPlan};

/// The `kind` that selects this module.
pub const KIND: &str = "downtime";
const NEEDS_PACKETS: &str =
    "downtime cells need the packet-level emulation (root: namespaces and mounts)";
/// How long the source role may take to come up (it mounts and fills the region).
const ROLE_READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a stopping source may take to report.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// A migration strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    TwoStep,
    StopAndCopy,
    PrecopyIterative,
    Postcopy,
}

impl Strategy {
    const ALL: [Strategy; 4] = [
        Self::TwoStep,
        Self::StopAndCopy,
        Self::PrecopyIterative,
        Self::Postcopy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::TwoStep => "two-step",
            Self::StopAndCopy => "stop-and-copy",
            Self::PrecopyIterative => "precopy-iterative",
            Self::Postcopy => "postcopy",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// One point: the swept axes. Also the `[base]` table.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Point {
    pub rtt_ms: f64,
    pub region_mib: u64,
    /// Pages the application writes per second.
    pub dirty_rate: u64,
}

/// One `[sweeps.NAME]` table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sweep {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region_mib: Option<Vec<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dirty_rate: Option<Vec<u64>>,
}

/// A downtime scenario with one profile applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DowntimeScenario {
    pub name: String,
    pub kind: String,
    pub description: String,
    #[serde(default)]
    pub figures: Vec<String>,
    #[serde(default)]
    pub profile: String,
    pub strategies: Vec<String>,
    pub transports: Vec<String>,
    pub repetitions: u32,
    #[serde(default)]
    pub seed: u64,
    pub chunk_kib: u64,
    pub pull_workers: usize,
    pub pattern: DirtyPattern,
    pub warm_ms: u64,
    pub tail_ms: u64,
    pub finalize_after_local: f64,
    /// QEMU's `downtime-limit` (300 ms by default there).
    pub downtime_target_ms: u64,
    pub max_rounds: u32,
    pub base: Point,
    #[serde(default)]
    pub sweeps: BTreeMap<String, Sweep>,
}

/// Parses `text` (whose `kind` is [`KIND`]) with `profile` merged over it.
pub fn parse(origin: &str, text: &str, profile: &str) -> Result<DowntimeScenario, ScenarioError> {
    let parsed = |profile: &str| -> Result<DowntimeScenario, ScenarioError> {
        let merged = crate::scenario::merge_profile(origin, text, profile)?;
        let mut s: DowntimeScenario =
            merged
                .try_into()
                .map_err(|e: toml::de::Error| ScenarioError::Parse {
                    origin: format!("{origin} (profile {profile})"),
                    message: e.to_string(),
                })?;
        s.profile = profile.to_owned();
        s.validate()
            .map_err(|(key, message)| ScenarioError::Invalid {
                origin: format!("{origin} (profile {profile})"),
                key,
                message,
            })?;
        Ok(s)
    };
    // A mistake in another profile is reported now, not when it is used.
    for other in ["quick", "default", "thesis"] {
        if other != profile {
            match parsed(other) {
                Ok(_) | Err(ScenarioError::UnknownProfile { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    parsed(profile)
}

impl DowntimeScenario {
    fn validate(&self) -> Result<(), (String, String)> {
        let err = |key: &str, message: String| Err((key.to_owned(), message));
        for s in &self.strategies {
            if Strategy::parse(s).is_none() {
                let allowed: Vec<_> = Strategy::ALL.iter().map(|s| s.name()).collect();
                return err(
                    "strategies",
                    format!("`{s}` is not a strategy; allowed: {}", allowed.join(", ")),
                );
            }
        }
        if self.strategies.is_empty() {
            return err("strategies", "at least one strategy".into());
        }
        for t in &self.transports {
            match t.parse::<TransportKind>() {
                Ok(TransportKind::Raw) => {
                    return err(
                        "transports",
                        "`raw` carries no seeder service; allowed: jsonl, grpc, frpc, tarpc".into(),
                    )
                }
                Ok(_) => {}
                Err(e) => return err("transports", e.to_string()),
            }
        }
        if self.transports.is_empty() {
            return err("transports", "at least one transport".into());
        }
        if self.repetitions == 0 {
            return err("repetitions", "at least 1".into());
        }
        if !self.chunk_kib.is_power_of_two() || self.chunk_kib < 4 {
            return err(
                "chunk_kib",
                format!("{} is not a power of two of at least 4", self.chunk_kib),
            );
        }
        if self.pull_workers == 0 {
            return err("pull_workers", "at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.finalize_after_local) {
            return err(
                "finalize_after_local",
                format!(
                    "{} is not a fraction from 0 to 1",
                    self.finalize_after_local
                ),
            );
        }
        for p in self.points() {
            if !(0.0..=10_000.0).contains(&p.rtt_ms) {
                return err("rtt_ms", format!("{} is not in 0..=10000", p.rtt_ms));
            }
            if p.region_mib == 0
                || p.region_mib > 16 << 10
                || (p.region_mib << 10) % self.chunk_kib != 0
            {
                return err(
                    "region_mib",
                    format!(
                        "{} is not in 1..=16384 and a whole number of {} KiB chunks",
                        p.region_mib, self.chunk_kib
                    ),
                );
            }
        }
        Ok(())
    }

    /// Every point: `base` with each sweep's axes varied, each point once.
    pub fn points(&self) -> Vec<Point> {
        let mut points = vec![self.base];
        for sweep in self.sweeps.values() {
            let rtts = sweep
                .rtt_ms
                .clone()
                .unwrap_or_else(|| vec![self.base.rtt_ms]);
            let sizes = sweep
                .region_mib
                .clone()
                .unwrap_or_else(|| vec![self.base.region_mib]);
            let rates = sweep
                .dirty_rate
                .clone()
                .unwrap_or_else(|| vec![self.base.dirty_rate]);
            for &rtt_ms in &rtts {
                for &region_mib in &sizes {
                    for &dirty_rate in &rates {
                        let p = Point {
                            rtt_ms,
                            region_mib,
                            dirty_rate,
                        };
                        if !points.contains(&p) {
                            points.push(p);
                        }
                    }
                }
            }
        }
        points
    }

    fn strategies(&self) -> Vec<Strategy> {
        self.strategies
            .iter()
            .filter_map(|s| Strategy::parse(s))
            .collect()
    }

    fn transports(&self) -> Vec<TransportKind> {
        self.transports
            .iter()
            .filter_map(|t| t.parse().ok())
            .collect()
    }

    fn plan(&self, strategy: Strategy, transport: TransportKind, point: &Point) -> CellPlan {
        let size = point.region_mib << 20;
        CellPlan {
            strategy,
            transport,
            rtt: Duration::from_secs_f64(point.rtt_ms / 1e3),
            chunk_bytes: self.chunk_kib << 10,
            pull_workers: self.pull_workers,
            app: AppSpec {
                seed: self.seed,
                pages: size / PAGE as u64,
                dirty_rate: point.dirty_rate,
                pattern: self.pattern,
            },
            warm: Duration::from_millis(self.warm_ms),
            tail: Duration::from_millis(self.tail_ms),
            finalize_after_local: self.finalize_after_local,
            downtime_target: Duration::from_millis(self.downtime_target_ms),
            max_rounds: self.max_rounds,
        }
    }
}

/// Runs `scenario` under `emulation`, writing into a new directory below `out`.
pub fn run(
    scenario: &DowntimeScenario,
    emulation: Emulation,
    capabilities: Vec<Capability>,
    out: &Path,
) -> anyhow::Result<RunReport> {
    let points = scenario.points();
    let strategies = scenario.strategies();
    let transports = scenario.transports();
    let total = points.len() * strategies.len() * transports.len() * scenario.repetitions as usize;
    let OpenedRun {
        mut writer,
        mut warnings,
        network,
    } = open_run(
        (&scenario.name, &scenario.profile),
        serde_json::to_value(scenario).context("encoding the scenario")?,
        emulation,
        capabilities,
        total,
        out,
    )?;
    let runtime = crate::runner::cell_runtime(network.as_ref())?;
    let mut sources = SourceCache::new(scenario.seed);
    let progress = progress_bar(total);
    let mut interrupted = false;
    'cells: for point in &points {
        for &transport in &transports {
            for repetition in 0..scenario.repetitions {
                for &strategy in &strategies {
                    if crate::interrupt::requested() {
                        interrupted = true;
                        break 'cells;
                    }
                    progress.set_message(format!(
                        "{} over {transport}: {} MiB, rtt {} ms, {} pages/s",
                        strategy.name(),
                        point.region_mib,
                        point.rtt_ms,
                        point.dirty_rate
                    ));
                    let mut record =
                        new_record(scenario, emulation, strategy, transport, point, repetition);
                    let start = Instant::now();
                    match &network {
                        None => {
                            record.status = CellStatus::Skipped;
                            record.reason = Some(NEEDS_PACKETS.into());
                        }
                        Some(net) => {
                            let image = sources.pattern(point.region_mib << 20);
                            record.source_sha256 = Some(image.sha256.clone());
                            let plan = scenario.plan(strategy, transport, point);
                            match run_cell(&plan, net, &runtime, &image) {
                                Ok(result) => fill(&mut record, &result, point),
                                Err(reason) => {
                                    record.status = CellStatus::Failed;
                                    record.reason = Some(reason);
                                }
                            }
                        }
                    }
                    record.wall_ms = start.elapsed().as_secs_f64() * 1e3;
                    tracing::info!(cell = %record.cell_id, status = ?record.status, reason = ?record.reason, "cell done");
                    writer.append(record).context("recording a cell")?;
                    progress.inc(1);
                }
            }
        }
    }
    progress.finish_and_clear();
    runtime.shutdown_timeout(Duration::from_secs(5));
    drop(network);
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

fn new_record(
    scenario: &DowntimeScenario,
    emulation: Emulation,
    strategy: Strategy,
    transport: TransportKind,
    point: &Point,
    repetition: u32,
) -> CellRecord {
    let params = BTreeMap::from([
        ("transport".to_owned(), serde_json::json!(transport.name())),
        ("rtt_ms".to_owned(), serde_json::json!(point.rtt_ms)),
        ("region_mib".to_owned(), serde_json::json!(point.region_mib)),
        ("dirty_rate".to_owned(), serde_json::json!(point.dirty_rate)),
        (
            "chunk_kib".to_owned(),
            serde_json::json!(scenario.chunk_kib),
        ),
        (
            "pattern".to_owned(),
            serde_json::json!(scenario.pattern.name()),
        ),
    ]);
    let id: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", results::summary::param_text(v)))
        .collect();
    let mut record = new_cell_record(
        format!("{}/{}/{}", scenario.name, strategy.name(), id.join(",")),
        &scenario.name,
        strategy.name(),
        emulation.name(),
        params,
        repetition,
    );
    record.transport = Some(transport.name().to_owned());
    record
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn fill(record: &mut CellRecord, r: &migrate::CellResult, point: &Point) {
    let m = &mut record.metrics;
    m.setup_ms = Some(ms(r.setup));
    m.total_ms = Some(ms(r.total));
    m.transferred_bytes = r.transferred_bytes;
    m.transfer_amplification = r
        .transferred_bytes
        .map(|b| b as f64 / (point.region_mib << 20) as f64);
    m.integrity = Some(r.integrity_failure.is_none());
    m.cpu_s = Some(r.source.cpu_s);
    let other = &mut m.other;
    other.insert("downtime_ms".into(), ms(r.downtime));
    if let Some(flush) = r.source.sync_flush_ms {
        other.insert("sync_flush_ms".into(), flush);
    }
    other.insert("app_stall_max_ms".into(), ms(r.app_stall_max));
    other.insert("dirty_sync_count".into(), r.dirty_sync_count as f64);
    other.insert("precopy_rounds".into(), r.rounds as f64);
    other.insert("app_ops".into(), r.destination.ops as f64);
    other.insert(
        "app_checks".into(),
        (r.source.app.checks + r.destination.checks) as f64,
    );
    if let Some(why) = &r.integrity_failure {
        record.status = CellStatus::Failed;
        record.reason = Some(format!("integrity: {why}"));
    }
}

/// The downtime table: strategy by region size, medians, at every RTT,
/// dirty rate and transport of the run.
pub fn table(rows: &[SummaryRow]) -> String {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_BORDERS_ONLY);
    t.set_header([
        "strategy",
        "transport",
        "rtt ms",
        "MiB",
        "pages/s",
        "setup ms",
        "downtime ms",
        "flush ms",
        "total ms",
        "ampl.",
        "dirty",
        "stall ms",
        "ok",
    ]);
    let num = |v: Option<f64>, digits: usize| {
        v.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
    };
    for r in rows {
        let p = |k: &str| {
            r.params
                .get(k)
                .map(results::summary::param_text)
                .unwrap_or_default()
        };
        let o = |k: &str| r.other_medians.get(k).copied();
        let md = |k: &str| r.medians.get(k).copied();
        t.add_row([
            r.implementation.clone(),
            r.transport.clone().unwrap_or_default(),
            p("rtt_ms"),
            p("region_mib"),
            p("dirty_rate"),
            num(md("setup_ms"), 1),
            num(o("downtime_ms"), 1),
            num(o("sync_flush_ms"), 1),
            num(md("total_ms"), 0),
            num(md("transfer_amplification"), 2),
            num(o("dirty_sync_count"), 0),
            num(o("app_stall_max_ms"), 1),
            format!("{}/{}", r.ok, r.repetitions),
        ]);
    }
    t.to_string()
}

/// A point's other axes, as text: (transport, RTT, dirty rate or size).
type Group = (String, String, String);
/// Per strategy: (region MiB, downtime ms) at each size.
type BySize = BTreeMap<String, Vec<(f64, f64)>>;

/// The smallest and the largest region of `points` (size, value).
fn size_ends(points: &[(f64, f64)]) -> Option<((f64, f64), (f64, f64))> {
    let smallest = points.iter().copied().min_by(|a, b| a.0.total_cmp(&b.0))?;
    let largest = points.iter().copied().max_by(|a, b| a.0.total_cmp(&b.0))?;
    (largest.0 > smallest.0).then_some((smallest, largest))
}

/// The targets, checked on the medians of a run: two-step downtime
/// flat across region size while stop-and-copy grows, and two-step moving
/// fewer bytes than pre-copy at every dirty rate.
pub fn target_lines(rows: &[SummaryRow]) -> Vec<String> {
    let value = |r: &SummaryRow, k: &str| {
        r.other_medians
            .get(k)
            .copied()
            .or_else(|| r.medians.get(k).copied())
    };
    let param = |r: &SummaryRow, k: &str| r.params.get(k).and_then(|v| v.as_f64());
    let mut by_size: BTreeMap<Group, BySize> = BTreeMap::new();
    let mut by_rate: BTreeMap<Group, BTreeMap<String, f64>> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.ok > 0) {
        let (Some(rtt), Some(size), Some(rate)) = (
            param(r, "rtt_ms"),
            param(r, "region_mib"),
            param(r, "dirty_rate"),
        ) else {
            continue;
        };
        let transport = r.transport.clone().unwrap_or_default();
        if let Some(d) = value(r, "downtime_ms") {
            by_size
                .entry((transport.clone(), rtt.to_string(), rate.to_string()))
                .or_default()
                .entry(r.implementation.clone())
                .or_default()
                .push((size, d));
        }
        if let Some(a) = value(r, "transfer_amplification") {
            by_rate
                .entry((
                    transport,
                    rtt.to_string(),
                    format!("{size} MiB, {rate} pages/s"),
                ))
                .or_default()
                .insert(r.implementation.clone(), a);
        }
    }
    let mut lines = Vec::new();
    // Two-step: the downtime beyond one round trip and the source's flush.
    for r in rows
        .iter()
        .filter(|r| r.ok > 0 && r.implementation == "two-step")
    {
        let (Some(downtime), Some(flush), Some(rtt), Some(size)) = (
            value(r, "downtime_ms"),
            value(r, "sync_flush_ms"),
            param(r, "rtt_ms"),
            param(r, "region_mib"),
        ) else {
            continue;
        };
        let beyond = downtime - rtt - flush;
        let verdict = if beyond <= 2.0 { "met" } else { "MISSED" };
        lines.push(format!(
            "target {verdict}: two-step downtime {downtime:.1} ms <= RTT {rtt} + flush {flush:.1} + 2 ms (beyond: {beyond:.1} ms; {size} MiB, {} pages/s)",
            param(r, "dirty_rate").unwrap_or(0.0)
        ));
    }
    for ((transport, rtt, rate), strategies) in &by_size {
        let ends = |s: &str| strategies.get(s).and_then(|v| size_ends(v));
        if let (Some((two_lo, two_hi)), Some((sc_lo, sc_hi))) =
            (ends("two-step"), ends("stop-and-copy"))
        {
            lines.push(format!(
                "{transport}, rtt {rtt} ms, {rate} pages/s: two-step downtime {:.1} ms at {} MiB -> {:.1} ms at {} MiB (x{:.2}); stop-and-copy {:.1} -> {:.1} ms (x{:.2})",
                two_lo.1,
                two_lo.0,
                two_hi.1,
                two_hi.0,
                two_hi.1 / two_lo.1.max(1e-9),
                sc_lo.1,
                sc_hi.1,
                sc_hi.1 / sc_lo.1.max(1e-9),
            ));
        }
    }
    for ((transport, rtt, at), strategies) in &by_rate {
        if let (Some(two), Some(pre)) = (
            strategies.get("two-step"),
            strategies.get("precopy-iterative"),
        ) {
            let verdict = if two < pre { "met" } else { "MISSED" };
            lines.push(format!(
                "target {verdict}: transfer amplification two-step {two:.3} < precopy-iterative {pre:.3} ({transport}, rtt {rtt} ms, {at})"
            ));
        }
    }
    lines
}
