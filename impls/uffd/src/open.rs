//! Obtaining a userfaultfd: the device, the syscall, and user-mode-only.
//!
//! Linux offers three ways, with different permission rules:
//!
//! | way | who may | kernel-mode faults |
//! | --- | --- | --- |
//! | `/dev/userfaultfd` + `USERFAULTFD_IOC_NEW` (6.1+) | whoever can open the device (default mode 0600, root) | handled |
//! | `userfaultfd(2)` | `CAP_SYS_PTRACE`, or anyone if `vm.unprivileged_userfaultfd = 1` | handled |
//! | `userfaultfd(2)` with `UFFD_USER_MODE_ONLY` (5.11+) | anyone | not handled: a syscall touching a missing page fails with `EFAULT` |
//!
//! [`OpenMode::Auto`] tries them in that order and keeps the first the
//! kernel allows, so a process gets the most capable descriptor it may have.
//! The `userfaultfd` crate stops at a device it cannot open instead of
//! falling back, which is why this module exists.

use std::fmt;
use std::fs::OpenOptions;
use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;

use crate::sys::{self, UffdioApi};

/// Where the userfaultfd device lives (Linux 6.1+).
const DEVICE_PATH: &str = "/dev/userfaultfd";
/// The sysctl that lets unprivileged processes use `userfaultfd(2)` fully.
const SYSCTL_PATH: &str = "/proc/sys/vm/unprivileged_userfaultfd";

/// How [`crate::UffdRegion::open`] obtains its userfaultfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OpenMode {
    /// The device, then the syscall, then the user-mode-only syscall: the
    /// first the kernel allows.
    #[default]
    Auto,
    /// Only the syscall with `UFFD_USER_MODE_ONLY`: what an unprivileged
    /// process gets when `vm.unprivileged_userfaultfd = 0`. Lets privileged
    /// runs (and tests) exercise that path.
    UserModeOnly,
}

impl OpenMode {
    /// The ways this mode tries, in order.
    pub fn attempts(self) -> &'static [OpenedVia] {
        match self {
            OpenMode::Auto => &[
                OpenedVia::Device,
                OpenedVia::Syscall,
                OpenedVia::SyscallUserModeOnly,
            ],
            OpenMode::UserModeOnly => &[OpenedVia::SyscallUserModeOnly],
        }
    }
}

/// The way a userfaultfd was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpenedVia {
    /// `/dev/userfaultfd` with `USERFAULTFD_IOC_NEW`.
    Device,
    /// The `userfaultfd(2)` syscall without `UFFD_USER_MODE_ONLY`.
    Syscall,
    /// The `userfaultfd(2)` syscall with `UFFD_USER_MODE_ONLY`.
    SyscallUserModeOnly,
}

impl OpenedVia {
    /// Whether faults taken by the kernel on the process's behalf (a
    /// `write(2)` from a missing page, for example) reach the handler.
    pub fn handles_kernel_faults(self) -> bool {
        !matches!(self, OpenedVia::SyscallUserModeOnly)
    }

    fn flags(self) -> libc::c_int {
        let base = libc::O_CLOEXEC | libc::O_NONBLOCK;
        match self {
            OpenedVia::Device | OpenedVia::Syscall => base,
            OpenedVia::SyscallUserModeOnly => base | sys::UFFD_USER_MODE_ONLY,
        }
    }
}

impl fmt::Display for OpenedVia {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OpenedVia::Device => "/dev/userfaultfd",
            OpenedVia::Syscall => "userfaultfd(2)",
            OpenedVia::SyscallUserModeOnly => "userfaultfd(2) with UFFD_USER_MODE_ONLY",
        })
    }
}

/// A userfaultfd that passed the `UFFDIO_API` handshake.
#[derive(Debug)]
pub(crate) struct Opened {
    pub fd: OwnedFd,
    pub via: OpenedVia,
    /// What the kernel reported: every supported feature and ioctl.
    pub api: UffdioApi,
}

/// Why one way of opening failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AttemptError {
    /// The descriptor could not be created.
    #[error("{via}: {errno}")]
    Create { via: OpenedVia, errno: Errno },
    /// The descriptor was created but the `UFFDIO_API` handshake failed.
    #[error("{via}: UFFDIO_API handshake (features {features:#x}): {errno}")]
    Handshake {
        via: OpenedVia,
        features: u64,
        errno: Errno,
    },
}

/// Opens a userfaultfd one way and completes the handshake asking for
/// `features` (`UFFD_FEATURE_*` bits).
pub(crate) fn attempt(via: OpenedVia, features: u64) -> Result<Opened, AttemptError> {
    let create = |errno| AttemptError::Create { via, errno };
    let fd = match via {
        OpenedVia::Device => {
            let device = OpenOptions::new()
                .read(true)
                .write(true)
                .open(DEVICE_PATH)
                .map_err(|e| create(io_errno(&e)))?;
            sys::userfaultfd_from_device(device.as_fd(), via.flags()).map_err(create)?
        }
        OpenedVia::Syscall | OpenedVia::SyscallUserModeOnly => {
            sys::userfaultfd_syscall(via.flags()).map_err(create)?
        }
    };
    let api = sys::api(fd.as_fd(), features).map_err(|errno| AttemptError::Handshake {
        via,
        features,
        errno,
    })?;
    Ok(Opened { fd, via, api })
}

/// Tries every way `mode` allows, in order; on total failure returns the
/// reason for [`crate::UffdError::Unavailable`].
pub(crate) fn open(mode: OpenMode, features: u64) -> Result<Opened, String> {
    let mut failures = Vec::new();
    for &via in mode.attempts() {
        match attempt(via, features) {
            Ok(opened) => {
                if !failures.is_empty() {
                    tracing::debug!(
                        %via,
                        earlier = %join(&failures),
                        "userfaultfd opened after falling back"
                    );
                }
                return Ok(opened);
            }
            Err(e) => failures.push(e),
        }
    }
    Err(unavailable_reason(&failures))
}

/// The kernel's errno text for every failed way, plus what to change.
pub(crate) fn unavailable_reason(failures: &[AttemptError]) -> String {
    format!("{}. {}", join(failures), hint())
}

fn join(failures: &[AttemptError]) -> String {
    failures
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// What an operator can change, with the sysctl's current value when readable.
pub(crate) fn hint() -> String {
    let current = std::fs::read_to_string(SYSCTL_PATH)
        .map(|v| format!("currently {}", v.trim()))
        .unwrap_or_else(|e| format!("unreadable: {e}"));
    format!(
        "Hint: set `sysctl vm.unprivileged_userfaultfd=1` ({current}), give this user \
         read/write access to {DEVICE_PATH} (mode is usually 0600, root only), or run \
         with CAP_SYS_PTRACE; without any of these, kernels before 5.11 offer no \
         UFFD_USER_MODE_ONLY fallback"
    )
}

fn io_errno(e: &std::io::Error) -> Errno {
    e.raw_os_error()
        .map_or(Errno::UnknownErrno, Errno::from_raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_prefers_the_most_capable_way() {
        assert_eq!(
            OpenMode::Auto.attempts(),
            &[
                OpenedVia::Device,
                OpenedVia::Syscall,
                OpenedVia::SyscallUserModeOnly
            ]
        );
        assert_eq!(
            OpenMode::UserModeOnly.attempts(),
            &[OpenedVia::SyscallUserModeOnly]
        );
        assert!(!OpenedVia::SyscallUserModeOnly.handles_kernel_faults());
        assert!(OpenedVia::Device.handles_kernel_faults());
    }

    #[test]
    fn unavailable_reason_names_errno_and_remedies() {
        let reason = unavailable_reason(&[
            AttemptError::Create {
                via: OpenedVia::Device,
                errno: Errno::EACCES,
            },
            AttemptError::Create {
                via: OpenedVia::SyscallUserModeOnly,
                errno: Errno::EPERM,
            },
        ]);
        assert!(reason.contains("/dev/userfaultfd: EACCES"), "{reason}");
        assert!(reason.contains("UFFD_USER_MODE_ONLY: EPERM"), "{reason}");
        assert!(reason.contains("vm.unprivileged_userfaultfd"), "{reason}");
        assert!(reason.contains("0600"), "{reason}");
    }
}
