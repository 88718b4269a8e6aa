//! Calls waiting for their replies, keyed by request id, and the one
//! failure that ends them all: the bookkeeping a multiplexing client (jsonl)
//! shares with frpc's design.
//!
//! The connection fails as a whole: the first failure is kept, every
//! pending call gets it, and every later registration is refused with it,
//! so no call can wait on a dead connection.

use std::collections::HashMap;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use backends::{BackendError, Result};

/// Why a connection is unusable; kept so every later call gets the same
/// answer (a `BackendError` itself is not `Clone`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The peer closed the connection, or this side shut it down.
    Closed,
    /// Anything else, with the reason.
    Broken(String),
}

impl Failure {
    pub(crate) fn to_error(&self) -> BackendError {
        match self {
            Self::Closed => BackendError::Closed,
            Self::Broken(msg) => BackendError::Remote(msg.clone()),
        }
    }
}

type Waiter<T> = oneshot::Sender<Result<T>>;

#[derive(Debug)]
struct State<T> {
    waiting: HashMap<u64, Waiter<T>>,
    failed: Option<Failure>,
}

/// The calls of one connection that wait for a reply.
#[derive(Debug)]
pub(crate) struct Pending<T> {
    state: Mutex<State<T>>,
}

impl<T> Default for Pending<T> {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                waiting: HashMap::new(),
                failed: None,
            }),
        }
    }
}

impl<T> Pending<T> {
    /// Registers call `id`; fails at once if the connection already failed.
    pub(crate) fn register(&self, id: u64) -> Result<oneshot::Receiver<Result<T>>> {
        let (tx, rx) = oneshot::channel();
        let mut state = self.state.lock();
        if let Some(failure) = &state.failed {
            return Err(failure.to_error());
        }
        state.waiting.insert(id, tx);
        Ok(rx)
    }

    /// Drops call `id` (its frame never left, so no reply will come).
    pub(crate) fn forget(&self, id: u64) {
        self.state.lock().waiting.remove(&id);
    }

    /// Hands call `id` its result; `false` if no call has that id.
    pub(crate) fn complete(&self, id: u64, result: Result<T>) -> bool {
        let waiter = self.state.lock().waiting.remove(&id);
        match waiter {
            Some(tx) => {
                // The caller may have given up; its result is dropped then.
                let _ = tx.send(result);
                true
            }
            None => false,
        }
    }

    /// Marks the connection failed (the first failure wins) and fails every
    /// waiting call. Registration checks `failed` under the same lock, so no
    /// call slips in after the drain and waits forever.
    pub(crate) fn fail(&self, failure: Failure) {
        let (waiting, failure) = {
            let mut state = self.state.lock();
            let failure = state.failed.get_or_insert(failure).clone();
            (std::mem::take(&mut state.waiting), failure)
        };
        for tx in waiting.into_values() {
            let _ = tx.send(Err(failure.to_error()));
        }
    }

    /// The error calls get once the connection failed (`Closed` if it has
    /// not: the caller saw its reply channel vanish, which only a drain does).
    pub(crate) fn failure(&self) -> BackendError {
        self.state
            .lock()
            .failed
            .as_ref()
            .map_or(BackendError::Closed, Failure::to_error)
    }

    pub(crate) fn is_failed(&self) -> bool {
        self.state.lock().failed.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn failure_reaches_waiting_and_later_calls() {
        let pending = Pending::<u32>::default();
        let a = pending.register(1).unwrap();
        let b = pending.register(2).unwrap();
        assert!(pending.complete(1, Ok(7)));
        assert!(!pending.complete(9, Ok(0)));
        pending.fail(Failure::Broken("gone".into()));
        pending.fail(Failure::Closed); // the first failure wins
        assert_eq!(a.await.unwrap().unwrap(), 7);
        assert!(matches!(b.await.unwrap(), Err(BackendError::Remote(m)) if m == "gone"));
        assert!(matches!(pending.register(3), Err(BackendError::Remote(_))));
        assert!(pending.is_failed());
    }
}
