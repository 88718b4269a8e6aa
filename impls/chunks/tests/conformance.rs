//! The backends conformance suite, run on every stage that accepts arbitrary
//! accesses. `ChunkedReadWriterAt` and `SyncedReadWriterAt` alone reject
//! partial-chunk writes by design, so they run it behind an
//! `ArbitraryReadWriterAt`, which is how the managed pipeline uses them.

use std::sync::Arc;
use std::time::Duration;

use backends::{MemoryBackend, SharedBackend};
use chunks::{
    ArbitraryReadWriterAt, ChunkedReadWriterAt, LockableReadWriterAt, Pushable, Pusher,
    PusherOptions, SyncedReadWriterAt, TrackingReadWriterAt,
};

/// 4 KiB: the page size, so the suite's 4 KiB-boundary cases hit chunk
/// boundaries exactly and its other cases straddle them.
const CHUNK: u64 = 4096;

fn memory(size: u64) -> SharedBackend {
    Arc::new(MemoryBackend::new(size))
}

backends::conformance_tests!(arbitrary_over_memory, |size| async move {
    Arc::new(
        ArbitraryReadWriterAt::new(memory(size), CHUNK)
            .await
            .unwrap(),
    ) as SharedBackend
});

backends::conformance_tests!(arbitrary_over_chunked, |size| async move {
    let chunked = ChunkedReadWriterAt::new(memory(size), CHUNK).await.unwrap();
    Arc::new(
        ArbitraryReadWriterAt::new(Arc::new(chunked), CHUNK)
            .await
            .unwrap(),
    ) as SharedBackend
});

backends::conformance_tests!(arbitrary_over_synced, |size| async move {
    let synced = SyncedReadWriterAt::new(memory(size), memory(size), CHUNK)
        .await
        .unwrap();
    Arc::new(
        ArbitraryReadWriterAt::new(Arc::new(synced), CHUNK)
            .await
            .unwrap(),
    ) as SharedBackend
});

backends::conformance_tests!(tracking, |size| async move {
    let tracking = TrackingReadWriterAt::new(memory(size), CHUNK)
        .await
        .unwrap();
    tracking.track();
    Arc::new(tracking) as SharedBackend
});

backends::conformance_tests!(lockable_unlocked, |size| async move {
    let lockable = LockableReadWriterAt::new(memory(size));
    lockable.unlock();
    Arc::new(lockable) as SharedBackend
});

backends::conformance_tests!(pusher, |size| async move {
    let options = PusherOptions {
        interval: Duration::from_millis(5),
        ..PusherOptions::new(CHUNK)
    };
    Arc::new(
        Pusher::start(memory(size), memory(size), options)
            .await
            .unwrap(),
    ) as SharedBackend
});

// The whole managed stack except the puller: arbitrary over synced over a
// pusher writing back to the same remote the synced stage pulls from.
backends::conformance_tests!(managed_pipeline, |size| async move {
    let remote = memory(size);
    let options = PusherOptions {
        interval: Duration::from_millis(5),
        pushable: Pushable::Marked,
        ..PusherOptions::new(CHUNK)
    };
    let pusher = Arc::new(
        Pusher::start(memory(size), remote.clone(), options)
            .await
            .unwrap(),
    );
    let hook = pusher.clone();
    let synced = SyncedReadWriterAt::new(remote, pusher, CHUNK)
        .await
        .unwrap()
        .with_on_chunk_local(move |chunk| {
            hook.mark_pushable(chunk).unwrap();
        });
    Arc::new(
        ArbitraryReadWriterAt::new(Arc::new(synced), CHUNK)
            .await
            .unwrap(),
    ) as SharedBackend
});
