//! One `downtime` cell: the source role in `src` runs the application and
//! serves the seeder service; this process, in `dst`, migrates the region
//! with one strategy, resumes the application on it, and checks every byte.
//!
//! Times are CLOCK_MONOTONIC, which both processes share:
//! - `setup_ms`: from the start of the migration to the destination ready
//!   to pull (Track done, and the device up or the region registered).
//! - `downtime_ms` (QEMU's): from the source's application suspended (in
//!   `Sync`) to the application started on the destination.
//! - `total_ms`: from the start of the migration to every byte at the
//!   destination.
//! - `app_stall_max_ms`: the largest gap between two ticks of the
//!   application, counted on either host and across the move (so it holds
//!   the downtime plus what the first accesses on the destination waited).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use migration::{FinalizePolicy, Leecher, LeecherOptions};
use tokio::runtime::Runtime;
use transports::{SharedSeeder, TransportConfig, TransportKind};

use super::app::{data_sha256, monotonic_ns, App, AppSpec, RunStats, Versions, PAGE};
use super::{Strategy, ROLE_READY_TIMEOUT, STOP_TIMEOUT};
use crate::network::{symmetric_link, Namespaces};
use crate::roles::child::RoleProcess;
use crate::roles::protocol::{RoleEvent, SourceReport};
use crate::source::SourceImage;

/// Everything one cell needs to know.
#[derive(Debug, Clone)]
pub struct CellPlan {
    pub strategy: Strategy,
    pub transport: TransportKind,
    pub rtt: Duration,
    pub chunk_bytes: u64,
    pub pull_workers: usize,
    pub app: AppSpec,
    /// The application runs this long on the source before the migration.
    pub warm: Duration,
    /// ... and this long on the destination once every byte is there.
    pub tail: Duration,
    /// Two-step: finalize once this fraction of the chunks is local.
    pub finalize_after_local: f64,
    /// Pre-copy: stop iterating once the rest would move within this...
    pub downtime_target: Duration,
    /// ... or after this many rounds.
    pub max_rounds: u32,
}

/// What a cell measured.
#[derive(Debug, Clone)]
pub struct CellResult {
    pub setup: Duration,
    pub downtime: Duration,
    pub total: Duration,
    pub transferred_bytes: Option<u64>,
    /// Chunks the source reported dirty and the destination moved again.
    pub dirty_sync_count: u64,
    /// Pre-copy rounds after the first full copy.
    pub rounds: u64,
    pub app_stall_max: Duration,
    pub source: SourceReport,
    pub destination: RunStats,
    /// Why the bytes are not intact, if they are not.
    pub integrity_failure: Option<String>,
}

/// Runs one cell across the namespaces of `net`.
pub fn run_cell(
    plan: &CellPlan,
    net: &Namespaces,
    runtime: &Runtime,
    image: &SourceImage,
) -> Result<CellResult, String> {
    let link = net.start_link(symmetric_link(plan.rtt, Duration::ZERO, None, 0.0))?;
    let mut role = spawn_source(plan, net, image)?;
    let addr = match role
        .next_event(ROLE_READY_TIMEOUT)
        .map_err(|e| e.to_string())?
    {
        RoleEvent::Ready { addr, sha256, .. } if sha256 == image.sha256 => addr,
        RoleEvent::Ready { sha256, .. } => {
            return Err(format!(
                "the migration source serves content {sha256}, expected {}",
                image.sha256
            ))
        }
        other => {
            return Err(format!(
                "the migration source sent {other:?} before `ready`"
            ))
        }
    };
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| format!("the migration source's address {addr:?}: {e}"))?;
    std::thread::sleep(plan.warm);

    let source = image.bytes();
    let migrated = migrate(plan, addr, runtime, &source);
    let transferred_bytes = link.transferred_bytes().ok();
    let stopped = role.stop(STOP_TIMEOUT).map_err(|e| e.to_string());
    if let Err(e) = link.stop() {
        tracing::warn!("stopping the link: {e}");
    }
    let migrated = migrated?;
    let report = match stopped? {
        RoleEvent::SourceStopped { report } => report,
        other => return Err(format!("the migration source ended with {other:?}")),
    };
    let suspended_at = report.suspended_at_ns.ok_or_else(|| {
        "the source's application was never suspended (or was resumed): no Sync succeeded"
            .to_owned()
    })?;
    let mut integrity_failure = migrated.integrity_failure;
    if report.app.check_failures > 0 {
        integrity_failure.get_or_insert(format!(
            "the application's checks on the source failed {} times",
            report.app.check_failures
        ));
    }
    if report.app.ops != migrated.resumed_from_ops {
        integrity_failure.get_or_insert(format!(
            "the source's application did {} ops, the destination resumed from {}",
            report.app.ops, migrated.resumed_from_ops
        ));
    }
    Ok(CellResult {
        setup: migrated.setup,
        downtime: Duration::from_nanos(migrated.resumed_at_ns.saturating_sub(suspended_at)),
        total: migrated.total,
        transferred_bytes,
        dirty_sync_count: migrated.dirty_sync_count,
        rounds: migrated.rounds,
        app_stall_max: Duration::from_nanos(
            report.app.max_gap_ns.max(migrated.destination.max_gap_ns),
        ),
        source: report,
        destination: migrated.destination,
        integrity_failure,
    })
}

fn spawn_source(
    plan: &CellPlan,
    net: &Namespaces,
    image: &SourceImage,
) -> Result<RoleProcess, String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding the harness binary: {e}"))?;
    let mut command = net.src.command(exe);
    command.args([
        "role",
        "migration-source",
        "--transport",
        plan.transport.name(),
    ]);
    command.arg("--listen");
    command.arg(format!("{}:0", net.topology.src_addr()));
    command.args(["--size", &image.bytes().len().to_string()]);
    command.args(["--seed", &image.seed.to_string()]);
    command.args(["--app-seed", &plan.app.seed.to_string()]);
    command.args(["--chunk-bytes", &plan.chunk_bytes.to_string()]);
    command.args(["--dirty-rate", &plan.app.dirty_rate.to_string()]);
    command.args(["--pattern", plan.app.pattern.name()]);
    RoleProcess::spawn("migration-source", command).map_err(|e| e.to_string())
}

/// The destination's side of one migration.
struct Migrated {
    setup: Duration,
    total: Duration,
    resumed_at_ns: u64,
    resumed_from_ops: u64,
    dirty_sync_count: u64,
    rounds: u64,
    destination: RunStats,
    integrity_failure: Option<String>,
}

fn transport_config() -> TransportConfig {
    TransportConfig {
        connections: 4,
        linger: Duration::from_secs(2),
        ..TransportConfig::default()
    }
}

fn migrate(
    plan: &CellPlan,
    addr: SocketAddr,
    runtime: &Runtime,
    source: &[u8],
) -> Result<Migrated, String> {
    let started = Instant::now();
    // On a runtime thread: those live in `dst`, where the sockets must be.
    let kind = plan.transport;
    let client = runtime
        .block_on(runtime.spawn(async move { kind.connect(addr, &transport_config()).await }))
        .map_err(|e| format!("the connect task: {e}"))?
        .map_err(|e| format!("connecting to the migration source: {e}"))?;
    let seeder = client.seeder();
    match plan.strategy {
        Strategy::TwoStep => two_step(plan, seeder, runtime, source, started),
        Strategy::StopAndCopy | Strategy::PrecopyIterative => {
            copy_strategy(plan, seeder, runtime, source, started)
        }
        Strategy::Postcopy => postcopy(plan, seeder, runtime, source, started),
    }
}

/// The thesis's two-step migration: pull while the source runs, finalize,
/// resume at once on the mount and pull the dirty chunks first.
fn two_step(
    plan: &CellPlan,
    seeder: SharedSeeder,
    runtime: &Runtime,
    source: &[u8],
    started: Instant,
) -> Result<Migrated, String> {
    let options = LeecherOptions {
        pull_workers: plan.pull_workers,
        ..LeecherOptions::new(plan.chunk_bytes)
    };
    let mut leecher = Leecher::open(seeder, options, runtime.handle())
        .map_err(|e| format!("opening the leecher: {e}"))?;
    let setup = leecher.progress().setup;
    let region = leecher
        .finalize_when(FinalizePolicy::AfterFractionLocal(
            plan.finalize_after_local,
        ))
        .map_err(|e| format!("finalizing: {e}"))?;
    let resumed_at_ns = monotonic_ns();
    let mut map = region
        .map()
        .map_err(|e| format!("mapping the migrated region: {e}"))?;
    let mem = map
        .as_mut_slice()
        .ok_or("the migrated region is mapped read-only")?;
    let outcome = run_destination_app(plan, source, mem, || {
        leecher
            .wait_complete()
            .map(drop)
            .map_err(|e| format!("completing the pull: {e}"))
    })?;
    let dirty_sync_count = leecher.dirty_chunks().map_or(0, |d| d.len() as u64);
    drop(map);
    leecher
        .close()
        .map_err(|e| format!("closing the leecher: {e}"))?;
    Ok(Migrated {
        setup,
        total: outcome.complete_at.duration_since(started),
        resumed_at_ns,
        resumed_from_ops: outcome.resumed_from_ops,
        dirty_sync_count,
        rounds: 0,
        destination: outcome.stats,
        integrity_failure: outcome.integrity_failure,
    })
}

/// Stop-and-copy (suspend, copy every chunk, resume) and QEMU-style
/// iterative pre-copy (copy everything while the source runs, then the
/// chunks dirtied meanwhile, round after round, until the rest would move
/// within the downtime target or the rounds run out; then suspend and copy
/// the rest) into anonymous memory.
fn copy_strategy(
    plan: &CellPlan,
    seeder: SharedSeeder,
    runtime: &Runtime,
    source: &[u8],
    started: Instant,
) -> Result<Migrated, String> {
    let size = source.len() as u64;
    let mut memory = memmap2::MmapMut::map_anon(source.len())
        .map_err(|e| format!("mapping {size} bytes of destination memory: {e}"))?;
    runtime
        .block_on(seeder.track())
        .map_err(|e| format!("the seeder's Track: {e}"))?;
    let setup = started.elapsed();
    let all: Vec<u64> = (0..size.div_ceil(plan.chunk_bytes))
        .map(|c| c * plan.chunk_bytes)
        .collect();
    let mut dirty_sync_count = 0u64;
    let mut rounds = 0u64;
    let pending: Vec<u64> = if plan.strategy == Strategy::PrecopyIterative {
        let mut set = all.clone();
        loop {
            let round_start = Instant::now();
            let moved = fetch_into(runtime, &seeder, &set, plan, &mut memory)?;
            let round_time = round_start.elapsed();
            let next = runtime
                .block_on(seeder.dirty())
                .map_err(|e| format!("the seeder's Dirty: {e}"))?;
            let rate = moved as f64 / round_time.as_secs_f64().max(1e-6);
            let rest = next.len() as f64 * plan.chunk_bytes as f64;
            if rest / rate <= plan.downtime_target.as_secs_f64()
                || rounds >= u64::from(plan.max_rounds)
            {
                break next;
            }
            dirty_sync_count += next.len() as u64;
            rounds += 1;
            set = next;
        }
    } else {
        Vec::new()
    };
    let last = runtime
        .block_on(seeder.sync())
        .map_err(|e| format!("the seeder's Sync: {e}"))?;
    let rest: Vec<u64> = if plan.strategy == Strategy::StopAndCopy {
        all
    } else {
        let set: BTreeSet<u64> = pending.into_iter().chain(last).collect();
        dirty_sync_count += set.len() as u64;
        set.into_iter().collect()
    };
    fetch_into(runtime, &seeder, &rest, plan, &mut memory)?;
    let resumed_at_ns = monotonic_ns();
    if let Err(e) = runtime.block_on(seeder.close()) {
        tracing::warn!("closing the seeder: {e}");
    }
    let outcome = run_destination_app(plan, source, &mut memory, || Ok(()))?;
    Ok(Migrated {
        setup,
        total: outcome.complete_at.duration_since(started),
        resumed_at_ns,
        resumed_from_ops: outcome.resumed_from_ops,
        dirty_sync_count,
        rounds,
        destination: outcome.stats,
        integrity_failure: outcome.integrity_failure,
    })
}

/// Post-copy: suspend the source at once, resume on a userfaultfd region
/// whose faults fetch from the stopped source, while `pull_workers`
/// threads install every chunk in the background.
fn postcopy(
    plan: &CellPlan,
    seeder: SharedSeeder,
    runtime: &Runtime,
    source: &[u8],
    started: Instant,
) -> Result<Migrated, String> {
    runtime
        .block_on(seeder.track())
        .map_err(|e| format!("the seeder's Track: {e}"))?;
    let remote: backends::SharedBackend = Arc::new(SeederReads(seeder.clone()));
    let blocking = || backends::BlockingBackend::new(remote.clone(), runtime.handle().clone());
    let config = uffd::UffdConfig::new(source.len(), plan.chunk_bytes as usize);
    let mut region = uffd::UffdRegion::open(config, blocking())
        .map_err(|e| format!("opening the userfaultfd region: {e}"))?;
    let setup = started.elapsed();
    runtime
        .block_on(seeder.sync())
        .map_err(|e| format!("the seeder's Sync: {e}"))?;
    let resumed_at_ns = monotonic_ns();
    let pull = region
        .start_background_pull(blocking(), plan.pull_workers)
        .map_err(|e| e.to_string())?;
    let outcome = run_destination_app(plan, source, region.as_mut_slice(), || {
        while !pull.finished() {
            std::thread::sleep(Duration::from_millis(1));
        }
        match pull.error() {
            Some(e) => Err(format!("the background pull: {e}")),
            None => Ok(()),
        }
    })?;
    if let Some(e) = region.error() {
        return Err(format!("the fault handler: {e}"));
    }
    drop(region);
    if let Err(e) = runtime.block_on(seeder.close()) {
        tracing::warn!("closing the seeder: {e}");
    }
    Ok(Migrated {
        setup,
        total: outcome.complete_at.duration_since(started),
        resumed_at_ns,
        resumed_from_ops: outcome.resumed_from_ops,
        dirty_sync_count: 0,
        rounds: 0,
        destination: outcome.stats,
        integrity_failure: outcome.integrity_failure,
    })
}

/// The seeder's reads as a read-only backend, for the userfaultfd region.
#[derive(Debug)]
struct SeederReads(SharedSeeder);

#[async_trait::async_trait]
impl backends::Backend for SeederReads {
    async fn read_at(&self, buf: &mut [u8], offset: u64) -> backends::Result<usize> {
        self.0.read_at(buf, offset).await
    }
    async fn write_at(&self, _: &[u8], _: u64) -> backends::Result<()> {
        Err(backends::BackendError::Remote(
            "a post-copy destination never writes to the source".into(),
        ))
    }
    async fn size(&self) -> backends::Result<u64> {
        self.0.size().await
    }
    async fn sync(&self) -> backends::Result<()> {
        Ok(())
    }
}

/// Reads the chunks at `offsets` from the seeder into `memory`, with
/// `pull_workers` reads in flight; returns the bytes moved.
fn fetch_into(
    runtime: &Runtime,
    seeder: &SharedSeeder,
    offsets: &[u64],
    plan: &CellPlan,
    memory: &mut [u8],
) -> Result<u64, String> {
    let size = memory.len() as u64;
    let chunk = plan.chunk_bytes;
    runtime.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        let mut queue = offsets.iter().copied();
        let mut moved = 0u64;
        loop {
            while tasks.len() < plan.pull_workers {
                let Some(offset) = queue.next() else { break };
                let seeder = seeder.clone();
                let len = chunk.min(size - offset) as usize;
                tasks.spawn(async move {
                    let mut buf = vec![0u8; len];
                    let n = seeder.read_at(&mut buf, offset).await;
                    (offset, buf, n)
                });
            }
            let Some(joined) = tasks.join_next().await else {
                return Ok(moved);
            };
            let (offset, buf, n) = joined.map_err(|e| format!("a chunk read task: {e}"))?;
            let n = n.map_err(|e| format!("reading the chunk at {offset}: {e}"))?;
            if n != buf.len() {
                return Err(format!(
                    "the chunk at {offset} came back short: {n} of {} bytes",
                    buf.len()
                ));
            }
            memory[offset as usize..offset as usize + n].copy_from_slice(&buf);
            moved += n as u64;
        }
    })
}

/// The application on the destination, and the check of its bytes.
struct DestinationOutcome {
    stats: RunStats,
    resumed_from_ops: u64,
    complete_at: Instant,
    integrity_failure: Option<String>,
}

/// Resumes the application on `mem` (from the state it carried) while
/// `wait_complete` waits for the last byte on this thread; lets it run
/// `plan.tail` longer, stops it, and checks the region against the replay
/// of every op it and the source did.
fn run_destination_app(
    plan: &CellPlan,
    source: &[u8],
    mem: &mut [u8],
    wait_complete: impl FnOnce() -> Result<(), String>,
) -> Result<DestinationOutcome, String> {
    let stop = AtomicBool::new(false);
    let (run, waited) = std::thread::scope(|scope| {
        let stop = &stop;
        let app_thread = scope.spawn(move || -> Result<(u64, RunStats, &mut [u8]), String> {
            let mut app = App::resume(plan.app, source, mem).map_err(|e| e.to_string())?;
            let from = app.state().ops;
            let stats = app.run(mem, None, stop).map_err(|e| e.to_string())?;
            Ok((from, stats, mem))
        });
        let waited = wait_complete().map(|()| Instant::now());
        if waited.is_ok() {
            std::thread::sleep(plan.tail);
        }
        stop.store(true, Ordering::Relaxed);
        let run = app_thread
            .join()
            .unwrap_or_else(|_| Err("the destination's application panicked".into()));
        (run, waited)
    });
    let complete_at = waited?;
    let (resumed_from_ops, stats, mem) = run?;
    let expected = Versions::replay(&plan.app, stats.ops).expected_data_sha256(&plan.app, source);
    let integrity_failure = if stats.check_failures > 0 {
        Some(format!(
            "the application's checks on the destination failed {} times",
            stats.check_failures
        ))
    } else if data_sha256(mem) != expected {
        Some(format!(
            "the destination's pages 1.. differ from the source's bytes with all {} ops applied",
            stats.ops
        ))
    } else {
        None
    };
    debug_assert!(mem.len() % PAGE == 0);
    Ok(DestinationOutcome {
        stats,
        resumed_from_ops,
        complete_at,
        integrity_failure,
    })
}
