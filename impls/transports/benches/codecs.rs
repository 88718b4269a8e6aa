//! Encode and decode of a `ReadAt` reply, per codec, at 4 KiB and 1 MiB.
//!
//! Each codec is driven through the functions its transport really uses:
//! frpc's `Reply::encode`/`Reply::parse`, jsonl's reply line, prost's
//! `DataReply` (tonic adds only a 5-byte prefix), tarpc's bincode
//! `Response` through tokio-serde, and the raw baseline's length word.
//! "encode" ends with the reply as contiguous bytes ready for the socket;
//! "decode" starts from those bytes and ends with the payload as `Bytes`.

use std::pin::Pin;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use prost::Message as _;
use tarpc::tokio_serde::formats::Bincode;
use tarpc::tokio_serde::{Deserializer, Serializer};

use transports::grpc::pb;
use transports::tarpc_rpc::RemoteResponse;
use transports::wire::{Reply, Status};
use transports::{jsonl, raw, Outcome, DEFAULT_MAX_MESSAGE};

type TarpcReply = tarpc::Response<RemoteResponse>;

fn payload(len: usize) -> Bytes {
    (0..len).map(|i| (i * 31 + 7) as u8).collect()
}

fn frpc_encode(data: &Bytes) -> Bytes {
    let mut out = BytesMut::new();
    Reply::encode(&mut out, 42, Status::Ok, data);
    out.freeze()
}

fn frpc_decode(mut buf: BytesMut) -> Bytes {
    match Reply::parse(&mut buf, DEFAULT_MAX_MESSAGE) {
        Ok(reply) => reply.body,
        Err(e) => panic!("frpc decode: {e}"),
    }
}

fn jsonl_encode(data: &Bytes) -> Bytes {
    jsonl::encode_reply(42, Ok(Outcome::Data(data.clone())))
}

fn jsonl_decode(line: BytesMut) -> Bytes {
    match jsonl::decode_reply(line.strip_suffix(b"\n").unwrap_or(&line)) {
        Ok((_, Ok(Outcome::Data(data)))) => data,
        other => panic!("jsonl decode: {other:?}"),
    }
}

fn grpc_encode(data: &Bytes) -> Bytes {
    let reply = pb::DataReply {
        data: data.clone(),
        error: None,
    };
    Bytes::from(reply.encode_to_vec())
}

fn grpc_decode(message: BytesMut) -> Bytes {
    match pb::DataReply::decode(message.freeze()) {
        Ok(reply) => reply.data,
        Err(e) => panic!("grpc decode: {e}"),
    }
}

fn tarpc_encode(data: &Bytes) -> Bytes {
    let reply = TarpcReply {
        request_id: 42,
        message: Ok(RemoteResponse::ReadAt(Ok(data.clone()))),
    };
    let mut codec = Bincode::<TarpcReply, TarpcReply>::default();
    match Pin::new(&mut codec).serialize(&reply) {
        Ok(bytes) => bytes,
        Err(e) => panic!("tarpc encode: {e}"),
    }
}

fn tarpc_decode(frame: BytesMut) -> Bytes {
    let mut codec = Bincode::<TarpcReply, TarpcReply>::default();
    match Pin::new(&mut codec).deserialize(&frame) {
        Ok(TarpcReply {
            message: Ok(RemoteResponse::ReadAt(Ok(data))),
            ..
        }) => data,
        Ok(_) => panic!("tarpc decode: not a ReadAt reply"),
        Err(e) => panic!("tarpc decode: {e}"),
    }
}

/// The raw baseline's reply: a u32 length word, then the data.
fn raw_encode(data: &Bytes) -> Bytes {
    let mut out = BytesMut::with_capacity(4 + data.len());
    out.put_u32_le(data.len() as u32);
    out.put_slice(data);
    out.freeze()
}

fn raw_decode(reply: BytesMut) -> Bytes {
    let mut reply = reply.freeze();
    let word = reply.get_u32_le();
    assert_eq!(word & raw::ERROR_BIT, 0, "raw decode: an error reply");
    reply.split_to(word as usize)
}

/// Name, encode (payload to wire bytes), decode (a receive buffer holding
/// the wire bytes to the payload).
type Codec = (&'static str, fn(&Bytes) -> Bytes, fn(BytesMut) -> Bytes);

const CODECS: [Codec; 5] = [
    ("frpc", frpc_encode, frpc_decode),
    ("jsonl", jsonl_encode, jsonl_decode),
    ("grpc", grpc_encode, grpc_decode),
    ("tarpc", tarpc_encode, tarpc_decode),
    ("raw", raw_encode, raw_decode),
];

fn read_at_reply(c: &mut Criterion) {
    for (label, len) in [("4KiB", 4 << 10), ("1MiB", 1 << 20)] {
        let data = payload(len);
        let mut group = c.benchmark_group(format!("read_at_reply/{label}"));
        group.throughput(Throughput::Bytes(len as u64));
        for (name, encode, decode) in CODECS {
            let encoded = encode(&data);
            assert_eq!(
                decode(BytesMut::from(&encoded[..])),
                data,
                "{name} does not round-trip"
            );
            group.bench_with_input(BenchmarkId::new("encode", name), &data, |b, data| {
                b.iter(|| encode(std::hint::black_box(data)))
            });
            // The receive buffer is filled outside the measurement, as the
            // socket fills it.
            group.bench_with_input(BenchmarkId::new("decode", name), &encoded, |b, encoded| {
                b.iter_batched(
                    || BytesMut::from(&encoded[..]),
                    decode,
                    BatchSize::LargeInput,
                )
            });
        }
        group.finish();
    }
}

criterion_group!(benches, read_at_reply);
criterion_main!(benches);
