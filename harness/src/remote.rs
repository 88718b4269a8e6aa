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

use backends::SharedBackend;
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
    server: JoinHandle<Result<ServeStats, ServeError>>,
}

fn start<S>(server_end: S, client_end: S, served: SharedBackend) -> RemoteLink
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let max_message = transports::wire::DEFAULT_MAX_MESSAGE;
    let server = tokio::spawn(transports::server::serve(server_end, served, max_message));
    RemoteLink {
        client: Arc::new(FrpcClient::new(client_end)),
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
                start(server_end, client_end, source)
            }
            Emulation::Inproc => {
                let (server_end, client_end) = tokio::io::duplex(DIRECT_BUFFER);
                start(server_end, client_end, source)
            }
            Emulation::PerCall => {
                let (server_end, client_end) = tokio::io::duplex(DIRECT_BUFFER);
                let delayed: SharedBackend = Arc::new(netem::PerCallDelay::new(source, rtt));
                start(server_end, client_end, delayed)
            }
        }
    }

    /// The destination's view of the source.
    pub fn client(&self) -> SharedBackend {
        self.client.clone()
    }

    /// Bytes that crossed the link so far, both directions.
    pub fn transferred_bytes(&self) -> u64 {
        let s = self.client.stats();
        s.bytes_sent + s.bytes_received
    }

    /// Closes the client and waits for the server to see the end of stream.
    pub async fn close(self) -> Result<ServeStats, String> {
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
