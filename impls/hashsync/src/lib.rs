//! Pre-copy by polling and hashing (thesis 3.2, 4.2): a region kept in a
//! `MAP_SHARED` file is hashed chunk by chunk every cycle, and the chunks
//! whose hashes differ from the peer's are pushed to it.
//!
//! # Layout
//!
//! - [`algorithm`]: [`Algorithm`] (CRC32, xxh3, BLAKE3, SHA-256).
//! - [`hashes`]: [`HashList`], parallel hashing, the encoded form a peer
//!   sends and its bounded decoder.
//! - [`delta`]: [`Delta`], which chunks to send and the peer's new length.
//! - [`sink`]: [`Sink`], the peer's copy: [`BackendSink`] (a transport's
//!   backend service) or [`FileSink`] (a file that can grow and shrink).
//! - [`source`]: [`SyncSource`], the mapped file and the cycle.
//!
//! # Example
//!
//! ```
//! use hashsync::{Algorithm, FileSink, SyncConfig, SyncSource};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! std::fs::write(dir.path().join("region"), vec![0u8; 1 << 20])?;
//! let mut source = SyncSource::open(
//!     &dir.path().join("region"),
//!     SyncConfig::new(64 << 10, Algorithm::Xxh3),
//! )?;
//! let peer = FileSink::open(&dir.path().join("copy"))?;
//! source.cycle(&peer).await?; // the first cycle sends everything
//! source.region_mut()[300_000] = 7;
//! let report = source.cycle(&peer).await?;
//! assert_eq!(report.chunks_sent, 1);
//! assert_eq!(peer.contents()?, source.region());
//! # Ok(())
//! # }
//! ```

pub mod algorithm;
pub mod delta;
pub mod hashes;
pub mod sink;
pub mod source;

pub use algorithm::{Algorithm, UnknownAlgorithm};
pub use delta::{Delta, DeltaError};
pub use hashes::{check_chunk_size, BadChunkSize, DecodeError, HashList};
pub use sink::{BackendSink, FileSink, HashFileError, Sink, SinkError};
pub use source::{CycleReport, Plan, SyncConfig, SyncError, SyncSource};
