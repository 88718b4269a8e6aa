//! The halves of a connection both sides share: a frame reader that buffers
//! and validates, and a writer loop that batches frames before flushing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::wire::{Reply, Request, WireError};

/// Bytes read from the socket per call when the frame being read does not
/// tell us how much it needs yet: enough for a few hundred small frames, so
/// a burst of replies costs few syscalls.
const READ_CHUNK: usize = 64 * 1024;

/// Batching buffer for outgoing frames; large bodies bypass it.
const WRITE_BUFFER: usize = 64 * 1024;

/// Why reading a frame failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error("reading from the peer failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad frame: {0}")]
    Wire(#[from] WireError),
    /// The peer closed with part of a frame sent: a reset, not a clean close.
    #[error("peer closed the connection after {buffered} bytes of an unfinished frame")]
    Truncated { buffered: usize },
}

/// A frame type the reader can take off its buffer.
pub(crate) trait Frame: Sized {
    fn parse(buf: &mut BytesMut, max_message: u32) -> Result<Self, WireError>;
}

impl Frame for Request {
    fn parse(buf: &mut BytesMut, max_message: u32) -> Result<Self, WireError> {
        Request::parse(buf, max_message)
    }
}

impl Frame for Reply {
    fn parse(buf: &mut BytesMut, max_message: u32) -> Result<Self, WireError> {
        Reply::parse(buf, max_message)
    }
}

/// Owns the read half and its buffer.
#[derive(Debug)]
pub(crate) struct FrameReader<R> {
    rd: R,
    buf: BytesMut,
    max_message: u32,
    bytes_read: Arc<AtomicU64>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(rd: R, max_message: u32, bytes_read: Arc<AtomicU64>) -> Self {
        Self {
            rd,
            buf: BytesMut::with_capacity(READ_CHUNK),
            max_message,
            bytes_read,
        }
    }

    /// The next frame, or `None` when the peer closed cleanly between frames.
    ///
    /// Cancel safe: everything read so far stays in the buffer.
    pub(crate) async fn read_frame<F: Frame>(&mut self) -> Result<Option<F>, ReadError> {
        loop {
            match F::parse(&mut self.buf, self.max_message) {
                Ok(frame) => return Ok(Some(frame)),
                // The header (if buffered) was valid, so `needed` is bounded
                // by the maximum message: reserving it is safe.
                Err(WireError::Incomplete { needed, available }) => {
                    self.buf.reserve((needed - available).max(READ_CHUNK));
                }
                Err(e) => return Err(e.into()),
            }
            let n = self.rd.read_buf(&mut self.buf).await?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ReadError::Truncated {
                        buffered: self.buf.len(),
                    })
                };
            }
            self.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

/// One outgoing frame: a head and a body that go out back to back. Keeping
/// them apart lets a payload that is already a `Bytes` (a write's data, a
/// read's result) travel without being copied into a frame buffer.
#[derive(Debug, Default)]
pub(crate) struct OutFrame {
    pub(crate) head: Bytes,
    pub(crate) body: Bytes,
}

impl OutFrame {
    pub(crate) fn len(&self) -> usize {
        self.head.len() + self.body.len()
    }
}

impl From<Bytes> for OutFrame {
    fn from(head: Bytes) -> Self {
        Self {
            head,
            body: Bytes::new(),
        }
    }
}

/// Writes queued frames until the queue closes, then shuts the stream down.
///
/// Frames queued together are written together and flushed once, so a burst
/// of small replies costs one syscall rather than one each; bodies larger
/// than the buffer go straight to the stream.
pub(crate) async fn write_loop<W: AsyncWrite + Unpin>(
    wr: W,
    mut rx: mpsc::Receiver<OutFrame>,
    bytes_written: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let mut wr = BufWriter::with_capacity(WRITE_BUFFER, wr);
    while let Some(frame) = rx.recv().await {
        write_frame(&mut wr, &frame, &bytes_written).await?;
        while let Ok(frame) = rx.try_recv() {
            write_frame(&mut wr, &frame, &bytes_written).await?;
        }
        wr.flush().await?;
    }
    wr.shutdown().await
}

/// Like [`write_loop`], but also ends when `finish` is cancelled: whatever
/// is queued by then is written, then the stream is shut down. For
/// connections whose senders outlive the writer's job (a jsonl peer keeps
/// one for its own calls).
pub(crate) async fn write_until<W: AsyncWrite + Unpin>(
    wr: W,
    mut rx: mpsc::Receiver<OutFrame>,
    bytes_written: Arc<AtomicU64>,
    finish: CancellationToken,
) -> std::io::Result<()> {
    let mut wr = BufWriter::with_capacity(WRITE_BUFFER, wr);
    loop {
        let frame = tokio::select! {
            biased;
            frame = rx.recv() => frame,
            () = finish.cancelled() => None,
        };
        let Some(frame) = frame else { break };
        write_frame(&mut wr, &frame, &bytes_written).await?;
        while let Ok(frame) = rx.try_recv() {
            write_frame(&mut wr, &frame, &bytes_written).await?;
        }
        wr.flush().await?;
    }
    while let Ok(frame) = rx.try_recv() {
        write_frame(&mut wr, &frame, &bytes_written).await?;
    }
    wr.flush().await?;
    wr.shutdown().await
}

async fn write_frame<W: AsyncWrite + Unpin>(
    wr: &mut BufWriter<W>,
    frame: &OutFrame,
    bytes_written: &AtomicU64,
) -> std::io::Result<()> {
    wr.write_all(&frame.head).await?;
    if !frame.body.is_empty() {
        wr.write_all(&frame.body).await?;
    }
    bytes_written.fetch_add(frame.len() as u64, Ordering::Relaxed);
    Ok(())
}
