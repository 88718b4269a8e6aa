//! The device: how a served backend becomes something the application can
//! open and `mmap`.
//!
//! Both paths start the same way: a local NBD server exports the backend
//! over one end of a socket pair. Where the kernel has an NBD client, our
//! client does the handshake on the other end and hands the socket to
//! `/dev/nbdN`. Where it does not, our client stays in user space and a FUSE
//! file system shows it as one file. Which one ran is [`DeviceKind`], and
//! callers record it: the two are different systems and are never
//! reported as each other.

use std::fmt;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backends::SharedBackend;
use fusefs::{FuseFile, FuseFileOptions};
use nbd::{AttachOptions, BlockSizes, Export, KernelNbd, KernelNbdDevice, NbdClient, Server};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use crate::MountError;

/// The export name the local server and client agree on.
const EXPORT_NAME: &str = "region";

/// How long closing waits for the local NBD server to finish.
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Which device the caller wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DevicePreference {
    /// The kernel NBD client where it is available, else a FUSE file.
    #[default]
    Auto,
    /// Only the kernel NBD client; fails where it is missing.
    KernelNbd,
    /// Only a FUSE file.
    Fuse,
}

/// Which device a mount is shown through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// `/dev/nbdN`, the kernel's NBD client driving our server.
    KernelNbd,
    /// One file in our FUSE file system, our NBD client behind it.
    Fuse,
}

impl DeviceKind {
    /// The name results record.
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::KernelNbd => "kernel-nbd",
            DeviceKind::Fuse => "fuse",
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How to show a backend as a device.
#[derive(Debug, Clone)]
pub struct DeviceOptions {
    pub preference: DevicePreference,
    /// Where FUSE mount points are created (one fresh directory per mount,
    /// named `msb-mount-*`, removed on close).
    pub mount_parent: PathBuf,
    /// The NBD block sizes the local server advertises.
    pub block_sizes: BlockSizes,
    /// Whether the device refuses writes.
    pub read_only: bool,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        Self {
            preference: DevicePreference::Auto,
            mount_parent: std::env::temp_dir(),
            block_sizes: BlockSizes::default(),
            read_only: false,
        }
    }
}

/// What holds the device up.
#[derive(Debug)]
enum Exposure {
    Kernel(KernelNbdDevice),
    Fuse {
        file: FuseFile,
        client: Arc<NbdClient>,
    },
}

/// A backend shown as a device, with the local NBD server behind it.
/// Dropping it takes the device down; [`Device::close`] does so and reports
/// what went wrong.
#[derive(Debug)]
pub struct Device {
    exposure: Option<Exposure>,
    path: PathBuf,
    kind: DeviceKind,
    size: u64,
    server: Option<JoinHandle<Result<nbd::ConnectionStats, nbd::NbdError>>>,
    runtime: Handle,
}

/// Distinguishes the mount points of one process.
static MOUNT_SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// A connected stream an NBD client can run over, and hand to the kernel.
pub trait NbdStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The socket, switched back to blocking mode, for the kernel.
    fn into_owned_fd(self) -> std::io::Result<OwnedFd>;
}

impl NbdStream for tokio::net::UnixStream {
    fn into_owned_fd(self) -> std::io::Result<OwnedFd> {
        let s = self.into_std()?;
        s.set_nonblocking(false)?;
        Ok(s.into())
    }
}

impl NbdStream for tokio::net::TcpStream {
    fn into_owned_fd(self) -> std::io::Result<OwnedFd> {
        let s = self.into_std()?;
        s.set_nonblocking(false)?;
        Ok(s.into())
    }
}

impl Device {
    /// Serves `backend` (of `size` bytes) over a local NBD connection and
    /// shows it as a device. Blocks on `runtime`: call it from outside.
    pub fn expose(
        backend: SharedBackend,
        size: u64,
        options: &DeviceOptions,
        runtime: &Handle,
    ) -> Result<Self, MountError> {
        let export = Export::new(EXPORT_NAME, backend)
            .read_only(options.read_only)
            .block_size(options.block_sizes);
        let server = Arc::new(Server::new(vec![export], nbd::ServerLimits::default())?);
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(MountError::Socket)?;
        let (ours, theirs) = {
            let _entered = runtime.enter();
            (unix_stream(ours)?, unix_stream(theirs)?)
        };
        let serving = runtime.spawn(async move { server.serve(theirs).await });
        let mut device = Device::attach(ours, EXPORT_NAME, options, runtime, Some(size));
        if let Ok(d) = &mut device {
            d.server = Some(serving);
        } else {
            serving.abort();
        }
        device
    }

    /// Shows export `export_name` of the NBD server at the other end of
    /// `stream` as a device: the kernel's client takes the socket over, or
    /// ours runs behind a FUSE file. Blocks on `runtime`: call it from
    /// outside. `expect_size`, when given, must be the export's size.
    pub fn attach<S: NbdStream>(
        stream: S,
        export_name: &str,
        options: &DeviceOptions,
        runtime: &Handle,
        expect_size: Option<u64>,
    ) -> Result<Self, MountError> {
        let kind = choose(options.preference)?;
        let check_size = |size: u64| match expect_size {
            Some(expected) if expected != size => Err(MountError::Option {
                option: "size",
                value: format!("{size} (the export's) vs {expected} (expected)"),
                allowed: "the export's size",
            }),
            _ => Ok(()),
        };
        let (exposure, path, size) = match kind {
            DeviceKind::KernelNbd => {
                let (stream, info) = runtime.block_on(nbd::handshake(stream, export_name))?;
                check_size(info.size)?;
                let socket = stream.into_owned_fd().map_err(MountError::Socket)?;
                let attached = KernelNbd::attach(socket, &info, &AttachOptions::default())?;
                let path = attached.path().to_owned();
                (Exposure::Kernel(attached), path, info.size)
            }
            DeviceKind::Fuse => {
                let client = Arc::new(runtime.block_on(NbdClient::connect(stream, export_name))?);
                let size = client.export().size;
                check_size(size)?;
                let mountpoint = options.mount_parent.join(format!(
                    "msb-mount-{}-{}",
                    std::process::id(),
                    MOUNT_SEQUENCE.fetch_add(1, Ordering::Relaxed)
                ));
                let mut fuse = FuseFileOptions::new(
                    mountpoint,
                    client.clone() as SharedBackend,
                    size,
                    runtime.clone(),
                );
                fuse.read_only = options.read_only || client.export().read_only();
                let file = FuseFile::mount(fuse)?;
                let path = file.path().to_owned();
                (Exposure::Fuse { file, client }, path, size)
            }
        };
        tracing::debug!(path = %path.display(), %kind, "device up");
        Ok(Device {
            exposure: Some(exposure),
            path,
            kind,
            size,
            server: None,
            runtime: runtime.clone(),
        })
    }

    /// The device's path: `/dev/nbdN` or the FUSE file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Which device this is.
    pub fn kind(&self) -> DeviceKind {
        self.kind
    }

    /// Takes the device down, disconnects and stops the local server.
    /// Blocks on the runtime: call it from outside.
    pub fn close(mut self) -> Result<(), MountError> {
        self.take_down()
    }

    fn take_down(&mut self) -> Result<(), MountError> {
        let mut first_error = None;
        match self.exposure.take() {
            Some(Exposure::Kernel(device)) => {
                // Detaching makes the kernel send NBD_CMD_DISC; the server ends.
                if let Err(e) = device.detach() {
                    first_error.get_or_insert(MountError::from(e));
                }
            }
            Some(Exposure::Fuse { file, client }) => {
                if let Err(e) = file.unmount() {
                    first_error.get_or_insert(MountError::from(e));
                }
                if let Err(e) = self.runtime.block_on(client.disconnect()) {
                    first_error.get_or_insert(MountError::from(e));
                }
            }
            None => {}
        }
        if let Some(server) = self.server.take() {
            let stopped = self
                .runtime
                .block_on(async { tokio::time::timeout(SERVER_STOP_TIMEOUT, server).await });
            let failure = match stopped {
                Ok(Ok(Ok(_))) => None,
                Ok(Ok(Err(e))) => Some(MountError::from(e)),
                Ok(Err(e)) => Some(MountError::ServerTask(e.to_string())),
                Err(_) => Some(MountError::ServerTask(format!(
                    "the local NBD server did not stop within {SERVER_STOP_TIMEOUT:?}"
                ))),
            };
            if let Some(e) = failure {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if self.exposure.is_none() && self.server.is_none() {
            return;
        }
        // Dropping inside the runtime cannot block on it: take the device
        // down (its owners release on drop) and abort the server.
        if Handle::try_current().is_ok() {
            drop(self.exposure.take());
            if let Some(server) = self.server.take() {
                server.abort();
            }
            return;
        }
        if let Err(e) = self.take_down() {
            tracing::warn!(path = %self.path.display(), "taking the device down: {e}");
        }
    }
}

/// Which device a mount with `preference` would use here, or why none
/// can be used; touches nothing.
pub fn probe(preference: DevicePreference) -> Result<DeviceKind, String> {
    match choose(preference).map_err(|e| e.to_string())? {
        DeviceKind::KernelNbd => Ok(DeviceKind::KernelNbd),
        DeviceKind::Fuse if fusefs::device_available() => Ok(DeviceKind::Fuse),
        DeviceKind::Fuse => Err(format!(
            "no kernel NBD client ({}) and /dev/fuse cannot be opened",
            KernelNbd::available().err().unwrap_or_default()
        )),
    }
}

fn choose(preference: DevicePreference) -> Result<DeviceKind, MountError> {
    match preference {
        DevicePreference::Fuse => Ok(DeviceKind::Fuse),
        DevicePreference::KernelNbd => KernelNbd::available()
            .map(|()| DeviceKind::KernelNbd)
            .map_err(MountError::KernelNbdUnavailable),
        DevicePreference::Auto => Ok(match KernelNbd::available() {
            Ok(()) => DeviceKind::KernelNbd,
            Err(_) => DeviceKind::Fuse,
        }),
    }
}

fn unix_stream(s: std::os::unix::net::UnixStream) -> Result<tokio::net::UnixStream, MountError> {
    s.set_nonblocking(true).map_err(MountError::Socket)?;
    tokio::net::UnixStream::from_std(s).map_err(MountError::Socket)
}
