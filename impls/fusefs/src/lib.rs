//! A remote region exposed as one file in a FUSE file system.
//!
//! On hosts without the kernel NBD client, the project shows a region as a
//! single regular file in its own FUSE mount; the application `mmap`s it
//! `MAP_SHARED`, page faults become FUSE reads that pull from a
//! [`backends::SharedBackend`], and dirty pages come back as FUSE writes that
//! push to it (thesis sections 3.3 and 4.3). libnbd's `nbdfuse` does the same
//! over NBD and is the reference this crate is compared with.
//!
//! # Layout
//!
//! - [`options`] holds [`FuseFileOptions`] and its validation.
//! - [`file`](mod@file) holds [`FuseFile`]: mount, map, invalidate, unmount.
//! - [`fs`](mod@fs) is the file system (fuser callbacks), its errno mapping
//!   and [`KernelSettings`].
//! - [`mount`](mod@mount) makes the kernel mount (`mount(2)` or
//!   `fusermount3`) and removes it.
//! - [`cleanup`] finds and detaches mounts that crashed runs left behind.
//! - [`stats`] holds [`FuseStats`].
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use backends::MemoryBackend;
//! use fusefs::{FuseFile, FuseFileOptions};
//!
//! let runtime = tokio::runtime::Runtime::new().unwrap();
//! let backend = Arc::new(MemoryBackend::from_bytes(vec![7; 1 << 20]));
//! let options = FuseFileOptions::new("/tmp/msb-fuse-demo", backend, 1 << 20, runtime.handle().clone());
//! let file = FuseFile::mount(options).unwrap();
//! let mut map = file.map().unwrap();
//! assert_eq!(map[4096], 7);
//! map.as_mut_slice().unwrap()[0] = 1;
//! map.flush().unwrap(); // written back to the backend
//! drop(map); // unmapped (after another msync)
//! file.unmount().unwrap();
//! ```

pub mod cleanup;
pub mod file;
pub mod fs;
pub mod mount;
pub mod nbdfuse;
pub mod options;
pub mod stats;

pub use cleanup::{leftover_mounts, unmount_leftovers, CleanupError, CleanupReport, MountEntry};
pub use file::{FuseError, FuseFile, MappedFile, UnmountReport};
pub use fs::{errno_for, KernelSettings, FILE_INO};
pub use mount::{device_available, MountError, MountMethod, UnmountKind};
pub use options::{
    FuseFileOptions, MountVia, OptionsError, ReplyMode, DEFAULT_FS_NAME, FS_NAME_PREFIX,
};
pub use stats::FuseStats;

#[cfg(test)]
mod tests {
    /// The harness moves these between threads and tasks.
    #[test]
    fn handles_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<crate::FuseFile>();
        check::<crate::MappedFile>();
        check::<crate::FuseFileOptions>();
    }
}
