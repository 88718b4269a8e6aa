//! Helpers shared by the integration tests: in-process servers, child
//! process guards and tool detection.

#![allow(dead_code)]

use std::net::TcpListener as StdTcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backends::{MemoryBackend, SharedBackend};
use nbd::{Export, NbdClient, Server, ServerLimits};
use tokio::task::JoinHandle;

/// Aborts a task when dropped, so a test's server never outlives it.
#[derive(Debug)]
pub struct AbortOnDrop<T>(pub JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A pattern that differs at every offset of a few MiB, so misplaced
/// bytes show up.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    backends::conformance::pattern(seed, 0, len)
}

/// A memory backend holding `pattern(seed, size)`.
pub fn patterned(seed: u64, size: usize) -> Arc<MemoryBackend> {
    Arc::new(MemoryBackend::from_bytes(pattern(seed, size)))
}

/// One server for `exports`, one client for `name`, over an in-memory pipe.
pub async fn connected(
    exports: Vec<Export>,
    limits: ServerLimits,
    name: &str,
) -> (
    NbdClient,
    JoinHandle<Result<nbd::ConnectionStats, nbd::NbdError>>,
) {
    let server = Server::new(exports, limits).unwrap();
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let serving = tokio::spawn(async move { server.serve(theirs).await });
    let client = NbdClient::connect(ours, name).await.unwrap();
    (client, serving)
}

/// A single-export setup over a memory backend of `size` bytes.
pub async fn memory_pair(
    size: u64,
) -> (
    NbdClient,
    Arc<MemoryBackend>,
    JoinHandle<Result<nbd::ConnectionStats, nbd::NbdError>>,
) {
    let disk = Arc::new(MemoryBackend::new(size));
    let (client, serving) = connected(
        vec![Export::new("disk", disk.clone() as SharedBackend)],
        ServerLimits::default(),
        "disk",
    )
    .await;
    (client, disk, serving)
}

/// Whether `tool` runs here; prints the skip reason when it does not.
pub fn have(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        eprintln!("skipped: {tool} not installed");
    }
    found
}

/// A child process killed and reaped when dropped.
#[derive(Debug)]
pub struct ChildGuard {
    pub child: Child,
    pub what: String,
}

impl ChildGuard {
    pub fn spawn(cmd: &mut Command) -> ChildGuard {
        let what = format!("{cmd:?}");
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {what}: {e}"));
        ChildGuard { child, what }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    StdTcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts on `127.0.0.1:port`.
pub fn wait_for_port(port: u16, child: &mut ChildGuard) {
    wait_until(
        &format!("{} to listen on port {port}", child.what),
        child,
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
    );
}

/// Waits until `path` exists and is not empty (a pid file written once
/// the server listens, as nbdkit's `-P` does).
pub fn wait_for_file(path: &Path, child: &mut ChildGuard) {
    wait_until(
        &format!("{} to write {}", child.what, path.display()),
        child,
        || std::fs::metadata(path).is_ok_and(|m| m.len() > 0),
    );
}

/// Waits until something accepts on the Unix socket `path`.
pub fn wait_for_socket(path: &Path, child: &mut ChildGuard) {
    wait_until(
        &format!("{} to listen on {}", child.what, path.display()),
        child,
        || std::os::unix::net::UnixStream::connect(path).is_ok(),
    );
}

fn wait_until(what: &str, child: &mut ChildGuard, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        if let Ok(Some(status)) = child.child.try_wait() {
            panic!("waiting for {what}: it exited with {status}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command to completion off the async runtime's threads.
pub async fn run(mut cmd: Command) -> Output {
    let what = format!("{cmd:?}");
    tokio::task::spawn_blocking(move || cmd.stdin(Stdio::null()).output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("running {what}: {e}"))
}

/// Runs a command and fails the test with its output unless it succeeds.
pub async fn run_ok(cmd: Command) -> Output {
    let what = format!("{cmd:?}");
    let out = run(cmd).await;
    assert!(
        out.status.success(),
        "{what} failed with {}:\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A path for a Unix socket inside `dir`.
pub fn socket_in(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}
