//! The pipeline stages over memory backends, at a small (4 KiB) and a large
//! (1 MiB) access, so a benchmark measures the stage and not a network.
//!
//! - `arbitrary/read_unaligned`: a read that starts mid-chunk and ends
//!   mid-chunk (two partial chunks, the rest whole), over 64 KiB chunks.
//! - `arbitrary/write_unaligned`: the same as a write (read-modify-write of
//!   the two partial chunks).
//! - `chunked/read`: one whole chunk of the access's size.
//! - `synced/read_local`: a read of chunks already local (the cache hit).
//! - `synced/read_pull`: the first read of chunks still remote: pulled,
//!   written locally, then served (a fresh stage per iteration, built
//!   outside the measurement).
//! - `tracking/write`: a write that marks its chunks dirty.
//! - `puller/pull_all`: 8 MiB pulled by 16 workers, 64 KiB chunks.
//!
//! Every benchmark checks its bytes once before it is measured, so a stage
//! that gets fast by returning the wrong bytes fails instead.

use std::sync::Arc;

use backends::{Backend, MemoryBackend, SharedBackend};
use chunks::{
    ArbitraryReadWriterAt, ChunkedReadWriterAt, PullHeuristic, Puller, SyncedReadWriterAt,
    TrackingReadWriterAt,
};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use tokio::runtime::Runtime;

const CHUNK: u64 = 64 << 10;
const REGION: u64 = 8 << 20;
const SIZES: [(&str, usize); 2] = [("4KiB", 4 << 10), ("1MiB", 1 << 20)];

fn pattern(len: u64) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + 7) as u8).collect()
}

fn runtime() -> Runtime {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("building the tokio runtime: {e}"),
    }
}

fn ok<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e}"),
    }
}

fn remote() -> Arc<MemoryBackend> {
    Arc::new(MemoryBackend::from_bytes(pattern(REGION)))
}

/// A synced stage over a fresh remote and local, every chunk still remote.
fn fresh_synced(rt: &Runtime) -> SyncedReadWriterAt {
    let remote: SharedBackend = remote();
    let local: SharedBackend = Arc::new(MemoryBackend::new(REGION));
    ok(
        "synced stage",
        rt.block_on(SyncedReadWriterAt::new(remote, local, CHUNK)),
    )
}

fn arbitrary(c: &mut Criterion) {
    let rt = runtime();
    let source = pattern(REGION);
    let mut group = c.benchmark_group("arbitrary");
    for (label, len) in SIZES {
        // A fresh region per size: the write benchmark changes the bytes.
        let stage = ok(
            "arbitrary stage",
            rt.block_on(ArbitraryReadWriterAt::new(remote(), CHUNK)),
        );
        group.throughput(Throughput::Bytes(len as u64));
        // Starts 100 bytes into a chunk: both ends are partial chunks.
        let offset = CHUNK + 100;
        let mut buf = vec![0u8; len];
        ok("read", rt.block_on(stage.read_exact_at(&mut buf, offset)));
        assert!(
            buf[..] == source[offset as usize..offset as usize + len],
            "{label} read returned other bytes than the source's"
        );
        group.bench_function(BenchmarkId::new("read_unaligned", label), |b| {
            b.iter(|| rt.block_on(stage.read_exact_at(&mut buf, offset)))
        });
        let data = vec![0x5a; len];
        group.bench_function(BenchmarkId::new("write_unaligned", label), |b| {
            b.iter(|| rt.block_on(stage.write_at(&data, offset)))
        });
        ok(
            "read back",
            rt.block_on(stage.read_exact_at(&mut buf, offset)),
        );
        assert!(buf.iter().all(|&x| x == 0x5a), "write did not land");
    }
    group.finish();
}

fn chunked(c: &mut Criterion) {
    let rt = runtime();
    let source = pattern(REGION);
    let mut group = c.benchmark_group("chunked");
    for (label, len) in SIZES {
        group.throughput(Throughput::Bytes(len as u64));
        let stage = ok(
            "chunked stage",
            rt.block_on(ChunkedReadWriterAt::new(remote(), len as u64)),
        );
        let offset = 2 * len as u64;
        let mut buf = vec![0u8; len];
        ok("read", rt.block_on(stage.read_exact_at(&mut buf, offset)));
        assert!(
            buf[..] == source[offset as usize..offset as usize + len],
            "{label} read returned other bytes than the source's"
        );
        group.bench_function(BenchmarkId::new("read", label), |b| {
            b.iter(|| rt.block_on(stage.read_exact_at(&mut buf, offset)))
        });
    }
    group.finish();
}

fn synced(c: &mut Criterion) {
    let rt = runtime();
    let source = pattern(REGION);
    let mut group = c.benchmark_group("synced");
    for (label, len) in SIZES {
        group.throughput(Throughput::Bytes(len as u64));
        let offset = CHUNK;
        let mut buf = vec![0u8; len];

        let warm = fresh_synced(&rt);
        ok(
            "first read",
            rt.block_on(warm.read_exact_at(&mut buf, offset)),
        );
        assert!(
            buf[..] == source[offset as usize..offset as usize + len],
            "{label} read returned other bytes than the source's"
        );
        group.bench_function(BenchmarkId::new("read_local", label), |b| {
            b.iter(|| rt.block_on(warm.read_exact_at(&mut buf, offset)))
        });

        group.bench_function(BenchmarkId::new("read_pull", label), |b| {
            b.iter_batched(
                || fresh_synced(&rt),
                |cold| {
                    rt.block_on(cold.read_exact_at(&mut buf, offset))?;
                    // Dropped inside the measurement would time the
                    // allocator freeing 16 MiB; hand it back instead.
                    Ok::<_, backends::BackendError>(cold)
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

fn tracking(c: &mut Criterion) {
    let rt = runtime();
    let inner = remote();
    let stage = ok(
        "tracking stage",
        rt.block_on(TrackingReadWriterAt::new(inner.clone(), CHUNK)),
    );
    stage.track();
    let mut group = c.benchmark_group("tracking");
    for (label, len) in SIZES {
        group.throughput(Throughput::Bytes(len as u64));
        let data = vec![0xa5; len];
        let offset = 3 * CHUNK;
        ok("write", rt.block_on(stage.write_at(&data, offset)));
        assert!(inner.bytes()[offset as usize..offset as usize + len]
            .iter()
            .all(|&x| x == 0xa5));
        group.bench_function(BenchmarkId::new("write", label), |b| {
            b.iter(|| rt.block_on(stage.write_at(&data, offset)))
        });
    }
    group.finish();
}

fn puller(c: &mut Criterion) {
    let rt = runtime();
    let source = pattern(REGION);
    let pull_all = |synced: Arc<SyncedReadWriterAt>| {
        rt.block_on(async {
            let puller = Puller::start(synced, CHUNK, REGION, 16, PullHeuristic::Linear)?;
            puller.wait().await
        })
    };
    {
        let synced = Arc::new(fresh_synced(&rt));
        ok("pull", pull_all(synced.clone()));
        let mut all = vec![0u8; REGION as usize];
        ok("read", rt.block_on(synced.read_exact_at(&mut all, 0)));
        assert!(all == source, "pulled bytes differ from the source");
    }
    let mut group = c.benchmark_group("puller");
    group.throughput(Throughput::Bytes(REGION));
    group.sample_size(20);
    group.bench_function("pull_all/8MiB", |b| {
        b.iter_batched(
            || Arc::new(fresh_synced(&rt)),
            |synced| pull_all(synced.clone()).map(|_| synced),
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, arbitrary, chunked, synced, tracking, puller);
criterion_main!(benches);
