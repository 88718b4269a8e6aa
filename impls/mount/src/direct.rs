//! [`DirectMount`]: the remote straight behind the local NBD server (thesis
//! 3.5, 4.4.6). Nothing is fetched ahead; what the kernel's page cache does
//! not hold is read from the remote when the application touches it.

use backends::SharedBackend;
use tokio::runtime::Handle;

use crate::device::{Device, NbdStream};
use crate::region::{MountOptions, MountedRegion};
use crate::MountError;

/// A remote region as a local device, nothing in between.
#[derive(Debug)]
pub struct DirectMount {
    region: MountedRegion,
}

impl DirectMount {
    /// Asks `remote` for its size and shows it as a device. Blocks on
    /// `runtime`: call it from outside the runtime.
    pub fn open(
        remote: SharedBackend,
        options: MountOptions,
        runtime: &Handle,
    ) -> Result<Self, MountError> {
        let size = runtime.block_on(remote.size())?;
        let device = Device::expose(remote, size, &options.device, runtime)?;
        Ok(Self {
            region: MountedRegion::new(device, size, options.device.read_only, options.hooks),
        })
    }

    /// Shows export `export_name` of a remote NBD server, reached over
    /// `stream`, as a device: no local server, the NBD client talks across
    /// the network (the study's `nbd-direct`). Blocks on `runtime`.
    pub fn over_nbd<S: NbdStream>(
        stream: S,
        export_name: &str,
        options: MountOptions,
        runtime: &Handle,
    ) -> Result<Self, MountError> {
        let device = Device::attach(stream, export_name, &options.device, runtime, None)?;
        let size = device.size();
        Ok(Self {
            region: MountedRegion::new(device, size, options.device.read_only, options.hooks),
        })
    }

    /// The path, file and slice APIs.
    pub fn region(&self) -> &MountedRegion {
        &self.region
    }

    /// Runs the before-close hook, syncs, and takes the device down.
    pub fn close(self) -> Result<(), MountError> {
        let synced = self.region.prepare_close();
        let closed = self.region.into_device().close();
        synced.and(closed)
    }
}
