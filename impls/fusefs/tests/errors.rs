//! A failing backend turns into errno values, never into a hang.

#![allow(clippy::unwrap_used)] // test helpers and closures outside #[test] fns

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use common::{failing_backend, options, runtime, within};
use fusefs::{FuseFile, ReplyMode};

const SIZE: u64 = 1 << 20;
const LIVENESS: Duration = Duration::from_secs(30);

fn failing_backend_gives_errnos(mode: ReplyMode) {
    let rt = runtime();
    let mut o = options(&rt, "fail", Arc::new(failing_backend(SIZE)), SIZE);
    o.reply_mode = mode;
    let file = FuseFile::mount(o).unwrap();
    let path = file.path().to_path_buf();
    let (read, write, fsync) = within(LIVENESS, move || {
        let f = File::options().read(true).write(true).open(&path).unwrap();
        let mut buf = [0u8; 4096];
        let read = f.read_at(&mut buf, 4096).unwrap_err();
        let write = f.write_at(&buf, 0).unwrap_err();
        let fsync = f.sync_all().unwrap_err();
        (read, write, fsync)
    });
    assert_eq!(
        read.raw_os_error(),
        Some(libc::EIO),
        "Remote -> EIO: {read}"
    );
    assert_eq!(
        write.raw_os_error(),
        Some(libc::ENOSPC),
        "Io keeps its errno: {write}"
    );
    assert_eq!(
        fsync.raw_os_error(),
        Some(libc::EIO),
        "Closed -> EIO: {fsync}"
    );
    assert!(file.stats().errors >= 3, "{:?}", file.stats());
    file.unmount().unwrap();
}

#[test]
fn failing_backend_gives_errnos_with_async_replies() {
    require_fuse!();
    failing_backend_gives_errnos(ReplyMode::Async);
}

#[test]
fn failing_backend_gives_errnos_with_blocking_replies() {
    require_fuse!();
    failing_backend_gives_errnos(ReplyMode::Blocking);
}

#[test]
fn a_backend_smaller_than_the_file_is_an_io_error() {
    require_fuse!();
    let rt = runtime();
    let backend = Arc::new(backends::MemoryBackend::new(SIZE / 2));
    let file = FuseFile::mount(options(&rt, "short", backend, SIZE)).unwrap();
    let f = File::open(file.path()).unwrap();
    let mut buf = vec![0u8; 4096];
    f.read_exact_at(&mut buf, 0).unwrap();
    let err = f.read_exact_at(&mut buf, SIZE - 4096).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{err}");
    assert_eq!(
        f.metadata().unwrap().len(),
        SIZE,
        "a failed read must not shrink the file"
    );
    drop(f);
    file.unmount().unwrap();
}

#[test]
fn a_shut_down_runtime_fails_requests_instead_of_hanging() {
    require_fuse!();
    let rt = runtime();
    let backend = Arc::new(backends::MemoryBackend::new(SIZE));
    let file = FuseFile::mount(options(&rt, "shutdown", backend, SIZE)).unwrap();
    rt.shutdown_background();
    let path = file.path().to_path_buf();
    let read = within(LIVENESS, move || {
        let f = File::open(path).unwrap();
        f.read_at(&mut [0u8; 4096], 0)
    });
    assert_eq!(read.unwrap_err().raw_os_error(), Some(libc::EIO));
    // The request thread survived: requests it answers itself still work.
    assert_eq!(std::fs::metadata(file.path()).unwrap().len(), SIZE);
    file.unmount().unwrap();
}
