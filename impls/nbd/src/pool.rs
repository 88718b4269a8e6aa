//! Reusable I/O buffers.
//!
//! Every read reply and write payload needs a buffer of up to 32 MiB. A
//! fresh allocation that size is zero-filled and, being large, comes as
//! fresh pages from the kernel, so each request paid a page fault per 4 KiB
//! plus a memset before any data moved (a quarter of the server's time in
//! a 256 KiB `nbdcopy` profile). Buffers go back to a small free list
//! instead and are handed out again with their pages already mapped.
//!
//! The free list is bounded in bytes, so what it keeps idle is small next
//! to what requests in flight may hold (that is bounded elsewhere).

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use parking_lot::Mutex;

/// A bounded free list of byte buffers.
#[derive(Debug)]
pub(crate) struct BufferPool {
    free: Mutex<Free>,
    max_idle_bytes: usize,
}

#[derive(Debug, Default)]
struct Free {
    buffers: Vec<Vec<u8>>,
    bytes: usize,
}

impl BufferPool {
    /// A pool keeping at most `max_idle_bytes` of idle capacity.
    pub(crate) fn new(max_idle_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            free: Mutex::new(Free::default()),
            max_idle_bytes,
        })
    }

    /// A buffer of exactly `len` bytes. Its contents are unspecified
    /// (old data or zeros): callers overwrite all of it before use.
    pub(crate) fn take(self: &Arc<Self>, len: usize) -> PooledBuf {
        let reused = {
            let mut free = self.free.lock();
            let b = free.buffers.pop();
            if let Some(b) = &b {
                free.bytes -= b.capacity();
            }
            b
        };
        let mut buf = reused.unwrap_or_default();
        if buf.len() >= len {
            buf.truncate(len);
        } else {
            buf.resize(len, 0);
        }
        PooledBuf {
            buf,
            pool: self.clone(),
        }
    }

    fn give(&self, buf: Vec<u8>) {
        if buf.capacity() == 0 {
            return;
        }
        let mut free = self.free.lock();
        if free.bytes + buf.capacity() <= self.max_idle_bytes {
            free.bytes += buf.capacity();
            free.buffers.push(buf);
        }
    }
}

/// A buffer that returns to its pool when dropped.
#[derive(Debug)]
pub(crate) struct PooledBuf {
    buf: Vec<u8>,
    pool: Arc<BufferPool>,
}

impl Deref for PooledBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf
    }
}

impl DerefMut for PooledBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_and_idle_bytes_stay_bounded() {
        let pool = BufferPool::new(3 * 1024);
        let mut a = pool.take(1024);
        assert_eq!(a.len(), 1024);
        a[0] = 42;
        let ptr = a.as_ptr();
        drop(a);
        let b = pool.take(512);
        assert_eq!(b.len(), 512);
        assert_eq!(b.as_ptr(), ptr, "the idle buffer is reused");
        let c = pool.take(2048);
        assert_eq!(c.len(), 2048);
        let d = pool.take(4096);
        drop((b, c, d));
        let free = pool.free.lock();
        assert!(
            free.bytes <= 3 * 1024,
            "idle bytes {} over the bound",
            free.bytes
        );
        assert_eq!(
            free.bytes,
            free.buffers.iter().map(Vec::capacity).sum::<usize>()
        );
    }
}
