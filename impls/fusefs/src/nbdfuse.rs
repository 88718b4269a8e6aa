//! libnbd's `nbdfuse`: the reference this crate is measured against. It
//! shows an NBD export as one file of a FUSE file system, with libnbd as
//! the NBD client, in a child process.
//!
//! [`NbdFuse`] owns that process and its mount: it names the file system
//! with [`FS_NAME_PREFIX`] so that a crashed run's mount is found by
//! [`crate::cleanup`], waits until `nbdfuse` says it is ready (its pid
//! file), and unmounts on [`NbdFuse::unmount`] or drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::options::FS_NAME_PREFIX;

/// The program.
pub const NBDFUSE: &str = "nbdfuse";

/// Why `nbdfuse` could not be run, or did not come up.
#[derive(Debug, thiserror::Error)]
pub enum NbdFuseError {
    #[error("`nbdfuse` is not installed (Debian: libnbd-bin)")]
    NotInstalled,
    #[error("preparing the mount point {path}: {source}")]
    MountPoint {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("running nbdfuse: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("nbdfuse exited before it was ready ({status}): {stderr}")]
    ExitedEarly { status: ExitStatus, stderr: String },
    #[error("nbdfuse was not ready within {0:?}")]
    NotReady(Duration),
    #[error("waiting for nbdfuse: {0}")]
    Wait(#[source] std::io::Error),
    #[error("unmounting {path}: {reason}")]
    Unmount { path: PathBuf, reason: String },
}

/// How to run `nbdfuse`.
#[derive(Debug, Clone)]
pub struct NbdFuseOptions {
    /// `--readonly`.
    pub read_only: bool,
    /// `--connections N` (libnbd's multi-conn), when given.
    pub connections: Option<u32>,
    /// How long it may take to connect and mount.
    pub ready_timeout: Duration,
}

impl Default for NbdFuseOptions {
    fn default() -> Self {
        Self {
            read_only: true,
            connections: None,
            ready_timeout: Duration::from_secs(20),
        }
    }
}

/// Whether `nbdfuse` can be run here.
pub fn available() -> Result<(), NbdFuseError> {
    match Command::new(NBDFUSE)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => Ok(()),
        _ => Err(NbdFuseError::NotInstalled),
    }
}

/// A running `nbdfuse` and its mount.
#[derive(Debug)]
pub struct NbdFuse {
    dir: PathBuf,
    child: Option<Child>,
}

impl NbdFuse {
    /// Runs `command` (`Command::new(NBDFUSE)`, or one prepared to run it
    /// elsewhere, such as in a network namespace) to mount the NBD server
    /// at `uri` as the file `nbd` in the new directory `dir`, and waits
    /// until it is ready.
    pub fn mount(
        mut command: Command,
        dir: &Path,
        uri: &str,
        options: &NbdFuseOptions,
    ) -> Result<Self, NbdFuseError> {
        available()?;
        std::fs::create_dir_all(dir).map_err(|source| NbdFuseError::MountPoint {
            path: dir.to_owned(),
            source,
        })?;
        let pidfile = dir.with_extension("pid");
        let _ = std::fs::remove_file(&pidfile);
        let fs_name = format!("{FS_NAME_PREFIX}nbdfuse-{}", std::process::id());
        command
            .arg("-P")
            .arg(&pidfile)
            .args(["-o", &format!("fsname={fs_name}")]);
        if options.read_only {
            command.arg("--readonly");
        }
        if let Some(n) = options.connections {
            command.args(["--connections", &n.to_string()]);
        }
        command
            .arg(dir.join("nbd"))
            .arg(uri)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let child = command.spawn().map_err(NbdFuseError::Spawn)?;
        let mut mounted = Self {
            dir: dir.to_owned(),
            child: Some(child),
        };
        let deadline = Instant::now() + options.ready_timeout;
        while !pidfile.exists() {
            if let Some(status) = mounted.try_wait()? {
                let stderr = mounted.stderr();
                mounted.child = None;
                return Err(NbdFuseError::ExitedEarly { status, stderr });
            }
            if Instant::now() > deadline {
                return Err(NbdFuseError::NotReady(options.ready_timeout));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = std::fs::remove_file(&pidfile);
        Ok(mounted)
    }

    /// The file that is the export.
    pub fn path(&self) -> PathBuf {
        self.dir.join("nbd")
    }

    /// Unmounts, waits for `nbdfuse` to exit, and removes the directory.
    pub fn unmount(mut self) -> Result<(), NbdFuseError> {
        self.stop()
    }

    fn try_wait(&mut self) -> Result<Option<ExitStatus>, NbdFuseError> {
        match self.child.as_mut() {
            Some(c) => c.try_wait().map_err(NbdFuseError::Wait),
            None => Ok(None),
        }
    }

    fn stderr(&mut self) -> String {
        use std::io::Read;
        let mut text = String::new();
        if let Some(err) = self.child.as_mut().and_then(|c| c.stderr.as_mut()) {
            // Bounded: a misbehaving child cannot make us hold more.
            let _ = err.take(4096).read_to_string(&mut text);
        }
        text.trim().to_owned()
    }

    fn stop(&mut self) -> Result<(), NbdFuseError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // `nbdfuse` exits cleanly once its mount goes; killing it instead
        // would leave the mount behind, dead.
        let unmounted = unmount_dir(&self.dir);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
        unmounted
    }
}

/// `fusermount3 -u`, else (as root, without it) a lazy `umount2`.
fn unmount_dir(dir: &Path) -> Result<(), NbdFuseError> {
    let failed = |reason: String| NbdFuseError::Unmount {
        path: dir.to_owned(),
        reason,
    };
    match Command::new(crate::mount::FUSERMOUNT)
        .arg("-u")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => Ok(()),
        _ => nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH)
            .map_err(|e| failed(format!("fusermount3 -u failed, and umount2: {e}"))),
    }
}

impl Drop for NbdFuse {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!("stopping nbdfuse: {e}");
        }
    }
}

/// `nbd://HOST:PORT/EXPORT` for a TCP server.
pub fn tcp_uri(addr: std::net::SocketAddr, export: &str) -> String {
    let host = match addr.ip() {
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        std::net::IpAddr::V4(ip) => ip.to_string(),
    };
    format!("nbd://{host}:{}/{export}", addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_name_host_port_and_export() {
        let v4: std::net::SocketAddr = "10.0.0.1:10809".parse().unwrap();
        assert_eq!(tcp_uri(v4, "region"), "nbd://10.0.0.1:10809/region");
        let v6: std::net::SocketAddr = "[::1]:4000".parse().unwrap();
        assert_eq!(tcp_uri(v6, "x"), "nbd://[::1]:4000/x");
    }
}
