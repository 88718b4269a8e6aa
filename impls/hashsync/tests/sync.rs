//! A written region syncs to an identical copy: every algorithm, growth and
//! truncation, over a file peer and over every transport that carries
//! writes.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::Arc;

use backends::MemoryBackend;
use hashsync::{
    Algorithm, BackendSink, DeltaError, FileSink, HashList, SinkError, SyncConfig, SyncError,
    SyncSource,
};
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;
use transports::{Services, TransportConfig, TransportKind};

const CHUNK: usize = 4096;

fn config(algorithm: Algorithm) -> SyncConfig {
    SyncConfig {
        threads: NonZeroUsize::new(3).unwrap(),
        ..SyncConfig::new(CHUNK, algorithm)
    }
}

fn region_file(dir: &Path, len: usize) -> std::path::PathBuf {
    let path = dir.join("region");
    std::fs::write(&path, vec![0u8; len]).unwrap();
    path
}

/// Writes `n` random bytes at random places; returns the chunks touched.
fn scribble(region: &mut [u8], rng: &mut impl Rng, n: usize) -> std::collections::BTreeSet<usize> {
    let mut touched = std::collections::BTreeSet::new();
    for _ in 0..n {
        let at = rng.random_range(0..region.len());
        region[at] = region[at].wrapping_add(rng.random_range(1..=255));
        touched.insert(at / CHUNK);
    }
    touched
}

#[tokio::test]
async fn random_writes_sync_to_an_identical_copy_for_every_algorithm() {
    for algorithm in Algorithm::ALL {
        let dir = tempfile::tempdir().unwrap();
        let path = region_file(dir.path(), 1 << 20);
        let mut source = SyncSource::open(&path, config(algorithm)).unwrap();
        let peer = FileSink::open(&dir.path().join("copy")).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        scribble(source.region_mut(), &mut rng, 50);

        let first = source.cycle(&peer).await.unwrap();
        assert_eq!(first.chunks_sent, 256, "{algorithm}: unknown peer gets all");
        assert!(first.resized, "the copy started empty");
        assert_eq!(peer.contents().unwrap(), source.region(), "{algorithm}");

        let idle = source.cycle(&peer).await.unwrap();
        assert_eq!(
            (idle.chunks_sent, idle.bytes_sent),
            (0, 0),
            "{algorithm}: nothing changed"
        );

        for round in 0..3 {
            let touched = scribble(source.region_mut(), &mut rng, 40);
            let report = source.cycle(&peer).await.unwrap();
            assert_eq!(
                report.chunks_sent,
                touched.len(),
                "{algorithm} round {round}"
            );
            assert_eq!(
                peer.contents().unwrap(),
                source.region(),
                "{algorithm} round {round}"
            );
        }
    }
}

#[tokio::test]
async fn growth_and_truncation_reach_the_peer() {
    let dir = tempfile::tempdir().unwrap();
    let path = region_file(dir.path(), 10_000);
    let mut source = SyncSource::open(&path, config(Algorithm::Crc32)).unwrap();
    let peer = FileSink::open(&dir.path().join("copy")).unwrap();
    source.region_mut().fill(1);
    source.cycle(&peer).await.unwrap();

    // Grown by the application in this process.
    source.set_len(50_000).unwrap();
    source.region_mut()[40_000..].fill(2);
    let grown = source.cycle(&peer).await.unwrap();
    assert!(grown.resized);
    assert_eq!(peer.contents().unwrap(), source.region());
    assert_eq!(peer.contents().unwrap().len(), 50_000);

    // Truncated by someone else: the next cycle notices and follows.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(6_000)
        .unwrap();
    let shrunk = source.cycle(&peer).await.unwrap();
    assert!(shrunk.resized);
    assert_eq!(shrunk.chunks_sent, 1, "only the new short last chunk");
    assert_eq!(peer.contents().unwrap(), vec![1u8; 6_000]);

    // To nothing and back.
    source.set_len(0).unwrap();
    assert_eq!(source.cycle(&peer).await.unwrap().chunks, 0);
    assert!(peer.contents().unwrap().is_empty());
    source.set_len(5).unwrap();
    source.region_mut().copy_from_slice(b"hello");
    source.cycle(&peer).await.unwrap();
    assert_eq!(peer.contents().unwrap(), b"hello");
}

#[tokio::test]
async fn receiver_hashes_limit_the_first_cycle_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = region_file(dir.path(), 64 * CHUNK);
    std::fs::write(dir.path().join("copy"), vec![0u8; 64 * CHUNK]).unwrap();
    let peer = FileSink::open(&dir.path().join("copy")).unwrap();
    let mut source = SyncSource::open(&path, config(Algorithm::Blake3)).unwrap();
    source.region_mut()[5 * CHUNK + 1] = 1;
    source.region_mut()[60 * CHUNK] = 1;

    let advertised = peer
        .hashes(CHUNK, Algorithm::Blake3, NonZeroUsize::MIN)
        .unwrap()
        .encode();
    source.set_peer_hashes(HashList::decode(&advertised, 1 << 30).unwrap());
    let report = source.cycle(&peer).await.unwrap();
    assert_eq!(report.chunks_sent, 2);
    assert_eq!(peer.contents().unwrap(), source.region());

    // A plan taken as sent without sending: the next one compares with it.
    source.region_mut()[7 * CHUNK] = 1;
    let plan = source.plan().unwrap();
    assert_eq!(plan.delta().chunks, vec![7]);
    source.mark_sent(plan);
    source.region_mut()[9 * CHUNK] = 1;
    assert_eq!(source.plan().unwrap().delta().chunks, vec![9]);

    // A peer hashing with another algorithm or chunk size is refused, and
    // nothing is sent.
    let wrong = peer
        .hashes(CHUNK, Algorithm::Sha256, NonZeroUsize::MIN)
        .unwrap();
    source.set_peer_hashes(wrong);
    source.region_mut()[0] = 9;
    let err = source.cycle(&peer).await.unwrap_err();
    assert!(
        matches!(err, SyncError::Delta(DeltaError::Algorithm { .. })),
        "{err}"
    );
    assert_eq!(peer.contents().unwrap()[0], 0);
    let coarse = peer
        .hashes(2 * CHUNK, Algorithm::Blake3, NonZeroUsize::MIN)
        .unwrap();
    source.set_peer_hashes(coarse);
    assert!(matches!(
        source.cycle(&peer).await,
        Err(SyncError::Delta(DeltaError::ChunkSize { .. }))
    ));
    // A bad chunk size in the configuration is refused at open.
    let bad = SyncConfig::new(1000, Algorithm::Crc32);
    assert!(matches!(
        SyncSource::open(&path, bad),
        Err(SyncError::ChunkSize(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_over_every_transport_that_writes() {
    let len = 256 * CHUNK;
    for kind in TransportKind::ALL {
        if kind == TransportKind::Raw {
            continue; // the raw TCP baseline carries reads only
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let remote = Arc::new(MemoryBackend::new(len as u64));
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(kind.serve(
            listener,
            Services::backend(remote.clone()),
            TransportConfig::default(),
            shutdown.clone(),
        ));
        let client = kind
            .connect(addr, &TransportConfig::default())
            .await
            .unwrap();
        let sink = BackendSink(client.backend());

        let dir = tempfile::tempdir().unwrap();
        let path = region_file(dir.path(), len);
        let mut source = SyncSource::open(&path, config(Algorithm::Xxh3)).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        // The remote starts as zeros, and so does the region: say so.
        source.set_peer_hashes(
            HashList::compute(&vec![0u8; len], CHUNK, Algorithm::Xxh3, NonZeroUsize::MIN).unwrap(),
        );
        for round in 0..3 {
            let touched = scribble(source.region_mut(), &mut rng, 30);
            let report = source.cycle(&sink).await.unwrap();
            assert_eq!(report.chunks_sent, touched.len(), "{kind} round {round}");
            assert_eq!(remote.snapshot(), source.region(), "{kind} round {round}");
        }
        // The backend service has a fixed size.
        source.set_len(len as u64 + 1).unwrap();
        let err = source.cycle(&sink).await.unwrap_err();
        assert!(
            matches!(err, SyncError::Sink(SinkError::FixedSize { .. })),
            "{kind}: {err}"
        );
        drop(sink);
        drop(client);
        shutdown.cancel();
        server.await.unwrap().unwrap();
    }
}
