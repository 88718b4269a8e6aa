//! The stages composed into the managed pipeline of the thesis:
//! `Puller -> Arbitrary -> Synced(remote, Pusher(local, remote))`.

use std::sync::Arc;

use backends::conformance::pattern;
use backends::testing::Probe;
use backends::{Backend, MemoryBackend};

use crate::{
    ArbitraryReadWriterAt, PullHeuristic, Puller, Pushable, Pusher, PusherOptions,
    SyncedReadWriterAt,
};

const CHUNK: u64 = 64;
const SIZE: u64 = 64 * 16 + 10;

struct Pipeline {
    remote: Arc<Probe>,
    pusher: Arc<Pusher>,
    synced: Arc<SyncedReadWriterAt>,
    mount: ArbitraryReadWriterAt,
}

async fn pipeline() -> Pipeline {
    let remote = Arc::new(Probe::memory(pattern(17, 0, SIZE as usize)));
    let local = Arc::new(MemoryBackend::new(SIZE));
    let options = PusherOptions {
        pushable: Pushable::Marked,
        interval: std::time::Duration::from_secs(3600),
        ..PusherOptions::new(CHUNK)
    };
    let pusher = Arc::new(Pusher::start(local, remote.clone(), options).await.unwrap());
    let hook_pusher = pusher.clone();
    let synced = Arc::new(
        SyncedReadWriterAt::new(remote.clone(), pusher.clone(), CHUNK)
            .await
            .unwrap()
            .with_on_chunk_local(move |chunk| {
                hook_pusher.mark_pushable(chunk).unwrap();
            }),
    );
    let mount = ArbitraryReadWriterAt::new(synced.clone(), CHUNK)
        .await
        .unwrap();
    Pipeline {
        remote,
        pusher,
        synced,
        mount,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulled_chunks_are_not_pushed_back_and_writes_are() {
    let p = pipeline().await;
    let original = p.remote.contents().await.unwrap();
    let chunks = SIZE.div_ceil(CHUNK);

    let puller = Puller::start(p.synced.clone(), CHUNK, SIZE, 4, PullHeuristic::Linear).unwrap();
    puller.wait().await.unwrap();
    assert_eq!(p.synced.local_chunks(), chunks);
    p.mount.sync().await.unwrap();
    assert_eq!(p.remote.writes(), 0, "pulled bytes were pushed back");

    // An unaligned write across chunks 2..=4, through the whole pipeline.
    p.mount.write_at(&[0xAA; 150], 140).await.unwrap();
    assert_eq!(p.pusher.dirty_chunks(), 3);
    p.mount.sync().await.unwrap();
    let mut expected = original;
    expected[140..290].fill(0xAA);
    assert_eq!(p.remote.contents().await.unwrap(), expected);
    let mut pushed = p.remote.write_order();
    pushed.sort_unstable();
    assert_eq!(pushed, vec![128, 192, 256]);

    let mut back = vec![0u8; SIZE as usize];
    p.mount.read_exact_at(&mut back, 0).await.unwrap();
    assert_eq!(back, expected);
    assert_eq!(
        p.remote.reads(),
        chunks,
        "every chunk was fetched exactly once"
    );
}

#[tokio::test]
async fn writes_before_the_pull_reaches_a_chunk_are_pushed() {
    let p = pipeline().await;
    let original = p.remote.contents().await.unwrap();
    // A whole-chunk write to a chunk never pulled: no remote read.
    p.mount.write_at(&[1; 64], 64).await.unwrap();
    // A partial write to a chunk never pulled: pulled first, then patched.
    p.mount.write_at(&[2; 3], 1030).await.unwrap();
    p.mount.sync().await.unwrap();

    let mut expected = original;
    expected[64..128].fill(1);
    expected[1030..1033].fill(2);
    assert_eq!(p.remote.contents().await.unwrap(), expected);
    assert_eq!(p.remote.read_order(), vec![1024]);
    let mut pushed = p.remote.write_order();
    pushed.sort_unstable();
    assert_eq!(pushed, vec![64, 1024]);
}
