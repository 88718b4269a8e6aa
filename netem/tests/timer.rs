//! The precise timer: never early, any executor, earlier deadlines jump the
//! queue, lateness is recorded.

// Test helpers outside #[test] fns are test code too.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use futures::FutureExt;
use netem::timer::{self, precise_sleep, precise_sleep_until};
use rand::Rng;

/// Bounds waits that would otherwise hang; a deadlock detector, not a
/// performance threshold.
const HANG: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleeps_never_end_before_their_deadline() {
    let mut rng = rand::rng();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let durations: Vec<u64> = (0..10).map(|_| rng.random_range(0..3000)).collect();
            tokio::spawn(async move {
                for micros in durations {
                    let d = Duration::from_micros(micros);
                    let start = Instant::now();
                    precise_sleep(d).await;
                    let slept = start.elapsed();
                    assert!(slept >= d, "task {i}: asked {d:?}, woke after {slept:?}");
                }
            })
        })
        .collect();
    for task in tasks {
        tokio::time::timeout(HANG, task).await.unwrap().unwrap();
    }
}

#[test]
fn deadlines_in_the_past_are_ready_on_the_first_poll() {
    let past = Instant::now();
    assert!(precise_sleep_until(past).now_or_never().is_some());
    assert!(precise_sleep(Duration::ZERO).now_or_never().is_some());
    assert!(precise_sleep(Duration::from_secs(60))
        .now_or_never()
        .is_none());
}

#[test]
fn works_without_a_tokio_runtime() {
    let d = Duration::from_millis(2);
    let start = Instant::now();
    futures::executor::block_on(precise_sleep(d));
    assert!(start.elapsed() >= d);

    // Several at once on a single-threaded executor.
    let start = Instant::now();
    futures::executor::block_on(futures::future::join_all(
        (1..=20).map(|i| precise_sleep(Duration::from_micros(100 * i))),
    ));
    assert!(start.elapsed() >= Duration::from_millis(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wakes_are_recorded_and_dropped_sleeps_are_not_woken() {
    let before = timer::lateness_snapshot().len();
    let resumed_before = timer::resume_lateness_snapshot().len();
    let fired_before = timer::stats().fired;
    for _ in 0..20 {
        precise_sleep(Duration::from_micros(500)).await;
    }
    assert!(timer::lateness_snapshot().len() >= before + 20);
    assert!(timer::resume_lateness_snapshot().len() >= resumed_before + 20);
    assert!(timer::stats().fired >= fired_before + 20);

    // A dropped sleep's waker is released, not called.
    let woken = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let waker = flag_waker(woken.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        let mut sleep = precise_sleep(Duration::from_millis(5));
        assert!(std::pin::Pin::new(&mut sleep)
            .as_mut()
            .poll(&mut cx)
            .is_pending());
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(!woken.load(std::sync::atomic::Ordering::SeqCst));
}

use std::future::Future;

fn flag_waker(flag: std::sync::Arc<std::sync::atomic::AtomicBool>) -> std::task::Waker {
    struct Flag(std::sync::Arc<std::sync::atomic::AtomicBool>);
    impl std::task::Wake for Flag {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    std::task::Waker::from(std::sync::Arc::new(Flag(flag)))
}
