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
//!
//! With `--chunk-bytes N` the store takes only whole, aligned chunks of N
//! bytes (thesis 3.5.2); `--chunking server` makes the role cut requests
//! into them itself, `--chunking client` leaves that to the client.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use backends::SharedBackend;
use tokio_util::sync::CancellationToken;
use transports::TransportConfig;

use super::protocol::{emit, run_reporting, wait_for_stop, RoleEvent};
use crate::remote::{serve_wire, StoreChunking, Wire};
use crate::scenario::ChunkingSide;
use crate::source::{Content, SourceImage};

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
    /// What the region holds: the seeded pattern, or a SQLite database
    /// for the `sqlite` workload.
    #[arg(long, value_enum, default_value = "pattern")]
    pub content: Content,
    /// Calls one connection handles at once before it pushes back.
    #[arg(long, default_value_t = transports::server::DEFAULT_MAX_IN_FLIGHT)]
    pub max_in_flight: usize,
    /// Who cuts requests into the store's chunks: `server` (this role),
    /// `client` (requests that are not whole chunks fail), or `none` (the
    /// store takes any access).
    #[arg(long, value_enum, default_value_t = ChunkingSide::Unchunked)]
    pub chunking: ChunkingSide,
    /// The store's chunk size in bytes, when it takes only whole chunks.
    #[arg(long)]
    pub chunk_bytes: Option<u64>,
}

impl RemoteBackendArgs {
    /// How the store is served, or why the arguments do not say.
    pub fn store_chunking(&self) -> Result<StoreChunking, String> {
        match (self.chunking, self.chunk_bytes) {
            (ChunkingSide::Unchunked, None) => Ok(StoreChunking::Any),
            (ChunkingSide::Unchunked, Some(n)) => Err(format!(
                "--chunk-bytes {n} needs --chunking client or server"
            )),
            (side, None) => Err(format!("--chunking {side} needs --chunk-bytes")),
            (_, Some(n)) if n == 0 || n > self.size => Err(format!(
                "--chunk-bytes {n} is not in 1..={} (the region's size)",
                self.size
            )),
            (side, Some(n)) => Ok(StoreChunking::of(side, n)),
        }
    }
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
    let chunking = args.store_chunking().map_err(anyhow::Error::msg)?;
    let image = SourceImage::new(args.size, args.seed, args.content).with_context(|| {
        format!(
            "making the {} source of {} bytes",
            args.content.name(),
            args.size
        )
    })?;
    let backend: SharedBackend = chunking
        .serve(image.backend.clone(), args.size)
        .map_err(anyhow::Error::msg)?;
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: RemoteBackendArgs,
    }

    fn parse(extra: &[&str]) -> Result<StoreChunking, String> {
        let base = [
            "role",
            "--listen",
            "127.0.0.1:0",
            "--size",
            "65536",
            "--seed",
            "1",
        ];
        let cli = Cli::try_parse_from(base.iter().chain(extra)).map_err(|e| e.to_string())?;
        cli.args.store_chunking()
    }

    #[test]
    fn chunking_arguments_say_who_cuts_and_refuse_half_a_setting() {
        assert_eq!(parse(&[]), Ok(StoreChunking::Any));
        assert_eq!(
            parse(&["--chunking", "server", "--chunk-bytes", "4096"]),
            Ok(StoreChunking::ServerCuts { chunk_bytes: 4096 })
        );
        assert_eq!(
            parse(&["--chunking", "client", "--chunk-bytes", "4096"]),
            Ok(StoreChunking::ClientCuts { chunk_bytes: 4096 })
        );
        let half = parse(&["--chunking", "server"]).unwrap_err();
        assert!(half.contains("--chunk-bytes"), "{half}");
        let half = parse(&["--chunk-bytes", "4096"]).unwrap_err();
        assert!(half.contains("--chunking"), "{half}");
        let big = parse(&["--chunking", "client", "--chunk-bytes", "131072"]).unwrap_err();
        assert!(big.contains("131072") && big.contains("65536"), "{big}");
        let unknown = parse(&["--chunking", "middle", "--chunk-bytes", "4096"]).unwrap_err();
        assert!(
            unknown.contains("middle") && unknown.contains("server"),
            "{unknown}"
        );
    }
}
