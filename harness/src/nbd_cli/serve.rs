//! `harness nbd serve`: binding, serving until a signal, printing the totals.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use nbd::{Listener, ListenerStats, Server, ServerLimits};
use nix::sys::signal::{SigSet, Signal};

use super::size::human_size;
use super::spec::build_exports;
use super::url::{tcp_uri, unix_uri};
use super::ServeArgs;

/// Where `serve` listens, once bound.
enum Bound {
    Tcp(tokio::net::TcpListener, std::net::SocketAddr),
    Unix(tokio::net::UnixListener, PathBuf),
}

pub(super) fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let exports = build_exports(&args.exports, args.read_only)?;
    let server = Server::new(exports, ServerLimits::default()).context("building the server")?;
    // Blocked before the runtime starts so every thread inherits the mask
    // and the signals queue for the one thread that waits for them.
    let signals = signal_set();
    signals
        .thread_block()
        .context("blocking SIGINT and SIGTERM")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let stop = wait_for_signals(signals)?;
    runtime.block_on(async move {
        let bound = match &args.unix {
            Some(path) => bind_unix(path).await?,
            None => {
                let listener = tokio::net::TcpListener::bind(args.listen.as_str())
                    .await
                    .with_context(|| format!("listening on {}", args.listen))?;
                let addr = listener
                    .local_addr()
                    .context("reading the listener's address")?;
                Bound::Tcp(listener, addr)
            }
        };
        let mode = if args.read_only {
            "read-only"
        } else {
            "read-write"
        };
        match &bound {
            Bound::Tcp(_, addr) => println!("listening on {addr}"),
            Bound::Unix(_, path) => println!("listening on {}", path.display()),
        }
        for export in server.exports() {
            let uri = match &bound {
                Bound::Tcp(_, addr) => {
                    tcp_uri(&addr.ip().to_string(), addr.port(), Some(&export.name))
                }
                Bound::Unix(_, path) => unix_uri(path, Some(&export.name)),
            };
            let size = export
                .backend
                .size()
                .await
                .with_context(|| format!("reading the size of export {:?}", export.name))?;
            println!(
                "export {uri}  {} ({size} bytes), {}, {mode}",
                human_size(size),
                export.description.as_deref().unwrap_or("")
            );
        }
        eprintln!("serving; Ctrl-C stops");
        let shutdown = async move {
            // A lost signal thread leaves no way to stop gracefully; keep
            // serving rather than stop for no reason.
            if stop.await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        let stats = match bound {
            Bound::Tcp(listener, _) => serve_on(&server, listener, shutdown).await,
            Bound::Unix(listener, path) => {
                let stats = serve_on(&server, listener, shutdown).await;
                if let Err(e) = std::fs::remove_file(&path) {
                    eprintln!("warning: could not remove socket {}: {e}", path.display());
                }
                stats
            }
        }?;
        println!(
            "stopped: {} connections ({} failed), {} requests, {} bytes read, {} bytes written",
            stats.connections, stats.failed, stats.requests, stats.bytes_read, stats.bytes_written
        );
        Ok(ExitCode::SUCCESS)
    })
}

async fn serve_on<L: Listener>(
    server: &Server,
    listener: L,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<ListenerStats> {
    server
        .serve_listener(listener, shutdown)
        .await
        .context("serving NBD")
}

/// Binds a Unix socket, replacing a socket file nobody listens on.
async fn bind_unix(path: &Path) -> anyhow::Result<Bound> {
    use std::os::unix::fs::FileTypeExt as _;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        anyhow::ensure!(
            meta.file_type().is_socket(),
            "{} exists and is not a socket; choose another --unix path",
            path.display()
        );
        match tokio::net::UnixStream::connect(path).await {
            Ok(_) => anyhow::bail!(
                "a server already listens on {}; stop it or choose another --unix path",
                path.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                std::fs::remove_file(path)
                    .with_context(|| format!("removing stale socket {}", path.display()))?;
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("probing existing socket {}", path.display()))
            }
        }
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("listening on Unix socket {}", path.display()))?;
    Ok(Bound::Unix(listener, path.to_path_buf()))
}

fn signal_set() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set
}

/// Waits for the (blocked) signals on a thread of its own: the first one
/// resolves the returned receiver, a second one exits the process at once.
fn wait_for_signals(set: SigSet) -> anyhow::Result<tokio::sync::oneshot::Receiver<Signal>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("nbd-signals".into())
        .spawn(move || {
            let mut tx = Some(tx);
            loop {
                match set.wait() {
                    Ok(signal) => match tx.take() {
                        Some(tx) => {
                            eprintln!(
                                "{signal}: stopping (open connections finish their requests; \
                                 again to exit now)"
                            );
                            let _ = tx.send(signal);
                        }
                        None => {
                            eprintln!("{signal} again: exiting now");
                            std::process::exit(130);
                        }
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "waiting for signals failed");
                        return;
                    }
                }
            }
        })
        .context("starting the signal thread")?;
    Ok(rx)
}
