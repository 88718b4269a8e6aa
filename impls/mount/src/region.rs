//! What every mount offers the application: the device as a path, an open
//! file and a memory slice, and the hooks around sync and close.

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::Arc;

use memmap2::{Mmap, MmapMut, MmapOptions};

use crate::device::{Device, DeviceKind, DeviceOptions};
use crate::MountError;

/// A hook that may refuse: its error stops the operation it guards.
pub type Hook = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Lifecycle hooks (the thesis's `OnBeforeSync`, `OnBeforeClose` and
/// `OnChunkIsLocal`).
#[derive(Clone, Default)]
pub struct Hooks {
    /// Runs first in [`MountedRegion::sync`], e.g. to `msync` a mapping the
    /// caller holds elsewhere.
    pub before_sync: Option<Hook>,
    /// Runs first in a mount's `close`.
    pub before_close: Option<Hook>,
    /// Managed mounts: called with the byte offset of each chunk that
    /// became local, whether pulled or first written.
    pub on_chunk_local: Option<Arc<dyn Fn(u64) + Send + Sync>>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("before_sync", &self.before_sync.is_some())
            .field("before_close", &self.before_close.is_some())
            .field("on_chunk_local", &self.on_chunk_local.is_some())
            .finish()
    }
}

/// Options every mount takes.
#[derive(Debug, Clone, Default)]
pub struct MountOptions {
    pub device: DeviceOptions,
    pub hooks: Hooks,
}

/// A mapping of the whole region: writable unless the device is read-only.
#[derive(Debug)]
pub enum RegionMap {
    ReadOnly(Mmap),
    ReadWrite(MmapMut),
}

impl RegionMap {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            RegionMap::ReadOnly(m) => m,
            RegionMap::ReadWrite(m) => m,
        }
    }

    /// `None` for a read-only mapping.
    pub fn as_mut_slice(&mut self) -> Option<&mut [u8]> {
        match self {
            RegionMap::ReadOnly(_) => None,
            RegionMap::ReadWrite(m) => Some(m),
        }
    }

    /// Tells the kernel how the region will be read (`madvise`): with
    /// `Advice::Random` a fault reads only its page, no readahead around
    /// it, so a read does not wait for neighbours nobody asked for.
    pub fn advise(&self, advice: memmap2::Advice) -> std::io::Result<()> {
        match self {
            RegionMap::ReadOnly(m) => m.advise(advice),
            RegionMap::ReadWrite(m) => m.advise(advice),
        }
    }

    /// Writes dirty pages back to the device (`msync`). Dropping the map
    /// does this too.
    pub fn flush(&self) -> std::io::Result<()> {
        match self {
            RegionMap::ReadOnly(_) => Ok(()),
            RegionMap::ReadWrite(m) => m.flush(),
        }
    }
}

impl Drop for RegionMap {
    fn drop(&mut self) {
        // Unmapping dirty pages of a FUSE file makes the kernel write them
        // back under this process's mmap lock, which a FUSE server thread of
        // this same process may need (any heap growth takes it): flushed
        // first, the unmap has nothing left to write.
        if let Err(e) = self.flush() {
            tracing::warn!("flushing a mapping before unmapping it: {e}");
        }
    }
}

/// The device of a mount with the path, file and slice APIs.
#[derive(Debug)]
pub struct MountedRegion {
    device: Device,
    size: u64,
    read_only: bool,
    hooks: Hooks,
}

impl MountedRegion {
    pub(crate) fn new(device: Device, size: u64, read_only: bool, hooks: Hooks) -> Self {
        Self {
            device,
            size,
            read_only,
            hooks,
        }
    }

    /// The device's path (`/dev/nbdN` or the FUSE file).
    pub fn path(&self) -> &Path {
        self.device.path()
    }

    /// Which device shows the region.
    pub fn device_kind(&self) -> DeviceKind {
        self.device.kind()
    }

    /// The region's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Opens the device, read-write unless the mount is read-only.
    pub fn open_file(&self) -> Result<File, MountError> {
        OpenOptions::new()
            .read(true)
            .write(!self.read_only)
            .open(self.path())
            .map_err(|source| self.device_error(source))
    }

    /// Maps the whole region `MAP_SHARED`: reads fault pages in through the
    /// device, and flushed writes go back through it.
    pub fn map(&self) -> Result<RegionMap, MountError> {
        let file = self.open_file()?;
        let len = usize::try_from(self.size).map_err(|_| MountError::Option {
            option: "size",
            value: self.size.to_string(),
            allowed: "a size this machine can map",
        })?;
        let mut options = MmapOptions::new();
        options.len(len);
        // SAFETY: the mapping is of our own device, which no other process
        // truncates; its size is fixed for the mount's life.
        let mapped = unsafe {
            if self.read_only {
                options.map(&file).map(RegionMap::ReadOnly)
            } else {
                options.map_mut(&file).map(RegionMap::ReadWrite)
            }
        };
        mapped.map_err(|source| self.device_error(source))
    }

    /// Runs the before-sync hook, then makes every write that reached the
    /// device durable in the mount's backend (`fsync` on the device).
    pub fn sync(&self) -> Result<(), MountError> {
        run_hook("before-sync", self.hooks.before_sync.as_ref())?;
        if self.read_only {
            return Ok(());
        }
        self.open_file()?
            .sync_all()
            .map_err(|source| self.device_error(source))
    }

    /// Runs the before-close hook and syncs; the caller then takes the
    /// device down.
    pub(crate) fn prepare_close(&self) -> Result<(), MountError> {
        run_hook("before-close", self.hooks.before_close.as_ref())?;
        self.sync()
    }

    pub(crate) fn into_device(self) -> Device {
        self.device
    }

    fn device_error(&self, source: std::io::Error) -> MountError {
        MountError::Device {
            path: self.path().to_owned(),
            source,
        }
    }
}

fn run_hook(hook: &'static str, f: Option<&Hook>) -> Result<(), MountError> {
    match f {
        Some(f) => f().map_err(|message| MountError::Hook { hook, message }),
        None => Ok(()),
    }
}
