//! The file system itself: one directory holding one fixed-size file whose
//! bytes live in a backend.
//!
//! # Behavior
//!
//! - Reads and writes are clamped to the file's size: a read that crosses
//!   the end is short, a read at or past it returns no bytes (EOF); a write
//!   that crosses the end is short, one that starts at or past it fails with
//!   `EFBIG`. The backend therefore only sees in-range requests.
//! - With [`ReplyMode::Async`] each read, write, flush and fsync becomes a
//!   task on the runtime that replies itself (fuser replies are `Send`), so
//!   the request thread returns to `/dev/fuse` at once and the kernel's
//!   parallel readahead and writeback requests reach the backend
//!   concurrently. Ordering is the kernel's job: `write(2)` holds the inode
//!   lock until its request is answered, writeback never has two requests
//!   for one page in flight, and `fsync` is sent only after the writes it
//!   covers were answered.
//! - Flush (every `close` of a descriptor opened for writing) and fsync
//!   both call the backend's `sync`, so a closed file's data is as durable
//!   as the backend makes it. Closing a read-only descriptor does not sync.
//! - Truncating to the current size succeeds; any other size (including
//!   the 0 that `O_TRUNC` asks for) is `EPERM`, as are mode and owner
//!   changes. Time changes are accepted and ignored.
//!
//! # Errno mapping
//!
//! [`BackendError::OutOfRange`] and `Unaligned` become `EINVAL` (the backend
//! disagrees with the size we were given), `Io` keeps its errno, `Remote`
//! and `Closed` become `EIO`. A backend that returns fewer bytes than an
//! in-range read asked for is an `EIO` too: replying short would make the
//! kernel shrink the file.

use std::ffi::{OsStr, OsString};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use backends::{BackendError, BlockingBackend, SharedBackend};
use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
    WriteFlags,
};
use serde::Serialize;
use tokio::runtime::Handle;

use crate::options::{FuseFileOptions, ReplyMode};
use crate::stats::{Counters, InFlight, Op};

/// Inode of the one file; the root directory is [`INodeNo::ROOT`].
pub const FILE_INO: INodeNo = INodeNo(2);

/// How long the kernel may cache attributes and the directory entry. The
/// size never changes, so a long time only saves `GETATTR` round trips.
const TTL: Duration = Duration::from_secs(60);

/// File handle of descriptors opened read-only; their flush skips the sync.
const READ_ONLY_HANDLE: FileHandle = FileHandle(0);
/// File handle of descriptors opened for writing.
const WRITABLE_HANDLE: FileHandle = FileHandle(1);

/// Block size reported by `stat` and `statfs`.
const BLOCK: u32 = 4096;

/// What the kernel and we agreed on in the `INIT` exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct KernelSettings {
    /// FUSE protocol version the kernel speaks, major.
    pub abi_major: u32,
    /// FUSE protocol version the kernel speaks, minor.
    pub abi_minor: u32,
    /// Largest write request, bytes.
    pub max_write: u32,
    /// Readahead the kernel offered (its bdi default), bytes.
    pub kernel_max_readahead: u32,
    /// Readahead we asked for in `INIT` (at most the offer), bytes.
    pub max_readahead: u32,
    /// Background request limit.
    pub max_background: u16,
    /// The kernel sends reads of one file concurrently (`FUSE_ASYNC_READ`).
    pub async_read: bool,
    /// Writes are buffered in the page cache (`FUSE_WRITEBACK_CACHE`).
    pub writeback_cache: bool,
    /// `mmap` works despite direct I/O (`FUSE_DIRECT_IO_ALLOW_MMAP`).
    pub direct_io_allow_mmap: bool,
}

/// The fuser [`Filesystem`] for one file.
#[derive(Debug)]
pub(crate) struct OneFile {
    name: OsString,
    size: u64,
    read_only: bool,
    direct_io: bool,
    writeback_cache: bool,
    max_write: u32,
    max_readahead: Option<u32>,
    max_background: u16,
    reply_mode: ReplyMode,
    backend: SharedBackend,
    blocking: BlockingBackend,
    runtime: Handle,
    counters: Arc<Counters>,
    settings: Arc<OnceLock<KernelSettings>>,
    uid: u32,
    gid: u32,
    mounted_at: SystemTime,
}

impl OneFile {
    pub(crate) fn new(
        options: &FuseFileOptions,
        counters: Arc<Counters>,
        settings: Arc<OnceLock<KernelSettings>>,
    ) -> Self {
        Self {
            name: OsString::from(&options.file_name),
            size: options.size,
            read_only: options.read_only,
            direct_io: options.direct_io,
            writeback_cache: options.writeback_cache,
            max_write: options.max_write,
            max_readahead: options.max_readahead,
            max_background: options.max_background,
            reply_mode: options.reply_mode,
            backend: Arc::clone(&options.backend),
            blocking: BlockingBackend::new(Arc::clone(&options.backend), options.runtime.clone()),
            runtime: options.runtime.clone(),
            counters,
            settings,
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            mounted_at: SystemTime::now(),
        }
    }

    fn attr(&self, ino: INodeNo) -> Option<FileAttr> {
        let (kind, perm, size, nlink) = if ino == INodeNo::ROOT {
            let perm = if self.read_only { 0o555 } else { 0o755 };
            (FileType::Directory, perm, 0, 2)
        } else if ino == FILE_INO {
            let perm = if self.read_only { 0o444 } else { 0o644 };
            (FileType::RegularFile, perm, self.size, 1)
        } else {
            return None;
        };
        Some(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: self.mounted_at,
            mtime: self.mounted_at,
            ctime: self.mounted_at,
            crtime: self.mounted_at,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: BLOCK,
            flags: 0,
        })
    }
}

/// The errno a backend failure is reported as; see the module docs.
pub fn errno_for(error: &BackendError) -> Errno {
    match error {
        BackendError::OutOfRange { .. } | BackendError::Unaligned { .. } => Errno::EINVAL,
        BackendError::Io(e) => e.raw_os_error().map_or(Errno::EIO, Errno::from_i32),
        BackendError::Remote(_) | BackendError::Closed => Errno::EIO,
    }
}

fn reply_read(
    reply: ReplyData,
    guard: InFlight,
    buf: &[u8],
    offset: u64,
    result: backends::Result<usize>,
) {
    match result {
        Ok(n) if n == buf.len() => {
            guard.finish(Some(n as u64));
            reply.data(buf);
        }
        Ok(n) => {
            tracing::warn!(
                offset,
                wanted = buf.len(),
                got = n,
                "backend returned a short read inside the file; replying EIO"
            );
            guard.finish(None);
            reply.error(Errno::EIO);
        }
        Err(e) => {
            tracing::debug!(offset, len = buf.len(), error = %e, "read failed");
            guard.finish(None);
            reply.error(errno_for(&e));
        }
    }
}

fn reply_write(reply: ReplyWrite, guard: InFlight, len: u32, result: backends::Result<()>) {
    match result {
        Ok(()) => {
            guard.finish(Some(u64::from(len)));
            reply.written(len);
        }
        Err(e) => {
            tracing::debug!(len, error = %e, "write failed");
            guard.finish(None);
            reply.error(errno_for(&e));
        }
    }
}

fn reply_sync(reply: ReplyEmpty, guard: InFlight, result: backends::Result<()>) {
    match result {
        Ok(()) => {
            guard.finish(Some(0));
            reply.ok();
        }
        Err(e) => {
            tracing::debug!(error = %e, "sync failed");
            guard.finish(None);
            reply.error(errno_for(&e));
        }
    }
}

impl OneFile {
    /// Answers `reply` with an error and counts it.
    fn refuse<R: Refusable>(&self, reply: R, errno: Errno) {
        self.counters.error();
        reply.refuse(errno);
    }

    /// Checks that `ino` is the file; otherwise answers the right error.
    fn is_file<R: Refusable>(&self, ino: INodeNo, reply: R) -> Option<R> {
        if ino == FILE_INO {
            Some(reply)
        } else if ino == INodeNo::ROOT {
            self.refuse(reply, Errno::EISDIR);
            None
        } else {
            self.refuse(reply, Errno::ENOENT);
            None
        }
    }

    fn sync(&self, reply: ReplyEmpty) {
        let guard = self.counters.begin(Op::Sync);
        match self.reply_mode {
            ReplyMode::Async => {
                let backend = Arc::clone(&self.backend);
                self.runtime.spawn(async move {
                    let result = backend.sync().await;
                    reply_sync(reply, guard, result);
                });
            }
            ReplyMode::Blocking => reply_sync(reply, guard, self.blocking.sync()),
        }
    }
}

/// The fuser replies that can carry an errno.
trait Refusable {
    fn refuse(self, errno: Errno);
}

macro_rules! refusable {
    ($($t:ty),*) => {
        $(impl Refusable for $t {
            fn refuse(self, errno: Errno) {
                self.error(errno);
            }
        })*
    };
}
refusable!(
    ReplyAttr,
    ReplyData,
    ReplyDirectory,
    ReplyEmpty,
    ReplyEntry,
    ReplyOpen,
    ReplyWrite
);

impl Filesystem for OneFile {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Err carries the nearest allowed value; take it rather than fail.
        let max_write = match config.set_max_write(self.max_write) {
            Ok(_) => self.max_write,
            Err(nearest) => {
                let _ = config.set_max_write(nearest);
                nearest
            }
        };
        // Asking for more than the kernel offered is refused with the
        // offer, which is how we learn it; larger windows go through sysfs.
        let kernel_max_readahead = config.set_max_readahead(u32::MAX).unwrap_or_else(|v| v);
        let max_readahead = match self.max_readahead {
            Some(wanted) if wanted < kernel_max_readahead => {
                let _ = config.set_max_readahead(wanted);
                wanted
            }
            _ => kernel_max_readahead,
        };
        let max_background = match config.set_max_background(self.max_background) {
            Ok(_) => self.max_background,
            Err(nearest) => {
                let _ = config.set_max_background(nearest);
                nearest
            }
        };
        let writeback_cache = self.writeback_cache
            && config
                .add_capabilities(InitFlags::FUSE_WRITEBACK_CACHE)
                .is_ok();
        if self.writeback_cache && !writeback_cache {
            tracing::warn!("kernel does not support FUSE_WRITEBACK_CACHE; writes go through");
        }
        let direct_io_allow_mmap = self.direct_io
            && config
                .add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP)
                .is_ok();
        let abi = config.kernel_abi();
        let settings = KernelSettings {
            abi_major: abi.0,
            abi_minor: abi.1,
            max_write,
            kernel_max_readahead,
            max_readahead,
            max_background,
            async_read: config.capabilities().contains(InitFlags::FUSE_ASYNC_READ),
            writeback_cache,
            direct_io_allow_mmap,
        };
        tracing::debug!(?settings, "FUSE INIT");
        let _ = self.settings.set(settings);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent != INodeNo::ROOT {
            return self.refuse(reply, Errno::ENOTDIR);
        }
        match self.attr(FILE_INO) {
            Some(attr) if name == self.name => reply.entry(&TTL, &attr, Generation(0)),
            _ => self.refuse(reply, Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => self.refuse(reply, Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let Some(attr) = self.attr(ino) else {
            return self.refuse(reply, Errno::ENOENT);
        };
        let changes_mode = mode.is_some_and(|m| (m & 0o7777) as u16 != attr.perm);
        let changes_owner =
            uid.is_some_and(|u| u != attr.uid) || gid.is_some_and(|g| g != attr.gid);
        let changes_size = match size {
            Some(_) if ino == INodeNo::ROOT => return self.refuse(reply, Errno::EISDIR),
            Some(s) => s != self.size,
            None => false,
        };
        if self.read_only && (changes_mode || changes_owner || size.is_some()) {
            return self.refuse(reply, Errno::EROFS);
        }
        if changes_mode || changes_owner || changes_size {
            return self.refuse(reply, Errno::EPERM);
        }
        reply.attr(&TTL, &attr);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let Some(reply) = self.is_file(ino, reply) else {
            return;
        };
        if self.read_only && flags.acc_mode() != OpenAccMode::O_RDONLY {
            return self.refuse(reply, Errno::EROFS);
        }
        let mut open_flags = FopenFlags::empty();
        if self.direct_io {
            open_flags |= FopenFlags::FOPEN_DIRECT_IO;
        }
        let fh = if flags.acc_mode() == OpenAccMode::O_RDONLY {
            READ_ONLY_HANDLE
        } else {
            WRITABLE_HANDLE
        };
        reply.opened(fh, open_flags);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(reply) = self.is_file(ino, reply) else {
            return;
        };
        if offset >= self.size || size == 0 {
            return reply.data(&[]);
        }
        let len = u64::from(size).min(self.size - offset) as usize;
        let guard = self.counters.begin(Op::Read);
        match self.reply_mode {
            ReplyMode::Async => {
                let backend = Arc::clone(&self.backend);
                self.runtime.spawn(async move {
                    let mut buf = vec![0u8; len];
                    let result = backend.read_at(&mut buf, offset).await;
                    reply_read(reply, guard, &buf, offset, result);
                });
            }
            ReplyMode::Blocking => {
                let mut buf = vec![0u8; len];
                let result = self.blocking.read_at(&mut buf, offset);
                reply_read(reply, guard, &buf, offset, result);
            }
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let Some(reply) = self.is_file(ino, reply) else {
            return;
        };
        if self.read_only {
            return self.refuse(reply, Errno::EROFS);
        }
        if data.is_empty() {
            return reply.written(0);
        }
        if offset >= self.size {
            return self.refuse(reply, Errno::EFBIG);
        }
        // A request is at most max_write (<= 1 MiB) long, so the length fits.
        let len = (data.len() as u64).min(self.size - offset) as usize;
        let Ok(written) = u32::try_from(len) else {
            return self.refuse(reply, Errno::EINVAL);
        };
        let guard = self.counters.begin(Op::Write);
        match self.reply_mode {
            ReplyMode::Async => {
                // The request buffer is reused for the next request as soon
                // as we return, so the task needs its own copy.
                let data = data[..len].to_vec();
                let backend = Arc::clone(&self.backend);
                self.runtime.spawn(async move {
                    let result = backend.write_at(&data, offset).await;
                    reply_write(reply, guard, written, result);
                });
            }
            ReplyMode::Blocking => {
                let result = self.blocking.write_at(&data[..len], offset);
                reply_write(reply, guard, written, result);
            }
        }
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let Some(reply) = self.is_file(ino, reply) else {
            return;
        };
        // Closing a read-only descriptor wrote nothing; a backend sync would
        // only cost the remote a round trip per reader.
        if fh == READ_ONLY_HANDLE {
            reply.ok();
        } else {
            self.sync(reply);
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        if let Some(reply) = self.is_file(ino, reply) {
            self.sync(reply);
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if ino == INodeNo::ROOT {
            reply.opened(FileHandle(0), FopenFlags::empty());
        } else if ino == FILE_INO {
            self.refuse(reply, Errno::ENOTDIR);
        } else {
            self.refuse(reply, Errno::ENOENT);
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != INodeNo::ROOT {
            let errno = if ino == FILE_INO {
                Errno::ENOTDIR
            } else {
                Errno::ENOENT
            };
            return self.refuse(reply, errno);
        }
        let entries: [(INodeNo, FileType, &OsStr); 3] = [
            (INodeNo::ROOT, FileType::Directory, OsStr::new(".")),
            (INodeNo::ROOT, FileType::Directory, OsStr::new("..")),
            (FILE_INO, FileType::RegularFile, &self.name),
        ];
        // `offset` is the cookie of the last entry the kernel already has;
        // ours are the 1-based positions.
        for (i, (entry_ino, kind, name)) in entries.iter().enumerate() {
            let cookie = i as u64 + 1;
            if cookie <= offset {
                continue;
            }
            if reply.add(*entry_ino, cookie, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let blocks = self.size.div_ceil(u64::from(BLOCK));
        reply.statfs(blocks, 0, 0, 2, 0, BLOCK, 255, BLOCK);
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        if self.attr(ino).is_none() {
            return self.refuse(reply, Errno::ENOENT);
        }
        if self.read_only && mask.contains(AccessFlags::W_OK) {
            return self.refuse(reply, Errno::EROFS);
        }
        if ino == FILE_INO && mask.contains(AccessFlags::X_OK) {
            return self.refuse(reply, Errno::EACCES);
        }
        reply.ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_errors_map_to_the_documented_errnos() {
        let oor = BackendError::OutOfRange {
            offset: 1,
            len: 2,
            size: 1,
        };
        assert_eq!(errno_for(&oor), Errno::EINVAL);
        let io = BackendError::Io(std::io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(errno_for(&io), Errno::ENOSPC);
        let plain = BackendError::Io(std::io::Error::other("no errno"));
        assert_eq!(errno_for(&plain), Errno::EIO);
        assert_eq!(errno_for(&BackendError::Remote("x".into())), Errno::EIO);
        assert_eq!(errno_for(&BackendError::Closed), Errno::EIO);
    }
}
