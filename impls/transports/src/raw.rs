//! raw: the TCP baseline. The same bytes as the RPC transports, with the
//! least framing that still lets many reads share a connection, so it
//! measures what the socket and the backend cost and nothing else.
//!
//! # Wire
//!
//! Request, 13 bytes, little-endian: `op` (u8), `offset` (u64), `length`
//! (u32). Ops reuse frpc's codes: 1 `ReadAt`, 3 `Size`, 17 seeder
//! `ReadAt`, 18 seeder `Size`; `Size` requests carry offset 0 and length 0.
//!
//! Reply: a u32 word, then a body. With the top bit clear the word is the
//! body length and the body is the data (for `Size`, 8 bytes of u64). With
//! the top bit set the rest of the word is the length of a JSON
//! [`RemoteError`] body.
//!
//! There are no request ids: replies come back in request order. The
//! server still runs requests concurrently (up to
//! [`TransportConfig::max_in_flight`] per connection), it only sends the
//! replies in order, so a slow read holds back the replies behind it.
//!
//! # Behavior
//!
//! - Only reads: `WriteAt`, `Sync`, `Track` and `Close` fail at once on the
//!   client with an error saying the raw baseline does not carry them.
//! - An unknown op, a read over the maximum message or non-zero fields on a
//!   `Size` get an error reply after the replies before it, then the server
//!   closes the connection.
//! - A reply over the client's limit, a body longer than asked for, a reply
//!   nobody asked for, or the peer closing fails every waiting call on that
//!   connection, and all later ones.

use std::collections::VecDeque;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use backends::{BackendError, Result};

use crate::kind::TransportConfig;
use crate::meter::{ByteCounters, Counted, Meter};
use crate::pending::Failure;
use crate::remote::Rpc;
use crate::server::ServeStats;
use crate::service::{check_limit, dispatch, Call, Outcome, RemoteError, Services};

/// Request size in bytes.
pub const REQUEST_LEN: usize = 13;
/// The reply word's bit that marks an error body.
pub const ERROR_BIT: u32 = 1 << 31;
/// The largest payload the reply word can describe.
pub const MAX_PAYLOAD: u32 = ERROR_BIT - 1;
/// The largest error body a client accepts.
const MAX_ERROR_BODY: u32 = 64 * 1024;

const OP_READ: u8 = 1;
const OP_SIZE: u8 = 3;
const OP_SEEDER_READ: u8 = 0x11;
const OP_SEEDER_SIZE: u8 = 0x12;

/// Bad bytes on a raw connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RawError {
    /// The op byte names no raw operation.
    #[error("unknown raw op {0}; the raw baseline knows 1 (ReadAt), 3 (Size), 17 (seeder ReadAt), 18 (seeder Size)")]
    UnknownOp(u8),
    /// A read asking more than the maximum message.
    #[error("read of {length} bytes is over the maximum message size of {max} bytes")]
    TooLarge { length: u32, max: u32 },
    /// A `Size` with a non-zero offset or length.
    #[error("Size requests carry offset 0 and length 0, got offset {offset} and length {length}")]
    NonZeroFields { offset: u64, length: u32 },
}

/// Encodes a request.
pub fn encode_request(op: u8, offset: u64, length: u32) -> [u8; REQUEST_LEN] {
    let mut out = [0; REQUEST_LEN];
    out[0] = op;
    out[1..9].copy_from_slice(&offset.to_le_bytes());
    out[9..13].copy_from_slice(&length.to_le_bytes());
    out
}

/// Decodes and validates a request.
pub fn decode_request(
    src: &[u8; REQUEST_LEN],
    max_message: u32,
) -> std::result::Result<Call, RawError> {
    let op = src[0];
    let mut offset = [0; 8];
    offset.copy_from_slice(&src[1..9]);
    let offset = u64::from_le_bytes(offset);
    let mut length = [0; 4];
    length.copy_from_slice(&src[9..13]);
    let length = u32::from_le_bytes(length);
    match op {
        OP_READ | OP_SEEDER_READ if length > max_message.min(MAX_PAYLOAD) => {
            Err(RawError::TooLarge {
                length,
                max: max_message.min(MAX_PAYLOAD),
            })
        }
        OP_READ => Ok(Call::ReadAt { offset, length }),
        OP_SEEDER_READ => Ok(Call::SeederReadAt { offset, length }),
        OP_SIZE | OP_SEEDER_SIZE if offset != 0 || length != 0 => {
            Err(RawError::NonZeroFields { offset, length })
        }
        OP_SIZE => Ok(Call::Size),
        OP_SEEDER_SIZE => Ok(Call::SeederSize),
        other => Err(RawError::UnknownOp(other)),
    }
}

/// An error reply: the word, then the JSON error.
fn error_reply(err: &BackendError) -> Bytes {
    let mut json = serde_json::to_vec(&RemoteError::from(err)).unwrap_or_default();
    json.truncate(MAX_ERROR_BODY as usize);
    let mut out = BytesMut::with_capacity(4 + json.len());
    out.put_u32_le(ERROR_BIT | json.len() as u32);
    out.put_slice(&json);
    out.freeze()
}

/// Runs one request; reads land straight after the reply word.
async fn answer(call: Call, services: Services) -> Bytes {
    let result = match call {
        Call::ReadAt { offset, length } | Call::SeederReadAt { offset, length } => {
            let len = length as usize;
            let mut out = BytesMut::zeroed(4 + len);
            let read = match (&call, &services) {
                (
                    Call::ReadAt { .. },
                    Services {
                        backend: Some(b), ..
                    },
                ) => b.read_at(&mut out[4..], offset).await,
                (
                    Call::SeederReadAt { .. },
                    Services {
                        seeder: Some(s), ..
                    },
                ) => s.read_at(&mut out[4..], offset).await,
                _ => dispatch(&services, call.clone()).await.map(|_| 0),
            };
            match read {
                Ok(n) => {
                    let n = n.min(len);
                    out.truncate(4 + n);
                    out[..4].copy_from_slice(&(n as u32).to_le_bytes());
                    return out.freeze();
                }
                Err(e) => Err(e),
            }
        }
        other => dispatch(&services, other).await,
    };
    match result {
        Ok(Outcome::Size(size)) => {
            let mut out = BytesMut::with_capacity(12);
            out.put_u32_le(8);
            out.put_u64_le(size);
            out.freeze()
        }
        Ok(other) => error_reply(&BackendError::Remote(format!(
            "raw baseline cannot carry a {} result",
            other.shape()
        ))),
        Err(e) => error_reply(&e),
    }
}

/// Serves one connection until the peer closes it, it sends a bad request,
/// or `shutdown` fires.
pub async fn serve_connection<S>(
    stream: S,
    services: Services,
    config: TransportConfig,
    meter: Arc<Meter>,
    shutdown: CancellationToken,
) -> std::result::Result<(), RawError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (rd, wr) = tokio::io::split(stream);
    let mut rd = BufReader::new(rd);
    let (tx, rx) = mpsc::channel::<JoinHandle<Bytes>>(config.max_in_flight.max(1));
    let mut writer = tokio::spawn(write_in_order(wr, rx));
    let mut outcome = Ok(());
    loop {
        let mut head = [0; REQUEST_LEN];
        let read = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            read = rd.read_exact(&mut head) => read,
        };
        if read.is_err() {
            // A clean close, a reset, or a cut request: nothing to answer.
            break;
        }
        let in_flight = meter.begin();
        let task = match decode_request(&head, config.max_message) {
            Ok(call) => {
                let services = services.clone();
                tokio::spawn(async move {
                    let reply = answer(call, services).await;
                    drop(in_flight);
                    reply
                })
            }
            Err(e) => {
                let reply = error_reply(&BackendError::Remote(format!(
                    "server rejected the connection: {e}"
                )));
                outcome = Err(e);
                drop(in_flight);
                tokio::spawn(async move { reply })
            }
        };
        let abort = task.abort_handle();
        let sent = tokio::select! {
            biased;
            () = shutdown.cancelled() => { abort.abort(); break }
            sent = tx.send(task) => sent,
        };
        if sent.is_err() || outcome.is_err() {
            break;
        }
    }
    drop(tx);
    if tokio::time::timeout(config.linger, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
    outcome
}

/// Writes each reply when its turn comes, flushing only when the next one
/// is not ready yet.
async fn write_in_order<W: AsyncWrite + Unpin>(
    wr: W,
    mut rx: mpsc::Receiver<JoinHandle<Bytes>>,
) -> std::io::Result<()> {
    let mut wr = BufWriter::with_capacity(64 * 1024, wr);
    while let Some(task) = rx.recv().await {
        if !task.is_finished() {
            wr.flush().await?;
        }
        match task.await {
            Ok(reply) => wr.write_all(&reply).await?,
            // A panicking backend: the order is lost, so the connection is.
            Err(e) => return Err(std::io::Error::other(e)),
        }
        if rx.is_empty() {
            wr.flush().await?;
        }
    }
    wr.flush().await?;
    wr.shutdown().await
}

/// Serves `services` on every connection to `listener` until `shutdown`.
pub async fn serve_listener(
    listener: TcpListener,
    services: Services,
    config: TransportConfig,
    shutdown: CancellationToken,
) -> std::io::Result<ServeStats> {
    let meter = Arc::new(Meter::default());
    crate::accept::accept_until(
        &listener,
        &shutdown,
        None,
        |stream, peer| {
            let served = serve_connection(
                Counted::new(stream, meter.bytes.clone()),
                services.clone(),
                config.clone(),
                meter.clone(),
                shutdown.child_token(),
            );
            async move {
                if let Err(e) = served.await {
                    tracing::debug!(%peer, error = %e, "raw connection closed on a bad request");
                }
            }
        },
        drop,
    )
    .await;
    Ok(meter.stats())
}

type Waiter = oneshot::Sender<Result<Bytes>>;

#[derive(Debug, Default)]
struct Fifo {
    waiting: VecDeque<Waiter>,
    failed: Option<Failure>,
}

impl Fifo {
    fn fail(fifo: &Mutex<Fifo>, failure: Failure) {
        let (waiting, failure) = {
            let mut f = fifo.lock();
            let failure = f.failed.get_or_insert(failure).clone();
            (std::mem::take(&mut f.waiting), failure)
        };
        for tx in waiting {
            let _ = tx.send(Err(failure.to_error()));
        }
    }
}

/// One raw connection: requests go out in order, replies are matched to
/// callers in the same order.
#[derive(Debug)]
pub struct RawClient {
    requests: mpsc::Sender<([u8; REQUEST_LEN], Waiter)>,
    fifo: Arc<Mutex<Fifo>>,
    max_message: u32,
    closing: CancellationToken,
}

impl RawClient {
    /// A client on `stream`.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime: the client spawns its reader and writer.
    pub fn new<S>(stream: S, config: &TransportConfig) -> Self
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (rd, wr) = tokio::io::split(stream);
        let fifo = Arc::new(Mutex::new(Fifo::default()));
        let closing = CancellationToken::new();
        let (requests, rx) = mpsc::channel(config.max_in_flight.max(1));
        let max_message = config.max_message.min(MAX_PAYLOAD);
        tokio::spawn({
            let fifo = fifo.clone();
            let closing = closing.clone();
            async move {
                let failure = tokio::select! {
                    biased;
                    () = closing.cancelled() => Failure::Closed,
                    written = send_requests(wr, rx, &fifo) => match written {
                        Ok(()) => Failure::Closed,
                        Err(e) => Failure::Broken(format!("writing to the raw server failed: {e}")),
                    },
                };
                Fifo::fail(&fifo, failure);
                closing.cancel();
            }
        });
        tokio::spawn({
            let fifo = fifo.clone();
            let closing = closing.clone();
            async move {
                let failure = tokio::select! {
                    biased;
                    () = closing.cancelled() => Failure::Closed,
                    failure = read_replies(rd, &fifo, max_message) => failure,
                };
                tracing::debug!(?failure, "raw client connection ended");
                Fifo::fail(&fifo, failure);
                closing.cancel();
            }
        });
        Self {
            requests,
            fifo,
            max_message,
            closing,
        }
    }

    /// Whether the connection has failed or closed.
    pub fn is_closed(&self) -> bool {
        self.fifo.lock().failed.is_some()
    }

    async fn request(&self, op: u8, offset: u64, length: u32) -> Result<Bytes> {
        if let Some(failure) = &self.fifo.lock().failed {
            return Err(failure.to_error());
        }
        let (tx, rx) = oneshot::channel();
        let request = encode_request(op, offset, length);
        if self.requests.send((request, tx)).await.is_err() {
            return Err(self.failure());
        }
        match rx.await {
            Ok(reply) => reply,
            // Dropped unsent when the writer stopped.
            Err(_) => Err(self.failure()),
        }
    }

    fn failure(&self) -> BackendError {
        self.fifo
            .lock()
            .failed
            .as_ref()
            .map_or(BackendError::Closed, Failure::to_error)
    }
}

impl Drop for RawClient {
    fn drop(&mut self) {
        self.closing.cancel();
    }
}

async fn send_requests<W: AsyncWrite + Unpin>(
    wr: W,
    mut rx: mpsc::Receiver<([u8; REQUEST_LEN], Waiter)>,
    fifo: &Mutex<Fifo>,
) -> std::io::Result<()> {
    let mut wr = BufWriter::with_capacity(64 * 1024, wr);
    while let Some((request, waiter)) = rx.recv().await {
        {
            // Queued before it is written, so its reply always finds it;
            // refused under the same lock the reader fails under.
            let mut f = fifo.lock();
            if let Some(failure) = &f.failed {
                let _ = waiter.send(Err(failure.to_error()));
                return Ok(());
            }
            f.waiting.push_back(waiter);
        }
        wr.write_all(&request).await?;
        if rx.is_empty() {
            wr.flush().await?;
        }
    }
    wr.shutdown().await
}

async fn read_replies<R: AsyncRead + Unpin>(
    rd: R,
    fifo: &Mutex<Fifo>,
    max_message: u32,
) -> Failure {
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    loop {
        let mut word = [0; 4];
        match rd.read_exact(&mut word).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Failure::Closed,
            Err(e) => return Failure::Broken(format!("reading from the raw server failed: {e}")),
        }
        let word = u32::from_le_bytes(word);
        let (is_error, len) = (word & ERROR_BIT != 0, word & !ERROR_BIT);
        let limit = if is_error {
            MAX_ERROR_BODY
        } else {
            max_message
        };
        if len > limit {
            return Failure::Broken(format!(
                "raw reply of {len} bytes is over the limit of {limit} bytes"
            ));
        }
        let mut body = BytesMut::with_capacity(len as usize);
        while body.len() < len as usize {
            let want = len as u64 - body.len() as u64;
            match (&mut rd).take(want).read_buf(&mut body).await {
                Ok(0) => {
                    return Failure::Broken(format!(
                        "raw server closed after {} of {len} reply bytes",
                        body.len()
                    ))
                }
                Ok(_) => {}
                Err(e) => {
                    return Failure::Broken(format!("reading from the raw server failed: {e}"))
                }
            }
        }
        let result = if is_error {
            match serde_json::from_slice::<RemoteError>(&body) {
                Ok(e) => Err(BackendError::from(e)),
                Err(e) => return Failure::Broken(format!("malformed raw error reply: {e}")),
            }
        } else {
            Ok(body.freeze())
        };
        let waiter = fifo.lock().waiting.pop_front();
        match waiter {
            // The caller may have given up; its reply is dropped.
            Some(tx) => {
                let _ = tx.send(result);
            }
            None => return Failure::Broken("raw server sent a reply nobody asked for".into()),
        }
    }
}

#[async_trait]
impl Rpc for RawClient {
    async fn call(&self, call: Call) -> Result<Outcome> {
        let (op, offset, length) = match call {
            Call::ReadAt { offset, length } => (OP_READ, offset, length),
            Call::SeederReadAt { offset, length } => (OP_SEEDER_READ, offset, length),
            Call::Size => (OP_SIZE, 0, 0),
            Call::SeederSize => (OP_SEEDER_SIZE, 0, 0),
            other => {
                return Err(BackendError::Remote(format!(
                    "{} is not supported by the raw TCP baseline, which only reads",
                    other.method()
                )))
            }
        };
        check_limit(&call, self.max_message)?;
        let body = self.request(op, offset, length).await?;
        if op == OP_SIZE || op == OP_SEEDER_SIZE {
            let size: [u8; 8] = body[..].try_into().map_err(|_| {
                BackendError::Remote(format!(
                    "raw Size reply is {} bytes, expected 8",
                    body.len()
                ))
            })?;
            return Ok(Outcome::Size(u64::from_le_bytes(size)));
        }
        Ok(Outcome::Data(body))
    }

    fn max_message(&self) -> u32 {
        self.max_message
    }

    fn is_closed(&self) -> bool {
        RawClient::is_closed(self)
    }
}

/// One raw connection to `addr` as an [`Rpc`].
pub(crate) async fn connect_rpc(
    addr: std::net::SocketAddr,
    config: &TransportConfig,
    bytes: Arc<ByteCounters>,
) -> std::io::Result<Arc<dyn Rpc>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(Arc::new(RawClient::new(
        Counted::new(stream, bytes),
        config,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_bad_ones_are_named() {
        let r = encode_request(OP_READ, 4096, 512);
        assert_eq!(
            decode_request(&r, 1024),
            Ok(Call::ReadAt {
                offset: 4096,
                length: 512
            })
        );
        assert_eq!(
            decode_request(&encode_request(OP_SEEDER_SIZE, 0, 0), 1024),
            Ok(Call::SeederSize)
        );
        assert_eq!(
            decode_request(&encode_request(OP_READ, 0, 1025), 1024),
            Err(RawError::TooLarge {
                length: 1025,
                max: 1024
            })
        );
        assert_eq!(
            decode_request(&encode_request(2, 0, 0), 1024),
            Err(RawError::UnknownOp(2))
        );
        assert!(matches!(
            decode_request(&encode_request(OP_SIZE, 1, 0), 1024),
            Err(RawError::NonZeroFields { .. })
        ));
    }
}
