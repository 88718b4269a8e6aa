//! `harness role migration-source`: the source host of a `downtime` cell.
//! It runs the migrating application on its region (a [`migration::Seeder`]'s
//! mount over the seeded pattern) and serves the seeder service over a
//! transport until told to stop. Every strategy is driven from the
//! destination: `Track`, `Dirty` rounds, `Sync` (which suspends the
//! application here) and `ReadAt`.
//!
//! Its `source_stopped` event reports the application's run (ops, checks,
//! largest gap between ticks), when `Sync` suspended it (CLOCK_MONOTONIC,
//! comparable with the runner's clock on one host), what the seeder
//! served, and the process's CPU seconds from `ready`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use backends::MemoryBackend;
use migration::{AppControl, AppGate, Seeder, SeederOptions};
use transports::{TransportConfig, TransportKind};

use super::protocol::{emit, run_reporting, wait_for_stop, RoleEvent, SourceReport};
use crate::downtime::app::{monotonic_ns, App, AppSpec, DirtyPattern, PAGE};
use crate::source::SourceImage;

/// The role's arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct MigrationSourceArgs {
    /// The wire: jsonl, grpc, frpc or tarpc.
    #[arg(long, default_value = "frpc")]
    pub transport: TransportKind,
    /// Address to listen on (port 0 picks one; the role reports it).
    #[arg(long)]
    pub listen: SocketAddr,
    /// Region size in bytes (a multiple of 4096).
    #[arg(long)]
    pub size: u64,
    /// Seed of the region's content.
    #[arg(long)]
    pub seed: u64,
    /// Seed of the application's writes (the destination replays them).
    #[arg(long)]
    pub app_seed: u64,
    /// Bytes per tracked chunk (a power of two; the destination's too).
    #[arg(long)]
    pub chunk_bytes: u64,
    /// Pages the application writes per second.
    #[arg(long)]
    pub dirty_rate: u64,
    /// Where the application's writes go.
    #[arg(long, value_enum, default_value_t = DirtyPattern::Uniform)]
    pub pattern: DirtyPattern,
}

/// The seeder's hook into the application: the gate, and when `Sync`
/// stopped it.
#[derive(Debug, Default)]
struct TimedGate {
    gate: AppGate,
    suspended_at_ns: AtomicU64,
}

impl AppControl for TimedGate {
    fn suspend(&self) -> Result<(), String> {
        self.gate.suspend()?;
        self.suspended_at_ns.store(monotonic_ns(), Ordering::SeqCst);
        Ok(())
    }

    fn resume(&self) {
        self.suspended_at_ns.store(0, Ordering::SeqCst);
        self.gate.resume();
    }
}

/// Runs the role; reports a failure as an `error` event as well.
pub fn run(args: MigrationSourceArgs) -> anyhow::Result<()> {
    run_reporting(|| serve(args))
}

fn serve(args: MigrationSourceArgs) -> anyhow::Result<()> {
    if args.size == 0 || !args.size.is_multiple_of(PAGE as u64) {
        anyhow::bail!("--size {} is not a positive multiple of {PAGE}", args.size);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("migration-src")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let image = SourceImage::pattern(args.size, args.seed);
    let source = image.bytes().to_vec();
    let storage = Arc::new(MemoryBackend::from_bytes(source.clone()));
    let control = Arc::new(TimedGate::default());
    let seeder = Seeder::open(
        storage,
        SeederOptions::new(args.chunk_bytes),
        control.clone(),
        runtime.handle(),
    )
    .context("mounting the source region")?;
    let spec = AppSpec {
        seed: args.app_seed,
        pages: args.size / PAGE as u64,
        dirty_rate: args.dirty_rate,
        pattern: args.pattern,
    };
    let mut map = seeder.region().map().context("mapping the source region")?;
    let mut app = App::start(spec, &source)?;
    let stop = AtomicBool::new(false);

    let config = TransportConfig {
        linger: Duration::from_secs(2),
        ..TransportConfig::default()
    };
    let server = seeder
        .serve(args.transport, args.listen, config)
        .with_context(|| format!("serving the seeder over {}", args.transport))?;

    let (app_run, waited) = std::thread::scope(|scope| {
        let mem = map.as_mut_slice();
        let runner = scope.spawn(|| match mem {
            Some(mem) => app
                .run(mem, Some(&control.gate), &stop)
                .map_err(anyhow::Error::from),
            None => Err(anyhow::anyhow!("the source region is mapped read-only")),
        });
        let cpu_at_ready = crate::host::process_cpu_seconds();
        let waited = emit(&RoleEvent::Ready {
            addr: server.addr().to_string(),
            size: args.size,
            sha256: image.sha256.clone(),
        })
        .and_then(|()| wait_for_stop())
        .map(|()| cpu_at_ready);
        stop.store(true, Ordering::Relaxed);
        let app_run = runner
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the application thread panicked")));
        (app_run, waited)
    });
    let cpu_at_ready = waited?;
    let app_run = app_run?;
    drop(map);
    let stats = seeder.stats();
    let served = server.stop().context("stopping the seeder server")?;
    seeder.close().context("taking the source region down")?;
    let suspended_at_ns = control.suspended_at_ns.load(Ordering::SeqCst);
    emit(&RoleEvent::SourceStopped {
        report: SourceReport {
            app: app_run,
            suspended_at_ns: (suspended_at_ns != 0).then_some(suspended_at_ns),
            bytes_read: stats.bytes_read,
            rounds: stats.rounds,
            syncs: stats.syncs,
            sync_flush_ms: stats.last_sync_flush.map(|d| d.as_secs_f64() * 1e3),
            closed: stats.closed,
            requests: served.requests,
            cpu_s: crate::host::process_cpu_seconds() - cpu_at_ready,
        },
    })?;
    Ok(())
}
