//! The NBD client's transmission phase: [`NbdClient`], a [`Backend`] whose
//! every call is one or more NBD requests on one connection.
//!
//! # Multiplexing
//!
//! Any number of requests are in flight at once. A caller registers its
//! handle in the pending table, writes its request under the writer lock
//! (header and payload together, so requests never interleave), and waits
//! on a oneshot channel. One reader task reads replies in whatever order the
//! server sends them and hands each to the caller with that handle.
//!
//! # Behavior
//!
//! - Requests longer than the server's maximum block size (or 32 MiB) are
//!   split and the pieces sent concurrently.
//! - If the server's minimum block size is over 1, unaligned reads read
//!   the covering blocks; unaligned writes read-modify-write the edge
//!   blocks while holding off every other write, so a concurrent write to
//!   the same block cannot be lost.
//! - Reads that cross the end are short, as the [`Backend`] rules say;
//!   nothing past the end is ever sent to the server.
//! - Writes to an export the server marked read-only fail locally with a
//!   permission error naming the export.
//!
//! # Failure
//!
//! When the connection breaks (I/O error, the server hanging up, a reply
//! that breaks the protocol) every pending and later request fails with
//! [`NbdError::Closed`] giving the reason. A request future dropped while
//! its bytes were half written leaves the stream unusable, so the client
//! marks itself broken rather than send garbage.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use backends::{check_range, Backend, BackendError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, ToSocketAddrs, UnixStream};
use tokio::sync::{oneshot, Notify};

use crate::error::NbdError;
use crate::handshake::client::{self as hs, ExportInfo, ExportSummary};
use crate::handshake::read_exact_or_eof;
use crate::pool::{BufferPool, PooledBuf};
use crate::wire::{
    Command, CommandFlags, Errno, RequestHeader, SimpleReplyHeader, TransmissionFlags,
    REQUEST_HEADER_LEN, SIMPLE_REPLY_HEADER_LEN,
};

/// Payloads up to this size are copied next to their header and sent in
/// one write; larger ones go out as a second write rather than a copy.
const COALESCE_LIMIT: usize = 64 * 1024;

/// Idle read buffers one client keeps for reuse.
const POOL_BYTES: usize = 32 << 20;

type BoxedWrite = crate::stream::WriteHalf;

/// An NBD connection in the transmission phase.
pub struct NbdClient {
    info: ExportInfo,
    min_block: u64,
    max_request: usize,
    shared: Arc<Shared>,
    reader: tokio::task::AbortHandle,
    /// Held shared by aligned writes, exclusively by read-modify-writes.
    rmw: tokio::sync::RwLock<()>,
}

struct Shared {
    writer: tokio::sync::Mutex<Writer>,
    table: parking_lot::Mutex<Table>,
    /// Woken whenever the pending table empties or the connection fails.
    idle: Notify,
    next_handle: AtomicU64,
    pool: Arc<BufferPool>,
}

struct Writer {
    io: BoxedWrite,
    state: WriterState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriterState {
    Open,
    /// A request was cut off mid-write; the byte stream is out of frame.
    Broken,
    Disconnected,
}

#[derive(Default)]
struct Table {
    pending: HashMap<u64, Pending>,
    closed: Option<Closed>,
}

#[derive(Debug, Clone)]
enum Closed {
    Disconnected,
    Lost(String),
}

impl Closed {
    fn error(&self) -> NbdError {
        match self {
            Closed::Disconnected => NbdError::Disconnected,
            Closed::Lost(reason) => NbdError::Closed(reason.clone()),
        }
    }
}

struct Pending {
    command: Command,
    offset: u64,
    len: u32,
    tx: oneshot::Sender<Result<Option<PooledBuf>, NbdError>>,
}

impl Shared {
    /// Ends the connection for every pending and later request.
    fn fail(&self, why: Closed) {
        // The first reason wins: a disconnect stays a disconnect when the
        // reader then sees the server hang up.
        let (drained, why) = {
            let mut table = self.table.lock();
            let why = table.closed.get_or_insert(why).clone();
            let drained: Vec<Pending> = table.pending.drain().map(|(_, p)| p).collect();
            (drained, why)
        };
        for p in drained {
            let _ = p.tx.send(Err(why.error()));
        }
        self.idle.notify_waiters();
    }
}

/// Removes a registered request that never made it onto the wire.
struct Unsent<'a> {
    shared: &'a Shared,
    handle: u64,
    armed: bool,
}

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut table = self.shared.table.lock();
            table.pending.remove(&self.handle);
            if table.pending.is_empty() {
                self.shared.idle.notify_waiters();
            }
        }
    }
}

/// Marks the writer broken unless the write it guards completes.
struct InFlightWrite<'a> {
    writer: &'a mut Writer,
    done: bool,
}

impl Drop for InFlightWrite<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.writer.state = WriterState::Broken;
        }
    }
}

impl NbdClient {
    /// Handshakes for `export_name` on `stream` (see [`handshake()`](crate::handshake()))
    /// and starts the transmission phase. Must run inside a tokio runtime.
    pub async fn connect<S>(stream: S, export_name: &str) -> Result<NbdClient, NbdError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (stream, info) = hs::handshake(stream, export_name).await?;
        Ok(Self::from_handshake(stream, info))
    }

    /// Connects over TCP (Nagle off, as the protocol asks) and handshakes.
    pub async fn connect_tcp(
        addr: impl ToSocketAddrs,
        export_name: &str,
    ) -> Result<NbdClient, NbdError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Self::connect(stream, export_name).await
    }

    /// Connects to a Unix socket and handshakes.
    pub async fn connect_unix(
        path: impl AsRef<Path>,
        export_name: &str,
    ) -> Result<NbdClient, NbdError> {
        Self::connect(UnixStream::connect(path).await?, export_name).await
    }

    /// Lists the exports of the server on `stream` (`NBD_OPT_LIST`), then
    /// ends the session with `NBD_OPT_ABORT`.
    pub async fn list<S>(stream: S) -> Result<Vec<ExportSummary>, NbdError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        hs::list(stream).await
    }

    /// Describes export `name` (`NBD_OPT_INFO`), then ends the session with
    /// `NBD_OPT_ABORT`.
    pub async fn info<S>(stream: S, name: &str) -> Result<ExportInfo, NbdError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        hs::info(stream, name).await
    }

    /// Starts the transmission phase on a stream that finished the
    /// handshake. Must run inside a tokio runtime (it spawns the reader).
    pub fn from_handshake<S>(stream: S, info: ExportInfo) -> NbdClient
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (rd, wr) = crate::stream::split(stream);
        let shared = Arc::new(Shared {
            writer: tokio::sync::Mutex::new(Writer {
                io: wr,
                state: WriterState::Open,
            }),
            table: parking_lot::Mutex::new(Table::default()),
            idle: Notify::new(),
            next_handle: AtomicU64::new(1),
            pool: BufferPool::new(POOL_BYTES),
        });
        let reader = tokio::spawn(read_replies(rd, shared.clone())).abort_handle();
        NbdClient {
            min_block: info.minimum_block().into(),
            max_request: info.maximum_request() as usize,
            info,
            shared,
            reader,
            rmw: tokio::sync::RwLock::new(()),
        }
    }

    /// What the server said about the export.
    pub fn export(&self) -> &ExportInfo {
        &self.info
    }

    /// Requests currently waiting for a reply.
    pub fn in_flight(&self) -> usize {
        self.shared.table.lock().pending.len()
    }

    /// `NBD_CMD_FLUSH`: makes completed writes durable on the server. A
    /// no-op when the server did not offer flush (it then has nothing it
    /// could do on our behalf).
    pub async fn flush(&self) -> Result<(), NbdError> {
        if !self.has(TransmissionFlags::SEND_FLUSH) {
            return Ok(());
        }
        self.request(Command::Flush, CommandFlags(0), 0, 0, None)
            .await
            .map(drop)
    }

    /// `NBD_CMD_WRITE_ZEROES` over `len` bytes at `offset` (split at the
    /// maximum request size). Both must be multiples of the server's
    /// minimum block size.
    pub async fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), NbdError> {
        self.zero_like(
            Command::WriteZeroes,
            TransmissionFlags::SEND_WRITE_ZEROES,
            offset,
            len,
        )
        .await
    }

    /// `NBD_CMD_TRIM` over `len` bytes at `offset`: the contents become
    /// unspecified until written again. Both must be multiples of the
    /// server's minimum block size.
    pub async fn trim(&self, offset: u64, len: u64) -> Result<(), NbdError> {
        self.zero_like(Command::Trim, TransmissionFlags::SEND_TRIM, offset, len)
            .await
    }

    async fn zero_like(
        &self,
        command: Command,
        needs: TransmissionFlags,
        offset: u64,
        len: u64,
    ) -> Result<(), NbdError> {
        if self.info.read_only() {
            return Err(NbdError::ReadOnly {
                name: self.info.name.clone(),
            });
        }
        if !self.has(needs) {
            return Err(NbdError::Protocol(format!(
                "the server did not offer {command} for export {:?}",
                self.info.name
            )));
        }
        let step = self.max_request as u64;
        let mut pieces = Vec::new();
        let mut at = 0;
        while at < len {
            let n = (len - at).min(step);
            pieces.push(self.request(command, CommandFlags(0), offset + at, n as u32, None));
            at += n;
        }
        futures::future::try_join_all(pieces).await.map(drop)
    }

    /// Sends `NBD_CMD_DISC` once every in-flight request has its reply,
    /// then closes the sending side. Later requests fail with
    /// [`NbdError::Disconnected`]. Calling it twice is harmless.
    pub async fn disconnect(&self) -> Result<(), NbdError> {
        loop {
            let idle = self.shared.idle.notified();
            if self.shared.table.lock().pending.is_empty() {
                break;
            }
            idle.await;
        }
        // New requests fail from here on.
        {
            let mut table = self.shared.table.lock();
            if table.closed.is_none() {
                table.closed = Some(Closed::Disconnected);
            }
        }
        let mut writer = self.shared.writer.lock().await;
        send_disc(&mut writer).await
    }

    fn has(&self, flag: TransmissionFlags) -> bool {
        self.info.transmission_flags.contains(flag)
    }

    /// Sends one request and waits for its reply; a read's data comes back.
    async fn request(
        &self,
        command: Command,
        flags: CommandFlags,
        offset: u64,
        len: u32,
        payload: Option<&[u8]>,
    ) -> Result<Option<PooledBuf>, NbdError> {
        let handle = self.shared.next_handle.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut table = self.shared.table.lock();
            if let Some(closed) = &table.closed {
                return Err(closed.error());
            }
            table.pending.insert(
                handle,
                Pending {
                    command,
                    offset,
                    len,
                    tx,
                },
            );
        }
        let mut unsent = Unsent {
            shared: &self.shared,
            handle,
            armed: true,
        };
        let header = RequestHeader {
            flags,
            command: command.into(),
            handle,
            offset,
            length: len,
        }
        .encode();
        {
            let mut writer = self.shared.writer.lock().await;
            match writer.state {
                WriterState::Open => {}
                WriterState::Broken => {
                    return Err(NbdError::Closed(
                        "an earlier request was cancelled while being sent".into(),
                    ))
                }
                WriterState::Disconnected => return Err(NbdError::Disconnected),
            }
            let mut guard = InFlightWrite {
                writer: &mut writer,
                done: false,
            };
            let sent = send_request(&mut guard.writer.io, &header, payload).await;
            match sent {
                Ok(()) => guard.done = true,
                Err(e) => {
                    drop(guard);
                    drop(writer);
                    let why = format!("sending {command} failed: {e}");
                    self.shared.fail(Closed::Lost(why));
                    return Err(NbdError::Io(e));
                }
            }
        }
        unsent.armed = false;
        match rx.await {
            Ok(result) => result,
            Err(_) => Err(NbdError::Closed("the reply reader stopped".into())),
        }
    }

    /// Reads `buf.len()` bytes at `offset`, which the caller has checked
    /// against the size.
    async fn read_range(&self, buf: &mut [u8], offset: u64) -> Result<(), NbdError> {
        let (start, end) = self.covering(offset, buf.len() as u64)?;
        if start == offset && end == offset + buf.len() as u64 {
            return self.read_aligned(buf, offset).await;
        }
        let mut tmp = vec![0u8; (end - start) as usize];
        self.read_aligned(&mut tmp, start).await?;
        let skip = (offset - start) as usize;
        buf.copy_from_slice(&tmp[skip..skip + buf.len()]);
        Ok(())
    }

    async fn read_aligned(&self, buf: &mut [u8], offset: u64) -> Result<(), NbdError> {
        let max = self.max_request;
        if buf.len() <= max {
            let data = self
                .request(
                    Command::Read,
                    CommandFlags(0),
                    offset,
                    buf.len() as u32,
                    None,
                )
                .await?;
            return copy_read(buf, data);
        }
        let pieces = buf
            .chunks_mut(max)
            .enumerate()
            .map(|(i, chunk)| async move {
                let at = offset + (i * max) as u64;
                let data = self
                    .request(Command::Read, CommandFlags(0), at, chunk.len() as u32, None)
                    .await?;
                copy_read(chunk, data)
            });
        futures::future::try_join_all(pieces).await.map(drop)
    }

    /// Writes `data` at `offset`, which the caller has checked against the size.
    async fn write_range(&self, data: &[u8], offset: u64) -> Result<(), NbdError> {
        if self.min_block == 1 {
            return self.write_aligned(data, offset).await;
        }
        let (start, end) = self.covering(offset, data.len() as u64)?;
        if start == offset && end == offset + data.len() as u64 {
            let _shared = self.rmw.read().await;
            return self.write_aligned(data, offset).await;
        }
        let _exclusive = self.rmw.write().await;
        let min = self.min_block as usize;
        let mut tmp = vec![0u8; (end - start) as usize];
        let len = tmp.len();
        if offset != start {
            self.read_aligned(&mut tmp[..min], start).await?;
        }
        if offset + data.len() as u64 != end && (len > min || offset == start) {
            self.read_aligned(&mut tmp[len - min..], end - min as u64)
                .await?;
        }
        let skip = (offset - start) as usize;
        tmp[skip..skip + data.len()].copy_from_slice(data);
        self.write_aligned(&tmp, start).await
    }

    async fn write_aligned(&self, data: &[u8], offset: u64) -> Result<(), NbdError> {
        let max = self.max_request;
        let pieces = data.chunks(max).enumerate().map(|(i, chunk)| {
            let at = offset + (i * max) as u64;
            self.request(
                Command::Write,
                CommandFlags(0),
                at,
                chunk.len() as u32,
                Some(chunk),
            )
        });
        futures::future::try_join_all(pieces).await.map(drop)
    }

    /// The block-aligned range covering `len` bytes at `offset`.
    fn covering(&self, offset: u64, len: u64) -> Result<(u64, u64), NbdError> {
        let min = self.min_block;
        let start = offset - offset % min;
        let end = (offset + len).div_ceil(min) * min;
        if end > self.info.size {
            return Err(NbdError::Protocol(format!(
                "bytes up to {} lie in the export's last partial {min}-byte block, \
                 which NBD cannot address (export size {})",
                offset + len,
                self.info.size
            )));
        }
        Ok((start, end))
    }
}

/// Copies a read reply into the caller's buffer.
fn copy_read(buf: &mut [u8], data: Option<PooledBuf>) -> Result<(), NbdError> {
    match data {
        Some(d) if d.len() == buf.len() => {
            buf.copy_from_slice(&d);
            Ok(())
        }
        _ => Err(NbdError::Protocol(
            "a read reply did not carry the requested bytes".into(),
        )),
    }
}

async fn send_request(
    io: &mut BoxedWrite,
    header: &[u8; REQUEST_HEADER_LEN],
    payload: Option<&[u8]>,
) -> std::io::Result<()> {
    match payload {
        Some(data) if data.len() > COALESCE_LIMIT => {
            io.write_all(header).await?;
            io.write_all(data).await?;
        }
        Some(data) => {
            let mut buf = Vec::with_capacity(REQUEST_HEADER_LEN + data.len());
            buf.extend_from_slice(header);
            buf.extend_from_slice(data);
            io.write_all(&buf).await?;
        }
        None => io.write_all(header).await?,
    }
    io.flush().await
}

async fn send_disc(writer: &mut Writer) -> Result<(), NbdError> {
    if writer.state == WriterState::Open {
        let header = RequestHeader {
            flags: CommandFlags(0),
            command: Command::Disc.into(),
            handle: 0,
            offset: 0,
            length: 0,
        }
        .encode();
        writer.state = WriterState::Disconnected;
        writer.io.write_all(&header).await?;
        writer.io.flush().await?;
    }
    writer.state = WriterState::Disconnected;
    // The server closes its side after DISC; our side may already be gone.
    let _ = writer.io.shutdown().await;
    Ok(())
}

/// Reads replies until the connection ends, then fails whatever is pending.
async fn read_replies<R>(rd: R, shared: Arc<Shared>)
where
    R: AsyncRead + Unpin,
{
    let mut rd = BufReader::with_capacity(256 * 1024, rd);
    let why = loop {
        let mut head = [0u8; SIMPLE_REPLY_HEADER_LEN];
        match read_exact_or_eof(&mut rd, &mut head, "inside a reply header").await {
            Ok(true) => {}
            Ok(false) => break "the server closed the connection".to_owned(),
            Err(e) => break e.to_string(),
        }
        let reply = match SimpleReplyHeader::parse(&head) {
            Ok(r) => r,
            Err(e) => break format!("bad reply from the server: {e}"),
        };
        let Some(entry) = shared.table.lock().pending.remove(&reply.handle) else {
            break format!("the server replied to unknown handle {}", reply.handle);
        };
        let result = if reply.error != Errno(0) {
            Err(NbdError::Server {
                command: entry.command,
                offset: entry.offset,
                length: entry.len,
                errno: reply.error,
            })
        } else if entry.command == Command::Read {
            // The length is our own request's, already bounded by the
            // maximum request size: the server cannot inflate it.
            let mut data = shared.pool.take(entry.len as usize);
            if let Err(e) = rd.read_exact(&mut data).await {
                let why = format!("reading {} bytes of read data failed: {e}", entry.len);
                let _ = entry.tx.send(Err(NbdError::Closed(why.clone())));
                break why;
            }
            Ok(Some(data))
        } else {
            Ok(None)
        };
        // The caller may have given up on this request; that is fine.
        let _ = entry.tx.send(result);
        if shared.table.lock().pending.is_empty() {
            shared.idle.notify_waiters();
        }
    };
    tracing::debug!(reason = %why, "NBD client reader stopped");
    shared.fail(Closed::Lost(why));
}

impl Drop for NbdClient {
    fn drop(&mut self) {
        // A soft disconnect needs an await; hand it to the runtime if there
        // is one, and stop the reader once it is sent.
        let shared = self.shared.clone();
        let reader = self.reader.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    let mut writer = shared.writer.lock().await;
                    let _ = send_disc(&mut writer).await;
                    drop(writer);
                    reader.abort();
                });
            }
            Err(_) => reader.abort(),
        }
    }
}

impl fmt::Debug for NbdClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NbdClient")
            .field("export", &self.info)
            .field("max_request", &self.max_request)
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Backend for NbdClient {
    async fn read_at(&self, buf: &mut [u8], offset: u64) -> backends::Result<usize> {
        let n = check_range(offset, buf.len() as u64, self.info.size, false)? as usize;
        if n == 0 {
            return Ok(0);
        }
        self.read_range(&mut buf[..n], offset).await?;
        Ok(n)
    }

    async fn write_at(&self, data: &[u8], offset: u64) -> backends::Result<()> {
        if self.info.read_only() {
            return Err(NbdError::ReadOnly {
                name: self.info.name.clone(),
            }
            .into());
        }
        check_range(offset, data.len() as u64, self.info.size, true)?;
        if data.is_empty() {
            return Ok(());
        }
        self.write_range(data, offset)
            .await
            .map_err(BackendError::from)
    }

    async fn size(&self) -> backends::Result<u64> {
        Ok(self.info.size)
    }

    async fn sync(&self) -> backends::Result<()> {
        self.flush().await.map_err(BackendError::from)
    }
}
