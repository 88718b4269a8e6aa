//! The remote backend service and the wires that carry it.
//!
//! The destination of a migration reaches the source's bytes through a
//! remote backend service: `ReadAt(off, len)`, `WriteAt(off, bytes)`, `Size`,
//! `Sync`. Every wire is an adapter between [`backends::Backend`] on the
//! calling side and a [`backends::SharedBackend`] on the serving side.
//!
//! # Layout
//!
//! - [`wire`]: frpc, a lean binary RPC: frame headers, validation, codes.
//! - [`client`]: [`FrpcClient`], a `Backend` over any byte stream, many
//!   calls in flight at once.
//! - [`server`]: [`serve`]/[`serve_with`] answer one stream's requests out
//!   of a backend; [`serve_listener`] runs a TCP accept loop.
//!
//! Streams are anything `AsyncRead + AsyncWrite + Unpin + Send + 'static`:
//! TCP and Unix sockets, `tokio::io::duplex`, or an emulated link.
//!
//! # Example
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

pub mod client;
mod conn;
pub mod server;
pub mod wire;

pub use client::{ClientConfig, ClientStats, FrpcClient};
pub use server::{serve, serve_listener, serve_with, ServeConfig, ServeError, ServeStats};
pub use wire::{WireError, DEFAULT_MAX_MESSAGE};
