//! How a seeder stops and restarts the application that writes its region.
//!
//! Finalize must return the exact set of chunks written since `Track`, so
//! the application must not write while the seeder flushes and collects
//! that set. The seeder does not know the application; the caller gives it
//! an [`AppControl`]. [`AppGate`] is one for applications that run a loop
//! and can pass a checkpoint around each batch of writes.

use std::fmt;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Suspends and resumes the application writing a seeder's region.
///
/// Both are called on a blocking thread (never a runtime worker), so they
/// may block. [`AppControl::resume`] is called after a failed
/// [`AppControl::suspend`] too (it may have half-suspended the
/// application), and must be harmless then.
pub trait AppControl: Send + Sync + fmt::Debug {
    /// Returns once the application no longer writes to the region; an
    /// error says why it could not be suspended.
    fn suspend(&self) -> Result<(), String>;
    /// Lets the application write again: the migration was abandoned and
    /// the source keeps running.
    fn resume(&self);
}

/// Default bound on how long [`AppGate::suspend`] waits for the
/// application to leave the gate: a finalize that waits longer has already
/// blown any downtime target, and failing lets the source resume.
pub const DEFAULT_SUSPEND_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct GateState {
    suspended: bool,
    /// Passes held by the application right now.
    inside: usize,
    suspends: u64,
    resumes: u64,
}

/// An [`AppControl`] for an application loop: the application holds an
/// [`AppPass`] (from [`AppGate::enter`]) while it writes; `suspend` closes
/// the gate and waits until no pass is held; `resume` opens it again.
pub struct AppGate {
    state: Mutex<GateState>,
    changed: Condvar,
    suspend_timeout: Duration,
}

impl fmt::Debug for AppGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("AppGate")
            .field("suspended", &state.suspended)
            .field("inside", &state.inside)
            .field("suspend_timeout", &self.suspend_timeout)
            .finish()
    }
}

impl Default for AppGate {
    fn default() -> Self {
        Self::new(DEFAULT_SUSPEND_TIMEOUT)
    }
}

impl AppGate {
    /// An open gate whose `suspend` gives up after `suspend_timeout`.
    pub fn new(suspend_timeout: Duration) -> Self {
        Self {
            state: Mutex::new(GateState::default()),
            changed: Condvar::new(),
            suspend_timeout,
        }
    }

    // A panic while holding this lock leaves only counters behind, so a
    // poisoned lock is still consistent: take it over.
    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits while the gate is closed, then lets the application in until
    /// the pass is dropped.
    pub fn enter(&self) -> AppPass<'_> {
        let mut state = self.lock();
        while state.suspended {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        state.inside += 1;
        AppPass { gate: self }
    }

    /// Like [`Self::enter`], but gives up after `limit` (returns `None`),
    /// so an application loop can notice it has been migrated away.
    pub fn enter_within(&self, limit: Duration) -> Option<AppPass<'_>> {
        let until = Instant::now() + limit;
        let mut state = self.lock();
        while state.suspended {
            let left = until.checked_duration_since(Instant::now())?;
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        state.inside += 1;
        Some(AppPass { gate: self })
    }

    /// Whether the gate is closed.
    pub fn is_suspended(&self) -> bool {
        self.lock().suspended
    }

    /// How many times `suspend` was called.
    pub fn suspends(&self) -> u64 {
        self.lock().suspends
    }

    /// How many times `resume` was called.
    pub fn resumes(&self) -> u64 {
        self.lock().resumes
    }
}

impl AppControl for AppGate {
    fn suspend(&self) -> Result<(), String> {
        let until = Instant::now() + self.suspend_timeout;
        let mut state = self.lock();
        state.suspended = true;
        state.suspends += 1;
        while state.inside > 0 {
            let Some(left) = until.checked_duration_since(Instant::now()) else {
                return Err(format!(
                    "the application still held {} pass(es) after {:?}",
                    state.inside, self.suspend_timeout
                ));
            };
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        Ok(())
    }

    fn resume(&self) {
        let mut state = self.lock();
        state.suspended = false;
        state.resumes += 1;
        drop(state);
        self.changed.notify_all();
    }
}

/// The application's permission to write; dropping it lets a waiting
/// `suspend` return.
#[derive(Debug)]
pub struct AppPass<'a> {
    gate: &'a AppGate,
}

impl Drop for AppPass<'_> {
    fn drop(&mut self) {
        let mut state = self.gate.lock();
        state.inside -= 1;
        drop(state);
        self.gate.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use super::*;

    #[test]
    fn suspend_waits_for_the_pass_and_blocks_new_ones() {
        let gate = Arc::new(AppGate::default());
        let pass = gate.enter();
        let suspended = Arc::new(AtomicBool::new(false));
        let suspender = {
            let (gate, suspended) = (gate.clone(), suspended.clone());
            std::thread::spawn(move || {
                gate.suspend().unwrap();
                suspended.store(true, Ordering::SeqCst);
            })
        };
        // The suspender is waiting for our pass; it cannot have returned.
        while !gate.is_suspended() {
            std::thread::yield_now();
        }
        assert!(!suspended.load(Ordering::SeqCst));
        drop(pass);
        suspender.join().unwrap();
        assert!(suspended.load(Ordering::SeqCst));
        assert!(gate.enter_within(Duration::from_millis(1)).is_none());
        gate.resume();
        assert!(gate.enter_within(Duration::from_millis(1)).is_some());
        assert_eq!((gate.suspends(), gate.resumes()), (1, 1));
    }

    #[test]
    fn a_pass_never_returned_makes_suspend_fail() {
        let gate = AppGate::new(Duration::from_millis(20));
        let _pass = gate.enter();
        let error = gate.suspend().unwrap_err();
        assert!(error.contains("1 pass"), "{error}");
    }
}
