//! What the timer thread does when it has (almost) nothing to do: sleep
//! when idle, and get unparked by an earlier deadline. Its own test binary
//! with one test, so no other sleeps keep the shared timer busy and hide a
//! missed unpark.

// Test helpers outside #[test] fns are test code too.
#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::time::{Duration, Instant};

use netem::timer::{self, precise_sleep};

/// Runs `f` to completion on its own thread, failing with `what` if it
/// takes longer than `limit` (a missed wake-up would hang forever).
fn within<F>(limit: Duration, what: &str, f: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(futures::executor::block_on(f));
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
}

#[test]
fn idle_then_an_earlier_deadline_unparks() {
    // Start the thread and give it work, then let it finish. The first
    // registration must unpark a thread parked with nothing pending.
    within(Duration::from_secs(20), "50 short sleeps", async {
        for _ in 0..50 {
            precise_sleep(Duration::from_micros(300)).await;
        }
    });
    std::thread::sleep(Duration::from_millis(20));
    let before = timer::stats();
    assert_eq!(before.pending, 0);
    std::thread::sleep(Duration::from_millis(200));
    let after = timer::stats();
    // A spinning thread would turn millions of times; a parked one, not at
    // all (a spurious unpark or two is allowed).
    assert!(
        after.turns - before.turns <= 2,
        "timer thread turned {} times in 200 ms with nothing pending",
        after.turns - before.turns
    );

    // Now the thread parks for a long sleep; a short one registered later
    // must unpark it. Were it not unparked, the short sleep would take
    // ~10 s and time out.
    std::thread::spawn(|| futures::executor::block_on(precise_sleep(Duration::from_secs(10))));
    std::thread::sleep(Duration::from_millis(20));
    let slept = within(
        Duration::from_secs(5),
        "a 1 ms sleep registered after a 10 s one",
        async {
            let start = Instant::now();
            precise_sleep(Duration::from_millis(1)).await;
            start.elapsed()
        },
    );
    assert!(slept >= Duration::from_millis(1));
}
