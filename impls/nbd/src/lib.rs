//! The NBD (Network Block Device) protocol: a server that exports
//! [`backends::Backend`]s, a client that is one, and the attachment of a
//! connection to the Linux kernel's `/dev/nbd*`.
//!
//! It follows the protocol document of the reference implementation
//! (NetworkBlockDevice/nbd, `doc/proto.md`): fixed newstyle handshake,
//! `NBD_OPT_GO`/`INFO`/`LIST`/`ABORT`/`EXPORT_NAME`, simple replies, and the
//! `READ`, `WRITE`, `FLUSH`, `TRIM`, `WRITE_ZEROES`, `DISC` commands with
//! block size constraints. It talks to qemu, nbdkit and libnbd (the
//! integration tests run them).
//!
//! # Layout
//!
//! - [`wire`]: constants, headers and option payloads; bounded, panic-free decoders.
//! - [`export`]: [`Export`] and [`BlockSizes`], what a server serves.
//! - [`mod@handshake`]: both sides of option haggling, including [`handshake()`],
//!   which hands back a raw stream ready for transmission.
//! - [`server`]: [`Server`], concurrent request handling, [`Server::serve_listener`].
//! - [`client`]: [`NbdClient`], multiplexed requests, a [`backends::Backend`].
//! - [`kernel`]: [`KernelNbd`] / [`KernelNbdDevice`], ioctls to `/dev/nbdN`.
//! - [`mod@error`]: the one error type, [`NbdError`].
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use backends::{Backend, MemoryBackend};
//! use nbd::{Export, NbdClient, Server, ServerLimits};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let disk = Arc::new(MemoryBackend::new(1 << 20));
//! let server = Server::new(vec![Export::new("disk", disk.clone())], ServerLimits::default())?;
//!
//! let (ours, theirs) = tokio::io::duplex(1 << 16);
//! let serving = tokio::spawn(async move { server.serve(theirs).await });
//!
//! let client = NbdClient::connect(ours, "disk").await?;
//! client.write_at(b"hello", 4096).await?;
//! let mut buf = [0u8; 5];
//! client.read_at(&mut buf, 4096).await?;
//! assert_eq!(&buf, b"hello");
//! client.disconnect().await?;
//!
//! let stats = serving.await??;
//! assert_eq!((stats.reads, stats.writes), (1, 1));
//! assert_eq!(&disk.snapshot()[4096..4101], b"hello");
//! # Ok(())
//! # }
//! ```

pub mod client;
pub mod error;
pub mod export;
pub mod handshake;
pub mod kernel;
mod pool;
pub mod server;
mod stream;
pub mod wire;

pub use client::NbdClient;
pub use error::NbdError;
pub use export::{BlockSizeError, BlockSizes, Export, ExportError};
pub use handshake::client::{handshake, ExportInfo, ExportSummary};
pub use kernel::{AttachOptions, KernelError, KernelNbd, KernelNbdDevice};
pub use server::{
    ConnectionStats, Listener, ListenerStats, Server, ServerConfigError, ServerLimits,
};
pub use wire::{Errno, TransmissionFlags};
