//! The protocol end to end, in one process over loopback TCP: Track, the
//! dirty set, finalize and integrity per transport; a concurrent
//! application; and a chained migration A -> B -> C. They mount devices,
//! so they need root and skip with the reason otherwise.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use backends::MemoryBackend;
use common::*;
use migration::{AppGate, FinalizePolicy, Leecher, Phase, Seeder};
use transports::{Seeder as _, TransportKind};

/// An application writes before and after Track; after finalize the
/// leecher holds the seeder's final bytes and the dirty set is exactly the
/// chunks written after Track.
fn track_finalize_and_dirty_set(kind: TransportKind) {
    if !can_mount() {
        return;
    }
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let _dog = Watchdog::arm("the migration", Duration::from_secs(120), &dir);
    let mut expected = pattern(1);
    let storage = Arc::new(MemoryBackend::from_bytes(expected.clone()));
    let gate = Arc::new(AppGate::default());
    let seeder = Seeder::open(
        storage.clone(),
        seeder_options(&dir),
        gate.clone(),
        rt.handle(),
    )
    .unwrap();
    let mut app = seeder.region().map().unwrap();

    // Before Track, left in the page cache: Track flushes them, so they
    // are not dirty (chunk 1 is written again below).
    {
        let _pass = gate.enter();
        write(&mut app, &mut expected, CHUNK + 10, b"before track");
        write(&mut app, &mut expected, 3 * CHUNK, &[0xAA; 100]);
    }
    let server = seeder
        .serve(kind, "127.0.0.1:0".parse().unwrap(), config())
        .unwrap();
    let client = rt.block_on(kind.connect(server.addr(), &config())).unwrap();
    let mut leecher = Leecher::open(client.seeder(), leecher_options(&dir), rt.handle()).unwrap();
    assert!(
        leecher.region().is_none(),
        "the region is locked until finalize"
    );
    assert!(seeder.stats().tracking);

    // After Track, not flushed: Sync's flush must bring them out.
    let mut after = BTreeSet::new();
    {
        let _pass = gate.enter();
        for (offset, data) in [
            (2 * CHUNK + 5, &b"after"[..]),
            (5 * CHUNK - 3, &b"straddles"[..]),
            (SIZE as u64 - 1, &[0x55][..]),
            (CHUNK + 10, &b"again"[..]),
        ] {
            write(&mut app, &mut expected, offset, data);
            after.extend(chunks_of(offset, data.len() as u64));
        }
    }
    assert_eq!(after, BTreeSet::from([1, 2, 4, 5, CHUNKS - 1]));

    leecher.finalize().unwrap();
    let dirty = leecher.dirty_chunks().unwrap();
    assert_eq!(
        dirty,
        after.iter().copied().collect::<Vec<_>>(),
        "{kind}: dirty set"
    );
    assert!(gate.is_suspended(), "{kind}: the source stays suspended");
    assert_eq!((gate.suspends(), gate.resumes()), (1, 0));

    let progress = leecher.wait_complete().unwrap();
    assert_eq!(progress.phase, Phase::Complete);
    assert_eq!(progress.local_chunks, CHUNKS);
    assert_eq!(progress.dirty_chunks, Some(after.len() as u64));
    assert_eq!(progress.dirty_local, after.len() as u64);
    assert!(progress.finalize.is_some() && progress.total.is_some());
    assert!(
        seeder.wait_closed(Duration::from_secs(30)),
        "{kind}: Close reached the seeder"
    );

    let got = leecher.region().unwrap().map().unwrap();
    assert_eq!(
        sha256(got.as_slice()),
        sha256(&expected),
        "{kind}: leecher bytes"
    );
    assert_eq!(
        sha256(&storage.snapshot()),
        sha256(&expected),
        "{kind}: seeder bytes"
    );
    drop(got);
    drop(app);
    leecher.close().unwrap();
    seeder.close().unwrap();
    server.stop().unwrap();
    assert_unmounted(&dir);
}

#[test]
fn frpc_track_finalize_and_dirty_set() {
    track_finalize_and_dirty_set(TransportKind::Frpc);
}

#[test]
fn grpc_track_finalize_and_dirty_set() {
    track_finalize_and_dirty_set(TransportKind::Grpc);
}

#[test]
fn tarpc_track_finalize_and_dirty_set() {
    track_finalize_and_dirty_set(TransportKind::Tarpc);
}

#[test]
fn jsonl_track_finalize_and_dirty_set() {
    track_finalize_and_dirty_set(TransportKind::Jsonl);
}

/// An application keeps writing through the pull; finalize suspends it
/// mid-run, and nothing it wrote is lost.
#[test]
fn a_running_application_is_suspended_at_finalize_and_nothing_is_lost() {
    if !can_mount() {
        return;
    }
    let kind = TransportKind::Frpc;
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let _dog = Watchdog::arm("the migration", Duration::from_secs(120), &dir);
    let expected = pattern(2);
    let storage = Arc::new(MemoryBackend::from_bytes(expected.clone()));
    let gate = Arc::new(AppGate::default());
    let seeder = Seeder::open(storage, seeder_options(&dir), gate.clone(), rt.handle()).unwrap();
    let writer = Writer::start(seeder.region().map().unwrap(), expected, gate.clone());
    let server = seeder
        .serve(kind, "127.0.0.1:0".parse().unwrap(), config())
        .unwrap();
    let client = rt.block_on(kind.connect(server.addr(), &config())).unwrap();
    let mut leecher = Leecher::open(client.seeder(), leecher_options(&dir), rt.handle()).unwrap();
    writer
        .tracked
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let tracked_at = writer.count();
    wait_until(|| writer.count() >= tracked_at + 20);

    leecher
        .finalize_when(FinalizePolicy::AfterFractionLocal(0.5))
        .unwrap();
    leecher.wait_complete().unwrap();
    let written = writer.stop();
    let dirty: BTreeSet<u64> = leecher.dirty_chunks().unwrap().into_iter().collect();
    assert!(
        dirty.is_superset(&written.after_track),
        "chunks written after Track missing from the dirty set: {:?}",
        written.after_track.difference(&dirty).collect::<Vec<_>>()
    );
    assert!(
        dirty.is_subset(&written.all),
        "chunks reported dirty that were never written: {:?}",
        dirty.difference(&written.all).collect::<Vec<_>>()
    );
    let got = leecher.region().unwrap().map().unwrap();
    assert_eq!(sha256(got.as_slice()), sha256(&written.expected));
    drop(got);
    drop(written.map);
    leecher.close().unwrap();
    seeder.close().unwrap();
    server.stop().unwrap();
    assert_unmounted(&dir);
}

/// A -> B -> C: B's application writes to the region it migrated in, B
/// seeds it onward on the same device, and C ends with every byte.
#[test]
fn a_chained_migration_keeps_every_byte() {
    if !can_mount() {
        return;
    }
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let _dog = Watchdog::arm("the chained migration", Duration::from_secs(180), &dir);
    let mut expected = pattern(3);

    // A, serving over frpc.
    let gate_a = Arc::new(AppGate::default());
    let seeder_a = Seeder::open(
        Arc::new(MemoryBackend::from_bytes(expected.clone())),
        seeder_options(&dir),
        gate_a.clone(),
        rt.handle(),
    )
    .unwrap();
    let mut app_a = seeder_a.region().map().unwrap();
    write(&mut app_a, &mut expected, 7 * CHUNK + 1, b"A before");
    let server_a = seeder_a
        .serve(
            TransportKind::Frpc,
            "127.0.0.1:0".parse().unwrap(),
            config(),
        )
        .unwrap();
    let client_a = rt
        .block_on(TransportKind::Frpc.connect(server_a.addr(), &config()))
        .unwrap();

    // A -> B.
    let mut leecher_b =
        Leecher::open(client_a.seeder(), leecher_options(&dir), rt.handle()).unwrap();
    write(&mut app_a, &mut expected, 9 * CHUNK, b"A after track");
    leecher_b.finalize().unwrap();
    assert_eq!(leecher_b.dirty_chunks().unwrap(), vec![9]);
    leecher_b.wait_complete().unwrap();
    assert!(seeder_a.wait_closed(Duration::from_secs(30)));

    // B's application runs on the migrated region, then seeds it (gRPC).
    let mut app_b = leecher_b.region().unwrap().map().unwrap();
    assert_eq!(sha256(app_b.as_slice()), sha256(&expected));
    write(&mut app_b, &mut expected, 11 * CHUNK + 3, b"B before track");
    let gate_b = Arc::new(AppGate::default());
    let seeder_b = leecher_b.into_seeder(gate_b.clone()).unwrap();
    let server_b = seeder_b
        .serve(
            TransportKind::Grpc,
            "127.0.0.1:0".parse().unwrap(),
            config(),
        )
        .unwrap();
    let client_b = rt
        .block_on(TransportKind::Grpc.connect(server_b.addr(), &config()))
        .unwrap();

    // B -> C.
    let mut leecher_c =
        Leecher::open(client_b.seeder(), leecher_options(&dir), rt.handle()).unwrap();
    write(&mut app_b, &mut expected, 2 * CHUNK - 2, b"B after");
    leecher_c.finalize().unwrap();
    assert_eq!(leecher_c.dirty_chunks().unwrap(), vec![1, 2]);
    assert_eq!((gate_b.suspends(), gate_b.resumes()), (1, 0));
    leecher_c.wait_complete().unwrap();
    assert!(seeder_b.wait_closed(Duration::from_secs(30)));

    let got = leecher_c.region().unwrap().map().unwrap();
    assert_eq!(sha256(got.as_slice()), sha256(&expected));
    drop((got, app_a, app_b));
    leecher_c.close().unwrap();
    seeder_b.close().unwrap();
    seeder_a.close().unwrap();
    drop((client_a, client_b));
    server_a.stop().unwrap();
    server_b.stop().unwrap();
    assert_unmounted(&dir);
}

/// Pre-copy rounds: each `Dirty` returns the chunks written in its round
/// only, without suspending the application, and the final `Sync` returns
/// only what was written after the last round.
#[test]
fn dirty_rounds_return_one_round_each_and_sync_the_rest() {
    if !can_mount() {
        return;
    }
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let _dog = Watchdog::arm("the pre-copy rounds", Duration::from_secs(120), &dir);
    let mut expected = pattern(3);
    let storage = Arc::new(MemoryBackend::from_bytes(expected.clone()));
    let gate = Arc::new(AppGate::default());
    let seeder = Seeder::open(storage, seeder_options(&dir), gate.clone(), rt.handle()).unwrap();
    let mut app = seeder.region().map().unwrap();
    let kind = TransportKind::Frpc;
    let server = seeder
        .serve(kind, "127.0.0.1:0".parse().unwrap(), config())
        .unwrap();
    let client = rt.block_on(kind.connect(server.addr(), &config())).unwrap();
    let remote = client.seeder();
    rt.block_on(remote.track()).unwrap();

    let mut round = |offsets: &[u64]| {
        {
            let _pass = gate.enter();
            for &offset in offsets {
                write(&mut app, &mut expected, offset, b"round");
            }
        }
        let dirty = rt.block_on(remote.dirty()).unwrap();
        assert!(!gate.is_suspended(), "Dirty suspended the application");
        dirty
    };
    assert_eq!(round(&[CHUNK, 3 * CHUNK + 7]), vec![CHUNK, 3 * CHUNK]);
    assert_eq!(round(&[2 * CHUNK]), vec![2 * CHUNK]);
    assert_eq!(round(&[]), Vec::<u64>::new());
    {
        let _pass = gate.enter();
        write(&mut app, &mut expected, 6 * CHUNK + 1, b"last");
    }
    assert_eq!(rt.block_on(remote.sync()).unwrap(), vec![6 * CHUNK]);
    assert!(gate.is_suspended(), "Sync suspends");
    assert_eq!(seeder.stats().rounds, 3);

    drop(app);
    seeder.close().unwrap();
    server.stop().unwrap();
    assert_unmounted(&dir);
}
