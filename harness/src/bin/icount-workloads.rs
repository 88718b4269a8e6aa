//! Fixed, deterministic workloads whose instructions `harness icount`
//! counts under valgrind's callgrind.
//!
//! `icount-workloads NAME` sets up its input, then calls `measured_NAME`
//! (never inlined) a fixed number of times; callgrind counts only inside
//! functions named `measured_*` (`--toggle-collect`), so setup, the tokio
//! runtime's start and the process's own start are not in the count. The
//! same binary with the same input executes the same instructions, so a
//! change in the count is a change in the code, not noise.
//!
//! `icount-workloads --list` prints the names, one per line;
//! `icount-workloads --build` how it was built (counts of a build with
//! debug assertions, as `cargo test` leaves in `target/debug`, differ).

use std::process::ExitCode;
use std::sync::Arc;

use backends::{Backend, MemoryBackend, SharedBackend};
use bytes::{Bytes, BytesMut};
use chunks::{ArbitraryReadWriterAt, SyncedReadWriterAt};
use nbd::wire::{Command, CommandFlags, RequestHeader, MAX_REQUEST_LEN, REQUEST_HEADER_LEN};
use transports::wire::{Reply, Status};
use transports::{jsonl, Outcome, DEFAULT_MAX_MESSAGE};

/// Calls of the measured function per run: enough that one-off costs (the
/// first allocation of a size) weigh little against the steady state.
const ITERATIONS: u32 = 16;

const CHUNK: u64 = 64 << 10;
const REGION: u64 = 1 << 20;

fn payload(len: usize) -> Bytes {
    (0..len).map(|i| (i * 31 + 7) as u8).collect()
}

type Workload = (&'static str, fn() -> Result<(), String>);

const WORKLOADS: &[Workload] = &[
    ("frpc_reply_4k", frpc_reply_4k),
    ("frpc_reply_1m", frpc_reply_1m),
    ("jsonl_reply_4k", jsonl_reply_4k),
    ("nbd_write_request_4k", nbd_write_request_4k),
    ("nbd_write_request_1m", nbd_write_request_1m),
    ("chunks_arbitrary_read_4k", chunks_arbitrary_read_4k),
    ("chunks_synced_pull_64k", chunks_synced_pull_64k),
];

#[inline(never)]
fn measured_frpc_reply(data: &Bytes) -> Result<Bytes, String> {
    let mut wire = BytesMut::new();
    Reply::encode(&mut wire, 42, Status::Ok, data);
    Reply::parse(&mut wire, DEFAULT_MAX_MESSAGE)
        .map(|r| r.body)
        .map_err(|e| e.to_string())
}

fn frpc_reply(len: usize) -> Result<(), String> {
    let data = payload(len);
    for _ in 0..ITERATIONS {
        let body = measured_frpc_reply(std::hint::black_box(&data))?;
        if body != data {
            return Err("frpc reply did not round-trip".into());
        }
    }
    Ok(())
}

fn frpc_reply_4k() -> Result<(), String> {
    frpc_reply(4 << 10)
}

fn frpc_reply_1m() -> Result<(), String> {
    frpc_reply(1 << 20)
}

#[inline(never)]
fn measured_jsonl_reply(data: &Bytes) -> Result<Bytes, String> {
    let line = jsonl::encode_reply(42, Ok(Outcome::Data(data.clone())));
    match jsonl::decode_reply(line.strip_suffix(b"\n").unwrap_or(&line)) {
        Ok((_, Ok(Outcome::Data(body)))) => Ok(body),
        other => Err(format!("jsonl reply: {other:?}")),
    }
}

fn jsonl_reply_4k() -> Result<(), String> {
    let data = payload(4 << 10);
    for _ in 0..ITERATIONS {
        if measured_jsonl_reply(std::hint::black_box(&data))? != data {
            return Err("jsonl reply did not round-trip".into());
        }
    }
    Ok(())
}

/// The server's steps for a write request: header parsed, length held to
/// the limit, payload taken into a buffer of its own.
#[inline(never)]
fn measured_nbd_write_request(wire: &[u8]) -> Result<(RequestHeader, Vec<u8>), String> {
    let head = wire
        .get(..REQUEST_HEADER_LEN)
        .ok_or("shorter than a request header")?;
    let header = RequestHeader::parse(head).map_err(|e| e.to_string())?;
    if header.length > MAX_REQUEST_LEN {
        return Err(format!("write of {} bytes over the limit", header.length));
    }
    let body = wire
        .get(REQUEST_HEADER_LEN..REQUEST_HEADER_LEN + header.length as usize)
        .ok_or("payload shorter than the header says")?;
    Ok((header, body.to_vec()))
}

fn nbd_write_request(len: usize) -> Result<(), String> {
    let data = payload(len);
    let header = RequestHeader {
        flags: CommandFlags(0),
        command: Command::Write.into(),
        handle: 7,
        offset: 1 << 20,
        length: len as u32,
    };
    let mut wire = header.encode().to_vec();
    wire.extend_from_slice(&data);
    for _ in 0..ITERATIONS {
        let (got, body) = measured_nbd_write_request(std::hint::black_box(&wire))?;
        if got != header || body[..] != data[..] {
            return Err("nbd write request decoded wrongly".into());
        }
    }
    Ok(())
}

fn nbd_write_request_4k() -> Result<(), String> {
    nbd_write_request(4 << 10)
}

fn nbd_write_request_1m() -> Result<(), String> {
    nbd_write_request(1 << 20)
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))
}

#[inline(never)]
fn measured_arbitrary_read(
    rt: &tokio::runtime::Runtime,
    stage: &ArbitraryReadWriterAt,
    buf: &mut [u8],
    offset: u64,
) -> Result<(), String> {
    rt.block_on(stage.read_exact_at(buf, offset))
        .map_err(|e| e.to_string())
}

/// A 4 KiB read straddling two 64 KiB chunks of a memory backend.
fn chunks_arbitrary_read_4k() -> Result<(), String> {
    let rt = runtime()?;
    let source = payload(REGION as usize);
    let remote: SharedBackend = Arc::new(MemoryBackend::from_bytes(source.to_vec()));
    let stage = rt
        .block_on(ArbitraryReadWriterAt::new(remote, CHUNK))
        .map_err(|e| e.to_string())?;
    let offset = CHUNK - 2048;
    let mut buf = vec![0u8; 4 << 10];
    for _ in 0..ITERATIONS {
        measured_arbitrary_read(&rt, &stage, &mut buf, offset)?;
        if buf[..] != source[offset as usize..offset as usize + buf.len()] {
            return Err("arbitrary read returned other bytes".into());
        }
    }
    Ok(())
}

#[inline(never)]
fn measured_synced_pull(
    rt: &tokio::runtime::Runtime,
    stage: &SyncedReadWriterAt,
    buf: &mut [u8],
    offset: u64,
) -> Result<(), String> {
    rt.block_on(stage.read_exact_at(buf, offset))
        .map_err(|e| e.to_string())
}

/// The first read of a chunk through the synced stage: pulled from the
/// remote, written locally, served. A fresh stage per call, built outside
/// the count.
fn chunks_synced_pull_64k() -> Result<(), String> {
    let rt = runtime()?;
    let source = payload(REGION as usize);
    let mut buf = vec![0u8; CHUNK as usize];
    for i in 0..u64::from(ITERATIONS) {
        let remote: SharedBackend = Arc::new(MemoryBackend::from_bytes(source.to_vec()));
        let local: SharedBackend = Arc::new(MemoryBackend::new(REGION));
        let stage = rt
            .block_on(SyncedReadWriterAt::new(remote, local, CHUNK))
            .map_err(|e| e.to_string())?;
        let offset = (i % (REGION / CHUNK)) * CHUNK;
        measured_synced_pull(&rt, &stage, &mut buf, offset)?;
        if buf[..] != source[offset as usize..(offset + CHUNK) as usize] {
            return Err("synced pull returned other bytes".into());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [flag] if flag == "--build" => {
            println!(
                "profile={} opt-level={} debug-assertions={}",
                env!("MEMSYNC_BUILD_PROFILE"),
                env!("MEMSYNC_BUILD_OPT_LEVEL"),
                cfg!(debug_assertions)
            );
            ExitCode::SUCCESS
        }
        [flag] if flag == "--list" => {
            for (name, _) in WORKLOADS {
                println!("{name}");
            }
            ExitCode::SUCCESS
        }
        [name] => match WORKLOADS.iter().find(|(n, _)| n == name) {
            Some((_, run)) => match run() {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("icount-workloads {name}: {e}");
                    ExitCode::FAILURE
                }
            },
            None => {
                eprintln!("icount-workloads: no workload `{name}`; --list names them");
                ExitCode::from(2)
            }
        },
        _ => {
            eprintln!("usage: icount-workloads NAME | --list | --build");
            ExitCode::from(2)
        }
    }
}
