//! Mounts go away completely: on unmount, on drop, when busy, and as
//! leftovers found by the cleanup.

#![allow(clippy::unwrap_used)] // test helpers and closures outside #[test] fns

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use backends::MemoryBackend;
use common::{is_mounted, mount_pattern, options, pattern, runtime};
use fusefs::{FuseError, FuseFile, MountError, UnmountKind};

const SIZE: usize = 256 << 10;

#[test]
fn unmount_removes_the_mount_and_the_created_directories() {
    require_fuse!();
    let rt = runtime();
    let (file, _backend) = mount_pattern(&rt, "unmount", SIZE);
    let mountpoint = file.mountpoint().to_path_buf();
    let parent = mountpoint.parent().unwrap().to_path_buf();
    assert!(is_mounted(&mountpoint));
    assert_eq!(std::fs::read(file.path()).unwrap(), pattern(SIZE));
    let report = file.unmount().unwrap();
    assert_eq!(report.kind, UnmountKind::Clean);
    assert!(
        report.session_ended,
        "request threads must end after a clean unmount"
    );
    assert!(!is_mounted(&mountpoint));
    assert!(
        !mountpoint.exists() && !parent.exists(),
        "created directories must go"
    );
}

#[test]
fn drop_without_unmount_cleans_up_too() {
    require_fuse!();
    let rt = runtime();
    let (file, _backend) = mount_pattern(&rt, "drop", SIZE);
    let mountpoint = file.mountpoint().to_path_buf();
    drop(file);
    assert!(!is_mounted(&mountpoint));
    assert!(!mountpoint.exists());
}

#[test]
fn a_busy_mount_is_detached_and_its_users_keep_working() {
    require_fuse!();
    let rt = runtime();
    let (file, _backend) = mount_pattern(&rt, "busy", SIZE);
    let mountpoint = file.mountpoint().to_path_buf();
    let open = File::open(file.path()).unwrap();
    let map = file.map().unwrap();
    let report = file.unmount().unwrap();
    assert_eq!(report.kind, UnmountKind::Detached);
    assert!(!is_mounted(&mountpoint));
    assert!(!mountpoint.exists());
    // The detached file system still serves its open descriptor and mapping.
    let mut buf = vec![0u8; 4096];
    open.read_exact_at(&mut buf, 65_536).unwrap();
    assert_eq!(buf, pattern(SIZE)[65_536..65_536 + 4096]);
    assert!(map[..] == pattern(SIZE)[..]);
    drop((open, map));
}

#[test]
fn a_mapping_may_outlive_the_fuse_file() {
    require_fuse!();
    let rt = runtime();
    let (file, backend) = mount_pattern(&rt, "outlive", SIZE);
    let mountpoint = file.mountpoint().to_path_buf();
    let mut map = file.map().unwrap();
    drop(file);
    assert!(!is_mounted(&mountpoint));
    map.as_mut_slice().unwrap()[100] = 0xFE;
    drop(map);
    assert_eq!(
        backend.snapshot()[100],
        0xFE,
        "the detached mount still writes back"
    );
}

#[test]
fn a_non_empty_mountpoint_is_refused_and_left_alone() {
    require_fuse!();
    let rt = runtime();
    let dir = common::mountpoint("nonempty");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("keep"), b"data").unwrap();
    let backend = Arc::new(MemoryBackend::new(SIZE as u64));
    let mut o = options(&rt, "unused", backend, SIZE as u64);
    o.mountpoint = dir.clone();
    let err = FuseFile::mount(o).unwrap_err();
    assert!(
        matches!(err, FuseError::Mount(MountError::NotEmpty { .. })),
        "{err}"
    );
    assert!(!is_mounted(&dir));
    assert_eq!(std::fs::read(dir.join("keep")).unwrap(), b"data");
    std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
}

#[test]
fn leftovers_are_found_and_unmounted_by_prefix() {
    require_fuse!();
    let rt = runtime();
    let prefix = format!("msb-fusefs-leftover-{}", std::process::id());
    let backend = Arc::new(MemoryBackend::new(SIZE as u64));
    let mut o = options(&rt, "leftover", backend, SIZE as u64);
    o.fs_name = prefix.clone();
    let file = FuseFile::mount(o).unwrap();
    let mountpoint = file.mountpoint().to_path_buf();
    // What a crash leaves: the mount, with nobody to unmount it.
    std::mem::forget(file);
    let leftovers = fusefs::leftover_mounts().unwrap();
    assert!(leftovers
        .iter()
        .any(|m| m.mount_point == mountpoint && m.source == prefix));

    let report = fusefs::unmount_leftovers(&prefix).unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(
        report.unmounted.len(),
        1,
        "only our prefix may match: {report:?}"
    );
    assert_eq!(report.unmounted[0].mount_point, mountpoint);
    assert!(!is_mounted(&mountpoint));
    std::fs::remove_dir_all(mountpoint.parent().unwrap()).unwrap();
}
