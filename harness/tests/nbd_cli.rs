//! End-to-end tests of `harness nbd serve` and `harness nbd info`: a real
//! server process, our client, and qemu's tools where installed.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use backends::Backend as _;
use nbd::NbdClient;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// How long anything in these tests may take before it counts as hung.
const PATIENCE: Duration = Duration::from_secs(30);

fn harness() -> Command {
    Command::new(env!("CARGO_BIN_EXE_harness"))
}

/// Runs `cmd`, printing what it said when it fails.
fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    if !out.status.success() {
        eprintln!(
            "{cmd:?} failed\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Runs a command that must fail; returns its stderr.
fn run_failing(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        !out.status.success(),
        "{cmd:?} succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A `harness nbd serve` child, killed on drop so no test leaves one behind.
struct Served {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
    /// `listening on ...`: a socket address or a socket path.
    listening: String,
    /// One URI per export, in argument order.
    uris: Vec<String>,
}

impl Served {
    /// Starts the server and waits for its address and export lines.
    fn start(args: &[&str]) -> Served {
        let exports = args.iter().filter(|a| a.contains('=')).count();
        let mut child = harness()
            .args(["nbd", "serve"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut stderr_pipe = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr_pipe.read_to_string(&mut text);
            text
        });
        let mut served = Served {
            child,
            lines,
            stderr: Some(stderr),
            listening: String::new(),
            uris: Vec::new(),
        };
        let first = served.next_line();
        served.listening = first
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("first line {first:?} is not `listening on ADDR`"))
            .to_owned();
        for _ in 0..exports {
            let line = served.next_line();
            let uri = line
                .strip_prefix("export ")
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap_or_else(|| panic!("{line:?} is not an export line"));
            served.uris.push(uri.to_owned());
        }
        served
    }

    fn next_line(&mut self) -> String {
        match self.lines.recv_timeout(PATIENCE) {
            Ok(line) => line,
            Err(e) => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let stderr = self.stderr.take().map(|h| h.join().unwrap());
                panic!("no line from the server ({e}); stderr: {stderr:?}");
            }
        }
    }

    /// `nbd://ADDR`, for a TCP server.
    fn base(&self) -> String {
        format!("nbd://{}", self.listening)
    }

    /// Sends `signal` and waits for the exit; returns the status, the rest
    /// of stdout and all of stderr.
    fn stop(mut self, signal: Signal) -> (ExitStatus, String, String) {
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the server ignored {signal} for {PATIENCE:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // The child has exited, but the reader thread may not have passed
        // on its last lines yet: read until it hangs up (stdout closed).
        let rest: Vec<String> =
            std::iter::from_fn(|| self.lines.recv_timeout(PATIENCE).ok()).collect();
        let stderr = self.stderr.take().unwrap().join().unwrap();
        (status, rest.join("\n"), stderr)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        // Fine to fail: the child may have exited already.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `harness nbd info URL --json`, parsed.
fn info_json(url: &str) -> Value {
    let out = run(harness().args(["nbd", "info", url, "--json"]));
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A file of `len` bytes whose every byte differs from its neighbours.
fn patterned_file(path: &Path, len: usize) -> Vec<u8> {
    let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    std::fs::write(path, &bytes).unwrap();
    bytes
}

#[test]
fn info_lists_memory_and_file_exports_and_serve_counts_them() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("disk.img");
    patterned_file(&img, 3 << 20);
    let file_spec = format!("img=file:{}", img.display());
    let server = Served::start(&["--listen", "127.0.0.1:0", "mem=memory:1M", &file_spec]);
    assert!(!server.listening.ends_with(":0"), "{}", server.listening);
    assert_eq!(
        server.uris,
        [
            format!("{}/mem", server.base()),
            format!("{}/img", server.base())
        ]
    );

    let all = info_json(&server.base());
    assert_eq!(all["uri"], server.base());
    let exports = all["exports"].as_array().unwrap();
    let sizes: Vec<(&str, u64)> = exports
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e["size"].as_u64().unwrap()))
        .collect();
    assert_eq!(sizes, [("mem", 1 << 20), ("img", 3 << 20)]);
    assert_eq!(exports[0]["description"], "memory:1M");
    assert_eq!(exports[0]["read_only"], false);
    assert_eq!(exports[0]["uri"], server.uris[0]);
    assert_eq!(exports[1]["block_size"]["preferred"], 4096);
    let flags: Vec<&str> = exports[0]["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(
        flags.contains(&"flush") && flags.contains(&"trim"),
        "{flags:?}"
    );

    let one = run(harness().args(["nbd", "info", &server.uris[1]]));
    assert!(one.status.success());
    let text = String::from_utf8_lossy(&one.stdout);
    assert!(text.contains("export \"img\""), "{text}");
    assert!(text.contains("3145728 bytes (3 MiB)"), "{text}");
    assert!(text.contains("read-only     no"), "{text}");
    assert!(!text.contains("\"mem\""), "{text}");

    // One list and two infos, then one info: four connections, no requests.
    let (status, rest, stderr) = server.stop(Signal::SIGINT);
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(
        rest.contains("stopped: 4 connections (0 failed), 0 requests"),
        "{rest}"
    );
    assert!(stderr.contains("SIGINT"), "{stderr}");
}

#[test]
fn our_client_reads_back_what_it_wrote_and_sigterm_reports_the_bytes() {
    let server = Served::start(&["--listen", "127.0.0.1:0", "mem=memory:64K"]);
    let addr = server.listening.clone();
    let data: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 256) as u8).collect();
    runtime().block_on(async {
        let client = NbdClient::connect_tcp(addr.as_str(), "mem").await.unwrap();
        client.write_at(&data, 4096).await.unwrap();
        let mut back = vec![0u8; data.len()];
        client.read_at(&mut back, 4096).await.unwrap();
        assert_eq!(back, data);
        client.disconnect().await.unwrap();
        // A second connection sees the same bytes: they live in the server.
        let other = NbdClient::connect_tcp(addr.as_str(), "mem").await.unwrap();
        let mut again = vec![0u8; data.len()];
        other.read_at(&mut again, 4096).await.unwrap();
        assert_eq!(again, data);
        other.disconnect().await.unwrap();
    });
    let (status, rest, stderr) = server.stop(Signal::SIGTERM);
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(
        rest.contains("stopped: 2 connections (0 failed)")
            && rest.contains("16384 bytes read, 8192 bytes written"),
        "{rest}"
    );
}

#[test]
fn qemu_sees_the_size_and_its_writes_reach_the_file() {
    if !have("qemu-img") || !have("qemu-io") {
        println!("skipped: qemu-img or qemu-io not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("disk.img");
    let original = patterned_file(&img, 1 << 20);
    let file_spec = format!("img=file:{}", img.display());
    let server = Served::start(&["--listen", "127.0.0.1:0", "mem=memory:2M", &file_spec]);
    let (mem, img_uri) = (&server.uris[0], &server.uris[1]);

    let out = run(Command::new("qemu-img").args(["info", "--output=json", mem]));
    assert!(out.status.success());
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["virtual-size"], 2 << 20);

    let qemu_io = |uri: &str, cmd: &str| {
        Command::new("qemu-io")
            .args(["-f", "raw", "-c", cmd, uri])
            .output()
            .unwrap()
    };
    for uri in [mem, img_uri] {
        let out = qemu_io(uri, "write -P 0x5a 4096 4096");
        assert!(out.status.success(), "{out:?}");
        let out = qemu_io(uri, "read -P 0x5a 4096 4096");
        assert!(out.status.success(), "{out:?}");
        // The check above can fail: the wrong pattern is caught.
        let out = qemu_io(uri, "read -P 0x00 4096 4096");
        assert!(!out.status.success(), "{out:?}");
    }
    let on_disk = std::fs::read(&img).unwrap();
    assert_eq!(on_disk.len(), original.len());
    assert!(on_disk[4096..8192].iter().all(|&b| b == 0x5a));
    assert_eq!(on_disk[..4096], original[..4096]);
    assert_eq!(on_disk[8192..], original[8192..]);
    drop(server);
}

#[test]
fn read_only_exports_refuse_writes() {
    let server = Served::start(&["--listen", "127.0.0.1:0", "--read-only", "ro=memory:64K"]);
    let info = info_json(&server.uris[0]);
    assert_eq!(info["exports"][0]["read_only"], true);
    assert!(!info["exports"][0]["flags"]
        .as_array()
        .unwrap()
        .contains(&Value::from("trim")));

    let addr = server.listening.clone();
    runtime().block_on(async {
        let client = NbdClient::connect_tcp(addr.as_str(), "ro").await.unwrap();
        let err = client.write_at(b"nope", 0).await.unwrap_err();
        assert!(err.to_string().contains("read-only"), "{err}");
        let mut back = [0xffu8; 4];
        client.read_at(&mut back, 0).await.unwrap();
        assert_eq!(back, [0; 4]);
        client.disconnect().await.unwrap();
    });

    if have("qemu-io") {
        let out = Command::new("qemu-io")
            .args(["-f", "raw", "-c", "write -P 0x5a 0 4096", &server.uris[0]])
            .output()
            .unwrap();
        assert!(!out.status.success(), "qemu-io wrote to a read-only export");
    } else {
        println!("skipped the qemu-io half: qemu-io not installed");
    }
    let (status, rest, _) = server.stop(Signal::SIGINT);
    assert!(status.success());
    assert!(rest.contains("0 bytes written"), "{rest}");
}

#[test]
fn unix_socket_serves_a_directory_backend_and_is_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("nbd.sock");
    let chunks = tmp.path().join("chunks");
    let spec = format!("d=dir:{}:1M:64K", chunks.display());
    let server = Served::start(&["--unix", socket.to_str().unwrap(), &spec]);
    assert_eq!(server.listening, socket.display().to_string());
    let uri = format!("nbd+unix:///d?socket={}", socket.display());
    assert_eq!(server.uris, std::slice::from_ref(&uri));

    let info = info_json(&uri);
    assert_eq!(info["exports"][0]["size"], 1 << 20);
    let listed = info_json(&format!("nbd+unix://?socket={}", socket.display()));
    assert_eq!(listed["exports"][0]["name"], "d");

    runtime().block_on(async {
        let client = NbdClient::connect_unix(&socket, "d").await.unwrap();
        client.write_at(b"chunk three", 3 * 65536).await.unwrap();
        client.sync().await.unwrap();
        client.disconnect().await.unwrap();
    });
    let (status, _, stderr) = server.stop(Signal::SIGINT);
    assert!(status.success(), "{stderr}");
    assert!(!socket.exists(), "the socket outlived the server");
    let chunk = std::fs::read(chunks.join("3.chunk")).unwrap();
    assert_eq!(&chunk[..11], b"chunk three");

    // A restart reattaches to the chunk files written before.
    let server = Served::start(&["--unix", socket.to_str().unwrap(), &spec]);
    runtime().block_on(async {
        let client = NbdClient::connect_unix(&socket, "d").await.unwrap();
        let mut back = [0u8; 11];
        client.read_at(&mut back, 3 * 65536).await.unwrap();
        assert_eq!(&back, b"chunk three");
        client.disconnect().await.unwrap();
    });
    drop(server);
}

#[test]
fn bad_backend_specs_fail_naming_the_spec() {
    for spec in [
        "disk=floppy:3",
        "disk=memory:lots",
        "disk",
        "disk=dir:/tmp/x:1M",
    ] {
        let stderr = run_failing(harness().args(["nbd", "serve", "--listen", "127.0.0.1:0", spec]));
        assert!(stderr.contains(spec), "{spec}: {stderr}");
        assert!(
            stderr.contains("memory:SIZE") && stderr.contains("dir:PATH:SIZE:CHUNK"),
            "{stderr}"
        );
    }
    let stderr = run_failing(harness().args([
        "nbd",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "a=memory:4K",
        "a=memory:8K",
    ]));
    assert!(
        stderr.contains("\"a\"") && stderr.contains("unique"),
        "{stderr}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing.img");
    let spec = format!("img=file:{}", missing.display());
    let stderr = run_failing(harness().args(["nbd", "serve", "--listen", "127.0.0.1:0", &spec]));
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
    let stderr = run_failing(harness().args(["nbd", "serve", "--listen", "127.0.0.1:0"]));
    assert!(stderr.contains("NAME=BACKEND"), "{stderr}");
}

#[test]
fn a_busy_address_is_named() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let stderr = run_failing(harness().args(["nbd", "serve", "--listen", &addr, "a=memory:4K"]));
    assert!(stderr.contains(&format!("listening on {addr}")), "{stderr}");
}

#[test]
fn bad_urls_fail_naming_the_url() {
    for url in [
        "http://127.0.0.1/disk",
        "nbd:///disk",
        "nbd://h:99999/d",
        "nbds://h/d",
        "nbd+unix:///disk",
        "127.0.0.1:10809",
    ] {
        let stderr = run_failing(harness().args(["nbd", "info", url]));
        assert!(stderr.contains(&format!("{url:?}")), "{url}: {stderr}");
        assert!(
            stderr.contains("nbd://HOST[:PORT][/NAME]")
                && stderr.contains("nbd+unix:///NAME?socket=PATH"),
            "{stderr}"
        );
    }
}

#[test]
fn info_on_a_closed_port_or_unknown_export_says_where() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let stderr = run_failing(harness().args(["nbd", "info", &format!("nbd://127.0.0.1:{port}")]));
    assert!(
        stderr.contains(&format!("connecting to nbd://127.0.0.1:{port}")),
        "{stderr}"
    );

    let server = Served::start(&["--listen", "127.0.0.1:0", "mem=memory:4K"]);
    let stderr = run_failing(harness().args(["nbd", "info", &format!("{}/nope", server.base())]));
    assert!(
        stderr.contains("\"nope\"") && stderr.contains(&server.base()),
        "{stderr}"
    );
}

#[test]
fn help_shows_client_examples() {
    let out = run(harness().args(["nbd", "serve", "--help"]));
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for example in [
        "qemu-img info nbd://127.0.0.1:10809/disk",
        "nbdinfo --list nbd://127.0.0.1:10809",
        "nbdcopy nbd://127.0.0.1:10809/disk out.img",
    ] {
        assert!(help.contains(example), "help lacks {example}: {help}");
    }
    let out = run(harness().args(["nbd", "info", "--help"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("nbd+unix:///disk?socket="));
}
