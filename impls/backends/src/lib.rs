//! Positional storage for a region's bytes.
//!
//! Every place a region's bytes can live (local memory, a file, a directory
//! of chunk files, and later a remote service or store) implements
//! [`Backend`]. Pipeline stages (crate `chunks`) wrap one backend in another,
//! so one trait is the contract everything in `impls/` is written against.
//!
//! # Semantics every backend keeps
//!
//! - A backend has a fixed [`Backend::size`].
//! - [`Backend::read_at`] with `offset < size` reads
//!   `min(buf.len(), size - offset)` bytes and returns that count: a read that
//!   crosses the end is short, never an error.
//! - A read or write that starts at or past the end, or a write that would
//!   cross the end, is [`BackendError::OutOfRange`]; nothing is written.
//!   Empty reads and writes are valid anywhere up to and including `size`.
//! - [`Backend::write_at`] writes all of `data` or fails.
//! - [`Backend::sync`] returns once every completed write is durable for this
//!   backend's notion of durable (memory: immediately; file: `fdatasync`).
//!
//! The conformance suite in [`conformance`] checks these rules; every backend,
//! present and future, runs it.
//!
//! # Layout
//!
//! - [`memory`]: bytes in process memory.
//! - [`mod@file`]: one regular file, positional I/O.
//! - [`directory`]: one file per chunk, created on first write.
//! - [`blocking`]: the one bridge from blocking kernel-facing threads to async backends.
//! - [`conformance`]: the shared test suite.
//! - `testing` (feature `testing`, off by default): `testing::Probe`, a
//!   wrapper backend that counts, gauges, delays, gates and fails calls for
//!   other crates' tests.

pub mod blocking;
pub mod conformance;
pub mod directory;
pub mod file;
pub mod memory;
mod positional;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::sync::Arc;

use async_trait::async_trait;

pub use blocking::BlockingBackend;
pub use directory::DirectoryBackend;
pub use file::FileBackend;
pub use memory::MemoryBackend;

/// Errors any backend or pipeline stage can return.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The access starts at or past the end, or a write would cross it.
    #[error(
        "access of {len} bytes at offset {offset} is out of range for a backend of {size} bytes"
    )]
    OutOfRange { offset: u64, len: u64, size: u64 },
    /// A stage that only takes whole, aligned chunks was given something else.
    #[error("access of {len} bytes at offset {offset} is not one whole chunk of {chunk_size} bytes at a multiple of {chunk_size}")]
    Unaligned {
        offset: u64,
        len: u64,
        chunk_size: u64,
    },
    /// The operating system refused an operation.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The remote side (a transport or a service behind it) failed.
    #[error("remote backend: {0}")]
    Remote(String),
    /// The backend or stage was closed and takes no more requests.
    #[error("backend is closed")]
    Closed,
}

/// Shorthand for results of backend operations.
pub type Result<T, E = BackendError> = std::result::Result<T, E>;

/// Positional storage with a fixed size. See the crate docs for the rules.
#[async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Reads up to `buf.len()` bytes at `offset`; short only at the end.
    async fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize>;
    /// Writes all of `data` at `offset`.
    async fn write_at(&self, data: &[u8], offset: u64) -> Result<()>;
    /// The size in bytes; fixed for the backend's lifetime.
    async fn size(&self) -> Result<u64>;
    /// Makes completed writes durable.
    async fn sync(&self) -> Result<()>;

    /// Reads exactly `buf.len()` bytes or fails with [`BackendError::OutOfRange`].
    async fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let n = self.read_at(buf, offset).await?;
        if n != buf.len() {
            return Err(BackendError::OutOfRange {
                offset,
                len: buf.len() as u64,
                size: offset + n as u64,
            });
        }
        Ok(())
    }
}

/// A shared, dynamically chosen backend: the form pipelines are built from.
pub type SharedBackend = Arc<dyn Backend>;

/// Checks an access against a backend's size, following the crate's rules.
///
/// Returns how many bytes the access covers: `len` for writes (or an error if
/// the write would cross the end), `min(len, size - offset)` for reads.
pub fn check_range(offset: u64, len: u64, size: u64, is_write: bool) -> Result<u64> {
    let out_of_range = || BackendError::OutOfRange { offset, len, size };
    if len == 0 {
        return if offset <= size {
            Ok(0)
        } else {
            Err(out_of_range())
        };
    }
    if offset >= size {
        return Err(out_of_range());
    }
    let end = offset.checked_add(len).ok_or_else(out_of_range)?;
    if end <= size {
        Ok(len)
    } else if is_write {
        Err(out_of_range())
    } else {
        Ok(size - offset)
    }
}

#[async_trait]
impl<B: Backend + ?Sized> Backend for Arc<B> {
    async fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        (**self).read_at(buf, offset).await
    }
    async fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
        (**self).write_at(data, offset).await
    }
    async fn size(&self) -> Result<u64> {
        (**self).size().await
    }
    async fn sync(&self) -> Result<()> {
        (**self).sync().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_range_follows_the_rules() {
        assert_eq!(check_range(0, 10, 100, false).unwrap(), 10);
        assert_eq!(check_range(95, 10, 100, false).unwrap(), 5);
        assert!(check_range(95, 10, 100, true).is_err());
        assert!(check_range(100, 1, 100, false).is_err());
        assert_eq!(check_range(100, 0, 100, true).unwrap(), 0);
        assert!(check_range(101, 0, 100, false).is_err());
        assert!(check_range(u64::MAX, 2, 100, false).is_err());
        assert!(check_range(50, u64::MAX, 100, true).is_err());
    }
}
