//! Where a cycle's changed chunks go: the peer's copy, behind [`Sink`].

use std::fs::File;
use std::num::NonZeroUsize;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

use async_trait::async_trait;
use backends::{BackendError, SharedBackend};

use crate::algorithm::Algorithm;
use crate::hashes::{BadChunkSize, HashList};

/// Why the peer refused or failed an operation.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The backend service (local or over a transport) failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The peer's file failed.
    #[error("peer file: {0}")]
    Io(#[from] std::io::Error),
    /// The peer has a fixed size (the backend service has no resize call).
    #[error("the peer holds {size} bytes and cannot be resized to {wanted}: the backend service has a fixed size")]
    FixedSize { size: u64, wanted: u64 },
}

/// The peer's copy of the region, as the pushing side sees it.
#[async_trait]
pub trait Sink: Send + Sync + std::fmt::Debug {
    /// Makes the copy `len` bytes long (growth fills with zeros).
    async fn set_len(&self, len: u64) -> Result<(), SinkError>;
    /// Writes `data` at `offset`.
    async fn write_at(&self, data: &[u8], offset: u64) -> Result<(), SinkError>;
    /// Makes the writes durable at the peer.
    async fn sync(&self) -> Result<(), SinkError>;
}

/// A backend service as the peer: the transports' `WriteAt` and `Sync`.
/// Its size is fixed, so growth or truncation fails with
/// [`SinkError::FixedSize`].
#[derive(Debug, Clone)]
pub struct BackendSink(pub SharedBackend);

#[async_trait]
impl Sink for BackendSink {
    async fn set_len(&self, len: u64) -> Result<(), SinkError> {
        let size = self.0.size().await?;
        if size == len {
            Ok(())
        } else {
            Err(SinkError::FixedSize { size, wanted: len })
        }
    }

    async fn write_at(&self, data: &[u8], offset: u64) -> Result<(), SinkError> {
        Ok(self.0.write_at(data, offset).await?)
    }

    async fn sync(&self) -> Result<(), SinkError> {
        Ok(self.0.sync().await?)
    }
}

/// A file as the peer's copy: the receiving side of the thesis's file
/// synchronization, which can grow and shrink and hash itself.
#[derive(Debug)]
pub struct FileSink {
    // Positional I/O needs no lock; the mutex orders set_len against writes.
    file: Mutex<File>,
}

impl FileSink {
    /// Opens (creating if absent) the copy at `path`.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        Ok(Self {
            file: Mutex::new(file),
        })
    }

    /// The copy's chunk hashes: what the receiver sends the source before
    /// a cycle (encode them with [`HashList::encode`]).
    pub fn hashes(
        &self,
        chunk_size: usize,
        algorithm: Algorithm,
        threads: NonZeroUsize,
    ) -> Result<HashList, HashFileError> {
        let file = self.lock();
        let bytes = read_all(&file)?;
        Ok(HashList::compute(&bytes, chunk_size, algorithm, threads)?)
    }

    /// The copy's bytes.
    pub fn contents(&self) -> std::io::Result<Vec<u8>> {
        read_all(&self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, File> {
        // A panic while holding the lock leaves the file as consistent as
        // the kernel left it; there is no in-memory state to poison.
        self.file.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why a file could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum HashFileError {
    #[error("reading the copy: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    ChunkSize(#[from] BadChunkSize),
}

fn read_all(file: &File) -> std::io::Result<Vec<u8>> {
    let len = usize::try_from(file.metadata()?.len())
        .map_err(|_| std::io::Error::other("the copy is larger than the address space"))?;
    let mut bytes = vec![0u8; len];
    file.read_exact_at(&mut bytes, 0)?;
    Ok(bytes)
}

#[async_trait]
impl Sink for FileSink {
    async fn set_len(&self, len: u64) -> Result<(), SinkError> {
        Ok(self.lock().set_len(len)?)
    }

    async fn write_at(&self, data: &[u8], offset: u64) -> Result<(), SinkError> {
        Ok(self.lock().write_all_at(data, offset)?)
    }

    async fn sync(&self) -> Result<(), SinkError> {
        Ok(self.lock().sync_data()?)
    }
}
