//! Shared pieces of the integration tests: skip rules, runtimes, mount
//! points and test backends.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backends::testing::Probe;
use backends::{BackendError, MemoryBackend, SharedBackend};
use fusefs::{FuseFile, FuseFileOptions};

/// Why FUSE tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root: mount(2) of FUSE needs CAP_SYS_ADMIN".to_string());
    }
    if !fusefs::device_available() {
        return Some("/dev/fuse cannot be opened".to_string());
    }
    None
}

/// Returns early from a test, with the reason printed, when FUSE is unusable.
#[macro_export]
macro_rules! require_fuse {
    () => {
        if let Some(reason) = common::skip_reason() {
            eprintln!("skipping: {reason}");
            return;
        }
    };
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A fresh, not yet existing mount point two levels below the temp dir, so
/// tests see both levels created and removed.
pub fn mountpoint(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir()
        .join(format!("msb-fusefs-test-{}-{name}-{n}", std::process::id()))
        .join("mnt")
}

/// Deterministic, position-dependent bytes: a shifted window never matches.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 7 + i / 4096 * 13) % 251) as u8)
        .collect()
}

pub fn options(
    rt: &tokio::runtime::Runtime,
    name: &str,
    backend: SharedBackend,
    size: u64,
) -> FuseFileOptions {
    FuseFileOptions::new(mountpoint(name), backend, size, rt.handle().clone())
}

/// Whether `/proc/self/mountinfo` lists a mount on `path`.
pub fn is_mounted(path: &std::path::Path) -> bool {
    fusefs::cleanup::mounts()
        .unwrap()
        .iter()
        .any(|m| m.mount_point == path)
}

/// Mounts a memory backend filled with `pattern(size)`.
pub fn mount_pattern(
    rt: &tokio::runtime::Runtime,
    name: &str,
    size: usize,
) -> (FuseFile, Arc<MemoryBackend>) {
    let backend = Arc::new(MemoryBackend::from_bytes(pattern(size)));
    let file = FuseFile::mount(options(rt, name, backend.clone(), size as u64)).unwrap();
    (file, backend)
}

/// A backend whose every operation fails the way a dead remote does: reads
/// with a remote error, writes with `ENOSPC`, syncs as closed.
pub fn failing_backend(size: u64) -> Probe {
    let backend = Probe::zeros(size);
    backend.fail_reads(|| BackendError::Remote("connection reset by test".to_string()));
    backend.fail_writes(|| BackendError::Io(std::io::Error::from_raw_os_error(libc::ENOSPC)));
    backend.fail_syncs(|| BackendError::Closed);
    backend
}

/// Runs `f` on its own thread and fails the test if it has not finished
/// within `limit`: a liveness bound (the operation must not hang), not a
/// performance threshold.
pub fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .expect("operation did not finish: it hangs")
}
