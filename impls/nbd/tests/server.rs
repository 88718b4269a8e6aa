//! Our server driven byte by byte: the handshake, every option, the
//! transmission rules, limits, garbage, and the listener.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::sync::Arc;
use std::time::Duration;

use backends::testing::Probe;
use backends::{Backend, MemoryBackend, SharedBackend};
use nbd::wire::{
    ClientFlags, Command, CommandFlags, Errno, Greeting, HandshakeFlags, Info, InfoRequest,
    InfoType, OptionCode, OptionHeader, OptionReplyHeader, ReplyType, RequestHeader, ServerEntry,
    SimpleReplyHeader, TransmissionFlags, MAX_REQUEST_LEN,
};
use nbd::{BlockSizes, Export, NbdClient, NbdError, Server, ServerLimits};
use rand::{Rng, RngCore, SeedableRng};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;

type Serving = JoinHandle<Result<nbd::ConnectionStats, NbdError>>;

const SIZE: usize = 64 * 1024;

/// Exports "a" (the default, patterned), "b" (with a description and
/// block sizes) and "ro" (read-only).
fn exports() -> (Vec<Export>, Arc<MemoryBackend>) {
    let a = common::patterned(1, SIZE);
    let b: SharedBackend = Arc::new(MemoryBackend::new(1 << 20));
    let ro: SharedBackend = common::patterned(2, SIZE);
    let exports = vec![
        Export::new("a", a.clone() as SharedBackend),
        Export::new("b", b)
            .description("the b disk")
            .block_size(BlockSizes::new(512, 4096, 1 << 20).unwrap()),
        Export::new("ro", ro).read_only(true),
    ];
    (exports, a)
}

fn start(limits: ServerLimits) -> (DuplexStream, Serving, Arc<MemoryBackend>) {
    let (exports, a) = exports();
    let server = Server::new(exports, limits).unwrap();
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let serving = tokio::spawn(async move { server.serve(theirs).await });
    (ours, serving, a)
}

async fn greet<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, flags: ClientFlags) -> Greeting {
    let mut g = [0u8; 18];
    s.read_exact(&mut g).await.unwrap();
    s.write_all(&flags.bits().to_be_bytes()).await.unwrap();
    Greeting::parse(&g).unwrap()
}

const FIXED: ClientFlags = ClientFlags(ClientFlags::FIXED_NEWSTYLE.0 | ClientFlags::NO_ZEROES.0);

async fn send_opt<S: AsyncWrite + Unpin>(s: &mut S, option: u32, data: &[u8]) {
    let mut out = OptionHeader {
        option,
        length: data.len() as u32,
    }
    .encode()
    .to_vec();
    out.extend_from_slice(data);
    s.write_all(&out).await.unwrap();
}

async fn reply<S: AsyncRead + Unpin>(s: &mut S) -> (OptionReplyHeader, Vec<u8>) {
    let mut h = [0u8; 20];
    s.read_exact(&mut h).await.unwrap();
    let h = OptionReplyHeader::parse(&h).unwrap();
    let mut data = vec![0u8; h.length as usize];
    s.read_exact(&mut data).await.unwrap();
    (h, data)
}

fn go_data(name: &str, requests: &[InfoType]) -> Vec<u8> {
    InfoRequest {
        name: name.into(),
        requests: requests.iter().map(|t| u16::from(*t)).collect(),
    }
    .encode()
}

/// Runs `NBD_OPT_GO` for `name` and returns the infos.
async fn go<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, name: &str) -> Vec<Info> {
    send_opt(
        s,
        OptionCode::Go.into(),
        &go_data(name, &[InfoType::BlockSize]),
    )
    .await;
    let mut infos = Vec::new();
    loop {
        let (h, data) = reply(s).await;
        match ReplyType::try_from(h.reply) {
            Ok(ReplyType::Info) => infos.push(Info::parse(&data).unwrap()),
            Ok(ReplyType::Ack) => return infos,
            other => panic!(
                "unexpected reply {other:?} to GO: {}",
                String::from_utf8_lossy(&data)
            ),
        }
    }
}

async fn request<S: AsyncWrite + Unpin>(
    s: &mut S,
    command: u16,
    flags: CommandFlags,
    handle: u64,
    offset: u64,
    length: u32,
) {
    let h = RequestHeader {
        flags,
        command,
        handle,
        offset,
        length,
    };
    s.write_all(&h.encode()).await.unwrap();
}

async fn simple_reply<S: AsyncRead + Unpin>(s: &mut S) -> SimpleReplyHeader {
    let mut h = [0u8; 16];
    s.read_exact(&mut h).await.unwrap();
    SimpleReplyHeader::parse(&h).unwrap()
}

/// Reads until EOF; the server must have closed its side.
async fn expect_eof<S: AsyncRead + Unpin>(s: &mut S) {
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("the server did not close the connection")
        .unwrap();
}

async fn finish(serving: Serving) -> Result<nbd::ConnectionStats, NbdError> {
    tokio::time::timeout(Duration::from_secs(5), serving)
        .await
        .expect("serve() did not return")
        .expect("serve() panicked")
}

#[tokio::test]
async fn greeting_offers_fixed_newstyle_and_no_zeroes() {
    let (mut s, serving, _) = start(ServerLimits::default());
    let g = greet(&mut s, FIXED).await;
    assert_eq!(
        g.flags,
        HandshakeFlags::FIXED_NEWSTYLE | HandshakeFlags::NO_ZEROES
    );
    send_opt(&mut s, OptionCode::Abort.into(), &[]).await;
    let (h, _) = reply(&mut s).await;
    assert_eq!(h.reply, u32::from(ReplyType::Ack));
    assert_eq!(
        finish(serving).await.unwrap(),
        nbd::ConnectionStats::default()
    );
}

#[tokio::test]
async fn unknown_client_flags_end_the_session() {
    let (mut s, serving, _) = start(ServerLimits::default());
    greet(&mut s, ClientFlags(1 | 1 << 5)).await;
    expect_eof(&mut s).await;
    match finish(serving).await {
        Err(NbdError::BadClientFlags { bad, .. }) => assert_eq!(bad, 1 << 5),
        other => panic!("expected BadClientFlags, got {other:?}"),
    }
}

#[tokio::test]
async fn unsupported_options_are_refused_and_haggling_goes_on() {
    let (mut s, serving, _) = start(ServerLimits::default());
    greet(&mut s, FIXED).await;
    for option in [
        99u32,
        OptionCode::StartTls.into(),
        OptionCode::StructuredReply.into(),
        OptionCode::SetMetaContext.into(),
        OptionCode::ExtendedHeaders.into(),
    ] {
        send_opt(&mut s, option, b"some data").await;
        let (h, msg) = reply(&mut s).await;
        assert_eq!(h.option, option);
        assert_eq!(h.reply, u32::from(ReplyType::ErrUnsup), "option {option}");
        assert!(String::from_utf8(msg).unwrap().contains("not supported"));
    }
    // The next option still parses.
    send_opt(&mut s, OptionCode::List.into(), &[]).await;
    let mut listed = Vec::new();
    loop {
        let (h, data) = reply(&mut s).await;
        if h.reply == u32::from(ReplyType::Ack) {
            break;
        }
        assert_eq!(h.reply, u32::from(ReplyType::Server));
        listed.push(ServerEntry::parse(&data).unwrap());
    }
    let names: Vec<_> = listed.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "ro"]);
    assert_eq!(listed[1].description, "the b disk");
    // LIST with data is malformed.
    send_opt(&mut s, OptionCode::List.into(), b"x").await;
    assert_eq!(
        reply(&mut s).await.0.reply,
        u32::from(ReplyType::ErrInvalid)
    );
    send_opt(&mut s, OptionCode::Abort.into(), &[]).await;
    assert_eq!(reply(&mut s).await.0.reply, u32::from(ReplyType::Ack));
    finish(serving).await.unwrap();
}

#[tokio::test]
async fn info_describes_exports_and_go_enters_transmission() {
    let (mut s, serving, a) = start(ServerLimits::default());
    greet(&mut s, FIXED).await;

    send_opt(
        &mut s,
        OptionCode::Info.into(),
        &go_data(
            "b",
            &[InfoType::Name, InfoType::Description, InfoType::BlockSize],
        ),
    )
    .await;
    let mut infos = Vec::new();
    loop {
        let (h, data) = reply(&mut s).await;
        if h.reply == u32::from(ReplyType::Ack) {
            break;
        }
        assert_eq!(h.reply, u32::from(ReplyType::Info));
        infos.push(Info::parse(&data).unwrap());
    }
    let flags = TransmissionFlags::HAS_FLAGS
        | TransmissionFlags::SEND_FLUSH
        | TransmissionFlags::SEND_FUA
        | TransmissionFlags::SEND_TRIM
        | TransmissionFlags::SEND_WRITE_ZEROES
        | TransmissionFlags::CAN_MULTI_CONN;
    assert!(infos.contains(&Info::Export {
        size: 1 << 20,
        flags
    }));
    assert!(infos.contains(&Info::Name("b".into())));
    assert!(infos.contains(&Info::Description("the b disk".into())));
    assert!(infos.contains(&Info::BlockSize {
        minimum: 512,
        preferred: 4096,
        maximum: 1 << 20
    }));

    // Unknown export, malformed data: errors, and haggling goes on.
    send_opt(&mut s, OptionCode::Info.into(), &go_data("nope", &[])).await;
    let (h, msg) = reply(&mut s).await;
    assert_eq!(h.reply, u32::from(ReplyType::ErrUnknown));
    assert!(String::from_utf8(msg).unwrap().contains("nope"));
    send_opt(&mut s, OptionCode::Go.into(), &[0, 0, 0, 9, b'x']).await;
    assert_eq!(
        reply(&mut s).await.0.reply,
        u32::from(ReplyType::ErrInvalid)
    );

    // The empty name is the default export, the first one.
    let infos = go(&mut s, "").await;
    assert!(infos
        .iter()
        .any(|i| matches!(i, Info::Export { size, .. } if *size == SIZE as u64)));
    request(&mut s, Command::Read.into(), CommandFlags(0), 7, 100, 50).await;
    let r = simple_reply(&mut s).await;
    assert_eq!((r.error, r.handle), (Errno(0), 7));
    let mut data = vec![0u8; 50];
    s.read_exact(&mut data).await.unwrap();
    assert_eq!(data, &a.snapshot()[100..150]);
    request(&mut s, Command::Disc.into(), CommandFlags(0), 8, 0, 0).await;
    expect_eof(&mut s).await;
    let stats = finish(serving).await.unwrap();
    assert_eq!(stats.export.as_deref(), Some("a"));
    assert!(stats.soft_disconnect);
    assert_eq!((stats.requests, stats.reads, stats.bytes_read), (2, 1, 50));
}

#[tokio::test]
async fn export_name_pads_unless_no_zeroes_was_agreed() {
    for (flags, pad) in [(FIXED, 0usize), (ClientFlags::FIXED_NEWSTYLE, 124)] {
        let (mut s, serving, a) = start(ServerLimits::default());
        greet(&mut s, flags).await;
        send_opt(&mut s, OptionCode::ExportName.into(), b"a").await;
        let mut head = vec![0u8; 10 + pad];
        s.read_exact(&mut head).await.unwrap();
        let r = nbd::wire::ExportNameReply::parse(&head).unwrap();
        assert_eq!(r.size, SIZE as u64);
        assert!(head[10..].iter().all(|&b| b == 0));
        // Straight into transmission: the next bytes are a reply.
        request(&mut s, Command::Read.into(), CommandFlags(0), 1, 0, 8).await;
        assert_eq!(simple_reply(&mut s).await.handle, 1);
        let mut data = [0u8; 8];
        s.read_exact(&mut data).await.unwrap();
        assert_eq!(&data, &a.snapshot()[..8]);
        drop(s);
        assert_eq!(finish(serving).await.unwrap().reads, 1);
    }
}

#[tokio::test]
async fn export_name_for_an_unknown_export_hangs_up() {
    let (mut s, serving, _) = start(ServerLimits::default());
    greet(&mut s, FIXED).await;
    send_opt(&mut s, OptionCode::ExportName.into(), b"missing").await;
    expect_eof(&mut s).await;
    match finish(serving).await {
        Err(NbdError::UnknownExport { name, available }) => {
            assert_eq!(name, "missing");
            assert_eq!(available, ["a", "b", "ro"]);
        }
        other => panic!("expected UnknownExport, got {other:?}"),
    }
}

#[tokio::test]
async fn oversized_options_are_refused_and_skipped() {
    let (mut s, serving, _) = start(ServerLimits::default());
    greet(&mut s, FIXED).await;
    let big = vec![7u8; 1 << 20];
    send_opt(&mut s, OptionCode::Go.into(), &big).await;
    let (h, msg) = reply(&mut s).await;
    assert_eq!(h.reply, u32::from(ReplyType::ErrTooBig));
    assert!(String::from_utf8(msg).unwrap().contains("1048576"));
    // Framing survived: a normal option works.
    go(&mut s, "a").await;
    drop(s);
    finish(serving).await.unwrap();

    let (mut s, serving, _) = start(ServerLimits::default());
    greet(&mut s, FIXED).await;
    send_opt(&mut s, OptionCode::ExportName.into(), &big).await;
    expect_eof(&mut s).await;
    assert!(matches!(
        finish(serving).await,
        Err(NbdError::TooLarge { .. })
    ));
}

#[tokio::test]
async fn a_4_gib_option_length_is_never_allocated() {
    let (mut s, serving, _) = start(ServerLimits::default());
    greet(&mut s, FIXED).await;
    let h = OptionHeader {
        option: OptionCode::Go.into(),
        length: u32::MAX,
    };
    s.write_all(&h.encode()).await.unwrap();
    s.write_all(&[0u8; 1000]).await.unwrap();
    // The server skips what arrives through a small buffer; when the client
    // gives up, it ends with an error instead of having tried to hold 4 GiB.
    drop(s);
    assert!(matches!(
        finish(serving).await,
        Err(NbdError::UnexpectedEof { .. })
    ));
}

#[tokio::test]
async fn bad_option_magic_hangs_up() {
    let (mut s, serving, _) = start(ServerLimits::default());
    greet(&mut s, FIXED).await;
    s.write_all(&[0x55; 16]).await.unwrap();
    expect_eof(&mut s).await;
    assert!(matches!(finish(serving).await, Err(NbdError::Wire(_))));
}

/// A client in transmission on export `name`.
async fn transmitting(name: &str) -> (DuplexStream, Serving, Arc<MemoryBackend>) {
    let (mut s, serving, a) = start(ServerLimits::default());
    greet(&mut s, FIXED).await;
    go(&mut s, name).await;
    (s, serving, a)
}

#[tokio::test]
async fn requests_outside_the_rules_get_the_spec_errors() {
    let (mut s, serving, a) = transmitting("a").await;
    let before = a.snapshot();
    let size = SIZE as u64;
    let none = CommandFlags(0);

    // Read past the end: EINVAL, and no payload follows.
    request(&mut s, Command::Read.into(), none, 1, size - 10, 20).await;
    assert_eq!(simple_reply(&mut s).await.error, Errno::EINVAL);
    // Write past the end: ENOSPC; its payload is consumed, not parsed as requests.
    request(&mut s, Command::Write.into(), none, 2, size - 10, 20).await;
    s.write_all(&[0xee; 20]).await.unwrap();
    assert_eq!(simple_reply(&mut s).await.error, Errno::ENOSPC);
    // Unknown command, unknown flag, unadvertised flag.
    request(&mut s, 77, none, 3, 0, 0).await;
    assert_eq!(simple_reply(&mut s).await.error, Errno::EINVAL);
    request(&mut s, Command::Read.into(), CommandFlags(1 << 12), 4, 0, 8).await;
    assert_eq!(simple_reply(&mut s).await.error, Errno::EINVAL);
    request(&mut s, Command::Read.into(), CommandFlags::DF, 5, 0, 8).await;
    assert_eq!(simple_reply(&mut s).await.error, Errno::EINVAL);
    // Block status needs contexts we never offer.
    request(&mut s, Command::BlockStatus.into(), none, 6, 0, 8).await;
    assert_eq!(simple_reply(&mut s).await.error, Errno::EINVAL);
    // A read over the export's maximum block size (32 MiB by default).
    request(
        &mut s,
        Command::Read.into(),
        none,
        7,
        0,
        MAX_REQUEST_LEN + 1,
    )
    .await;
    assert_eq!(simple_reply(&mut s).await.error, Errno::EINVAL);

    // A valid request afterwards proves the stream is still in frame.
    request(&mut s, Command::Read.into(), none, 8, 0, 4).await;
    let r = simple_reply(&mut s).await;
    assert_eq!((r.error, r.handle), (Errno(0), 8));
    let mut data = [0u8; 4];
    s.read_exact(&mut data).await.unwrap();
    assert_eq!(&data, &before[..4]);
    assert_eq!(a.snapshot(), before, "refused requests must not write");

    drop(s);
    let stats = finish(serving).await.unwrap();
    assert_eq!(stats.error_replies, 7);
    assert!(!stats.soft_disconnect);
}

#[tokio::test]
async fn exports_with_a_minimum_block_size_refuse_unaligned_requests() {
    let (mut s, serving, _) = transmitting("b").await;
    request(&mut s, Command::Read.into(), CommandFlags(0), 1, 100, 512).await;
    assert_eq!(simple_reply(&mut s).await.error, Errno::EINVAL);
    request(&mut s, Command::Write.into(), CommandFlags(0), 2, 512, 100).await;
    s.write_all(&[1; 100]).await.unwrap();
    assert_eq!(simple_reply(&mut s).await.error, Errno::EINVAL);
    request(&mut s, Command::Write.into(), CommandFlags(0), 3, 512, 512).await;
    s.write_all(&[1; 512]).await.unwrap();
    assert_eq!(simple_reply(&mut s).await.error, Errno(0));
    drop(s);
    assert_eq!(finish(serving).await.unwrap().writes, 1);
}

#[tokio::test]
async fn read_only_exports_refuse_every_kind_of_write() {
    let (mut s, serving, _) = transmitting("ro").await;
    request(&mut s, Command::Write.into(), CommandFlags(0), 1, 0, 16).await;
    s.write_all(&[9; 16]).await.unwrap();
    assert_eq!(simple_reply(&mut s).await.error, Errno::EPERM);
    request(&mut s, Command::Trim.into(), CommandFlags(0), 2, 0, 16).await;
    assert_eq!(simple_reply(&mut s).await.error, Errno::EPERM);
    request(
        &mut s,
        Command::WriteZeroes.into(),
        CommandFlags(0),
        3,
        0,
        16,
    )
    .await;
    assert_eq!(simple_reply(&mut s).await.error, Errno::EPERM);
    request(&mut s, Command::Read.into(), CommandFlags(0), 4, 0, 16).await;
    assert_eq!(simple_reply(&mut s).await.error, Errno(0));
    let mut data = [0u8; 16];
    s.read_exact(&mut data).await.unwrap();
    assert_eq!(&data[..], &common::pattern(2, 16)[..]);
    drop(s);
    let stats = finish(serving).await.unwrap();
    assert_eq!((stats.error_replies, stats.reads), (3, 1));
}

#[tokio::test]
async fn a_write_over_32_mib_ends_the_connection_without_reading_it() {
    let (mut s, serving, _) = transmitting("a").await;
    // Only the header is sent: a server waiting for 64 MiB of payload
    // would hang here instead of hanging up.
    request(
        &mut s,
        Command::Write.into(),
        CommandFlags(0),
        1,
        0,
        2 * MAX_REQUEST_LEN,
    )
    .await;
    expect_eof(&mut s).await;
    match finish(serving).await {
        Err(NbdError::TooLarge { length, limit, .. }) => {
            assert_eq!(
                (length, limit),
                ((2 * MAX_REQUEST_LEN).into(), MAX_REQUEST_LEN.into())
            );
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[tokio::test]
async fn a_bad_request_magic_ends_the_connection() {
    let (mut s, serving, _) = transmitting("a").await;
    let mut h = RequestHeader {
        flags: CommandFlags(0),
        command: 0,
        handle: 1,
        offset: 0,
        length: 8,
    }
    .encode();
    h[0] = 0;
    s.write_all(&h).await.unwrap();
    expect_eof(&mut s).await;
    assert!(matches!(finish(serving).await, Err(NbdError::Wire(_))));
}

#[tokio::test]
async fn pipelined_requests_all_get_their_own_reply() {
    let (mut s, serving, a) = transmitting("a").await;
    let content = a.snapshot();
    let mut batch = Vec::new();
    for i in 0..40u64 {
        batch.extend_from_slice(
            &RequestHeader {
                flags: CommandFlags(0),
                command: Command::Read.into(),
                handle: 1000 + i,
                offset: i * 1000,
                length: 300,
            }
            .encode(),
        );
    }
    s.write_all(&batch).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..40 {
        let r = simple_reply(&mut s).await;
        assert_eq!(r.error, Errno(0));
        let i = r.handle - 1000;
        let mut data = vec![0u8; 300];
        s.read_exact(&mut data).await.unwrap();
        let at = (i * 1000) as usize;
        assert_eq!(data, &content[at..at + 300], "reply to handle {}", r.handle);
        seen.push(r.handle);
    }
    seen.sort_unstable();
    assert_eq!(seen, (1000..1040).collect::<Vec<_>>());
    drop(s);
    assert_eq!(finish(serving).await.unwrap().reads, 40);
}

#[tokio::test]
async fn disc_is_answered_only_after_in_flight_requests() {
    let (mut s, serving, a) = transmitting("a").await;
    let mut batch = Vec::new();
    for i in 0..16u64 {
        batch.extend_from_slice(
            &RequestHeader {
                flags: CommandFlags::FUA,
                command: Command::Write.into(),
                handle: i,
                offset: i * 512,
                length: 512,
            }
            .encode(),
        );
        batch.extend_from_slice(&[i as u8 + 1; 512]);
    }
    batch.extend_from_slice(
        &RequestHeader {
            flags: CommandFlags(0),
            command: Command::Disc.into(),
            handle: 99,
            offset: 0,
            length: 0,
        }
        .encode(),
    );
    s.write_all(&batch).await.unwrap();
    for _ in 0..16 {
        assert_eq!(simple_reply(&mut s).await.error, Errno(0));
    }
    expect_eof(&mut s).await;
    let stats = finish(serving).await.unwrap();
    assert!(stats.soft_disconnect);
    assert_eq!((stats.writes, stats.bytes_written), (16, 16 * 512));
    let content = a.snapshot();
    for i in 0..16usize {
        assert!(content[i * 512..(i + 1) * 512]
            .iter()
            .all(|&b| b == i as u8 + 1));
    }
}

#[tokio::test]
async fn flush_fua_trim_and_write_zeroes_reach_the_backend() {
    let memory = Arc::new(MemoryBackend::from_bytes(vec![0xff; SIZE]));
    let disk = Arc::new(Probe::over(memory.clone()));
    let server = Server::new(
        vec![Export::new("d", disk.clone() as SharedBackend)],
        ServerLimits::default(),
    )
    .unwrap();
    let (mut s, theirs) = tokio::io::duplex(1 << 20);
    let serving = tokio::spawn(async move { server.serve(theirs).await });
    greet(&mut s, FIXED).await;
    go(&mut s, "d").await;

    request(&mut s, Command::Flush.into(), CommandFlags(0), 1, 0, 0).await;
    assert_eq!(simple_reply(&mut s).await.error, Errno(0));
    assert_eq!(disk.syncs(), 1);
    request(&mut s, Command::Write.into(), CommandFlags::FUA, 2, 0, 4).await;
    s.write_all(b"abcd").await.unwrap();
    assert_eq!(simple_reply(&mut s).await.error, Errno(0));
    assert_eq!(disk.syncs(), 2, "FUA must sync before replying");
    request(&mut s, Command::Write.into(), CommandFlags(0), 3, 4, 4).await;
    s.write_all(b"efgh").await.unwrap();
    assert_eq!(simple_reply(&mut s).await.error, Errno(0));
    assert_eq!(disk.syncs(), 2, "no FUA, no sync");

    request(&mut s, Command::Trim.into(), CommandFlags(0), 4, 4096, 8192).await;
    assert_eq!(simple_reply(&mut s).await.error, Errno(0));
    // Longer than the 1 MiB zero buffer is not possible here, but across
    // its boundary in offset terms is: zero the last 20000 bytes.
    let tail = 20000u32;
    request(
        &mut s,
        Command::WriteZeroes.into(),
        CommandFlags::NO_HOLE | CommandFlags::FUA,
        5,
        SIZE as u64 - u64::from(tail),
        tail,
    )
    .await;
    assert_eq!(simple_reply(&mut s).await.error, Errno(0));
    assert_eq!(disk.syncs(), 3);

    let content = memory.snapshot();
    assert_eq!(&content[..8], b"abcdefgh");
    assert!(content[8..4096].iter().all(|&b| b == 0xff));
    assert!(content[4096..12288].iter().all(|&b| b == 0));
    assert!(content[12288..SIZE - tail as usize]
        .iter()
        .all(|&b| b == 0xff));
    assert!(content[SIZE - tail as usize..].iter().all(|&b| b == 0));
    drop(s);
    let stats = finish(serving).await.unwrap();
    assert_eq!(
        (stats.flushes, stats.writes, stats.trims, stats.write_zeroes),
        (1, 2, 1, 1)
    );
}

#[tokio::test]
async fn garbage_in_either_phase_never_panics() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xbad);
    for round in 0..300 {
        let (mut s, serving, _) = start(ServerLimits::default());
        greet(&mut s, FIXED).await;
        if round % 2 == 1 {
            go(&mut s, "a").await;
        }
        let len = rng.random_range(1..200);
        let mut junk = vec![0u8; len];
        rng.fill_bytes(&mut junk);
        // Sometimes a valid magic first, so the deeper checks run.
        if rng.random_bool(0.5) && len >= 8 {
            let magic = if round % 2 == 1 {
                0x2560_9513_0000_0000u64
            } else {
                nbd::wire::OPTION_MAGIC
            };
            junk[..8].copy_from_slice(&magic.to_be_bytes());
        }
        let _ = s.write_all(&junk).await;
        drop(s);
        // Ok or Err, but it returns and does not panic.
        let _ = finish(serving).await;
    }
}

#[tokio::test]
async fn a_silent_client_times_out_in_the_handshake() {
    let (mut s, serving, _) = start(ServerLimits {
        handshake_timeout: Some(Duration::from_millis(100)),
        ..ServerLimits::default()
    });
    let mut g = [0u8; 18];
    s.read_exact(&mut g).await.unwrap();
    assert!(matches!(
        finish(serving).await,
        Err(NbdError::HandshakeTimeout(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_run_concurrently_up_to_the_in_flight_limit() {
    // With 4 slots, 8 reads meet at a barrier of 4 in two waves; a server
    // that ran them one by one would never get past the first barrier.
    let disk = Arc::new(Probe::memory(common::pattern(3, SIZE)).with_read_barrier(4));
    let limits = ServerLimits {
        max_in_flight: 4,
        ..ServerLimits::default()
    };
    let (client, serving) = common::connected(
        vec![Export::new("r", disk.clone() as SharedBackend)],
        limits,
        "r",
    )
    .await;
    let client = Arc::new(client);
    let mut reads = Vec::new();
    for i in 0..8u64 {
        let client = client.clone();
        reads.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 1000];
            client.read_at(&mut buf, i * 1000).await.unwrap();
            buf
        }));
    }
    let expected = common::pattern(3, SIZE);
    for (i, r) in reads.into_iter().enumerate() {
        let buf = tokio::time::timeout(Duration::from_secs(10), r)
            .await
            .expect("reads did not run concurrently")
            .unwrap();
        assert_eq!(buf, &expected[i * 1000..(i + 1) * 1000]);
    }
    assert_eq!(disk.max_in_flight(), 4, "in-flight limit not kept");
    client.disconnect().await.unwrap();
    assert_eq!(finish(serving).await.unwrap().reads, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_serve_many_clients_and_stop_on_shutdown() {
    let (exports, a) = exports();
    let server = Server::new(exports, ServerLimits::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nbd.sock");

    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let unix = tokio::net::UnixListener::bind(&path).unwrap();
    let (stop_tcp, tcp_stopped) = tokio::sync::oneshot::channel::<()>();
    let (stop_unix, unix_stopped) = tokio::sync::oneshot::channel::<()>();
    let s1 = server.clone();
    let tcp_task = tokio::spawn(async move {
        s1.serve_listener(tcp, async {
            let _ = tcp_stopped.await;
        })
        .await
    });
    let unix_task = tokio::spawn(async move {
        server
            .serve_listener(unix, async {
                let _ = unix_stopped.await;
            })
            .await
    });

    let content = a.snapshot();
    for i in 0..3u64 {
        let c = NbdClient::connect_tcp(addr, "a").await.unwrap();
        let mut buf = vec![0u8; 1024];
        c.read_at(&mut buf, i * 1024).await.unwrap();
        assert_eq!(
            buf,
            &content[(i * 1024) as usize..((i + 1) * 1024) as usize]
        );
        c.disconnect().await.unwrap();
    }
    let c = NbdClient::connect_unix(&path, "a").await.unwrap();
    c.write_at(b"over unix", 0).await.unwrap();
    c.disconnect().await.unwrap();
    assert_eq!(&a.snapshot()[..9], b"over unix");

    // A client still connected at shutdown is closed by the server.
    let idle = NbdClient::connect_tcp(addr, "a").await.unwrap();
    stop_tcp.send(()).unwrap();
    let stats = tokio::time::timeout(Duration::from_secs(5), tcp_task)
        .await
        .expect("serve_listener did not stop")
        .unwrap()
        .unwrap();
    assert_eq!(stats.connections, 4);
    assert_eq!(stats.failed, 0);
    // Three reads and three NBD_CMD_DISC.
    assert_eq!(stats.requests, 6);
    let mut buf = [0u8; 8];
    assert!(
        idle.read_at(&mut buf, 0).await.is_err(),
        "server should have closed the idle client"
    );

    stop_unix.send(()).unwrap();
    let stats = unix_task.await.unwrap().unwrap();
    assert_eq!((stats.connections, stats.bytes_written), (1, 9));
    // No more connections are accepted.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
