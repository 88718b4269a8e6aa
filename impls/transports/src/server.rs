//! The frpc server: answers requests from one stream out of a backend
//! (and/or a seeder, [`serve_services`]).
//!
//! # Behavior
//!
//! - Requests are read in order and handled concurrently, up to
//!   [`ServeConfig::max_in_flight`] at once; past that the server stops
//!   reading, which pushes back on the peer through the stream.
//! - Replies go out through one writer task in completion order, batched.
//! - The peer closing its side between frames ends the connection cleanly:
//!   requests in flight are answered, then the stream is shut down.
//! - A bad frame (bad magic, unknown op, over the size limit, garbage) ends
//!   the connection with [`ServeError::Protocol`]; the peer first gets a
//!   [`Status::ProtocolError`] reply with id 0 saying why. Nothing the bad
//!   header announced is allocated.
//! - [`serve_with`] also stops on a [`CancellationToken`]: it stops reading,
//!   answers what is in flight, and returns `Ok`.
//!
//! # Limitations
//!
//! The in-flight cap counts requests, not bytes: 1024 reads of 32 MiB may
//! hold 32 GiB. Peers are the benchmark's own processes, so the cap exists
//! against runaway pipelines rather than hostile clients.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use backends::{BackendError, SharedBackend};

use crate::conn::{write_loop, FrameReader, OutFrame, ReadError};
use crate::service::{dispatch, not_served, Call, Outcome, ServiceKind, Services};
use crate::wire::{Op, Reply, ReplyHeader, Request, Status, WireError, DEFAULT_MAX_MESSAGE};

/// Default cap on requests handled at once per connection: more than any
/// puller keeps in flight, few enough that the tasks are cheap.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;

/// How long a closing connection may take to deliver its last replies before
/// it is dropped: a peer that stopped reading must not hold the server.
pub const DEFAULT_LINGER: Duration = Duration::from_secs(5);

/// How one connection is served.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Largest body accepted or sent, in bytes.
    pub max_message: u32,
    /// Requests handled at once; at least 1.
    pub max_in_flight: usize,
    /// Time allowed to deliver the last replies when the connection closes
    /// on shutdown or on a bad frame.
    pub linger: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            max_message: DEFAULT_MAX_MESSAGE,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            linger: DEFAULT_LINGER,
        }
    }
}

/// What one connection carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServeStats {
    /// Requests read (and answered, unless the connection failed).
    pub requests: u64,
    /// Bytes read from the stream, headers included.
    pub bytes_received: u64,
    /// Bytes written to the stream, headers included.
    pub bytes_sent: u64,
    /// Most requests handled at once.
    pub peak_in_flight: usize,
}

impl std::ops::AddAssign for ServeStats {
    fn add_assign(&mut self, other: Self) {
        self.requests += other.requests;
        self.bytes_received += other.bytes_received;
        self.bytes_sent += other.bytes_sent;
        self.peak_in_flight = self.peak_in_flight.max(other.peak_in_flight);
    }
}

/// Why a connection ended badly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Reading from or writing to the stream failed.
    #[error("connection I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent a frame that breaks the protocol.
    #[error("peer sent a bad frame: {0}")]
    Protocol(#[from] WireError),
    /// The peer closed in the middle of a frame.
    #[error("peer closed the connection after {buffered} bytes of an unfinished frame")]
    Truncated { buffered: usize },
    /// A backend call panicked; its request could not be answered.
    #[error("a request handler panicked: {0}")]
    HandlerPanicked(String),
    /// The last replies could not be delivered within the linger time.
    #[error("peer did not take the last replies within {0:?}")]
    LingerExpired(Duration),
}

impl From<ReadError> for ServeError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Io(e) => Self::Io(e),
            ReadError::Wire(e) => Self::Protocol(e),
            ReadError::Truncated { buffered } => Self::Truncated { buffered },
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    bytes_received: Arc<AtomicU64>,
    bytes_sent: Arc<AtomicU64>,
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
}

/// Serves `backend` on `stream` until the peer closes it.
///
/// Equivalent to [`serve_with`] with default settings but `max_message`, and
/// a token that is never cancelled.
pub async fn serve<S>(
    stream: S,
    backend: SharedBackend,
    max_message: u32,
) -> Result<ServeStats, ServeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = ServeConfig {
        max_message,
        ..ServeConfig::default()
    };
    serve_with(stream, backend, config, CancellationToken::new()).await
}

/// Serves `backend` on `stream` until the peer closes it or `shutdown` is
/// cancelled. See the module docs for what happens in each case.
pub async fn serve_with<S>(
    stream: S,
    backend: SharedBackend,
    config: ServeConfig,
    shutdown: CancellationToken,
) -> Result<ServeStats, ServeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve_services(stream, Services::backend(backend), config, shutdown).await
}

/// Serves whichever of the backend and seeder services `services` exposes
/// on `stream`, as [`serve_with`] does for a backend alone.
pub async fn serve_services<S>(
    stream: S,
    services: Services,
    config: ServeConfig,
    shutdown: CancellationToken,
) -> Result<ServeStats, ServeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let max_in_flight = config.max_in_flight.max(1);
    let counters = Arc::new(Counters::default());
    let (rd, wr) = tokio::io::split(stream);
    let mut reader = FrameReader::new(rd, config.max_message, counters.bytes_received.clone());
    let (tx, rx) = mpsc::channel::<OutFrame>(max_in_flight);
    let mut writer = tokio::spawn(write_loop(wr, rx, counters.bytes_sent.clone()));
    let permits = Arc::new(Semaphore::new(max_in_flight));
    // Dropping the set (on every early return) aborts the handlers.
    let mut handlers = JoinSet::new();
    let mut requests = 0u64;

    let ended = loop {
        if let Err(e) = reap(&mut handlers) {
            break Ended::Failed(e);
        }
        let read = tokio::select! {
            biased;
            () = shutdown.cancelled() => break Ended::Shutdown,
            read = reader.read_frame::<Request>() => read,
        };
        let request = match read {
            Ok(Some(request)) => request,
            Ok(None) => break Ended::PeerClosed,
            Err(e) => break Ended::Failed(e.into()),
        };
        let permit = tokio::select! {
            biased;
            () = shutdown.cancelled() => break Ended::Shutdown,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                // The semaphore is never closed; treat it as a shutdown.
                Err(_) => break Ended::Shutdown,
            },
        };
        requests += 1;
        let in_flight = counters.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        counters
            .peak_in_flight
            .fetch_max(in_flight, Ordering::Relaxed);
        handlers.spawn(handle(
            request,
            services.clone(),
            tx.clone(),
            permit,
            counters.clone(),
            config.max_message,
        ));
    };

    let result = match ended {
        // The peer may have closed only its sending side and still read:
        // answer everything, however long the backend takes.
        Ended::PeerClosed => drain(handlers, tx, &mut writer).await,
        Ended::Shutdown => {
            match tokio::time::timeout(config.linger, drain(handlers, tx, &mut writer)).await {
                Ok(result) => result,
                Err(_) => {
                    writer.abort();
                    Err(ServeError::LingerExpired(config.linger))
                }
            }
        }
        Ended::Failed(e) => {
            handlers.abort_all();
            if let ServeError::Protocol(wire) = &e {
                tracing::debug!(error = %wire, "closing frpc connection on a bad frame");
                let mut frame = BytesMut::new();
                Reply::encode(
                    &mut frame,
                    0,
                    Status::ProtocolError,
                    wire.to_string().as_bytes(),
                );
                // Best effort: a full queue means the peer is not reading.
                let _ = tx.try_send(frame.freeze().into());
            }
            drop(tx);
            // The connection failed already; failing to say so adds nothing.
            if tokio::time::timeout(config.linger, &mut writer)
                .await
                .is_err()
            {
                writer.abort();
            }
            Err(e)
        }
    };
    result.map(|()| ServeStats {
        requests,
        bytes_received: counters.bytes_received.load(Ordering::Relaxed),
        bytes_sent: counters.bytes_sent.load(Ordering::Relaxed),
        peak_in_flight: counters.peak_in_flight.load(Ordering::Relaxed),
    })
}

/// How the read loop ended.
#[derive(Debug)]
enum Ended {
    PeerClosed,
    Shutdown,
    Failed(ServeError),
}

/// Waits for every handler, then for the writer to send their replies and
/// shut the stream down.
async fn drain(
    mut handlers: JoinSet<()>,
    tx: mpsc::Sender<OutFrame>,
    writer: &mut JoinHandle<std::io::Result<()>>,
) -> Result<(), ServeError> {
    let mut panicked = None;
    while let Some(done) = handlers.join_next().await {
        if let Err(e) = check_join(done) {
            panicked.get_or_insert(e);
        }
    }
    // The writer ends once every sender is gone.
    drop(tx);
    let written = match writer.await {
        Ok(result) => result.map_err(ServeError::Io),
        Err(e) => Err(ServeError::Io(std::io::Error::other(e))),
    };
    match panicked {
        Some(e) => Err(e),
        None => written,
    }
}

/// Accepts connections on `listener` and serves each with [`serve_with`]
/// until `shutdown` is cancelled; then lets every connection finish what is
/// in flight and returns the sum of their stats. A connection that fails is
/// logged and does not stop the others.
pub async fn serve_listener(
    listener: TcpListener,
    backend: SharedBackend,
    config: ServeConfig,
    shutdown: CancellationToken,
) -> std::io::Result<ServeStats> {
    serve_listener_services(listener, Services::backend(backend), config, shutdown).await
}

/// [`serve_listener`] for any [`Services`].
pub async fn serve_listener_services(
    listener: TcpListener,
    services: Services,
    config: ServeConfig,
    shutdown: CancellationToken,
) -> std::io::Result<ServeStats> {
    let mut total = ServeStats::default();
    crate::accept::accept_until(
        &listener,
        &shutdown,
        None,
        |stream, peer| {
            tracing::debug!(%peer, "frpc connection accepted");
            serve_services(
                stream,
                services.clone(),
                config.clone(),
                shutdown.child_token(),
            )
        },
        |done| add_connection(&mut total, done),
    )
    .await;
    Ok(total)
}

fn add_connection(total: &mut ServeStats, done: Result<Result<ServeStats, ServeError>, JoinError>) {
    match done {
        Ok(Ok(stats)) => *total += stats,
        Ok(Err(e)) => tracing::warn!(error = %e, "frpc connection failed"),
        Err(e) => tracing::warn!(error = %e, "frpc connection task failed"),
    }
}

fn check_join(done: Result<(), JoinError>) -> Result<(), ServeError> {
    match done {
        Ok(()) => Ok(()),
        Err(e) if e.is_panic() => Err(ServeError::HandlerPanicked(e.to_string())),
        // Only aborted by us, on the way out.
        Err(_) => Ok(()),
    }
}

/// Collects finished handlers so the set does not grow with every request.
fn reap(handlers: &mut JoinSet<()>) -> Result<(), ServeError> {
    while let Some(done) = handlers.try_join_next() {
        check_join(done)?;
    }
    Ok(())
}

async fn handle(
    request: Request,
    services: Services,
    replies: mpsc::Sender<OutFrame>,
    permit: OwnedSemaphorePermit,
    counters: Arc<Counters>,
    max_message: u32,
) {
    let reply = execute(request, &services, max_message).await;
    // A closed queue means the connection is going away; nobody to tell.
    let _ = replies.send(reply).await;
    counters.in_flight.fetch_sub(1, Ordering::Relaxed);
    drop(permit);
}

/// Runs one request against the services and encodes its reply.
async fn execute(request: Request, services: &Services, max_message: u32) -> OutFrame {
    let header = request.header;
    let id = header.id;
    let mut frame = BytesMut::new();
    if matches!(header.op, Op::ReadAt | Op::SeederReadAt) {
        // Read straight into the reply frame: one allocation, no copy.
        let len = header.length as usize;
        frame.resize(ReplyHeader::LEN + len, 0);
        let buf = &mut frame[ReplyHeader::LEN..];
        let read = if header.op == Op::ReadAt {
            match services.backend.as_deref() {
                Some(backend) => backend.read_at(buf, header.offset).await,
                None => Err(not_served(ServiceKind::Backend)),
            }
        } else {
            match services.seeder.as_deref() {
                Some(seeder) => seeder.read_at(buf, header.offset).await,
                None => Err(not_served(ServiceKind::Seeder)),
            }
        };
        match read {
            Ok(n) => {
                let n = n.min(len);
                frame.truncate(ReplyHeader::LEN + n);
                let mut head = &mut frame[..ReplyHeader::LEN];
                ReplyHeader {
                    id,
                    status: Status::Ok,
                    length: n as u32,
                }
                .encode(&mut head);
                return frame.freeze().into();
            }
            Err(e) => {
                frame.clear();
                encode_backend_error(&mut frame, id, &e, max_message);
                return frame.freeze().into();
            }
        }
    }
    let call = match header.op {
        Op::WriteAt => Call::WriteAt {
            offset: header.offset,
            data: request.body,
        },
        Op::Size => Call::Size,
        Op::Sync => Call::Sync,
        Op::SeederSize => Call::SeederSize,
        Op::Track => Call::Track,
        Op::SeederSync => Call::SeederSync,
        Op::Dirty => Call::Dirty,
        Op::Close => Call::Close,
        // Handled above.
        Op::ReadAt | Op::SeederReadAt => Call::ReadAt {
            offset: header.offset,
            length: header.length,
        },
    };
    let body = match dispatch(services, call).await {
        Ok(Outcome::Data(data)) => Ok(data),
        Ok(Outcome::Done) => Ok(Bytes::new()),
        Ok(Outcome::Size(size)) => Ok(Bytes::copy_from_slice(&size.to_le_bytes())),
        Ok(Outcome::Dirty(offsets)) => dirty_body(&offsets, max_message),
        Err(e) => Err(e),
    };
    match body {
        Ok(body) => {
            ReplyHeader {
                id,
                status: Status::Ok,
                length: body.len() as u32,
            }
            .encode(&mut frame);
            OutFrame {
                head: frame.freeze(),
                body,
            }
        }
        Err(e) => {
            encode_backend_error(&mut frame, id, &e, max_message);
            frame.freeze().into()
        }
    }
}

/// The dirty offsets as `u64`s, or an error if they do not fit one message.
fn dirty_body(offsets: &[u64], max_message: u32) -> Result<Bytes, BackendError> {
    let len = offsets.len().saturating_mul(8);
    if len > max_message as usize {
        return Err(BackendError::Remote(format!(
            "{} dirty offsets take {len} bytes, over the maximum message size of {max_message} bytes",
            offsets.len()
        )));
    }
    let mut body = BytesMut::with_capacity(len);
    for offset in offsets {
        body.put_u64_le(*offset);
    }
    Ok(body.freeze())
}

fn encode_backend_error(frame: &mut BytesMut, id: u64, err: &BackendError, max_message: u32) {
    tracing::trace!(id, error = %err, "frpc request failed");
    Reply::encode_error(frame, id, err, max_message);
}
