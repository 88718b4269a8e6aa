//! The file mapped MAP_SHARED: faults pull, msync pushes.

#![allow(clippy::unwrap_used)] // test helpers and closures outside #[test] fns

mod common;

use std::sync::Arc;

use backends::MemoryBackend;
use common::{mount_pattern, options, pattern, runtime};
use fusefs::FuseFile;

const SIZE: usize = 4 << 20;

#[test]
fn mapping_reads_every_byte_of_the_backend() {
    require_fuse!();
    let rt = runtime();
    let (file, _backend) = mount_pattern(&rt, "map-read", SIZE);
    let map = file.map().unwrap();
    assert!(map.is_writable());
    assert_eq!(map.len(), SIZE);
    assert!(
        map[..] == pattern(SIZE)[..],
        "mapped bytes differ from the backend"
    );
    assert!(file.stats().bytes_read >= SIZE as u64);
    drop(map);
    file.unmount().unwrap();
}

#[test]
fn writes_through_the_mapping_reach_the_backend_on_msync() {
    require_fuse!();
    let rt = runtime();
    let (file, backend) = mount_pattern(&rt, "map-write", SIZE);
    let mut mapping = file.map().unwrap();
    let map = mapping.as_mut_slice().unwrap();
    let mut expected = pattern(SIZE);
    // Scattered single bytes, a page-crossing run and the very last byte.
    for i in (0..SIZE).step_by(65_537) {
        map[i] = !map[i];
        expected[i] = !expected[i];
    }
    map[8190..8200].copy_from_slice(&[0xEE; 10]);
    expected[8190..8200].copy_from_slice(&[0xEE; 10]);
    map[SIZE - 1] = 0x42;
    expected[SIZE - 1] = 0x42;
    mapping.flush().unwrap();
    assert!(
        backend.snapshot() == expected,
        "backend differs after msync"
    );
    assert!(file.stats().writes > 0);
    assert!(
        file.stats().syncs > 0,
        "msync must fsync, which syncs the backend"
    );
    drop(mapping);
    file.unmount().unwrap();
}

#[test]
fn a_second_mapping_sees_the_first_ones_writes() {
    require_fuse!();
    let rt = runtime();
    let backend = Arc::new(MemoryBackend::new(SIZE as u64));
    let file = FuseFile::mount(options(&rt, "map-shared", backend.clone(), SIZE as u64)).unwrap();
    let mut a = file.map().unwrap();
    let b = file.map().unwrap();
    a.as_mut_slice().unwrap()[12_345] = 99;
    assert_eq!(b[12_345], 99, "MAP_SHARED mappings of one file share pages");
    // Dropped dirty: the drop's msync must write the page back before the
    // munmap would (under mmap_lock, which would deadlock with this
    // process's own request threads).
    drop((a, b));
    assert_eq!(backend.snapshot()[12_345], 99);
    file.unmount().unwrap();
}
