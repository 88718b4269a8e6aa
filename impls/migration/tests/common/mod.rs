//! Shared set-up for the migration tests: a runtime, mounts under a
//! temporary directory, an application that writes through its mapping,
//! and a watchdog that turns a hang into a failure.

#![allow(dead_code)] // each test file uses a different part
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use migration::{AppGate, LeecherOptions, SeederOptions};
use mount::{MountOptions, RegionMap};
use sha2::{Digest, Sha256};
use transports::TransportConfig;

pub const SIZE: usize = 2 << 20;
pub const CHUNK: u64 = 64 << 10;
pub const CHUNKS: u64 = SIZE as u64 / CHUNK;

/// Whether mounts can run here; prints why not.
pub fn can_mount() -> bool {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: mounting a FUSE file system or /dev/nbd needs root");
        return false;
    }
    if nbd_missing() && !std::path::Path::new("/dev/fuse").exists() {
        eprintln!("skipped: neither /dev/nbd* nor /dev/fuse exists");
        return false;
    }
    true
}

fn nbd_missing() -> bool {
    !std::path::Path::new("/dev/nbd0").exists()
}

/// Device threads (FUSE replies, NBD server and client) run here; the
/// application (the test thread) never does.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

pub fn mount_options(dir: &tempfile::TempDir) -> MountOptions {
    let mut o = MountOptions::default();
    o.device.mount_parent = dir.path().to_owned();
    o
}

pub fn seeder_options(dir: &tempfile::TempDir) -> SeederOptions {
    SeederOptions {
        mount: mount_options(dir),
        ..SeederOptions::new(CHUNK)
    }
}

pub fn leecher_options(dir: &tempfile::TempDir) -> LeecherOptions {
    LeecherOptions {
        pull_workers: 4,
        mount: mount_options(dir),
        ..LeecherOptions::new(CHUNK)
    }
}

/// Two connections, a client deadline far above anything these tests
/// wait for (a safety net, never what ends a test), a short linger.
pub fn config() -> TransportConfig {
    TransportConfig {
        connections: 2,
        deadline: Some(Duration::from_secs(60)),
        linger: Duration::from_millis(500),
        ..TransportConfig::default()
    }
}

pub fn pattern(seed: u64) -> Vec<u8> {
    (0..SIZE as u64)
        .map(|i| ((i * 7 + seed * 13) % 251) as u8)
        .collect()
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The application's write: to its mapping, and to the bytes the test
/// expects the region to hold.
pub fn write(map: &mut RegionMap, expected: &mut [u8], offset: u64, data: &[u8]) {
    let at = offset as usize;
    map.as_mut_slice().unwrap()[at..at + data.len()].copy_from_slice(data);
    expected[at..at + data.len()].copy_from_slice(data);
}

/// The chunks `len` bytes at `offset` touch.
pub fn chunks_of(offset: u64, len: u64) -> std::ops::RangeInclusive<u64> {
    offset / CHUNK..=(offset + len - 1) / CHUNK
}

/// No FUSE mount of ours is left under `dir`.
pub fn assert_unmounted(dir: &tempfile::TempDir) {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = dir.path().to_str().unwrap();
    assert!(
        !mounts.lines().any(|l| l.contains(dir)),
        "a mount under {dir} is left:\n{mounts}"
    );
}

/// Fails the test process if it is not disarmed (dropped) within `limit`:
/// a hang becomes a failure with a message instead of a stuck CI run.
///
/// Before aborting it force-unmounts the FUSE mounts under `dir` (ours):
/// a process whose FUSE server dies with it hangs in exit on its own
/// descriptors (fusefs README), and a forced unmount aborts the
/// connection so those requests fail instead.
pub struct Watchdog {
    disarm: Option<mpsc::Sender<()>>,
}

impl Watchdog {
    pub fn arm(what: &'static str, limit: Duration, dir: &tempfile::TempDir) -> Self {
        let (tx, rx) = mpsc::channel::<()>();
        let dir = dir.path().to_owned();
        std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                // Straight to the descriptor: the test harness captures
                // eprintln! (in spawned threads too) and abort loses it.
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "FAILED: {what} did not finish within {limit:?}"
                );
                force_unmount_under(&dir);
                std::process::abort();
            }
        });
        Self { disarm: Some(tx) }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(tx) = self.disarm.take() {
            let _ = tx.send(());
        }
    }
}

/// Forcibly unmounts every mount point under `dir`.
fn force_unmount_under(dir: &std::path::Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    for point in mounts.lines().filter_map(|l| l.split(' ').nth(4)) {
        if !std::path::Path::new(point).starts_with(dir) {
            continue;
        }
        let Ok(path) = std::ffi::CString::new(point) else {
            continue;
        };
        // MNT_FORCE aborts the FUSE connection; a mount still busy after
        // it is then detached. SAFETY: `path` is a NUL-terminated string
        // that outlives both calls, which only read it.
        unsafe {
            libc::umount2(path.as_ptr(), libc::MNT_FORCE);
            libc::umount2(path.as_ptr(), libc::MNT_DETACH);
        }
    }
}

/// Waits until `done()` holds, polling; the test's watchdog bounds it.
pub fn wait_until(mut done: impl FnMut() -> bool) {
    while !done() {
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// What a background writer hands back when stopped.
pub struct Written {
    pub map: RegionMap,
    pub expected: Vec<u8>,
    /// Chunks written after the test said Track had returned.
    pub after_track: BTreeSet<u64>,
    /// Every chunk written.
    pub all: BTreeSet<u64>,
}

/// An application on its own thread: writes a counter to pseudo-random
/// places of its mapping, one write per pass of the gate.
pub struct Writer {
    pub writes: Arc<AtomicU64>,
    pub tracked: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Written>,
}

impl Writer {
    pub fn start(mut map: RegionMap, mut expected: Vec<u8>, gate: Arc<AppGate>) -> Self {
        let writes = Arc::new(AtomicU64::new(0));
        let tracked = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (writes, tracked, stop) = (writes.clone(), tracked.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut after_track = BTreeSet::new();
                let mut all = BTreeSet::new();
                let mut state = 0x2545_f491_4f6c_dd1du64;
                while !stop.load(Ordering::SeqCst) {
                    let Some(_pass) = gate.enter_within(Duration::from_millis(20)) else {
                        continue;
                    };
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let n = writes.load(Ordering::SeqCst);
                    let offset = state % (SIZE as u64 - 8);
                    let after = tracked.load(Ordering::SeqCst);
                    write(&mut map, &mut expected, offset, &n.to_le_bytes());
                    for chunk in chunks_of(offset, 8) {
                        all.insert(chunk);
                        if after {
                            after_track.insert(chunk);
                        }
                    }
                    writes.fetch_add(1, Ordering::SeqCst);
                    drop(_pass);
                    std::thread::sleep(Duration::from_millis(1));
                }
                Written {
                    map,
                    expected,
                    after_track,
                    all,
                }
            })
        };
        Self {
            writes,
            tracked,
            stop,
            thread,
        }
    }

    pub fn count(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    pub fn stop(self) -> Written {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}
