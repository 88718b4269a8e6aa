//! Mounts: a remote region made local behind an NBD device (thesis 3.5,
//! 4.4.6, 4.5).
//!
//! A mount serves a backend from a local NBD server to a local NBD client
//! over a socket pair and shows it as a device (`/dev/nbdN` where the kernel
//! has an NBD client, else one file of a FUSE file system; see [`device`]).
//! The application uses it as a path, an open file or a memory slice.
//!
//! - [`DirectMount`]: the server's backend is the remote itself: every read
//!   the device does not have cached crosses the network.
//! - [`ManagedMount`]: the server's backend is the managed pipeline of crate
//!   `chunks`: whole chunks, a local cache that knows which chunks are
//!   local, a background puller (N workers, a heuristic order) that starts
//!   before the device is up, and a background pusher of dirty chunks.
//!
//! # Layout
//!
//! - [`device`] holds [`Device`]: the NBD server + client + kernel or FUSE
//!   device.
//! - [`region`] holds [`MountedRegion`]: the path, file and slice APIs and
//!   the lifecycle hooks every mount shares.
//! - [`direct`] holds [`DirectMount`].
//! - [`managed`] holds [`ManagedMount`] and [`ManagedOptions`].
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use backends::{MemoryBackend, SharedBackend};
//! use mount::{DirectMount, MountOptions};
//!
//! let runtime = tokio::runtime::Runtime::new()?;
//! let remote: SharedBackend = Arc::new(MemoryBackend::from_bytes(vec![7; 1 << 20]));
//! let mount = DirectMount::open(remote, MountOptions::default(), runtime.handle())?;
//! let region = mount.region().map()?;
//! assert_eq!(region.as_slice()[4096], 7);
//! drop(region);
//! mount.close()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod device;
pub mod direct;
pub mod managed;
pub mod region;

pub use device::{Device, DeviceKind, DeviceOptions, DevicePreference, NbdStream};
pub use direct::DirectMount;
pub use managed::{ManagedMount, ManagedOptions, ManagedStats};
pub use region::{Hooks, MountOptions, MountedRegion, RegionMap};

/// Why a mount could not be opened, used or closed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("the kernel NBD client was asked for but is unavailable: {0}")]
    KernelNbdUnavailable(String),
    #[error("local NBD socket pair: {0}")]
    Socket(#[source] std::io::Error),
    #[error("local NBD server configuration: {0}")]
    ServerConfig(#[from] nbd::ServerConfigError),
    #[error("local NBD: {0}")]
    Nbd(#[from] nbd::NbdError),
    #[error("attaching the kernel NBD device: {0}")]
    Kernel(#[from] nbd::KernelError),
    #[error("FUSE device: {0}")]
    Fuse(#[from] fusefs::FuseError),
    #[error("local NBD server: {0}")]
    ServerTask(String),
    #[error("the region's backend: {0}")]
    Backend(#[from] backends::BackendError),
    #[error("pipeline set-up: {0}")]
    Stage(#[from] chunks::StageError),
    #[error("background pull: {0}")]
    Pull(#[from] chunks::PullError),
    #[error("{path}: {source}")]
    Device {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the {hook} hook failed: {message}")]
    Hook { hook: &'static str, message: String },
    #[error("invalid mount option `{option}`: {value} (allowed: {allowed})")]
    Option {
        option: &'static str,
        value: String,
        allowed: &'static str,
    },
}
