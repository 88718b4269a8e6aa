//! Direct and managed mounts over memory remotes, through the device this
//! host has (a FUSE file here; `/dev/nbdN` where the kernel has NBD).
//! They need root and `/dev/fuse` (or the kernel NBD client) and say so
//! when they skip.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::sync::{Arc, Mutex};
use std::time::Duration;

use backends::testing::Probe;
use backends::{MemoryBackend, SharedBackend};
use mount::{
    DevicePreference, DirectMount, Hooks, ManagedMount, ManagedOptions, MountError, MountOptions,
};

const SIZE: usize = 4 << 20;
const CHUNK: u64 = 64 << 10;

fn pattern() -> Vec<u8> {
    (0..SIZE).map(|i| (i * 7 % 251) as u8).collect()
}

/// Whether mounts can run here; prints why not.
fn can_mount() -> bool {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: mounting a FUSE file system or /dev/nbd needs root");
        return false;
    }
    if nbd::KernelNbd::available().is_err() && !std::path::Path::new("/dev/fuse").exists() {
        eprintln!("skipped: neither /dev/nbd* nor /dev/fuse exists");
        return false;
    }
    true
}

fn options(dir: &tempfile::TempDir) -> MountOptions {
    let mut o = MountOptions::default();
    o.device.mount_parent = dir.path().to_owned();
    o
}

/// No FUSE mount of ours is left under `dir`.
fn assert_unmounted(dir: &tempfile::TempDir) {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = dir.path().to_str().unwrap();
    assert!(
        !mounts.lines().any(|l| l.contains(dir)),
        "a mount under {dir} is left:\n{mounts}"
    );
}

#[test]
fn direct_mount_reads_and_writes_through_path_file_and_slice() {
    if !can_mount() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let remote = Arc::new(MemoryBackend::from_bytes(pattern()));
    let mount = DirectMount::open(remote.clone(), options(&dir), rt.handle()).unwrap();
    let region = mount.region();
    assert_eq!(region.size(), SIZE as u64);

    // Path: plain file reads.
    let bytes = std::fs::read(region.path()).unwrap();
    assert_eq!(bytes, pattern());

    // Slice: a shared mapping; written bytes reach the remote on sync.
    let mut map = region.map().unwrap();
    assert_eq!(map.as_slice(), pattern().as_slice());
    map.as_mut_slice().unwrap()[100..105].copy_from_slice(b"hello");
    map.flush().unwrap();
    region.sync().unwrap();
    assert_eq!(&remote.snapshot()[100..105], b"hello");
    drop(map);

    // File: positional writes.
    {
        use std::os::unix::fs::FileExt;
        let file = region.open_file().unwrap();
        file.write_all_at(b"world", SIZE as u64 - 5).unwrap();
        file.sync_all().unwrap();
    }
    assert_eq!(&remote.snapshot()[SIZE - 5..], b"world");
    mount.close().unwrap();
    assert_unmounted(&dir);
}

#[test]
fn managed_mount_prepulls_pulls_everything_and_pushes_writes() {
    if !can_mount() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let remote = Arc::new(MemoryBackend::from_bytes(pattern()));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut opts = options(&dir);
    let record = seen.clone();
    opts.hooks.on_chunk_local = Some(Arc::new(move |offset| record.lock().unwrap().push(offset)));
    let managed = ManagedOptions {
        pull_workers: 4,
        prepull_chunks: 3,
        push_interval: Duration::from_secs(3600),
        ..ManagedOptions::new(CHUNK)
    };
    let mount = ManagedMount::open(remote.clone(), managed, opts, rt.handle()).unwrap();
    for chunk in 0..3 {
        assert!(
            mount.is_local(chunk * CHUNK),
            "chunk {chunk} was not pre-pulled"
        );
    }
    mount.wait_pulled().unwrap();
    let stats = mount.stats();
    assert_eq!(stats.local_chunks, stats.chunk_count);
    assert_eq!(stats.chunk_count, SIZE as u64 / CHUNK);
    let mut offsets = seen.lock().unwrap().clone();
    offsets.sort_unstable();
    let expected: Vec<u64> = (0..stats.chunk_count).map(|c| c * CHUNK).collect();
    assert_eq!(offsets, expected, "on_chunk_local saw every chunk once");

    let region = mount.region();
    let mut map = region.map().unwrap();
    assert_eq!(map.as_slice(), pattern().as_slice());
    // A write is held locally until a sync pushes it (the interval is an hour).
    map.as_mut_slice().unwrap()[CHUNK as usize + 1] = 0xEE;
    map.flush().unwrap();
    region.sync().unwrap();
    assert_eq!(remote.snapshot()[CHUNK as usize + 1], 0xEE);
    assert!(mount.stats().pushed_chunks >= 1);
    drop(map);
    mount.close().unwrap();
    assert_unmounted(&dir);
}

#[test]
fn managed_pull_keeps_many_chunks_in_flight_and_reads_stay_intact() {
    if !can_mount() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Each read is delayed like a remote across a link.
    let remote = Arc::new(Probe::memory(pattern()).with_delay(Duration::from_millis(5)));
    let managed = ManagedOptions {
        pull_workers: 16,
        pull_heuristic: chunks::PullHeuristic::Reverse,
        ..ManagedOptions::new(CHUNK)
    };
    let mount = ManagedMount::open(remote.clone(), managed, options(&dir), rt.handle()).unwrap();
    // Read from the front while the pull comes from the back.
    let bytes = std::fs::read(mount.region().path()).unwrap();
    assert_eq!(bytes, pattern());
    mount.wait_pulled().unwrap();
    assert!(
        remote.max_in_flight() > 1,
        "the puller never had two reads in flight"
    );
    mount.close().unwrap();
    assert_unmounted(&dir);
}

#[test]
fn a_failing_close_hook_still_takes_the_device_down() {
    if !can_mount() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let remote: SharedBackend = Arc::new(MemoryBackend::from_bytes(pattern()));
    let mut opts = options(&dir);
    opts.hooks = Hooks {
        before_close: Some(Arc::new(|| Err("the application is not done".into()))),
        ..Hooks::default()
    };
    let mount = DirectMount::open(remote, opts, rt.handle()).unwrap();
    let e = mount.close().unwrap_err();
    assert!(
        matches!(&e, MountError::Hook { hook: "before-close", message } if message.contains("not done")),
        "{e}"
    );
    assert_unmounted(&dir);
}

#[test]
fn dropping_a_mount_unmounts_it() {
    if !can_mount() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let remote: SharedBackend = Arc::new(MemoryBackend::from_bytes(pattern()));
    let mount = ManagedMount::open(
        remote,
        ManagedOptions::new(CHUNK),
        options(&dir),
        rt.handle(),
    )
    .unwrap();
    drop(mount);
    assert_unmounted(&dir);
}

#[test]
fn asking_for_a_missing_kernel_nbd_names_the_reason() {
    let Err(reason) = nbd::KernelNbd::available() else {
        eprintln!("skipped: this host has the kernel NBD client");
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let remote: SharedBackend = Arc::new(MemoryBackend::new(1 << 20));
    let mut opts = MountOptions::default();
    opts.device.preference = DevicePreference::KernelNbd;
    let e = DirectMount::open(remote, opts, rt.handle()).unwrap_err();
    assert!(
        matches!(&e, MountError::KernelNbdUnavailable(r) if *r == reason),
        "{e}"
    );
}

#[test]
fn bad_managed_options_name_the_option() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let remote: SharedBackend = Arc::new(MemoryBackend::new(1 << 20));
    let e = ManagedMount::open(
        remote,
        ManagedOptions::new(3000),
        MountOptions::default(),
        rt.handle(),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("chunk_size") && e.to_string().contains("power of two"),
        "{e}"
    );
}

#[test]
fn a_remote_nbd_export_mounts_without_a_local_server() {
    if !can_mount() {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let remote = Arc::new(MemoryBackend::from_bytes(pattern()));
    let server = nbd::Server::new(
        vec![nbd::Export::new("disk", remote.clone())],
        nbd::ServerLimits::default(),
    )
    .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let serving = {
        let stop = stop.clone();
        rt.spawn(async move {
            server
                .serve_listener(listener, stop.cancelled_owned())
                .await
        })
    };
    let stream = rt.block_on(tokio::net::TcpStream::connect(addr)).unwrap();
    let mount = DirectMount::over_nbd(stream, "disk", options(&dir), rt.handle()).unwrap();
    assert_eq!(mount.region().size(), SIZE as u64);
    assert_eq!(std::fs::read(mount.region().path()).unwrap(), pattern());
    mount.close().unwrap();
    stop.cancel();
    let stats = rt.block_on(serving).unwrap().unwrap();
    assert!(stats.bytes_read >= SIZE as u64, "{stats:?}");
    assert_unmounted(&dir);
}
