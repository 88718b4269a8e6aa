//! Measures this machine's precise-timer accuracy and a delay line's RTT.
//!
//! `cargo run -p netem --example timer_accuracy`

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use netem::timer::{self, precise_sleep};
use netem::DelayLine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn show(name: &str, h: &Histogram<u64>) {
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{name:>28}: n={:>6}  p50={:>8.1}us  p90={:>8.1}us  p99={:>8.1}us  max={:>8.1}us",
        h.len(),
        us(0.5),
        us(0.9),
        us(0.99),
        h.max() as f64 / 1000.0
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::io::Result<()> {
    for micros in [100u64, 500, 2000] {
        timer::reset_lateness();
        for _ in 0..500 {
            precise_sleep(Duration::from_micros(micros)).await;
        }
        println!("sleeps of {micros} us:");
        show("timer wake lateness", &timer::lateness_snapshot());
        show("task resume lateness", &timer::resume_lateness_snapshot());
    }

    let one_way = Duration::from_micros(500);
    let (mut a, mut b) = DelayLine::pair(one_way);
    let echo = tokio::spawn(async move {
        let mut buf = [0u8; 64];
        while let Ok(n) = b.read(&mut buf).await {
            if n == 0 || b.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    });
    let mut extra =
        Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).map_err(std::io::Error::other)?;
    let mut buf = [0u8; 64];
    for _ in 0..500 {
        let start = Instant::now();
        a.write_all(&buf).await?;
        a.read_exact(&mut buf).await?;
        let over = start.elapsed().saturating_sub(2 * one_way);
        extra.saturating_record(over.as_nanos() as u64);
    }
    drop(a);
    let _ = echo.await;
    println!("delay line, one way {one_way:?}, 64-byte ping-pong:");
    show("RTT beyond 2 x one way", &extra);
    Ok(())
}
