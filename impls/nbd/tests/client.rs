//! Our client against our server and against scripted fake servers:
//! splitting, read-only exports, list/info, the EXPORT_NAME fallback,
//! disconnects, cancellation and broken servers.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::io::ErrorKind;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backends::testing::Probe;
use backends::{Backend, BackendError, MemoryBackend, SharedBackend};
use nbd::wire::{
    ClientFlags, Command, Errno, ExportNameReply, Greeting, HandshakeFlags, InfoRequest,
    OptionCode, OptionHeader, OptionReplyHeader, ReplyType, RequestHeader, SimpleReplyHeader,
    TransmissionFlags, STRUCTURED_REPLY_MAGIC,
};
use nbd::{BlockSizes, Export, NbdClient, NbdError, Server, ServerLimits};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

fn three_exports() -> Vec<Export> {
    let a: SharedBackend = Arc::new(MemoryBackend::new(1 << 20));
    let b: SharedBackend = Arc::new(MemoryBackend::new(3 << 20));
    let ro: SharedBackend = common::patterned(5, 8192);
    vec![
        Export::new("a", a),
        Export::new("b", b)
            .description("second disk")
            .block_size(BlockSizes::new(4096, 4096, 1 << 20).unwrap()),
        Export::new("ro", ro).read_only(true).multi_conn(false),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_requests_are_split_at_the_maximum_block_size() {
    let disk = Arc::new(MemoryBackend::new(2 << 20));
    let export = Export::new("s", disk.clone() as SharedBackend)
        .block_size(BlockSizes::new(1, 4096, 64 * 1024).unwrap());
    let (client, serving) = common::connected(vec![export], ServerLimits::default(), "s").await;
    assert_eq!(client.export().maximum_request(), 64 * 1024);

    let data = common::pattern(9, 1 << 20);
    client.write_at(&data, 12345).await.unwrap();
    let mut back = vec![0u8; 1 << 20];
    assert_eq!(client.read_at(&mut back, 12345).await.unwrap(), 1 << 20);
    assert_eq!(back, data);
    assert_eq!(&disk.snapshot()[12345..12345 + (1 << 20)], &data[..]);

    client.disconnect().await.unwrap();
    let stats = serving.await.unwrap().unwrap();
    // 1 MiB in 64 KiB pieces, each way.
    assert_eq!((stats.writes, stats.reads), (16, 16));
    assert_eq!((stats.bytes_written, stats.bytes_read), (1 << 20, 1 << 20));
    assert_eq!(stats.error_replies, 0);
}

#[tokio::test]
async fn writes_to_a_read_only_export_fail_with_a_clear_error() {
    let (client, serving) = common::connected(three_exports(), ServerLimits::default(), "ro").await;
    assert!(client.export().read_only());
    let err = client.write_at(b"nope", 0).await.unwrap_err();
    match &err {
        BackendError::Io(io) => assert_eq!(io.kind(), ErrorKind::PermissionDenied),
        other => panic!("expected a permission error, got {other:?}"),
    }
    assert!(err.to_string().contains("\"ro\""), "{err}");
    assert!(matches!(
        client.trim(0, 4096).await,
        Err(NbdError::ReadOnly { .. })
    ));
    let mut buf = vec![0u8; 8192];
    client.read_at(&mut buf, 0).await.unwrap();
    assert_eq!(buf, common::pattern(5, 8192));
    client.disconnect().await.unwrap();
    let stats = serving.await.unwrap().unwrap();
    assert_eq!(stats.writes, 0);
    assert_eq!(
        stats.error_replies, 0,
        "the write must not reach the server"
    );
}

#[tokio::test]
async fn list_and_info_describe_the_exports() {
    let server = Server::new(three_exports(), ServerLimits::default()).unwrap();

    let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
    let s = server.clone();
    let serving = tokio::spawn(async move { s.serve(theirs).await });
    let list = NbdClient::list(ours).await.unwrap();
    let names: Vec<_> = list.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "ro"]);
    assert_eq!(list[1].description.as_deref(), Some("second disk"));
    assert_eq!(list[0].description, None);
    // list() ends with NBD_OPT_ABORT: a clean end for the server.
    assert_eq!(
        serving.await.unwrap().unwrap(),
        nbd::ConnectionStats::default()
    );

    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let s = server.clone();
    tokio::spawn(async move { s.serve(theirs).await });
    let info = NbdClient::info(ours, "b").await.unwrap();
    assert_eq!(info.name, "b");
    assert_eq!(info.size, 3 << 20);
    assert_eq!(info.description.as_deref(), Some("second disk"));
    assert_eq!(
        info.block_size,
        Some(BlockSizes {
            minimum: 4096,
            preferred: 4096,
            maximum: 1 << 20
        })
    );
    assert!(info
        .transmission_flags
        .contains(TransmissionFlags::SEND_FLUSH | TransmissionFlags::CAN_MULTI_CONN));
    assert!(!info.read_only());

    let (ours, theirs) = tokio::io::duplex(1 << 16);
    tokio::spawn(async move { server.serve(theirs).await });
    match NbdClient::info(ours, "missing").await {
        Err(NbdError::OptionRejected { reply, message, .. }) => {
            assert_eq!(reply, "NBD_REP_ERR_UNKNOWN");
            assert!(message.contains("missing"), "{message}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn connecting_to_an_unknown_export_names_it() {
    let server = Server::new(three_exports(), ServerLimits::default()).unwrap();
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    tokio::spawn(async move { server.serve(theirs).await });
    let err = NbdClient::connect(ours, "zzz").await.unwrap_err();
    assert!(err.to_string().contains("zzz"), "{err}");
    assert!(err.to_string().contains("NBD_REP_ERR_UNKNOWN"), "{err}");
}

/// Plays a server that knows only `NBD_OPT_EXPORT_NAME`, then answers one
/// read with `content`. `fixed` chooses fixed newstyle (which lets the
/// client try `NBD_OPT_GO` first) or plain newstyle.
async fn old_server(mut s: DuplexStream, fixed: bool, content: Vec<u8>) -> Vec<String> {
    let mut log = Vec::new();
    let flags = if fixed {
        HandshakeFlags::FIXED_NEWSTYLE | HandshakeFlags::NO_ZEROES
    } else {
        HandshakeFlags(0)
    };
    s.write_all(&Greeting { flags }.encode()).await.unwrap();
    let mut cf = [0u8; 4];
    s.read_exact(&mut cf).await.unwrap();
    let client_flags = ClientFlags(u32::from_be_bytes(cf));
    log.push(format!("flags {client_flags:?}"));
    loop {
        let mut h = [0u8; 16];
        s.read_exact(&mut h).await.unwrap();
        let h = OptionHeader::parse(&h).unwrap();
        let mut data = vec![0u8; h.length as usize];
        s.read_exact(&mut data).await.unwrap();
        if h.option == u32::from(OptionCode::ExportName) {
            log.push(format!("EXPORT_NAME {}", String::from_utf8(data).unwrap()));
            let reply = ExportNameReply {
                size: content.len() as u64,
                flags: TransmissionFlags::HAS_FLAGS,
            };
            let no_zeroes = client_flags.contains(ClientFlags::NO_ZEROES);
            s.write_all(&reply.encode(no_zeroes)).await.unwrap();
            break;
        }
        log.push(format!("{} -> UNSUP", nbd::wire::option_name(h.option)));
        if h.option == u32::from(OptionCode::Go) {
            InfoRequest::parse(&data).unwrap();
        }
        let r = OptionReplyHeader {
            option: h.option,
            reply: ReplyType::ErrUnsup.into(),
            length: 0,
        };
        s.write_all(&r.encode()).await.unwrap();
    }
    let mut h = [0u8; 28];
    s.read_exact(&mut h).await.unwrap();
    let req = RequestHeader::parse(&h).unwrap();
    assert_eq!(req.command, u16::from(Command::Read));
    let reply = SimpleReplyHeader {
        error: Errno(0),
        handle: req.handle,
    };
    s.write_all(&reply.encode()).await.unwrap();
    let (o, l) = (req.offset as usize, req.length as usize);
    s.write_all(&content[o..o + l]).await.unwrap();
    log
}

#[tokio::test]
async fn connect_falls_back_to_export_name() {
    let content = common::pattern(4, 4096);
    for fixed in [true, false] {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(old_server(theirs, fixed, content.clone()));
        let client = NbdClient::connect(ours, "legacy").await.unwrap();
        assert_eq!(client.export().size, 4096);
        assert_eq!(client.export().block_size, None);
        assert_eq!(client.export().name, "legacy");
        let mut buf = vec![0u8; 100];
        client.read_at(&mut buf, 1000).await.unwrap();
        assert_eq!(buf, &content[1000..1100]);
        let log = server.await.unwrap();
        if fixed {
            assert_eq!(
                log,
                [
                    "flags ClientFlags(FIXED_NEWSTYLE | NO_ZEROES)",
                    "NBD_OPT_GO -> UNSUP",
                    "EXPORT_NAME legacy"
                ]
            );
        } else {
            // Without fixed newstyle there is nothing to try first, and
            // the reply carries the 124 zero bytes.
            assert_eq!(log, ["flags ClientFlags()", "EXPORT_NAME legacy"]);
        }
    }
}

/// Plays a server that completes `NBD_OPT_GO`, then answers the first
/// request with `reply`.
async fn broken_server(mut s: DuplexStream, reply: Vec<u8>) {
    s.write_all(
        &Greeting {
            flags: HandshakeFlags::FIXED_NEWSTYLE,
        }
        .encode(),
    )
    .await
    .unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.unwrap();
    let mut h = [0u8; 16];
    s.read_exact(&mut h).await.unwrap();
    let h = OptionHeader::parse(&h).unwrap();
    let mut data = vec![0u8; h.length as usize];
    s.read_exact(&mut data).await.unwrap();
    let info = nbd::wire::Info::Export {
        size: 1 << 20,
        flags: TransmissionFlags::HAS_FLAGS,
    }
    .encode();
    s.write_all(&nbd::wire::encode_option_reply(
        h.option,
        ReplyType::Info,
        &info,
    ))
    .await
    .unwrap();
    s.write_all(&nbd::wire::encode_option_reply(
        h.option,
        ReplyType::Ack,
        &[],
    ))
    .await
    .unwrap();
    let mut req = [0u8; 28];
    s.read_exact(&mut req).await.unwrap();
    s.write_all(&reply).await.unwrap();
    // Keep the connection open: the client must notice by itself.
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest).await;
}

#[tokio::test]
async fn replies_that_break_the_protocol_end_the_connection() {
    let unknown_handle = SimpleReplyHeader {
        error: Errno(0),
        handle: 0xdead,
    }
    .encode()
    .to_vec();
    let mut structured = unknown_handle.clone();
    structured[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    for (reply, expected) in [
        (unknown_handle, "unknown handle 57005"),
        (structured, "bad magic"),
    ] {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        tokio::spawn(broken_server(theirs, reply));
        let client = NbdClient::connect(ours, "x").await.unwrap();
        let mut buf = [0u8; 16];
        let err = client.read_at(&mut buf, 0).await.unwrap_err();
        assert!(err.to_string().contains(expected), "{err}");
        // And every later request fails the same way, immediately.
        let again = client.read_at(&mut buf, 0).await.unwrap_err();
        assert!(again.to_string().contains(expected), "{again}");
    }
}

#[tokio::test]
async fn garbage_from_a_server_is_an_error_never_a_panic() {
    use rand::{Rng, RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    for round in 0..300 {
        let mut junk = vec![0u8; rng.random_range(0..300)];
        rng.fill_bytes(&mut junk);
        let mut bytes = Vec::new();
        // Most rounds start with a valid greeting so the option and reply
        // parsers see the garbage too.
        if round % 4 != 0 {
            bytes.extend_from_slice(
                &Greeting {
                    flags: HandshakeFlags::FIXED_NEWSTYLE | HandshakeFlags::NO_ZEROES,
                }
                .encode(),
            );
            if round % 2 == 0 {
                bytes.extend_from_slice(&nbd::wire::OPTION_REPLY_MAGIC.to_be_bytes());
                bytes.extend_from_slice(&u32::from(OptionCode::Go).to_be_bytes());
            }
        }
        bytes.extend_from_slice(&junk);
        let (ours, mut theirs) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            let _ = theirs.write_all(&bytes).await;
            // Then hang up, so every read ends.
        });
        let outcome = tokio::time::timeout(Duration::from_secs(5), async {
            match round % 3 {
                0 => NbdClient::connect(ours, "x").await.map(drop),
                1 => NbdClient::list(ours).await.map(drop),
                _ => NbdClient::info(ours, "x").await.map(drop),
            }
        })
        .await
        .expect("a garbage-talking server must not hang the client");
        assert!(outcome.is_err(), "round {round}: garbage was accepted");
    }
}

/// Reads at offset 0 never finish; others are served from memory.
#[derive(Debug)]
struct StuckAtZero(MemoryBackend);

#[async_trait]
impl Backend for StuckAtZero {
    async fn read_at(&self, buf: &mut [u8], offset: u64) -> backends::Result<usize> {
        if offset == 0 {
            std::future::pending::<()>().await;
        }
        self.0.read_at(buf, offset).await
    }
    async fn write_at(&self, data: &[u8], offset: u64) -> backends::Result<()> {
        self.0.write_at(data, offset).await
    }
    async fn size(&self) -> backends::Result<u64> {
        self.0.size().await
    }
    async fn sync(&self) -> backends::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_goes_away_fails_pending_and_later_requests() {
    let disk: SharedBackend = Arc::new(StuckAtZero(MemoryBackend::new(1 << 16)));
    let (client, serving) =
        common::connected(vec![Export::new("s", disk)], ServerLimits::default(), "s").await;
    let client = Arc::new(client);
    let c = client.clone();
    let stuck = tokio::spawn(async move {
        let mut buf = [0u8; 8];
        c.read_at(&mut buf, 0).await
    });
    while client.in_flight() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    serving.abort();
    let err = tokio::time::timeout(Duration::from_secs(5), stuck)
        .await
        .expect("a pending request must fail when the server goes away")
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, BackendError::Remote(ref m) if m.contains("closed")),
        "{err:?}"
    );
    let mut buf = [0u8; 8];
    assert!(client.read_at(&mut buf, 4096).await.is_err());
    assert_eq!(client.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_request_leaves_the_connection_usable() {
    let inner = MemoryBackend::from_bytes(common::pattern(6, 1 << 16));
    let disk: SharedBackend = Arc::new(StuckAtZero(inner));
    let (client, _serving) =
        common::connected(vec![Export::new("s", disk)], ServerLimits::default(), "s").await;
    let mut buf = [0u8; 8];
    let r = tokio::time::timeout(Duration::from_millis(50), client.read_at(&mut buf, 0)).await;
    assert!(r.is_err(), "the read at 0 should hang");
    let mut buf = vec![0u8; 4096];
    client.read_at(&mut buf, 4096).await.unwrap();
    assert_eq!(buf, &common::pattern(6, 8192)[4096..]);
    client.write_at(b"still fine", 100).await.unwrap();
    let mut back = [0u8; 10];
    client.read_at(&mut back, 100).await.unwrap();
    assert_eq!(&back, b"still fine");
}

#[tokio::test]
async fn disconnect_is_soft_and_final() {
    let (client, disk, serving) = common::memory_pair(1 << 16).await;
    client.write_at(b"kept", 0).await.unwrap();
    client.disconnect().await.unwrap();
    client.disconnect().await.unwrap();
    let stats = serving.await.unwrap().unwrap();
    assert!(stats.soft_disconnect);
    assert_eq!(&disk.snapshot()[..4], b"kept");
    assert!(matches!(
        client.write_at(b"late", 0).await,
        Err(BackendError::Closed)
    ));
}

#[tokio::test]
async fn dropping_the_client_disconnects_softly() {
    let (client, _disk, serving) = common::memory_pair(1 << 16).await;
    client.sync().await.unwrap();
    drop(client);
    let stats = tokio::time::timeout(Duration::from_secs(5), serving)
        .await
        .expect("the server should see the connection end")
        .unwrap()
        .unwrap();
    assert!(stats.soft_disconnect);
    assert_eq!(stats.flushes, 1);
}

#[tokio::test]
async fn trim_and_write_zeroes_from_the_client() {
    let disk = Arc::new(MemoryBackend::from_bytes(vec![0xaa; 1 << 20]));
    let export = Export::new("z", disk.clone() as SharedBackend)
        .block_size(BlockSizes::new(1, 4096, 128 * 1024).unwrap());
    let (client, serving) = common::connected(vec![export], ServerLimits::default(), "z").await;
    client.write_zeroes(1000, 300_000).await.unwrap();
    client.trim(500_000, 4096).await.unwrap();
    client.disconnect().await.unwrap();
    let content = disk.snapshot();
    assert!(content[..1000].iter().all(|&b| b == 0xaa));
    assert!(content[1000..301_000].iter().all(|&b| b == 0));
    assert!(content[301_000..500_000].iter().all(|&b| b == 0xaa));
    assert!(content[500_000..504_096].iter().all(|&b| b == 0));
    let stats = serving.await.unwrap().unwrap();
    // 300 000 bytes in 128 KiB pieces.
    assert_eq!((stats.write_zeroes, stats.trims), (3, 1));
}

#[tokio::test]
async fn server_errors_come_back_as_backend_errors() {
    // Reads fail; writes land in memory.
    let failing = Probe::zeros(1 << 16);
    failing.fail_reads(|| BackendError::Io(std::io::Error::from_raw_os_error(libc::EIO)));
    let (client, serving) = common::connected(
        vec![Export::new("f", Arc::new(failing) as SharedBackend)],
        ServerLimits::default(),
        "f",
    )
    .await;
    let mut buf = [0u8; 512];
    let err = client.read_at(&mut buf, 4096).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("NBD_EIO") && msg.contains("4096"), "{msg}");
    // The connection survives an error reply.
    client.write_at(&buf, 0).await.unwrap();
    client.disconnect().await.unwrap();
    let stats = serving.await.unwrap().unwrap();
    assert_eq!((stats.error_replies, stats.writes), (1, 1));
}

/// A backend that panics on reads at offset 0.
#[derive(Debug)]
struct PanicsAtZero(MemoryBackend);

#[async_trait]
impl Backend for PanicsAtZero {
    async fn read_at(&self, buf: &mut [u8], offset: u64) -> backends::Result<usize> {
        assert!(offset != 0, "deliberate backend panic");
        self.0.read_at(buf, offset).await
    }
    async fn write_at(&self, data: &[u8], offset: u64) -> backends::Result<()> {
        self.0.write_at(data, offset).await
    }
    async fn size(&self) -> backends::Result<u64> {
        self.0.size().await
    }
    async fn sync(&self) -> backends::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_panicking_backend_costs_one_request_not_the_connection() {
    let disk = Arc::new(PanicsAtZero(MemoryBackend::from_bytes(common::pattern(
        8, 8192,
    ))));
    let (client, serving) = common::connected(
        vec![Export::new("p", disk as SharedBackend)],
        ServerLimits::default(),
        "p",
    )
    .await;
    let mut buf = [0u8; 16];
    let err = tokio::time::timeout(Duration::from_secs(5), client.read_at(&mut buf, 0))
        .await
        .expect("a panicking backend must still produce a reply")
        .unwrap_err();
    assert!(err.to_string().contains("NBD_EIO"), "{err}");
    client.read_at(&mut buf, 16).await.unwrap();
    assert_eq!(&buf[..], &common::pattern(8, 32)[16..]);
    client.disconnect().await.unwrap();
    let stats = serving.await.unwrap().unwrap();
    assert_eq!((stats.error_replies, stats.reads), (1, 1));
}
