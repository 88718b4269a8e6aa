//! The frpc client: a [`Backend`] whose bytes live behind a stream, and an
//! [`Rpc`] that carries the seeder service's calls too (wrap it in a
//! [`crate::RemoteSeeder`]).
//!
//! # Behavior
//!
//! - Any number of calls may be in flight on one stream. Each call gets a
//!   fresh request id and a oneshot in the pending map, then queues its
//!   frame for the writer task; the reader task routes each reply to its
//!   caller by id.
//! - The connection fails as a whole: a reply for an unknown id, a malformed
//!   frame, the peer closing, or a write error fails every pending call
//!   ([`BackendError::Closed`] when the peer closed cleanly,
//!   [`BackendError::Remote`] otherwise), and every later call fails at
//!   once. No call waits on a dead connection.
//! - A call dropped before its reply arrives is harmless: its reply is
//!   discarded on arrival.
//! - Accesses larger than the maximum message are split into pieces of at
//!   most that size, sent concurrently. A split write is checked against the
//!   size first, so an out-of-range write still writes nothing.
//! - [`Backend::size`] is asked once and cached: a backend's size is fixed
//!   for its lifetime.
//!
//! Dropping the client stops both tasks and closes the stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use bytes::{Buf, Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use backends::{Backend, BackendError, Result};

use crate::conn::{write_loop, FrameReader, OutFrame};
use crate::remote::{self, Rpc};
use crate::service::{Call, Outcome, ServiceKind};
use crate::wire::{Op, Reply, Request, RequestHeader, Status, DEFAULT_MAX_MESSAGE};

/// Default depth of the queue between callers and the writer task: frames
/// beyond it wait in their callers, so memory stays bounded under bursts.
pub const DEFAULT_QUEUE_DEPTH: usize = 1024;

/// How a client talks to its server.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Largest body sent or accepted, in bytes; must match the server's.
    pub max_message: u32,
    /// Frames queued for the writer before callers wait; at least 1.
    pub queue_depth: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            max_message: DEFAULT_MAX_MESSAGE,
            queue_depth: DEFAULT_QUEUE_DEPTH,
        }
    }
}

/// What a client's stream carried so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Requests sent (split accesses count each piece).
    pub requests: u64,
    /// Bytes written to the stream, headers included.
    pub bytes_sent: u64,
    /// Bytes read from the stream, headers included.
    pub bytes_received: u64,
}

type ReplySender = oneshot::Sender<Result<Reply>>;

/// Why the connection is unusable; kept so every later call gets the same
/// answer (a `BackendError` itself is not `Clone`).
#[derive(Debug, Clone)]
enum Failure {
    PeerClosed,
    Broken(String),
}

impl Failure {
    fn to_error(&self) -> BackendError {
        match self {
            Self::PeerClosed => BackendError::Closed,
            Self::Broken(msg) => BackendError::Remote(msg.clone()),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    pending: HashMap<u64, ReplySender>,
    failed: Option<Failure>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    requests: AtomicU64,
    bytes_sent: Arc<AtomicU64>,
    bytes_received: Arc<AtomicU64>,
}

impl Shared {
    /// Marks the connection failed (the first failure wins) and fails every
    /// pending call. Registration checks `failed` under the same lock, so no
    /// call can slip in after the drain and wait forever.
    fn fail(&self, failure: Failure) {
        let pending = {
            let mut state = self.state.lock();
            let failure = state.failed.get_or_insert(failure).clone();
            std::mem::take(&mut state.pending)
                .into_values()
                .map(move |tx| (tx, failure.clone()))
                .collect::<Vec<_>>()
        };
        for (tx, failure) in pending {
            // The caller may have given up; nothing to do then.
            let _ = tx.send(Err(failure.to_error()));
        }
    }

    fn failure(&self) -> BackendError {
        self.state
            .lock()
            .failed
            .as_ref()
            .map_or(BackendError::Closed, Failure::to_error)
    }
}

/// Removes a registered call that never reached the writer queue (its
/// future was dropped, or the writer is gone). A call whose frame was queued
/// keeps its entry: the reply will come, and must find a known id.
struct Registration<'a> {
    shared: &'a Shared,
    id: u64,
    queued: bool,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if !self.queued {
            self.shared.state.lock().pending.remove(&self.id);
        }
    }
}

/// A [`Backend`] served by an frpc server at the other end of a stream.
#[derive(Debug)]
pub struct FrpcClient {
    shared: Arc<Shared>,
    frames: mpsc::Sender<OutFrame>,
    next_id: AtomicU64,
    max_message: u32,
    size: OnceLock<u64>,
    closing: CancellationToken,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl FrpcClient {
    /// A client on `stream` with default settings.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime: the client spawns its reader and writer.
    pub fn new<S>(stream: S) -> Self
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Self::with_config(stream, ClientConfig::default())
    }

    /// Connects over TCP (with `TCP_NODELAY`: requests are small and must not
    /// wait to be coalesced).
    pub async fn connect(addr: impl ToSocketAddrs, config: ClientConfig) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self::with_config(stream, config))
    }

    /// A client on `stream`.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime: the client spawns its reader and writer.
    pub fn with_config<S>(stream: S, config: ClientConfig) -> Self
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let shared = Arc::new(Shared::default());
        let closing = CancellationToken::new();
        let (rd, wr) = tokio::io::split(stream);
        let (frames, rx) = mpsc::channel(config.queue_depth.max(1));

        let writer = tokio::spawn({
            let shared = shared.clone();
            let closing = closing.clone();
            let sent = shared.bytes_sent.clone();
            async move {
                let outcome = tokio::select! {
                    biased;
                    () = closing.cancelled() => return,
                    outcome = write_loop(wr, rx, sent) => outcome,
                };
                let failure = match outcome {
                    // Only when the client is dropped, which aborts us first.
                    Ok(()) => Failure::PeerClosed,
                    // The peer hung up before the reader saw its EOF: the
                    // same clean close, seen from the other half.
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Failure::PeerClosed,
                    Err(e) => Failure::Broken(format!("writing to the server failed: {e}")),
                };
                shared.fail(failure);
                closing.cancel();
            }
        });

        let reader = tokio::spawn({
            let shared = shared.clone();
            let closing = closing.clone();
            let mut reader =
                FrameReader::new(rd, config.max_message, shared.bytes_received.clone());
            async move {
                let failure = loop {
                    let read = tokio::select! {
                        biased;
                        () = closing.cancelled() => return,
                        read = reader.read_frame::<Reply>() => read,
                    };
                    let reply = match read {
                        Ok(Some(reply)) => reply,
                        Ok(None) => break Failure::PeerClosed,
                        Err(e) => break Failure::Broken(format!("bad reply stream: {e}")),
                    };
                    if reply.header.status == Status::ProtocolError {
                        break Failure::Broken(format!(
                            "server rejected the connection: {}",
                            String::from_utf8_lossy(&reply.body)
                        ));
                    }
                    let id = reply.header.id;
                    let caller = shared.state.lock().pending.remove(&id);
                    match caller {
                        // The caller may have given up; its reply is dropped.
                        Some(tx) => {
                            let _ = tx.send(Ok(reply));
                        }
                        None => {
                            break Failure::Broken(format!(
                                "server replied to unknown request id {id}"
                            ))
                        }
                    }
                };
                tracing::debug!(?failure, "frpc client connection ended");
                shared.fail(failure);
                // Stop the writer too, which closes the stream.
                closing.cancel();
            }
        });

        Self {
            shared,
            frames,
            // Id 0 is the server's "about the connection" id.
            next_id: AtomicU64::new(1),
            max_message: config.max_message,
            size: OnceLock::new(),
            closing,
            reader,
            writer,
        }
    }

    /// What this client's stream carried so far.
    pub fn stats(&self) -> ClientStats {
        ClientStats {
            requests: self.shared.requests.load(Ordering::Relaxed),
            bytes_sent: self.shared.bytes_sent.load(Ordering::Relaxed),
            bytes_received: self.shared.bytes_received.load(Ordering::Relaxed),
        }
    }

    /// Whether the connection has failed or closed; every call fails then.
    pub fn is_closed(&self) -> bool {
        self.shared.state.lock().failed.is_some()
    }

    /// Sends one request and waits for its reply; error replies become
    /// errors. `body` is a `WriteAt`'s data, sent after the header as it is.
    async fn request(&self, op: Op, offset: u64, length: u32, body: Bytes) -> Result<Reply> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.shared.state.lock();
            if let Some(failure) = &state.failed {
                return Err(failure.to_error());
            }
            state.pending.insert(id, tx);
        }
        let mut registration = Registration {
            shared: &self.shared,
            id,
            queued: false,
        };
        let body = if op == Op::WriteAt {
            body
        } else {
            Bytes::new()
        };
        let mut head = BytesMut::with_capacity(RequestHeader::LEN);
        Request::encode_head(&mut head, id, op, offset, length, body.len());
        let frame = OutFrame {
            head: head.freeze(),
            body,
        };
        if self.frames.send(frame).await.is_err() {
            return Err(self.shared.failure());
        }
        registration.queued = true;
        self.shared.requests.fetch_add(1, Ordering::Relaxed);
        let reply = match rx.await {
            Ok(reply) => reply?,
            // The sender is only dropped by a drain, which sends first.
            Err(_) => return Err(self.shared.failure()),
        };
        match reply.error() {
            Ok(None) => Ok(reply),
            Ok(Some(e)) => Err(e),
            Err(e) => Err(BackendError::Remote(format!("bad {op:?} reply: {e}"))),
        }
    }
}

/// Decodes an `Ok` reply body into the outcome `op` returns.
fn outcome(op: Op, body: Bytes) -> Result<Outcome> {
    match op {
        Op::ReadAt | Op::SeederReadAt => Ok(Outcome::Data(body)),
        Op::Size | Op::SeederSize => {
            let mut b = &body[..];
            if b.len() != 8 {
                return Err(BackendError::Remote(format!(
                    "{} reply body is {} bytes, expected 8",
                    op.method(),
                    b.len()
                )));
            }
            Ok(Outcome::Size(b.get_u64_le()))
        }
        Op::SeederSync | Op::Dirty => {
            if !body.len().is_multiple_of(8) {
                return Err(BackendError::Remote(format!(
                    "{} reply body is {} bytes, not a whole number of u64 offsets",
                    op.method(),
                    body.len()
                )));
            }
            let mut b = &body[..];
            let mut offsets = Vec::with_capacity(body.len() / 8);
            while b.has_remaining() {
                offsets.push(b.get_u64_le());
            }
            Ok(Outcome::Dirty(offsets))
        }
        Op::WriteAt | Op::Sync | Op::Track | Op::Close => Ok(Outcome::Done),
    }
}

#[async_trait]
impl Rpc for FrpcClient {
    async fn call(&self, call: Call) -> Result<Outcome> {
        let op = Op::for_method(call.method());
        let (offset, length, body) = match call {
            Call::ReadAt { offset, length } | Call::SeederReadAt { offset, length } => {
                (offset, length, Bytes::new())
            }
            Call::WriteAt { offset, data } => (offset, 0, data),
            _ => (0, 0, Bytes::new()),
        };
        let reply = self.request(op, offset, length, body).await?;
        outcome(op, reply.body)
    }

    fn max_message(&self) -> u32 {
        self.max_message
    }

    fn is_closed(&self) -> bool {
        FrpcClient::is_closed(self)
    }
}

impl Drop for FrpcClient {
    fn drop(&mut self) {
        // Dropping both halves closes the stream, so the server sees EOF.
        self.closing.cancel();
        self.reader.abort();
        self.writer.abort();
    }
}

#[async_trait]
impl Backend for FrpcClient {
    async fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        remote::read_at(self, ServiceKind::Backend, buf, offset).await
    }

    async fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
        remote::write_at(self, &self.size, data, offset).await
    }

    async fn size(&self) -> Result<u64> {
        remote::size(self, ServiceKind::Backend, &self.size).await
    }

    async fn sync(&self) -> Result<()> {
        remote::sync(self).await
    }
}

/// One frpc connection to `addr` as an [`Rpc`] for a pooled
/// [`crate::Client`]; its bytes are counted into `bytes`.
pub(crate) async fn connect_rpc(
    addr: std::net::SocketAddr,
    config: &crate::kind::TransportConfig,
    bytes: Arc<crate::meter::ByteCounters>,
) -> std::io::Result<Arc<dyn Rpc>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let config = ClientConfig {
        max_message: config.max_message,
        queue_depth: config.max_in_flight,
    };
    Ok(Arc::new(FrpcClient::with_config(
        crate::meter::Counted::new(stream, bytes),
        config,
    )))
}
