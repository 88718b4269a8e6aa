//! Running a transport sweep: the cells, their server and clients, and
//! what each records.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use results::schema::Capability;
use results::{CellRecord, CellStatus, LatencyHistogram, Metrics};
use tokio_util::sync::CancellationToken;
use transports::{ServeStats, Services, TransportKind};

use crate::emulation::Emulation;
use crate::link_calibration::{self, Point as LinkPoint};
use crate::network::Namespaces;
use crate::roles::child::RoleProcess;
use crate::roles::protocol::RoleEvent;
use crate::roles::remote_backend::transport_config;
use crate::runner::{new_cell_record, open_run, progress_bar, utc_now, OpenedRun, RunReport};
use crate::source::{SourceCache, SourceImage};

use super::ratios::targets;
use super::{
    Point, TransportSweepScenario, IMPLEMENTATION, NEEDS_PACKETS, ROLE_READY_TIMEOUT, STOP_TIMEOUT,
};

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
    // One topology for the run, removed on drop (errors included).
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
                    let image = sources.pattern(point.region_bytes());
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
    let mut record = new_cell_record(
        format!("{}/{kind}/{}", scenario.name, id.join(",")),
        &scenario.name,
        IMPLEMENTATION,
        emulation.name(),
        params,
        repetition,
    );
    record.transport = Some(kind.name().to_owned());
    record
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

    /// A `remote-backend` role in `src`, the client in `dst`, the link
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
        command.args(["role", "remote-backend", "--transport", self.kind.name()]);
        command.arg("--listen");
        command.arg(format!("{}:0", net.topology.src_addr()));
        command.args(["--size", &self.image.bytes().len().to_string()]);
        command.args(["--seed", &self.image.seed.to_string()]);
        command.args(["--max-in-flight", &self.max_in_flight().to_string()]);
        let mut role = RoleProcess::spawn("remote-backend", command).map_err(|e| e.to_string())?;
        let addr = match role
            .next_event(ROLE_READY_TIMEOUT)
            .map_err(|e| e.to_string())?
        {
            RoleEvent::Ready { addr, sha256, .. } if sha256 == self.image.sha256 => addr,
            RoleEvent::Ready { sha256, .. } => {
                return Err(format!(
                    "the remote backend role serves content {sha256}, expected {}",
                    self.image.sha256
                )
                .into())
            }
            other => {
                return Err(format!("the remote backend role sent {other:?} before `ready`").into())
            }
        };
        let addr: SocketAddr = addr
            .parse()
            .map_err(|e| format!("the remote backend role's address {addr:?}: {e}"))?;
        // The client's runtime is built inside `dst`: its threads, and so
        // every socket they open, stay in that namespace.
        let client = net
            .dst
            .run(|| self.drive(addr))
            .map_err(|e| format!("entering the dst namespace: {e}"))?;
        let stopped = role.stop(STOP_TIMEOUT).map_err(|e| e.to_string())?;
        let mut measured = client?;
        match stopped {
            RoleEvent::Stopped { serve, cpu_s, .. } => {
                measured.server_cpu_s = cpu_s;
                measured.serve = ServeStats {
                    requests: serve.requests,
                    bytes_received: serve.bytes_received,
                    bytes_sent: serve.bytes_sent,
                    peak_in_flight: serve.peak_in_flight,
                };
            }
            other => {
                return Err(format!("the remote backend role ended with {other:?}").into());
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
