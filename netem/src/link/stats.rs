//! Per-direction counters and the departure-error histogram.
//!
//! The relay thread adds to shared atomics once per batch and records
//! departure errors under an uncontended lock; [`super::Relay::stats`]
//! copies them out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use parking_lot::Mutex;

/// Largest departure error the histogram holds; later departures are
/// recorded as this.
const MAX_RECORDED: Duration = Duration::from_secs(60);

/// A number of frames and their bytes (whole Ethernet frames, header
/// included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    /// Frames.
    pub packets: u64,
    /// Bytes in those frames.
    pub bytes: u64,
}

impl Count {
    fn add(self, other: Count) -> Count {
        Count {
            packets: self.packets + other.packets,
            bytes: self.bytes + other.bytes,
        }
    }

    fn saturating_sub(self, other: Count) -> Count {
        Count {
            packets: self.packets.saturating_sub(other.packets),
            bytes: self.bytes.saturating_sub(other.bytes),
        }
    }
}

/// What one direction of the link did so far.
///
/// Every received frame ends up in exactly one of `sent`, the `dropped_*`
/// counters, `send_errors` or `discarded_at_stop`, or is still in flight:
/// `received == sent + dropped() + in_flight()` (taken while frames move,
/// a snapshot may be off by the frames of one batch).
#[derive(Debug, Clone)]
pub struct DirectionStats {
    /// Frames read from the ingress interface (this host's own
    /// transmissions excluded).
    pub received: Count,
    /// Lost by the loss model.
    pub dropped_loss: Count,
    /// Dropped because the drop-tail queue was full.
    pub dropped_queue: Count,
    /// Dropped because `max_in_flight_packets` frames were already held:
    /// the emulator's own limit, not the emulated link's.
    pub dropped_overflow: Count,
    /// Larger than the interface MTU allows (a segmentation offload is
    /// on; see [`super::disable_offloads`]). Counted in bytes at their
    /// real length.
    pub dropped_oversize: Count,
    /// The kernel refused to send them (interface down, peer's backlog
    /// full...).
    pub send_errors: Count,
    /// Sent out of the egress interface.
    pub sent: Count,
    /// Still held when the relay stopped, never sent.
    pub discarded_at_stop: Count,
    /// Frames the kernel dropped before the relay could read them (the
    /// ingress socket's buffer was full): the emulator was saturated. Not
    /// part of `received`.
    pub kernel_drops: u64,
    /// Actual minus scheduled departure time of every sent frame, in
    /// nanoseconds (frames sent on time record 0).
    pub departure_error_ns: Histogram<u64>,
    /// How long each admitted frame waits in the drop-tail queue before
    /// its serialization begins, in nanoseconds: the queueing delay the
    /// link model itself adds (all zero without a rate limit).
    pub queue_wait_ns: Histogram<u64>,
}

impl DirectionStats {
    /// Every frame dropped on purpose or by failure.
    pub fn dropped(&self) -> Count {
        self.dropped_loss
            .add(self.dropped_queue)
            .add(self.dropped_overflow)
            .add(self.dropped_oversize)
            .add(self.send_errors)
            .add(self.discarded_at_stop)
    }

    /// Frames received and not yet sent or dropped.
    pub fn in_flight(&self) -> Count {
        self.received.saturating_sub(self.sent.add(self.dropped()))
    }
}

/// Both directions of a relay.
#[derive(Debug, Clone)]
pub struct RelayStats {
    /// Frames received on interface A, sent out of B.
    pub a_to_b: DirectionStats,
    /// Frames received on interface B, sent out of A.
    pub b_to_a: DirectionStats,
}

impl RelayStats {
    /// Bytes that crossed the link in both directions (the design's
    /// `transferred_bytes`).
    pub fn transferred_bytes(&self) -> u64 {
        self.a_to_b.sent.bytes + self.b_to_a.sent.bytes
    }
}

#[derive(Debug, Default)]
struct AtomicCount {
    packets: AtomicU64,
    bytes: AtomicU64,
}

impl AtomicCount {
    fn add(&self, count: Count) {
        if count.packets != 0 {
            self.packets.fetch_add(count.packets, Ordering::Relaxed);
            self.bytes.fetch_add(count.bytes, Ordering::Relaxed);
        }
    }

    fn load(&self) -> Count {
        Count {
            packets: self.packets.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

/// Which counter a frame goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Received,
    Loss,
    Queue,
    Overflow,
    Oversize,
    SendError,
    Sent,
    DiscardedAtStop,
}

/// Counts accumulated by the relay thread over one batch, then published
/// at once (a handful of atomic adds per batch instead of per frame).
#[derive(Debug, Default)]
pub(crate) struct Tally {
    counts: [Count; 8],
}

impl Tally {
    pub(crate) fn add(&mut self, outcome: Outcome, bytes: usize) {
        let slot = &mut self.counts[outcome as usize];
        slot.packets += 1;
        slot.bytes += bytes as u64;
    }
}

/// What a direction's thread shares with [`super::Relay::stats`].
#[derive(Debug)]
pub(crate) struct SharedStats {
    counts: [AtomicCount; 8],
    kernel_drops: AtomicU64,
    departure_error: Mutex<Histogram<u64>>,
    queue_wait: Mutex<Histogram<u64>>,
}

impl SharedStats {
    pub(crate) fn new() -> Self {
        Self {
            counts: Default::default(),
            kernel_drops: AtomicU64::new(0),
            departure_error: Mutex::new(new_histogram()),
            queue_wait: Mutex::new(new_histogram()),
        }
    }

    /// Publishes a batch's counts and empties the tally.
    pub(crate) fn publish(&self, tally: &mut Tally) {
        for (shared, count) in self.counts.iter().zip(tally.counts.iter_mut()) {
            shared.add(std::mem::take(count));
        }
    }

    pub(crate) fn add_kernel_drops(&self, drops: u64) {
        if drops != 0 {
            self.kernel_drops.fetch_add(drops, Ordering::Relaxed);
        }
    }

    /// Records departure errors (ns) under one lock acquisition.
    pub(crate) fn record_departure_errors(&self, errors: impl IntoIterator<Item = u64>) {
        record_all(&self.departure_error, errors);
    }

    /// Records queue waits (ns) under one lock acquisition.
    pub(crate) fn record_queue_waits(&self, waits: impl IntoIterator<Item = u64>) {
        record_all(&self.queue_wait, waits);
    }

    pub(crate) fn snapshot(&self) -> DirectionStats {
        let count = |outcome: Outcome| self.counts[outcome as usize].load();
        // Outcomes are published after the frames' receipt, so reading
        // `received` last keeps in_flight() from going negative.
        let sent = count(Outcome::Sent);
        let departure_error_ns = self.departure_error.lock().clone();
        let queue_wait_ns = self.queue_wait.lock().clone();
        DirectionStats {
            dropped_loss: count(Outcome::Loss),
            dropped_queue: count(Outcome::Queue),
            dropped_overflow: count(Outcome::Overflow),
            dropped_oversize: count(Outcome::Oversize),
            send_errors: count(Outcome::SendError),
            sent,
            discarded_at_stop: count(Outcome::DiscardedAtStop),
            kernel_drops: self.kernel_drops.load(Ordering::Relaxed),
            departure_error_ns,
            queue_wait_ns,
            received: count(Outcome::Received),
        }
    }
}

fn record_all(histogram: &Mutex<Histogram<u64>>, values: impl IntoIterator<Item = u64>) {
    let mut histogram = histogram.lock();
    for value in values {
        histogram.saturating_record(value);
    }
}

fn new_histogram() -> Histogram<u64> {
    // 1 ns to 60 s at 3 significant digits: constant, valid bounds.
    Histogram::new_with_bounds(1, MAX_RECORDED.as_nanos() as u64, 3)
        .expect("constant histogram bounds are valid")
}
