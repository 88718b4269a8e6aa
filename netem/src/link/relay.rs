//! The relay: one thread per direction moving frames between two packet
//! sockets through a [`Shaper`].
//!
//! Each thread loops: send every frame whose departure is due (one
//! `sendmmsg` per batch), then wait for the next event, then read what
//! arrived (one `recvmmsg` per batch) and schedule it. Waiting blocks in
//! `ppoll` on the ingress socket and the shutdown eventfd, with a timeout
//! that ends a spin window before the next departure; inside that window
//! the thread does not block, it polls the socket without waiting and
//! spins, because a blocking wait overshoots by tens of microseconds here
//! (hundreds after a long sleep: see [`SpinWindow`]).
//!
//! Frames live in one slab of MTU-sized slots from receipt to departure:
//! `recvmmsg` writes into free slots, the schedule holds slot numbers, and
//! `sendmmsg` reads from the same slots. No copy, no allocation per frame.

use std::collections::VecDeque;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::shaper::{Shaper, Verdict};
use super::stats::{Outcome, SharedStats, Tally};
use super::sys::{self, Wake};
use super::RelayError;

/// How often the thread collects the kernel's drop counter.
const KERNEL_STATS_EVERY: Duration = Duration::from_millis(100);

/// Room for an Ethernet header and one VLAN tag beyond the MTU.
const L2_OVERHEAD: usize = 14 + 4;

/// The widest the spin window adapts to: beyond this a late wake-up is a
/// descheduled vCPU, which no spin can hide, and spinning longer would
/// only take CPU from the endpoints.
const MAX_SPIN_WINDOW: Duration = Duration::from_millis(1);

/// How many recent `ppoll` timeouts the adaptive spin window remembers.
const SPIN_HISTORY: usize = 32;

/// The spin window in use: the configured one, widened to cover how late
/// the last [`SPIN_HISTORY`] timed waits woke up.
///
/// Why adapt: how late a `ppoll` timeout fires depends on how long the
/// thread slept. On the dev VM the wake after a 20 ms sleep is often later
/// than 200 us (the vCPU has gone idle), after a 5 ms sleep rarely; a fixed
/// window either misses sparse departures or spins needlessly on dense
/// ones.
#[derive(Debug)]
struct SpinWindow {
    floor: Duration,
    recent: [Duration; SPIN_HISTORY],
    next: usize,
    current: Duration,
}

impl SpinWindow {
    fn new(floor: Duration) -> Self {
        Self {
            floor,
            recent: [Duration::ZERO; SPIN_HISTORY],
            next: 0,
            current: floor,
        }
    }

    fn window(&self) -> Duration {
        self.current
    }

    /// Records how late a timed wait woke up.
    fn observe(&mut self, late: Duration) {
        self.recent[self.next] = late;
        self.next = (self.next + 1) % SPIN_HISTORY;
        let worst = self.recent.iter().copied().max().unwrap_or_default();
        // A quarter more than the worst recent lateness, plus a little for
        // the work between waking and sending.
        let wanted = worst + worst / 4 + Duration::from_micros(20);
        self.current = wanted.min(MAX_SPIN_WINDOW).max(self.floor);
    }
}

/// Everything one direction's thread owns.
#[derive(Debug)]
pub(crate) struct Worker {
    /// `a_to_b` or `b_to_a`, for logs and errors.
    pub(crate) direction: &'static str,
    pub(crate) ingress: String,
    pub(crate) egress: String,
    /// Receives every frame arriving on `ingress`.
    pub(crate) rx: OwnedFd,
    /// Sends on `egress`; bound with protocol 0, so it receives nothing.
    pub(crate) tx: OwnedFd,
    pub(crate) shutdown: Arc<OwnedFd>,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) shaper: Shaper,
    pub(crate) stats: Arc<SharedStats>,
    /// The larger MTU of the two interfaces.
    pub(crate) mtu: usize,
    pub(crate) batch: usize,
    pub(crate) max_in_flight: usize,
    pub(crate) spin_window: Duration,
}

/// A frame waiting for its departure.
#[derive(Debug, Clone, Copy)]
struct Pending {
    slot: u32,
    len: u32,
    departure: Instant,
}

/// Fixed-size frame buffers in one allocation, grown on demand up to a cap.
#[derive(Debug)]
struct Slab {
    buf: Vec<u8>,
    slot_size: usize,
    free: Vec<u32>,
    slots: usize,
    max_slots: usize,
}

impl Slab {
    fn new(slot_size: usize, initial: usize, max_slots: usize) -> Self {
        let mut slab = Self {
            buf: Vec::new(),
            slot_size,
            free: Vec::new(),
            slots: 0,
            max_slots,
        };
        slab.grow_to(initial.min(max_slots));
        slab
    }

    fn grow_to(&mut self, slots: usize) {
        if slots <= self.slots {
            return;
        }
        self.buf.resize(slots * self.slot_size, 0);
        // Highest first so low slots (warm in cache) are handed out first.
        self.free
            .extend((self.slots..slots).rev().map(|i| i as u32));
        self.slots = slots;
    }

    /// Makes at least `n` slots free if the cap allows; returns how many
    /// are free.
    fn reserve(&mut self, n: usize) -> usize {
        while self.free.len() < n && self.slots < self.max_slots {
            let target = (self.slots * 2).max(n).min(self.max_slots);
            self.grow_to(target);
        }
        self.free.len()
    }

    fn take(&mut self) -> Option<u32> {
        self.free.pop()
    }

    fn put(&mut self, slot: u32) {
        self.free.push(slot);
    }

    /// The start of `slot`. Valid until the slab next grows (which moves
    /// the buffer), so pointers are rebuilt before every syscall.
    fn ptr(&mut self, slot: u32) -> *mut u8 {
        let offset = slot as usize * self.slot_size;
        debug_assert!(offset + self.slot_size <= self.buf.len());
        self.buf[offset..].as_mut_ptr()
    }
}

/// Syscall argument arrays for one batch, reused across calls. Holds raw
/// pointers into the slab and into itself, filled in right before each
/// call, so it stays inside the thread.
struct Batch {
    headers: Vec<libc::mmsghdr>,
    iovecs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_ll>,
    slots: Vec<u32>,
    sent_ok: Vec<bool>,
}

impl Batch {
    fn new(size: usize) -> Self {
        // SAFETY: mmsghdr, iovec and sockaddr_ll are plain old data
        // (integers and raw pointers); all-zero is a valid value of each.
        let (header, iovec, addr) = unsafe {
            (
                zeroed::<libc::mmsghdr>(),
                zeroed::<libc::iovec>(),
                zeroed::<libc::sockaddr_ll>(),
            )
        };
        Self {
            headers: vec![header; size],
            iovecs: vec![iovec; size],
            addrs: vec![addr; size],
            slots: vec![0; size],
            sent_ok: vec![false; size],
        }
    }

    /// Points message `i` at `len` bytes from `data`, and at the address
    /// slot `i` if `with_addr` (receive) or at no address (send: the
    /// socket is bound to its interface).
    fn set(&mut self, i: usize, data: *mut u8, len: usize, with_addr: bool) {
        self.iovecs[i] = libc::iovec {
            iov_base: data.cast(),
            iov_len: len,
        };
        let hdr = &mut self.headers[i].msg_hdr;
        hdr.msg_iov = &mut self.iovecs[i];
        hdr.msg_iovlen = 1;
        if with_addr {
            hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_ll).cast();
            hdr.msg_namelen = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        } else {
            hdr.msg_name = std::ptr::null_mut();
            hdr.msg_namelen = 0;
        }
        hdr.msg_control = std::ptr::null_mut();
        hdr.msg_controllen = 0;
        hdr.msg_flags = 0;
        self.headers[i].msg_len = 0;
    }
}

/// The thread's mutable state besides the worker's configuration.
struct Loop {
    slab: Slab,
    pending: VecDeque<Pending>,
    batch: Batch,
    tally: Tally,
    errors: Vec<u64>,
    /// Queue waits of the frames admitted in this batch, in ns.
    waits: Vec<u64>,
    /// A send error was already logged: later ones are only counted.
    send_error_logged: bool,
}

impl Worker {
    /// Runs until [`Worker::stop`] is set and the shutdown eventfd fires,
    /// or a socket fails in a way that retrying cannot fix.
    pub(crate) fn run(mut self) -> Result<(), RelayError> {
        sys::reduce_timer_slack();
        let slot_size = (self.mtu + L2_OVERHEAD).next_multiple_of(64);
        // The in-flight cap keeps `batch` slots free for every receive.
        let max_slots = self.max_in_flight + self.batch;
        let mut state = Loop {
            slab: Slab::new(slot_size, 4 * self.batch, max_slots),
            pending: VecDeque::new(),
            batch: Batch::new(self.batch),
            tally: Tally::default(),
            errors: Vec::with_capacity(self.batch),
            waits: Vec::with_capacity(self.batch),
            send_error_logged: false,
        };
        tracing::debug!(direction = self.direction, ingress = %self.ingress, egress = %self.egress, slot_size, "relay thread running");
        let result = self.run_loop(&mut state);
        // Frames still scheduled are never sent.
        for frame in state.pending.drain(..) {
            state
                .tally
                .add(Outcome::DiscardedAtStop, frame.len as usize);
        }
        self.stats.publish(&mut state.tally);
        if let Ok(drops) = sys::take_kernel_drops(self.rx.as_fd()) {
            self.stats.add_kernel_drops(drops);
        }
        result
    }

    fn run_loop(&mut self, state: &mut Loop) -> Result<(), RelayError> {
        let mut kernel_stats_at = Instant::now();
        let mut spin = SpinWindow::new(self.spin_window);
        loop {
            if self.stop.load(Ordering::Acquire) {
                return Ok(());
            }
            let now = Instant::now();
            self.send_due(state, now)?;
            if now.duration_since(kernel_stats_at) >= KERNEL_STATS_EVERY {
                kernel_stats_at = now;
                let drops = sys::take_kernel_drops(self.rx.as_fd())
                    .map_err(|e| RelayError::sys(&self.ingress, e))?;
                self.stats.add_kernel_drops(drops);
            }
            // Block only while the next departure is beyond the spin window.
            // Never block longer than KERNEL_STATS_EVERY: the drop counter
            // stays fresh, and a lost shutdown signal only delays the stop.
            let now = Instant::now();
            let window = spin.window();
            let wait = match state.pending.front() {
                None => Some(KERNEL_STATS_EVERY),
                Some(next) => {
                    let lead = next.departure.saturating_duration_since(now);
                    (lead > window).then(|| (lead - window).min(KERNEL_STATS_EVERY))
                }
            };
            if let Some(timeout) = wait {
                let wake =
                    sys::wait_readable(self.rx.as_fd(), self.shutdown.as_fd(), Some(timeout))
                        .map_err(|e| RelayError::sys(&self.ingress, e))?;
                match wake {
                    Wake::Shutdown => return Ok(()),
                    Wake::Timeout => spin.observe(now.elapsed().saturating_sub(timeout)),
                    Wake::Data => {}
                }
            }
            let received = self.receive(state)?;
            if received == 0 && wait.is_none() {
                std::hint::spin_loop();
            }
        }
    }

    /// Reads up to one batch without blocking and schedules each frame.
    fn receive(&mut self, state: &mut Loop) -> Result<usize, RelayError> {
        let want = state.slab.reserve(self.batch).min(self.batch);
        if want == 0 {
            // Unreachable while max_slots = max_in_flight + batch; never
            // spin on an empty batch if that changes.
            return Ok(0);
        }
        let slot_size = state.slab.slot_size;
        for i in 0..want {
            let Some(slot) = state.slab.take() else {
                break;
            };
            state.batch.slots[i] = slot;
            let data = state.slab.ptr(slot);
            state.batch.set(i, data, slot_size, true);
        }
        // SAFETY: the first `want` headers point at live iovecs and
        // sockaddr_ll entries of `state.batch`, and each iovec at a
        // distinct free slab slot of `slot_size` bytes; none of them moves
        // or is touched by anyone else until the call returns. MSG_TRUNC
        // only changes the reported length, never what is written.
        let rc = unsafe {
            libc::recvmmsg(
                self.rx.as_raw_fd(),
                state.batch.headers.as_mut_ptr(),
                want as libc::c_uint,
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                std::ptr::null_mut(),
            )
        };
        let received = if rc < 0 {
            let err = std::io::Error::last_os_error();
            for i in 0..want {
                state.slab.put(state.batch.slots[i]);
            }
            return match err.raw_os_error() {
                Some(libc::EAGAIN | libc::EINTR) => Ok(0),
                // The interface went down (a link-down fault window): the
                // socket reports it once; frames resume when it is up.
                Some(libc::ENETDOWN) => {
                    tracing::debug!(interface = %self.ingress, "ingress interface went down");
                    Ok(0)
                }
                _ => Err(RelayError::sys(
                    &self.ingress,
                    sys::SysError {
                        syscall: "recvmmsg",
                        source: err,
                    },
                )),
            };
        } else {
            rc as usize
        };
        let now = Instant::now();
        for i in 0..received {
            let slot = state.batch.slots[i];
            let len = state.batch.headers[i].msg_len as usize;
            if state.batch.addrs[i].sll_pkttype == sys::PACKET_OUTGOING {
                // Our own transmission seen on the way out (older kernels
                // without PACKET_IGNORE_OUTGOING): not traffic to relay.
                state.slab.put(slot);
                continue;
            }
            state.tally.add(Outcome::Received, len);
            let outcome = if len > slot_size {
                Some(Outcome::Oversize)
            } else if state.pending.len() >= self.max_in_flight {
                Some(Outcome::Overflow)
            } else {
                match self.shaper.admit(now, len) {
                    Verdict::Lost => Some(Outcome::Loss),
                    Verdict::QueueFull => Some(Outcome::Queue),
                    Verdict::Depart(departure) => {
                        state
                            .waits
                            .push(self.shaper.last_queue_wait().as_nanos() as u64);
                        state.pending.push_back(Pending {
                            slot,
                            len: len as u32,
                            departure,
                        });
                        None
                    }
                }
            };
            if let Some(outcome) = outcome {
                state.tally.add(outcome, len);
                state.slab.put(slot);
            }
        }
        for i in received..want {
            state.slab.put(state.batch.slots[i]);
        }
        self.stats.record_queue_waits(state.waits.drain(..));
        self.stats.publish(&mut state.tally);
        Ok(received)
    }

    /// Sends every frame due by `now`, a batch per `sendmmsg`.
    fn send_due(&mut self, state: &mut Loop, now: Instant) -> Result<(), RelayError> {
        loop {
            let due = state
                .pending
                .iter()
                .take(self.batch)
                .take_while(|frame| frame.departure <= now)
                .count();
            if due == 0 {
                return Ok(());
            }
            for i in 0..due {
                let frame = state.pending[i];
                let data = state.slab.ptr(frame.slot);
                state.batch.set(i, data, frame.len as usize, false);
                state.batch.sent_ok[i] = false;
            }
            let sent_at = Instant::now();
            let mut i = 0;
            while i < due {
                // SAFETY: headers i..due point at live iovecs of
                // `state.batch`, each at `len` initialized bytes of a slab
                // slot owned by a pending frame; nothing moves or writes
                // them until the call returns, and the kernel only reads.
                let rc = unsafe {
                    libc::sendmmsg(
                        self.tx.as_raw_fd(),
                        state.batch.headers[i..].as_mut_ptr(),
                        (due - i) as libc::c_uint,
                        0,
                    )
                };
                if rc > 0 {
                    let n = rc as usize;
                    state.batch.sent_ok[i..i + n].fill(true);
                    i += n;
                    continue;
                }
                let err = std::io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    // The descriptor itself is broken: nothing will work.
                    Some(libc::EBADF | libc::ENOTSOCK | libc::EFAULT) => {
                        return Err(RelayError::sys(
                            &self.egress,
                            sys::SysError {
                                syscall: "sendmmsg",
                                source: err,
                            },
                        ));
                    }
                    // This frame could not go (interface down, too big,
                    // no buffer): count it and carry on with the rest.
                    _ => {
                        if !state.send_error_logged {
                            state.send_error_logged = true;
                            tracing::warn!(interface = %self.egress, error = %err, "sendmmsg refused a frame; further refusals are only counted in send_errors");
                        }
                        i += 1;
                    }
                }
            }
            state.errors.clear();
            for i in 0..due {
                let Some(frame) = state.pending.pop_front() else {
                    break;
                };
                if state.batch.sent_ok[i] {
                    state.tally.add(Outcome::Sent, frame.len as usize);
                    state.errors.push(
                        sent_at
                            .saturating_duration_since(frame.departure)
                            .as_nanos() as u64,
                    );
                } else {
                    state.tally.add(Outcome::SendError, frame.len as usize);
                }
                state.slab.put(frame.slot);
            }
            self.stats.record_departure_errors(state.errors.drain(..));
            self.stats.publish(&mut state.tally);
            if due < self.batch {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spin_window_widens_with_late_wakes_and_narrows_back() {
        let floor = Duration::from_micros(200);
        let mut spin = SpinWindow::new(floor);
        spin.observe(Duration::from_micros(50));
        assert_eq!(spin.window(), floor, "never below the configured window");
        spin.observe(Duration::from_micros(400));
        assert_eq!(spin.window(), Duration::from_micros(520));
        spin.observe(Duration::from_secs(1));
        assert_eq!(spin.window(), MAX_SPIN_WINDOW, "capped");
        for _ in 0..SPIN_HISTORY {
            spin.observe(Duration::ZERO);
        }
        assert_eq!(spin.window(), floor, "old lateness is forgotten");
        // A configured window above the cap is kept as it is.
        let mut wide = SpinWindow::new(Duration::from_millis(5));
        wide.observe(Duration::ZERO);
        assert_eq!(wide.window(), Duration::from_millis(5));
    }

    #[test]
    fn slab_grows_to_its_cap_and_recycles() {
        let mut slab = Slab::new(64, 2, 5);
        assert_eq!(slab.free.len(), 2);
        assert_eq!(slab.reserve(4), 4);
        let taken: Vec<u32> = (0..4).map(|_| slab.take().unwrap()).collect();
        let mut sorted = taken.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 4, "slots handed out twice: {taken:?}");
        // Cap 5: only one more can exist.
        assert_eq!(slab.reserve(3), 1);
        assert_eq!(slab.buf.len(), 5 * 64);
        slab.put(taken[0]);
        assert_eq!(slab.reserve(2), 2);
        // Slot pointers are slot_size apart inside the buffer.
        let base = slab.buf.as_ptr() as usize;
        assert_eq!(slab.ptr(3) as usize - base, 3 * 64);
    }
}
