//! Read-only mounts refuse every kind of write.

#![allow(clippy::unwrap_used)] // test helpers and closures outside #[test] fns

mod common;

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::Arc;

use backends::MemoryBackend;
use common::{options, pattern, runtime};
use fusefs::FuseFile;

const SIZE: usize = 256 << 10;

fn refused(err: &std::io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EACCES | libc::EPERM | libc::EROFS)
    )
}

#[test]
fn read_only_mount_reads_but_refuses_writes() {
    require_fuse!();
    let rt = runtime();
    let backend = Arc::new(MemoryBackend::from_bytes(pattern(SIZE)));
    let mut o = options(&rt, "ro", backend.clone(), SIZE as u64);
    o.read_only = true;
    let file = FuseFile::mount(o).unwrap();
    assert!(file.read_only());
    assert_eq!(std::fs::read(file.path()).unwrap(), pattern(SIZE));
    assert_eq!(
        std::fs::metadata(file.path()).unwrap().mode() & 0o7777,
        0o444
    );

    let err = File::options().write(true).open(file.path()).unwrap_err();
    assert!(refused(&err), "{err}");
    let err = File::options()
        .read(true)
        .write(true)
        .open(file.path())
        .unwrap_err();
    assert!(refused(&err), "{err}");
    let f = File::open(file.path()).unwrap();
    let err = f.write_at(b"x", 0).unwrap_err();
    assert!(
        refused(&err) || err.raw_os_error() == Some(libc::EBADF),
        "{err}"
    );
    let err = f.set_len(SIZE as u64).unwrap_err();
    assert!(
        refused(&err) || err.raw_os_error() == Some(libc::EINVAL),
        "{err}"
    );
    drop(f);

    let mut map = file.map().unwrap();
    assert!(!map.is_writable());
    assert!(map.as_mut_slice().is_none());
    assert!(map[..] == pattern(SIZE)[..]);
    drop(map);
    assert_eq!(
        backend.snapshot(),
        pattern(SIZE),
        "nothing may have been written"
    );
    file.unmount().unwrap();
}
