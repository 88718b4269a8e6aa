//! jsonl: a dudirekta-style RPC of JSON lines over one stream.
//!
//! Both ends of a connection are **peers**: each may expose services and
//! each may call the other's, over the same stream, many calls in flight at
//! once in both directions. So a source can push to a destination that
//! cannot be dialed: the destination dials, then serves, and the source
//! calls it ([`serve_listener_with`] hands the source each connected peer).
//!
//! # Messages
//!
//! One JSON object per line (`\n`), no line over the limit (below):
//!
//! ```text
//! {"id":7,"call":{"ReadAt":{"offset":4096,"length":4096}}}
//! {"id":7,"reply":{"Ok":{"Data":"AAECAw=="}}}
//! {"id":8,"call":{"WriteAt":{"offset":0,"data":"aGVsbG8="}}}
//! {"id":8,"reply":{"Err":{"OutOfRange":{"offset":0,"len":5,"size":4}}}}
//! {"id":9,"call":"seeder.Sync"}
//! {"id":9,"reply":{"Ok":{"Dirty":[0,65536]}}}
//! {"abort":"line of 50000000 bytes is over the limit of 44739242"}
//! ```
//!
//! Each side numbers its own calls; a `reply` answers the other side's call
//! with that id. Bytes travel as base64 strings, as dudirekta does; that,
//! and JSON itself, make this the slow transport of the study, by design.
//! Method names are those of [`Method::name`]; errors are [`RemoteError`].
//!
//! # Limits and bad input
//!
//! A line may hold a payload of `max_message` bytes: its limit is the
//! base64 length of that plus 4 KiB of JSON. A longer line, a line that is
//! not a message, a reply to an id this side never used, or a call of an
//! unknown method ends the connection: the peer gets an `abort` line saying
//! why (for an unknown method, an error reply to that call first), every
//! call waiting on either side fails, and nothing more is read.
//!
//! # Shutdown
//!
//! Dropping the last handle of a peer, or cancelling the server's token,
//! stops reading, lets the calls this side is serving finish (up to the
//! linger time), sends their replies and closes the stream. The peer
//! closing its side does the same here.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use backends::{BackendError, Result, SharedBackend};

use crate::conn::{write_until, OutFrame};
use crate::kind::TransportConfig;
use crate::meter::{ByteCounters, Counted, Meter};
use crate::pending::{Failure, Pending};
use crate::remote::{RemoteBackend, RemoteSeeder, Rpc};
use crate::server::ServeStats;
use crate::service::{check_limit, dispatch, Call, Outcome, RemoteError, Services, SharedSeeder};

/// JSON and framing allowance on top of a payload's base64 length.
const LINE_OVERHEAD: usize = 4096;
/// Bytes read per call when a line's end is not buffered yet.
const READ_CHUNK: usize = 64 * 1024;

/// The longest line a peer accepts for a given maximum payload.
pub fn max_line(max_message: u32) -> usize {
    (max_message as usize).div_ceil(3) * 4 + LINE_OVERHEAD
}

/// Bytes as a base64 string.
#[derive(Debug, Clone, PartialEq, Eq)]
struct B64(Bytes);

impl Serialize for B64 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for B64 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = B64;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a base64 string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<B64, E> {
                base64::engine::general_purpose::STANDARD
                    .decode(v)
                    .map(|data| B64(Bytes::from(data)))
                    .map_err(|e| E::custom(format!("bad base64: {e}")))
            }
        }
        d.deserialize_str(Visitor)
    }
}

/// A call as it is written on a line.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum WireCall {
    ReadAt {
        offset: u64,
        length: u32,
    },
    WriteAt {
        offset: u64,
        data: B64,
    },
    Size,
    Sync,
    #[serde(rename = "seeder.ReadAt")]
    SeederReadAt {
        offset: u64,
        length: u32,
    },
    #[serde(rename = "seeder.Size")]
    SeederSize,
    #[serde(rename = "seeder.Track")]
    Track,
    #[serde(rename = "seeder.Sync")]
    SeederSync,
    #[serde(rename = "seeder.Dirty")]
    Dirty,
    #[serde(rename = "seeder.Close")]
    Close,
}

impl From<Call> for WireCall {
    fn from(call: Call) -> Self {
        match call {
            Call::ReadAt { offset, length } => Self::ReadAt { offset, length },
            Call::WriteAt { offset, data } => Self::WriteAt {
                offset,
                data: B64(data),
            },
            Call::Size => Self::Size,
            Call::Sync => Self::Sync,
            Call::SeederReadAt { offset, length } => Self::SeederReadAt { offset, length },
            Call::SeederSize => Self::SeederSize,
            Call::Track => Self::Track,
            Call::SeederSync => Self::SeederSync,
            Call::Dirty => Self::Dirty,
            Call::Close => Self::Close,
        }
    }
}

impl From<WireCall> for Call {
    fn from(call: WireCall) -> Self {
        match call {
            WireCall::ReadAt { offset, length } => Self::ReadAt { offset, length },
            WireCall::WriteAt { offset, data } => Self::WriteAt {
                offset,
                data: data.0,
            },
            WireCall::Size => Self::Size,
            WireCall::Sync => Self::Sync,
            WireCall::SeederReadAt { offset, length } => Self::SeederReadAt { offset, length },
            WireCall::SeederSize => Self::SeederSize,
            WireCall::Track => Self::Track,
            WireCall::SeederSync => Self::SeederSync,
            WireCall::Dirty => Self::Dirty,
            WireCall::Close => Self::Close,
        }
    }
}

/// A successful result as it is written on a line.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum WireOutcome {
    Data(B64),
    Done,
    Size(u64),
    Dirty(Vec<u64>),
}

impl From<Outcome> for WireOutcome {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Data(data) => Self::Data(B64(data)),
            Outcome::Done => Self::Done,
            Outcome::Size(size) => Self::Size(size),
            Outcome::Dirty(offsets) => Self::Dirty(offsets),
        }
    }
}

impl From<WireOutcome> for Outcome {
    fn from(o: WireOutcome) -> Self {
        match o {
            WireOutcome::Data(data) => Self::Data(data.0),
            WireOutcome::Done => Self::Done,
            WireOutcome::Size(size) => Self::Size(size),
            WireOutcome::Dirty(offsets) => Self::Dirty(offsets),
        }
    }
}

/// One line. Exactly one of `call`, `reply`, `abort` is set; `id` goes
/// with `call` and `reply`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    call: Option<WireCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reply: Option<std::result::Result<WireOutcome, RemoteError>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    abort: Option<String>,
}

/// Enough of a line that failed to parse to answer the call it carried.
#[derive(Debug, Deserialize)]
struct Probe {
    id: Option<u64>,
    call: Option<serde::de::IgnoredAny>,
}

/// What was read: a call for us, a reply to one of our calls, or the
/// peer's last word.
#[derive(Debug)]
enum Message {
    Call { id: u64, call: Call },
    Reply { id: u64, result: Result<Outcome> },
    Abort(String),
}

/// Why a line could not be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonlError {
    /// A line longer than the limit (or no line end within it).
    #[error("line of at least {length} bytes is over the limit of {max} bytes")]
    LineTooLong { length: usize, max: usize },
    /// Not a message of this protocol.
    #[error("malformed line: {0}")]
    Malformed(String),
    /// A call of a method no service has (or with bad arguments); the call
    /// is answered with this error, then the connection closes.
    #[error("call {id} is not a known method with valid arguments: {reason}")]
    BadCall { id: u64, reason: String },
    /// A reply to a call this side never made (or already answered).
    #[error("peer replied to unknown call id {0}")]
    UnknownId(u64),
    /// The peer closed in the middle of a line.
    #[error("peer closed the connection after {buffered} bytes of an unfinished line")]
    Truncated { buffered: usize },
    /// The peer said why it closes.
    #[error("peer aborted the connection: {0}")]
    Aborted(String),
    /// Reading or writing failed.
    #[error("connection I/O failed: {0}")]
    Io(String),
}

fn parse(line: &[u8]) -> std::result::Result<Message, JsonlError> {
    let parsed: Line = match serde_json::from_slice(line) {
        Ok(parsed) => parsed,
        Err(e) => {
            return Err(match serde_json::from_slice::<Probe>(line) {
                Ok(Probe {
                    id: Some(id),
                    call: Some(_),
                }) => JsonlError::BadCall {
                    id,
                    reason: e.to_string(),
                },
                _ => JsonlError::Malformed(e.to_string()),
            })
        }
    };
    match parsed {
        Line {
            id: Some(id),
            call: Some(call),
            reply: None,
            abort: None,
        } => Ok(Message::Call {
            id,
            call: call.into(),
        }),
        Line {
            id: Some(id),
            call: None,
            reply: Some(result),
            abort: None,
        } => Ok(Message::Reply {
            id,
            result: result.map(Outcome::from).map_err(BackendError::from),
        }),
        Line {
            id: None,
            call: None,
            reply: None,
            abort: Some(message),
        } => Ok(Message::Abort(message)),
        _ => Err(JsonlError::Malformed(
            "a line holds an id with exactly one of call or reply, or an abort alone".into(),
        )),
    }
}

fn encode(line: &Line) -> Bytes {
    // Serializing these types cannot fail: no maps with non-string keys,
    // no failing Serialize impls. Should it ever, the peer gets an empty
    // line, which it rejects as malformed, rather than this side panicking.
    let mut out = serde_json::to_vec(line).unwrap_or_default();
    out.push(b'\n');
    Bytes::from(out)
}

/// Encodes the reply line to call `id` (with its `\n`).
pub fn encode_reply(id: u64, result: Result<Outcome>) -> Bytes {
    encode(&Line {
        id: Some(id),
        call: None,
        reply: Some(
            result
                .map(WireOutcome::from)
                .map_err(|e| RemoteError::from(&e)),
        ),
        abort: None,
    })
}

/// Decodes a reply line (without its `\n`): the id it answers and the
/// result it carries.
pub fn decode_reply(line: &[u8]) -> std::result::Result<(u64, Result<Outcome>), JsonlError> {
    match parse(line)? {
        Message::Reply { id, result } => Ok((id, result)),
        _ => Err(JsonlError::Malformed("expected a reply line".into())),
    }
}

fn abort_line(reason: &str) -> Bytes {
    encode(&Line {
        id: None,
        call: None,
        reply: None,
        abort: Some(reason.to_owned()),
    })
}

/// Reads lines, never buffering more than the limit plus one read.
#[derive(Debug)]
struct LineReader<R> {
    rd: R,
    buf: BytesMut,
    scanned: usize,
    max_line: usize,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    /// The next line without its `\n`, or `None` on a clean close between
    /// lines. Cancel safe: what was read stays buffered.
    async fn next_line(&mut self) -> std::result::Result<Option<BytesMut>, JsonlError> {
        loop {
            if let Some(pos) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                let end = self.scanned + pos;
                let mut line = self.buf.split_to(end + 1);
                line.truncate(end);
                self.scanned = 0;
                if line.len() > self.max_line {
                    return Err(JsonlError::LineTooLong {
                        length: line.len(),
                        max: self.max_line,
                    });
                }
                return Ok(Some(line));
            }
            self.scanned = self.buf.len();
            if self.buf.len() > self.max_line {
                return Err(JsonlError::LineTooLong {
                    length: self.buf.len(),
                    max: self.max_line,
                });
            }
            self.buf.reserve(READ_CHUNK);
            let n = self
                .rd
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| JsonlError::Io(e.to_string()))?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(JsonlError::Truncated {
                        buffered: self.buf.len(),
                    })
                };
            }
        }
    }
}

/// How a peer's connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEnd {
    /// The other side closed, or this side shut down.
    Closed,
    /// A protocol or I/O failure ended it.
    Failed(JsonlError),
}

#[derive(Debug)]
struct PeerShared {
    pending: Pending<Outcome>,
    meter: Arc<Meter>,
    ended: CancellationToken,
    end: Mutex<Option<PeerEnd>>,
}

/// One end of a jsonl connection: calls the other end's services (as an
/// [`Rpc`]) and serves its own to it.
#[derive(Debug)]
pub struct JsonlPeer {
    shared: Arc<PeerShared>,
    frames: mpsc::Sender<OutFrame>,
    next_id: AtomicU64,
    max_message: u32,
    deadline: Option<Duration>,
    closing: CancellationToken,
}

impl JsonlPeer {
    /// A peer on `stream` that serves `local` to the other end.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime: the peer spawns its reader and writer.
    pub fn new<S>(stream: S, local: Services, config: &TransportConfig) -> Self
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Self::with_meter(stream, local, config, Arc::new(Meter::default()))
    }

    /// Dials `addr` and serves `local` on the connection.
    pub async fn connect(
        addr: std::net::SocketAddr,
        local: Services,
        config: &TransportConfig,
    ) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self::new(stream, local, config))
    }

    /// Like [`JsonlPeer::new`], counting into `meter` (shared by a server's
    /// connections).
    pub fn with_meter<S>(
        stream: S,
        local: Services,
        config: &TransportConfig,
        meter: Arc<Meter>,
    ) -> Self
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let stream = Counted::new(stream, meter.bytes.clone());
        let (rd, wr) = tokio::io::split(stream);
        let (frames, rx) = mpsc::channel(config.max_in_flight.max(1));
        let shared = Arc::new(PeerShared {
            pending: Pending::default(),
            meter,
            ended: CancellationToken::new(),
            end: Mutex::new(None),
        });
        let closing = CancellationToken::new();
        let finish = CancellationToken::new();
        // The writer counts nothing itself: the stream is `Counted`.
        let writer = tokio::spawn(write_until(
            wr,
            rx,
            Arc::new(AtomicU64::new(0)),
            finish.clone(),
        ));
        let driver = Driver {
            reader: LineReader {
                rd,
                buf: BytesMut::with_capacity(READ_CHUNK),
                scanned: 0,
                max_line: max_line(config.max_message),
            },
            shared: shared.clone(),
            local,
            frames: frames.clone(),
            max_message: config.max_message,
            max_in_flight: config.max_in_flight.max(1),
            linger: config.linger,
        };
        tokio::spawn(driver.run(closing.clone(), finish, writer));
        Self {
            shared,
            frames,
            next_id: AtomicU64::new(1),
            max_message: config.max_message,
            deadline: config.deadline,
            closing,
        }
    }

    /// The other end's backend service.
    pub fn remote_backend(self: &Arc<Self>) -> SharedBackend {
        Arc::new(RemoteBackend::new(self.clone(), self.deadline))
    }

    /// The other end's seeder service.
    pub fn remote_seeder(self: &Arc<Self>) -> SharedSeeder {
        Arc::new(RemoteSeeder::new(self.clone(), self.deadline))
    }

    /// Stops the connection: see the module docs on shutdown.
    pub fn close(&self) {
        self.closing.cancel();
    }

    /// Waits until the connection has ended and says how.
    pub async fn closed(&self) -> PeerEnd {
        self.shared.ended.cancelled().await;
        self.shared.end.lock().clone().unwrap_or(PeerEnd::Closed)
    }

    /// Calls served and bytes carried so far (this peer's meter).
    pub fn stats(&self) -> ServeStats {
        self.shared.meter.stats()
    }
}

impl Drop for JsonlPeer {
    fn drop(&mut self) {
        self.closing.cancel();
    }
}

/// Removes a registered call whose line never reached the writer.
struct Registration<'a> {
    pending: &'a Pending<Outcome>,
    id: u64,
    queued: bool,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if !self.queued {
            self.pending.forget(self.id);
        }
    }
}

#[async_trait]
impl Rpc for JsonlPeer {
    async fn call(&self, call: Call) -> Result<Outcome> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let pending = &self.shared.pending;
        let rx = pending.register(id)?;
        let mut registration = Registration {
            pending,
            id,
            queued: false,
        };
        let line = encode(&Line {
            id: Some(id),
            call: Some(call.into()),
            reply: None,
            abort: None,
        });
        if self.frames.send(line.into()).await.is_err() {
            return Err(pending.failure());
        }
        registration.queued = true;
        match rx.await {
            Ok(result) => result,
            Err(_) => Err(pending.failure()),
        }
    }

    fn max_message(&self) -> u32 {
        self.max_message
    }

    fn is_closed(&self) -> bool {
        self.shared.pending.is_failed()
    }
}

/// The task that reads a peer's lines and serves its calls.
struct Driver<R> {
    reader: LineReader<R>,
    shared: Arc<PeerShared>,
    local: Services,
    frames: mpsc::Sender<OutFrame>,
    max_message: u32,
    max_in_flight: usize,
    linger: Duration,
}

/// How the read loop ended.
enum Ended {
    Closed,
    Failed(JsonlError),
}

impl<R: AsyncRead + Unpin + Send + 'static> Driver<R> {
    async fn run(
        mut self,
        closing: CancellationToken,
        finish: CancellationToken,
        mut writer: tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let permits = Arc::new(Semaphore::new(self.max_in_flight));
        let mut handlers = JoinSet::new();
        let ended = loop {
            while handlers.try_join_next().is_some() {}
            let line = tokio::select! {
                biased;
                () = closing.cancelled() => break Ended::Closed,
                line = self.reader.next_line() => line,
            };
            let line = match line {
                Ok(Some(line)) => line,
                Ok(None) => break Ended::Closed,
                Err(e) => break Ended::Failed(e),
            };
            match parse(&line) {
                Ok(Message::Call { id, call }) => {
                    let permit = tokio::select! {
                        biased;
                        () = closing.cancelled() => break Ended::Closed,
                        permit = permits.clone().acquire_owned() => match permit {
                            Ok(permit) => permit,
                            Err(_) => break Ended::Closed,
                        },
                    };
                    let local = self.local.clone();
                    let frames = self.frames.clone();
                    let in_flight = self.shared.meter.begin();
                    let max_message = self.max_message;
                    handlers.spawn(async move {
                        let result = match check_limit(&call, max_message) {
                            Ok(()) => dispatch(&local, call).await,
                            Err(e) => Err(e),
                        };
                        // A closed queue: the connection is going away.
                        let _ = frames.send(encode_reply(id, result).into()).await;
                        drop(in_flight);
                        drop(permit);
                    });
                }
                Ok(Message::Reply { id, result }) => {
                    if !self.shared.pending.complete(id, result) {
                        break Ended::Failed(JsonlError::UnknownId(id));
                    }
                }
                Ok(Message::Abort(reason)) => break Ended::Failed(JsonlError::Aborted(reason)),
                Err(JsonlError::BadCall { id, reason }) => {
                    let error = BackendError::Remote(format!("bad call: {reason}"));
                    let _ = self.frames.try_send(encode_reply(id, Err(error)).into());
                    break Ended::Failed(JsonlError::BadCall { id, reason });
                }
                Err(e) => break Ended::Failed(e),
            }
        };

        let end = match ended {
            Ended::Closed => {
                self.shared.pending.fail(Failure::Closed);
                // Answer what we are serving, but not forever.
                let drained = tokio::time::timeout(self.linger, async {
                    while handlers.join_next().await.is_some() {}
                })
                .await;
                if drained.is_err() {
                    handlers.abort_all();
                }
                PeerEnd::Closed
            }
            Ended::Failed(e) => {
                handlers.abort_all();
                tracing::debug!(error = %e, "closing jsonl connection");
                self.shared
                    .pending
                    .fail(Failure::Broken(format!("jsonl connection failed: {e}")));
                // The peer learns why, unless it is the one that aborted.
                if !matches!(e, JsonlError::Aborted(_) | JsonlError::Io(_)) {
                    let _ = self.frames.try_send(abort_line(&e.to_string()).into());
                }
                PeerEnd::Failed(e)
            }
        };
        finish.cancel();
        if tokio::time::timeout(self.linger, &mut writer)
            .await
            .is_err()
        {
            writer.abort();
        }
        *self.shared.end.lock() = Some(end);
        self.shared.ended.cancel();
    }
}

/// Serves `services` to every peer that connects to `listener` until
/// `shutdown` is cancelled; returns the calls served and bytes carried.
pub async fn serve_listener(
    listener: TcpListener,
    services: Services,
    config: TransportConfig,
    shutdown: CancellationToken,
) -> std::io::Result<ServeStats> {
    serve_listener_with(listener, services, config, shutdown, |_| {}).await
}

/// [`serve_listener`], handing each connected peer to `on_peer` so this
/// side can call the services the peer exposes.
pub async fn serve_listener_with(
    listener: TcpListener,
    services: Services,
    config: TransportConfig,
    shutdown: CancellationToken,
    mut on_peer: impl FnMut(Arc<JsonlPeer>) + Send,
) -> std::io::Result<ServeStats> {
    let meter = Arc::new(Meter::default());
    crate::accept::accept_until(
        &listener,
        &shutdown,
        None,
        |stream, peer_addr| {
            let peer = Arc::new(JsonlPeer::with_meter(
                stream,
                services.clone(),
                &config,
                meter.clone(),
            ));
            on_peer(peer.clone());
            let shutdown = shutdown.clone();
            async move {
                tokio::select! {
                    end = peer.closed() => {
                        if let PeerEnd::Failed(e) = end {
                            tracing::debug!(%peer_addr, error = %e, "jsonl connection failed");
                        }
                    }
                    () = shutdown.cancelled() => {
                        peer.close();
                        peer.closed().await;
                    }
                }
            }
        },
        drop,
    )
    .await;
    Ok(meter.stats())
}

/// One jsonl connection to `addr` as an [`Rpc`], serving nothing back.
pub(crate) async fn connect_rpc(
    addr: std::net::SocketAddr,
    config: &TransportConfig,
    bytes: Arc<ByteCounters>,
) -> std::io::Result<Arc<dyn Rpc>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let meter = Arc::new(Meter::with_bytes(bytes));
    Ok(Arc::new(JsonlPeer::with_meter(
        stream,
        Services::none(),
        config,
        meter,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        let line = encode(&Line {
            id: Some(7),
            call: Some(WireCall::from(Call::WriteAt {
                offset: 3,
                data: Bytes::from_static(b"hello"),
            })),
            reply: None,
            abort: None,
        });
        assert_eq!(
            &line[..],
            b"{\"id\":7,\"call\":{\"WriteAt\":{\"offset\":3,\"data\":\"aGVsbG8=\"}}}\n"
        );
        match parse(&line[..line.len() - 1]).unwrap() {
            Message::Call { id: 7, call } => assert_eq!(
                call,
                Call::WriteAt {
                    offset: 3,
                    data: Bytes::from_static(b"hello")
                }
            ),
            other => panic!("{other:?}"),
        }
        let reply = encode_reply(9, Ok(Outcome::Dirty(vec![0, 4096])));
        assert_eq!(
            &reply[..],
            b"{\"id\":9,\"reply\":{\"Ok\":{\"Dirty\":[0,4096]}}}\n"
        );
        let err = encode_reply(
            2,
            Err(BackendError::OutOfRange {
                offset: 1,
                len: 2,
                size: 3,
            }),
        );
        match parse(&err[..err.len() - 1]).unwrap() {
            Message::Reply {
                id: 2,
                result: Err(BackendError::OutOfRange { size: 3, .. }),
            } => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_lines_are_told_apart() {
        assert!(matches!(
            parse(b"{\"id\":4,\"call\":\"Nope\"}"),
            Err(JsonlError::BadCall { id: 4, .. })
        ));
        assert!(matches!(
            parse(b"{\"id\":4,\"call\":{\"ReadAt\":{\"offset\":-1,\"length\":1}}}"),
            Err(JsonlError::BadCall { id: 4, .. })
        ));
        assert!(matches!(parse(b"\xff\xff"), Err(JsonlError::Malformed(_))));
        assert!(matches!(parse(b"{}"), Err(JsonlError::Malformed(_))));
        assert!(matches!(
            parse(b"{\"id\":1,\"call\":\"Size\",\"abort\":\"x\"}"),
            Err(JsonlError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"{\"id\":1,\"call\":{\"WriteAt\":{\"offset\":0,\"data\":\"***\"}}}"),
            Err(JsonlError::BadCall { id: 1, .. })
        ));
    }

    #[tokio::test]
    async fn the_line_reader_bounds_what_it_buffers() {
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let mut reader = LineReader {
            rd: b,
            buf: BytesMut::new(),
            scanned: 0,
            max_line: 100,
        };
        use tokio::io::AsyncWriteExt;
        a.write_all(b"short\n").await.unwrap();
        assert_eq!(&reader.next_line().await.unwrap().unwrap()[..], b"short");
        // More than the duplex holds: the reader must stop it, not take it.
        let _writer = tokio::spawn(async move { a.write_all(&[b'x'; 200_000]).await });
        match reader.next_line().await {
            Err(JsonlError::LineTooLong { max: 100, length }) => {
                assert!(length <= 100 + READ_CHUNK, "{length}")
            }
            other => panic!("{other:?}"),
        }
        assert!(max_line(3) == 4 + LINE_OVERHEAD);
    }
}
