//! frpc end to end: a client over a stream to a server over a backend.

// Test helpers outside #[test] fns are test code too.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use backends::conformance::pattern;
use backends::testing::Probe;
use backends::{Backend, BackendError, MemoryBackend, SharedBackend};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use transports::wire::{Op, Reply, RequestHeader, Status, MAGIC_VERSION};
use transports::{
    serve, serve_listener, serve_with, ClientConfig, FrpcClient, ServeConfig, ServeError,
    ServeStats, WireError, DEFAULT_MAX_MESSAGE,
};

/// Bounds every wait so a hang fails the test instead of stalling the run.
/// Generous: this is a deadlock detector, not a performance threshold.
const HANG: Duration = Duration::from_secs(20);

async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(HANG, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {HANG:?}"))
}

type Server = JoinHandle<Result<ServeStats, ServeError>>;

fn connect(backend: SharedBackend, config: ClientConfig, max_message: u32) -> (FrpcClient, Server) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(serve(b, backend, max_message));
    (FrpcClient::with_config(a, config), server)
}

fn memory_pair(content: Vec<u8>) -> (FrpcClient, Server, Arc<MemoryBackend>) {
    let memory = Arc::new(MemoryBackend::from_bytes(content));
    let (client, server) = connect(memory.clone(), ClientConfig::default(), DEFAULT_MAX_MESSAGE);
    (client, server, memory)
}

fn request_frame(id: u64, op: u8, offset: u64, length: u32) -> Vec<u8> {
    let mut v = vec![MAGIC_VERSION];
    v.extend_from_slice(&id.to_le_bytes());
    v.push(op);
    v.extend_from_slice(&offset.to_le_bytes());
    v.extend_from_slice(&length.to_le_bytes());
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_method_works() {
    let content = pattern(1, 0, 10_000);
    let (client, server, memory) = memory_pair(content.clone());

    assert_eq!(client.size().await.unwrap(), 10_000);

    let mut buf = vec![0; 300];
    assert_eq!(client.read_at(&mut buf, 1234).await.unwrap(), 300);
    assert_eq!(buf, content[1234..1534]);

    client.write_at(b"hello frpc", 9_000).await.unwrap();
    assert_eq!(&memory.snapshot()[9_000..9_010], b"hello frpc");

    client.sync().await.unwrap();

    // Short at the end, empty at the end.
    let mut tail = vec![0; 100];
    assert_eq!(client.read_at(&mut tail, 9_950).await.unwrap(), 50);
    assert_eq!(tail[..50], content[9_950..]);
    assert_eq!(client.read_at(&mut [], 10_000).await.unwrap(), 0);
    client.write_at(&[], 10_000).await.unwrap();

    drop(client);
    let stats = within("server", server).await.unwrap().unwrap();
    assert_eq!(stats.requests, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_then_read_back() {
    let (client, _server, _memory) = memory_pair(vec![0; 1 << 20]);
    let data = pattern(2, 4096, 65_536 + 17);
    client.write_at(&data, 4096).await.unwrap();
    let mut back = vec![0; data.len()];
    client.read_exact_at(&mut back, 4096).await.unwrap();
    assert_eq!(back, data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_errors_travel_back_typed() {
    let (client, _server, memory) = memory_pair(vec![7; 4096]);
    let mut buf = vec![0; 10];
    match client.read_at(&mut buf, 4096).await {
        Err(BackendError::OutOfRange {
            offset: 4096,
            len: 10,
            size: 4096,
        }) => {}
        other => panic!("expected OutOfRange for a read at the end, got {other:?}"),
    }
    match client.write_at(&[1; 8], 4090).await {
        Err(BackendError::OutOfRange {
            offset: 4090,
            len: 8,
            size: 4096,
        }) => {}
        other => panic!("expected OutOfRange for a write across the end, got {other:?}"),
    }
    assert_eq!(memory.snapshot(), vec![7; 4096], "a rejected write wrote");
    // The connection survives per-call errors.
    assert_eq!(client.read_at(&mut buf, 0).await.unwrap(), 10);
    assert!(!client.is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_reads_each_get_their_own_bytes() {
    const CALLS: usize = 1000;
    const LEN: usize = 64;
    let content = pattern(3, 0, CALLS * LEN);
    // Every read waits until all CALLS are inside the backend at once: if
    // the client or the server serialised calls, the test would deadlock.
    let backend = Arc::new(Probe::memory(content.clone()).with_read_barrier(CALLS));
    let (client, server) = connect(
        backend.clone(),
        ClientConfig::default(),
        DEFAULT_MAX_MESSAGE,
    );
    let client = Arc::new(client);

    // Reverse order, so replies matched by arrival order would be wrong.
    let calls = (0..CALLS).rev().map(|i| {
        let client = client.clone();
        tokio::spawn(async move {
            let mut buf = vec![0; LEN];
            let n = client.read_at(&mut buf, (i * LEN) as u64).await.unwrap();
            (i, n, buf)
        })
    });
    let calls: Vec<_> = calls.collect();
    for call in calls {
        let (i, n, buf) = within("read", call).await.unwrap();
        assert_eq!(n, LEN);
        assert!(
            buf == content[i * LEN..(i + 1) * LEN],
            "read {i} got another's bytes"
        );
    }
    assert_eq!(backend.max_in_flight(), CALLS as u64);

    drop(Arc::into_inner(client).unwrap());
    let stats = within("server", server).await.unwrap().unwrap();
    assert_eq!(stats.requests, CALLS as u64);
    assert_eq!(stats.peak_in_flight, CALLS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_counts_match_frames_on_both_sides() {
    let (client, server, _memory) = memory_pair(vec![0; 4096]);
    let mut buf = vec![0; 100];
    client.read_at(&mut buf, 0).await.unwrap();
    client.write_at(&[1; 50], 0).await.unwrap();
    client.size().await.unwrap();
    client.size().await.unwrap(); // cached: no request
    client.sync().await.unwrap();
    let sent = 4 * RequestHeader::LEN as u64 + 50;
    let received = 4 * 14 + 100 + 8;
    let stats = client.stats();
    assert_eq!(stats.requests, 4);
    assert_eq!(stats.bytes_sent, sent);
    assert_eq!(stats.bytes_received, received);
    drop(client);
    let served = within("server", server).await.unwrap().unwrap();
    assert_eq!(served.requests, 4);
    assert_eq!(served.bytes_received, sent);
    assert_eq!(served.bytes_sent, received);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accesses_over_the_message_limit_are_split() {
    const MAX: u32 = 1024;
    let content = pattern(4, 0, 10_000);
    let memory = Arc::new(MemoryBackend::from_bytes(content.clone()));
    let config = ClientConfig {
        max_message: MAX,
        ..ClientConfig::default()
    };
    let (client, _server) = connect(memory.clone(), config, MAX);

    let mut buf = vec![0; 5000];
    assert_eq!(client.read_at(&mut buf, 100).await.unwrap(), 5000);
    assert_eq!(buf, content[100..5100]);
    // Crossing the end: short, even when whole pieces lie past the end.
    let mut buf = vec![0; 4000];
    assert_eq!(client.read_at(&mut buf, 8000).await.unwrap(), 2000);
    assert_eq!(buf[..2000], content[8000..]);
    let mut buf = vec![0; 4096];
    assert_eq!(client.read_at(&mut buf, 10_000 - 2048).await.unwrap(), 2048);

    let data = pattern(5, 0, 3000);
    client.write_at(&data, 7000).await.unwrap();
    assert_eq!(memory.snapshot()[7000..], data[..]);
    // Out of range as a whole: no piece may land.
    let before = memory.snapshot();
    assert!(matches!(
        client.write_at(&pattern(6, 0, 3000), 7001).await,
        Err(BackendError::OutOfRange { .. })
    ));
    assert_eq!(memory.snapshot(), before);
    assert!(client.stats().requests > 10);
}

/// Sends `bytes` to a fresh server and returns how it ended and what the
/// server told the peer before closing.
async fn serve_raw(bytes: Vec<u8>, max_message: u32) -> (Result<ServeStats, ServeError>, Vec<u8>) {
    let (mut peer, server_end) = tokio::io::duplex(64 * 1024);
    let backend: SharedBackend = Arc::new(MemoryBackend::new(4096));
    let server = tokio::spawn(serve(server_end, backend, max_message));
    peer.write_all(&bytes).await.unwrap();
    // Keep our side open: the server must close by itself.
    let mut said = Vec::new();
    within("server closing", peer.read_to_end(&mut said))
        .await
        .unwrap();
    let result = within("server", server).await.unwrap();
    (result, said)
}

fn protocol_error_reply(said: &[u8]) -> String {
    let mut buf = BytesMut::from(said);
    let reply = Reply::parse(&mut buf, DEFAULT_MAX_MESSAGE).unwrap();
    assert_eq!(reply.header.id, 0);
    assert_eq!(reply.header.status, Status::ProtocolError);
    assert!(
        buf.is_empty(),
        "the server said more after the protocol error"
    );
    String::from_utf8(reply.body.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_limit_closes_the_connection() {
    // The announced body never comes: the server must decide on the header.
    let (result, said) = serve_raw(request_frame(1, Op::WriteAt as u8, 0, u32::MAX), 1 << 20).await;
    match result {
        Err(ServeError::Protocol(WireError::TooLarge {
            length: u32::MAX,
            max: 1_048_576,
        })) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(protocol_error_reply(&said).contains("4294967295"));

    // A read asking for more than the limit is refused the same way.
    let (result, _) = serve_raw(
        request_frame(1, Op::ReadAt as u8, 0, (1 << 20) + 1),
        1 << 20,
    )
    .await;
    assert!(matches!(
        result,
        Err(ServeError::Protocol(WireError::TooLarge { .. }))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_closes_the_connection() {
    let garbage: Vec<u8> = (0..200u32).map(|i| (i * 7 + 3) as u8).collect();
    let (result, said) = serve_raw(garbage, DEFAULT_MAX_MESSAGE).await;
    assert!(
        matches!(
            result,
            Err(ServeError::Protocol(WireError::BadMagic { found: 3 }))
        ),
        "got {result:?}"
    );
    assert!(protocol_error_reply(&said).contains("bad magic"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_op_closes_the_connection_after_earlier_replies() {
    // A good request first: its reply must still go out before the error.
    let mut bytes = request_frame(5, Op::Size as u8, 0, 0);
    bytes.extend(request_frame(6, 77, 0, 0));
    let (result, said) = serve_raw(bytes, DEFAULT_MAX_MESSAGE).await;
    assert!(
        matches!(result, Err(ServeError::Protocol(WireError::UnknownOp(77)))),
        "got {result:?}"
    );
    let mut buf = BytesMut::from(&said[..]);
    // The Size reply may or may not have been sent before the handler was
    // aborted; if present it is first and correct.
    let first = Reply::parse(&mut buf, DEFAULT_MAX_MESSAGE).unwrap();
    let last = if first.header.id == 5 {
        assert_eq!(&first.body[..], &4096u64.to_le_bytes());
        Reply::parse(&mut buf, DEFAULT_MAX_MESSAGE).unwrap()
    } else {
        first
    };
    assert_eq!(
        (last.header.id, last.header.status),
        (0, Status::ProtocolError)
    );
    assert!(String::from_utf8_lossy(&last.body).contains("unknown op code 77"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_frame_is_an_error_not_a_clean_close() {
    let (mut peer, server_end) = tokio::io::duplex(1024);
    let server = tokio::spawn(serve(
        server_end,
        Arc::new(MemoryBackend::new(4096)),
        DEFAULT_MAX_MESSAGE,
    ));
    peer.write_all(&request_frame(1, Op::WriteAt as u8, 0, 100)[..])
        .await
        .unwrap();
    peer.write_all(&[0; 40]).await.unwrap();
    drop(peer);
    match within("server", server).await.unwrap() {
        Err(ServeError::Truncated { buffered: 62 }) => {}
        other => panic!("expected Truncated after 22 + 40 bytes, got {other:?}"),
    }
}

/// A fake server: reads `requests` request headers, then runs `then`.
async fn fake_server<F, Fut>(requests: usize, then: F) -> (FrpcClient, JoinHandle<()>)
where
    F: FnOnce(DuplexStream, Vec<u64>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let (a, mut b) = tokio::io::duplex(64 * 1024);
    let task = tokio::spawn(async move {
        let mut ids = Vec::new();
        for _ in 0..requests {
            let mut head = [0u8; RequestHeader::LEN];
            b.read_exact(&mut head).await.unwrap();
            ids.push(u64::from_le_bytes(head[1..9].try_into().unwrap()));
        }
        then(b, ids).await;
    });
    (FrpcClient::new(a), task)
}

async fn pending_reads(
    client: &Arc<FrpcClient>,
    n: usize,
) -> Vec<JoinHandle<backends::Result<usize>>> {
    (0..n)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut buf = vec![0; 16];
                client.read_at(&mut buf, i as u64 * 16).await
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_disconnecting_mid_call_fails_every_pending_call() {
    let (client, server) = fake_server(10, |stream, _ids| async move { drop(stream) }).await;
    let client = Arc::new(client);
    for call in pending_reads(&client, 10).await {
        match within("pending call", call).await.unwrap() {
            Err(BackendError::Closed) => {}
            other => panic!("expected Closed, got {other:?}"),
        }
    }
    server.await.unwrap();
    assert!(client.is_closed());
    // Later calls fail at once rather than wait on a dead stream.
    let result = within("call after close", client.size()).await;
    assert!(
        matches!(result, Err(BackendError::Closed)),
        "got {result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_for_an_unknown_id_fails_every_pending_call() {
    let (client, _server) = fake_server(5, |mut stream, _ids| async move {
        let mut frame = BytesMut::new();
        Reply::encode(&mut frame, 999_999, Status::Ok, &[0; 16]);
        stream.write_all(&frame).await.unwrap();
        // Stay open: the client must fail on the bad reply, not on EOF.
        std::future::pending::<()>().await;
    })
    .await;
    let client = Arc::new(client);
    for call in pending_reads(&client, 5).await {
        match within("pending call", call).await.unwrap() {
            Err(BackendError::Remote(msg)) => assert!(msg.contains("999999"), "{msg}"),
            other => panic!("expected Remote, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_reply_fails_every_pending_call() {
    let (client, _server) = fake_server(3, |mut stream, ids| async move {
        // One good reply, then garbage.
        let mut frame = BytesMut::new();
        Reply::encode(&mut frame, ids[0], Status::Ok, &[9; 16]);
        frame.extend_from_slice(&[0xAB; 30]);
        stream.write_all(&frame).await.unwrap();
        std::future::pending::<()>().await;
    })
    .await;
    let client = Arc::new(client);
    let results: Vec<_> = futures::future::join_all(pending_reads(&client, 3).await)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let ok = results.iter().filter(|r| matches!(r, Ok(16))).count();
    let bad = results
        .iter()
        .filter(|r| matches!(r, Err(BackendError::Remote(m)) if m.contains("bad magic")))
        .count();
    assert_eq!((ok, bad), (1, 2), "{results:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_over_the_client_limit_fails_the_connection() {
    let (a, mut b) = tokio::io::duplex(64 * 1024);
    let client = FrpcClient::with_config(
        a,
        ClientConfig {
            max_message: 64,
            ..ClientConfig::default()
        },
    );
    let server = tokio::spawn(async move {
        let mut head = [0u8; RequestHeader::LEN];
        b.read_exact(&mut head).await.unwrap();
        let id = u64::from_le_bytes(head[1..9].try_into().unwrap());
        let mut frame = BytesMut::new();
        Reply::encode(&mut frame, id, Status::Ok, &[0; 65]);
        b.write_all(&frame).await.unwrap();
        std::future::pending::<()>().await;
    });
    let mut buf = vec![0; 64];
    match within("call", client.read_at(&mut buf, 0)).await {
        Err(BackendError::Remote(msg)) => assert!(msg.contains("maximum message"), "{msg}"),
        other => panic!("expected Remote, got {other:?}"),
    }
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_call_does_not_break_the_connection() {
    let backend = Arc::new(Probe::memory(pattern(7, 0, 4096)).with_read_barrier(2));
    let (client, _server) = connect(
        backend.clone(),
        ClientConfig::default(),
        DEFAULT_MAX_MESSAGE,
    );
    let client = Arc::new(client);
    // This read waits in the backend for a partner; give up on it.
    let mut buf = vec![0; 8];
    let gave_up =
        tokio::time::timeout(Duration::from_millis(50), client.read_at(&mut buf, 0)).await;
    assert!(gave_up.is_err());
    // The partner releases the abandoned read; its late reply must be
    // dropped quietly, not taken for an unknown id.
    let mut buf = vec![0; 8];
    within("partner read", client.read_at(&mut buf, 8))
        .await
        .unwrap();
    assert_eq!(buf, pattern(7, 8, 8));
    assert_eq!(within("size", client.size()).await.unwrap(), 4096);
    assert!(!client.is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_a_connection_cleanly() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve_with(
        b,
        Arc::new(MemoryBackend::new(4096)),
        ServeConfig::default(),
        shutdown.clone(),
    ));
    let client = FrpcClient::new(a);
    assert_eq!(client.size().await.unwrap(), 4096);
    shutdown.cancel();
    let stats = within("server", server).await.unwrap().unwrap();
    assert_eq!(stats.requests, 1);
    // The server closed the stream: the client learns it and fails fast.
    let result = within("call after shutdown", client.sync()).await;
    assert!(
        matches!(result, Err(BackendError::Closed)),
        "got {result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_loopback_with_a_listener_and_shutdown() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let content = pattern(8, 0, 256 * 1024);
    let memory = Arc::new(MemoryBackend::from_bytes(content.clone()));
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve_listener(
        listener,
        memory.clone(),
        ServeConfig::default(),
        shutdown.clone(),
    ));

    let mut client_bytes = 0;
    for round in 0..2u64 {
        let client = Arc::new(
            FrpcClient::connect(addr, ClientConfig::default())
                .await
                .unwrap(),
        );
        assert_eq!(client.size().await.unwrap(), 256 * 1024);
        let calls: Vec<_> = (0..200u64)
            .map(|i| {
                let client = client.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0; 1024];
                    client.read_exact_at(&mut buf, i * 1024).await.unwrap();
                    (i, buf)
                })
            })
            .collect();
        for call in calls {
            let (i, buf) = within("tcp read", call).await.unwrap();
            let i = i as usize;
            assert!(
                buf == content[i * 1024..(i + 1) * 1024],
                "tcp read {i} differs"
            );
        }
        // Past the range the reads cover, so round 2 reads the original.
        client
            .write_at(b"over tcp", 250 * 1024 + round * 8)
            .await
            .unwrap();
        client.sync().await.unwrap();
        let stats = client.stats();
        client_bytes += stats.bytes_sent + stats.bytes_received;
        drop(Arc::into_inner(client).unwrap());
    }
    assert_eq!(&memory.snapshot()[250 * 1024..][..16], b"over tcpover tcp");

    // Whether or not the connections saw their clients leave yet, stopping
    // lets them finish and counts them.
    shutdown.cancel();
    let total = within("listener", server).await.unwrap().unwrap();
    assert_eq!(total.requests, 2 * 203);
    assert_eq!(total.bytes_received + total.bytes_sent, client_bytes);
}

backends::conformance_tests!(conformance_over_duplex, |size| async move {
    let (client, _server) = connect(
        Arc::new(MemoryBackend::new(size)),
        ClientConfig::default(),
        DEFAULT_MAX_MESSAGE,
    );
    Arc::new(client) as SharedBackend
});

// The same rules must hold when every access is split into many requests.
backends::conformance_tests!(conformance_split_into_small_messages, |size| async move {
    const MAX: u32 = 3000;
    let config = ClientConfig {
        max_message: MAX,
        ..ClientConfig::default()
    };
    let (client, _server) = connect(Arc::new(MemoryBackend::new(size)), config, MAX);
    Arc::new(client) as SharedBackend
});
