//! Bytes in process memory.

use async_trait::async_trait;
use parking_lot::RwLock;

use crate::{check_range, Backend, Result};

/// A fixed-size region of process memory.
///
/// One reader-writer lock guards the bytes: accesses are memory copies of at
/// most a few MiB, so lock hold times are microseconds and striping would buy
/// little for its complexity.
#[derive(Debug)]
pub struct MemoryBackend {
    bytes: RwLock<Box<[u8]>>,
}

impl MemoryBackend {
    /// A zero-filled backend of `size` bytes.
    pub fn new(size: u64) -> Self {
        Self::from_bytes(vec![0; size as usize])
    }

    /// A backend holding exactly `bytes`.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self {
            bytes: RwLock::new(bytes.into_boxed_slice()),
        }
    }

    /// A copy of the whole content.
    pub fn snapshot(&self) -> Vec<u8> {
        self.bytes.read().to_vec()
    }

    /// The content, borrowed without copying; writers wait while it is held.
    pub fn bytes(&self) -> impl std::ops::Deref<Target = [u8]> + '_ {
        parking_lot::RwLockReadGuard::map(self.bytes.read(), |b| &**b)
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    async fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        let bytes = self.bytes.read();
        let n = check_range(offset, buf.len() as u64, bytes.len() as u64, false)? as usize;
        let start = offset as usize;
        buf[..n].copy_from_slice(&bytes[start..start + n]);
        Ok(n)
    }

    async fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
        let mut bytes = self.bytes.write();
        let n = check_range(offset, data.len() as u64, bytes.len() as u64, true)? as usize;
        let start = offset as usize;
        bytes[start..start + n].copy_from_slice(data);
        Ok(())
    }

    async fn size(&self) -> Result<u64> {
        Ok(self.bytes.read().len() as u64)
    }

    async fn sync(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_borrows_what_writes_left() {
        let m = MemoryBackend::new(8);
        m.write_at(&[7, 7], 3).await.unwrap();
        assert_eq!(&*m.bytes(), &[0, 0, 0, 7, 7, 0, 0, 0]);
        assert_eq!(m.snapshot(), m.bytes().to_vec());
    }
}
