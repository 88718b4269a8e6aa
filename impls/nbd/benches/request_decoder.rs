//! The transmission-phase request decoder: what the server does with the
//! bytes of one request before a backend sees it.
//!
//! - `request/read`: a 28-byte read request header parsed (the payload-free
//!   case; its size does not change the work).
//! - `request/write/{4KiB,1MiB}`: a write request parsed, its length held
//!   to [`MAX_REQUEST_LEN`] as the server does, and its payload taken out of
//!   the receive buffer into an owned buffer of exactly that length.
//!
//! The server's admission step (`plan`: flags, alignment, bounds) is
//! private to `nbd::server`, so it is not part of these numbers.

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use nbd::wire::{Command, CommandFlags, RequestHeader, MAX_REQUEST_LEN, REQUEST_HEADER_LEN};

fn header(command: Command, length: u32) -> RequestHeader {
    RequestHeader {
        flags: CommandFlags(0),
        command: command.into(),
        handle: 0x1234_5678,
        offset: 1 << 20,
        length,
    }
}

/// Bytes of one request as they arrive: header, then any payload.
fn on_the_wire(h: &RequestHeader, payload: &[u8]) -> Vec<u8> {
    let mut wire = h.encode().to_vec();
    wire.extend_from_slice(payload);
    wire
}

/// Parses the header and takes the payload a write carries; `None` for a
/// malformed or oversize request.
fn decode(buf: &[u8]) -> Option<(RequestHeader, Vec<u8>)> {
    let h = RequestHeader::parse(buf.get(..REQUEST_HEADER_LEN)?).ok()?;
    if h.command != u16::from(Command::Write) {
        return Some((h, Vec::new()));
    }
    if h.length > MAX_REQUEST_LEN {
        return None;
    }
    let end = REQUEST_HEADER_LEN.checked_add(h.length as usize)?;
    Some((h, buf.get(REQUEST_HEADER_LEN..end)?.to_vec()))
}

fn requests(c: &mut Criterion) {
    let mut group = c.benchmark_group("request");
    let read = on_the_wire(&header(Command::Read, 1 << 20), &[]);
    assert_eq!(
        decode(&read).map(|(h, _)| h),
        Some(header(Command::Read, 1 << 20))
    );
    group.bench_function("read", |b| {
        b.iter(|| RequestHeader::parse(std::hint::black_box(&read)))
    });
    for (label, len) in [("4KiB", 4usize << 10), ("1MiB", 1 << 20)] {
        let payload: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
        let wire = on_the_wire(&header(Command::Write, len as u32), &payload);
        match decode(&wire) {
            Some((h, data)) => {
                assert_eq!(h, header(Command::Write, len as u32));
                assert!(data == payload, "payload differs after decoding");
            }
            None => panic!("a valid {label} write did not decode"),
        }
        group.throughput(Throughput::Bytes(wire.len() as u64));
        group.bench_with_input(BenchmarkId::new("write", label), &wire, |b, wire| {
            // The decoded payload is dropped outside the measurement.
            b.iter_batched(|| (), |()| decode(wire), BatchSize::SmallInput)
        });
    }
    // A header claiming more than the limit is refused before any copy.
    let oversize = on_the_wire(&header(Command::Write, MAX_REQUEST_LEN + 1), &[]);
    assert!(decode(&oversize).is_none());
    group.finish();
}

criterion_group!(benches, requests);
criterion_main!(benches);
