//! What to mount and how: [`FuseFileOptions`] and its validation.

use std::path::PathBuf;

use backends::SharedBackend;
use tokio::runtime::{Handle, RuntimeFlavor};

/// The source name every mount of this crate starts with, so that
/// [`crate::cleanup`] can tell our leftovers from anybody else's mounts.
pub const FS_NAME_PREFIX: &str = "msb-";

/// The default source name shown in `/proc/mounts`.
pub const DEFAULT_FS_NAME: &str = "msb-fusefs";

/// Largest request the kernel accepts per FUSE read or write: 256 pages
/// (`FUSE_MAX_MAX_PAGES`). Larger `max_write` values are clamped by the
/// kernel anyway, so we refuse them instead of pretending.
pub const MAX_REQUEST_BYTES: u32 = 1 << 20;

/// Smallest `max_write` the FUSE protocol allows.
pub const MIN_MAX_WRITE: u32 = 4096;

/// How the mount is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MountVia {
    /// `mount(2)` when privileged, `fusermount3` when that fails with `EPERM`.
    #[default]
    Auto,
    /// Only `mount(2)` on a `/dev/fuse` descriptor we opened (needs `CAP_SYS_ADMIN`).
    Syscall,
    /// Only the setuid helper `fusermount3`, which passes the descriptor back
    /// over a socket (what unprivileged libfuse programs do).
    Fusermount,
}

/// How read, write, flush and fsync requests are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplyMode {
    /// Each request becomes a task on the runtime that replies when the
    /// backend answers, so the request thread goes straight back to the
    /// kernel and many requests are in flight at once. Needs a multi-thread
    /// runtime.
    #[default]
    Async,
    /// The request thread waits for the backend through
    /// [`backends::BlockingBackend`]: at most one request in flight per
    /// request thread. Kept as the baseline that async replies are measured
    /// against.
    Blocking,
}

/// Everything [`crate::FuseFile::mount`] needs.
///
/// Build one with [`FuseFileOptions::new`] and change the public fields; the
/// defaults give a read-write, page-cached file that `mmap` works on.
#[derive(Debug, Clone)]
pub struct FuseFileOptions {
    /// Directory to mount on; created (with missing parents) if absent, and
    /// then removed again on unmount. Must be empty.
    pub mountpoint: PathBuf,
    /// Name of the one file in the mount's root directory.
    pub file_name: String,
    /// Where the file's bytes live.
    pub backend: SharedBackend,
    /// The file's size in bytes; at most the backend's size. Not checked
    /// at mount: reads past the backend's end fail with `EINVAL`.
    pub size: u64,
    /// Mount read-only: writes fail with `EROFS`, the file's mode is 0444.
    pub read_only: bool,
    /// The runtime the backend's futures run on.
    pub runtime: Handle,
    /// Bypass the page cache (`FOPEN_DIRECT_IO`). `mmap` then only works if
    /// the kernel supports `FUSE_DIRECT_IO_ALLOW_MMAP` (Linux 6.6+).
    pub direct_io: bool,
    /// Let the kernel buffer `write(2)` data in the page cache and write it
    /// back later (`FUSE_WRITEBACK_CACHE`) instead of sending every write.
    pub writeback_cache: bool,
    /// Largest write request in bytes, `MIN_MAX_WRITE..=MAX_REQUEST_BYTES`.
    pub max_write: u32,
    /// Readahead window in bytes. `None` keeps the kernel's default (the
    /// bdi default, usually 128 KiB); larger values are set through
    /// `/sys/class/bdi/<dev>/read_ahead_kb` after mounting.
    pub max_readahead: Option<u32>,
    /// How many requests the kernel keeps queued in the background
    /// (readahead, writeback) before it throttles; the kernel's default of 12
    /// caps readahead concurrency at high RTT.
    pub max_background: u16,
    /// Request threads reading `/dev/fuse` (each on its own cloned
    /// descriptor when more than one).
    pub threads: usize,
    /// See [`ReplyMode`].
    pub reply_mode: ReplyMode,
    /// See [`MountVia`].
    pub mount_via: MountVia,
    /// Let users other than the mounting one access the file (`allow_other`).
    pub allow_other: bool,
    /// Source name shown in `/proc/mounts`; must start with
    /// [`FS_NAME_PREFIX`] so leftovers can be found.
    pub fs_name: String,
}

impl FuseFileOptions {
    /// Options with the defaults: file `region`, read-write, page cache on,
    /// 1 MiB writes, kernel readahead, 64 background requests, one request
    /// thread, async replies.
    pub fn new(
        mountpoint: impl Into<PathBuf>,
        backend: SharedBackend,
        size: u64,
        runtime: Handle,
    ) -> Self {
        Self {
            mountpoint: mountpoint.into(),
            file_name: "region".to_string(),
            backend,
            size,
            read_only: false,
            runtime,
            direct_io: false,
            writeback_cache: false,
            max_write: MAX_REQUEST_BYTES,
            max_readahead: None,
            max_background: 64,
            threads: 1,
            reply_mode: ReplyMode::Async,
            mount_via: MountVia::Auto,
            allow_other: false,
            fs_name: DEFAULT_FS_NAME.to_string(),
        }
    }

    /// Checks every field that can be checked without touching the system.
    pub fn validate(&self) -> Result<(), OptionsError> {
        validate_file_name(&self.file_name)?;
        validate_fs_name(&self.fs_name)?;
        if self.size == 0 {
            return Err(OptionsError::ZeroSize);
        }
        if !(MIN_MAX_WRITE..=MAX_REQUEST_BYTES).contains(&self.max_write) {
            return Err(OptionsError::MaxWrite {
                value: self.max_write,
            });
        }
        if self.max_readahead == Some(0) {
            return Err(OptionsError::ZeroReadahead);
        }
        if self.max_background == 0 {
            return Err(OptionsError::ZeroBackground);
        }
        if self.threads == 0 || self.threads > MAX_THREADS {
            return Err(OptionsError::Threads {
                value: self.threads,
            });
        }
        if self.reply_mode == ReplyMode::Async
            && self.runtime.runtime_flavor() == RuntimeFlavor::CurrentThread
        {
            // A current-thread runtime only makes progress while someone sits
            // in its `block_on`; the reply tasks would wait for that forever.
            return Err(OptionsError::CurrentThreadRuntime);
        }
        Ok(())
    }
}

/// More request threads than this buys nothing on the hosts we run on and
/// is more likely a unit mix-up.
pub const MAX_THREADS: usize = 64;

fn validate_file_name(name: &str) -> Result<(), OptionsError> {
    let bad = |reason: &'static str| OptionsError::FileName {
        name: name.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    if name == "." || name == ".." {
        return Err(bad("`.` and `..` name directories"));
    }
    if name.contains('/') || name.contains('\0') {
        return Err(bad("it contains `/` or NUL"));
    }
    if name.len() > 255 {
        return Err(bad("it is longer than 255 bytes"));
    }
    Ok(())
}

fn validate_fs_name(name: &str) -> Result<(), OptionsError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if !name.starts_with(FS_NAME_PREFIX) || name.len() > 128 || !name.chars().all(allowed) {
        return Err(OptionsError::FsName {
            name: name.to_string(),
        });
    }
    Ok(())
}

/// A field of [`FuseFileOptions`] is out of range.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    /// The file name cannot be a directory entry.
    #[error("file name {name:?} is not usable: {reason}")]
    FileName { name: String, reason: &'static str },
    /// The source name would not be found by the leftover cleanup, or would
    /// need escaping in `/proc/mounts`.
    #[error("fs_name {name:?} must start with {FS_NAME_PREFIX:?}, be at most 128 bytes and use only ASCII letters, digits, `-`, `_` and `.`")]
    FsName { name: String },
    /// A zero-byte file cannot be mapped.
    #[error("size is 0; a mapped file needs at least one byte")]
    ZeroSize,
    /// `max_write` outside what the kernel accepts.
    #[error("max_write {value} is outside {MIN_MAX_WRITE}..={MAX_REQUEST_BYTES} bytes")]
    MaxWrite { value: u32 },
    /// A zero readahead window; use `None` for the kernel default.
    #[error("max_readahead is 0; use None for the kernel default or a positive byte count")]
    ZeroReadahead,
    /// The kernel needs room for at least one background request.
    #[error("max_background is 0; it must be at least 1")]
    ZeroBackground,
    /// Thread count outside `1..=MAX_THREADS`.
    #[error("threads is {value}; it must be in 1..={MAX_THREADS}")]
    Threads { value: usize },
    /// Async replies on a runtime that nobody drives.
    #[error("reply_mode Async needs a multi-thread tokio runtime, but the handle is for a current-thread runtime; use a multi-thread runtime or ReplyMode::Blocking")]
    CurrentThreadRuntime,
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use backends::MemoryBackend;

    use super::*;

    fn options(rt: &tokio::runtime::Runtime) -> FuseFileOptions {
        FuseFileOptions::new(
            "/tmp/x",
            Arc::new(MemoryBackend::new(4096)),
            4096,
            rt.handle().clone(),
        )
    }

    #[test]
    fn defaults_validate_and_bad_fields_are_named() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        assert!(options(&rt).validate().is_ok());

        for name in ["", ".", "..", "a/b", "a\0b"] {
            let mut o = options(&rt);
            o.file_name = name.to_string();
            assert!(matches!(o.validate(), Err(OptionsError::FileName { .. })));
        }
        for name in ["fusefs", "msb-a b", "msb-a,ro", ""] {
            let mut o = options(&rt);
            o.fs_name = name.to_string();
            let err = o.validate().unwrap_err();
            assert!(matches!(err, OptionsError::FsName { .. }));
            assert!(err.to_string().contains("msb-"));
        }
        let mut o = options(&rt);
        o.size = 0;
        assert!(matches!(o.validate(), Err(OptionsError::ZeroSize)));
        let mut o = options(&rt);
        o.max_write = MAX_REQUEST_BYTES + 1;
        assert!(o.validate().unwrap_err().to_string().contains("1048577"));
        let mut o = options(&rt);
        o.threads = 0;
        assert!(matches!(o.validate(), Err(OptionsError::Threads { .. })));
    }

    #[test]
    fn async_replies_refuse_a_current_thread_runtime() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut o = options(&rt);
        assert!(matches!(
            o.validate(),
            Err(OptionsError::CurrentThreadRuntime)
        ));
        o.reply_mode = ReplyMode::Blocking;
        assert!(o.validate().is_ok());
    }
}
