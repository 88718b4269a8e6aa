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
//! `kernel-netem`) the server is a `transport-server` role process in the
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
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use results::schema::Capability;
use results::{CellRecord, CellStatus, EmulationInfo, LatencyHistogram, Metrics, RunWriter};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use transports::{ServeStats, Services, TransportKind};

use crate::emulation::Emulation;
use crate::link_calibration::{self, Point as LinkPoint};
use crate::network::Namespaces;
use crate::roles::child::RoleProcess;
use crate::roles::protocol::RoleEvent;
use crate::roles::transport_server::transport_config;
use crate::runner::{new_manifest, progress_bar, run_id, utc_now, RunReport};
use crate::scenario::ScenarioError;
use crate::source::{SourceCache, SourceImage};

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

/// Runs `scenario` under `emulation`, writing into a new directory below `out`.
pub fn run(
    scenario: &TransportSweepScenario,
    emulation: Emulation,
    capabilities: Vec<Capability>,
    out: &Path,
) -> anyhow::Result<RunReport> {
    if emulation == Emulation::PerCall {
        anyhow::bail!(
            "--emulation per-call does not apply to {}: it delays inside the backend, not on \
             the wire the transports are compared on; use inproc, userspace-link or kernel-netem",
            scenario.name
        );
    }
    let points = scenario.points();
    let kinds = scenario.run_order();
    let total = points.len() * kinds.len() * scenario.repetitions as usize;
    let run_id = run_id(&scenario.name);
    let dir = out.join(&run_id);
    let manifest = new_manifest(
        run_id,
        (&scenario.name, &scenario.profile),
        serde_json::to_value(scenario).context("encoding the scenario")?,
        EmulationInfo {
            mode: emulation.name().into(),
            emulator: emulation.emulator().into(),
            accuracy: None,
            calibration: vec![],
        },
        capabilities,
        total,
    );
    let mut warnings = manifest.warnings.clone();
    let mut writer = RunWriter::create(&dir, manifest)
        .with_context(|| format!("creating the run directory under {}", out.display()))?;

    // One topology for the run, removed on drop (errors included).
    let network = emulation
        .layout()
        .map(Namespaces::create)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    if let Some(net) = &network {
        writer.manifest_mut().emulation.emulator = format!(
            "{} (namespaces {}, {}, {})",
            emulation.emulator(),
            net.topology.src_ns(),
            net.topology.dst_ns(),
            net.topology.link_ns().unwrap_or("-")
        );
    }

    let mut sources = SourceCache::new(scenario.seed);
    let progress = progress_bar(total);
    let mut interrupted = false;
    'points: for point in &points {
        for repetition in 0..scenario.repetitions {
            let mut raw_throughput: Option<f64> = None;
            for &kind in &kinds {
                if crate::interrupt::requested() {
                    interrupted = true;
                    break 'points;
                }
                progress.set_message(format!(
                    "{kind} rtt {} ms, {} workers, {} KiB chunks",
                    point.rtt_ms, point.workers, point.chunk_kib
                ));
                let mut record = new_record(scenario, emulation, kind, point, repetition);
                let start = Instant::now();
                if network.is_none() && point.rtt_ms > 0.0 {
                    record.status = CellStatus::Skipped;
                    record.reason = Some(NEEDS_PACKETS.into());
                } else {
                    let image = sources.get(point.region_bytes());
                    let cell = Cell {
                        kind,
                        point: *point,
                        timing: scenario.timing(point),
                        connections: scenario.connections,
                        image: &image,
                    };
                    let outcome = match &network {
                        Some(net) => cell.run_namespaced(net),
                        None => cell.run_inproc(),
                    };
                    record.source_sha256 = Some(image.sha256.clone());
                    match outcome {
                        Ok(measured) => {
                            fill(&mut record, &measured, point, raw_throughput);
                            if kind == TransportKind::Raw {
                                raw_throughput = record.metrics.read_throughput_mib_s;
                            }
                        }
                        Err(e) => {
                            record.status = CellStatus::Failed;
                            record.metrics.integrity = e.integrity;
                            record.reason = Some(e.reason);
                        }
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
    drop(network);
    if interrupted {
        warnings.push(format!(
            "interrupted by Ctrl-C after {} of {total} cell repetitions",
            writer.records().len()
        ));
    }
    if !kinds.contains(&TransportKind::Raw) {
        warnings.push("no `raw` in transports: efficiency is not computed".into());
    }
    writer.manifest_mut().warnings = warnings.clone();
    let rows = results::summarize(writer.records());
    let checks = targets(&rows);
    let dir = writer
        .finish(utc_now())
        .context("finishing the run directory")?;
    let text = serde_json::to_vec_pretty(&checks).context("encoding the target checks")?;
    results::writer::write_atomically(&dir.join("targets.json"), &text)
        .context("writing targets.json")?;
    Ok(RunReport {
        dir,
        rows,
        interrupted,
        warnings,
    })
}

fn new_record(
    scenario: &TransportSweepScenario,
    emulation: Emulation,
    kind: TransportKind,
    point: &Point,
    repetition: u32,
) -> CellRecord {
    let params = BTreeMap::from([
        ("transport".to_owned(), serde_json::json!(kind.name())),
        ("rtt_ms".to_owned(), serde_json::json!(point.rtt_ms)),
        ("workers".to_owned(), serde_json::json!(point.workers)),
        ("chunk_kib".to_owned(), serde_json::json!(point.chunk_kib)),
        ("region_mib".to_owned(), serde_json::json!(point.region_mib)),
    ]);
    let id: Vec<String> = params
        .iter()
        .filter(|(k, _)| *k != "transport")
        .map(|(k, v)| format!("{k}={}", results::summary::param_text(v)))
        .collect();
    CellRecord {
        cell_id: format!("{}/{kind}/{}", scenario.name, id.join(",")),
        scenario: scenario.name.clone(),
        implementation: IMPLEMENTATION.to_owned(),
        transport: Some(kind.name().to_owned()),
        emulation: emulation.name().to_owned(),
        params,
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

/// Why a cell failed; `integrity` is `Some(false)` when a reply was wrong.
#[derive(Debug)]
struct CellError {
    reason: String,
    integrity: Option<bool>,
}

impl From<String> for CellError {
    fn from(reason: String) -> Self {
        Self {
            reason,
            integrity: None,
        }
    }
}

/// What a cell measured.
#[derive(Debug)]
struct Measured {
    /// Bytes and requests completed in the measured window.
    window_bytes: u64,
    window_requests: u64,
    window: Duration,
    latency: LatencyHistogram,
    /// Requests the client completed over the whole cell.
    total_requests: u64,
    client_cpu_s: f64,
    server_cpu_s: f64,
    serve: ServeStats,
    transferred_bytes: Option<u64>,
}

/// One cell to run.
struct Cell<'a> {
    kind: TransportKind,
    point: Point,
    timing: (Duration, Duration),
    connections: usize,
    image: &'a SourceImage,
}

impl Cell<'_> {
    fn max_in_flight(&self) -> usize {
        // Every worker's call may sit on one connection: never make a
        // worker wait for a slot, or `workers` would not be what is in flight.
        (self.point.workers as usize)
            .div_ceil(self.connections)
            .max(transports::server::DEFAULT_MAX_IN_FLIGHT)
    }

    /// Server and client in this process over loopback TCP.
    fn run_inproc(&self) -> Result<Measured, CellError> {
        let server_threads = ThreadCpu::default();
        let runtime = server_threads
            .runtime("sweep-server")
            .map_err(|e| format!("starting the server runtime: {e}"))?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .map_err(|e| format!("listening on 127.0.0.1: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("reading the bound address: {e}"))?;
        let shutdown = CancellationToken::new();
        let config = transport_config(self.max_in_flight(), self.connections);
        let server = runtime.spawn(self.kind.serve(
            listener,
            Services::backend(self.image.backend.clone()),
            config,
            shutdown.clone(),
        ));
        let client = self.drive(addr);
        shutdown.cancel();
        let served = runtime.block_on(async { tokio::time::timeout(STOP_TIMEOUT, server).await });
        let server_cpu_s = server_threads.seconds();
        runtime.shutdown_timeout(Duration::from_secs(1));
        let mut measured = client?;
        measured.serve = match served {
            Ok(Ok(Ok(stats))) => stats,
            Ok(Ok(Err(e))) => return Err(format!("the server failed: {e}").into()),
            Ok(Err(e)) => return Err(format!("the server task failed: {e}").into()),
            Err(_) => return Err(format!("the server did not stop within {STOP_TIMEOUT:?}").into()),
        };
        measured.server_cpu_s = server_cpu_s;
        Ok(measured)
    }

    /// A `transport-server` role in `src`, the client in `dst`, the link
    /// shaped for the point in between.
    fn run_namespaced(&self, net: &Namespaces) -> Result<Measured, CellError> {
        let link = net.start_link(link_calibration::link_for(LinkPoint {
            rtt_ms: self.point.rtt_ms,
            rate_mbit: None,
        }))?;
        let result = self.run_with_role(net);
        // Counted before the relay stops: the whole cell's frames.
        let transferred = link.transferred_bytes();
        link.stop()?;
        let mut measured = result?;
        measured.transferred_bytes = Some(transferred?);
        Ok(measured)
    }

    fn run_with_role(&self, net: &Namespaces) -> Result<Measured, CellError> {
        let exe =
            std::env::current_exe().map_err(|e| format!("finding the harness binary: {e}"))?;
        let mut command = net.src.command(exe);
        command.args(["role", "transport-server", "--transport", self.kind.name()]);
        command.arg("--listen");
        command.arg(format!("{}:0", net.topology.src_addr()));
        command.args(["--size", &self.image.bytes().len().to_string()]);
        command.args(["--seed", &self.image.seed.to_string()]);
        command.args(["--max-in-flight", &self.max_in_flight().to_string()]);
        let mut role =
            RoleProcess::spawn("transport-server", command).map_err(|e| e.to_string())?;
        let addr = match role
            .next_event(ROLE_READY_TIMEOUT)
            .map_err(|e| e.to_string())?
        {
            RoleEvent::Ready { addr, sha256, .. } if sha256 == self.image.sha256 => addr,
            RoleEvent::Ready { sha256, .. } => {
                return Err(format!(
                    "the transport server serves content {sha256}, expected {}",
                    self.image.sha256
                )
                .into())
            }
            other => {
                return Err(format!("the transport server sent {other:?} before `ready`").into())
            }
        };
        let addr: SocketAddr = addr
            .parse()
            .map_err(|e| format!("the transport server's address {addr:?}: {e}"))?;
        // The client's runtime is built inside `dst`: its threads, and so
        // every socket they open, stay in that namespace.
        let client = net
            .dst
            .run(|| self.drive(addr))
            .map_err(|e| format!("entering the dst namespace: {e}"))?;
        let stopped = role.stop(STOP_TIMEOUT).map_err(|e| e.to_string())?;
        let mut measured = client?;
        match stopped {
            RoleEvent::Stopped { serve, cpu_s } => {
                measured.server_cpu_s = cpu_s;
                measured.serve = ServeStats {
                    requests: serve.requests,
                    bytes_received: serve.bytes_received,
                    bytes_sent: serve.bytes_sent,
                    peak_in_flight: serve.peak_in_flight,
                };
            }
            other => {
                return Err(format!("the transport server ended with {other:?}").into());
            }
        }
        Ok(measured)
    }

    /// The client side of a cell, on its own runtime: connects, runs the
    /// workers through warm-up and window, closes. Server fields are left
    /// for the caller.
    fn drive(&self, addr: SocketAddr) -> Result<Measured, CellError> {
        let threads = ThreadCpu::default();
        let runtime = threads
            .runtime("sweep-client")
            .map_err(|e| format!("starting the client runtime: {e}"))?;
        let result = runtime.block_on(self.client_cell(addr));
        let client_cpu_s = threads.seconds();
        runtime.shutdown_timeout(Duration::from_secs(1));
        let mut measured = result?;
        measured.client_cpu_s = client_cpu_s;
        Ok(measured)
    }

    async fn client_cell(&self, addr: SocketAddr) -> Result<Measured, CellError> {
        let config = transport_config(self.max_in_flight(), self.connections);
        let client = self
            .kind
            .connect(addr, &config)
            .await
            .map_err(|e| e.to_string())?;
        let backend = client.backend();
        let size = backend
            .size()
            .await
            .map_err(|e| format!("Size over {}: {e}", self.kind))?;
        let expected = self.image.bytes().len() as u64;
        if size != expected {
            return Err(format!("the server's region is {size} bytes, expected {expected}").into());
        }
        let (warmup, window) = self.timing;
        let start = Instant::now();
        let plan = Arc::new(Plan {
            window_start: start + warmup,
            end: start + warmup + window,
            chunk: self.point.chunk_bytes(),
            chunks: self.point.region_bytes() / self.point.chunk_bytes(),
            next: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        // Each task owns a handle to the source bytes through the cache's Arc.
        let mut tasks = Vec::with_capacity(self.point.workers as usize);
        let source = self.image.backend.clone();
        for _ in 0..self.point.workers {
            let plan = plan.clone();
            let backend = backend.clone();
            let source = source.clone();
            tasks.push(tokio::spawn(async move {
                let result = worker(&plan, &*backend, &source).await;
                if result.is_err() {
                    plan.stop.store(true, Ordering::Relaxed);
                }
                result
            }));
        }
        let mut tally = Tally::default();
        let mut first_error: Option<CellError> = None;
        for task in tasks {
            match task.await {
                Ok(Ok(t)) => tally.add(t),
                Ok(Err(e)) => {
                    // The first wrong byte outranks errors it caused elsewhere.
                    let replace = match &first_error {
                        None => true,
                        Some(prev) => prev.integrity.is_none() && e.integrity.is_some(),
                    };
                    if replace {
                        first_error = Some(e);
                    }
                }
                Err(e) => {
                    first_error.get_or_insert_with(|| format!("a worker panicked: {e}").into());
                }
            }
        }
        let stats = client.stats();
        drop(backend);
        drop(client);
        if let Some(e) = first_error {
            return Err(e);
        }
        Ok(Measured {
            window_bytes: tally.window_bytes,
            window_requests: tally.window_requests,
            window,
            latency: tally.latency,
            total_requests: tally.total_requests,
            client_cpu_s: 0.0,
            server_cpu_s: 0.0,
            serve: ServeStats::default(),
            transferred_bytes: Some(stats.bytes_sent + stats.bytes_received),
        })
    }
}

/// What the workers share.
struct Plan {
    window_start: Instant,
    end: Instant,
    chunk: u64,
    chunks: u64,
    /// The next chunk index: workers walk the region together, over and over.
    next: AtomicU64,
    /// Set when a worker fails, so the others stop issuing.
    stop: AtomicBool,
}

/// One worker's counts.
#[derive(Debug, Default)]
struct Tally {
    window_bytes: u64,
    window_requests: u64,
    total_requests: u64,
    latency: LatencyHistogram,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.window_bytes += other.window_bytes;
        self.window_requests += other.window_requests;
        self.total_requests += other.total_requests;
        self.latency.merge(other.latency.inner());
    }
}

/// Keeps one read in flight until the window ends; checks every reply.
async fn worker(
    plan: &Plan,
    backend: &dyn backends::Backend,
    source: &backends::MemoryBackend,
) -> Result<Tally, CellError> {
    let chunk = plan.chunk as usize;
    let mut buf = vec![0u8; chunk];
    let mut tally = Tally::default();
    while Instant::now() < plan.end && !plan.stop.load(Ordering::Relaxed) {
        let index = plan.next.fetch_add(1, Ordering::Relaxed) % plan.chunks;
        let offset = index * plan.chunk;
        let sent = Instant::now();
        backend
            .read_exact_at(&mut buf, offset)
            .await
            .map_err(|e| format!("ReadAt({offset}, {chunk}) failed: {e}"))?;
        let done = Instant::now();
        {
            let bytes = source.bytes();
            let at = offset as usize;
            if bytes.get(at..at + chunk) != Some(&buf[..]) {
                return Err(CellError {
                    reason: format!(
                        "ReadAt({offset}, {chunk}) returned bytes that differ from the source"
                    ),
                    integrity: Some(false),
                });
            }
        }
        tally.total_requests += 1;
        // Completions inside the window count, whenever they were sent:
        // in a steady state that is the throughput.
        if done >= plan.window_start && done <= plan.end {
            tally.window_bytes += plan.chunk;
            tally.window_requests += 1;
            tally
                .latency
                .record(u64::try_from((done - sent).as_nanos()).unwrap_or(u64::MAX));
        }
    }
    Ok(tally)
}

/// CPU time of one runtime's threads: each registers itself on start,
/// and their time is read from `/proc/self/task/TID/schedstat` before the
/// runtime is dropped. Lets the client and an in-process server be
/// charged separately, and keeps the relay's threads (in this process
/// too, in `userspace-link`) out of the client's share.
#[derive(Debug, Clone, Default)]
struct ThreadCpu {
    tids: Arc<Mutex<Vec<i32>>>,
}

impl ThreadCpu {
    fn runtime(&self, name: &str) -> std::io::Result<tokio::runtime::Runtime> {
        let tids = self.tids.clone();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(name)
            .enable_all()
            .on_thread_start(move || {
                if let Ok(mut t) = tids.lock() {
                    t.push(nix::unistd::gettid().as_raw());
                }
            })
            .build()
    }

    /// CPU seconds of the registered threads that still run. Threads are
    /// new with the runtime, so this is their whole life.
    fn seconds(&self) -> f64 {
        let tids = match self.tids.lock() {
            Ok(t) => t.clone(),
            Err(_) => return f64::NAN,
        };
        let ns: u64 = tids.iter().filter_map(|tid| thread_cpu_ns(*tid)).sum();
        ns as f64 / 1e9
    }
}

/// Time thread `tid` of this process has run, ns (first field of schedstat).
fn thread_cpu_ns(tid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Fills an ok record from what was measured.
fn fill(record: &mut CellRecord, m: &Measured, point: &Point, raw: Option<f64>) {
    let secs = m.window.as_secs_f64();
    let throughput = m.window_bytes as f64 / (1024.0 * 1024.0) / secs;
    let mut other = BTreeMap::from([
        ("requests_per_s".to_owned(), m.window_requests as f64 / secs),
        ("server_cpu_s".to_owned(), m.server_cpu_s),
        ("requests".to_owned(), m.total_requests as f64),
        ("server_requests".to_owned(), m.serve.requests as f64),
        ("peak_in_flight".to_owned(), m.serve.peak_in_flight as f64),
    ]);
    if m.total_requests > 0 {
        let per = |cpu: f64| cpu * 1e6 / m.total_requests as f64;
        other.insert("client_cpu_us_per_request".into(), per(m.client_cpu_s));
        other.insert("server_cpu_us_per_request".into(), per(m.server_cpu_s));
    }
    if !m.latency.is_empty() {
        let q = |q: f64| m.latency.inner().value_at_quantile(q) as f64 / 1e3;
        other.insert("request_latency_p50_us".into(), q(0.5));
        other.insert("request_latency_p99_us".into(), q(0.99));
    }
    if let Some(raw) = raw.filter(|r| *r > 0.0) {
        other.insert("efficiency".into(), throughput / raw);
    }
    if point.rtt_ms > 0.0 {
        // What the workers could move if latency were the only limit (the
        // link has no rate limit).
        let bound = f64::from(point.workers) * point.chunk_bytes() as f64
            / (1024.0 * 1024.0)
            / (point.rtt_ms / 1e3);
        other.insert("latency_bound_mib_s".into(), bound);
        other.insert("latency_bound_fraction".into(), throughput / bound);
    }
    record.metrics = Metrics {
        read_throughput_mib_s: Some(throughput),
        bytes_read: Some(m.window_bytes),
        transferred_bytes: m.transferred_bytes,
        cpu_s: Some(m.client_cpu_s),
        integrity: Some(true),
        other,
        ..Metrics::default()
    };
    if m.window_requests == 0 {
        record.status = CellStatus::Failed;
        record.reason = Some(format!(
            "no request completed in the {:.3} s window",
            m.window.as_secs_f64()
        ));
    }
    record
        .histograms
        .insert("request_latency_ns".into(), m.latency.to_record("ns"));
    record.destination_sha256 = None;
}

/// One target of the issue, checked against a run's rows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetCheck {
    /// What is compared, e.g. `frpc/raw read_throughput_mib_s`.
    pub target: String,
    /// The point it was taken at.
    pub at: String,
    pub value: f64,
    /// The target: `value >= threshold`.
    pub threshold: f64,
    pub met: bool,
}

/// What a run is missing to check a target.
fn row_at<'a>(
    rows: &'a [results::SummaryRow],
    transport: &str,
    matches: &dyn Fn(&results::SummaryRow) -> bool,
) -> Vec<&'a results::SummaryRow> {
    rows.iter()
        .filter(|r| r.transport.as_deref() == Some(transport) && r.ok > 0 && matches(r))
        .collect()
}

fn param(r: &results::SummaryRow, key: &str) -> Option<f64> {
    r.params.get(key).and_then(serde_json::Value::as_f64)
}

fn metric(r: &results::SummaryRow, key: &str) -> Option<f64> {
    match key {
        "read_throughput_mib_s" => r.medians.get(key).copied(),
        _ => r.other_medians.get(key).copied(),
    }
}

/// The two targets that come as ratios between transports, at every point
/// of the run that has both sides, plus every transport's share of its
/// latency bound at RTT >= 10 ms.
pub fn targets(rows: &[results::SummaryRow]) -> Vec<TargetCheck> {
    let mut checks = Vec::new();
    let same_point = |a: &results::SummaryRow, b: &results::SummaryRow| {
        ["rtt_ms", "workers", "chunk_kib", "region_mib"]
            .iter()
            .all(|k| param(a, k) == param(b, k))
    };
    let at = |r: &results::SummaryRow| {
        format!(
            "rtt {} ms, {} workers, {} KiB chunks, {} MiB region",
            param(r, "rtt_ms").unwrap_or(f64::NAN),
            param(r, "workers").unwrap_or(f64::NAN),
            param(r, "chunk_kib").unwrap_or(f64::NAN),
            param(r, "region_mib").unwrap_or(f64::NAN)
        )
    };
    let mut ratio = |num: &str,
                     den: &str,
                     what: &str,
                     threshold: f64,
                     cond: &dyn Fn(&results::SummaryRow) -> bool| {
        for n in row_at(rows, num, cond) {
            for d in row_at(rows, den, cond)
                .into_iter()
                .filter(|d| same_point(n, d))
            {
                if let (Some(a), Some(b)) = (metric(n, what), metric(d, what)) {
                    if b > 0.0 {
                        checks.push(TargetCheck {
                            target: format!("{num}/{den} {what}"),
                            at: at(n),
                            value: a / b,
                            threshold,
                            met: a / b >= threshold,
                        });
                    }
                }
            }
        }
    };
    ratio("frpc", "raw", "read_throughput_mib_s", 0.8, &|r| {
        param(r, "chunk_kib") == Some(1024.0) && param(r, "rtt_ms") == Some(0.0)
    });
    ratio("frpc", "grpc", "requests_per_s", 2.0, &|r| {
        param(r, "chunk_kib") == Some(4.0)
            && param(r, "workers") == Some(64.0)
            && param(r, "rtt_ms") == Some(0.0)
    });
    // The link has no configured rate, so its rate is what the emulator
    // itself carries: the best raw throughput at RTT 0 in this run.
    let capacity = rows
        .iter()
        .filter(|r| r.transport.as_deref() == Some("raw") && r.ok > 0)
        .filter(|r| param(r, "rtt_ms") == Some(0.0))
        .filter_map(|r| metric(r, "read_throughput_mib_s"))
        .fold(None, |best: Option<f64>, v| {
            Some(best.map_or(v, |b| b.max(v)))
        });
    for r in rows.iter().filter(|r| r.ok > 0) {
        if param(r, "rtt_ms").is_some_and(|rtt| rtt >= 10.0) {
            let (Some(t), Some(tput), Some(bound)) = (
                &r.transport,
                metric(r, "read_throughput_mib_s"),
                metric(r, "latency_bound_mib_s"),
            ) else {
                continue;
            };
            let limit = capacity.map_or(bound, |c| bound.min(c));
            let link = capacity.map_or(
                "link rate unmeasured (no raw cell at RTT 0)".to_owned(),
                |c| format!("link rate {c:.0} MiB/s as raw carried it at RTT 0"),
            );
            checks.push(TargetCheck {
                target: format!("{t} share of min(link rate, workers x chunk / RTT)"),
                at: format!("{}; {link}, latency bound {bound:.0} MiB/s", at(r)),
                value: tput / limit,
                threshold: 0.9,
                met: tput / limit >= 0.9,
            });
        }
    }
    checks
}

/// The target lines to print, and a note for each ratio the run could not
/// compute.
pub fn target_lines(rows: &[results::SummaryRow]) -> Vec<String> {
    let checks = targets(rows);
    let mut lines: Vec<String> = checks
        .iter()
        .map(|c| {
            format!(
                "target {} at {}: {:.3} (>= {}): {}",
                c.target,
                c.at,
                c.value,
                c.threshold,
                if c.met { "met" } else { "MISSED" }
            )
        })
        .collect();
    for (target, needs) in [
        (
            "frpc/raw read_throughput_mib_s",
            "ok frpc and raw cells at 1024 KiB chunks and RTT 0",
        ),
        (
            "frpc/grpc requests_per_s",
            "ok frpc and grpc cells at 4 KiB chunks, 64 workers and RTT 0",
        ),
    ] {
        if !checks.iter().any(|c| c.target == target) {
            lines.push(format!("target {target}: not measured (needs {needs})"));
        }
    }
    lines
}

/// One line per transport whose cells were skipped, with the reason.
pub fn skipped_lines(rows: &[results::SummaryRow]) -> Vec<String> {
    let mut skipped: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.skipped == r.repetitions) {
        let entry = skipped
            .entry(r.transport.as_deref().unwrap_or("?"))
            .or_insert((0, r.reason.as_deref().unwrap_or("")));
        entry.0 += 1;
    }
    skipped
        .into_iter()
        .map(|(t, (cells, reason))| format!("{t}: {cells} cells skipped: {reason}"))
        .collect()
}

/// One row per cell that ran.
pub fn table(rows: &[results::SummaryRow]) -> comfy_table::Table {
    use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header([
        "transport",
        "RTT ms",
        "workers",
        "chunk KiB",
        "MiB/s",
        "req/s",
        "p50 us",
        "p99 us",
        "client CPU s",
        "server CPU s",
        "efficiency",
    ]);
    for r in rows.iter().filter(|r| r.skipped < r.repetitions) {
        let p = |k: &str| {
            r.params
                .get(k)
                .map(results::summary::param_text)
                .unwrap_or_default()
        };
        let fmt =
            |v: Option<f64>, digits: usize| v.map_or("-".to_owned(), |v| format!("{v:.digits$}"));
        let mut line = vec![
            r.transport.clone().unwrap_or_default(),
            p("rtt_ms"),
            p("workers"),
            p("chunk_kib"),
        ];
        if r.ok + r.truncated == 0 {
            line.push(format!("failed: {}", r.reason.clone().unwrap_or_default()));
        } else {
            line.extend([
                fmt(metric(r, "read_throughput_mib_s"), 1),
                fmt(metric(r, "requests_per_s"), 0),
                fmt(metric(r, "request_latency_p50_us"), 0),
                fmt(metric(r, "request_latency_p99_us"), 0),
                fmt(r.medians.get("cpu_s").copied(), 2),
                fmt(metric(r, "server_cpu_s"), 2),
                fmt(metric(r, "efficiency"), 2),
            ]);
        }
        t.add_row(line);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = include_str!("../../scenarios/transport-sweep.toml");

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
        let lines = target_lines(&rows[..1]);
        assert!(
            lines.iter().all(|l| l.contains("not measured")),
            "{lines:?}"
        );
    }
}
