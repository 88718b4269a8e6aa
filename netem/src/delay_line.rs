//! An in-process link with a fixed one-way delay.
//!
//! [`DelayLine::pair`] returns two connected [`DelayStream`]s, like
//! `tokio::io::duplex`, except that every byte written on one end becomes
//! readable on the other `one_way` after it was written. It is a delay, not
//! a per-call sleep: any number of writes are in flight at once, so a
//! request/response costs one RTT (`2 x one_way`) and a pipeline of 1000
//! requests costs about one RTT too, as on a real link.
//!
//! # Behavior
//!
//! - Bytes arrive intact and in order, never before `write time + one_way`
//!   (deadlines are kept by [`crate::timer`]).
//! - Each direction holds at most `max_in_flight` bytes written but not yet
//!   read; a writer past it gets `Poll::Pending` and is woken when the
//!   reader makes room. This is the link's buffer (a bandwidth-delay
//!   product), so a slow reader pushes back on the writer.
//! - A write accepts as much as fits and returns that count (a short write),
//!   as sockets do; `write_all` loops.
//! - Shutting down (or dropping) one end gives the other EOF once the bytes
//!   in flight have arrived. Writing to an end whose peer was dropped fails
//!   with `BrokenPipe`.
//! - With zero delay bytes are readable at once; no timer is involved.
//!
//! # Limitations
//!
//! No bandwidth limit, loss, jitter or reordering: the packet-level emulator
//! (later) covers those. The delay is applied per write, so a write split
//! by the in-flight cap leaves in pieces, each delayed from when it fit.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::timer::{precise_sleep_until, PreciseSleep};

/// Default cap on bytes in flight per direction: 64 MiB, above the
/// bandwidth-delay product of a 10 Gbit/s link at 50 ms RTT (62.5 MB).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64 << 20;

/// A link's settings; [`DelayLine::connect`] makes the two ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DelayLine {
    one_way: Duration,
    max_in_flight: usize,
}

impl DelayLine {
    /// A link with `one_way` delay in each direction and the default cap.
    pub fn new(one_way: Duration) -> Self {
        Self {
            one_way,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }

    /// Caps the bytes written but not yet read, per direction; at least 1.
    pub fn with_max_in_flight(mut self, bytes: usize) -> Self {
        self.max_in_flight = bytes.max(1);
        self
    }

    /// Two connected ends of a link with `one_way` delay and default cap.
    pub fn pair(one_way: Duration) -> (DelayStream, DelayStream) {
        Self::new(one_way).connect()
    }

    /// Two connected ends of this link.
    pub fn connect(self) -> (DelayStream, DelayStream) {
        let a_to_b = Arc::new(Pipe::new(self));
        let b_to_a = Arc::new(Pipe::new(self));
        let a = DelayStream {
            tx: a_to_b.clone(),
            rx: b_to_a.clone(),
            sleep: None,
        };
        let b = DelayStream {
            tx: b_to_a,
            rx: a_to_b,
            sleep: None,
        };
        (a, b)
    }

    /// The one-way delay.
    pub fn one_way(&self) -> Duration {
        self.one_way
    }

    /// The cap on bytes in flight per direction.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }
}

/// Bytes one end has carried so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Bytes accepted by writes on this end.
    pub bytes_sent: u64,
    /// Bytes returned by reads on this end.
    pub bytes_received: u64,
}

/// One end of a [`DelayLine`].
#[derive(Debug)]
pub struct DelayStream {
    /// The direction this end writes into.
    tx: Arc<Pipe>,
    /// The direction this end reads from.
    rx: Arc<Pipe>,
    /// The sleep until the next byte (or EOF) arrives, kept across polls.
    sleep: Option<PreciseSleep>,
}

impl DelayStream {
    /// What this end has carried so far.
    pub fn stats(&self) -> LinkStats {
        LinkStats {
            bytes_sent: self.tx.state.lock().written,
            bytes_received: self.rx.state.lock().read,
        }
    }

    /// Bytes written on this end that the other end has not read yet.
    pub fn in_flight(&self) -> usize {
        self.tx.state.lock().in_flight
    }

    /// The link's one-way delay.
    pub fn one_way(&self) -> Duration {
        self.tx.one_way
    }

    /// Polls a sleep until `until`, reusing the current one if it ends then.
    fn poll_sleep(&mut self, cx: &mut Context<'_>, until: Instant) -> Poll<()> {
        let sleep = match &mut self.sleep {
            Some(sleep) if sleep.deadline() == until => sleep,
            slot => slot.insert(precise_sleep_until(until)),
        };
        let ready = Pin::new(sleep).poll(cx);
        if ready.is_ready() {
            self.sleep = None;
        }
        ready
    }
}

#[derive(Debug)]
struct Segment {
    /// When these bytes become readable.
    due: Instant,
    bytes: Bytes,
}

/// One direction of a link.
#[derive(Debug)]
struct Pipe {
    one_way: Duration,
    max_in_flight: usize,
    state: Mutex<PipeState>,
}

#[derive(Debug, Default)]
struct PipeState {
    /// In write order, so `due` never decreases along the queue.
    segments: VecDeque<Segment>,
    /// Written and not yet read.
    in_flight: usize,
    written: u64,
    read: u64,
    /// The writer shut down; EOF is readable from this instant on.
    eof_at: Option<Instant>,
    /// The reading end was dropped; writes fail.
    reader_gone: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

impl Pipe {
    fn new(line: DelayLine) -> Self {
        Self {
            one_way: line.one_way,
            max_in_flight: line.max_in_flight,
            state: Mutex::new(PipeState::default()),
        }
    }

    /// Ends the writing side: EOF reaches the reader one delay from now,
    /// which is after every byte already written.
    fn close_writer(&self) {
        let reader = {
            let mut state = self.state.lock();
            if state.eof_at.is_none() {
                state.eof_at = Some(Instant::now() + self.one_way);
            }
            state.reader.take()
        };
        if let Some(waker) = reader {
            waker.wake();
        }
    }

    /// Ends the reading side: nothing will be read, so free what is queued
    /// and fail the writer's next write.
    fn close_reader(&self) {
        let writer = {
            let mut state = self.state.lock();
            state.reader_gone = true;
            state.segments.clear();
            state.in_flight = 0;
            state.writer.take()
        };
        if let Some(waker) = writer {
            waker.wake();
        }
    }
}

/// What a read found when nothing was due.
enum Wait {
    Until(Instant),
    Eof,
    Writer,
}

impl AsyncRead for DelayStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let wait = {
                let mut state = this.rx.state.lock();
                let now = Instant::now();
                let mut copied = 0;
                while buf.remaining() > 0 {
                    let Some(front) = state.segments.front_mut() else {
                        break;
                    };
                    if front.due > now {
                        break;
                    }
                    let n = front.bytes.len().min(buf.remaining());
                    buf.put_slice(&front.bytes[..n]);
                    front.bytes.advance(n);
                    if front.bytes.is_empty() {
                        state.segments.pop_front();
                    }
                    copied += n;
                }
                if copied > 0 || buf.remaining() == 0 {
                    state.in_flight -= copied;
                    state.read += copied as u64;
                    let writer = state.writer.take();
                    drop(state);
                    if let Some(waker) = writer {
                        waker.wake();
                    }
                    return Poll::Ready(Ok(()));
                }
                match (state.segments.front(), state.eof_at) {
                    (Some(front), _) => Wait::Until(front.due),
                    (None, Some(eof)) if eof <= now => Wait::Eof,
                    (None, Some(eof)) => Wait::Until(eof),
                    (None, None) => {
                        state.reader = Some(cx.waker().clone());
                        Wait::Writer
                    }
                }
            };
            match wait {
                // Nothing was put in `buf`: that is EOF.
                Wait::Eof => return Poll::Ready(Ok(())),
                Wait::Writer => {
                    this.sleep = None;
                    return Poll::Pending;
                }
                Wait::Until(due) => {
                    // Later writes are due later still, so this sleep is
                    // the only wake-up needed.
                    if this.poll_sleep(cx, due).is_pending() {
                        return Poll::Pending;
                    }
                }
            }
        }
    }
}

impl AsyncWrite for DelayStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let pipe = &self.tx;
        let mut state = pipe.state.lock();
        if state.reader_gone {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the other end of the delay line was dropped",
            )));
        }
        if state.eof_at.is_some() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown of this end of the delay line",
            )));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let room = pipe.max_in_flight.saturating_sub(state.in_flight);
        if room == 0 {
            state.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = room.min(data.len());
        // Stamped under the lock: writes are ordered, and so are deadlines.
        let due = Instant::now() + pipe.one_way;
        state.segments.push_back(Segment {
            due,
            bytes: Bytes::copy_from_slice(&data[..n]),
        });
        state.in_flight += n;
        state.written += n as u64;
        let reader = state.reader.take();
        drop(state);
        if let Some(waker) = reader {
            waker.wake();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Written bytes are on the wire already.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tx.close_writer();
        Poll::Ready(Ok(()))
    }
}

impl Drop for DelayStream {
    fn drop(&mut self) {
        self.tx.close_writer();
        self.rx.close_reader();
    }
}
