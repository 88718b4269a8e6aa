//! Interoperability with the NBD tools everyone else uses, bytes compared
//! end to end:
//!
//! - our server, over TCP and a Unix socket, read and written by
//!   `qemu-img`, `qemu-io`, `nbdcopy`, and described by `nbdinfo`;
//! - our client against `nbdkit memory` and `qemu-nbd`.
//!
//! Each test prints "skipped: TOOL not installed" and passes only when a
//! tool it needs is missing; where the tools exist, it runs.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use backends::conformance::Guarded;
use backends::{Backend, MemoryBackend, SharedBackend};
use common::{have, run, run_ok, ChildGuard};
use nbd::{BlockSizes, Export, NbdClient, Server, ServerLimits, TransmissionFlags};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const SIZE: usize = 4 << 20;

/// Our server on 127.0.0.1 and on a Unix socket, serving:
/// "disk" (patterned, writable, the default), "blank" (zeros, with a
/// description and block sizes) and "ro" (patterned, read-only).
struct Ours {
    port: u16,
    socket: PathBuf,
    disk: Arc<MemoryBackend>,
    blank: Arc<MemoryBackend>,
    ro: Arc<MemoryBackend>,
    stops: Vec<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<Result<nbd::ListenerStats, nbd::NbdError>>>,
    _dir: tempfile::TempDir,
}

impl Ours {
    async fn start() -> Ours {
        let disk = common::patterned(11, SIZE);
        let blank = Arc::new(MemoryBackend::new(SIZE as u64));
        let ro = common::patterned(12, SIZE);
        let exports = vec![
            Export::new("disk", disk.clone() as SharedBackend),
            Export::new("blank", blank.clone() as SharedBackend)
                .description("an empty disk")
                .block_size(BlockSizes::new(512, 4096, 1 << 20).unwrap()),
            Export::new("ro", ro.clone() as SharedBackend)
                .description("read only")
                .read_only(true),
        ];
        let server = Server::new(exports, ServerLimits::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("ours.sock");
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = tcp.local_addr().unwrap().port();
        let unix = tokio::net::UnixListener::bind(&socket).unwrap();
        let (stop_tcp, tcp_stopped) = oneshot::channel::<()>();
        let (stop_unix, unix_stopped) = oneshot::channel::<()>();
        let s = server.clone();
        let t1 = tokio::spawn(async move {
            s.serve_listener(tcp, async {
                let _ = tcp_stopped.await;
            })
            .await
        });
        let t2 = tokio::spawn(async move {
            server
                .serve_listener(unix, async {
                    let _ = unix_stopped.await;
                })
                .await
        });
        Ours {
            port,
            socket,
            disk,
            blank,
            ro,
            stops: vec![stop_tcp, stop_unix],
            tasks: vec![t1, t2],
            _dir: dir,
        }
    }

    fn tcp_uri(&self, export: &str) -> String {
        format!("nbd://127.0.0.1:{}/{export}", self.port)
    }

    fn unix_uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.socket.display())
    }

    /// Stops both listeners; fails the test if any connection failed.
    async fn stop(self) -> Vec<nbd::ListenerStats> {
        for s in self.stops {
            let _ = s.send(());
        }
        let mut out = Vec::new();
        for t in self.tasks {
            let stats = t.await.unwrap().unwrap();
            assert_eq!(
                stats.failed, 0,
                "a connection to our server failed: {stats:?}"
            );
            out.push(stats);
        }
        out
    }
}

fn cmd(program: &str, args: &[&str]) -> Command {
    let mut c = Command::new(program);
    c.args(args);
    c
}

fn read_file(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_img_reads_and_writes_our_server() {
    if !have("qemu-img") {
        return;
    }
    let ours = Ours::start().await;
    let dir = tempfile::tempdir().unwrap();

    // Read over TCP.
    let out = dir.path().join("out.raw");
    run_ok(cmd(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &ours.tcp_uri("disk"),
            out.to_str().unwrap(),
        ],
    ))
    .await;
    assert!(
        read_file(&out) == ours.disk.snapshot(),
        "qemu-img read other bytes than we serve"
    );

    // Write over the Unix socket, into the export with block size limits.
    let input = dir.path().join("in.raw");
    let data = common::pattern(13, SIZE);
    std::fs::write(&input, &data).unwrap();
    run_ok(cmd(
        "qemu-img",
        &[
            "convert",
            "-n",
            "-f",
            "raw",
            "-O",
            "raw",
            input.to_str().unwrap(),
            &ours.unix_uri("blank"),
        ],
    ))
    .await;
    assert!(
        ours.blank.snapshot() == data,
        "qemu-img wrote other bytes than the file's"
    );

    // qemu-img info sees the size.
    let info = run_ok(cmd(
        "qemu-img",
        &["info", "--output=json", &ours.tcp_uri("ro")],
    ))
    .await;
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["virtual-size"], SIZE as u64);
    ours.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_writes_a_pattern_and_reads_it_back() {
    if !have("qemu-io") {
        return;
    }
    let ours = Ours::start().await;
    let before = ours.disk.snapshot();
    for uri in [ours.tcp_uri("disk"), ours.unix_uri("disk")] {
        let out = run_ok(cmd(
            "qemu-io",
            &[
                "-f",
                "raw",
                "-c",
                "write -P 0xab 4096 65536",
                "-c",
                "write -z 131072 8192",
                "-c",
                "read -P 0xab 4096 65536",
                "-c",
                "flush",
                &uri,
            ],
        ))
        .await;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains("failed"), "qemu-io over {uri}: {text}");
    }
    let after = ours.disk.snapshot();
    assert!(after[4096..4096 + 65536].iter().all(|&b| b == 0xab));
    assert!(after[131072..131072 + 8192].iter().all(|&b| b == 0));
    assert_eq!(&after[..4096], &before[..4096]);
    assert_eq!(&after[4096 + 65536..131072], &before[4096 + 65536..131072]);
    assert_eq!(&after[131072 + 8192..], &before[131072 + 8192..]);
    ours.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_export_rejects_qemu_io_writes() {
    if !have("qemu-io") {
        return;
    }
    let ours = Ours::start().await;
    let before = ours.ro.snapshot();
    let out = run(cmd(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x11 0 4096",
            &ours.tcp_uri("ro"),
        ],
    ))
    .await;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("qemu-io on a read-only export: {}: {text}", out.status);
    assert!(
        !out.status.success() || text.contains("failed") || text.contains("denied"),
        "qemu-io should fail to write a read-only export: {text}"
    );
    assert!(
        text.to_lowercase().contains("read-only")
            || text.to_lowercase().contains("read only")
            || text.contains("Permission denied")
            || text.contains("Operation not permitted"),
        "the failure should say why: {text}"
    );
    assert!(
        ours.ro.snapshot() == before,
        "a read-only export was modified"
    );
    // Reading still works, read-only.
    let read = run_ok(cmd(
        "qemu-io",
        &["-r", "-f", "raw", "-c", "read 0 4096", &ours.unix_uri("ro")],
    ))
    .await;
    assert!(String::from_utf8_lossy(&read.stdout).contains("read 4096/4096 bytes"));
    ours.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdcopy_copies_both_ways() {
    if !have("nbdcopy") {
        return;
    }
    let ours = Ours::start().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.raw");
    run_ok(cmd(
        "nbdcopy",
        &[&ours.unix_uri("disk"), out.to_str().unwrap()],
    ))
    .await;
    assert!(
        read_file(&out) == ours.disk.snapshot(),
        "nbdcopy read other bytes than we serve"
    );

    let input = dir.path().join("in.raw");
    let data = common::pattern(14, SIZE);
    std::fs::write(&input, &data).unwrap();
    run_ok(cmd(
        "nbdcopy",
        &[
            "--request-size=65536",
            input.to_str().unwrap(),
            &ours.tcp_uri("blank"),
        ],
    ))
    .await;
    assert!(
        ours.blank.snapshot() == data,
        "nbdcopy wrote other bytes than the file's"
    );

    // Server to server: ours to ours, across exports.
    ours.blank.write_at(&[0u8; SIZE], 0).await.unwrap();
    run_ok(cmd(
        "nbdcopy",
        &[&ours.tcp_uri("ro"), &ours.unix_uri("blank")],
    ))
    .await;
    assert!(ours.blank.snapshot() == ours.ro.snapshot());
    ours.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdinfo_lists_and_describes_our_exports() {
    if !have("nbdinfo") {
        return;
    }
    let ours = Ours::start().await;
    let listed = run_ok(cmd("nbdinfo", &["--list", &ours.tcp_uri("")])).await;
    let text = String::from_utf8_lossy(&listed.stdout);
    for expected in [
        "export=\"disk\"",
        "export=\"blank\"",
        "export=\"ro\"",
        "an empty disk",
        "read only",
    ] {
        assert!(
            text.contains(expected),
            "nbdinfo --list lacks {expected:?}:\n{text}"
        );
    }

    let json = run_ok(cmd("nbdinfo", &["--json", &ours.unix_uri("blank")])).await;
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap_or_else(|e| {
        panic!(
            "nbdinfo --json: {e}: {}",
            String::from_utf8_lossy(&json.stdout)
        )
    });
    assert_eq!(v["protocol"], "newstyle-fixed");
    let e = &v["exports"][0];
    assert_eq!(e["export-name"], "blank");
    assert_eq!(e["export-size"], SIZE as u64);
    assert_eq!(e["description"], "an empty disk");
    assert_eq!(e["block_size_minimum"], 512);
    assert_eq!(e["block_size_preferred"], 4096);
    assert_eq!(e["block_size_maximum"], 1 << 20);
    assert_eq!(e["is_read_only"], false);
    assert_eq!(e["can_flush"], true);
    assert_eq!(e["can_trim"], true);
    assert_eq!(e["can_zero"], true);
    assert_eq!(e["can_fua"], true);
    assert_eq!(e["can_multi_conn"], true);

    let json = run_ok(cmd("nbdinfo", &["--json", &ours.tcp_uri("ro")])).await;
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["exports"][0]["is_read_only"], true);
    assert_eq!(v["exports"][0]["export-size"], SIZE as u64);
    ours.stop().await;
}

/// `nbdkit memory SIZE` on a Unix socket in `dir`, killed on drop.
fn nbdkit_memory(dir: &Path, size: u64) -> (ChildGuard, PathBuf) {
    static STARTED: AtomicUsize = AtomicUsize::new(0);
    let n = STARTED.fetch_add(1, Ordering::Relaxed);
    let sock = dir.join(format!("nbdkit-{n}.sock"));
    let pid = dir.join(format!("nbdkit-{n}.pid"));
    let mut child = ChildGuard::spawn(
        Command::new("nbdkit")
            .args(["-f", "--exit-with-parent", "-P"])
            .arg(&pid)
            .arg("-U")
            .arg(&sock)
            .args(["memory", &size.to_string()]),
    );
    // nbdkit writes its pid file once it accepts connections; probing
    // the socket instead would make it log a broken handshake.
    common::wait_for_file(&pid, &mut child);
    (child, sock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_against_nbdkit_memory() {
    if !have("nbdkit") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_unix_kit, sock) = nbdkit_memory(dir.path(), SIZE as u64);

    let list = NbdClient::list(tokio::net::UnixStream::connect(&sock).await.unwrap())
        .await
        .unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    let info = NbdClient::info(tokio::net::UnixStream::connect(&sock).await.unwrap(), "")
        .await
        .unwrap();
    assert_eq!(info.size, SIZE as u64);
    assert!(info
        .transmission_flags
        .contains(TransmissionFlags::SEND_FLUSH));

    let client = NbdClient::connect_unix(&sock, "").await.unwrap();
    let data = common::pattern(15, SIZE);
    client.write_at(&data, 0).await.unwrap();
    client.sync().await.unwrap();
    let mut back = vec![0u8; SIZE];
    client.read_at(&mut back, 0).await.unwrap();
    assert!(back == data, "nbdkit gave back other bytes than we wrote");
    client.write_zeroes(4096, 8192).await.unwrap();
    let mut z = vec![1u8; 8192];
    client.read_at(&mut z, 4096).await.unwrap();
    assert!(z.iter().all(|&b| b == 0));
    client.disconnect().await.unwrap();

    // The same over TCP, through a second connection to a second nbdkit.
    let port = common::free_port();
    let pid = dir.path().join("tcp-kit.pid");
    let mut tcp_kit = ChildGuard::spawn(
        Command::new("nbdkit")
            .args(["-f", "--exit-with-parent", "-P"])
            .arg(&pid)
            .args(["-i", "127.0.0.1", "-p", &port.to_string(), "memory", "1M"]),
    );
    common::wait_for_file(&pid, &mut tcp_kit);
    let client = NbdClient::connect_tcp(("127.0.0.1", port), "")
        .await
        .unwrap();
    assert_eq!(client.size().await.unwrap(), 1 << 20);
    client.write_at(b"over tcp", (1 << 20) - 8).await.unwrap();
    let mut back = [0u8; 8];
    client.read_at(&mut back, (1 << 20) - 8).await.unwrap();
    assert_eq!(&back, b"over tcp");
    client.disconnect().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_passes_the_conformance_suite_against_nbdkit() {
    if !have("nbdkit") {
        return;
    }
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let factory = |size: u64| {
        let dir = dir.clone();
        async move {
            let (kit, sock) = nbdkit_memory(dir.path(), size);
            let client = NbdClient::connect_unix(&sock, "").await.unwrap();
            Guarded::shared(client, kit)
        }
    };
    for size in backends::conformance::SIZES {
        backends::conformance::run_all(&factory, size).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_against_qemu_nbd() {
    if !have("qemu-nbd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("disk.raw");
    let original = common::pattern(16, SIZE);
    std::fs::write(&file, &original).unwrap();
    let sock = dir.path().join("qemu-nbd.sock");
    let mut qemu = ChildGuard::spawn(
        Command::new("qemu-nbd")
            .args([
                "-f",
                "raw",
                "--persistent",
                "-x",
                "vm-disk",
                "-D",
                "a qemu disk",
                "-k",
            ])
            .arg(&sock)
            .arg(&file),
    );
    common::wait_for_socket(&sock, &mut qemu);

    let list = NbdClient::list(tokio::net::UnixStream::connect(&sock).await.unwrap())
        .await
        .unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].name, "vm-disk");
    assert_eq!(list[0].description.as_deref(), Some("a qemu disk"));
    let info = NbdClient::info(
        tokio::net::UnixStream::connect(&sock).await.unwrap(),
        "vm-disk",
    )
    .await
    .unwrap();
    assert_eq!(info.size, SIZE as u64);
    assert_eq!(info.description.as_deref(), Some("a qemu disk"));
    assert!(info.block_size.is_some(), "qemu-nbd advertises block sizes");

    let client = NbdClient::connect_unix(&sock, "vm-disk").await.unwrap();
    let mut back = vec![0u8; SIZE];
    client.read_at(&mut back, 0).await.unwrap();
    assert!(
        back == original,
        "qemu-nbd served other bytes than the file's"
    );
    // Unaligned, and across qemu's advertised block sizes.
    let patch = common::pattern(17, 100_003);
    client.write_at(&patch, 777).await.unwrap();
    client.sync().await.unwrap();
    client.disconnect().await.unwrap();

    let mut expected = original;
    expected[777..777 + patch.len()].copy_from_slice(&patch);
    // --persistent keeps serving; the write is in the file after the flush.
    assert!(
        read_file(&file) == expected,
        "the file does not hold what we wrote"
    );

    // A second connection sees the first one's writes.
    let client = NbdClient::connect_unix(&sock, "vm-disk").await.unwrap();
    let mut again = vec![0u8; patch.len()];
    client.read_at(&mut again, 777).await.unwrap();
    assert_eq!(again, patch);
    client.disconnect().await.unwrap();
}
