//! [`FuseFile`]: a mounted one-file FUSE file system and its lifecycle.
//!
//! # Behavior
//!
//! - [`FuseFile::mount`] prepares the mount point, mounts (see
//!   [`crate::mount`]), answers the kernel's `INIT` and starts fuser's
//!   request threads in the background. When it returns the file is usable.
//! - [`FuseFile::unmount`] (and `Drop`) unmounts; if the file is still open
//!   or mapped it detaches lazily instead, so the path is free at once and
//!   the remaining users keep working until they close. It waits for the
//!   request threads only when they can end, and removes the directories
//!   that `mount` created.
//!
//! # Limitations
//!
//! - A mapping's page faults are served by this process's request threads
//!   and runtime. Touching a mapping from a thread that the runtime needs to
//!   make progress (a current-thread runtime's own thread, or every worker
//!   of a multi-thread one) deadlocks.
//! - A backend failure during a page fault is delivered as `SIGBUS`, as for
//!   any file-backed mapping whose I/O fails.
//! - The server runs inside the process that maps the file, and the kernel
//!   writes dirty pages back synchronously when a mapping is removed, while
//!   holding the process's `mmap_lock`. [`MappedFile`] therefore `msync`s
//!   before it unmaps. A process that *exits* with a dirty mapping still
//!   hangs for good: its request threads are gone before the exit path
//!   writes the pages back, and the `/dev/fuse` descriptor is only closed
//!   after that. Drop (or flush) mappings before exiting; a process stuck
//!   this way is freed by aborting the connection through fusectl (see
//!   [`crate::cleanup::abort_connection`]).
//! - Other writers (another mapping, `write(2)` on the file) change the
//!   mapped bytes underneath a borrowed slice: the mapping is shared memory.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use fuser::{BackgroundSession, Config, Notifier, Session, SessionACL};
use memmap2::{Mmap, MmapMut, MmapOptions};
use serde::Serialize;

use crate::cleanup::{self, CleanupError};
use crate::fs::{KernelSettings, OneFile, FILE_INO};
use crate::mount::{self, MountArgs, MountError, MountMethod, Mountpoint, UnmountKind};
use crate::options::{FuseFileOptions, OptionsError};
use crate::stats::{Counters, FuseStats};

/// How long an unmount waits for the request threads when they should end
/// promptly (the connection is gone). Generous: it only bounds a hang.
const SESSION_END_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a lazy detach waits in case the last user just closed.
const DETACHED_GRACE: Duration = Duration::from_millis(200);

/// Errors of [`FuseFile`].
#[derive(Debug, thiserror::Error)]
pub enum FuseError {
    /// An option is out of range.
    #[error(transparent)]
    Options(#[from] OptionsError),
    /// Preparing the mount point or mounting failed.
    #[error(transparent)]
    Mount(#[from] MountError),
    /// The new mount is not in `/proc/self/mountinfo`.
    #[error("mounted on {path}, but /proc/self/mountinfo does not list it")]
    Vanished { path: PathBuf },
    /// Reading `/proc/self/mountinfo` failed.
    #[error(transparent)]
    Mountinfo(#[from] CleanupError),
    /// The kernel's `INIT` could not be answered, or the request threads not started.
    #[error("starting the FUSE session on {path}: {source}")]
    Session {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The readahead window could not be set through sysfs.
    #[error("setting readahead to {kib} KiB through {sysfs}: {source}")]
    Readahead {
        kib: u32,
        sysfs: PathBuf,
        source: std::io::Error,
    },
    /// Unmounting failed; the mount is still there.
    #[error("unmounting {path}: {errno}")]
    Unmount {
        path: PathBuf,
        errno: nix::errno::Errno,
    },
    /// Opening or mapping the file failed.
    #[error("{what} {path}: {source}")]
    File {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The kernel refused a cache invalidation.
    #[error("invalidating {len} bytes at {offset} of {path}: {source}")]
    Invalidate {
        path: PathBuf,
        offset: u64,
        len: u64,
        source: std::io::Error,
    },
}

/// The result of [`FuseFile::unmount`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct UnmountReport {
    /// How the mount went away.
    pub kind: UnmountKind,
    /// Whether the request threads have ended. After a lazy detach they run
    /// on until the last user closes the file, then end by themselves.
    pub session_ended: bool,
}

/// A shared mapping of the whole file: writable unless the mount is read-only.
///
/// Dropping a writable mapping first writes its dirty pages back with
/// `msync`, then unmaps. The order matters when the file system is served
/// by this same process: `munmap` writes remaining dirty pages back while
/// holding the process's `mmap_lock`, and a request thread that then needs
/// that lock (any `malloc` that grows the heap does) deadlocks with it.
/// `msync` releases the lock before it waits. So do not turn this into a
/// raw `memmap2` mapping, and call [`MappedFile::flush`] before handing
/// the address to code that unmaps by itself.
#[derive(Debug)]
pub struct MappedFile {
    inner: Mapping,
}

#[derive(Debug)]
enum Mapping {
    ReadWrite(MmapMut),
    ReadOnly(Mmap),
}

impl MappedFile {
    /// Whether the mapping is writable.
    pub fn is_writable(&self) -> bool {
        matches!(self.inner, Mapping::ReadWrite(_))
    }

    /// The mapped bytes.
    pub fn as_slice(&self) -> &[u8] {
        match &self.inner {
            Mapping::ReadWrite(m) => m,
            Mapping::ReadOnly(m) => m,
        }
    }

    /// The mapped bytes, writable; `None` for a read-only mapping.
    pub fn as_mut_slice(&mut self) -> Option<&mut [u8]> {
        match &mut self.inner {
            Mapping::ReadWrite(m) => Some(m),
            Mapping::ReadOnly(_) => None,
        }
    }

    /// `msync(MS_SYNC)`: writes dirty pages back (to the backend, through
    /// FUSE writes) and then fsyncs, which syncs the backend.
    pub fn flush(&self) -> std::io::Result<()> {
        match &self.inner {
            Mapping::ReadWrite(m) => m.flush(),
            Mapping::ReadOnly(_) => Ok(()),
        }
    }

    /// Like [`MappedFile::flush`], for `len` bytes at `offset` only.
    pub fn flush_range(&self, offset: usize, len: usize) -> std::io::Result<()> {
        match &self.inner {
            Mapping::ReadWrite(m) => m.flush_range(offset, len),
            Mapping::ReadOnly(_) => Ok(()),
        }
    }
}

impl std::ops::Deref for MappedFile {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            // The bytes stay in the page cache; the kernel retries the
            // writeback on munmap, which reports nothing either.
            tracing::warn!(error = %e, "msync before unmapping the FUSE file failed");
        }
    }
}

/// A mounted FUSE file system with one file backed by a
/// [`backends::SharedBackend`]. See the module docs.
#[derive(Debug)]
pub struct FuseFile {
    mountpoint: Mountpoint,
    file_path: PathBuf,
    method: MountMethod,
    device: (u32, u32),
    size: u64,
    read_only: bool,
    session: Option<BackgroundSession>,
    notifier: Notifier,
    counters: Arc<Counters>,
    settings: Arc<OnceLock<KernelSettings>>,
    read_ahead_kb: Option<u32>,
    unmounted: bool,
}

impl FuseFile {
    /// Mounts the file system and starts serving it.
    ///
    /// Blocks the calling thread for the mount and the `INIT` exchange
    /// (milliseconds) but never calls the backend, so it may also be called
    /// from async code. The backend's size is not checked against
    /// `options.size` (that would call it); see [`FuseFileOptions::size`].
    pub fn mount(options: FuseFileOptions) -> Result<Self, FuseError> {
        options.validate()?;
        let mountpoint = Mountpoint::prepare(&options.mountpoint)?;
        let args = MountArgs {
            fs_name: &options.fs_name,
            read_only: options.read_only,
            allow_other: options.allow_other,
        };
        let (fd, method) = match mount::mount(&mountpoint.path, &args, options.mount_via) {
            Ok(mounted) => mounted,
            Err(e) => {
                mountpoint.remove_created();
                return Err(e.into());
            }
        };
        // Anything failing from here on must take the mount down again.
        let pending = PendingMount {
            mountpoint: &mountpoint,
            armed: true,
        };
        let path = mountpoint.path.clone();
        // The newest mount on a path is listed last.
        let device = cleanup::mounts()?
            .into_iter()
            .rev()
            .find(|m| m.mount_point == path)
            .map(|m| (m.major, m.minor))
            .ok_or_else(|| FuseError::Vanished { path: path.clone() })?;

        let counters = Arc::new(Counters::default());
        let settings = Arc::new(OnceLock::new());
        let fs = OneFile::new(&options, Arc::clone(&counters), Arc::clone(&settings));
        let mut config = Config::default();
        // Access control is the kernel's (allow_other or not); fuser's own
        // uid filter would only duplicate it.
        config.acl = SessionACL::All;
        config.n_threads = Some(options.threads);
        config.clone_fd = options.threads > 1;
        let session_error = |source| FuseError::Session {
            path: path.clone(),
            source,
        };
        let session = Session::from_fd(fs, fd, SessionACL::All, config)
            .and_then(Session::spawn)
            .map_err(session_error)?;
        let notifier = session.notifier();

        let read_ahead_kb = match (options.max_readahead, settings.get()) {
            (Some(wanted), Some(agreed)) if wanted > agreed.max_readahead => {
                let kib = wanted.div_ceil(1024);
                let sysfs = bdi_read_ahead_path(device);
                if let Err(source) = std::fs::write(&sysfs, format!("{kib}\n")) {
                    // Detach first: the session's threads then see the
                    // connection end and exit by themselves.
                    drop(pending);
                    drop(session);
                    return Err(FuseError::Readahead { kib, sysfs, source });
                }
                read_bdi_read_ahead(device)
            }
            _ => read_bdi_read_ahead(device),
        };

        pending.disarm();
        let file_path = mountpoint.path.join(&options.file_name);
        tracing::debug!(
            path = %file_path.display(),
            %method,
            size = options.size,
            "FUSE file mounted"
        );
        Ok(FuseFile {
            mountpoint,
            file_path,
            method,
            device,
            size: options.size,
            read_only: options.read_only,
            session: Some(session),
            notifier,
            counters,
            settings,
            read_ahead_kb,
            unmounted: false,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.file_path
    }

    /// The (canonical) mount point.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint.path
    }

    /// How the mount was made.
    pub fn mount_method(&self) -> MountMethod {
        self.method
    }

    /// The file's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the mount is read-only.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The mount's device number, `(major, minor)`.
    pub fn device(&self) -> (u32, u32) {
        self.device
    }

    /// What the `INIT` exchange settled.
    pub fn kernel_settings(&self) -> Option<KernelSettings> {
        self.settings.get().copied()
    }

    /// The effective readahead window in KiB, read back from
    /// `/sys/class/bdi/<dev>/read_ahead_kb`; `None` if unreadable.
    pub fn read_ahead_kb(&self) -> Option<u32> {
        self.read_ahead_kb
    }

    /// Counters so far.
    pub fn stats(&self) -> FuseStats {
        self.counters.snapshot()
    }

    /// Opens the file: read-write, or read-only on a read-only mount.
    pub fn open(&self) -> Result<File, FuseError> {
        File::options()
            .read(true)
            .write(!self.read_only)
            .open(&self.file_path)
            .map_err(|source| FuseError::File {
                what: "opening",
                path: self.file_path.clone(),
                source,
            })
    }

    /// Maps the whole file `MAP_SHARED`: read-write, or read-only on a
    /// read-only mount. Faults pull from the backend; dirty pages are
    /// written back by the kernel, by [`MappedFile::flush`] and when the
    /// mapping is dropped.
    ///
    /// The mapping may outlive this `FuseFile`: the mount is then detached
    /// and keeps serving until the mapping is dropped.
    pub fn map(&self) -> Result<MappedFile, FuseError> {
        let file = self.open()?;
        let map_error = |source| FuseError::File {
            what: "mapping",
            path: self.file_path.clone(),
            source,
        };
        let len = usize::try_from(self.size).map_err(|_| {
            map_error(std::io::Error::other(format!(
                "size {} does not fit the address space",
                self.size
            )))
        })?;
        let mut options = MmapOptions::new();
        options.len(len);
        let inner = if self.read_only {
            // SAFETY: the file cannot shrink (setattr refuses size changes),
            // so every page of the `len`-byte mapping stays inside it; that
            // the bytes can change underneath is the documented nature of
            // this shared mapping (see the module's Limitations).
            Mapping::ReadOnly(unsafe { options.map(&file) }.map_err(map_error)?)
        } else {
            // SAFETY: as above: the size is fixed for the mount's lifetime.
            Mapping::ReadWrite(unsafe { options.map_mut(&file) }.map_err(map_error)?)
        };
        Ok(MappedFile { inner })
    }

    /// Drops the kernel's cached pages for `len` bytes at `offset` (`len` 0:
    /// to the end), so the next access reads the backend again: for when
    /// the backend changed behind the kernel's back.
    ///
    /// Must not be called from inside a request of this file system (it
    /// waits for page locks that such a request may hold).
    pub fn invalidate(&self, offset: u64, len: u64) -> Result<(), FuseError> {
        let error = |source| FuseError::Invalidate {
            path: self.file_path.clone(),
            offset,
            len,
            source,
        };
        let too_big = || error(std::io::Error::from_raw_os_error(libc::EINVAL));
        let off = i64::try_from(offset).map_err(|_| too_big())?;
        let length = i64::try_from(len).map_err(|_| too_big())?;
        match self.notifier.inval_inode(FILE_INO, off, length) {
            Ok(()) => Ok(()),
            // The kernel has no inode cached, hence no pages to drop.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(error(e)),
        }
    }

    /// Unmounts, detaching lazily if the file is still open or mapped, and
    /// removes the mount point directories that [`FuseFile::mount`] created.
    pub fn unmount(mut self) -> Result<UnmountReport, FuseError> {
        self.unmount_inner()
    }

    fn unmount_inner(&mut self) -> Result<UnmountReport, FuseError> {
        if self.unmounted {
            return Ok(UnmountReport {
                kind: UnmountKind::AlreadyGone,
                session_ended: self.session.is_none(),
            });
        }
        let path = self.mountpoint.path.clone();
        let (major, minor) = self.device;
        // Only unmount what is still ours: a mount someone else made on the
        // same path after ours went away must be left alone.
        let kind = if cleanup::find_mount(&path, major, minor)?.is_some() {
            mount::unmount(&path).map_err(|errno| FuseError::Unmount {
                path: path.clone(),
                errno,
            })?
        } else {
            UnmountKind::AlreadyGone
        };
        self.unmounted = true;
        let wait = match kind {
            UnmountKind::Detached => DETACHED_GRACE,
            UnmountKind::Clean | UnmountKind::AlreadyGone => SESSION_END_TIMEOUT,
        };
        let session_ended = self.join_session(wait);
        if !session_ended && kind != UnmountKind::Detached {
            tracing::warn!(path = %path.display(), "FUSE request threads still running after unmount");
        }
        self.mountpoint.remove_created();
        Ok(UnmountReport {
            kind,
            session_ended,
        })
    }

    /// Joins the request threads if they end within `wait`; otherwise lets
    /// them run on detached (they end when the connection does).
    fn join_session(&mut self, wait: Duration) -> bool {
        let Some(session) = self.session.take() else {
            return true;
        };
        let deadline = Instant::now() + wait;
        while !session.guard.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if !session.guard.is_finished() {
            return false;
        }
        if let Err(e) = session.join() {
            tracing::warn!(error = %e, "FUSE session ended with an error");
        }
        true
    }
}

impl Drop for FuseFile {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_inner() {
            // Last resort: detach so at least the path is not left mounted.
            tracing::warn!(error = %e, "unmount on drop failed; detaching");
            let _ = nix::mount::umount2(&self.mountpoint.path, nix::mount::MntFlags::MNT_DETACH);
            self.unmounted = true;
            self.join_session(DETACHED_GRACE);
            self.mountpoint.remove_created();
        }
    }
}

/// A mount made but not yet handed to a [`FuseFile`]; dropping it armed
/// detaches the mount and removes the created directories.
struct PendingMount<'a> {
    mountpoint: &'a Mountpoint,
    armed: bool,
}

impl PendingMount<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for PendingMount<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = nix::mount::umount2(&self.mountpoint.path, nix::mount::MntFlags::MNT_DETACH);
            self.mountpoint.remove_created();
        }
    }
}

fn bdi_read_ahead_path((major, minor): (u32, u32)) -> PathBuf {
    PathBuf::from(format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb"))
}

fn read_bdi_read_ahead(device: (u32, u32)) -> Option<u32> {
    std::fs::read_to_string(bdi_read_ahead_path(device))
        .ok()?
        .trim()
        .parse()
        .ok()
}
