//! A gate that holds reads and writes until it is opened.
//!
//! Used where a region must not be touched until something else is ready,
//! e.g. a migration destination that must not serve the application until
//! the source has handed over.
//!
//! # Behavior
//!
//! The stage is created locked. While locked, every `read_at` and `write_at`
//! waits; [`LockableReadWriterAt::unlock`] releases all waiters at once.
//! [`LockableReadWriterAt::lock`] closes the gate again for accesses that
//! start afterwards; accesses already past the gate finish normally.
//! `size` and `sync` never wait: they carry no region data, and nothing new
//! can have been written while locked.

use async_trait::async_trait;
use backends::{Backend, BackendError, Result, SharedBackend};
use tokio::sync::watch;

/// Holds accesses while locked. See the module docs.
#[derive(Debug)]
pub struct LockableReadWriterAt {
    inner: SharedBackend,
    locked: watch::Sender<bool>,
}

impl LockableReadWriterAt {
    /// Wraps `inner`, locked.
    pub fn new(inner: SharedBackend) -> Self {
        let (locked, _) = watch::channel(true);
        Self { inner, locked }
    }

    /// Lets every waiting and future access through.
    pub fn unlock(&self) {
        self.locked.send_replace(false);
    }

    /// Makes accesses that start from now on wait for the next
    /// [`Self::unlock`].
    pub fn lock(&self) {
        self.locked.send_replace(true);
    }

    /// Whether accesses are being held.
    pub fn is_locked(&self) -> bool {
        *self.locked.borrow()
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &SharedBackend {
        &self.inner
    }

    async fn pass(&self) -> Result<()> {
        let mut rx = self.locked.subscribe();
        // The sender lives in `self`, so the channel cannot close while we
        // wait; map the impossible case to Closed rather than panic.
        rx.wait_for(|locked| !locked)
            .await
            .map(|_| ())
            .map_err(|_| BackendError::Closed)
    }
}

#[async_trait]
impl Backend for LockableReadWriterAt {
    async fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        self.pass().await?;
        self.inner.read_at(buf, offset).await
    }

    async fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
        self.pass().await?;
        self.inner.write_at(data, offset).await
    }

    async fn size(&self) -> Result<u64> {
        self.inner.size().await
    }

    async fn sync(&self) -> Result<()> {
        self.inner.sync().await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use backends::MemoryBackend;
    use tokio::task::JoinHandle;

    use super::*;

    fn spawn_readers(stage: &Arc<LockableReadWriterAt>, n: u64) -> Vec<JoinHandle<Vec<u8>>> {
        (0..n)
            .map(|i| {
                let stage = stage.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4];
                    stage.read_exact_at(&mut buf, i * 4).await.unwrap();
                    buf
                })
            })
            .collect()
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn readers_wait_for_unlock() {
        // Readers cover bytes 0..32; the writer writes byte 39.
        let data: Vec<u8> = (0..40).collect();
        let stage = Arc::new(LockableReadWriterAt::new(Arc::new(
            MemoryBackend::from_bytes(data.clone()),
        )));
        assert!(stage.is_locked());
        let readers = spawn_readers(&stage, 8);
        let writer = {
            let stage = stage.clone();
            tokio::spawn(async move { stage.write_at(&[0xFF], 39).await })
        };
        settle().await;
        assert!(readers.iter().all(|r| !r.is_finished()));
        assert!(!writer.is_finished());

        stage.unlock();
        for (i, reader) in readers.into_iter().enumerate() {
            assert_eq!(reader.await.unwrap(), data[i * 4..i * 4 + 4]);
        }
        writer.await.unwrap().unwrap();
        let mut last = [0u8];
        stage.read_exact_at(&mut last, 39).await.unwrap();
        assert_eq!(last, [0xFF]);
    }

    #[tokio::test]
    async fn lock_again_holds_new_accesses() {
        let stage = Arc::new(LockableReadWriterAt::new(Arc::new(MemoryBackend::new(32))));
        stage.unlock();
        stage.lock();
        let readers = spawn_readers(&stage, 2);
        settle().await;
        assert!(readers.iter().all(|r| !r.is_finished()));
        // size and sync do not wait.
        assert_eq!(stage.size().await.unwrap(), 32);
        stage.sync().await.unwrap();
        stage.unlock();
        for reader in readers {
            reader.await.unwrap();
        }
    }
}
