//! The bridge from blocking, kernel-facing threads to async backends.
//!
//! The uffd fault handler (and later the FUSE and NBD kernel loops) run on
//! plain OS threads that the kernel blocks in `read`/`poll`. They reach the
//! async world only through [`BlockingBackend`], so there is one place where
//! blocking meets async and one rule to keep: never call it from a thread
//! that is driving a tokio runtime (tokio panics on nested `block_on`).

use tokio::runtime::Handle;

use crate::{Result, SharedBackend};

/// A backend driven to completion from a blocking thread.
#[derive(Debug, Clone)]
pub struct BlockingBackend {
    inner: SharedBackend,
    runtime: Handle,
}

impl BlockingBackend {
    /// Wraps `inner`; its futures run on the calling thread with `runtime`'s
    /// I/O and timer drivers.
    pub fn new(inner: SharedBackend, runtime: Handle) -> Self {
        Self { inner, runtime }
    }

    /// See [`crate::Backend::read_at`].
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        self.runtime.block_on(self.inner.read_at(buf, offset))
    }

    /// See [`crate::Backend::read_exact_at`].
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.runtime.block_on(self.inner.read_exact_at(buf, offset))
    }

    /// See [`crate::Backend::write_at`].
    pub fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
        self.runtime.block_on(self.inner.write_at(data, offset))
    }

    /// See [`crate::Backend::size`].
    pub fn size(&self) -> Result<u64> {
        self.runtime.block_on(self.inner.size())
    }

    /// See [`crate::Backend::sync`].
    pub fn sync(&self) -> Result<()> {
        self.runtime.block_on(self.inner.sync())
    }

    /// The async backend behind this bridge.
    pub fn inner(&self) -> &SharedBackend {
        &self.inner
    }
}
