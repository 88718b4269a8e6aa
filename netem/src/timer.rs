//! A precise async sleep for the whole process.
//!
//! tokio's timer wheel has 1 ms granularity, too coarse to emulate RTTs of
//! 0.1-5 ms. Here one dedicated thread keeps a heap of deadlines; it parks
//! until [`SPIN_WINDOW`] before the earliest one, then spins the rest of the
//! way and wakes every task that is due. [`precise_sleep`] and
//! [`precise_sleep_until`] are plain futures: they need no runtime and work
//! on tokio, `futures::executor` or any other executor.
//!
//! # Behavior
//!
//! - A sleep never completes before its deadline: readiness is decided by
//!   comparing `Instant::now()` with the deadline when the future is polled,
//!   whatever woke it.
//! - Registering a deadline earlier than every pending one unparks the
//!   thread, so a short sleep is not held up by a long one.
//! - With no deadline pending the thread parks without a timeout: no CPU is
//!   used while idle.
//! - How late each wake was is recorded (see [`lateness_snapshot`]): the
//!   emulator's accuracy is measured, never assumed.
//!
//! # Limitations
//!
//! Spinning occupies a core for up to [`SPIN_WINDOW`] before every deadline.
//! On a 2-core machine with deadlines back to back (a delay line carrying a
//! stream of small writes) the thread may spin most of the time. Wakes
//! still go through the executor, so what a task observes also includes
//! its scheduling delay ([`resume_lateness_snapshot`] records that).

use std::cmp::{Ordering as CmpOrdering, Reverse};
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;

/// How long before a deadline the timer thread stops parking and starts
/// spinning.
///
/// Parking is cheap but wakes late: on this project's VMs (2 vCPUs,
/// Firecracker guests), `park_timeout` overshot by 61 us at the median,
/// 94 us at p90 and 146 us at p99 even with the thread's timer slack cut
/// to 1 ns (114/144/212 us with the default 50 us slack). 200 us covers the
/// p99 overshoot, so nearly every wake is decided by the spin (sub-
/// microsecond) rather than by the scheduler; the cost is at most 200 us of
/// spinning per deadline. Raise it if [`lateness_snapshot`] shows a tail of
/// late wakes on a busier machine.
pub const SPIN_WINDOW: Duration = Duration::from_micros(200);

/// Largest lateness the histograms hold; later wakes are recorded as this.
const MAX_RECORDED: Duration = Duration::from_secs(60);

/// Sleeps until `deadline`, precisely. See the module docs.
pub fn precise_sleep_until(deadline: Instant) -> PreciseSleep {
    PreciseSleep {
        deadline,
        slot: None,
    }
}

/// Sleeps for `duration`, precisely. See the module docs.
pub fn precise_sleep(duration: Duration) -> PreciseSleep {
    // Capped so the addition cannot overflow; a century is forever here.
    const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    precise_sleep_until(Instant::now() + duration.min(FOREVER))
}

/// A copy of the histogram of how late the timer thread woke sleepers, in
/// nanoseconds past each deadline (the departure error).
pub fn lateness_snapshot() -> Histogram<u64> {
    timer().lateness.lock().clone()
}

/// A copy of the histogram of how late sleeping futures observed their
/// deadline, in nanoseconds: the departure error plus the executor's delay
/// in polling the woken task. Only sleeps that actually waited are counted.
pub fn resume_lateness_snapshot() -> Histogram<u64> {
    timer().resume_lateness.lock().clone()
}

/// Empties both lateness histograms, e.g. between scenario runs.
pub fn reset_lateness() {
    let timer = timer();
    timer.lateness.lock().reset();
    timer.resume_lateness.lock().reset();
}

/// Counters describing the timer thread's work so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerStats {
    /// Sleeps woken by the timer thread.
    pub fired: u64,
    /// Turns of the timer thread's loop: each follows a park or a spin, so
    /// a count that stays still means the thread is asleep.
    pub turns: u64,
    /// Deadlines still pending (including those of dropped sleeps that have
    /// not yet been cleaned out).
    pub pending: usize,
}

/// The timer thread's counters.
pub fn stats() -> TimerStats {
    let timer = timer();
    TimerStats {
        fired: timer.fired.load(Ordering::Relaxed),
        turns: timer.turns.load(Ordering::Relaxed),
        pending: timer.state.lock().heap.len(),
    }
}

/// The future [`precise_sleep`] and [`precise_sleep_until`] return.
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct PreciseSleep {
    deadline: Instant,
    /// Set once the deadline is in the timer's heap.
    slot: Option<Arc<Slot>>,
}

impl PreciseSleep {
    /// When this sleep ends.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}

impl Future for PreciseSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if Instant::now() >= this.deadline {
            this.finish();
            return Poll::Ready(());
        }
        match &this.slot {
            Some(slot) => {
                let mut waker = slot.waker.lock();
                if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *waker = Some(cx.waker().clone());
                }
            }
            None => this.slot = Some(timer().register(this.deadline, cx.waker().clone())),
        }
        // The timer may have fired between the first check and storing the
        // waker (waking the old one); time alone decides, so look again.
        if Instant::now() >= this.deadline {
            this.finish();
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl PreciseSleep {
    fn finish(&mut self) {
        if let Some(slot) = self.slot.take() {
            // The task waited on the timer: record how late it resumed.
            let late = Instant::now().saturating_duration_since(self.deadline);
            record(&timer().resume_lateness, late);
            // Already fired (or about to be, harmlessly): no cleanup needed.
            slot.done.store(true, Ordering::Relaxed);
        }
    }
}

impl Drop for PreciseSleep {
    fn drop(&mut self) {
        if let Some(slot) = &self.slot {
            // The timer skips it and cleans it out of the heap.
            slot.done.store(true, Ordering::Relaxed);
            slot.waker.lock().take();
        }
    }
}

/// What a pending sleep shares with the timer thread.
#[derive(Debug, Default)]
struct Slot {
    waker: Mutex<Option<Waker>>,
    /// The sleep completed or was dropped: nothing to wake.
    done: AtomicBool,
}

#[derive(Debug)]
struct Entry {
    deadline: Instant,
    /// Breaks ties so equal deadlines wake in registration order.
    seq: u64,
    slot: Arc<Slot>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == CmpOrdering::Equal
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (self.deadline, self.seq).cmp(&(other.deadline, other.seq))
    }
}

#[derive(Debug, Default)]
struct State {
    heap: BinaryHeap<Reverse<Entry>>,
    next_seq: u64,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    /// Set when a new earliest deadline arrives, so a spinning thread
    /// re-plans instead of finishing a spin for a later deadline.
    replan: AtomicBool,
    lateness: Mutex<Histogram<u64>>,
    resume_lateness: Mutex<Histogram<u64>>,
    fired: AtomicU64,
    turns: AtomicU64,
}

#[derive(Debug)]
struct Timer {
    inner: Arc<Inner>,
    /// `None` if the thread could not be started; sleeps then poll
    /// themselves (correct, but busy).
    thread: Option<Thread>,
}

impl std::ops::Deref for Timer {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

fn timer() -> &'static Timer {
    static TIMER: OnceLock<Timer> = OnceLock::new();
    TIMER.get_or_init(|| {
        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            replan: AtomicBool::new(false),
            lateness: Mutex::new(new_histogram()),
            resume_lateness: Mutex::new(new_histogram()),
            fired: AtomicU64::new(0),
            turns: AtomicU64::new(0),
        });
        let spawned = std::thread::Builder::new()
            .name("netem-timer".into())
            .spawn({
                let inner = inner.clone();
                move || run(&inner)
            });
        let thread = match spawned {
            Ok(handle) => Some(handle.thread().clone()),
            Err(e) => {
                tracing::error!(error = %e, "could not start the precise timer thread; sleeps will busy-poll");
                None
            }
        };
        Timer { inner, thread }
    })
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_RECORDED.as_nanos() as u64, 3)
        .expect("constant histogram bounds are valid")
}

fn record(histogram: &Mutex<Histogram<u64>>, late: Duration) {
    histogram.lock().saturating_record(late.as_nanos() as u64);
}

impl Timer {
    fn register(&self, deadline: Instant, waker: Waker) -> Arc<Slot> {
        let slot = Arc::new(Slot {
            waker: Mutex::new(Some(waker)),
            done: AtomicBool::new(false),
        });
        let Some(thread) = &self.thread else {
            // No timer thread: ask to be polled again right away.
            if let Some(waker) = slot.waker.lock().as_ref() {
                waker.wake_by_ref();
            }
            return slot;
        };
        let earliest = {
            let mut state = self.state.lock();
            let seq = state.next_seq;
            state.next_seq += 1;
            state.heap.push(Reverse(Entry {
                deadline,
                seq,
                slot: slot.clone(),
            }));
            state.heap.peek().is_some_and(|Reverse(top)| top.seq == seq)
        };
        if earliest {
            self.replan.store(true, Ordering::Release);
            thread.unpark();
        }
        slot
    }
}

/// The timer thread.
fn run(inner: &Inner) {
    reduce_timer_slack();
    let mut due: Vec<Entry> = Vec::new();
    loop {
        inner.turns.fetch_add(1, Ordering::Relaxed);
        // Cleared before looking at the heap: anything registered after the
        // look sets it again and cuts the coming spin short.
        inner.replan.store(false, Ordering::Release);
        let next = {
            let mut state = inner.state.lock();
            let now = Instant::now();
            while let Some(Reverse(top)) = state.heap.peek() {
                let cancelled = top.slot.done.load(Ordering::Relaxed);
                if top.deadline > now && !cancelled {
                    break;
                }
                if let Some(Reverse(entry)) = state.heap.pop() {
                    if !cancelled {
                        due.push(entry);
                    }
                }
            }
            state.heap.peek().map(|Reverse(top)| top.deadline)
        };
        for entry in due.drain(..) {
            let waker = entry.slot.waker.lock().take();
            if let Some(waker) = waker {
                record(
                    &inner.lateness,
                    Instant::now().saturating_duration_since(entry.deadline),
                );
                inner.fired.fetch_add(1, Ordering::Relaxed);
                waker.wake();
            }
        }
        let Some(deadline) = next else {
            // Idle: sleep until a registration unparks us. Spurious
            // returns just go round the loop once.
            std::thread::park();
            continue;
        };
        let now = Instant::now();
        if deadline > now + SPIN_WINDOW {
            std::thread::park_timeout(deadline - now - SPIN_WINDOW);
        } else {
            while Instant::now() < deadline && !inner.replan.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
        }
    }
}

/// Cuts this thread's timer slack from the default 50 us to 1 ns, so
/// `park_timeout` wakes closer to when asked (see [`SPIN_WINDOW`]).
fn reduce_timer_slack() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_TIMERSLACK takes a plain integer and changes only
        // the calling thread's timer slack; no memory is passed or kept.
        let rc = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
        if rc != 0 {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "could not reduce the timer thread's slack; parks wake later, spins make up for it"
            );
        }
    }
}
