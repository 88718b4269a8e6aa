//! A per-call delay in front of a backend.
//!
//! [`PerCallDelay`] makes every call wait one full RTT before it reaches the
//! backend, as the thesis's benchmarks did with `time.Sleep(rtt)` at the top
//! of their remote's `ReadAt`/`WriteAt`. Unlike a [`crate::DelayLine`], this
//! models a link with no pipelining per call but unlimited parallel calls:
//! concurrent calls each wait their own RTT, side by side.

use std::time::Duration;

use async_trait::async_trait;
use backends::{Backend, Result};

use crate::timer::precise_sleep;

/// A backend whose every call first sleeps `rtt` (see the module docs).
#[derive(Debug)]
pub struct PerCallDelay<B> {
    inner: B,
    rtt: Duration,
}

impl<B> PerCallDelay<B> {
    /// Wraps `inner`, delaying each call by `rtt`.
    pub fn new(inner: B, rtt: Duration) -> Self {
        Self { inner, rtt }
    }

    /// The delay each call pays.
    pub fn rtt(&self) -> Duration {
        self.rtt
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// Unwraps the backend.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

#[async_trait]
impl<B: Backend> Backend for PerCallDelay<B> {
    async fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        precise_sleep(self.rtt).await;
        self.inner.read_at(buf, offset).await
    }

    async fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
        precise_sleep(self.rtt).await;
        self.inner.write_at(data, offset).await
    }

    async fn size(&self) -> Result<u64> {
        precise_sleep(self.rtt).await;
        self.inner.size().await
    }

    async fn sync(&self) -> Result<()> {
        precise_sleep(self.rtt).await;
        self.inner.sync().await
    }
}
