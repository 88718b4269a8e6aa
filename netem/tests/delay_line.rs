//! The delay line: intact, in order, never early, pipelined, bounded.

// Test helpers outside #[test] fns are test code too.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use netem::{DelayLine, DelayStream};
use rand::{Rng, RngCore, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{oneshot, Mutex};

/// Bounds waits that would otherwise hang; a deadlock detector, not a
/// performance threshold.
const HANG: Duration = Duration::from_secs(30);

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(HANG, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {HANG:?}"))
}

/// Writes `data` in random-sized pieces, then shuts down.
async fn send_in_pieces(mut w: impl AsyncWriteExt + Unpin, data: Arc<Vec<u8>>, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut at = 0;
    while at < data.len() {
        let n = rng.random_range(1..=64 * 1024).min(data.len() - at);
        w.write_all(&data[at..at + n]).await.unwrap();
        at += n;
    }
    w.shutdown().await.unwrap();
}

fn random_bytes(len: usize, seed: u64) -> Arc<Vec<u8>> {
    let mut data = vec![0; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    Arc::new(data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_arrive_intact_and_in_order_both_ways_at_once() {
    const LEN: usize = 4 << 20;
    // A cap well under the payload, so backpressure is part of the run.
    let (a, b) = DelayLine::new(Duration::from_millis(1))
        .with_max_in_flight(256 * 1024)
        .connect();
    let (mut a_rd, a_wr) = tokio::io::split(a);
    let (mut b_rd, b_wr) = tokio::io::split(b);
    let a_data = random_bytes(LEN, 1);
    let b_data = random_bytes(LEN, 2);

    let a_send = tokio::spawn(send_in_pieces(a_wr, a_data.clone(), 3));
    let b_send = tokio::spawn(send_in_pieces(b_wr, b_data.clone(), 4));
    let a_recv = tokio::spawn(async move {
        let mut got = Vec::new();
        a_rd.read_to_end(&mut got).await.unwrap();
        got
    });
    let b_recv = tokio::spawn(async move {
        let mut got = Vec::new();
        b_rd.read_to_end(&mut got).await.unwrap();
        got
    });
    within("a sends", a_send).await.unwrap();
    within("b sends", b_send).await.unwrap();
    let at_a = within("a receives", a_recv).await.unwrap();
    let at_b = within("b receives", b_recv).await.unwrap();
    assert!(at_b == *a_data, "a -> b: bytes differ or are out of order");
    assert!(at_a == *b_data, "b -> a: bytes differ or are out of order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_byte_arrives_before_its_deadline() {
    let one_way = Duration::from_millis(3);
    let (mut a, mut b) = DelayLine::pair(one_way);
    for round in 0..20u8 {
        let start = Instant::now();
        a.write_all(&[round; 100]).await.unwrap();
        let mut buf = [0; 100];
        b.read_exact(&mut buf).await.unwrap();
        let there = start.elapsed();
        assert!(there >= one_way, "round {round}: one way took {there:?}");
        assert_eq!(buf, [round; 100]);
        b.write_all(&buf).await.unwrap();
        a.read_exact(&mut buf).await.unwrap();
        let rtt = start.elapsed();
        assert!(rtt >= 2 * one_way, "round {round}: round trip took {rtt:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_write_keeps_its_own_deadline() {
    // Bytes written later must not ride along with earlier ones.
    let one_way = Duration::from_millis(5);
    let (mut a, mut b) = DelayLine::pair(one_way);
    let first = Instant::now();
    a.write_all(b"early").await.unwrap();
    tokio::time::sleep(Duration::from_millis(3)).await;
    let second = Instant::now();
    a.write_all(b"late").await.unwrap();
    let mut buf = [0; 16];
    let n = b.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"early");
    assert!(first.elapsed() >= one_way);
    let n = b.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"late");
    assert!(second.elapsed() >= one_way);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_exchanges_are_in_flight_at_once() {
    const CALLS: u64 = 200;
    let one_way = Duration::from_millis(20);
    let (client_end, server_end) = DelayLine::pair(one_way);

    // Outstanding = requests the server has seen minus replies the clients
    // have received. A link that carried one exchange at a time would keep
    // it at 1; a delay line lets it reach the number of callers.
    let seen = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let peak = Arc::new(AtomicU64::new(0));

    let server = tokio::spawn({
        let (seen, done, peak) = (seen.clone(), done.clone(), peak.clone());
        async move {
            let (mut rd, mut wr) = tokio::io::split(server_end);
            let mut req = [0u8; 16];
            for _ in 0..CALLS {
                rd.read_exact(&mut req).await.unwrap();
                let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(n - done.load(Ordering::SeqCst), Ordering::SeqCst);
                let id = u64::from_le_bytes(req[..8].try_into().unwrap());
                let value = u64::from_le_bytes(req[8..].try_into().unwrap());
                let mut reply = [0u8; 16];
                reply[..8].copy_from_slice(&id.to_le_bytes());
                reply[8..].copy_from_slice(&(value * 3).to_le_bytes());
                wr.write_all(&reply).await.unwrap();
            }
        }
    });

    let (mut rd, wr) = tokio::io::split(client_end);
    let wr = Arc::new(Mutex::new(wr));
    let waiting: Arc<parking_lot::Mutex<HashMap<u64, oneshot::Sender<u64>>>> = Arc::default();
    let router = tokio::spawn({
        let waiting = waiting.clone();
        async move {
            let mut reply = [0u8; 16];
            for _ in 0..CALLS {
                rd.read_exact(&mut reply).await.unwrap();
                let id = u64::from_le_bytes(reply[..8].try_into().unwrap());
                let value = u64::from_le_bytes(reply[8..].try_into().unwrap());
                let tx = waiting.lock().remove(&id).unwrap();
                tx.send(value).unwrap();
            }
        }
    });

    let calls: Vec<_> = (0..CALLS)
        .map(|id| {
            let (wr, waiting, done) = (wr.clone(), waiting.clone(), done.clone());
            tokio::spawn(async move {
                let (tx, rx) = oneshot::channel();
                waiting.lock().insert(id, tx);
                let value = id * 1000 + 7;
                let mut req = [0u8; 16];
                req[..8].copy_from_slice(&id.to_le_bytes());
                req[8..].copy_from_slice(&value.to_le_bytes());
                let start = Instant::now();
                wr.lock().await.write_all(&req).await.unwrap();
                let got = rx.await.unwrap();
                let rtt = start.elapsed();
                done.fetch_add(1, Ordering::SeqCst);
                assert_eq!(got, value * 3, "call {id} got another call's reply");
                assert!(rtt >= 2 * one_way, "call {id}: round trip took {rtt:?}");
            })
        })
        .collect();
    for call in calls {
        within("call", call).await.unwrap();
    }
    within("server", server).await.unwrap();
    within("router", router).await.unwrap();
    let peak = peak.load(Ordering::SeqCst);
    assert!(
        peak >= 100,
        "only {peak} of {CALLS} requests were outstanding at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_flight_cap_pushes_back_on_the_writer() {
    let (mut a, mut b) = DelayLine::new(Duration::ZERO)
        .with_max_in_flight(1000)
        .connect();
    // A write takes what fits: a short write, like a full socket buffer.
    assert_eq!(a.write(&[1; 1500]).await.unwrap(), 1000);
    assert_eq!(a.in_flight(), 1000);
    // Full: the next write pends.
    assert!(a.write(&[2; 10]).now_or_never().is_none());
    // Reading 300 makes room for exactly 300.
    let mut buf = [0; 300];
    b.read_exact(&mut buf).await.unwrap();
    assert_eq!(buf, [1; 300]);
    assert_eq!(a.write(&[2; 500]).await.unwrap(), 300);
    assert!(a.write(&[3; 1]).now_or_never().is_none());

    // A writer parked on the cap is woken by the reader making room.
    let writer = tokio::spawn(async move {
        a.write_all(&[4; 10_000]).await.unwrap();
        a.shutdown().await.unwrap();
        a
    });
    let mut rest = Vec::new();
    within("reader", b.read_to_end(&mut rest)).await.unwrap();
    let a = within("writer", writer).await.unwrap();
    assert_eq!(rest.len(), 700 + 300 + 10_000);
    assert!(rest[..700].iter().all(|&x| x == 1));
    assert!(rest[700..1000].iter().all(|&x| x == 2));
    assert!(rest[1000..].iter().all(|&x| x == 4));
    assert_eq!(a.stats().bytes_sent, 11_300);
    assert_eq!(b.stats().bytes_received, 11_300);
    assert_eq!(a.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_counts_bytes_until_they_are_read_not_until_due() {
    // With a delay, bytes still travelling count against the cap too.
    let one_way = Duration::from_millis(10);
    let (mut a, mut b) = DelayLine::new(one_way).with_max_in_flight(64).connect();
    assert_eq!(a.write(&[7; 100]).await.unwrap(), 64);
    assert!(a.write(&[7; 1]).now_or_never().is_none());
    let mut buf = [0; 64];
    b.read_exact(&mut buf).await.unwrap();
    assert_eq!(a.write(&[7; 100]).await.unwrap(), 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_eof_after_the_bytes_in_flight() {
    let one_way = Duration::from_millis(5);
    let (mut a, mut b) = DelayLine::pair(one_way);
    let start = Instant::now();
    a.write_all(b"last words").await.unwrap();
    a.shutdown().await.unwrap();
    // Writing after shutdown is an error, as on a socket.
    assert!(a.write(b"more").await.is_err());
    let mut got = Vec::new();
    within("read to EOF", b.read_to_end(&mut got))
        .await
        .unwrap();
    assert_eq!(got, b"last words");
    assert!(start.elapsed() >= one_way);
    // The other direction still works after a half-close.
    b.write_all(b"reply").await.unwrap();
    let mut buf = [0; 5];
    a.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"reply");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_an_end_gives_eof_then_broken_pipe() {
    let (mut a, mut b) = DelayLine::pair(Duration::from_millis(2));
    a.write_all(b"bye").await.unwrap();
    drop(a);
    let mut got = Vec::new();
    within("read to EOF", b.read_to_end(&mut got))
        .await
        .unwrap();
    assert_eq!(got, b"bye");
    let err = b.write_all(b"anyone?").await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_reader_is_woken_by_a_later_write() {
    let (mut a, mut b): (DelayStream, DelayStream) = DelayLine::pair(Duration::from_millis(1));
    let reader = tokio::spawn(async move {
        let mut buf = [0; 4];
        b.read_exact(&mut buf).await.unwrap();
        buf
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    a.write_all(b"ping").await.unwrap();
    assert_eq!(&within("reader", reader).await.unwrap(), b"ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_each_direction() {
    let (mut a, mut b) = DelayLine::pair(Duration::ZERO);
    a.write_all(&[0; 1234]).await.unwrap();
    b.write_all(&[0; 56]).await.unwrap();
    let mut buf = vec![0; 1234];
    b.read_exact(&mut buf).await.unwrap();
    let mut buf = vec![0; 56];
    a.read_exact(&mut buf).await.unwrap();
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!((sa.bytes_sent, sa.bytes_received), (1234, 56));
    assert_eq!((sb.bytes_sent, sb.bytes_received), (56, 1234));
}
