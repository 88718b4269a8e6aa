//! Reading and writing the file with ordinary file I/O.

#![allow(clippy::unwrap_used)] // test helpers and closures outside #[test] fns

mod common;

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::Arc;

use backends::testing::Probe;
use backends::MemoryBackend;
use common::{mount_pattern, options, pattern, runtime};
use fusefs::{FuseFile, MountMethod};

const SIZE: usize = 1 << 20;

#[test]
fn pread_at_various_offsets_returns_the_backend_bytes() {
    require_fuse!();
    let rt = runtime();
    let (file, _backend) = mount_pattern(&rt, "pread", SIZE);
    assert_eq!(file.mount_method(), MountMethod::Syscall);
    let expected = pattern(SIZE);
    let f = File::open(file.path()).unwrap();
    let cases: &[(u64, usize)] = &[
        (0, 1),
        (0, 4096),
        (1, 4095),
        (4095, 2),
        (12_345, 100_000),
        (SIZE as u64 - 4096, 4096),
        (SIZE as u64 / 2, SIZE / 2),
    ];
    for &(offset, len) in cases {
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, offset).unwrap();
        let start = offset as usize;
        assert_eq!(buf, expected[start..start + len], "{len} bytes at {offset}");
    }
    // Crossing the end: short; at the end: EOF.
    let mut buf = vec![0u8; 8192];
    let n = f.read_at(&mut buf, SIZE as u64 - 100).unwrap();
    assert_eq!(n, 100);
    assert_eq!(buf[..100], expected[SIZE - 100..]);
    assert_eq!(f.read_at(&mut buf, SIZE as u64).unwrap(), 0);
    assert_eq!(f.read_at(&mut buf, SIZE as u64 + 5000).unwrap(), 0);
    // The whole file in one go.
    assert_eq!(std::fs::read(file.path()).unwrap(), expected);
    assert!(file.stats().reads > 0);
    assert!(file.stats().bytes_read >= SIZE as u64);
    drop(f);
    file.unmount().unwrap();
}

#[test]
fn writes_reach_the_backend_and_fsync_syncs_it() {
    require_fuse!();
    let rt = runtime();
    let memory = Arc::new(MemoryBackend::from_bytes(pattern(SIZE)));
    let backend = Arc::new(Probe::over(memory.clone()));
    let file = FuseFile::mount(options(&rt, "write", backend.clone(), SIZE as u64)).unwrap();
    let f = File::options()
        .read(true)
        .write(true)
        .open(file.path())
        .unwrap();
    let mut expected = pattern(SIZE);
    for (offset, len, byte) in [
        (0usize, 10usize, 0xAAu8),
        (4000, 200, 0xBB),
        (SIZE - 7, 7, 0xCC),
        (300_000, 256 << 10, 0xDD),
    ] {
        let data = vec![byte; len];
        f.write_all_at(&data, offset as u64).unwrap();
        expected[offset..offset + len].copy_from_slice(&data);
    }
    let syncs_before = backend.syncs();
    f.sync_all().unwrap();
    assert!(
        backend.syncs() > syncs_before,
        "fsync must call the backend's sync"
    );
    assert_eq!(memory.snapshot(), expected);
    // Reading back through the file sees the writes too.
    let mut buf = vec![0u8; 200];
    f.read_exact_at(&mut buf, 4000).unwrap();
    assert_eq!(buf, vec![0xBB; 200]);

    // A write crossing the end is short; one at the end has no room.
    assert_eq!(f.write_at(&[1, 2, 3, 4], SIZE as u64 - 2).unwrap(), 2);
    assert_eq!(memory.snapshot()[SIZE - 2..], [1, 2]);
    let err = f.write_at(&[1], SIZE as u64).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EFBIG), "{err}");
    assert_eq!(
        f.metadata().unwrap().len(),
        SIZE as u64,
        "size must not grow"
    );
    drop(f);
    // close() flushes, and flush syncs.
    let syncs_before = backend.syncs();
    drop(File::options().write(true).open(file.path()).unwrap());
    assert!(backend.syncs() > syncs_before, "close must flush");
    let syncs_before = backend.syncs();
    drop(File::open(file.path()).unwrap());
    assert_eq!(
        backend.syncs(),
        syncs_before,
        "closing a read-only descriptor has nothing to sync"
    );
    let stats = file.stats();
    assert!(stats.writes >= 4 && stats.syncs >= 2, "{stats:?}");
    file.unmount().unwrap();
}

#[test]
fn directory_metadata_and_size_changes() {
    require_fuse!();
    let rt = runtime();
    let (file, _backend) = mount_pattern(&rt, "meta", SIZE);
    let names: Vec<_> = std::fs::read_dir(file.mountpoint())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["region"]);
    let meta = std::fs::metadata(file.path()).unwrap();
    assert!(meta.is_file());
    assert_eq!(meta.len(), SIZE as u64);
    assert_eq!(meta.mode() & 0o7777, 0o644);
    assert_eq!(meta.blocks(), SIZE as u64 / 512);
    assert!(std::fs::metadata(file.mountpoint().join("other")).is_err());
    let statfs = nix::sys::statfs::statfs(file.mountpoint()).unwrap();
    assert_eq!(statfs.blocks() * statfs.block_size() as u64, SIZE as u64);

    let f = File::options().write(true).open(file.path()).unwrap();
    f.set_len(SIZE as u64).unwrap();
    let err = f.set_len(SIZE as u64 / 2).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
    let err = File::options()
        .write(true)
        .truncate(true)
        .open(file.path())
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
    assert_eq!(std::fs::metadata(file.path()).unwrap().len(), SIZE as u64);
    let err = std::fs::set_permissions(
        file.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
    let err = File::create_new(file.mountpoint().join("new")).unwrap_err();
    assert_ne!(err.kind(), ErrorKind::AlreadyExists);
    assert!(nix::unistd::access(
        file.path(),
        nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::W_OK
    )
    .is_ok());
    drop(f);
    file.unmount().unwrap();
}

#[test]
fn invalidate_makes_backend_changes_visible() {
    require_fuse!();
    let rt = runtime();
    let (file, backend) = mount_pattern(&rt, "inval", SIZE);
    let f = File::open(file.path()).unwrap();
    let mut buf = vec![0u8; 4096];
    f.read_exact_at(&mut buf, 8192).unwrap();
    assert_eq!(buf, pattern(SIZE)[8192..12288]);
    // Behind the kernel's back: the page cache still holds the old bytes.
    rt.block_on(backends::Backend::write_at(&*backend, &[0x5A; 4096], 8192))
        .unwrap();
    file.invalidate(8192, 4096).unwrap();
    f.read_exact_at(&mut buf, 8192).unwrap();
    assert_eq!(buf, vec![0x5A; 4096]);
    file.invalidate(0, 0).unwrap();
    drop(f);
    file.unmount().unwrap();
}

#[test]
fn fusermount_helper_mounts_and_unmounts() {
    require_fuse!();
    if std::process::Command::new(fusefs::mount::FUSERMOUNT)
        .arg("-V")
        .output()
        .is_err()
    {
        eprintln!("skipping: {} is not installed", fusefs::mount::FUSERMOUNT);
        return;
    }
    let rt = runtime();
    let backend = Arc::new(MemoryBackend::from_bytes(pattern(SIZE)));
    let mut o = options(&rt, "helper", backend.clone(), SIZE as u64);
    o.mount_via = fusefs::MountVia::Fusermount;
    let file = FuseFile::mount(o).unwrap();
    assert_eq!(file.mount_method(), MountMethod::Fusermount);
    assert_eq!(std::fs::read(file.path()).unwrap(), pattern(SIZE));
    // Not std::fs::write: its O_TRUNC asks for size 0, which is refused.
    let f = File::options().write(true).open(file.path()).unwrap();
    f.write_all_at(&vec![9u8; SIZE], 0).unwrap();
    drop(f);
    assert_eq!(backend.snapshot(), vec![9u8; SIZE]);
    let mountpoint = file.mountpoint().to_path_buf();
    let entry = fusefs::cleanup::mounts()
        .unwrap()
        .into_iter()
        .find(|m| m.mount_point == mountpoint)
        .unwrap();
    assert_eq!(entry.source, fusefs::DEFAULT_FS_NAME);
    file.unmount().unwrap();
    assert!(!common::is_mounted(&mountpoint));
}

#[test]
fn readahead_and_write_size_tunables_take_effect() {
    require_fuse!();
    let rt = runtime();
    let backend = Arc::new(MemoryBackend::from_bytes(pattern(SIZE)));
    let mut o = options(&rt, "tunables-up", backend.clone(), SIZE as u64);
    o.max_readahead = Some(1 << 20);
    o.max_write = 64 << 10;
    let file = FuseFile::mount(o).unwrap();
    let settings = file.kernel_settings().unwrap();
    assert_eq!(settings.max_write, 64 << 10);
    assert!(settings.async_read);
    // More than the kernel offers in INIT goes through sysfs.
    assert_eq!(file.read_ahead_kb(), Some(1024));
    assert_eq!(std::fs::read(file.path()).unwrap(), pattern(SIZE));
    file.unmount().unwrap();

    let mut o = options(&rt, "tunables-down", backend, SIZE as u64);
    o.max_readahead = Some(32 << 10);
    let file = FuseFile::mount(o).unwrap();
    assert_eq!(file.kernel_settings().unwrap().max_readahead, 32 << 10);
    assert_eq!(file.read_ahead_kb(), Some(32));
    file.unmount().unwrap();
}
