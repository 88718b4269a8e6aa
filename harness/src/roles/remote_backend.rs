//! `harness role remote-backend`: serves the source region over `frpc` on a
//! TCP listener until told to stop.

use std::net::SocketAddr;

use anyhow::Context as _;
use backends::SharedBackend;
use tokio_util::sync::CancellationToken;
use transports::server::{ServeConfig, ServeStats};

use super::protocol::{emit, run_reporting, wait_for_stop, RoleEvent, ServeCounters};
use crate::source::SourceImage;

/// The role's arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct RemoteBackendArgs {
    /// Address to listen on (port 0 picks one; the role reports it).
    #[arg(long)]
    pub listen: SocketAddr,
    /// Region size in bytes.
    #[arg(long)]
    pub size: u64,
    /// Seed of the region's content (the runner derives the same bytes).
    #[arg(long)]
    pub seed: u64,
}

fn counters(s: ServeStats) -> ServeCounters {
    ServeCounters {
        requests: s.requests,
        bytes_received: s.bytes_received,
        bytes_sent: s.bytes_sent,
        peak_in_flight: s.peak_in_flight,
    }
}

/// Runs the role; reports a failure as an `error` event as well.
pub fn run(args: RemoteBackendArgs) -> anyhow::Result<()> {
    run_reporting(|| serve(args))
}

fn serve(args: RemoteBackendArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let image = SourceImage::new(args.size, args.seed);
    let backend: SharedBackend = image.backend.clone();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(args.listen))
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let shutdown = CancellationToken::new();
    let server = runtime.spawn(transports::server::serve_listener(
        listener,
        backend,
        ServeConfig::default(),
        shutdown.clone(),
    ));
    emit(&RoleEvent::Ready {
        addr: addr.to_string(),
        size: args.size,
        sha256: image.sha256.clone(),
    })?;

    // Commands arrive on stdin; its end (the runner went away) means stop.
    wait_for_stop()?;
    shutdown.cancel();
    let stats = runtime
        .block_on(server)
        .context("the server task failed")?
        .context("serving")?;
    emit(&RoleEvent::Stopped {
        serve: counters(stats),
        cpu_s: crate::host::process_cpu_seconds(),
    })?;
    Ok(())
}
