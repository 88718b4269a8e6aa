//! The `nbdfuse` reference: mounted over `nbdkit memory`, written and read
//! back through its file, and gone (mount and process) after `unmount`.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::os::unix::fs::FileExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fusefs::nbdfuse::{NbdFuse, NbdFuseError, NbdFuseOptions, NBDFUSE};

/// `nbdkit memory` on a Unix socket, killed when dropped.
struct Nbdkit(Child);

impl Drop for Nbdkit {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nbdkit_memory(socket: &std::path::Path, size: &str) -> Option<Nbdkit> {
    let child = Command::new("nbdkit")
        .args(["-f", "--exit-with-parent", "-U"])
        .arg(socket)
        .args(["memory", size])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let server = Nbdkit(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Some(server)
}

fn mounted_here(dir: &std::path::Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(dir.to_str().unwrap()))
}

#[test]
fn nbdfuse_serves_an_export_and_goes_away_on_unmount() {
    require_fuse!();
    if fusefs::nbdfuse::available().is_err() {
        eprintln!("skipping: {NBDFUSE} is not installed (Debian: libnbd-bin)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("nbdkit.sock");
    let Some(_server) = nbdkit_memory(&socket, "1M") else {
        eprintln!("skipping: nbdkit memory did not start (Debian: nbdkit)");
        return;
    };
    let uri = format!("nbd+unix:///?socket={}", socket.display());
    let dir = tmp.path().join("mnt");
    let options = NbdFuseOptions {
        read_only: false,
        ..NbdFuseOptions::default()
    };
    let fuse = NbdFuse::mount(Command::new(NBDFUSE), &dir, &uri, &options).unwrap();
    assert!(mounted_here(&dir));
    let pattern: Vec<u8> = (0..1 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(fuse.path())
        .unwrap();
    assert_eq!(file.metadata().unwrap().len(), 1 << 20);
    file.write_all_at(&pattern, 0).unwrap();
    file.sync_all().unwrap();
    let mut back = vec![0u8; pattern.len()];
    file.read_exact_at(&mut back, 0).unwrap();
    assert!(back == pattern, "the bytes read back differ");
    drop(file);
    fuse.unmount().unwrap();
    assert!(!mounted_here(&dir), "the mount outlived unmount");
    assert!(!dir.exists(), "the mount point was left");
}

#[test]
fn a_server_that_is_not_there_is_an_error_with_nbdfuse_s_words() {
    require_fuse!();
    if fusefs::nbdfuse::available().is_err() {
        eprintln!("skipping: {NBDFUSE} is not installed (Debian: libnbd-bin)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mnt");
    let uri = format!(
        "nbd+unix:///?socket={}",
        tmp.path().join("nobody-listens").display()
    );
    match NbdFuse::mount(
        Command::new(NBDFUSE),
        &dir,
        &uri,
        &NbdFuseOptions::default(),
    ) {
        Err(NbdFuseError::ExitedEarly { stderr, .. }) => {
            assert!(!stderr.is_empty(), "no reason given");
        }
        other => panic!("expected an early exit, got {other:?}"),
    }
    assert!(!mounted_here(&dir));
}
