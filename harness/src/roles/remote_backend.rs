//! `harness role remote-backend`: serves the source region's backend
//! service over any transport (`jsonl`, `grpc`, `frpc`, `tarpc`, `raw`), or
//! as an NBD export (`nbd`), on a TCP listener until told to stop. Region cells across namespaces and the
//! `transport-sweep` scenario run one per cell in the `src` namespace.
//!
//! Its `stopped` event reports what the server carried, the CPU seconds
//! the process used while serving (counted from `ready`, so generating and
//! hashing the region is not charged to the transport), and the SHA-256 of
//! the store after the server stopped, so the runner can check that a
//! cell's writes arrived.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use backends::SharedBackend;
use tokio_util::sync::CancellationToken;
use transports::TransportConfig;

use super::protocol::{emit, run_reporting, wait_for_stop, RoleEvent};
use crate::remote::{serve_wire, Wire};
use crate::source::SourceImage;

/// The role's arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct RemoteBackendArgs {
    /// The wire: jsonl, grpc, frpc, tarpc, raw, or nbd (one export named
    /// `region`).
    #[arg(long, default_value = "frpc")]
    pub transport: Wire,
    /// Address to listen on (port 0 picks one; the role reports it).
    #[arg(long)]
    pub listen: SocketAddr,
    /// Region size in bytes.
    #[arg(long)]
    pub size: u64,
    /// Seed of the region's content (the runner derives the same bytes).
    #[arg(long)]
    pub seed: u64,
    /// Calls one connection handles at once before it pushes back.
    #[arg(long, default_value_t = transports::server::DEFAULT_MAX_IN_FLIGHT)]
    pub max_in_flight: usize,
}

/// The transport settings both sides of a sweep cell use.
pub fn transport_config(max_in_flight: usize, connections: usize) -> TransportConfig {
    TransportConfig {
        connections,
        max_in_flight,
        // Short: the client hangs up before the server is stopped, so
        // lingering only delays a server whose client died.
        linger: Duration::from_secs(2),
        ..TransportConfig::default()
    }
}

/// Runs the role; reports a failure as an `error` event as well.
pub fn run(args: RemoteBackendArgs) -> anyhow::Result<()> {
    run_reporting(|| serve(args))
}

fn serve(args: RemoteBackendArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("remote-backend")
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
    let config = transport_config(args.max_in_flight, 1);
    let server = runtime.spawn(serve_wire(
        args.transport,
        listener,
        backend,
        config,
        shutdown.clone(),
    ));
    let cpu_at_ready = crate::host::process_cpu_seconds();
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
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("serving {}", args.transport))?;
    let cpu_s = crate::host::process_cpu_seconds() - cpu_at_ready;
    emit(&RoleEvent::Stopped {
        serve: stats,
        cpu_s,
        store_sha256: Some(crate::source::sha256_hex(&image.bytes())),
    })?;
    Ok(())
}
