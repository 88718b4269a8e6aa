//! Making and removing the kernel mount, without libfuse.
//!
//! Two ways to get a connected `/dev/fuse` descriptor:
//!
//! - [`MountMethod::Syscall`]: open `/dev/fuse` and call `mount(2)` with
//!   `fd=N` in the mount data. Needs `CAP_SYS_ADMIN`; this is what libfuse
//!   does when run as root, and it involves no helper process.
//! - [`MountMethod::Fusermount`]: run the setuid helper `fusermount3`, which
//!   mounts and hands the descriptor back over a Unix socket named in
//!   `_FUSE_COMMFD` (the libfuse protocol). Works unprivileged.
//!
//! fuser can mount by itself too, but it does not say which of the two it
//! used and its unmount path cannot fall back to a lazy detach; so we mount
//! here and hand fuser the descriptor (`Session::from_fd`).

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use serde::Serialize;

use crate::options::MountVia;

/// The helper used by [`MountMethod::Fusermount`], found on `PATH`.
pub const FUSERMOUNT: &str = "fusermount3";

/// How a mount was made; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MountMethod {
    /// `mount(2)` on a `/dev/fuse` descriptor opened by this process.
    Syscall,
    /// The `fusermount3` helper.
    Fusermount,
}

impl MountMethod {
    /// A short stable name for reports: `syscall` or `fusermount3`.
    pub fn as_str(self) -> &'static str {
        match self {
            MountMethod::Syscall => "syscall",
            MountMethod::Fusermount => "fusermount3",
        }
    }
}

impl std::fmt::Display for MountMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors while preparing the mount point or mounting.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The mount point (or a missing parent) could not be created.
    #[error("creating mount point {path}: {source}")]
    CreateMountpoint {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The mount point exists but is not a directory.
    #[error("mount point {path} exists and is not a directory")]
    NotADirectory { path: PathBuf },
    /// The mount point has entries that the mount would hide.
    #[error(
        "mount point {path} is not empty (it holds {entry:?}); use an empty or missing directory"
    )]
    NotEmpty { path: PathBuf, entry: PathBuf },
    /// The mount point could not be inspected.
    #[error("inspecting mount point {path}: {source}")]
    Inspect {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `/dev/fuse` could not be opened.
    #[error("opening /dev/fuse: {0} (is the fuse module loaded?)")]
    OpenDevice(std::io::Error),
    /// `mount(2)` failed.
    #[error("mount(2) of a FUSE file system on {path}: {errno}")]
    Syscall { path: PathBuf, errno: Errno },
    /// `fusermount3` could not be run or did not pass a descriptor back.
    #[error("{FUSERMOUNT} on {path}: {reason}")]
    Fusermount { path: PathBuf, reason: String },
}

/// A directory ready to mount on, and the directories we created for it.
#[derive(Debug)]
pub(crate) struct Mountpoint {
    /// Canonical path: the form `/proc/self/mountinfo` shows.
    pub(crate) path: PathBuf,
    /// Directories created by [`Mountpoint::prepare`], deepest first.
    created: Vec<PathBuf>,
}

impl Mountpoint {
    /// Creates `path` and missing parents, then checks it is an empty directory.
    pub(crate) fn prepare(path: &Path) -> Result<Self, MountError> {
        let mut missing = Vec::new();
        let mut cursor = Some(path);
        while let Some(dir) = cursor {
            if dir.as_os_str().is_empty() || dir.symlink_metadata().is_ok() {
                break;
            }
            missing.push(dir.to_path_buf());
            cursor = dir.parent();
        }
        let mut created = Vec::new();
        for dir in missing.iter().rev() {
            match std::fs::create_dir(dir) {
                Ok(()) => created.insert(0, dir.clone()),
                // Someone else made it meanwhile; it is not ours to remove.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(source) => {
                    let partial = Mountpoint {
                        path: path.to_path_buf(),
                        created,
                    };
                    partial.remove_created();
                    return Err(MountError::CreateMountpoint {
                        path: dir.clone(),
                        source,
                    });
                }
            }
        }
        let mountpoint = Mountpoint {
            path: path.to_path_buf(),
            created,
        };
        match mountpoint.check_empty_dir() {
            Ok(canonical) => Ok(Mountpoint {
                path: canonical,
                ..mountpoint
            }),
            Err(e) => {
                mountpoint.remove_created();
                Err(e)
            }
        }
    }

    fn check_empty_dir(&self) -> Result<PathBuf, MountError> {
        let inspect = |source| MountError::Inspect {
            path: self.path.clone(),
            source,
        };
        let meta = self.path.metadata().map_err(inspect)?;
        if !meta.is_dir() {
            return Err(MountError::NotADirectory {
                path: self.path.clone(),
            });
        }
        if let Some(entry) = std::fs::read_dir(&self.path).map_err(inspect)?.next() {
            let entry = entry.map_err(inspect)?;
            return Err(MountError::NotEmpty {
                path: self.path.clone(),
                entry: entry.path(),
            });
        }
        self.path.canonicalize().map_err(inspect)
    }

    /// Removes the directories we created, deepest first; stops at the
    /// first that is not empty (someone else put something there).
    pub(crate) fn remove_created(&self) {
        for dir in &self.created {
            if let Err(e) = std::fs::remove_dir(dir) {
                tracing::debug!(dir = %dir.display(), error = %e, "mount point directory left in place");
                break;
            }
        }
    }
}

/// What goes into the mount besides the descriptor.
#[derive(Debug, Clone)]
pub(crate) struct MountArgs<'a> {
    pub(crate) fs_name: &'a str,
    pub(crate) read_only: bool,
    pub(crate) allow_other: bool,
}

/// Mounts a FUSE file system on `path` and returns the connected descriptor.
/// Until a session answers `INIT` on it, accesses under `path` block.
pub(crate) fn mount(
    path: &Path,
    args: &MountArgs<'_>,
    via: MountVia,
) -> Result<(OwnedFd, MountMethod), MountError> {
    match via {
        MountVia::Syscall => mount_syscall(path, args).map(|fd| (fd, MountMethod::Syscall)),
        MountVia::Fusermount => {
            mount_fusermount(path, args).map(|fd| (fd, MountMethod::Fusermount))
        }
        MountVia::Auto => match mount_syscall(path, args) {
            Ok(fd) => Ok((fd, MountMethod::Syscall)),
            Err(MountError::Syscall {
                errno: Errno::EPERM,
                ..
            }) => mount_fusermount(path, args).map(|fd| (fd, MountMethod::Fusermount)),
            Err(e) => Err(e),
        },
    }
}

fn mount_syscall(path: &Path, args: &MountArgs<'_>) -> Result<OwnedFd, MountError> {
    let device = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/fuse")
        .map_err(MountError::OpenDevice)?;
    // The kernel only reads the file type bits of rootmode; user_id and
    // group_id name who may use the mount when allow_other is off.
    let mut data = format!(
        "fd={},rootmode=40000,user_id={},group_id={}",
        device.as_raw_fd(),
        nix::unistd::geteuid(),
        nix::unistd::getegid()
    );
    if args.allow_other {
        data.push_str(",allow_other");
    }
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if args.read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    nix::mount::mount(
        Some(args.fs_name),
        path,
        Some("fuse"),
        flags,
        Some(data.as_str()),
    )
    .map_err(|errno| MountError::Syscall {
        path: path.to_path_buf(),
        errno,
    })?;
    Ok(OwnedFd::from(device))
}

fn mount_fusermount(path: &Path, args: &MountArgs<'_>) -> Result<OwnedFd, MountError> {
    let fail = |reason: String| MountError::Fusermount {
        path: path.to_path_buf(),
        reason,
    };
    let (ours, theirs) = UnixStream::pair().map_err(|e| fail(format!("socketpair: {e}")))?;
    let mut options = format!(
        "fsname={},{}",
        args.fs_name,
        if args.read_only { "ro" } else { "rw" }
    );
    if args.allow_other {
        options.push_str(",allow_other");
    }
    let theirs_fd: RawFd = theirs.as_raw_fd();
    let mut command = Command::new(FUSERMOUNT);
    command
        .arg("-o")
        .arg(&options)
        .arg("--")
        .arg(path)
        .env("_FUSE_COMMFD", theirs_fd.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs in the forked child before exec and only calls
    // fcntl(2), which is async-signal-safe; `theirs_fd` is open in the child
    // because `theirs` is alive in the parent until after spawn returns.
    unsafe {
        command.pre_exec(move || {
            // The socket is close-on-exec (std opens everything that way);
            // the helper must inherit it.
            let flags = libc::fcntl(theirs_fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(theirs_fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command
        .spawn()
        .map_err(|e| fail(format!("cannot run it: {e}")))?;
    drop(theirs);
    // fusermount3 exits right after sending the descriptor (we do not ask
    // for auto_unmount), and the message waits in the socket meanwhile.
    let output = child
        .wait_with_output()
        .map_err(|e| fail(format!("waiting for it: {e}")))?;
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    if !output.status.success() {
        return Err(fail(format!("{} ({stderr})", output.status)));
    }
    receive_fd(&ours).map_err(|e| fail(format!("{e} ({stderr})")))
}

/// Receives the one descriptor fusermount3 sends with `SCM_RIGHTS`.
fn receive_fd(socket: &UnixStream) -> Result<OwnedFd, String> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!(RawFd);
    let msg = loop {
        match recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => break msg,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(format!("receiving the descriptor: {e}")),
        }
    };
    if msg.bytes == 0 {
        return Err("it closed the socket without sending a descriptor".to_string());
    }
    let cmsgs = msg
        .cmsgs()
        .map_err(|e| format!("reading its control message: {e}"))?;
    for cmsg in cmsgs {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            let mut received = fds.into_iter();
            if let Some(fd) = received.next() {
                for extra in received {
                    // SAFETY: SCM_RIGHTS installed `extra` in our table just
                    // now and nothing else refers to it; owning it closes it.
                    drop(unsafe { OwnedFd::from_raw_fd(extra) });
                }
                if fd < 0 {
                    return Err(format!("it sent an invalid descriptor {fd}"));
                }
                // SAFETY: as above, `fd` is a fresh descriptor that only we hold.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Err("its message carried no descriptor".to_string())
}

/// How an unmount went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnmountKind {
    /// Unmounted; the session saw the connection end.
    Clean,
    /// Still in use (an open descriptor or a mapping), so detached lazily:
    /// the path is free now, the file system lives until its last user is
    /// gone.
    Detached,
    /// Somebody else unmounted it first.
    AlreadyGone,
}

/// Unmounts `path`; when busy, detaches it. Falls back to `fusermount3 -u`
/// when the kernel refuses us (`EPERM`, an unprivileged mount).
pub(crate) fn unmount(path: &Path) -> Result<UnmountKind, Errno> {
    match nix::mount::umount2(path, MntFlags::empty()) {
        Ok(()) => Ok(UnmountKind::Clean),
        Err(Errno::EBUSY) => match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) => Ok(UnmountKind::Detached),
            Err(Errno::EPERM) => fusermount_unmount(path, true).map(|()| UnmountKind::Detached),
            Err(e) => Err(e),
        },
        Err(Errno::EINVAL) => Ok(UnmountKind::AlreadyGone),
        Err(Errno::EPERM) => match fusermount_unmount(path, false) {
            Ok(()) => Ok(UnmountKind::Clean),
            Err(_) => fusermount_unmount(path, true).map(|()| UnmountKind::Detached),
        },
        Err(e) => Err(e),
    }
}

fn fusermount_unmount(path: &Path, lazy: bool) -> Result<(), Errno> {
    let mut command = Command::new(FUSERMOUNT);
    command.arg("-u").arg("-q");
    if lazy {
        command.arg("-z");
    }
    let status = command
        .arg("--")
        .arg(OsStr::new(path))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    if status.success() {
        Ok(())
    } else {
        Err(Errno::EPERM)
    }
}

/// Opens `/dev/fuse` only to see whether it can be opened.
pub fn device_available() -> bool {
    File::options()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("msb-fusefs-unit-{}-{name}", std::process::id()))
    }

    #[test]
    fn prepare_creates_missing_levels_and_removes_only_those() {
        let top = scratch("levels");
        let path = top.join("a").join("mnt");
        let mp = Mountpoint::prepare(&path).unwrap();
        assert!(path.is_dir());
        assert_eq!(mp.created.len(), 3);
        assert_eq!(mp.path, path.canonicalize().unwrap());
        mp.remove_created();
        assert!(!top.exists());
    }

    #[test]
    fn prepare_refuses_non_empty_and_non_directories() {
        let top = scratch("busy");
        std::fs::create_dir_all(&top).unwrap();
        std::fs::write(top.join("f"), b"x").unwrap();
        let err = Mountpoint::prepare(&top).unwrap_err();
        assert!(matches!(err, MountError::NotEmpty { .. }), "{err}");
        let err = Mountpoint::prepare(&top.join("f")).unwrap_err();
        assert!(matches!(err, MountError::NotADirectory { .. }), "{err}");
        // A pre-existing directory is not ours to remove.
        std::fs::remove_file(top.join("f")).unwrap();
        let mp = Mountpoint::prepare(&top).unwrap();
        mp.remove_created();
        assert!(top.is_dir());
        std::fs::remove_dir(&top).unwrap();
    }
}
