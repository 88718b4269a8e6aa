//! The accept loop every TCP server of this crate runs: one task per
//! connection, `TCP_NODELAY` on, accept errors backed off, and the
//! connections drained when `shutdown` fires.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

/// Accepts on `listener` until `shutdown`, running `serve(stream, peer)`
/// as its own task per connection and handing each task's end to
/// `finished`. Then waits for the running connections: all of them, or
/// at most `linger` before aborting the rest.
pub(crate) async fn accept_until<T, F, Fut>(
    listener: &TcpListener,
    shutdown: &CancellationToken,
    linger: Option<Duration>,
    mut serve: F,
    mut finished: impl FnMut(Result<T, JoinError>),
) where
    F: FnMut(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(done) = connections.join_next(), if !connections.is_empty() => {
                finished(done);
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                // Small frames must not wait for Nagle's algorithm.
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::warn!(%peer, error = %e, "could not set TCP_NODELAY");
                }
                connections.spawn(serve(stream, peer));
            }
            // Per-connection failures (e.g. the peer reset before accept)
            // do not stop the listener; running out of descriptors would
            // spin, so back off briefly.
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    let drain = async {
        while let Some(done) = connections.join_next().await {
            finished(done);
        }
    };
    match linger {
        None => drain.await,
        Some(linger) => {
            if tokio::time::timeout(linger, drain).await.is_err() {
                connections.abort_all();
            }
        }
    }
}
