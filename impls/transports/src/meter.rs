//! Counting what crosses a connection, the same way for every transport.
//!
//! [`Counted`] wraps a stream and counts the bytes read and written, so the
//! transports whose framing lives inside a library (tonic, tarpc) are
//! measured exactly like the hand-written ones. [`Meter`] counts requests
//! and how many were handled at once.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::server::ServeStats;

/// Byte counters shared by every connection of one server or client.
#[derive(Debug, Default)]
pub struct ByteCounters {
    /// Bytes read from the streams.
    pub read: AtomicU64,
    /// Bytes written to the streams.
    pub written: AtomicU64,
}

/// A stream that adds what passes through it to [`ByteCounters`].
#[derive(Debug)]
pub struct Counted<S> {
    inner: S,
    counters: Arc<ByteCounters>,
}

impl<S> Counted<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, counters: Arc<ByteCounters>) -> Self {
        Self { inner, counters }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let n = buf.filled().len().saturating_sub(before);
            self.counters.read.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.counters.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            self.counters.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Counted<tokio::net::TcpStream> {
    type ConnectInfo = Option<std::net::SocketAddr>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.peer_addr().ok()
    }
}

/// Request counters of one server: how many, and how many at once.
#[derive(Debug, Default)]
pub struct Meter {
    /// Bytes on the server's streams.
    pub bytes: Arc<ByteCounters>,
    requests: AtomicU64,
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
}

impl Meter {
    /// A meter whose byte counts go to `bytes` (shared with others).
    pub fn with_bytes(bytes: Arc<ByteCounters>) -> Self {
        Self {
            bytes,
            ..Self::default()
        }
    }

    /// Counts a request as started; dropping the guard counts it finished.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_in_flight.fetch_max(now, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// What was counted so far.
    pub fn stats(&self) -> ServeStats {
        ServeStats {
            requests: self.requests.load(Ordering::Relaxed),
            bytes_received: self.bytes.read.load(Ordering::Relaxed),
            bytes_sent: self.bytes.written.load(Ordering::Relaxed),
            peak_in_flight: self.peak_in_flight.load(Ordering::Relaxed),
        }
    }
}

/// A request being handled; see [`Meter::begin`].
#[derive(Debug)]
pub struct InFlight(Arc<Meter>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn counts_both_directions() {
        let (a, mut b) = tokio::io::duplex(1024);
        let counters = Arc::new(ByteCounters::default());
        let mut a = Counted::new(a, counters.clone());
        a.write_all(b"hello").await.unwrap();
        b.write_all(b"abc").await.unwrap();
        let mut got = [0; 3];
        a.read_exact(&mut got).await.unwrap();
        assert_eq!(counters.written.load(Ordering::Relaxed), 5);
        assert_eq!(counters.read.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn meter_tracks_peak() {
        let meter = Arc::new(Meter::default());
        let a = meter.begin();
        let b = meter.begin();
        drop(a);
        let _c = meter.begin();
        drop(b);
        let stats = meter.stats();
        assert_eq!((stats.requests, stats.peak_in_flight), (3, 2));
    }
}
