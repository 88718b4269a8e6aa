//! The conformance suite every backend runs.
//!
//! One set of checks encodes the rules in the [crate docs](crate): every
//! backend in this crate, and every later one (remote stores, transports,
//! pipeline stages from crate `chunks`), proves it follows them by running the
//! same suite. The checks are plain `pub async fn`s that panic with a message
//! naming the size, offset and length involved;
//! [`conformance_tests!`](crate::conformance_tests) turns them into one test
//! per check so a failing test names the broken rule.
//!
//! # Using it
//!
//! One line in a test file gives a backend the whole suite:
//!
//! ```
//! use std::sync::Arc;
//! use backends::{MemoryBackend, SharedBackend};
//!
//! backends::conformance_tests!(memory, |size| async move {
//!     Arc::new(MemoryBackend::new(size)) as SharedBackend
//! });
//! # fn main() {}
//! ```
//!
//! The macro expands to `mod memory { ... }` with one
//! `#[tokio::test(flavor = "multi_thread")]` per check, so **the calling crate
//! needs `tokio` with the `macros` and `rt-multi-thread` features** as a
//! (dev-)dependency. The generated module does `use super::*`, so names
//! imported in the test file are visible in the factory.
//!
//! # The factory
//!
//! The factory is called with a size (each of [`SIZES`], one of which is not a
//! multiple of common chunk sizes) and must return a fresh, zero-filled
//! backend of exactly that size. Checks call it several times. Anything the
//! backend needs kept alive (a temporary directory, a server task) can travel
//! with it in a [`Guarded`].
//!
//! # What is checked, and what is not
//!
//! Each check below says what it asserts. Concurrent writes are only required
//! to land intact when they are disjoint: the trait promises nothing about
//! which of two overlapping concurrent writes wins, nor that one write is
//! atomic with respect to another, so the overlapping check only asserts that
//! every byte comes from some write.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use crate::{Backend, BackendError, Result, SharedBackend};

/// The sizes [`conformance_tests!`](crate::conformance_tests) runs every
/// check with: one that is not a multiple of 4 KiB or 64 KiB, so the last
/// chunk of a chunked backend is short, and one that is.
pub const SIZES: [u64; 2] = [(1 << 20) + 1234, 1 << 20];

/// The smallest size the checks accept: smaller backends leave too little
/// room for the boundary and striping patterns to mean anything.
pub const MIN_SIZE: u64 = 4096;

/// Pins a closure's signature to the one the checks take. Without it, a
/// closure bound to a variable before its first use would have to annotate
/// its argument type.
pub fn factory<F, Fut>(f: F) -> F
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = SharedBackend>,
{
    f
}

/// Expands to a module `$name` with one multi-threaded tokio test per
/// conformance check, each run for every size in
/// [`SIZES`](crate::conformance::SIZES).
///
/// `$factory` is an expression of type `Fn(u64) -> impl Future<Output =
/// SharedBackend>`; see the [module docs](crate::conformance).
#[macro_export]
macro_rules! conformance_tests {
    ($name:ident, $factory:expr $(,)?) => {
        $crate::conformance_tests!(@module $name, $factory, [
            size_is_as_requested,
            fresh_backend_reads_zeros,
            write_read_at_chunk_boundaries,
            read_crossing_end_is_short,
            out_of_range_is_rejected_and_writes_nothing,
            empty_access_up_to_end_is_ok,
            sync_keeps_content,
            concurrent_disjoint_writes_land_intact,
            concurrent_overlapping_writes_leave_written_bytes,
        ]);
    };
    (@module $name:ident, $factory:expr, [$($check:ident),* $(,)?]) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[::tokio::test(flavor = "multi_thread")]
                async fn $check() {
                    let factory = $crate::conformance::factory($factory);
                    for size in $crate::conformance::SIZES {
                        $crate::conformance::$check(&factory, size).await;
                    }
                }
            )*
        }
    };
}

/// Runs every check for one size, in order. For callers that cannot use the
/// macro (a custom runtime, an expensive backend set up once per size).
pub async fn run_all<F, Fut>(factory: &F, size: u64)
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = SharedBackend>,
{
    size_is_as_requested(factory, size).await;
    fresh_backend_reads_zeros(factory, size).await;
    write_read_at_chunk_boundaries(factory, size).await;
    read_crossing_end_is_short(factory, size).await;
    out_of_range_is_rejected_and_writes_nothing(factory, size).await;
    empty_access_up_to_end_is_ok(factory, size).await;
    sync_keeps_content(factory, size).await;
    concurrent_disjoint_writes_land_intact(factory, size).await;
    concurrent_overlapping_writes_leave_written_bytes(factory, size).await;
}

/// A backend that keeps `guard` alive for as long as the backend lives, e.g.
/// the temporary directory its files are in, or the server it talks to.
pub struct Guarded<B, G> {
    // Declared before `guard` so it drops first: a backend's files are closed
    // before its directory is deleted, its connection before its server stops.
    inner: B,
    guard: G,
}

impl<B, G> Guarded<B, G>
where
    B: Backend + 'static,
    G: Send + Sync + 'static,
{
    /// Wraps `inner`, keeping `guard` until the wrapper is dropped.
    pub fn new(inner: B, guard: G) -> Self {
        Self { inner, guard }
    }

    /// Wraps `inner` into the shared form factories return.
    pub fn shared(inner: B, guard: G) -> SharedBackend {
        Arc::new(Self::new(inner, guard))
    }

    /// The guard.
    pub fn guard(&self) -> &G {
        &self.guard
    }
}

impl<B: fmt::Debug, G> fmt::Debug for Guarded<B, G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guarded")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<B: Backend, G: Send + Sync> Backend for Guarded<B, G> {
    async fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        self.inner.read_at(buf, offset).await
    }
    async fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
        self.inner.write_at(data, offset).await
    }
    async fn size(&self) -> Result<u64> {
        self.inner.size().await
    }
    async fn sync(&self) -> Result<()> {
        self.inner.sync().await
    }
}

/// `size()` equals the size the factory was asked for.
pub async fn size_is_as_requested<F, Fut>(factory: &F, size: u64)
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = SharedBackend>,
{
    let backend = make(factory, size).await;
    let reported = backend
        .size()
        .await
        .unwrap_or_else(|e| panic!("size {size}: size() failed: {e}"));
    assert_eq!(reported, size, "size() must equal the requested size");
}

/// A fresh backend reads zeros everywhere, and reads in the middle are never
/// short.
pub async fn fresh_backend_reads_zeros<F, Fut>(factory: &F, size: u64)
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = SharedBackend>,
{
    let backend = make(factory, size).await;
    let content = read_all(&backend, size, "fresh backend").await;
    assert_bytes_eq(
        &content,
        &vec![0; size as usize],
        0,
        &format!("size {size}: fresh backend"),
    );

    // One read of the whole backend and more returns exactly `size` bytes.
    let mut buf = vec![0xEE; size as usize + 100];
    let n = read(&backend, &mut buf, 0, size).await;
    assert_eq!(
        n,
        size as usize,
        "size {size}: read of {} bytes at 0",
        buf.len()
    );
    assert_bytes_eq(
        &buf[..n],
        &vec![0; n],
        0,
        &format!("size {size}: whole-backend read"),
    );
}

/// Writes at 4 KiB and 64 KiB multiples, across them, at offset 0 and right
/// up to the end read back exactly, and leave every other byte alone.
pub async fn write_read_at_chunk_boundaries<F, Fut>(factory: &F, size: u64)
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = SharedBackend>,
{
    let backend = make(factory, size).await;
    let mut model = vec![0u8; size as usize];
    for (i, (offset, len)) in boundary_cases(size).into_iter().enumerate() {
        let data = pattern(i as u64 + 1, offset, len as usize);
        write(&backend, &data, offset, size).await;
        model[offset as usize..(offset + len) as usize].copy_from_slice(&data);

        let mut back = vec![0; len as usize];
        let n = read(&backend, &mut back, offset, size).await;
        assert_eq!(
            n, len as usize,
            "size {size}: read back {len} bytes at {offset}"
        );
        assert_bytes_eq(
            &back,
            &data,
            offset,
            &format!("size {size}: read back of write of {len} bytes at {offset}"),
        );

        // A read with different alignment around the write sees it too, and
        // sees that the bytes next to it were not disturbed.
        let around_start = offset.saturating_sub(3);
        let around_end = (offset + len + 3).min(size);
        let mut around = vec![0; (around_end - around_start) as usize];
        read(&backend, &mut around, around_start, size).await;
        assert_bytes_eq(
            &around,
            &model[around_start as usize..around_end as usize],
            around_start,
            &format!("size {size}: read around write of {len} bytes at {offset}"),
        );
    }
    let content = read_all(&backend, size, "after boundary writes").await;
    assert_bytes_eq(
        &content,
        &model,
        0,
        &format!("size {size}: after boundary writes"),
    );
}

/// A read that crosses the end returns exactly `size - offset` bytes with the
/// right content; `read_exact_at` across the end is `OutOfRange`.
pub async fn read_crossing_end_is_short<F, Fut>(factory: &F, size: u64)
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = SharedBackend>,
{
    let backend = make(factory, size).await;
    let model = fill(&backend, size, 7).await;
    let last_4k = (size - 1) / 4096 * 4096;
    let last_64k = (size - 1) / 65536 * 65536;
    let offsets = [
        0,
        size / 2 + 1,
        last_64k,
        last_4k,
        size.saturating_sub(65536 + 3),
        size.saturating_sub(4097),
        size - 4096,
        size - 1,
    ];
    for offset in offsets {
        let remaining = size - offset;
        for extra in [1u64, 4096, 100_000] {
            let mut buf = vec![0; (remaining + extra) as usize];
            let n = read(&backend, &mut buf, offset, size).await;
            assert_eq!(
                n as u64,
                remaining,
                "size {size}: read of {} bytes at {offset} must return size - offset",
                buf.len()
            );
            assert_bytes_eq(
                &buf[..n],
                &model[offset as usize..],
                offset,
                &format!("size {size}: short read of {} bytes at {offset}", buf.len()),
            );
        }
        let mut buf = vec![0; remaining as usize + 1];
        assert_out_of_range(
            backend.read_exact_at(&mut buf, offset).await,
            format_args!(
                "size {size}: read_exact_at of {} bytes at {offset}",
                buf.len()
            ),
        );
    }
}

/// Reads and writes starting at or past the end, and writes crossing it, fail
/// with `OutOfRange` (no panic) and change nothing.
pub async fn out_of_range_is_rejected_and_writes_nothing<F, Fut>(factory: &F, size: u64)
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = SharedBackend>,
{
    let backend = make(factory, size).await;
    let model = fill(&backend, size, 11).await;

    let reads: [(u64, u64); 6] = [
        (size, 1),
        (size, 4096),
        (size + 1, 1),
        (size + 65536, 65536),
        (u64::MAX, 1),
        // Empty accesses are only valid up to and including `size`.
        (size + 1, 0),
    ];
    for (offset, len) in reads {
        let mut buf = vec![0; len as usize];
        assert_out_of_range(
            backend.read_at(&mut buf, offset).await,
            format_args!("size {size}: read of {len} bytes at {offset}"),
        );
    }

    let writes: [(u64, u64); 10] = [
        (size, 1),
        (size, 4096),
        (size + 1, 1),
        (u64::MAX, 1),
        (u64::MAX - 1, 4),
        (size + 1, 0),
        // Crossing the end: the in-range part must not be written either.
        (size - 1, 2),
        (size - 4096, 8192),
        (size.saturating_sub(65536 + 1), 65536 + 2),
        (0, size + 1),
    ];
    for (seed, (offset, len)) in writes.into_iter().enumerate() {
        let data = pattern(100 + seed as u64, offset, len as usize);
        assert_out_of_range(
            backend.write_at(&data, offset).await,
            format_args!("size {size}: write of {len} bytes at {offset}"),
        );
    }
    let content = read_all(&backend, size, "after rejected accesses").await;
    assert_bytes_eq(
        &content,
        &model,
        0,
        &format!("size {size}: rejected writes must write nothing"),
    );
}

/// Empty reads and writes are `Ok(0)` / `Ok(())` at 0, in the middle and at
/// `offset == size`, and change nothing.
pub async fn empty_access_up_to_end_is_ok<F, Fut>(factory: &F, size: u64)
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = SharedBackend>,
{
    let backend = make(factory, size).await;
    let model = fill(&backend, size, 13).await;
    for offset in [0, 4096, size / 2, size - 1, size] {
        let n = backend
            .read_at(&mut [], offset)
            .await
            .unwrap_or_else(|e| panic!("size {size}: empty read at {offset} failed: {e}"));
        assert_eq!(n, 0, "size {size}: empty read at {offset}");
        backend
            .read_exact_at(&mut [], offset)
            .await
            .unwrap_or_else(|e| panic!("size {size}: empty read_exact_at at {offset} failed: {e}"));
        backend
            .write_at(&[], offset)
            .await
            .unwrap_or_else(|e| panic!("size {size}: empty write at {offset} failed: {e}"));
    }
    let content = read_all(&backend, size, "after empty accesses").await;
    assert_bytes_eq(
        &content,
        &model,
        0,
        &format!("size {size}: after empty accesses"),
    );
}

/// `sync()` succeeds on a fresh backend, after writes and when nothing
/// changed since the last sync, and never changes content.
pub async fn sync_keeps_content<F, Fut>(factory: &F, size: u64)
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = SharedBackend>,
{
    let backend = make(factory, size).await;
    sync(&backend, size, "on a fresh backend").await;

    let mut model = vec![0u8; size as usize];
    let first = [
        (0, 4096),
        (65536 - 10, 20),
        (size / 2, 70_000),
        (size - 5000, 5000),
    ];
    for (seed, (offset, len)) in first.into_iter().enumerate() {
        let data = pattern(200 + seed as u64, offset, len);
        write(&backend, &data, offset, size).await;
        model[offset as usize..offset as usize + len].copy_from_slice(&data);
    }
    sync(&backend, size, "after writes").await;
    let content = read_all(&backend, size, "after first sync").await;
    assert_bytes_eq(
        &content,
        &model,
        0,
        &format!("size {size}: after first sync"),
    );

    // Overwrite part of what was synced, then sync twice.
    let data = pattern(300, 1000, 80_000);
    write(&backend, &data, 1000, size).await;
    model[1000..81_000].copy_from_slice(&data);
    sync(&backend, size, "after overwrite").await;
    sync(&backend, size, "with nothing written since the last sync").await;
    let content = read_all(&backend, size, "after second sync").await;
    assert_bytes_eq(
        &content,
        &model,
        0,
        &format!("size {size}: after second sync"),
    );
}

/// 32 tasks write disjoint stripes at random offsets and lengths, each reading
/// its own writes back, while 16 tasks read anywhere and a task syncs. Every
/// byte a reader sees is either zero or the byte written there; afterwards the
/// content is exactly what was written.
pub async fn concurrent_disjoint_writes_land_intact<F, Fut>(factory: &F, size: u64)
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = SharedBackend>,
{
    const WRITERS: u64 = 32;
    const READERS: u64 = 16;
    const WRITES_PER_WRITER: usize = 16;
    const MIN_READS_PER_READER: usize = 4;
    // Every writer writes the same position-derived bytes, so a reader knows
    // the only two values a byte may hold, whichever writes have landed.
    const SEED: u64 = 0xC0FFEE;

    let backend = make(factory, size).await;
    let done = Arc::new(AtomicBool::new(false));

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let backend = backend.clone();
        let start = size * w / WRITERS;
        let end = size * (w + 1) / WRITERS;
        writers.push(tokio::spawn(async move {
            let mut rng = Rng::new(w + 1);
            let stripe_len = end - start;
            let mut written = vec![false; stripe_len as usize];
            for _ in 0..WRITES_PER_WRITER {
                let offset = start + rng.below(stripe_len);
                let len = 1 + rng.below(end - offset);
                let data = pattern(SEED, offset, len as usize);
                write(&backend, &data, offset, size).await;
                let first = (offset - start) as usize;
                written[first..first + len as usize].fill(true);

                // Nobody else writes this stripe, so the write must read back.
                let mut back = vec![0; len as usize];
                read(&backend, &mut back, offset, size).await;
                assert_bytes_eq(
                    &back,
                    &data,
                    offset,
                    &format!("size {size}: writer {w} reading back {len} bytes at {offset}"),
                );
                tokio::task::yield_now().await;
            }
            (start, written)
        }));
    }

    let mut readers = Vec::new();
    for r in 0..READERS {
        let backend = backend.clone();
        let done = done.clone();
        readers.push(tokio::spawn(async move {
            let mut rng = Rng::new(1000 + r);
            let mut reads = 0;
            while reads < MIN_READS_PER_READER || !done.load(Ordering::Acquire) {
                let offset = rng.below(size);
                // Lengths up to 192 KiB: some reads cross the end.
                let len = 1 + rng.below(3 * 65536);
                let mut buf = vec![0; len as usize];
                let n = read(&backend, &mut buf, offset, size).await;
                assert_eq!(
                    n as u64,
                    len.min(size - offset),
                    "size {size}: concurrent read of {len} bytes at {offset}"
                );
                for (i, &byte) in buf[..n].iter().enumerate() {
                    let pos = offset + i as u64;
                    let expected = pattern_byte(SEED, pos);
                    assert!(
                        byte == 0 || byte == expected,
                        "size {size}: concurrent read of {len} bytes at {offset} saw {byte:#04x} \
                         at offset {pos}; only 0x00 (unwritten) or {expected:#04x} were ever there"
                    );
                }
                reads += 1;
                tokio::task::yield_now().await;
            }
            reads
        }));
    }

    let syncer = {
        let backend = backend.clone();
        tokio::spawn(async move {
            for _ in 0..3 {
                sync(&backend, size, "concurrently with writes").await;
                tokio::task::yield_now().await;
            }
        })
    };

    let mut model = vec![0u8; size as usize];
    for writer in writers {
        let (start, written) = join(writer).await;
        for (i, was_written) in written.into_iter().enumerate() {
            if was_written {
                let pos = start + i as u64;
                model[pos as usize] = pattern_byte(SEED, pos);
            }
        }
    }
    done.store(true, Ordering::Release);
    for reader in readers {
        join(reader).await;
    }
    join(syncer).await;

    let content = read_all(&backend, size, "after concurrent writes").await;
    assert_bytes_eq(
        &content,
        &model,
        0,
        &format!("size {size}: after {WRITERS} concurrent disjoint writers"),
    );
}

/// 8 tasks each write their own version of the same blocks (12 KiB + 7 bytes,
/// unaligned, one ending at the end), in rotated orders. Afterwards every byte
/// of every block equals the byte some version has there; no zeros, no
/// garbage. Then quiescent rewrites read back exactly.
pub async fn concurrent_overlapping_writes_leave_written_bytes<F, Fut>(factory: &F, size: u64)
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = SharedBackend>,
{
    const VERSIONS: u64 = 8;
    const ROUNDS: usize = 4;
    let block_len = (12 * 1024 + 7).min(size / 4);

    let backend = make(factory, size).await;
    // Blocks straddle 4 KiB boundaries and (the first) a 64 KiB boundary; the
    // last one ends exactly at the end.
    let mut blocks: Vec<u64> = (0..4)
        .map(|i| 65536 - 3 + i * (block_len + 1000))
        .filter(|&offset| offset + block_len <= size - block_len)
        .collect();
    blocks.push(size - block_len);
    let blocks = Arc::new(blocks);

    let mut writers = Vec::new();
    for v in 0..VERSIONS {
        let backend = backend.clone();
        let blocks = blocks.clone();
        writers.push(tokio::spawn(async move {
            for round in 0..ROUNDS {
                for k in 0..blocks.len() {
                    let offset = blocks[(k + v as usize + round) % blocks.len()];
                    let data = pattern(500 + v, offset, block_len as usize);
                    write(&backend, &data, offset, size).await;
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for writer in writers {
        join(writer).await;
    }

    for &offset in blocks.iter() {
        let mut buf = vec![0; block_len as usize];
        read(&backend, &mut buf, offset, size).await;
        for (i, &byte) in buf.iter().enumerate() {
            let pos = offset + i as u64;
            let allowed: Vec<u8> = (0..VERSIONS).map(|v| pattern_byte(500 + v, pos)).collect();
            assert!(
                allowed.contains(&byte),
                "size {size}: after overlapping writes of {block_len} bytes at {offset}, \
                 offset {pos} holds {byte:#04x}, which no write put there (allowed: {allowed:02x?})"
            );
        }
    }

    // Contention must not leave the backend in a state where a plain write
    // no longer reads back.
    for (k, &offset) in blocks.iter().enumerate() {
        let data = pattern(900 + k as u64, offset, block_len as usize);
        write(&backend, &data, offset, size).await;
        let mut back = vec![0; block_len as usize];
        read(&backend, &mut back, offset, size).await;
        assert_bytes_eq(
            &back,
            &data,
            offset,
            &format!("size {size}: rewrite of {block_len} bytes at {offset} after contention"),
        );
    }
}

/// The byte [`pattern`] puts at `pos` for `seed`; never zero, so a write that
/// did not land is told apart from one that did.
pub fn pattern_byte(seed: u64, pos: u64) -> u8 {
    // SplitMix64 finalizer: neighbouring positions and seeds give unrelated
    // bytes, so shifted or swapped data does not match by accident.
    let mut x = pos ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (x % 255) as u8 + 1
}

/// `len` bytes of deterministic data for backend offset `offset`: byte `i` is
/// `pattern_byte(seed, offset + i)`, so data written at the wrong offset does
/// not match what is expected there.
pub fn pattern(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| pattern_byte(seed, offset.wrapping_add(i)))
        .collect()
}

/// A small deterministic generator, so a failing run repeats exactly.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut x = self.0;
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^ (x >> 31)
    }

    /// A value in `0..bound`; `bound` must be positive.
    fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }
}

async fn make<F, Fut>(factory: &F, size: u64) -> SharedBackend
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = SharedBackend>,
{
    assert!(
        size >= MIN_SIZE,
        "conformance checks need a size of at least {MIN_SIZE} bytes, got {size}"
    );
    factory(size).await
}

async fn read(backend: &SharedBackend, buf: &mut [u8], offset: u64, size: u64) -> usize {
    let len = buf.len();
    backend
        .read_at(buf, offset)
        .await
        .unwrap_or_else(|e| panic!("size {size}: read of {len} bytes at {offset} failed: {e}"))
}

async fn write(backend: &SharedBackend, data: &[u8], offset: u64, size: u64) {
    backend.write_at(data, offset).await.unwrap_or_else(|e| {
        panic!(
            "size {size}: write of {} bytes at {offset} failed: {e}",
            data.len()
        )
    })
}

async fn sync(backend: &SharedBackend, size: u64, when: &str) {
    backend
        .sync()
        .await
        .unwrap_or_else(|e| panic!("size {size}: sync {when} failed: {e}"));
}

/// Reads the whole backend in pieces that do not line up with common chunk
/// sizes, checking that no read before the end is short.
async fn read_all(backend: &SharedBackend, size: u64, when: &str) -> Vec<u8> {
    const PIECE: u64 = 3 * 65536 + 13;
    let mut content = vec![0u8; size as usize];
    let mut offset = 0;
    while offset < size {
        let end = (offset + PIECE).min(size);
        let buf = &mut content[offset as usize..end as usize];
        let n = read(backend, buf, offset, size).await;
        assert_eq!(
            n as u64,
            end - offset,
            "size {size}: read of {} bytes at {offset} ({when}) was short before the end",
            end - offset
        );
        offset = end;
    }
    content
}

/// Fills the whole backend with `pattern(seed, ..)` and returns the content.
async fn fill(backend: &SharedBackend, size: u64, seed: u64) -> Vec<u8> {
    let data = pattern(seed, 0, size as usize);
    write(backend, &data, 0, size).await;
    data
}

/// Accesses at, around and across 4 KiB and 64 KiB boundaries, at offset 0 and
/// up to the end; only those that fit in `size` are kept.
fn boundary_cases(size: u64) -> Vec<(u64, u64)> {
    let mut cases = vec![(0, 1), (0, 4096), (0, 65536 + 1)];
    for boundary in [4096, 8192, 12288, 65536, 2 * 65536, 3 * 65536] {
        cases.extend([
            (boundary, 4096),
            (boundary, 65536),
            (boundary - 1, 2),
            (boundary - 100, 4096 + 200),
        ]);
    }
    cases.push((65536 - 17, 3 * 65536 + 34));
    let last_4k = (size - 1) / 4096 * 4096;
    let last_64k = (size - 1) / 65536 * 65536;
    cases.extend([
        (size - 1, 1),
        (size.saturating_sub(4096), 4096),
        (size.saturating_sub(4097), 4097),
        (size.saturating_sub(65536 + 5), 65536 + 5),
        (last_4k, size - last_4k),
        (last_64k, size - last_64k),
        (last_4k.saturating_sub(1), size - last_4k + 1),
    ]);
    cases.retain(|&(offset, len)| len > 0 && offset + len <= size);
    cases
}

#[track_caller]
fn assert_out_of_range<T: fmt::Debug>(result: Result<T>, what: fmt::Arguments<'_>) {
    match result {
        Err(BackendError::OutOfRange { .. }) => {}
        other => panic!("{what}: expected Err(BackendError::OutOfRange), got {other:?}"),
    }
}

/// Compares byte strings without printing megabytes: names how many bytes
/// differ and where the first and last differences are.
#[track_caller]
fn assert_bytes_eq(actual: &[u8], expected: &[u8], base: u64, what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths differ");
    if actual == expected {
        return;
    }
    let differing: Vec<usize> = (0..actual.len())
        .filter(|&i| actual[i] != expected[i])
        .collect();
    let (first, last) = (differing[0], differing[differing.len() - 1]);
    panic!(
        "{what}: {} of {} bytes differ, from offset {} (got {:#04x}, expected {:#04x}) \
         to offset {} (got {:#04x}, expected {:#04x})",
        differing.len(),
        actual.len(),
        base + first as u64,
        actual[first],
        expected[first],
        base + last as u64,
        actual[last],
        expected[last],
    );
}

/// Awaits a spawned task, re-raising its panic so the test shows the check's
/// own message rather than a generic join error.
async fn join<T>(handle: tokio::task::JoinHandle<T>) -> T {
    match handle.await {
        Ok(value) => value,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("conformance task did not finish: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundary_cases_fit_and_reach_the_end() {
        for size in SIZES {
            let cases = boundary_cases(size);
            assert!(cases.iter().all(|&(o, l)| l > 0 && o + l <= size));
            assert!(cases.iter().any(|&(o, _)| o == 0));
            assert!(cases.iter().any(|&(o, l)| o + l == size));
            assert!(cases
                .iter()
                .any(|&(o, l)| o % 65536 != 0 && (o + l) / 65536 > o / 65536));
        }
    }

    #[test]
    fn pattern_depends_on_position_and_seed_and_is_never_zero() {
        let a = pattern(1, 0, 4096);
        assert!(a.iter().all(|&b| b != 0));
        assert_ne!(a, pattern(2, 0, 4096));
        assert_ne!(a, pattern(1, 1, 4096));
        assert_eq!(&a[100..], &pattern(1, 100, 3996)[..]);
    }

    #[test]
    #[should_panic(expected = "2 of 4 bytes differ, from offset 11")]
    fn assert_bytes_eq_names_the_differences() {
        assert_bytes_eq(&[0, 1, 2, 3], &[0, 9, 2, 9], 10, "demo");
    }

    /// Forgets every write: the suite must notice.
    #[derive(Debug)]
    struct Forgetful(crate::MemoryBackend);

    #[async_trait]
    impl Backend for Forgetful {
        async fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
            self.0.read_at(buf, offset).await
        }
        async fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
            crate::check_range(offset, data.len() as u64, self.0.size().await?, true)?;
            Ok(())
        }
        async fn size(&self) -> Result<u64> {
            self.0.size().await
        }
        async fn sync(&self) -> Result<()> {
            Ok(())
        }
    }

    /// Writes everything one byte later than asked (clamped at the end).
    #[derive(Debug)]
    struct Shifted(crate::MemoryBackend);

    #[async_trait]
    impl Backend for Shifted {
        async fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
            self.0.read_at(buf, offset).await
        }
        async fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
            let size = self.0.size().await?;
            crate::check_range(offset, data.len() as u64, size, true)?;
            let shifted = (offset + 1).min(size - data.len() as u64);
            self.0.write_at(data, shifted).await
        }
        async fn size(&self) -> Result<u64> {
            self.0.size().await
        }
        async fn sync(&self) -> Result<()> {
            Ok(())
        }
    }

    /// Accepts writes that cross the end by writing the part that fits.
    #[derive(Debug)]
    struct Clipping(crate::MemoryBackend);

    #[async_trait]
    impl Backend for Clipping {
        async fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
            self.0.read_at(buf, offset).await
        }
        async fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
            let size = self.0.size().await?;
            let n = crate::check_range(offset, data.len() as u64, size, false)? as usize;
            self.0.write_at(&data[..n], offset).await
        }
        async fn size(&self) -> Result<u64> {
            self.0.size().await
        }
        async fn sync(&self) -> Result<()> {
            Ok(())
        }
    }

    async fn fails<Fut: Future<Output = ()> + Send + 'static>(check: Fut) -> bool {
        tokio::spawn(check).await.is_err()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_suite_catches_broken_backends() {
        let size = SIZES[0];
        let forgetful = factory(|size| async move {
            Arc::new(Forgetful(crate::MemoryBackend::new(size))) as SharedBackend
        });
        let shifted = factory(|size| async move {
            Arc::new(Shifted(crate::MemoryBackend::new(size))) as SharedBackend
        });
        let clipping = factory(|size| async move {
            Arc::new(Clipping(crate::MemoryBackend::new(size))) as SharedBackend
        });

        assert!(fails(async move { write_read_at_chunk_boundaries(&forgetful, size).await }).await);
        assert!(
            fails(async move { concurrent_disjoint_writes_land_intact(&forgetful, size).await })
                .await
        );
        assert!(fails(async move { write_read_at_chunk_boundaries(&shifted, size).await }).await);
        assert!(
            fails(async move {
                concurrent_overlapping_writes_leave_written_bytes(&shifted, size).await
            })
            .await
        );
        assert!(
            fails(
                async move { out_of_range_is_rejected_and_writes_nothing(&clipping, size).await }
            )
            .await
        );
        // A correct backend passes the same checks.
        let memory =
            factory(
                |size| async move { Arc::new(crate::MemoryBackend::new(size)) as SharedBackend },
            );
        run_all(&memory, size).await;
    }
}
