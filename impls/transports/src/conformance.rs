//! The conformance suite every transport runs.
//!
//! Each check is a `pub async fn` taking a [`TransportKind`]; it starts a
//! real server on TCP loopback (port 0), connects the transport's client,
//! and panics with a message naming the transport and what broke.
//! [`conformance_tests!`](crate::conformance_tests) turns them into one test
//! per check:
//!
//! ```
//! transports::conformance_tests!(frpc, transports::TransportKind::Frpc);
//! # fn main() {}
//! ```
//!
//! The test crate needs tokio with `macros` and `rt-multi-thread`. For
//! transports that carry writes, [`backend_over`] is also a factory for
//! `backends::conformance_tests!`, so the backend rules are checked through
//! every wire.
//!
//! What is checked: every method of both services (and, for the read-only
//! raw baseline, that the others fail with a clear error); a call to a
//! service the server does not expose fails alone; 1,000 concurrent calls
//! that must all be inside the server at once, each matched to its caller;
//! requests over the server's limit are refused without harm; garbage from
//! a client closes that connection, garbage from a server fails the
//! client's calls; a connection cut mid-call fails the call; a deadline
//! ends a call the server never answers. None of these relies on the
//! client's deadline to end a wait: they run without one, and every wait is
//! bounded by [`HANG`] so a hang fails the check instead of stalling.

use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use backends::conformance::{pattern, Guarded};
use backends::testing::Probe;
use backends::{Backend, BackendError, MemoryBackend, SharedBackend};

use crate::kind::{TransportConfig, TransportError, TransportKind};
use crate::server::ServeStats;
use crate::service::{BackendSeeder, Method, Seeder, Services};

/// How long any one wait may take before the check calls it a hang.
/// Generous: a deadlock detector, not a performance threshold.
pub const HANG: Duration = Duration::from_secs(20);

/// Expands to a module `$name` with one multi-threaded tokio test per
/// check, for the transport `$kind`; with `writes` after the kind it also
/// runs `backends::conformance_tests!` over the transport's client.
#[macro_export]
macro_rules! conformance_tests {
    ($name:ident, $kind:expr, writes) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $crate::conformance_tests!(@checks $kind);
            ::backends::conformance_tests!(backend_rules, |size| async move {
                $crate::conformance::backend_over($kind, size).await
            });
        }
    };
    ($name:ident, $kind:expr $(,)?) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $crate::conformance_tests!(@checks $kind);
        }
    };
    (@checks $kind:expr) => {
        $crate::conformance_tests!(@each $kind, [
            each_backend_method,
            each_seeder_method,
            unexposed_service_fails_only_that_call,
            a_thousand_concurrent_calls_get_their_own_replies,
            requests_over_the_limit_are_refused,
            garbage_from_a_client_closes_its_connection,
            garbage_from_the_server_fails_calls,
            a_cut_mid_call_fails_the_call,
            a_deadline_ends_a_call_that_is_never_answered,
        ]);
    };
    (@each $kind:expr, [$($check:ident),* $(,)?]) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                $crate::conformance::$check($kind).await;
            }
        )*
    };
}

/// Waits for `f`, panicking if it takes longer than [`HANG`].
pub async fn within<F: std::future::Future>(what: impl Display, f: F) -> F::Output {
    match tokio::time::timeout(HANG, f).await {
        Ok(out) => out,
        Err(_) => panic!("{what} did not finish within {HANG:?}"),
    }
}

fn ok<T, E: Display>(what: impl Display, r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| panic!("{what} failed: {e}"))
}

/// The settings the checks run with: two pooled connections, no client
/// deadline (so a wait that ends proves the transport ended it), a short
/// linger so stopping a server with stalled calls is quick.
pub fn test_config() -> TransportConfig {
    TransportConfig {
        connections: 2,
        deadline: None,
        linger: Duration::from_secs(1),
        ..TransportConfig::default()
    }
}

/// A server of one transport on TCP loopback, stopped when dropped.
#[derive(Debug)]
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<DropGuard>,
    task: JoinHandle<Result<ServeStats, TransportError>>,
}

impl TestServer {
    /// Serves `services` with `config` on a fresh loopback port.
    pub async fn start(kind: TransportKind, services: Services, config: TransportConfig) -> Self {
        let listener = ok(
            "binding 127.0.0.1:0",
            TcpListener::bind("127.0.0.1:0").await,
        );
        let addr = ok("reading the bound address", listener.local_addr());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(kind.serve(listener, services, config, shutdown.clone()));
        Self {
            addr,
            stop: Some(shutdown.drop_guard()),
            task,
        }
    }

    /// Stops the server and returns what it served.
    pub async fn stop(mut self) -> ServeStats {
        drop(self.stop.take());
        let joined = within("stopping the server", &mut self.task).await;
        ok("the server", ok("the server task", joined))
    }
}

/// A fresh backend of `size` zero bytes behind `kind`'s client: a factory
/// for `backends::conformance_tests!`.
pub async fn backend_over(kind: TransportKind, size: u64) -> SharedBackend {
    let memory = Arc::new(MemoryBackend::new(size));
    let server = TestServer::start(kind, Services::backend(memory), test_config()).await;
    let client = ok(
        format!("{kind}: connecting"),
        kind.connect(server.addr, &test_config()).await,
    );
    Guarded::shared(client.backend(), (client, server))
}

/// Every method of the backend service, through `kind`.
pub async fn each_backend_method(kind: TransportKind) {
    const SIZE: usize = 3 << 20;
    let content = pattern(1, 0, SIZE);
    let memory = Arc::new(MemoryBackend::from_bytes(content.clone()));
    // Reads larger than a message are split into concurrent pieces.
    let config = TransportConfig {
        max_message: 1 << 20,
        ..test_config()
    };
    let server = TestServer::start(kind, Services::backend(memory.clone()), config.clone()).await;
    let client = ok(
        format!("{kind}: connecting"),
        kind.connect(server.addr, &config).await,
    );
    let backend = client.backend();

    let size = ok(
        format!("{kind}: Size"),
        within("Size", backend.size()).await,
    );
    assert_eq!(size, SIZE as u64, "{kind}: Size");
    let mut buf = vec![0; 300];
    let n = ok(
        format!("{kind}: ReadAt"),
        within("ReadAt", backend.read_at(&mut buf, 1234)).await,
    );
    assert_eq!((n, &buf[..]), (300, &content[1234..1534]), "{kind}: ReadAt");
    let mut big = vec![0; (5 << 20) / 2];
    let n = ok(
        format!("{kind}: split ReadAt"),
        within("split ReadAt", backend.read_at(&mut big, 100)).await,
    );
    assert_eq!(n, big.len(), "{kind}: split ReadAt length");
    assert!(
        big == content[100..100 + big.len()],
        "{kind}: split ReadAt bytes"
    );
    let mut tail = vec![0; 100];
    let n = ok(
        format!("{kind}: ReadAt across the end"),
        backend.read_at(&mut tail, SIZE as u64 - 50).await,
    );
    assert_eq!(
        (n, &tail[..50]),
        (50, &content[SIZE - 50..]),
        "{kind}: short read"
    );
    assert_eq!(
        ok("empty ReadAt", backend.read_at(&mut [], SIZE as u64).await),
        0
    );
    match backend.read_at(&mut tail, SIZE as u64).await {
        Err(BackendError::OutOfRange { offset, len, size }) => {
            assert_eq!(
                (offset, len, size),
                (SIZE as u64, 100, SIZE as u64),
                "{kind}"
            )
        }
        other => panic!("{kind}: read at the end: expected OutOfRange, got {other:?}"),
    }

    if kind.supports(Method::WriteAt) {
        ok(
            format!("{kind}: WriteAt"),
            within("WriteAt", backend.write_at(b"hello", 90_000)).await,
        );
        assert_eq!(&memory.snapshot()[90_000..90_005], b"hello", "{kind}");
        ok(
            format!("{kind}: Sync"),
            within("Sync", backend.sync()).await,
        );
        let before = memory.snapshot();
        match backend.write_at(&[1; 8], SIZE as u64 - 4).await {
            Err(BackendError::OutOfRange { .. }) => {}
            other => panic!("{kind}: write across the end: expected OutOfRange, got {other:?}"),
        }
        assert!(
            memory.snapshot() == before,
            "{kind}: a rejected write wrote"
        );
    } else {
        for (what, result) in [
            ("WriteAt", backend.write_at(b"hello", 0).await),
            ("Sync", backend.sync().await),
        ] {
            match result {
                Err(BackendError::Remote(m)) if m.contains("not supported") => {}
                other => panic!("{kind}: {what}: expected 'not supported', got {other:?}"),
            }
        }
        assert!(
            memory.snapshot() == content,
            "{kind}: an unsupported write wrote"
        );
    }
    drop(backend);
    let sent = client.stats();
    drop(client);
    let served = server.stop().await;
    assert!(served.requests >= 5, "{kind}: server counted {served:?}");
    assert!(
        served.bytes_sent > (5 << 20) / 2 && sent.bytes_received > (5 << 20) / 2,
        "{kind}: byte counts {served:?} / {sent:?} miss the data"
    );
    assert!(sent.requests >= 5, "{kind}: client counted {sent:?}");
}

/// Every method of the seeder service, through `kind`.
pub async fn each_seeder_method(kind: TransportKind) {
    let content = pattern(2, 0, 65_536);
    let memory = Arc::new(MemoryBackend::from_bytes(content.clone()));
    let seeder = Arc::new(BackendSeeder::new(memory, 4096));
    let server = TestServer::start(kind, Services::seeder(seeder.clone()), test_config()).await;
    let client = ok(
        format!("{kind}: connecting"),
        kind.connect(server.addr, &test_config()).await,
    );
    let remote = client.seeder();
    let size = ok(
        format!("{kind}: seeder.Size"),
        within("seeder.Size", remote.size()).await,
    );
    assert_eq!(size, 65_536, "{kind}: seeder.Size");
    let mut buf = vec![0; 100];
    let n = ok(
        format!("{kind}: seeder.ReadAt"),
        within("seeder.ReadAt", remote.read_at(&mut buf, 5000)).await,
    );
    assert_eq!((n, &buf[..]), (100, &content[5000..5100]), "{kind}");

    if kind.supports(Method::Track) {
        ok(format!("{kind}: seeder.Track"), remote.track().await);
        ok("local write", seeder.write_at(b"xy", 4095).await);
        ok("local write", seeder.write_at(b"z", 40_000).await);
        let dirty = ok(format!("{kind}: seeder.Sync"), remote.sync().await);
        assert_eq!(dirty, vec![0, 4096, 36_864], "{kind}: dirty offsets");
        let again = ok(format!("{kind}: seeder.Sync"), remote.sync().await);
        assert!(again.is_empty(), "{kind}: Sync did not clear: {again:?}");
        ok("local write", seeder.write_at(b"q", 8192).await);
        let round = ok(format!("{kind}: seeder.Dirty"), remote.dirty().await);
        assert_eq!(round, vec![8192], "{kind}: Dirty's round");
        ok(format!("{kind}: seeder.Close"), remote.close().await);
        assert!(seeder.is_closed(), "{kind}: Close did not reach the seeder");
        match remote.read_at(&mut buf, 0).await {
            Err(BackendError::Closed) => {}
            other => panic!("{kind}: read after Close: expected Closed, got {other:?}"),
        }
    } else {
        for (what, result) in [
            ("Track", remote.track().await),
            ("Close", remote.close().await),
            ("Sync", remote.sync().await.map(drop)),
            ("Dirty", remote.dirty().await.map(drop)),
        ] {
            match result {
                Err(BackendError::Remote(m)) if m.contains("not supported") => {}
                other => panic!("{kind}: seeder.{what}: expected 'not supported', got {other:?}"),
            }
        }
    }
}

/// A call to a service the server does not expose fails, and only it.
pub async fn unexposed_service_fails_only_that_call(kind: TransportKind) {
    let memory = Arc::new(MemoryBackend::from_bytes(pattern(3, 0, 8192)));
    let server = TestServer::start(kind, Services::backend(memory), test_config()).await;
    let client = ok(
        format!("{kind}: connecting"),
        kind.connect(server.addr, &test_config()).await,
    );
    match within("seeder.Size", client.seeder().size()).await {
        Err(BackendError::Remote(m)) if m.contains("seeder service") => {}
        other => panic!("{kind}: seeder call to a backend server: got {other:?}"),
    }
    let backend = client.backend();
    for _ in 0..4 {
        // Every pooled connection still works.
        let mut buf = [0; 16];
        ok(
            format!("{kind}: ReadAt after a refused call"),
            within("ReadAt", backend.read_at(&mut buf, 16)).await,
        );
        assert_eq!(&buf[..], &pattern(3, 16, 16)[..], "{kind}");
    }
}

/// 1,000 reads at once, issued in reverse order, each must get its own
/// bytes; all must be inside the server at the same time.
pub async fn a_thousand_concurrent_calls_get_their_own_replies(kind: TransportKind) {
    const CALLS: usize = 1000;
    const LEN: usize = 64;
    let content = pattern(4, 0, CALLS * LEN);
    // Every read waits until all CALLS are inside the backend at once: a
    // transport that serialised calls anywhere would deadlock here.
    let backend = Arc::new(Probe::memory(content.clone()).with_read_barrier(CALLS));
    let server = TestServer::start(kind, Services::backend(backend.clone()), test_config()).await;
    let client = ok(
        format!("{kind}: connecting"),
        kind.connect(server.addr, &test_config()).await,
    );
    let remote = client.backend();
    let calls: Vec<_> = (0..CALLS)
        .rev()
        .map(|i| {
            let remote = remote.clone();
            tokio::spawn(async move {
                let mut buf = vec![0; LEN];
                let n = remote.read_at(&mut buf, (i * LEN) as u64).await;
                (i, n, buf)
            })
        })
        .collect();
    for call in calls {
        let (i, n, buf) = ok(format!("{kind}: call task"), within("a read", call).await);
        let n = ok(format!("{kind}: read {i}"), n);
        assert_eq!(n, LEN, "{kind}: read {i} length");
        assert!(
            buf == content[i * LEN..(i + 1) * LEN],
            "{kind}: read {i} got another call's bytes"
        );
    }
    assert_eq!(backend.max_in_flight(), CALLS as u64, "{kind}: peak");
    drop(remote);
    drop(client);
    let served = server.stop().await;
    assert!(served.requests >= CALLS as u64, "{kind}: {served:?}");
}

/// Requests over the server's maximum message fail, write nothing, and do
/// not stop the server serving a client that keeps to the limit.
pub async fn requests_over_the_limit_are_refused(kind: TransportKind) {
    const LIMIT: u32 = 64 * 1024;
    let memory = Arc::new(MemoryBackend::from_bytes(pattern(5, 0, 1 << 20)));
    let server_config = TransportConfig {
        max_message: LIMIT,
        ..test_config()
    };
    let server = TestServer::start(
        kind,
        Services::backend(memory.clone()),
        server_config.clone(),
    )
    .await;
    let greedy = TransportConfig {
        max_message: 1 << 20,
        connections: 1,
        ..test_config()
    };
    let client = ok(
        format!("{kind}: connecting"),
        kind.connect(server.addr, &greedy).await,
    );
    let backend = client.backend();
    let mut buf = vec![0; 200 * 1024];
    let read = within("an oversized read", backend.read_at(&mut buf, 0)).await;
    assert!(read.is_err(), "{kind}: a read over the limit succeeded");
    if kind.supports(Method::WriteAt) {
        // A fresh connection: the oversized read may have closed the last.
        let client = ok(
            format!("{kind}: connecting"),
            kind.connect(server.addr, &greedy).await,
        );
        let before = memory.snapshot();
        let write = within(
            "an oversized write",
            client.backend().write_at(&vec![9; 200 * 1024], 0),
        )
        .await;
        assert!(write.is_err(), "{kind}: a write over the limit succeeded");
        assert!(
            memory.snapshot() == before,
            "{kind}: an oversized write wrote"
        );
    }
    let polite = ok(
        format!("{kind}: connecting within the limit"),
        kind.connect(server.addr, &server_config).await,
    );
    let n = ok(
        format!("{kind}: split read after refusals"),
        within("a split read", polite.backend().read_at(&mut buf, 0)).await,
    );
    assert_eq!(n, buf.len(), "{kind}");
    assert!(
        buf == pattern(5, 0, buf.len()),
        "{kind}: bytes after refusals"
    );
}

/// Bytes that are no frame of any transport: a length or magic that is out
/// of range for every wire, and a line end for the line-based one.
pub fn garbage() -> Vec<u8> {
    let mut g = vec![0xFF; 64];
    g.push(b'\n');
    g
}

/// A client sending garbage has its connection closed (the server reads no
/// further and hangs up); other clients are served on.
pub async fn garbage_from_a_client_closes_its_connection(kind: TransportKind) {
    let memory = Arc::new(MemoryBackend::from_bytes(pattern(6, 0, 4096)));
    let server = TestServer::start(kind, Services::backend(memory), test_config()).await;
    let mut stream = ok("connecting", TcpStream::connect(server.addr).await);
    // The server may hang up before taking it all; that is the point.
    let _ = stream.write_all(&garbage()).await;
    let mut said = Vec::new();
    // Keep our side open: the server must close by itself. A reset is a
    // close too.
    let _ = within(
        format!("{kind}: the server closing a garbage connection"),
        stream.read_to_end(&mut said),
    )
    .await;
    let client = ok(
        format!("{kind}: connecting after garbage"),
        kind.connect(server.addr, &test_config()).await,
    );
    let size = ok(
        format!("{kind}: Size after garbage"),
        within("Size", client.backend().size()).await,
    );
    assert_eq!(size, 4096, "{kind}");
}

/// Accepts connections and answers each with garbage, keeping it open.
async fn garbage_server() -> (SocketAddr, JoinHandle<()>) {
    let listener = ok("binding", TcpListener::bind("127.0.0.1:0").await);
    let addr = ok("local address", listener.local_addr());
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = stream.write_all(&garbage()).await;
                let mut sink = [0; 4096];
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    });
    (addr, task)
}

/// A server that answers with garbage makes the client's calls fail rather
/// than wait (connecting may fail already, which is as good).
pub async fn garbage_from_the_server_fails_calls(kind: TransportKind) {
    let (addr, task) = garbage_server().await;
    let config = TransportConfig {
        connections: 1,
        ..test_config()
    };
    if let Ok(client) = within("connecting", kind.connect(addr, &config)).await {
        let backend = client.backend();
        let mut buf = [0; 8];
        let read = within(
            format!("{kind}: a read from a garbage server"),
            backend.read_at(&mut buf, 0),
        )
        .await;
        assert!(
            read.is_err(),
            "{kind}: a read from a garbage server succeeded"
        );
    }
    task.abort();
}

/// A backend whose reads never finish; it says when one has started.
#[derive(Debug, Default)]
struct Stall {
    entered: Notify,
}

#[async_trait]
impl Backend for Stall {
    async fn read_at(&self, _buf: &mut [u8], _offset: u64) -> backends::Result<usize> {
        self.entered.notify_one();
        std::future::pending().await
    }
    async fn write_at(&self, _data: &[u8], _offset: u64) -> backends::Result<()> {
        Ok(())
    }
    async fn size(&self) -> backends::Result<u64> {
        Ok(1 << 20)
    }
    async fn sync(&self) -> backends::Result<()> {
        Ok(())
    }
}

/// A TCP relay between a client and `upstream` that can be cut.
async fn cuttable_relay(upstream: SocketAddr, cut: CancellationToken) -> SocketAddr {
    let listener = ok("binding", TcpListener::bind("127.0.0.1:0").await);
    let addr = ok("local address", listener.local_addr());
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = cut.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let Ok((mut near, _)) = accepted else { return };
            let cut = cut.clone();
            tokio::spawn(async move {
                let Ok(mut far) = TcpStream::connect(upstream).await else {
                    return;
                };
                tokio::select! {
                    () = cut.cancelled() => {}
                    _ = tokio::io::copy_bidirectional(&mut near, &mut far) => {}
                }
                // Dropping both ends is the cut.
            });
        }
    });
    addr
}

/// A connection that goes away while a call waits on it fails the call.
pub async fn a_cut_mid_call_fails_the_call(kind: TransportKind) {
    let stall = Arc::new(Stall::default());
    let server = TestServer::start(kind, Services::backend(stall.clone()), test_config()).await;
    let cut = CancellationToken::new();
    let relay = cuttable_relay(server.addr, cut.clone()).await;
    let config = TransportConfig {
        connections: 1,
        ..test_config()
    };
    let client = ok(
        format!("{kind}: connecting"),
        kind.connect(relay, &config).await,
    );
    let backend = client.backend();
    ok(
        format!("{kind}: Size before the cut"),
        within("Size", backend.size()).await,
    );
    let read = tokio::spawn({
        let backend = backend.clone();
        async move {
            let mut buf = [0; 64];
            backend.read_at(&mut buf, 0).await
        }
    });
    within(
        format!("{kind}: the read reaching the server"),
        stall.entered.notified(),
    )
    .await;
    cut.cancel();
    let result = ok(
        "the read task",
        within(format!("{kind}: a cut call"), read).await,
    );
    assert!(result.is_err(), "{kind}: a cut call succeeded: {result:?}");
}

/// With a deadline, a call the server never answers fails, and the client
/// goes on working.
pub async fn a_deadline_ends_a_call_that_is_never_answered(kind: TransportKind) {
    let stall = Arc::new(Stall::default());
    let server = TestServer::start(kind, Services::backend(stall), test_config()).await;
    let config = TransportConfig {
        deadline: Some(Duration::from_millis(300)),
        ..test_config()
    };
    let client = ok(
        format!("{kind}: connecting"),
        kind.connect(server.addr, &config).await,
    );
    let backend = client.backend();
    let mut buf = [0; 64];
    match within(
        format!("{kind}: a stalled read"),
        backend.read_at(&mut buf, 0),
    )
    .await
    {
        Err(BackendError::Remote(m)) => assert!(
            m.contains("deadline") || m.contains("imeout"),
            "{kind}: expected a deadline error, got {m:?}"
        ),
        other => panic!("{kind}: a stalled read: expected a deadline error, got {other:?}"),
    }
    let size = ok(
        format!("{kind}: Size after a deadline"),
        within("Size", backend.size()).await,
    );
    assert_eq!(size, 1 << 20, "{kind}");
}
