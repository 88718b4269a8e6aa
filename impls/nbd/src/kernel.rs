//! Handing a handshaken NBD socket to the Linux kernel's NBD client, so
//! the export appears as a block device `/dev/nbdN`.
//!
//! The handshake stays in user space ([`handshake()`](crate::handshake()));
//! the kernel takes over the transmission phase through the ioctls of
//! `include/uapi/linux/nbd.h`:
//!
//! | ioctl | `_IO(0xab, n)` | argument |
//! |---|---|---|
//! | `NBD_SET_SOCK` | 0 | socket fd |
//! | `NBD_SET_BLKSIZE` | 1 | logical block size |
//! | `NBD_DO_IT` | 3 | none; blocks until disconnect |
//! | `NBD_CLEAR_SOCK` | 4 | none |
//! | `NBD_SET_SIZE_BLOCKS` | 7 | size in blocks |
//! | `NBD_DISCONNECT` | 8 | none |
//! | `NBD_SET_TIMEOUT` | 9 | seconds |
//! | `NBD_SET_FLAGS` | 10 | transmission flags |
//!
//! [`KernelNbdDevice`] owns one attachment: a thread blocked in
//! `NBD_DO_IT`, the device and socket descriptors. Dropping it disconnects
//! (`NBD_DISCONNECT`, join, `NBD_CLEAR_SOCK`), so no attachment outlives
//! its owner.
//!
//! # Limitations
//!
//! Needs the `nbd` module, `/dev/nbd*` nodes and `CAP_SYS_ADMIN`
//! ([`KernelNbd::available`] says which is missing). Uses the ioctl
//! interface, not netlink, so devices are never created, only reused.
//! The kernel's block size must be a power of two from 512 to 4096 and
//! divide the export size.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::ioctl::ioctl_num_type;

use crate::handshake::client::ExportInfo;

const NBD_SET_SOCK: ioctl_num_type = nix::request_code_none!(0xab, 0);
const NBD_SET_BLKSIZE: ioctl_num_type = nix::request_code_none!(0xab, 1);
const NBD_DO_IT: ioctl_num_type = nix::request_code_none!(0xab, 3);
const NBD_CLEAR_SOCK: ioctl_num_type = nix::request_code_none!(0xab, 4);
const NBD_SET_SIZE_BLOCKS: ioctl_num_type = nix::request_code_none!(0xab, 7);
const NBD_DISCONNECT: ioctl_num_type = nix::request_code_none!(0xab, 8);
const NBD_SET_TIMEOUT: ioctl_num_type = nix::request_code_none!(0xab, 9);
const NBD_SET_FLAGS: ioctl_num_type = nix::request_code_none!(0xab, 10);

/// Why attaching or detaching failed.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The kernel NBD client cannot be used here.
    #[error("kernel NBD is unavailable: {0}")]
    Unavailable(String),
    /// Every `/dev/nbdN` is in use.
    #[error("no free NBD device: all {tried} /dev/nbd* devices are in use")]
    NoFreeDevice { tried: usize },
    /// The block size the kernel would use is not allowed.
    #[error("kernel block size {block} must be a power of two from 512 to 4096")]
    BadBlockSize { block: u32 },
    /// The export size is not a whole number of kernel blocks.
    #[error("export size {size} is not a multiple of the kernel block size {block}; the tail would be unreachable")]
    SizeNotAligned { size: u64, block: u32 },
    /// Opening the device failed.
    #[error("opening {device}: {source}")]
    Open {
        device: PathBuf,
        #[source]
        source: io::Error,
    },
    /// An ioctl failed.
    #[error("{op} on {device}: {source}")]
    Ioctl {
        op: &'static str,
        device: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The socket could not be made blocking.
    #[error("preparing the socket: {0}")]
    Socket(#[source] io::Error),
    /// The `NBD_DO_IT` thread could not start.
    #[error("starting the NBD_DO_IT thread: {0}")]
    Thread(#[source] io::Error),
    /// The device did not come up.
    #[error("{device} was not ready after {waited:?}: {why}")]
    NotReady {
        device: PathBuf,
        waited: Duration,
        why: String,
    },
}

/// How to attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachOptions {
    /// Kernel block size; default: the export's minimum block size, at least 512.
    pub block_size: Option<u32>,
    /// `NBD_SET_TIMEOUT`: how long the kernel waits for a reply before
    /// failing the request; `None` keeps the kernel's default.
    pub request_timeout: Option<Duration>,
    /// How long to wait for the device to show its size and pid in sysfs.
    pub ready_timeout: Duration,
}

impl Default for AttachOptions {
    fn default() -> Self {
        Self {
            block_size: None,
            request_timeout: None,
            ready_timeout: Duration::from_secs(5),
        }
    }
}

/// Entry points of the kernel NBD client.
#[derive(Debug, Clone, Copy)]
pub struct KernelNbd;

impl KernelNbd {
    /// `Ok` when the kernel NBD client can be used here; otherwise the
    /// reason (module not loaded, no device nodes, no permission).
    pub fn available() -> Result<(), String> {
        available_in(Path::new("/sys"), Path::new("/dev"))
    }

    /// Attaches `socket`, which finished the handshake for `info`, to the
    /// first free `/dev/nbdN`, starts the kernel's transmission phase and
    /// waits until the device reports its size.
    ///
    /// The socket is switched to blocking mode: the kernel drives it now.
    pub fn attach(
        socket: impl Into<OwnedFd>,
        info: &ExportInfo,
        options: &AttachOptions,
    ) -> Result<KernelNbdDevice, KernelError> {
        Self::available().map_err(KernelError::Unavailable)?;
        attach_in(
            Path::new("/sys"),
            Path::new("/dev"),
            socket.into(),
            info,
            options,
        )
    }
}

/// NBD device indices in `dev` (`/dev/nbd0` ...), ascending.
fn device_indices(dev: &Path) -> Vec<u32> {
    let mut out: Vec<u32> = std::fs::read_dir(dev)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let rest = name.to_str()?.strip_prefix("nbd")?;
            // `nbd0p1` and the like are partitions, not devices.
            rest.parse().ok()
        })
        .collect();
    out.sort_unstable();
    out
}

fn available_in(sys: &Path, dev: &Path) -> Result<(), String> {
    if !sys.join("module/nbd").exists() && !sys.join("block/nbd0").exists() {
        return Err(format!(
            "the nbd kernel module is not loaded ({} is absent; `modprobe nbd` loads it)",
            sys.join("module/nbd").display()
        ));
    }
    let indices = device_indices(dev);
    let Some(first) = indices.first() else {
        return Err(format!("no {}/nbd* device nodes", dev.display()));
    };
    let node = dev.join(format!("nbd{first}"));
    let mode = nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::W_OK;
    if let Err(e) = nix::unistd::access(&node, mode) {
        return Err(format!(
            "cannot open {} for reading and writing ({e}); attaching needs root (CAP_SYS_ADMIN)",
            node.display()
        ));
    }
    Ok(())
}

/// Devices with a node and no running client (no `pid` file in sysfs).
fn free_devices(sys: &Path, dev: &Path) -> Vec<u32> {
    device_indices(dev)
        .into_iter()
        .filter(|i| {
            let block = sys.join(format!("block/nbd{i}"));
            block.exists() && !block.join("pid").exists()
        })
        .collect()
}

/// The kernel block size for `info`.
fn kernel_block_size(info: &ExportInfo, options: &AttachOptions) -> Result<u32, KernelError> {
    let block = options
        .block_size
        .unwrap_or_else(|| info.minimum_block().max(512));
    if !block.is_power_of_two() || !(512..=4096).contains(&block) {
        return Err(KernelError::BadBlockSize { block });
    }
    if !info.size.is_multiple_of(u64::from(block)) {
        return Err(KernelError::SizeNotAligned {
            size: info.size,
            block,
        });
    }
    Ok(block)
}

/// One `ioctl` on an NBD device with an integer argument.
fn nbd_ioctl(
    device: &OwnedFd,
    op: &'static str,
    request: ioctl_num_type,
    arg: libc::c_ulong,
    path: &Path,
) -> Result<(), KernelError> {
    // SAFETY: every NBD ioctl takes its argument by value (an integer, or
    // nothing), so no pointer is passed and the kernel writes no user
    // memory; `device` is an open descriptor we own for the call's length.
    let rc = unsafe { libc::ioctl(device.as_raw_fd(), request, arg) };
    if rc < 0 {
        return Err(KernelError::Ioctl {
            op,
            device: path.to_owned(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn set_blocking(socket: &OwnedFd) -> Result<(), KernelError> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let fd = socket.as_raw_fd();
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(|e| KernelError::Socket(e.into()))?;
    let flags = OFlag::from_bits_retain(flags) & !OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(|e| KernelError::Socket(e.into()))?;
    Ok(())
}

fn attach_in(
    sys: &Path,
    dev: &Path,
    socket: OwnedFd,
    info: &ExportInfo,
    options: &AttachOptions,
) -> Result<KernelNbdDevice, KernelError> {
    let block = kernel_block_size(info, options)?;
    set_blocking(&socket)?;
    let candidates = free_devices(sys, dev);
    for index in &candidates {
        let path = dev.join(format!("nbd{index}"));
        let device = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|source| KernelError::Open {
                device: path.clone(),
                source,
            })?;
        let device = OwnedFd::from(device);
        // Claim the device first: the kernel refuses a second owner with
        // EBUSY, which settles a race with another process that also saw it
        // free.
        match nbd_ioctl(
            &device,
            "NBD_SET_SOCK",
            NBD_SET_SOCK,
            socket.as_raw_fd() as libc::c_ulong,
            &path,
        ) {
            Ok(()) => {}
            Err(KernelError::Ioctl { source, .. })
                if source.raw_os_error() == Some(libc::EBUSY) =>
            {
                continue
            }
            Err(e) => return Err(e),
        }
        let configured = configure(&device, &path, info, block, options);
        if let Err(e) = configured {
            let _ = nbd_ioctl(&device, "NBD_CLEAR_SOCK", NBD_CLEAR_SOCK, 0, &path);
            return Err(e);
        }
        let device = Arc::new(device);
        let do_it = spawn_do_it(device.clone(), *index).inspect_err(|_| {
            let _ = nbd_ioctl(&device, "NBD_CLEAR_SOCK", NBD_CLEAR_SOCK, 0, &path);
        })?;
        let mut attached = KernelNbdDevice {
            index: *index,
            path,
            sys_block: sys.join(format!("block/nbd{index}")),
            size: info.size,
            device,
            socket: Some(socket),
            do_it: Some(do_it),
        };
        // On failure, dropping `attached` disconnects what was set up.
        attached.wait_ready(options.ready_timeout)?;
        return Ok(attached);
    }
    Err(KernelError::NoFreeDevice {
        tried: candidates.len(),
    })
}

fn configure(
    device: &OwnedFd,
    path: &Path,
    info: &ExportInfo,
    block: u32,
    options: &AttachOptions,
) -> Result<(), KernelError> {
    nbd_ioctl(
        device,
        "NBD_SET_BLKSIZE",
        NBD_SET_BLKSIZE,
        block.into(),
        path,
    )?;
    let blocks = info.size / u64::from(block);
    nbd_ioctl(
        device,
        "NBD_SET_SIZE_BLOCKS",
        NBD_SET_SIZE_BLOCKS,
        blocks as libc::c_ulong,
        path,
    )?;
    nbd_ioctl(
        device,
        "NBD_SET_FLAGS",
        NBD_SET_FLAGS,
        info.transmission_flags.bits().into(),
        path,
    )?;
    if let Some(t) = options.request_timeout {
        let secs = t.as_secs().max(1);
        nbd_ioctl(
            device,
            "NBD_SET_TIMEOUT",
            NBD_SET_TIMEOUT,
            secs as libc::c_ulong,
            path,
        )?;
    }
    Ok(())
}

fn spawn_do_it(
    device: Arc<OwnedFd>,
    index: u32,
) -> Result<JoinHandle<io::Result<()>>, KernelError> {
    std::thread::Builder::new()
        .name(format!("nbd{index}-do-it"))
        .spawn(move || {
            // SAFETY: NBD_DO_IT takes no argument; `device` stays open for
            // the whole call because this thread holds an `Arc` to it.
            let rc = unsafe { libc::ioctl(device.as_raw_fd(), NBD_DO_IT, 0 as libc::c_ulong) };
            if rc < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        })
        .map_err(KernelError::Thread)
}

/// One export attached to `/dev/nbdN`; disconnects on drop.
#[derive(Debug)]
pub struct KernelNbdDevice {
    index: u32,
    path: PathBuf,
    sys_block: PathBuf,
    size: u64,
    device: Arc<OwnedFd>,
    /// Kept open until the kernel lets go of it.
    socket: Option<OwnedFd>,
    do_it: Option<JoinHandle<io::Result<()>>>,
}

impl KernelNbdDevice {
    /// `/dev/nbdN`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `N`.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The device size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Disconnects and reports what went wrong, where drop can only log.
    pub fn detach(mut self) -> Result<(), KernelError> {
        self.disconnect()
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), KernelError> {
        let start = Instant::now();
        loop {
            let size_sectors = std::fs::read_to_string(self.sys_block.join("size"))
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(0);
            let has_pid = self.sys_block.join("pid").exists();
            if size_sectors > 0 && has_pid {
                return Ok(());
            }
            if self.do_it.as_ref().is_some_and(JoinHandle::is_finished) {
                let why = match self.do_it.take().map(JoinHandle::join) {
                    Some(Ok(Err(e))) => format!("NBD_DO_IT failed: {e}"),
                    Some(Ok(Ok(()))) => "NBD_DO_IT returned at once".into(),
                    Some(Err(_)) | None => "the NBD_DO_IT thread panicked".into(),
                };
                return Err(self.not_ready(start, why));
            }
            if start.elapsed() >= timeout {
                let why = format!("size is {size_sectors} sectors, pid file present: {has_pid}");
                return Err(self.not_ready(start, why));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn not_ready(&self, start: Instant, why: String) -> KernelError {
        KernelError::NotReady {
            device: self.path.clone(),
            waited: start.elapsed(),
            why,
        }
    }

    fn disconnect(&mut self) -> Result<(), KernelError> {
        let Some(do_it) = self.do_it.take() else {
            return Ok(());
        };
        let sent = nbd_ioctl(
            &self.device,
            "NBD_DISCONNECT",
            NBD_DISCONNECT,
            0,
            &self.path,
        );
        // NBD_DO_IT returns once the kernel has let go of the socket; if
        // the disconnect ioctl failed, clearing the socket ends it instead.
        if sent.is_err() {
            let _ = nbd_ioctl(
                &self.device,
                "NBD_CLEAR_SOCK",
                NBD_CLEAR_SOCK,
                0,
                &self.path,
            );
        }
        let _ = do_it.join();
        let cleared = nbd_ioctl(
            &self.device,
            "NBD_CLEAR_SOCK",
            NBD_CLEAR_SOCK,
            0,
            &self.path,
        );
        self.socket = None;
        sent.and(cleared)
    }
}

impl Drop for KernelNbdDevice {
    fn drop(&mut self) {
        if let Err(e) = self.disconnect() {
            // A device left attached keeps the export mounted on the
            // kernel side; say so loudly, there is no caller to tell.
            tracing::error!(device = %self.path.display(), error = %e, "detaching NBD device failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::TransmissionFlags;

    fn info(size: u64, min: Option<u32>) -> ExportInfo {
        ExportInfo {
            name: "x".into(),
            size,
            transmission_flags: TransmissionFlags::HAS_FLAGS,
            block_size: min.map(|m| crate::BlockSizes {
                minimum: m,
                preferred: 4096,
                maximum: 1 << 20,
            }),
            description: None,
        }
    }

    #[test]
    fn ioctl_numbers_match_the_kernel_header() {
        // _IO(0xab, n) is (0xab << 8) | n: no direction, no size.
        assert_eq!(NBD_SET_SOCK, 0xab00);
        assert_eq!(NBD_SET_BLKSIZE, 0xab01);
        assert_eq!(NBD_DO_IT, 0xab03);
        assert_eq!(NBD_CLEAR_SOCK, 0xab04);
        assert_eq!(NBD_SET_SIZE_BLOCKS, 0xab07);
        assert_eq!(NBD_DISCONNECT, 0xab08);
        assert_eq!(NBD_SET_TIMEOUT, 0xab09);
        assert_eq!(NBD_SET_FLAGS, 0xab0a);
    }

    #[test]
    fn available_names_what_is_missing() {
        let sys = tempfile::tempdir().unwrap();
        let dev = tempfile::tempdir().unwrap();
        let reason = available_in(sys.path(), dev.path()).unwrap_err();
        assert!(reason.contains("module is not loaded"), "{reason}");

        std::fs::create_dir_all(sys.path().join("module/nbd")).unwrap();
        let reason = available_in(sys.path(), dev.path()).unwrap_err();
        assert!(
            reason.contains("no ") && reason.contains("nbd* device nodes"),
            "{reason}"
        );

        std::fs::write(dev.path().join("nbd0"), b"").unwrap();
        std::fs::write(dev.path().join("nbd0p1"), b"").unwrap();
        // A plain file we can open stands in for a device node we may open.
        assert_eq!(available_in(sys.path(), dev.path()), Ok(()));
    }

    #[test]
    fn free_devices_skip_the_ones_with_a_client() {
        let sys = tempfile::tempdir().unwrap();
        let dev = tempfile::tempdir().unwrap();
        for i in [0, 1, 2, 10] {
            std::fs::write(dev.path().join(format!("nbd{i}")), b"").unwrap();
            std::fs::create_dir_all(sys.path().join(format!("block/nbd{i}"))).unwrap();
        }
        std::fs::write(sys.path().join("block/nbd0/pid"), b"123\n").unwrap();
        std::fs::write(sys.path().join("block/nbd2/pid"), b"456\n").unwrap();
        assert_eq!(free_devices(sys.path(), dev.path()), vec![1, 10]);
    }

    #[test]
    fn block_size_must_divide_the_export() {
        let o = AttachOptions::default();
        assert_eq!(kernel_block_size(&info(1 << 20, None), &o).unwrap(), 512);
        assert_eq!(
            kernel_block_size(&info(1 << 20, Some(4096)), &o).unwrap(),
            4096
        );
        assert!(matches!(
            kernel_block_size(&info((1 << 20) + 1234, None), &o),
            Err(KernelError::SizeNotAligned { .. })
        ));
        assert!(matches!(
            kernel_block_size(&info(1 << 20, Some(1 << 16)), &o),
            Err(KernelError::BadBlockSize { block: 65536 })
        ));
        let custom = AttachOptions {
            block_size: Some(1000),
            ..AttachOptions::default()
        };
        assert!(matches!(
            kernel_block_size(&info(1 << 20, None), &custom),
            Err(KernelError::BadBlockSize { block: 1000 })
        ));
    }

    #[test]
    fn this_host_reports_why_kernel_nbd_is_unavailable() {
        // Where the kernel client exists the integration test attaches
        // for real; here, the answer must be a reason naming what is missing.
        let has_nodes = !device_indices(Path::new("/dev")).is_empty();
        let loaded = Path::new("/sys/module/nbd").exists();
        match KernelNbd::available() {
            Ok(()) => assert!(has_nodes && loaded),
            Err(reason) => {
                assert!(!reason.is_empty());
                if !loaded && !Path::new("/sys/block/nbd0").exists() {
                    assert!(reason.contains("module is not loaded"), "{reason}");
                } else if !has_nodes {
                    assert!(reason.contains("device nodes"), "{reason}");
                }
            }
        }
    }
}
