//! The remote services and the wires that carry them.
//!
//! Two services, written once ([`service`]): the **backend service**
//! (`ReadAt`, `WriteAt`, `Size`, `Sync`) is [`backends::Backend`] itself,
//! the **seeder service** (`ReadAt`, `Size`, `Track`, `Sync` returning the
//! dirty offsets, `Close`) is the [`Seeder`] trait. A server exposes
//! [`Services`]; a client is a `Backend` or a `Seeder`. Every transport is
//! an adapter that carries a [`Call`] and its [`Outcome`]:
//!
//! | [`TransportKind`] | wire |
//! |---|---|
//! | `jsonl` | dudirekta-style JSON lines, base64 payloads, bidirectional ([`jsonl`]) |
//! | `grpc`  | tonic + prost over HTTP/2, `proto/memsync.proto` ([`grpc`]) |
//! | `frpc`  | a lean binary RPC: 22-byte header, ids, multiplexed ([`wire`], [`client`], [`server`]) |
//! | `tarpc` | tarpc with length-delimited bincode frames ([`tarpc_rpc`]) |
//! | `raw`   | the TCP baseline: 13-byte request, length + bytes, reads only ([`raw`]) |
//!
//! The uniform entry points: [`TransportKind::serve`] serves on a TCP
//! listener until a cancellation token fires, [`TransportKind::connect`]
//! returns a [`Client`] (a pool of connections) whose
//! [`Client::backend`] and [`Client::seeder`] are the remote services.
//!
//! # Layout
//!
//! - [`service`]: the [`Seeder`] trait, [`Services`], [`Call`]/[`Outcome`],
//!   [`dispatch`], [`RemoteError`], and [`BackendSeeder`] for tests.
//! - [`remote`]: the calling side once: [`Rpc`], [`RemoteBackend`],
//!   [`RemoteSeeder`], [`Pool`] (splitting, size cache, deadlines).
//! - [`kind`]: [`TransportKind`], [`TransportConfig`], [`Client`].
//! - [`wire`], [`client`], [`server`]: frpc. [`FrpcClient`] and
//!   [`serve`]/[`serve_with`]/[`serve_services`] also run over any stream
//!   (`tokio::io::duplex`, an emulated link).
//! - [`jsonl`], [`grpc`], [`tarpc_rpc`], [`raw`]: the other wires.
//! - [`meter`]: byte and request counting shared by all servers.
//! - [`conformance`]: the suite every transport runs
//!   ([`conformance_tests!`]).
//!
//! # Example: any transport over TCP
//!
//! ```
//! use std::sync::Arc;
//! use backends::{Backend, MemoryBackend};
//! use tokio_util::sync::CancellationToken;
//! use transports::{Services, TransportConfig, TransportKind};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! for kind in TransportKind::ALL {
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//!     let addr = listener.local_addr()?;
//!     let source = Arc::new(MemoryBackend::from_bytes(b"remote bytes".to_vec()));
//!     let config = TransportConfig::default();
//!     let shutdown = CancellationToken::new();
//!     let server = tokio::spawn(kind.serve(
//!         listener,
//!         Services::backend(source),
//!         config.clone(),
//!         shutdown.clone(),
//!     ));
//!
//!     let client = kind.connect(addr, &config).await?;
//!     let mut buf = [0; 5];
//!     client.backend().read_exact_at(&mut buf, 7).await?;
//!     assert_eq!(&buf, b"bytes", "{kind}");
//!
//!     drop(client);
//!     shutdown.cancel();
//!     assert_eq!(server.await??.requests, 1, "{kind}");
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Example: frpc over any stream

//!
//! ```
//! use std::sync::Arc;
//! use backends::{Backend, MemoryBackend};
//! use transports::{serve, FrpcClient, DEFAULT_MAX_MESSAGE};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (near, far) = tokio::io::duplex(64 * 1024);
//! let source = Arc::new(MemoryBackend::from_bytes(b"remote bytes".to_vec()));
//! let server = tokio::spawn(serve(far, source, DEFAULT_MAX_MESSAGE));
//!
//! let client = FrpcClient::new(near);
//! let mut buf = [0; 5];
//! client.read_exact_at(&mut buf, 7).await?;
//! assert_eq!(&buf, b"bytes");
//!
//! drop(client); // the server sees EOF and returns its stats
//! let stats = server.await??;
//! assert_eq!(stats.requests, 1);
//! # Ok(())
//! # }
//! ```

mod accept;
pub mod client;
pub mod conformance;
mod conn;
pub mod grpc;
pub mod jsonl;
pub mod kind;
pub mod meter;
mod pending;
pub mod raw;
pub mod remote;
pub mod server;
pub mod service;
pub mod tarpc_rpc;
pub mod wire;

pub use client::{ClientConfig, ClientStats, FrpcClient};
pub use jsonl::JsonlPeer;
pub use kind::{Client, TransportConfig, TransportError, TransportKind, UnknownTransport};
pub use remote::{Pool, RemoteBackend, RemoteSeeder, Rpc};
pub use server::{
    serve, serve_listener, serve_listener_services, serve_services, serve_with, ServeConfig,
    ServeError, ServeStats,
};
pub use service::{
    dispatch, BackendSeeder, Call, Method, Outcome, RemoteError, Seeder, ServiceKind, Services,
    SharedSeeder,
};
pub use wire::{WireError, DEFAULT_MAX_MESSAGE};
