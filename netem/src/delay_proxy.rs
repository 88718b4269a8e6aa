//! [`DelayProxy`]: a loopback TCP proxy whose every connection runs through
//! a [`DelayLine`], so a transport that only speaks TCP (gRPC, tarpc, ...)
//! can be delayed in process, the same way a byte stream is.
//!
//! Each accepted connection gets its own delay line and its own upstream
//! connection; bytes are counted per direction across all of them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::delay_line::DelayLine;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum DelayProxyError {
    #[error("binding the proxy's loopback listener: {0}")]
    Bind(#[source] std::io::Error),
}

/// Bytes the proxy carried, both directions together.
#[derive(Debug, Default)]
struct Counted {
    bytes: AtomicU64,
}

/// A running proxy; stops accepting and closes every connection on drop.
#[derive(Debug)]
pub struct DelayProxy {
    addr: SocketAddr,
    counted: Arc<Counted>,
    accept: tokio::task::JoinHandle<()>,
}

impl DelayProxy {
    /// Listens on a free loopback port and forwards every connection to
    /// `upstream` through a delay line of `one_way` each way. Must be called
    /// inside a tokio runtime.
    pub async fn start(upstream: SocketAddr, one_way: Duration) -> Result<Self, DelayProxyError> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(DelayProxyError::Bind)?;
        let addr = listener.local_addr().map_err(DelayProxyError::Bind)?;
        let counted = Arc::new(Counted::default());
        let accept = tokio::spawn(accept_loop(listener, upstream, one_way, counted.clone()));
        Ok(Self {
            addr,
            counted,
            accept,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Bytes carried so far, both directions.
    pub fn transferred_bytes(&self) -> u64 {
        self.counted.bytes.load(Ordering::Relaxed)
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every
        // connection's copy tasks and closes their sockets.
        self.accept.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    one_way: Duration,
    counted: Arc<Counted>,
) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let Ok((client, _)) = accepted else {
            // Accept errors (out of descriptors) are transient; the client
            // that caused one sees its connect fail.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let counted = counted.clone();
        connections.spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                tracing::warn!(%upstream, "delay proxy could not reach its upstream");
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (near, far) = DelayLine::pair(one_way);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            let (nr, nw) = tokio::io::split(near);
            let (fr, fw) = tokio::io::split(far);
            // client -> near ~~delay~~> far -> server, and back; bytes are
            // counted once, as they leave the delay line.
            tokio::join!(
                pump(cr, nw, None),
                pump(fr, sw, Some(&counted)),
                pump(sr, fw, None),
                pump(nr, cw, Some(&counted)),
            );
        });
    }
}

/// Copies until end of stream or error, then shuts the writer down so the
/// end travels on; counts what crossed into `counted`, if given.
async fn pump<R, W>(mut from: R, mut to: W, counted: Option<&Counted>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Counted before the write, so a peer that has read the bytes
        // never sees a count without them.
        if let Some(c) = counted {
            c.bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_arrive_intact_and_late() {
        let echo = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let upstream = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.unwrap();
            let mut buf = vec![0u8; 1 << 20];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
        });
        let one_way = Duration::from_millis(5);
        let proxy = DelayProxy::start(upstream, one_way).await.unwrap();
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        let sent: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
        let start = std::time::Instant::now();
        c.write_all(&sent).await.unwrap();
        let mut got = vec![0u8; sent.len()];
        c.read_exact(&mut got).await.unwrap();
        assert!(start.elapsed() >= one_way * 2, "faster than one round trip");
        assert_eq!(got, sent);
        assert_eq!(proxy.transferred_bytes(), 2 * sent.len() as u64);
    }
}
