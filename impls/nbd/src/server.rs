//! The NBD server: [`Server`] holds the exports and limits, [`Server::serve`]
//! runs one connection over any byte stream, [`Server::serve_listener`]
//! accepts connections until a shutdown future resolves.
//!
//! # Transmission
//!
//! One reader loop per connection decodes request headers (and write
//! payloads) in order; each backend operation then runs in its own task, so
//! many requests are in flight at once and replies go out in completion
//! order, which the protocol allows. One writer task serializes replies,
//! batching whatever is queued into one flush.
//!
//! # Limits
//!
//! - At most [`ServerLimits::max_in_flight`] requests run at once per
//!   connection; the reader waits for a slot before reading further.
//! - Read and write buffers of one connection total at most
//!   [`ServerLimits::max_buffered_bytes`]: a request's buffer is paid for
//!   before it is allocated and refunded once its reply is written.
//! - A write longer than 32 MiB ([`MAX_REQUEST_LEN`]) ends the connection
//!   without its payload being read, as the protocol permits for a length
//!   "large enough to be deemed a denial of service". Shorter writes that
//!   are refused (past the end, over the export's maximum block size,
//!   read-only) have their payload read through a small fixed buffer and
//!   dropped, and get an error reply.
//! - Request buffers are reused through one pool per server holding at
//!   most [`ServerLimits::buffer_pool_bytes`] idle.
//!
//! # Errors a client sees
//!
//! `EINVAL` for unknown commands or flags, misaligned requests, reads and
//! trims past the end, and reads or writes over the maximum block size;
//! `ENOSPC` for writes past the end; `EPERM` for writes, trims and
//! write-zeroes on a read-only export; `EIO` when the backend fails.
//!
//! # Limitations
//!
//! Simple replies only (`NBD_OPT_STRUCTURED_REPLY` is refused, so no block
//! status); no TLS; trim writes zeroes rather than punching holes.

use std::future::Future;
use std::io::{self, IoSlice};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backends::{BackendError, SharedBackend};
use futures::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::error::NbdError;
use crate::export::{BlockSizes, Export, ExportError};
use crate::handshake::{discard, read_exact_or_eof, server as hs};
use crate::pool::{BufferPool, PooledBuf};
use crate::wire::{
    Command, CommandFlags, Errno, RequestHeader, SimpleReplyHeader, MAX_OPTION_DATA,
    MAX_REQUEST_LEN, REQUEST_HEADER_LEN,
};

/// Per-connection and per-listener limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// Requests one connection may have in flight.
    pub max_in_flight: usize,
    /// Bytes of read and write buffers one connection may hold; at least
    /// [`MAX_REQUEST_LEN`] so the largest request fits.
    pub max_buffered_bytes: u32,
    /// Longest option payload accepted during the handshake.
    pub max_option_len: u32,
    /// How long a client may take to finish the handshake.
    pub handshake_timeout: Option<Duration>,
    /// Connections [`Server::serve_listener`] serves at once; further
    /// clients wait in the listen backlog.
    pub max_connections: usize,
    /// Idle request buffers the server keeps for reuse, over all its
    /// connections, in bytes. Reuse spares each request a zero-fill and a
    /// page fault per 4 KiB; the pool outlives connections, so clients
    /// that reconnect often (`nbdcopy`, one run per connection set) find
    /// it warm. 0 disables reuse.
    pub buffer_pool_bytes: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_in_flight: 64,
            max_buffered_bytes: 2 * MAX_REQUEST_LEN,
            max_option_len: MAX_OPTION_DATA,
            handshake_timeout: Some(Duration::from_secs(30)),
            max_connections: 256,
            buffer_pool_bytes: 64 << 20,
        }
    }
}

/// A server that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerConfigError {
    /// An export is invalid.
    #[error(transparent)]
    Export(#[from] ExportError),
    /// A limit is out of range.
    #[error("limit {name} = {value} is out of range: must be {allowed}")]
    Limit {
        name: &'static str,
        value: u64,
        allowed: &'static str,
    },
}

/// What one connection did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionStats {
    /// The export used, if the client got to transmission.
    pub export: Option<String>,
    /// Requests received: every command, refused ones and `NBD_CMD_DISC` included.
    pub requests: u64,
    /// Successful reads.
    pub reads: u64,
    /// Successful writes.
    pub writes: u64,
    /// Successful flushes.
    pub flushes: u64,
    /// Successful trims.
    pub trims: u64,
    /// Successful write-zeroes.
    pub write_zeroes: u64,
    /// Requests answered with an error.
    pub error_replies: u64,
    /// Bytes sent to the client by reads.
    pub bytes_read: u64,
    /// Bytes received from the client by writes.
    pub bytes_written: u64,
    /// The client ended with `NBD_CMD_DISC` (else it hung up, or the server stopped).
    pub soft_disconnect: bool,
}

/// What [`Server::serve_listener`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenerStats {
    /// Connections accepted.
    pub connections: u64,
    /// Connections that ended with an error.
    pub failed: u64,
    /// `accept` calls that failed.
    pub accept_errors: u64,
    /// Requests over all connections.
    pub requests: u64,
    /// Read bytes over all connections.
    pub bytes_read: u64,
    /// Written bytes over all connections.
    pub bytes_written: u64,
}

/// Something connections can be accepted from.
pub trait Listener: Send + Sync {
    /// The connection type.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Waits for the next connection.
    fn accept(&self) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

impl Listener for TcpListener {
    type Stream = TcpStream;
    async fn accept(&self) -> io::Result<TcpStream> {
        let (stream, _) = TcpListener::accept(self).await?;
        // The protocol asks both sides to turn Nagle off: a reply header
        // must not wait for an ACK of the previous reply's tail.
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

impl Listener for UnixListener {
    type Stream = UnixStream;
    async fn accept(&self) -> io::Result<UnixStream> {
        let (stream, _) = UnixListener::accept(self).await?;
        Ok(stream)
    }
}

/// An NBD server over a fixed set of exports. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    exports: Vec<Export>,
    limits: ServerLimits,
    pool: Arc<BufferPool>,
}

impl Server {
    /// Validates the exports (names, block sizes, uniqueness) and limits.
    pub fn new(exports: Vec<Export>, limits: ServerLimits) -> Result<Server, ServerConfigError> {
        if exports.is_empty() {
            return Err(ExportError::NoExports.into());
        }
        for (i, e) in exports.iter().enumerate() {
            e.validate()?;
            if exports[..i].iter().any(|o| o.name == e.name) {
                return Err(ExportError::DuplicateName {
                    name: e.name.clone(),
                }
                .into());
            }
        }
        if limits.max_in_flight == 0 || limits.max_in_flight > 4096 {
            return Err(ServerConfigError::Limit {
                name: "max_in_flight",
                value: limits.max_in_flight as u64,
                allowed: "1 to 4096",
            });
        }
        if limits.max_buffered_bytes < MAX_REQUEST_LEN {
            return Err(ServerConfigError::Limit {
                name: "max_buffered_bytes",
                value: limits.max_buffered_bytes.into(),
                allowed: "at least 32 MiB (one maximal request)",
            });
        }
        if limits.max_option_len < 4096 + 6 || limits.max_option_len > 16 * 1024 * 1024 {
            return Err(ServerConfigError::Limit {
                name: "max_option_len",
                value: limits.max_option_len.into(),
                allowed: "4102 (a maximal export name) to 16 MiB",
            });
        }
        if limits.max_connections == 0 {
            return Err(ServerConfigError::Limit {
                name: "max_connections",
                value: 0,
                allowed: "at least 1",
            });
        }
        let pool = BufferPool::new(limits.buffer_pool_bytes);
        Ok(Server {
            inner: Arc::new(Inner {
                exports,
                limits,
                pool,
            }),
        })
    }

    /// The exports, the first being the default one.
    pub fn exports(&self) -> &[Export] {
        &self.inner.exports
    }

    /// The limits.
    pub fn limits(&self) -> &ServerLimits {
        &self.inner.limits
    }

    /// Serves one connection to its end: the client's `NBD_CMD_DISC` or
    /// `NBD_OPT_ABORT`, the client hanging up between messages (all `Ok`),
    /// or a protocol violation or I/O error (`Err`, after in-flight
    /// requests finished).
    pub async fn serve<S>(&self, stream: S) -> Result<ConnectionStats, NbdError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.serve_until(stream, None).await
    }

    async fn serve_until<S>(
        &self,
        mut stream: S,
        mut shutdown: Option<watch::Receiver<bool>>,
    ) -> Result<ConnectionStats, NbdError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let limits = &self.inner.limits;
        let negotiation = async {
            let run = hs::negotiate(&mut stream, &self.inner.exports, limits.max_option_len);
            match limits.handshake_timeout {
                Some(t) => tokio::time::timeout(t, run)
                    .await
                    .map_err(|_| NbdError::HandshakeTimeout(t))?,
                None => run.await,
            }
        };
        let outcome = tokio::select! {
            r = negotiation => r?,
            () = stopped(&mut shutdown) => return Ok(ConnectionStats::default()),
        };
        let hs::Outcome::Transmission { export, size } = outcome else {
            return Ok(ConnectionStats::default());
        };
        let export = &self.inner.exports[export];
        let conn = Arc::new(Conn {
            backend: export.backend.clone(),
            size,
            sizes: export.block_size,
            read_only: export.read_only,
            counters: Counters::default(),
            pool: self.inner.pool.clone(),
        });
        tracing::debug!(export = %export.name, size, "NBD client entered transmission");
        let result = transmission(stream, conn.clone(), limits, &mut shutdown).await;
        let mut stats = conn.counters.snapshot();
        stats.export = Some(export.name.clone());
        match result {
            Ok(soft) => {
                stats.soft_disconnect = soft;
                Ok(stats)
            }
            Err(e) => Err(e),
        }
    }

    /// Accepts connections from `listener`, one task each, until `shutdown`
    /// resolves; then stops accepting, lets every connection finish its
    /// in-flight requests, closes them and returns the totals.
    pub async fn serve_listener<L, F>(
        &self,
        listener: L,
        shutdown: F,
    ) -> Result<ListenerStats, NbdError>
    where
        L: Listener,
        F: Future<Output = ()> + Send,
    {
        let (stop_tx, stop_rx) = watch::channel(false);
        let slots = Arc::new(Semaphore::new(self.inner.limits.max_connections));
        let mut conns: JoinSet<Result<ConnectionStats, NbdError>> = JoinSet::new();
        let mut stats = ListenerStats::default();
        tokio::pin!(shutdown);
        loop {
            while let Some(done) = conns.try_join_next() {
                absorb(&mut stats, done);
            }
            let slot = tokio::select! {
                biased;
                () = &mut shutdown => break,
                slot = slots.clone().acquire_owned() => slot,
            };
            let Ok(slot) = slot else { break };
            let accepted = tokio::select! {
                biased;
                () = &mut shutdown => break,
                a = listener.accept() => a,
            };
            match accepted {
                Ok(stream) => {
                    stats.connections += 1;
                    let server = self.clone();
                    let stop = stop_rx.clone();
                    conns.spawn(async move {
                        let result = server.serve_until(stream, Some(stop)).await;
                        if let Err(e) = &result {
                            tracing::debug!(error = %e, "NBD connection ended with an error");
                        }
                        drop(slot);
                        result
                    });
                }
                Err(e) => {
                    stats.accept_errors += 1;
                    tracing::warn!(error = %e, "NBD accept failed");
                    // Out of descriptors and the like: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        let _ = stop_tx.send(true);
        while let Some(done) = conns.join_next().await {
            absorb(&mut stats, done);
        }
        Ok(stats)
    }
}

fn absorb(
    stats: &mut ListenerStats,
    done: Result<Result<ConnectionStats, NbdError>, tokio::task::JoinError>,
) {
    match done {
        Ok(Ok(c)) => {
            stats.requests += c.requests;
            stats.bytes_read += c.bytes_read;
            stats.bytes_written += c.bytes_written;
        }
        Ok(Err(_)) | Err(_) => stats.failed += 1,
    }
}

/// Resolves once the shutdown signal is raised; never without one.
async fn stopped(shutdown: &mut Option<watch::Receiver<bool>>) {
    let Some(rx) = shutdown else {
        return std::future::pending().await;
    };
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            // The sender is gone without raising the signal: never stop.
            return std::future::pending().await;
        }
    }
}

/// State every request task of one connection shares.
#[derive(Debug)]
struct Conn {
    backend: SharedBackend,
    size: u64,
    sizes: BlockSizes,
    read_only: bool,
    counters: Counters,
    pool: Arc<BufferPool>,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
    flushes: AtomicU64,
    trims: AtomicU64,
    write_zeroes: AtomicU64,
    error_replies: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> ConnectionStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ConnectionStats {
            export: None,
            requests: get(&self.requests),
            reads: get(&self.reads),
            writes: get(&self.writes),
            flushes: get(&self.flushes),
            trims: get(&self.trims),
            write_zeroes: get(&self.write_zeroes),
            error_replies: get(&self.error_replies),
            bytes_read: get(&self.bytes_read),
            bytes_written: get(&self.bytes_written),
            soft_disconnect: false,
        }
    }
}

/// What to do with one request, decided from its header alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    Read {
        offset: u64,
        len: u32,
    },
    Write {
        offset: u64,
        len: u32,
        fua: bool,
    },
    Flush,
    Zero {
        offset: u64,
        len: u32,
        fua: bool,
        trim: bool,
    },
    Disc,
    Reject(Errno),
}

/// Checks a request against the export. Pure, so every rule is testable
/// without a connection.
fn plan(h: &RequestHeader, size: u64, sizes: BlockSizes, read_only: bool) -> Plan {
    use Plan::Reject;
    let Ok(command) = Command::try_from(h.command) else {
        return Reject(Errno::EINVAL);
    };
    if command == Command::Disc {
        return Plan::Disc;
    }
    // FUA is valid on every command; NO_HOLE only on write-zeroes (which
    // always allocates here, so it needs no action). Anything else —
    // including DF and FAST_ZERO, whose features we do not advertise — is
    // refused as the protocol recommends.
    let mut allowed = CommandFlags::FUA;
    if command == Command::WriteZeroes {
        allowed = allowed | CommandFlags::NO_HOLE;
    }
    if h.flags.bits() & !allowed.bits() != 0 {
        return Reject(Errno::EINVAL);
    }
    let fua = h.flags.contains(CommandFlags::FUA);
    let (offset, len) = (h.offset, h.length);
    let min = u64::from(sizes.minimum);
    let aligned = offset % min == 0 && u64::from(len) % min == 0;
    let fits = offset
        .checked_add(len.into())
        .is_some_and(|end| end <= size);
    let within_max = len <= sizes.maximum;
    let writes = matches!(
        command,
        Command::Write | Command::Trim | Command::WriteZeroes
    );
    if writes && read_only {
        return Reject(Errno::EPERM);
    }
    match command {
        Command::Read | Command::Write | Command::WriteZeroes if !within_max => {
            Reject(Errno::EINVAL)
        }
        Command::Read | Command::Write | Command::WriteZeroes | Command::Trim if !aligned => {
            Reject(Errno::EINVAL)
        }
        Command::Write | Command::WriteZeroes if !fits => Reject(Errno::ENOSPC),
        Command::Read | Command::Trim if !fits => Reject(Errno::EINVAL),
        Command::Read => Plan::Read { offset, len },
        Command::Write => Plan::Write { offset, len, fua },
        Command::Flush => Plan::Flush,
        Command::Trim => Plan::Zero {
            offset,
            len,
            fua,
            trim: true,
        },
        Command::WriteZeroes => Plan::Zero {
            offset,
            len,
            fua,
            trim: false,
        },
        // Not advertised: cache, block status (needs structured replies),
        // resize.
        Command::Cache | Command::BlockStatus | Command::Resize | Command::Disc => {
            Reject(Errno::EINVAL)
        }
    }
}

/// Maps a backend failure to the reply error the protocol suggests.
fn errno_for(e: &BackendError, is_write: bool) -> Errno {
    match e {
        BackendError::OutOfRange { .. } if is_write => Errno::ENOSPC,
        BackendError::OutOfRange { .. } | BackendError::Unaligned { .. } => Errno::EINVAL,
        BackendError::Io(io) => match io.raw_os_error() {
            Some(libc::EPERM | libc::EROFS | libc::EACCES) => Errno::EPERM,
            Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG) => Errno::ENOSPC,
            _ if io.kind() == io::ErrorKind::PermissionDenied => Errno::EPERM,
            _ => Errno::EIO,
        },
        BackendError::Remote(_) | BackendError::Closed => Errno::EIO,
    }
}

/// One reply on its way to the writer. The budget permit travels with the
/// data so the bytes are paid for until they are on the socket.
struct Reply {
    handle: u64,
    error: Errno,
    data: Option<PooledBuf>,
    _budget: Option<OwnedSemaphorePermit>,
}

impl Reply {
    fn status(handle: u64, error: Errno) -> Self {
        Self {
            handle,
            error,
            data: None,
            _budget: None,
        }
    }
}

/// Zero bytes that trims and write-zeroes copy from, so zeroing allocates nothing.
static ZEROES: [u8; 1 << 20] = [0; 1 << 20];

/// Runs the transmission phase. `Ok(true)`: the client sent `NBD_CMD_DISC`.
async fn transmission<S>(
    stream: S,
    conn: Arc<Conn>,
    limits: &ServerLimits,
    shutdown: &mut Option<watch::Receiver<bool>>,
) -> Result<bool, NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (rd, wr) = crate::stream::split(stream);
    let mut rd = BufReader::with_capacity(128 * 1024, rd);
    let (tx, rx) = mpsc::channel::<Reply>(limits.max_in_flight);
    let writer = tokio::spawn(write_replies(wr, rx));
    let slots = Arc::new(Semaphore::new(limits.max_in_flight));
    let budget = Arc::new(Semaphore::new(limits.max_buffered_bytes as usize));
    let mut tasks = JoinSet::new();

    let result: Result<bool, NbdError> = loop {
        while tasks.try_join_next().is_some() {}
        let mut head = [0u8; REQUEST_HEADER_LEN];
        let got = tokio::select! {
            biased;
            () = stopped(shutdown) => break Ok(false),
            got = read_exact_or_eof(&mut rd, &mut head, "inside a request header") => got,
        };
        match got {
            Ok(true) => {}
            Ok(false) => break Ok(false),
            Err(e) => break Err(e),
        }
        let header = match RequestHeader::parse(&head) {
            Ok(h) => h,
            Err(e) => break Err(e.into()),
        };
        bump(&conn.counters.requests, 1);
        let handle = header.handle;
        let step = plan(&header, conn.size, conn.sizes, conn.read_only);

        // A write's payload is on the wire whatever we decide; decide first
        // whether to read it at all.
        if header.command == u16::from(Command::Write) && header.length > MAX_REQUEST_LEN {
            break Err(NbdError::TooLarge {
                what: "NBD_CMD_WRITE payload",
                length: header.length.into(),
                limit: MAX_REQUEST_LEN.into(),
            });
        }

        let Ok(slot) = slots.clone().acquire_owned().await else {
            break Err(NbdError::Closed("request slots closed".into()));
        };
        match step {
            Plan::Disc => break Ok(true),
            Plan::Reject(errno) => {
                if header.command == u16::from(Command::Write) {
                    if let Err(e) = discard(
                        &mut rd,
                        header.length.into(),
                        "inside a refused write payload",
                    )
                    .await
                    {
                        break Err(e);
                    }
                }
                tracing::debug!(?header, %errno, "refusing NBD request");
                bump(&conn.counters.error_replies, 1);
                drop(slot);
                if tx.send(Reply::status(handle, errno)).await.is_err() {
                    break Err(writer_gone());
                }
            }
            Plan::Write { offset, len, fua } => {
                let Ok(paid) = budget.clone().acquire_many_owned(len.max(1)).await else {
                    break Err(NbdError::Closed("buffer budget closed".into()));
                };
                let mut data = conn.pool.take(len as usize);
                if let Err(e) = rd
                    .read_exact(&mut data)
                    .await
                    .map_err(NbdError::eof_during("inside a write payload"))
                {
                    break Err(e);
                }
                let c = conn.clone();
                let work = async move {
                    let mut result = c.backend.write_at(&data, offset).await;
                    if result.is_ok() && fua {
                        result = c.backend.sync().await;
                    }
                    drop(data);
                    drop(paid);
                    let errno = finish(&c, result, true, || {
                        bump(&c.counters.writes, 1);
                        bump(&c.counters.bytes_written, len.into());
                    });
                    Reply::status(handle, errno)
                };
                spawn_request(&mut tasks, &conn, &tx, slot, handle, work);
            }
            Plan::Read { offset, len } => {
                let Ok(paid) = budget.clone().acquire_many_owned(len.max(1)).await else {
                    break Err(NbdError::Closed("buffer budget closed".into()));
                };
                let c = conn.clone();
                let work = async move {
                    let mut data = c.pool.take(len as usize);
                    let result = c.backend.read_exact_at(&mut data, offset).await;
                    let ok = result.is_ok();
                    let errno = finish(&c, result, false, || {
                        bump(&c.counters.reads, 1);
                        bump(&c.counters.bytes_read, len.into());
                    });
                    Reply {
                        handle,
                        error: errno,
                        // A failed read sends no payload.
                        data: ok.then_some(data),
                        _budget: Some(paid),
                    }
                };
                spawn_request(&mut tasks, &conn, &tx, slot, handle, work);
            }
            Plan::Flush => {
                let c = conn.clone();
                let work = async move {
                    let result = c.backend.sync().await;
                    let errno = finish(&c, result, true, || bump(&c.counters.flushes, 1));
                    Reply::status(handle, errno)
                };
                spawn_request(&mut tasks, &conn, &tx, slot, handle, work);
            }
            Plan::Zero {
                offset,
                len,
                fua,
                trim,
            } => {
                let c = conn.clone();
                let work = async move {
                    let mut result = write_zeroes(&c.backend, offset, len.into()).await;
                    if result.is_ok() && fua {
                        result = c.backend.sync().await;
                    }
                    let counter = if trim {
                        &c.counters.trims
                    } else {
                        &c.counters.write_zeroes
                    };
                    let errno = finish(&c, result, true, || bump(counter, 1));
                    Reply::status(handle, errno)
                };
                spawn_request(&mut tasks, &conn, &tx, slot, handle, work);
            }
        }
    };

    // Every request read gets its reply before the connection closes, as
    // the protocol asks of both a soft disconnect and a server shutdown.
    while tasks.join_next().await.is_some() {}
    drop(tx);
    let written = match writer.await {
        Ok(r) => r,
        Err(e) => Err(io::Error::other(format!("NBD reply writer failed: {e}"))),
    };
    match (result, written) {
        (Err(e), _) => Err(e),
        (Ok(soft), Ok(())) => Ok(soft),
        // The client going away after its last reply is not worth an error.
        (Ok(soft), Err(e)) if soft || is_disconnect(&e) => Ok(soft),
        (Ok(_), Err(e)) => Err(e.into()),
    }
}

/// Runs one request's work in its own task and queues its reply. A
/// backend that panics costs that request an `EIO`, not a reply that never
/// comes (which would hang the client).
fn spawn_request(
    tasks: &mut JoinSet<()>,
    conn: &Arc<Conn>,
    tx: &mpsc::Sender<Reply>,
    slot: OwnedSemaphorePermit,
    handle: u64,
    work: impl Future<Output = Reply> + Send + 'static,
) {
    let (conn, tx) = (conn.clone(), tx.clone());
    tasks.spawn(async move {
        let reply = match AssertUnwindSafe(work).catch_unwind().await {
            Ok(reply) => reply,
            Err(_) => {
                tracing::error!(handle, "the backend panicked serving an NBD request");
                bump(&conn.counters.error_replies, 1);
                Reply::status(handle, Errno::EIO)
            }
        };
        drop(slot);
        // The writer is gone only when the connection is; nobody to tell.
        let _ = tx.send(reply).await;
    });
}

fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::NotConnected
    )
}

fn writer_gone() -> NbdError {
    NbdError::Closed("the reply writer stopped (client gone?)".into())
}

/// Counts the outcome and maps it to a reply error.
fn finish(
    conn: &Conn,
    result: backends::Result<()>,
    is_write: bool,
    on_success: impl FnOnce(),
) -> Errno {
    match result {
        Ok(()) => {
            on_success();
            Errno(0)
        }
        Err(e) => {
            tracing::debug!(error = %e, "NBD request failed in the backend");
            bump(&conn.counters.error_replies, 1);
            errno_for(&e, is_write)
        }
    }
}

async fn write_zeroes(backend: &SharedBackend, offset: u64, len: u64) -> backends::Result<()> {
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(ZEROES.len() as u64) as usize;
        backend.write_at(&ZEROES[..n], offset + done).await?;
        done += n as u64;
    }
    Ok(())
}

/// Writes replies in the order they arrive, flushing when the queue is empty.
async fn write_replies<W>(wr: W, mut rx: mpsc::Receiver<Reply>) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let mut out = BufWriter::with_capacity(256 * 1024, wr);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(reply) = next {
            let head = SimpleReplyHeader {
                error: reply.error,
                handle: reply.handle,
            };
            let head = head.encode();
            let data = reply.data.as_deref().unwrap_or_default();
            // Header and data in one vectored write: a large read's reply
            // bypasses the buffer in one system call instead of two.
            write_all_vectored(&mut out, &mut [IoSlice::new(&head), IoSlice::new(data)]).await?;
            drop(reply);
            next = rx.try_recv().ok();
        }
        out.flush().await?;
    }
    out.shutdown().await
}

async fn write_all_vectored<W>(out: &mut W, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        let n = out.write_vectored(bufs).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(command: Command, flags: CommandFlags, offset: u64, length: u32) -> RequestHeader {
        RequestHeader {
            flags,
            command: command.into(),
            handle: 1,
            offset,
            length,
        }
    }

    const NONE: CommandFlags = CommandFlags(0);

    #[test]
    fn plan_accepts_valid_requests() {
        let s = BlockSizes::DEFAULT;
        assert_eq!(
            plan(&req(Command::Read, NONE, 0, 4096), 8192, s, false),
            Plan::Read {
                offset: 0,
                len: 4096
            }
        );
        assert_eq!(
            plan(
                &req(Command::Write, CommandFlags::FUA, 4096, 4096),
                8192,
                s,
                false
            ),
            Plan::Write {
                offset: 4096,
                len: 4096,
                fua: true
            }
        );
        assert_eq!(
            plan(&req(Command::Read, NONE, 8192, 0), 8192, s, false),
            Plan::Read {
                offset: 8192,
                len: 0
            }
        );
        assert_eq!(
            plan(
                &req(Command::WriteZeroes, CommandFlags::NO_HOLE, 0, 10),
                10,
                s,
                false
            ),
            Plan::Zero {
                offset: 0,
                len: 10,
                fua: false,
                trim: false
            }
        );
        assert_eq!(
            plan(&req(Command::Flush, CommandFlags::FUA, 0, 0), 10, s, true),
            Plan::Flush
        );
        assert_eq!(
            plan(&req(Command::Disc, NONE, 0, 0), 10, s, true),
            Plan::Disc
        );
    }

    #[test]
    fn plan_refuses_what_the_spec_says() {
        let s = BlockSizes::new(512, 4096, 1 << 20).unwrap();
        let size = 1 << 20;
        let r = |c, f, o, l| plan(&req(c, f, o, l), size, s, false);
        // Past the end: reads and trims EINVAL, writes ENOSPC.
        assert_eq!(
            r(Command::Read, NONE, size - 512, 1024),
            Plan::Reject(Errno::EINVAL)
        );
        assert_eq!(
            r(Command::Trim, NONE, size, 512),
            Plan::Reject(Errno::EINVAL)
        );
        assert_eq!(
            r(Command::Write, NONE, size - 512, 1024),
            Plan::Reject(Errno::ENOSPC)
        );
        assert_eq!(
            r(Command::WriteZeroes, NONE, size, 512),
            Plan::Reject(Errno::ENOSPC)
        );
        assert_eq!(
            r(Command::Read, NONE, u64::MAX - 511, 512),
            Plan::Reject(Errno::EINVAL)
        );
        // Over the maximum block size.
        assert_eq!(
            r(Command::Read, NONE, 0, (1 << 20) + 512),
            Plan::Reject(Errno::EINVAL)
        );
        assert_eq!(
            r(Command::Write, NONE, 0, (1 << 20) + 512),
            Plan::Reject(Errno::EINVAL)
        );
        // Misaligned to the minimum block size.
        assert_eq!(r(Command::Read, NONE, 1, 512), Plan::Reject(Errno::EINVAL));
        assert_eq!(r(Command::Write, NONE, 0, 100), Plan::Reject(Errno::EINVAL));
        // Unknown commands and flags, and unadvertised ones.
        assert_eq!(
            plan(
                &RequestHeader {
                    command: 42,
                    ..req(Command::Read, NONE, 0, 0)
                },
                size,
                s,
                false
            ),
            Plan::Reject(Errno::EINVAL)
        );
        assert_eq!(
            r(Command::Read, CommandFlags::DF, 0, 512),
            Plan::Reject(Errno::EINVAL)
        );
        assert_eq!(
            r(Command::Write, CommandFlags(1 << 9), 0, 512),
            Plan::Reject(Errno::EINVAL)
        );
        assert_eq!(
            r(Command::Write, CommandFlags::NO_HOLE, 0, 512),
            Plan::Reject(Errno::EINVAL)
        );
        assert_eq!(
            r(Command::WriteZeroes, CommandFlags::FAST_ZERO, 0, 512),
            Plan::Reject(Errno::EINVAL)
        );
        assert_eq!(
            r(Command::BlockStatus, NONE, 0, 512),
            Plan::Reject(Errno::EINVAL)
        );
        assert_eq!(r(Command::Cache, NONE, 0, 512), Plan::Reject(Errno::EINVAL));
        // Read-only.
        for c in [Command::Write, Command::Trim, Command::WriteZeroes] {
            assert_eq!(
                plan(&req(c, NONE, 0, 512), size, s, true),
                Plan::Reject(Errno::EPERM),
                "{c}"
            );
        }
        assert!(matches!(
            plan(&req(Command::Read, NONE, 0, 512), size, s, true),
            Plan::Read { .. }
        ));
    }

    #[test]
    fn backend_errors_map_to_spec_errnos() {
        let oor = BackendError::OutOfRange {
            offset: 1,
            len: 1,
            size: 1,
        };
        assert_eq!(errno_for(&oor, true), Errno::ENOSPC);
        assert_eq!(errno_for(&oor, false), Errno::EINVAL);
        let io = |code| BackendError::Io(io::Error::from_raw_os_error(code));
        assert_eq!(errno_for(&io(libc::EDQUOT), true), Errno::ENOSPC);
        assert_eq!(errno_for(&io(libc::EROFS), true), Errno::EPERM);
        assert_eq!(errno_for(&io(libc::EBADF), false), Errno::EIO);
        assert_eq!(
            errno_for(&BackendError::Remote("x".into()), false),
            Errno::EIO
        );
    }

    #[test]
    fn limits_are_validated() {
        let b: SharedBackend = Arc::new(backends::MemoryBackend::new(4096));
        let e = || vec![Export::new("a", b.clone())];
        assert!(Server::new(e(), ServerLimits::default()).is_ok());
        assert!(matches!(
            Server::new(vec![], ServerLimits::default()),
            Err(ServerConfigError::Export(ExportError::NoExports))
        ));
        assert!(matches!(
            Server::new(
                vec![Export::new("a", b.clone()), Export::new("a", b.clone())],
                ServerLimits::default()
            ),
            Err(ServerConfigError::Export(ExportError::DuplicateName { .. }))
        ));
        let bad = [
            ServerLimits {
                max_in_flight: 0,
                ..Default::default()
            },
            ServerLimits {
                max_buffered_bytes: 1 << 20,
                ..Default::default()
            },
            ServerLimits {
                max_option_len: 10,
                ..Default::default()
            },
            ServerLimits {
                max_connections: 0,
                ..Default::default()
            },
        ];
        for l in bad {
            assert!(
                matches!(
                    Server::new(e(), l.clone()),
                    Err(ServerConfigError::Limit { .. })
                ),
                "{l:?}"
            );
        }
    }
}
