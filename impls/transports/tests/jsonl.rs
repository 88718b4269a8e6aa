//! jsonl beyond the shared suite: calls in both directions over one
//! connection, and its answers to bad lines.

// Test helpers outside #[test] fns are test code too.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use backends::conformance::pattern;
use backends::{Backend, BackendError, MemoryBackend, SharedBackend};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use transports::conformance::{test_config, within};
use transports::jsonl::{self, max_line, PeerEnd};
use transports::{JsonlPeer, Services, TransportConfig};

/// Reads by asking the other side of the connection for the same bytes:
/// a call that makes a call back over the connection it arrived on.
#[derive(Debug, Default)]
struct AskBack {
    other: OnceLock<SharedBackend>,
}

#[async_trait]
impl Backend for AskBack {
    async fn read_at(&self, buf: &mut [u8], offset: u64) -> backends::Result<usize> {
        let other = self.other.get().ok_or(BackendError::Closed)?;
        other.read_at(buf, offset).await
    }
    async fn write_at(&self, _: &[u8], _: u64) -> backends::Result<()> {
        Err(BackendError::Remote("read only".into()))
    }
    async fn size(&self) -> backends::Result<u64> {
        self.other.get().ok_or(BackendError::Closed)?.size().await
    }
    async fn sync(&self) -> backends::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_peers_call_each_other_over_one_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let source = Arc::new(MemoryBackend::from_bytes(pattern(1, 0, 1 << 20)));
    let (peers, mut peer_rx) = mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(jsonl::serve_listener_with(
        listener,
        Services::backend(source.clone()),
        test_config(),
        shutdown.clone(),
        move |peer| {
            let _ = peers.send(peer);
        },
    ));

    // The destination dials and exposes a backend of its own, which the
    // source fills by pushing: it could not have dialed the destination.
    let destination = Arc::new(MemoryBackend::new(1 << 20));
    let ask_back = Arc::new(AskBack::default());
    let local = Services {
        backend: Some(destination.clone()),
        seeder: None,
    };
    let dialer = Arc::new(
        JsonlPeer::connect(addr, local, &test_config())
            .await
            .unwrap(),
    );
    let accepted = within("the server's peer", peer_rx.recv()).await.unwrap();

    let from_source = dialer.remote_backend();
    let to_destination = accepted.remote_backend();
    let pulls = (0..100u64).map(|i| {
        let from_source = from_source.clone();
        tokio::spawn(async move {
            let mut buf = vec![0; 4096];
            from_source.read_exact_at(&mut buf, i * 4096).await.unwrap();
            (i, buf)
        })
    });
    let pushes = (0..100u64).map(|i| {
        let to_destination = to_destination.clone();
        tokio::spawn(async move {
            let at = 512 * 1024 + i * 4096;
            to_destination
                .write_at(&pattern(2, at, 4096), at)
                .await
                .unwrap();
        })
    });
    let pulls: Vec<_> = pulls.collect();
    let pushes: Vec<_> = pushes.collect();
    for pull in pulls {
        let (i, buf) = within("a pull", pull).await.unwrap();
        assert!(
            buf == pattern(1, i * 4096, 4096),
            "pull {i} got wrong bytes"
        );
    }
    for push in pushes {
        within("a push", push).await.unwrap();
    }
    let landed = destination.snapshot();
    assert!(landed[512 * 1024..512 * 1024 + 100 * 4096] == pattern(2, 512 * 1024, 100 * 4096));
    assert!(
        accepted.stats().requests >= 100 && dialer.stats().requests >= 100,
        "both sides served calls"
    );

    // A call inside a call: the dialer's second peer serves AskBack, whose
    // reads call the server over the same connection mid-call.
    let local = Services {
        backend: Some(ask_back.clone()),
        seeder: None,
    };
    let dialer2 = Arc::new(
        JsonlPeer::connect(addr, local, &test_config())
            .await
            .unwrap(),
    );
    ask_back.other.set(dialer2.remote_backend()).unwrap();
    let accepted2 = within("the second peer", peer_rx.recv()).await.unwrap();
    let mut buf = vec![0; 1000];
    within(
        "a call that calls back",
        accepted2.remote_backend().read_exact_at(&mut buf, 77),
    )
    .await
    .unwrap();
    assert_eq!(buf, pattern(1, 77, 1000));

    drop((
        from_source,
        to_destination,
        dialer,
        dialer2,
        accepted,
        accepted2,
    ));
    shutdown.cancel();
    let stats = within("the server", server).await.unwrap().unwrap();
    assert!(stats.requests >= 101, "{stats:?}");
}

/// Connects, writes `bytes`, and returns the lines the server said before
/// closing (which it must do by itself).
async fn say_to_server(services: Services, config: TransportConfig, bytes: Vec<u8>) -> Vec<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let _server = tokio::spawn(jsonl::serve_listener(
        listener,
        services,
        config,
        shutdown.clone(),
    ));
    let stream = TcpStream::connect(addr).await.unwrap();
    let (rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&bytes).await;
        wr // keep our side open
    });
    let mut lines = Vec::new();
    let mut rd = BufReader::new(rd).lines();
    while let Ok(Some(line)) = within("the server's answer", rd.next_line()).await {
        lines.push(line);
    }
    drop(writer);
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_method_gets_an_error_reply_then_an_abort() {
    let memory = Arc::new(MemoryBackend::new(4096));
    let lines = say_to_server(
        Services::backend(memory),
        test_config(),
        b"{\"id\":1,\"call\":\"Size\"}\n{\"id\":5,\"call\":\"Nope\"}\n".to_vec(),
    )
    .await;
    let values: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Calls run concurrently: the Size reply may come before or after the
    // error reply, or be cut off by the close; if present, it is right.
    let (size, rest): (Vec<_>, Vec<_>) = values.iter().partition(|v| v["id"] == 1);
    for v in size {
        assert_eq!(v["reply"]["Ok"]["Size"], 4096, "{lines:?}");
    }
    assert_eq!(rest.len(), 2, "{lines:?}");
    assert_eq!(rest[0]["id"], 5);
    let message = rest[0]["reply"]["Err"]["Remote"].as_str().unwrap();
    assert!(message.contains("unknown variant `Nope`"), "{message}");
    assert!(
        rest[1]["abort"].as_str().unwrap().contains("call 5"),
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_over_the_limit_is_refused_before_it_is_buffered() {
    let config = TransportConfig {
        max_message: 1024,
        ..test_config()
    };
    let limit = max_line(1024);
    // Far more than the limit, and no line end: the server must not wait
    // for one.
    let lines = say_to_server(
        Services::backend(Arc::new(MemoryBackend::new(4096))),
        config,
        vec![b'a'; 50 * limit],
    )
    .await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    let message = v["abort"].as_str().unwrap();
    assert!(
        message.contains(&format!("over the limit of {limit} bytes")),
        "{message}"
    );
}

/// A fake peer: answers the first line it reads with `answer`, then stays.
async fn fake_peer(answer: &'static [u8]) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (rd, mut wr) = stream.into_split();
        let mut rd = BufReader::new(rd);
        let mut first = String::new();
        rd.read_line(&mut first).await.unwrap();
        wr.write_all(answer).await.unwrap();
        let mut sink = Vec::new();
        let _ = rd.read_to_end(&mut sink).await;
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_from_the_peer_fails_the_waiting_call() {
    let addr = fake_peer(b"{\"abort\":\"going away\"}\n").await;
    let peer = Arc::new(
        JsonlPeer::connect(addr, Services::none(), &test_config())
            .await
            .unwrap(),
    );
    match within("a call", peer.remote_backend().size()).await {
        Err(BackendError::Remote(m)) => assert!(m.contains("going away"), "{m}"),
        other => panic!("expected the abort's reason, got {other:?}"),
    }
    assert!(matches!(
        within("the end", peer.closed()).await,
        PeerEnd::Failed(jsonl::JsonlError::Aborted(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_to_an_unknown_id_fails_the_connection() {
    let addr = fake_peer(b"{\"id\":999,\"reply\":{\"Ok\":\"Done\"}}\n").await;
    let peer = Arc::new(
        JsonlPeer::connect(addr, Services::none(), &test_config())
            .await
            .unwrap(),
    );
    match within("a call", peer.remote_backend().sync()).await {
        Err(BackendError::Remote(m)) => assert!(m.contains("unknown call id 999"), "{m}"),
        other => panic!("expected an unknown-id failure, got {other:?}"),
    }
    // Later calls fail at once.
    assert!(within("a later call", peer.remote_backend().sync())
        .await
        .is_err());
}
