//! The source side of a cell and the link to it.
//!
//! The source's bytes are served by the remote backend service over one of
//! the transports (`frpc` unless the cell says otherwise); the destination
//! holds a client that is itself a [`backends::Backend`]. The emulation mode
//! decides what sits in between: a delay line on every connection (`inproc`,
//! through a loopback [`netem::DelayProxy`]), a sleep inside every call on
//! the serving side (`per-call`), or real TCP between network namespaces
//! through the packet relay or kernel netem, with the server as a role
//! process in `src` (`userspace-link`, `kernel-netem`). Each cell gets a
//! fresh link, so no cell inherits another's connection state (congestion
//! window, queues).
//!
//! The server serves a store of the source's bytes, which may take only
//! whole chunks ([`StoreChunking`], thesis 3.5.2): then either the client
//! cuts requests before the wire, or the server cuts them next to the
//! store. A cell that writes gets a store of its own, whose final contents
//! [`RemoteLink::close`] reports as a SHA-256.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backends::{Backend, BackendError, SharedBackend};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use transports::{Client, Services, TransportKind};

use crate::emulation::Emulation;
use crate::network::{symmetric_link, Namespaces, ShapedLink};
use crate::roles::child::RoleProcess;
use crate::roles::protocol::{RoleEvent, ServeCounters};
use crate::roles::remote_backend::transport_config;
use crate::scenario::ChunkingSide;
use crate::source::SourceImage;

/// What the source is served over: one of the RPC transports, or NBD (for
/// an NBD client across the link).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    Rpc(TransportKind),
    Nbd,
}

/// The name of the NBD server's one export.
pub const NBD_EXPORT: &str = "region";

impl Wire {
    pub fn name(self) -> &'static str {
        match self {
            Wire::Rpc(kind) => kind.name(),
            Wire::Nbd => "nbd",
        }
    }
}

impl fmt::Display for Wire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Wire {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "nbd" {
            return Ok(Wire::Nbd);
        }
        s.parse::<TransportKind>()
            .map(Wire::Rpc)
            .map_err(|_| format!("unknown wire {s:?}; allowed: jsonl, grpc, frpc, tarpc, raw, nbd"))
    }
}

/// How the source's store takes accesses, and who cuts requests to fit
/// (thesis 3.5.2: a tape drive, or any backend that must see fixed blocks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoreChunking {
    /// The store takes any offset and length.
    #[default]
    Any,
    /// The store takes only whole, aligned chunks and the server passes
    /// requests through unchanged: the client must cut them, and a request
    /// that is not whole chunks fails.
    ClientCuts { chunk_bytes: u64 },
    /// The same store, and the server cuts every request into its chunks,
    /// read-modify-writing partial ones next to the data.
    ServerCuts { chunk_bytes: u64 },
}

impl StoreChunking {
    /// The store a cell with chunking `side` and chunks of `chunk_bytes`
    /// talks to.
    pub fn of(side: ChunkingSide, chunk_bytes: u64) -> Self {
        match side {
            ChunkingSide::Unchunked => StoreChunking::Any,
            ChunkingSide::Client => StoreChunking::ClientCuts { chunk_bytes },
            ChunkingSide::Server => StoreChunking::ServerCuts { chunk_bytes },
        }
    }

    /// What the server serves over the wire in front of `store` (of `size`
    /// bytes). Both chunked variants put the same whole-chunk guard on the
    /// store, so they differ only in where requests are cut.
    pub fn serve(self, store: SharedBackend, size: u64) -> Result<SharedBackend, String> {
        let geometry = |chunk_bytes: u64| {
            chunks::ChunkGeometry::new(chunk_bytes, size)
                .map_err(|e| format!("chunks of the source's store: {e}"))
        };
        Ok(match self {
            StoreChunking::Any => store,
            StoreChunking::ClientCuts { chunk_bytes } => Arc::new(
                chunks::ChunkedReadWriterAt::with_geometry(store, geometry(chunk_bytes)?),
            ),
            StoreChunking::ServerCuts { chunk_bytes } => {
                let g = geometry(chunk_bytes)?;
                let guarded = Arc::new(chunks::ChunkedReadWriterAt::with_geometry(store, g));
                Arc::new(chunks::ArbitraryReadWriterAt::with_geometry(guarded, g))
            }
        })
    }

    /// The `remote-backend` role's arguments that make it serve this way.
    pub fn role_args(self) -> Vec<String> {
        let (side, chunk_bytes) = match self {
            StoreChunking::Any => return Vec::new(),
            StoreChunking::ClientCuts { chunk_bytes } => ("client", chunk_bytes),
            StoreChunking::ServerCuts { chunk_bytes } => ("server", chunk_bytes),
        };
        vec![
            "--chunking".into(),
            side.into(),
            "--chunk-bytes".into(),
            chunk_bytes.to_string(),
        ]
    }
}

/// The link between a cell's destination and its source.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LinkShape {
    pub rtt: Duration,
    /// Each direction's rate limit, bits per second; `None` for none.
    pub rate_bps: Option<u64>,
}

/// What the source's server serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ServeOptions {
    pub chunking: StoreChunking,
    /// The cell writes: serve a store of its own (the run's source image is
    /// shared by every cell of its size) and report its final SHA-256.
    pub writable: bool,
}

/// The task serving one wire until `shutdown`; resolves to what it carried
/// (NBD counts payload bytes only).
pub async fn serve_wire(
    wire: Wire,
    listener: tokio::net::TcpListener,
    served: SharedBackend,
    config: transports::TransportConfig,
    shutdown: CancellationToken,
) -> Result<ServeCounters, String> {
    match wire {
        Wire::Rpc(kind) => kind
            .serve(listener, Services::backend(served), config, shutdown)
            .await
            .map(|s| ServeCounters {
                requests: s.requests,
                bytes_received: s.bytes_received,
                bytes_sent: s.bytes_sent,
                peak_in_flight: s.peak_in_flight,
            })
            .map_err(|e| e.to_string()),
        Wire::Nbd => {
            let server = nbd::Server::new(
                vec![nbd::Export::new(NBD_EXPORT, served)],
                nbd::ServerLimits::default(),
            )
            .map_err(|e| e.to_string())?;
            server
                .serve_listener(listener, shutdown.cancelled_owned())
                .await
                .map(|s| ServeCounters {
                    requests: s.requests,
                    bytes_received: s.bytes_written,
                    bytes_sent: s.bytes_read,
                    peak_in_flight: 0,
                })
                .map_err(|e| e.to_string())
        }
    }
}

/// Who serves the source, and what carries the bytes.
#[derive(Debug)]
enum Server {
    /// A task of this process on a loopback listener, reached directly or
    /// through a delay proxy.
    Task {
        task: JoinHandle<Result<ServeCounters, String>>,
        shutdown: CancellationToken,
        proxy: Option<netem::DelayProxy>,
        /// The cell's own store, when it writes.
        own_store: Option<Arc<backends::MemoryBackend>>,
    },
    /// A `remote-backend` role process in the `src` namespace, reached
    /// across the shaped link.
    Role {
        role: Box<RoleProcess>,
        link: Box<ShapedLink>,
    },
}

/// A running link: the destination's client and the server behind it.
#[derive(Debug)]
pub struct RemoteLink {
    /// The RPC client (none for the NBD wire, whose client dials itself).
    client: Option<Client>,
    guarded: Option<SharedBackend>,
    server: Server,
    /// Where a destination connects (through the proxy, when there is one).
    dial: SocketAddr,
    wire: Wire,
    runtime: Handle,
}

/// What a closed link leaves: what the server did and what its store holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// Requests the server answered.
    pub requests: u64,
    /// SHA-256 of the store after the server stopped: always from a role,
    /// in process only for a writable link (a read-only one serves the
    /// shared source image, whose hash is known).
    pub store_sha256: Option<String>,
}

/// How long a role may take to start serving (it generates the region).
const ROLE_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long one remote call may take before it fails: generous against
/// scheduling noise, yet bounded, so a link that stops answering turns into
/// a cell error instead of a fault that blocks the workload forever.
pub fn call_timeout(rtt: Duration) -> Duration {
    Duration::from_secs(10) + rtt * 4
}

/// Fails any call that takes longer than its limit.
#[derive(Debug)]
struct CallTimeout {
    inner: SharedBackend,
    limit: Duration,
}

impl CallTimeout {
    async fn bounded<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = backends::Result<T>>,
    ) -> backends::Result<T> {
        tokio::time::timeout(self.limit, call)
            .await
            .unwrap_or_else(|_| {
                Err(BackendError::Remote(format!(
                    "{what} got no answer within {:?}",
                    self.limit
                )))
            })
    }
}

#[async_trait]
impl Backend for CallTimeout {
    async fn read_at(&self, buf: &mut [u8], offset: u64) -> backends::Result<usize> {
        self.bounded("ReadAt", self.inner.read_at(buf, offset))
            .await
    }
    async fn write_at(&self, data: &[u8], offset: u64) -> backends::Result<()> {
        self.bounded("WriteAt", self.inner.write_at(data, offset))
            .await
    }
    async fn size(&self) -> backends::Result<u64> {
        self.bounded("Size", self.inner.size()).await
    }
    async fn sync(&self) -> backends::Result<()> {
        self.bounded("Sync", self.inner.sync()).await
    }
}

/// Transport settings of a region cell's link, both sides.
fn link_config() -> transports::TransportConfig {
    let mut config = transport_config(transports::server::DEFAULT_MAX_IN_FLIGHT, 1);
    // [`CallTimeout`] bounds every call from outside, with a limit that
    // grows with the RTT.
    config.deadline = None;
    config
}

impl RemoteLink {
    /// Serves `image` over `wire` as `serve` says and connects a client to
    /// it across `emulation` shaped as `shape` (a rate only the
    /// packet-level modes can give; `net` holds their namespaces). Blocks
    /// on `runtime`: call it from outside the runtime. Across namespaces
    /// the connection is opened by a task of `runtime`, whose threads must
    /// live in `dst` (the runner builds it so).
    pub fn open(
        image: &SourceImage,
        wire: Wire,
        serve: ServeOptions,
        emulation: Emulation,
        net: Option<&Namespaces>,
        shape: LinkShape,
        runtime: &Handle,
    ) -> Result<Self, String> {
        let LinkShape { rtt, rate_bps } = shape;
        if let Emulation::UserspaceLink | Emulation::KernelNetem = emulation {
            let net = net.ok_or("the packet-level modes need the run's namespaces")?;
            // The role makes its own store from the seed.
            return Self::open_namespaced(net, image, wire, serve.chunking, shape, runtime);
        }
        if rate_bps.is_some() {
            return Err(format!(
                "a rate-limited link needs a packet-level emulation mode, not `{emulation}`"
            ));
        }
        let own_store = serve
            .writable
            .then(|| Arc::new(backends::MemoryBackend::from_bytes(image.bytes().to_vec())));
        let store: SharedBackend = match &own_store {
            Some(own) => own.clone(),
            None => image.backend.clone(),
        };
        let size = image.bytes().len() as u64;
        let served = serve.chunking.serve(store, size)?;
        match emulation {
            Emulation::PerCall => {
                // The delay stands for the network, so it is outermost.
                let delayed: SharedBackend = Arc::new(netem::PerCallDelay::new(served, rtt));
                Self::open_in_process(delayed, own_store, wire, rtt, Duration::ZERO, runtime)
            }
            _ => Self::open_in_process(served, own_store, wire, rtt, rtt / 2, runtime),
        }
    }

    /// A server task on a loopback listener; the client reaches it directly,
    /// or through a delay proxy of `one_way` each way when that is not zero.
    fn open_in_process(
        served: SharedBackend,
        own_store: Option<Arc<backends::MemoryBackend>>,
        wire: Wire,
        rtt: Duration,
        one_way: Duration,
        runtime: &Handle,
    ) -> Result<Self, String> {
        let (task, shutdown, proxy, dial) = runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
                .await
                .map_err(|e| format!("binding a loopback listener: {e}"))?;
            let addr = listener
                .local_addr()
                .map_err(|e| format!("reading the listener's address: {e}"))?;
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(serve_wire(
                wire,
                listener,
                served,
                link_config(),
                shutdown.clone(),
            ));
            let proxy = if one_way.is_zero() {
                None
            } else {
                Some(
                    netem::DelayProxy::start(addr, one_way)
                        .await
                        .map_err(|e| e.to_string())?,
                )
            };
            let dial = proxy.as_ref().map_or(addr, netem::DelayProxy::addr);
            Ok::<_, String>((task, shutdown, proxy, dial))
        })?;
        let server = Server::Task {
            task,
            shutdown,
            proxy,
            own_store,
        };
        Self::connect(server, dial, wire, rtt, runtime)
    }

    /// Connects the RPC client (none for NBD) to a started server. The
    /// connection is made by a task, not polled here: across namespaces the
    /// runtime's threads are in `dst`, so the sockets they open are too.
    fn connect(
        server: Server,
        dial: SocketAddr,
        wire: Wire,
        rtt: Duration,
        runtime: &Handle,
    ) -> Result<Self, String> {
        let client = match wire {
            Wire::Rpc(kind) => Some(
                runtime
                    .block_on(
                        runtime.spawn(async move { kind.connect(dial, &link_config()).await }),
                    )
                    .map_err(|e| format!("connecting to the source: {e}"))?
                    .map_err(|e| format!("connecting to the source: {e}"))?,
            ),
            Wire::Nbd => None,
        };
        let guarded = client.as_ref().map(|c| {
            Arc::new(CallTimeout {
                inner: c.backend(),
                limit: call_timeout(rtt),
            }) as SharedBackend
        });
        Ok(RemoteLink {
            client,
            guarded,
            server,
            dial,
            wire,
            runtime: runtime.clone(),
        })
    }

    /// Starts the shaped link at `rtt`, a remote backend role serving
    /// `image` in the `src` namespace, and connects to it from `dst`.
    fn open_namespaced(
        net: &Namespaces,
        image: &SourceImage,
        wire: Wire,
        chunking: StoreChunking,
        shape: LinkShape,
        runtime: &Handle,
    ) -> Result<Self, String> {
        let LinkShape { rtt, rate_bps } = shape;
        let topo = &net.topology;
        let link = net.start_link(symmetric_link(rtt, Duration::ZERO, rate_bps, 0.0))?;

        let exe =
            std::env::current_exe().map_err(|e| format!("finding the harness binary: {e}"))?;
        let mut command = net.src.command(exe);
        command.args(["role", "remote-backend", "--transport", wire.name()]);
        command.arg("--listen");
        command.arg(format!("{}:0", topo.src_addr()));
        command.args(["--size", &image.bytes().len().to_string()]);
        command.args(["--seed", &image.seed.to_string()]);
        command.args(["--content", image.content.name()]);
        command.args(chunking.role_args());
        let mut role = RoleProcess::spawn("remote-backend", command).map_err(|e| e.to_string())?;
        let addr = match role
            .next_event(ROLE_READY_TIMEOUT)
            .map_err(|e| e.to_string())?
        {
            RoleEvent::Ready { addr, sha256, .. } if sha256 == image.sha256 => addr,
            RoleEvent::Ready { sha256, .. } => {
                return Err(format!(
                    "the remote backend role serves content {sha256}, expected {}",
                    image.sha256
                ))
            }
            other => {
                return Err(format!(
                    "the remote backend role sent {other:?} before `ready`"
                ))
            }
        };
        let addr: SocketAddr = addr
            .parse()
            .map_err(|e| format!("the remote backend role's address {addr:?}: {e}"))?;
        let server = Server::Role {
            role: Box::new(role),
            link: Box::new(link),
        };
        Self::connect(server, addr, wire, rtt, runtime)
    }

    /// The destination's view of the source over an RPC wire; every call
    /// is bounded by [`call_timeout`].
    pub fn client(&self) -> Result<SharedBackend, String> {
        self.guarded
            .clone()
            .ok_or_else(|| format!("the {} wire has no RPC client: dial it", self.wire))
    }

    /// Where the destination reaches the server (the delay proxy, where
    /// one stands in front of it), for clients in other processes.
    pub fn server_addr(&self) -> SocketAddr {
        self.dial
    }

    /// Opens a new TCP connection to the server, from the destination's
    /// side (a runtime task, so across namespaces it starts in `dst`).
    pub fn dial(&self) -> Result<tokio::net::TcpStream, String> {
        let addr = self.dial;
        self.runtime
            .block_on(self.runtime.spawn(async move {
                let stream = tokio::net::TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                Ok::<_, std::io::Error>(stream)
            }))
            .map_err(|e| format!("dialing the source at {addr}: {e}"))?
            .map_err(|e| format!("dialing the source at {addr}: {e}"))
    }

    /// Bytes that crossed the link so far, both directions: whole frames
    /// as the relay or the kernel counted them across namespaces, else the
    /// stream's bytes.
    pub fn transferred_bytes(&self) -> Result<u64, String> {
        match &self.server {
            Server::Role { link, .. } => link.transferred_bytes(),
            Server::Task {
                proxy: Some(proxy), ..
            } => Ok(proxy.transferred_bytes()),
            Server::Task { proxy: None, .. } => match &self.client {
                Some(client) => {
                    let s = client.stats();
                    Ok(s.bytes_sent + s.bytes_received)
                }
                None => Err(format!(
                    "bytes over an undelayed in-process {} link are not counted",
                    self.wire
                )),
            },
        }
    }

    /// The packet relay's departure error, where a relay carries the link.
    pub fn relay_departure_error(&self) -> Option<hdrhistogram::Histogram<u64>> {
        let Server::Role { link, .. } = &self.server else {
            return None;
        };
        let relay = link.relay()?;
        let stats = relay.stats();
        let mut h = stats.a_to_b.departure_error_ns;
        // Both directions were recorded with the same bounds.
        let _ = h.add(&stats.b_to_a.departure_error_ns);
        Some(h)
    }

    /// Closes the client and stops the server; returns what it served and
    /// what its store holds.
    pub async fn close(self) -> Result<Closed, String> {
        drop(self.guarded);
        drop(self.client);
        match self.server {
            Server::Task {
                task,
                shutdown,
                proxy,
                own_store,
            } => {
                shutdown.cancel();
                let served = tokio::time::timeout(Duration::from_secs(10), task).await;
                drop(proxy);
                match served {
                    Ok(Ok(Ok(stats))) => Ok(Closed {
                        requests: stats.requests,
                        // Hashed off the runtime's threads: a large store
                        // takes a while.
                        store_sha256: match own_store {
                            Some(store) => Some(
                                tokio::task::spawn_blocking(move || {
                                    crate::source::sha256_hex(&store.bytes())
                                })
                                .await
                                .map_err(|e| format!("hashing the source's store: {e}"))?,
                            ),
                            None => None,
                        },
                    }),
                    Ok(Ok(Err(e))) => Err(format!("the remote server failed: {e}")),
                    Ok(Err(e)) => Err(format!("the remote server task failed: {e}")),
                    Err(_) => Err(
                        "the remote server did not stop within 10 s of the client closing".into(),
                    ),
                }
            }
            Server::Role { role, link } => {
                // Stopping the role waits on a pipe: keep it off the runtime's threads.
                let stopped =
                    tokio::task::spawn_blocking(move || role.stop(Duration::from_secs(10)))
                        .await
                        .map_err(|e| format!("stopping the role: {e}"))?
                        .map_err(|e| e.to_string())?;
                link.stop()?;
                match stopped {
                    RoleEvent::Stopped {
                        serve,
                        store_sha256,
                        ..
                    } => Ok(Closed {
                        requests: serve.requests,
                        store_sha256,
                    }),
                    other => Err(format!("the remote backend role ended with {other:?}")),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::sha256_hex;

    /// A backend whose calls never complete.
    #[derive(Debug)]
    struct Silent;

    #[async_trait]
    impl Backend for Silent {
        async fn read_at(&self, _: &mut [u8], _: u64) -> backends::Result<usize> {
            std::future::pending().await
        }
        async fn write_at(&self, _: &[u8], _: u64) -> backends::Result<()> {
            std::future::pending().await
        }
        async fn size(&self) -> backends::Result<u64> {
            std::future::pending().await
        }
        async fn sync(&self) -> backends::Result<()> {
            std::future::pending().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_remote_becomes_an_error_not_a_hang() {
        let bounded = CallTimeout {
            inner: Arc::new(Silent),
            limit: call_timeout(Duration::from_millis(5)),
        };
        let mut buf = [0u8; 8];
        let err = bounded.read_at(&mut buf, 0).await.unwrap_err();
        assert!(err.to_string().contains("ReadAt got no answer"), "{err}");
        assert!(bounded.size().await.is_err());
    }

    #[test]
    fn every_mode_serves_the_source_intact() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let image = SourceImage::pattern(64 * 1024, 3);
        let bytes = image.bytes().to_vec();
        let cases = TransportKind::ALL.into_iter().flat_map(|kind| {
            [
                (kind, Emulation::Inproc, Duration::ZERO),
                (kind, Emulation::Inproc, Duration::from_millis(1)),
                (kind, Emulation::PerCall, Duration::from_millis(1)),
            ]
        });
        for (kind, mode, rtt) in cases {
            let link = RemoteLink::open(
                &image,
                Wire::Rpc(kind),
                ServeOptions::default(),
                mode,
                None,
                LinkShape {
                    rtt,
                    rate_bps: None,
                },
                rt.handle(),
            )
            .unwrap();
            let client = link.client().unwrap();
            let mut got = vec![0u8; bytes.len()];
            let start = std::time::Instant::now();
            rt.block_on(client.read_exact_at(&mut got, 0)).unwrap();
            assert!(
                start.elapsed() >= rtt,
                "{kind} {mode:?}: faster than one round trip"
            );
            assert_eq!(got, bytes, "{kind} {mode:?}");
            assert!(link.transferred_bytes().unwrap() > bytes.len() as u64);
            drop(client);
            let closed = rt.block_on(link.close()).unwrap();
            assert!(closed.requests >= 1, "{kind} {mode:?}: {closed:?}");
            assert_eq!(closed.store_sha256, None, "a read-only link hashes nothing");
        }
    }

    #[test]
    fn a_chunked_store_is_cut_by_the_client_or_by_the_server() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let image = SourceImage::pattern(64 * 1024, 5);
        let chunk = 16 * 1024;
        let open = |chunking| {
            let serve = ServeOptions {
                chunking,
                writable: true,
            };
            let mode = Emulation::Inproc;
            RemoteLink::open(
                &image,
                Wire::Rpc(TransportKind::Frpc),
                serve,
                mode,
                None,
                LinkShape::default(),
                rt.handle(),
            )
            .unwrap()
        };
        // A patch inside chunk 1: not a whole chunk.
        let patch = vec![0xA5u8; 100];
        let mut expected = image.bytes().to_vec();
        expected[20_000..20_100].copy_from_slice(&patch);

        let client_cuts = open(StoreChunking::ClientCuts { chunk_bytes: chunk });
        let remote = client_cuts.client().unwrap();
        let refused = rt.block_on(remote.write_at(&patch, 20_000)).unwrap_err();
        assert!(refused.to_string().contains("16384"), "{refused}");
        // Cut on this side, it passes: whole chunks only reach the wire.
        let cut = rt
            .block_on(chunks::ArbitraryReadWriterAt::new(remote.clone(), chunk))
            .unwrap();
        rt.block_on(cut.write_at(&patch, 20_000)).unwrap();
        drop((cut, remote));
        let closed = rt.block_on(client_cuts.close()).unwrap();
        assert_eq!(closed.store_sha256, Some(sha256_hex(&expected)));

        let server_cuts = open(StoreChunking::ServerCuts { chunk_bytes: chunk });
        let remote = server_cuts.client().unwrap();
        rt.block_on(remote.write_at(&patch, 20_000)).unwrap();
        let mut back = vec![0u8; 300];
        rt.block_on(remote.read_exact_at(&mut back, 19_900))
            .unwrap();
        assert_eq!(back, expected[19_900..20_200]);
        drop(remote);
        let closed = rt.block_on(server_cuts.close()).unwrap();
        assert_eq!(closed.store_sha256, Some(sha256_hex(&expected)));

        // The writes went to the cells' own stores, not the shared image.
        assert_eq!(sha256_hex(&image.bytes()), image.sha256);
    }

    #[test]
    fn chunking_becomes_the_roles_arguments() {
        assert!(StoreChunking::Any.role_args().is_empty());
        assert_eq!(
            StoreChunking::of(ChunkingSide::Server, 4096).role_args(),
            ["--chunking", "server", "--chunk-bytes", "4096"]
        );
        assert_eq!(
            StoreChunking::of(ChunkingSide::Client, 65536),
            StoreChunking::ClientCuts { chunk_bytes: 65536 }
        );
        assert_eq!(
            StoreChunking::of(ChunkingSide::Unchunked, 65536),
            StoreChunking::Any
        );
    }

    #[test]
    fn the_nbd_wire_serves_the_source_to_a_dialed_nbd_client() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let image = SourceImage::pattern(256 * 1024, 4);
        let rtt = Duration::from_millis(2);
        let link = RemoteLink::open(
            &image,
            Wire::Nbd,
            ServeOptions::default(),
            Emulation::Inproc,
            None,
            LinkShape {
                rtt,
                rate_bps: None,
            },
            rt.handle(),
        )
        .unwrap();
        assert!(link.client().unwrap_err().contains("dial"));
        let stream = link.dial().unwrap();
        let got = rt.block_on(async {
            let client = nbd::NbdClient::connect(stream, NBD_EXPORT).await.unwrap();
            let mut got = vec![0u8; image.bytes().len()];
            client.read_exact_at(&mut got, 0).await.unwrap();
            client.disconnect().await.unwrap();
            got
        });
        assert_eq!(got, &image.bytes()[..]);
        assert!(link.transferred_bytes().unwrap() > got.len() as u64);
        assert!(rt.block_on(link.close()).unwrap().requests >= 1);
    }

    #[test]
    fn wire_names_round_trip_and_unknown_ones_list_the_allowed() {
        for wire in TransportKind::ALL
            .map(Wire::Rpc)
            .into_iter()
            .chain([Wire::Nbd])
        {
            assert_eq!(wire.name().parse::<Wire>().unwrap(), wire);
        }
        let e = "smoke".parse::<Wire>().unwrap_err();
        assert!(
            e.contains("smoke") && e.contains("nbd") && e.contains("grpc"),
            "{e}"
        );
    }
}
