//! The source side of a cell and the link to it.
//!
//! The source's bytes are served by a remote backend service (`frpc`, the
//! lean binary RPC) over a byte stream; the destination holds a client that
//! is itself a [`backends::Backend`]. The emulation mode decides what sits
//! in between: a delay line on the stream (`inproc`), or a sleep inside every
//! call on the serving side (`per-call`). The network-emulation work plugs
//! real namespaces in at this same place.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backends::{Backend, BackendError, SharedBackend};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;
use transports::server::{ServeError, ServeStats};
use transports::FrpcClient;

use crate::emulation::Emulation;

/// Bytes buffered in each direction of an undelayed in-process stream.
const DIRECT_BUFFER: usize = 4 << 20;

/// A running link: the destination's client and the serving task.
#[derive(Debug)]
pub struct RemoteLink {
    client: Arc<FrpcClient>,
    guarded: SharedBackend,
    server: JoinHandle<Result<ServeStats, ServeError>>,
}

/// How long one remote call may take before it fails: generous against
/// scheduling noise, yet bounded, so a link that stops answering turns into
/// a cell error instead of a fault that blocks the workload forever.
pub fn call_timeout(rtt: Duration) -> Duration {
    Duration::from_secs(10) + rtt * 4
}

/// Fails any call that takes longer than its limit.
#[derive(Debug)]
struct CallTimeout {
    inner: SharedBackend,
    limit: Duration,
}

impl CallTimeout {
    async fn bounded<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = backends::Result<T>>,
    ) -> backends::Result<T> {
        tokio::time::timeout(self.limit, call)
            .await
            .unwrap_or_else(|_| {
                Err(BackendError::Remote(format!(
                    "{what} got no answer within {:?}",
                    self.limit
                )))
            })
    }
}

#[async_trait]
impl Backend for CallTimeout {
    async fn read_at(&self, buf: &mut [u8], offset: u64) -> backends::Result<usize> {
        self.bounded("ReadAt", self.inner.read_at(buf, offset))
            .await
    }
    async fn write_at(&self, data: &[u8], offset: u64) -> backends::Result<()> {
        self.bounded("WriteAt", self.inner.write_at(data, offset))
            .await
    }
    async fn size(&self) -> backends::Result<u64> {
        self.bounded("Size", self.inner.size()).await
    }
    async fn sync(&self) -> backends::Result<()> {
        self.bounded("Sync", self.inner.sync()).await
    }
}

fn start<S>(server_end: S, client_end: S, served: SharedBackend, rtt: Duration) -> RemoteLink
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let max_message = transports::wire::DEFAULT_MAX_MESSAGE;
    let server = tokio::spawn(transports::server::serve(server_end, served, max_message));
    let client = Arc::new(FrpcClient::new(client_end));
    let guarded = Arc::new(CallTimeout {
        inner: client.clone(),
        limit: call_timeout(rtt),
    });
    RemoteLink {
        client,
        guarded,
        server,
    }
}

impl RemoteLink {
    /// Serves `source` and connects a client to it across `emulation` at
    /// `rtt`. Must be called inside the runtime that will drive the link.
    pub fn open(source: SharedBackend, emulation: Emulation, rtt: Duration) -> Self {
        match emulation {
            Emulation::Inproc if !rtt.is_zero() => {
                let (server_end, client_end) = netem::DelayLine::pair(rtt / 2);
                start(server_end, client_end, source, rtt)
            }
            Emulation::Inproc => {
                let (server_end, client_end) = tokio::io::duplex(DIRECT_BUFFER);
                start(server_end, client_end, source, rtt)
            }
            Emulation::PerCall => {
                let (server_end, client_end) = tokio::io::duplex(DIRECT_BUFFER);
                let delayed: SharedBackend = Arc::new(netem::PerCallDelay::new(source, rtt));
                start(server_end, client_end, delayed, rtt)
            }
        }
    }

    /// The destination's view of the source; every call is bounded by
    /// [`call_timeout`].
    pub fn client(&self) -> SharedBackend {
        self.guarded.clone()
    }

    /// Bytes that crossed the link so far, both directions.
    pub fn transferred_bytes(&self) -> u64 {
        let s = self.client.stats();
        s.bytes_sent + s.bytes_received
    }

    /// Closes the client and waits for the server to see the end of stream.
    pub async fn close(self) -> Result<ServeStats, String> {
        drop(self.guarded);
        drop(self.client);
        match tokio::time::timeout(Duration::from_secs(10), self.server).await {
            Ok(Ok(Ok(stats))) => Ok(stats),
            Ok(Ok(Err(e))) => Err(format!("the remote server failed: {e}")),
            Ok(Err(e)) => Err(format!("the remote server task failed: {e}")),
            Err(_) => {
                Err("the remote server did not stop within 10 s of the client closing".into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend whose calls never complete.
    #[derive(Debug)]
    struct Silent;

    #[async_trait]
    impl Backend for Silent {
        async fn read_at(&self, _: &mut [u8], _: u64) -> backends::Result<usize> {
            std::future::pending().await
        }
        async fn write_at(&self, _: &[u8], _: u64) -> backends::Result<()> {
            std::future::pending().await
        }
        async fn size(&self) -> backends::Result<u64> {
            std::future::pending().await
        }
        async fn sync(&self) -> backends::Result<()> {
            std::future::pending().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_remote_becomes_an_error_not_a_hang() {
        let bounded = CallTimeout {
            inner: Arc::new(Silent),
            limit: call_timeout(Duration::from_millis(5)),
        };
        let mut buf = [0u8; 8];
        let err = bounded.read_at(&mut buf, 0).await.unwrap_err();
        assert!(err.to_string().contains("ReadAt got no answer"), "{err}");
        assert!(bounded.size().await.is_err());
    }

    #[test]
    fn every_mode_serves_the_source_intact() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let bytes: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        for (mode, rtt) in [
            (Emulation::Inproc, Duration::ZERO),
            (Emulation::Inproc, Duration::from_millis(1)),
            (Emulation::PerCall, Duration::from_millis(1)),
        ] {
            let source: SharedBackend =
                Arc::new(backends::MemoryBackend::from_bytes(bytes.clone()));
            let link = {
                let _guard = rt.enter();
                RemoteLink::open(source, mode, rtt)
            };
            let client = link.client();
            let mut got = vec![0u8; bytes.len()];
            let start = std::time::Instant::now();
            rt.block_on(client.read_exact_at(&mut got, 0)).unwrap();
            assert!(
                start.elapsed() >= rtt,
                "{mode:?}: faster than one round trip"
            );
            assert_eq!(got, bytes, "{mode:?}");
            assert!(link.transferred_bytes() > bytes.len() as u64);
            drop(client);
            let stats = rt.block_on(link.close()).unwrap();
            assert_eq!(stats.requests, 1, "{mode:?}");
        }
    }
}
