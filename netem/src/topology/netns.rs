//! Entering a named network namespace: from a thread, or in a child
//! process before it execs.
//!
//! `setns(CLONE_NEWNET)` moves only the calling thread, so [`NetNs::run`]
//! does its work on a fresh thread; sockets opened there stay in the
//! namespace after the thread ends, whichever thread uses them later. A
//! child process enters through a `pre_exec` hook ([`NetNs::command`])
//! rather than `ip netns exec`: no extra process between the runner and the
//! role (the pid we hold is the role's), and no mount namespace games; the
//! child's `/sys` still shows the root namespace, which roles do not read.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::thread::JoinHandle;

use super::ip::NETNS_DIR;

/// Why a namespace could not be opened or entered.
#[derive(Debug, thiserror::Error)]
pub enum NetNsError {
    /// The name cannot be a file in the namespace directory.
    #[error("invalid namespace name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No such namespace, or no permission to open it.
    #[error("opening network namespace {name} at {}: {source}", path.display())]
    Open {
        /// The namespace name.
        name: String,
        /// The file opened.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// `setns(2)` refused (not root, or the file is not a network namespace).
    #[error("entering network namespace {name}: {source}")]
    Enter {
        /// The namespace name.
        name: String,
        /// The OS error.
        source: io::Error,
    },
    /// The thread to run in the namespace could not be started.
    #[error("starting a thread for network namespace {name}: {source}")]
    Thread {
        /// The namespace name.
        name: String,
        /// The OS error.
        source: io::Error,
    },
}

/// An open handle on a named network namespace. Cheap to clone.
///
/// Holding it keeps the namespace alive even after its name is deleted, so
/// drop it with the [`Topology`](super::Topology) it came from.
#[derive(Debug, Clone)]
pub struct NetNs {
    name: String,
    fd: Arc<OwnedFd>,
}

impl std::os::fd::AsFd for NetNs {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&*self.fd)
    }
}

impl NetNs {
    /// Opens `/var/run/netns/NAME`, where `ip netns add` names namespaces.
    pub fn open(name: &str) -> Result<Self, NetNsError> {
        let reason = if name.is_empty() {
            Some("empty")
        } else if name == "." || name == ".." {
            Some("not a file name")
        } else if name.contains('/') || name.contains('\0') {
            Some("contains '/' or NUL")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(NetNsError::InvalidName {
                name: name.to_owned(),
                reason,
            });
        }
        let path = PathBuf::from(NETNS_DIR).join(name);
        let file = File::open(&path).map_err(|source| NetNsError::Open {
            name: name.to_owned(),
            path: path.clone(),
            source,
        })?;
        Ok(Self {
            name: name.to_owned(),
            fd: Arc::new(OwnedFd::from(file)),
        })
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Moves the calling thread into the namespace, for good: for threads
    /// you create yourself, e.g. in tokio's `on_thread_start`. Sockets the
    /// thread opens afterwards belong to the namespace.
    pub fn enter_current_thread(&self) -> Result<(), NetNsError> {
        // SAFETY: setns(2) only reads the descriptor, which `self.fd` keeps
        // open for the call; it changes the calling thread's namespace and
        // no memory.
        let rc = unsafe { libc::setns(self.fd.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc == 0 {
            Ok(())
        } else {
            Err(NetNsError::Enter {
                name: self.name.clone(),
                source: io::Error::last_os_error(),
            })
        }
    }

    /// Runs `f` on a new thread inside the namespace and waits for it. A
    /// panic in `f` resumes on the caller.
    pub fn run<T, F>(&self, f: F) -> Result<T, NetNsError>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        std::thread::scope(|scope| {
            let handle = std::thread::Builder::new()
                .name(thread_name(&self.name))
                .spawn_scoped(scope, || {
                    self.enter_current_thread()?;
                    Ok(f())
                })
                .map_err(|source| NetNsError::Thread {
                    name: self.name.clone(),
                    source,
                })?;
            match handle.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Starts `f` on a new, long-lived thread inside the namespace (a relay,
    /// a server); joining gives `f`'s value, or why the thread could not
    /// enter the namespace.
    pub fn spawn<T, F>(&self, f: F) -> Result<JoinHandle<Result<T, NetNsError>>, NetNsError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let ns = self.clone();
        std::thread::Builder::new()
            .name(thread_name(&self.name))
            .spawn(move || {
                ns.enter_current_thread()?;
                Ok(f())
            })
            .map_err(|source| NetNsError::Thread {
                name: self.name.clone(),
                source,
            })
    }

    /// A [`Command`] whose child process runs in the namespace (it enters
    /// with `setns` between fork and exec; see the module docs). If entering
    /// fails, `spawn` returns that error and nothing runs.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new(program);
        // The closure owns a reference, so the descriptor is open in the
        // parent when it forks and therefore in the child.
        let fd = Arc::clone(&self.fd);
        let enter = move || {
            // SAFETY: setns(2) only reads the descriptor, open in this child
            // because fork copied it and `fd` kept it open in the parent.
            if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        };
        // SAFETY: the hook runs between fork and exec, where only
        // async-signal-safe work is allowed: it makes one system call and
        // builds an `io::Error` from errno, which does not allocate.
        unsafe {
            command.pre_exec(enter);
        }
        command
    }
}

/// Runs `f` inside `ns` on a new thread and waits for it ([`NetNs::run`]).
pub fn run_in<T, F>(ns: &NetNs, f: F) -> Result<T, NetNsError>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    ns.run(f)
}

/// Starts `f` inside `ns` on a new thread ([`NetNs::spawn`]).
pub fn spawn_in<T, F>(ns: &NetNs, f: F) -> Result<JoinHandle<Result<T, NetNsError>>, NetNsError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    ns.spawn(f)
}

/// Linux keeps 15 bytes of a thread name; keep the end, where the role is.
fn thread_name(ns: &str) -> String {
    let start = ns.len().saturating_sub(15);
    match ns.get(start..) {
        Some(tail) => tail.to_owned(),
        None => "netns".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_are_rejected_before_touching_files() {
        for bad in ["", ".", "..", "a/b", "../etc", "a\0b"] {
            assert!(
                matches!(NetNs::open(bad), Err(NetNsError::InvalidName { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn missing_namespace_is_an_open_error() {
        let err = NetNs::open("msb-no-such-namespace-here").unwrap_err();
        assert!(matches!(err, NetNsError::Open { .. }), "{err}");
        assert!(err.to_string().contains("msb-no-such-namespace-here"));
    }

    #[test]
    fn thread_names_fit() {
        assert_eq!(thread_name("msb-1234_5_abcdef-link"), "4_5_abcdef-link");
        assert_eq!(thread_name("x"), "x");
    }
}
