//! Runs a scenario: expands the cells, runs each repetition, records as it
//! goes, and summarizes.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use results::schema::Capability;
use results::{
    CellRecord, CellStatus, EmulationInfo, LatencyHistogram, Manifest, Metrics, RunWriter,
    SummaryRow, SCHEMA_VERSION,
};

use crate::emulation::Emulation;
use crate::implementations::{CellContext, CellOutcome, IntegrityScope, Measured};
use crate::scenario::{CellSpec, Scenario};
use crate::source::SourceCache;

/// What a finished run leaves behind.
#[derive(Debug)]
pub struct RunReport {
    pub dir: PathBuf,
    pub rows: Vec<SummaryRow>,
    pub interrupted: bool,
    pub warnings: Vec<String>,
}

pub(crate) fn utc_now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A run's directory name: its UTC start time and the scenario.
pub(crate) fn run_id(scenario: &str) -> String {
    format!("{}-{scenario}", chrono::Utc::now().format("%Y%m%dT%H%M%SZ"))
}

/// The manifest every run starts with, and the warnings about this host
/// and build that go in it.
pub(crate) fn new_manifest(
    run_id: String,
    scenario: (&str, &str),
    resolved: serde_json::Value,
    emulation: EmulationInfo,
    capabilities: Vec<Capability>,
    cells_planned: usize,
) -> Manifest {
    let build = crate::host::build_info();
    let mut warnings: Vec<String> = crate::host::build_warning(&build).into_iter().collect();
    if crate::host::cpu_count() < 2 {
        warnings.push("a single CPU: the workload and the fault handler share it".into());
    }
    Manifest {
        schema_version: SCHEMA_VERSION,
        run_id,
        scenario: scenario.0.to_owned(),
        profile: scenario.1.to_owned(),
        started_at: utc_now(),
        finished_at: None,
        host: crate::host::host_info(),
        build,
        capabilities,
        emulation,
        scenario_resolved: resolved,
        cells_planned,
        cells_recorded: 0,
        warnings,
    }
}

/// A run under way: its directory's writer, the manifest's warnings so
/// far, and (in the packet-level modes) the namespaces, removed on drop.
pub(crate) struct OpenedRun {
    pub writer: RunWriter,
    pub warnings: Vec<String>,
    pub network: Option<crate::network::Namespaces>,
}

/// Creates a run's directory below `out` with its manifest and, when
/// `emulation` works on packets, the run's namespaces (named in the
/// manifest's emulator): how every scenario kind that crosses namespaces
/// starts.
pub(crate) fn open_run(
    scenario: (&str, &str),
    resolved: serde_json::Value,
    emulation: Emulation,
    capabilities: Vec<Capability>,
    cells_planned: usize,
    out: &Path,
) -> anyhow::Result<OpenedRun> {
    let run_id = run_id(scenario.0);
    let dir = out.join(&run_id);
    let manifest = new_manifest(
        run_id,
        scenario,
        resolved,
        EmulationInfo {
            mode: emulation.name().into(),
            emulator: emulation.emulator().into(),
            accuracy: None,
            calibration: vec![],
        },
        capabilities,
        cells_planned,
    );
    let warnings = manifest.warnings.clone();
    let mut writer = RunWriter::create(&dir, manifest)
        .with_context(|| format!("creating the run directory under {}", out.display()))?;
    let network = emulation
        .layout()
        .map(crate::network::Namespaces::create)
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
    Ok(OpenedRun {
        writer,
        warnings,
        network,
    })
}

/// A record of one cell repetition, not yet measured (status `ok`, no
/// metrics), started now.
pub(crate) fn new_cell_record(
    cell_id: String,
    scenario: &str,
    implementation: &str,
    emulation: &str,
    params: BTreeMap<String, serde_json::Value>,
    repetition: u32,
) -> CellRecord {
    CellRecord {
        cell_id,
        scenario: scenario.to_owned(),
        implementation: implementation.to_owned(),
        transport: None,
        device: None,
        emulation: emulation.to_owned(),
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

/// The progress line long runs draw on stderr.
pub(crate) fn progress_bar(total: usize) -> ProgressBar {
    let progress = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
    progress.set_style(
        ProgressStyle::with_template(
            "{spinner} cell {pos}/{len} [{elapsed_precise}, ETA {eta}] {wide_msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    progress
}

/// Runs `scenario` under `emulation`, writing into a new directory below `out`.
pub fn run(
    scenario: &Scenario,
    emulation: Emulation,
    capabilities: Vec<Capability>,
    out: &Path,
) -> anyhow::Result<RunReport> {
    let run_id = run_id(&scenario.name);
    let dir = out.join(&run_id);
    let cells = scenario.cells();
    let total = cells.len() * scenario.repetitions as usize;

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
        capabilities.clone(),
        total,
    );
    let mut warnings = manifest.warnings.clone();
    let mut writer = RunWriter::create(&dir, manifest)
        .with_context(|| format!("creating the run directory under {}", out.display()))?;

    // Created once per run; dropped (namespaces deleted) when the run ends,
    // errors included.
    let network = emulation
        .layout()
        .map(crate::network::Namespaces::create)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    if let Some(net) = &network {
        let calibration = calibrate_link(net, &cells);
        let m = writer.manifest_mut();
        m.emulation.calibration = calibration;
        m.emulation.emulator = format!(
            "{} (namespaces {}, {}, {})",
            emulation.emulator(),
            net.topology.src_ns(),
            net.topology.dst_ns(),
            net.topology.link_ns().unwrap_or("-")
        );
    }

    let runtime = cell_runtime(network.as_ref())?;

    let progress = progress_bar(total);
    let mut sources = SourceCache::new(scenario.seed);
    let mut emulator_error = LatencyHistogram::new();
    let mut interrupted = false;

    'cells: for spec in &cells {
        let cell_id = spec.cell_id(&scenario.name);
        for repetition in 0..scenario.repetitions {
            if crate::interrupt::requested() {
                interrupted = true;
                break 'cells;
            }
            progress.set_message(format!("{cell_id} rep {}", repetition + 1));
            let record = run_cell(
                scenario,
                spec,
                &cell_id,
                repetition,
                emulation,
                &capabilities,
                &mut sources,
                &runtime,
                network.as_ref(),
                &mut emulator_error,
            );
            tracing::info!(cell = %cell_id, repetition, status = ?record.status, reason = ?record.reason, "cell done");
            writer.append(record).context("recording a cell")?;
            progress.inc(1);
        }
    }
    progress.finish_and_clear();
    runtime.shutdown_timeout(Duration::from_secs(5));

    if interrupted {
        warnings.push(format!(
            "interrupted by Ctrl-C after {} of {total} cell repetitions",
            writer.records().len()
        ));
    }
    let m = writer.manifest_mut();
    m.warnings = warnings.clone();
    if !emulator_error.is_empty() {
        m.emulation.accuracy = Some(emulator_error.to_record("ns"));
    }
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

/// Measures the link at every RTT the cells use, so the manifest says how
/// faithful the emulation was. A calibration that fails is recorded as such;
/// the cells still run (and record their own departure errors).
/// The runtime cells do their remote I/O on. Across namespaces its threads
/// live in `dst`, so every socket a cell's destination opens is there, as
/// on a real destination host, whichever transport opens it.
pub(crate) fn cell_runtime(
    network: Option<&crate::network::Namespaces>,
) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder
        .worker_threads(2)
        .thread_name("remote-io")
        .enable_all();
    if let Some(net) = network {
        let dst = Arc::new(
            netem::NetNs::open(net.topology.dst_ns())
                .with_context(|| format!("opening namespace {}", net.topology.dst_ns()))?,
        );
        builder.on_thread_start(move || {
            if let Err(e) = dst.enter_current_thread() {
                // A thread left outside `dst` cannot reach the source: the
                // cell's connect fails and names the address.
                tracing::error!("a remote-io thread could not enter {}: {e}", dst.name());
            }
        });
    }
    builder.build().context("starting the async runtime")
}

fn calibrate_link(net: &crate::network::Namespaces, cells: &[CellSpec]) -> Vec<serde_json::Value> {
    let mut rtts: Vec<f64> = cells.iter().filter_map(|c| c.rtt_ms).collect();
    rtts.sort_by(f64::total_cmp);
    rtts.dedup();
    let plan = crate::calibration::run_plan();
    rtts.into_iter()
        .map(|rtt_ms| {
            eprintln!("calibrating the link at RTT {rtt_ms} ms ...");
            let rtt = Duration::from_secs_f64(rtt_ms / 1e3);
            let config = crate::network::symmetric_link(rtt, Duration::ZERO, None, 0.0);
            match crate::calibration::calibrate(net, &config, &plan) {
                Ok((report, checks)) => serde_json::json!({
                    "rtt_ms": rtt_ms,
                    "checks": checks,
                    "report": report,
                }),
                Err(e) => serde_json::json!({ "rtt_ms": rtt_ms, "error": e }),
            }
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn run_cell(
    scenario: &Scenario,
    spec: &CellSpec,
    cell_id: &str,
    repetition: u32,
    emulation: Emulation,
    capabilities: &[Capability],
    sources: &mut SourceCache,
    runtime: &tokio::runtime::Runtime,
    network: Option<&crate::network::Namespaces>,
    emulator_error: &mut LatencyHistogram,
) -> CellRecord {
    let started_at = utc_now();
    let start = Instant::now();
    let imp = spec.implementation;
    let mut record = CellRecord {
        cell_id: cell_id.to_owned(),
        scenario: scenario.name.clone(),
        implementation: imp.name.to_owned(),
        transport: spec.wire().map(|w| w.name().to_owned()),
        device: None,
        emulation: if spec.rtt_ms.is_some() {
            emulation.name()
        } else {
            "none"
        }
        .to_owned(),
        params: spec.params(),
        repetition,
        status: CellStatus::Skipped,
        reason: None,
        started_at,
        wall_ms: 0.0,
        metrics: Metrics::default(),
        histograms: BTreeMap::new(),
        placement: BTreeMap::new(),
        source_sha256: None,
        destination_sha256: None,
    };

    if let Some(missing) = imp
        .needs
        .iter()
        .find_map(|need| capabilities.iter().find(|c| c.name == *need && !c.present))
    {
        record.reason = Some(format!("{} is absent: {}", missing.name, missing.detail));
        return record;
    }

    if let Some(mbit) = spec.link_mbit {
        if emulation.layout().is_none() {
            record.reason = Some(format!(
                "a link limited to {mbit} Mbit/s needs a packet-level emulation mode \
                 (userspace-link or kernel-netem); this run is `{emulation}`"
            ));
            return record;
        }
    }
    if spec.workload == crate::workload::WorkloadKind::Idle
        && !imp
            .axes
            .contains(&crate::implementations::Axis::PullWorkers)
    {
        record.reason = Some(format!(
            "the idle workload measures a background pull, which `{}` does not have",
            imp.name
        ));
        return record;
    }
    if let (true, Some(why)) = (spec.workload.writes(), imp.read_only) {
        record.reason = Some(format!(
            "{} is a write workload and {} cannot write back: {why}",
            spec.workload, imp.name
        ));
        return record;
    }

    let source = match sources.get(spec.region_bytes, spec.workload.content()) {
        Ok(source) => source,
        Err(e) => {
            record.status = CellStatus::Failed;
            record.reason = Some(format!("making the source region: {e}"));
            record.wall_ms = start.elapsed().as_secs_f64() * 1e3;
            return record;
        }
    };
    record.source_sha256 = Some(source.sha256.clone());
    let order = crate::workload::access_order(
        spec.workload,
        spec.region_bytes,
        spec.access_bytes,
        scenario.seed,
    );
    let ctx = CellContext {
        spec,
        source,
        emulation,
        network,
        order: &order,
        deadline: start + Duration::from_secs_f64(scenario.cell_time_budget_s),
        runtime,
    };
    let cpu_before = crate::host::process_cpu_seconds();
    let outcome = catch_unwind(AssertUnwindSafe(|| (imp.run)(&ctx))).unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        CellOutcome::Failed(format!("the implementation panicked: {msg}"))
    });
    let cpu_s = crate::host::process_cpu_seconds() - cpu_before;

    match outcome {
        CellOutcome::Skipped(why) => record.reason = Some(why),
        CellOutcome::Failed(why) => {
            record.status = CellStatus::Failed;
            record.reason = Some(why);
        }
        CellOutcome::Measured(m) => {
            fill_measured(
                &mut record,
                *m,
                order.len(),
                scenario.cell_time_budget_s,
                spec,
                cpu_s,
            );
            if let Some(h) = record
                .histograms
                .get("emulator_error_ns")
                .and_then(|r| r.decode())
            {
                emulator_error.merge(&h);
            }
        }
    }
    record.wall_ms = start.elapsed().as_secs_f64() * 1e3;
    record
}

fn fill_measured(
    record: &mut CellRecord,
    m: Measured,
    planned_accesses: usize,
    budget_s: f64,
    spec: &CellSpec,
    cpu_s: f64,
) {
    let w = &m.workload;
    let secs = w.elapsed.as_secs_f64();
    record.metrics = Metrics {
        setup_ms: Some(m.setup.as_secs_f64() * 1e3),
        first_chunk_latency_us: w.first_access.map(|d| d.as_secs_f64() * 1e6),
        // A truncated run read only the accesses that fit the budget, and
        // the first accesses of a region cost the most (they fault), so
        // their rate is not the run's throughput: left unmeasured.
        read_throughput_mib_s: (secs > 0.0 && w.bytes_read > 0 && !w.truncated)
            .then(|| w.bytes_read as f64 / (1024.0 * 1024.0) / secs),
        bytes_read: (!spec.workload.writes()).then_some(w.bytes_read),
        // Likewise; the time includes the flush that put the writes in the
        // source.
        write_throughput_mib_s: (secs > 0.0 && w.bytes_written > 0 && !w.truncated)
            .then(|| w.bytes_written as f64 / (1024.0 * 1024.0) / secs),
        bytes_written: spec.workload.writes().then_some(w.bytes_written),
        transferred_bytes: m.transferred_bytes,
        transfer_amplification: m
            .transferred_bytes
            .map(|t| t as f64 / spec.region_bytes as f64),
        faults: m.faults,
        cpu_s: Some(cpu_s),
        total_ms: Some((m.setup + w.elapsed).as_secs_f64() * 1e3),
        integrity: Some(m.integrity),
        other: m.other.clone(),
    };
    if spec.workload == crate::workload::WorkloadKind::Sqlite && secs > 0.0 && !w.truncated {
        record
            .metrics
            .other
            .insert("lookups_per_s".into(), w.accesses as f64 / secs);
    }
    if let Some(flush) = w.flush {
        record
            .metrics
            .other
            .insert("flush_ms".into(), flush.as_secs_f64() * 1e3);
    }
    record.device = m.device.map(str::to_owned);
    record
        .histograms
        .insert("fault_latency_ns".into(), m.fault_latency.to_record("ns"));
    record
        .histograms
        .insert("access_latency_ns".into(), w.latency.to_record("ns"));
    if let Some(e) = &m.emulator_error {
        record
            .histograms
            .insert("emulator_error_ns".into(), e.to_record("ns"));
    }
    record.placement.insert("workload".into(), w.cpus.clone());
    if !m.handler_cpus.is_empty() {
        record
            .placement
            .insert("handler".into(), m.handler_cpus.clone());
    }
    let (scope, mismatch) = match &m.integrity_scope {
        IntegrityScope::Region { destination_sha256 } => {
            record.destination_sha256 = Some(destination_sha256.clone());
            (
                "the whole region (SHA-256)".to_owned(),
                "the destination differs from the source".to_owned(),
            )
        }
        IntegrityScope::AccessedBytes => (
            "the bytes the workload read".to_owned(),
            "the destination differs from the source".to_owned(),
        ),
        IntegrityScope::QueryAnswers => (
            "the rows the lookups returned (SHA-256)".to_owned(),
            "the lookups answered differently from the same lookups on the source".to_owned(),
        ),
        IntegrityScope::AfterWrites { sha256 } => (
            "what the writes went into, after the flush (SHA-256)".to_owned(),
            format!(
                "what the writes went into holds {sha256}, not the source with the writes applied"
            ),
        ),
    };
    if !m.integrity {
        record.status = CellStatus::Failed;
        record.reason = Some(format!("integrity check failed: {mismatch} over {scope}"));
    } else if w.truncated {
        record.status = CellStatus::Truncated;
        record.reason = Some(format!(
            "stopped after {} of {planned_accesses} accesses ({}); integrity checked over {scope}",
            w.accesses,
            if crate::interrupt::requested() {
                "interrupted".to_string()
            } else {
                format!("time budget of {budget_s} s reached")
            }
        ));
    } else {
        record.status = CellStatus::Ok;
    }
}
