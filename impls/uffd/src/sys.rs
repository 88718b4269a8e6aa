//! The kernel ABI this crate speaks: `userfaultfd` and `PAGEMAP_SCAN`.
//!
//! Values and layouts mirror `include/uapi/linux/userfaultfd.h` and
//! `include/uapi/linux/fs.h` of Linux 6.x. They are written out here rather
//! than generated because the `userfaultfd-sys` crate runs bindgen at build
//! time (needs libclang) against the build host's headers, which are often
//! older than the kernel the harness runs on: the headers on this project's
//! machines stop at `WP_HUGETLBFS_SHMEM` (5.19) while the kernel has
//! `WP_ASYNC` and `PAGEMAP_SCAN` (6.7). The kernel decides at run time what it
//! supports, so knowing the newest constants costs nothing on older kernels.
//!
//! Every wrapper here is a thin, typed shell over one syscall or ioctl; the
//! policy (what to retry, what to give up on) lives in the callers.

use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::ioctl::ioctl_num_type;

/// `UFFD_API`: the only API version the kernel has ever defined.
pub(crate) const UFFD_API: u64 = 0xAA;

/// `UFFD_USER_MODE_ONLY` (Linux 5.11): only faults taken in user mode are
/// reported; kernel-mode accesses to missing pages fail with `EFAULT`.
pub(crate) const UFFD_USER_MODE_ONLY: libc::c_int = 1;

/// The ioctl type byte of every `UFFDIO_*` request and of `/dev/userfaultfd`.
const UFFDIO: u8 = 0xAA;

const NR_UFFDIO_REGISTER: u8 = 0x00;
const NR_UFFDIO_WAKE: u8 = 0x02;
const NR_UFFDIO_COPY: u8 = 0x03;
const NR_UFFDIO_WRITEPROTECT: u8 = 0x06;
const NR_UFFDIO_API: u8 = 0x3F;

/// `USERFAULTFD_IOC_NEW` on `/dev/userfaultfd` (Linux 6.1): `_IO(0xAA, 0)`,
/// taking the same flags as the `userfaultfd(2)` syscall as its argument.
pub(crate) const USERFAULTFD_IOC_NEW: ioctl_num_type = nix::request_code_none!(UFFDIO, 0x00);
pub(crate) const UFFDIO_API: ioctl_num_type =
    nix::request_code_readwrite!(UFFDIO, NR_UFFDIO_API, size_of::<UffdioApi>());
pub(crate) const UFFDIO_REGISTER: ioctl_num_type =
    nix::request_code_readwrite!(UFFDIO, NR_UFFDIO_REGISTER, size_of::<UffdioRegister>());
// The header declares WAKE as _IOR although userspace passes the range in;
// the direction bits are part of the request number, so keep them.
pub(crate) const UFFDIO_WAKE: ioctl_num_type =
    nix::request_code_read!(UFFDIO, NR_UFFDIO_WAKE, size_of::<UffdioRange>());
pub(crate) const UFFDIO_COPY: ioctl_num_type =
    nix::request_code_readwrite!(UFFDIO, NR_UFFDIO_COPY, size_of::<UffdioCopy>());

pub(crate) const UFFDIO_WRITEPROTECT: ioctl_num_type = nix::request_code_readwrite!(
    UFFDIO,
    NR_UFFDIO_WRITEPROTECT,
    size_of::<UffdioWriteprotect>()
);

/// `PAGEMAP_SCAN` on `/proc/<pid>/pagemap` (Linux 6.7): `_IOWR('f', 16, struct pm_scan_arg)`.
pub(crate) const PAGEMAP_SCAN: ioctl_num_type =
    nix::request_code_readwrite!(b'f', 16, size_of::<PmScanArg>());

/// `UFFDIO_REGISTER_MODE_MISSING`: report faults on pages with no PTE.
pub(crate) const UFFDIO_REGISTER_MODE_MISSING: u64 = 1 << 0;
/// `UFFDIO_REGISTER_MODE_WP`: report writes to write-protected pages.
pub(crate) const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
/// `UFFDIO_WRITEPROTECT_MODE_WP`: protect (without it: unprotect).
pub(crate) const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
/// `UFFDIO_COPY_MODE_DONTWAKE`: leave the faulting threads asleep.
pub(crate) const UFFDIO_COPY_MODE_DONTWAKE: u64 = 1 << 0;

/// Bit of `uffdio_register.ioctls` saying `UFFDIO_COPY` works on the range.
pub(crate) const IOCTL_COPY_BIT: u64 = 1 << NR_UFFDIO_COPY;

/// `UFFD_EVENT_*` codes of `uffd_msg.event`.
pub(crate) const UFFD_EVENT_PAGEFAULT: u8 = 0x12;

/// `UFFD_PAGEFAULT_FLAG_*` bits of `uffd_msg.arg.pagefault.flags`.
pub(crate) const UFFD_PAGEFAULT_FLAG_WRITE: u64 = 1 << 0;
pub(crate) const UFFD_PAGEFAULT_FLAG_WP: u64 = 1 << 1;

/// `PAGE_IS_WRITTEN`: a `PAGEMAP_SCAN` category, the page's uffd-wp bit
/// is clear (written since it was last protected).
pub(crate) const PAGE_IS_WRITTEN: u64 = 1 << 1;
/// `PM_SCAN_WP_MATCHING`: write-protect the matching pages as they are
/// reported.
pub(crate) const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
/// `PM_SCAN_CHECK_WPASYNC`: fail unless the range has async write-protect.
pub(crate) const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

/// `PAGE_IS_PRESENT`: a `PAGEMAP_SCAN` category.
pub(crate) const PAGE_IS_PRESENT: u64 = 1 << 3;

/// `struct uffdio_api`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct UffdioApi {
    pub api: u64,
    pub features: u64,
    pub ioctls: u64,
}

/// `struct uffdio_range`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct UffdioRange {
    pub start: u64,
    pub len: u64,
}

/// `struct uffdio_register`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct UffdioRegister {
    pub range: UffdioRange,
    pub mode: u64,
    pub ioctls: u64,
}

/// `struct uffdio_copy`. `copy` is written by the kernel: bytes copied, or a
/// negative errno when nothing was.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct UffdioCopy {
    pub dst: u64,
    pub src: u64,
    pub len: u64,
    pub mode: u64,
    pub copy: i64,
}

/// `struct uffdio_writeprotect`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct UffdioWriteprotect {
    pub range: UffdioRange,
    pub mode: u64,
}

/// `struct page_region`: one run of pages sharing the reported categories.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PageRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

/// `struct pm_scan_arg`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PmScanArg {
    pub size: u64,
    pub flags: u64,
    pub start: u64,
    pub end: u64,
    pub walk_end: u64,
    pub vec: u64,
    pub vec_len: u64,
    pub max_pages: u64,
    pub category_inverted: u64,
    pub category_mask: u64,
    pub category_anyof_mask: u64,
    pub return_mask: u64,
}

/// Size of `struct uffd_msg` (packed in the header; 32 bytes on every arch).
pub(crate) const UFFD_MSG_SIZE: usize = 32;

/// A `uffd_msg` as this crate uses it, decoded from its bytes.
///
/// Decoding from bytes (rather than transmuting into a `repr(C)` union)
/// keeps event parsing free of `unsafe`; only the fields read here matter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UffdMsg {
    /// `UFFD_EVENT_PAGEFAULT`: `address` is page aligned unless
    /// `UFFD_FEATURE_EXACT_ADDRESS` was requested (it is not).
    Pagefault { flags: u64, address: u64 },
    /// Any event this crate never asks for; carried only to be logged.
    Other { event: u8 },
}

impl UffdMsg {
    /// Decodes one message.
    pub(crate) fn parse(bytes: &[u8; UFFD_MSG_SIZE]) -> Self {
        // Layout: u8 event, u8 + u16 + u32 reserved, then the union at 8.
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[at..at + 8]);
            u64::from_ne_bytes(w)
        };
        match bytes[0] {
            UFFD_EVENT_PAGEFAULT => UffdMsg::Pagefault {
                flags: word(8),
                address: word(16),
            },
            event => UffdMsg::Other { event },
        }
    }
}

/// Converts a raw fd the kernel just handed out into an owned one.
///
/// # Safety
///
/// `fd` must be a freshly created descriptor that nothing else owns.
unsafe fn own(fd: libc::c_long) -> Result<OwnedFd, Errno> {
    let fd = libc::c_int::try_from(fd).map_err(|_| Errno::EBADF)?;
    // SAFETY: the caller guarantees `fd` is new and unowned, so this is the
    // only owner and it will be closed exactly once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `userfaultfd(2)` with `flags` (`O_CLOEXEC`, `O_NONBLOCK`, `UFFD_USER_MODE_ONLY`).
pub(crate) fn userfaultfd_syscall(flags: libc::c_int) -> Result<OwnedFd, Errno> {
    // SAFETY: the syscall takes one integer argument and touches no memory
    // of ours.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::c_long::from(flags)) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: on success the syscall returns a new descriptor no one owns.
    unsafe { own(fd) }
}

/// `USERFAULTFD_IOC_NEW` on an open `/dev/userfaultfd`.
pub(crate) fn userfaultfd_from_device(
    device: BorrowedFd<'_>,
    flags: libc::c_int,
) -> Result<OwnedFd, Errno> {
    // SAFETY: this "bad" ioctl takes its argument by value (an int), so no
    // memory of ours is read or written; `device` is open for its lifetime.
    let fd = unsafe { libc::ioctl(device.as_raw_fd(), USERFAULTFD_IOC_NEW, flags) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: on success the ioctl returns a new descriptor no one owns.
    unsafe { own(libc::c_long::from(fd)) }
}

/// `UFFDIO_API`: the handshake every new userfaultfd needs before use.
/// Returns what the kernel reports (all supported features and ioctls).
pub(crate) fn api(uffd: BorrowedFd<'_>, features: u64) -> Result<UffdioApi, Errno> {
    let mut arg = UffdioApi {
        api: UFFD_API,
        features,
        ioctls: 0,
    };
    // SAFETY: `arg` is a live, correctly laid out `uffdio_api` that the
    // kernel reads and writes only for the duration of the call.
    let rc = unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_API, &mut arg as *mut UffdioApi) };
    Errno::result(rc).map(|_| arg)
}

/// `UFFDIO_REGISTER`: returns the ioctls usable on the range.
pub(crate) fn register(
    uffd: BorrowedFd<'_>,
    start: u64,
    len: u64,
    mode: u64,
) -> Result<u64, Errno> {
    let mut arg = UffdioRegister {
        range: UffdioRange { start, len },
        mode,
        ioctls: 0,
    };
    // SAFETY: `arg` is a live `uffdio_register` used only during the call;
    // the kernel validates the range itself (it must be mapped and
    // registrable) and never dereferences it on our behalf here.
    let rc = unsafe {
        libc::ioctl(
            uffd.as_raw_fd(),
            UFFDIO_REGISTER,
            &mut arg as *mut UffdioRegister,
        )
    };
    Errno::result(rc).map(|_| arg.ioctls)
}

/// `UFFDIO_WAKE`: wakes threads waiting on faults in the range.
pub(crate) fn wake(uffd: BorrowedFd<'_>, start: u64, len: u64) -> Result<(), Errno> {
    let mut arg = UffdioRange { start, len };
    // SAFETY: `arg` is a live `uffdio_range` used only during the call.
    let rc = unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_WAKE, &mut arg as *mut UffdioRange) };
    Errno::result(rc).map(drop)
}

/// What one `UFFDIO_COPY` call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CopyOutcome {
    /// All `len` bytes are installed.
    Done,
    /// `EAGAIN` with some progress: the first `copied` bytes are installed.
    Partial { copied: u64 },
    /// The call failed with nothing installed.
    Failed(Errno),
}

/// `UFFDIO_COPY`: atomically installs `len` bytes from `src` at `dst`.
///
/// # Safety
///
/// - `src..src + len` must be readable memory of this process for the
///   duration of the call.
/// - `dst..dst + len` must lie inside a range registered with `uffd` that the
///   caller owns: the kernel fills only pages that are still missing there,
///   but the caller must be prepared for that memory to change under it.
pub(crate) unsafe fn copy(
    uffd: BorrowedFd<'_>,
    dst: u64,
    src: *const u8,
    len: u64,
    wake: bool,
) -> CopyOutcome {
    let mut arg = UffdioCopy {
        dst,
        src: src as u64,
        len,
        mode: if wake { 0 } else { UFFDIO_COPY_MODE_DONTWAKE },
        copy: 0,
    };
    // SAFETY: `arg` is a live `uffdio_copy`; the caller guarantees the source
    // is readable and the destination is theirs to fill.
    let rc = unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_COPY, &mut arg as *mut UffdioCopy) };
    if rc >= 0 {
        return CopyOutcome::Done;
    }
    let errno = Errno::last();
    // The kernel reports partial progress as EAGAIN with `copy` > 0; with no
    // progress `copy` holds the negative errno instead.
    match (errno, u64::try_from(arg.copy)) {
        (Errno::EAGAIN, Ok(copied)) if copied > 0 => CopyOutcome::Partial { copied },
        _ => CopyOutcome::Failed(errno),
    }
}

/// `PAGEMAP_SCAN` over `start..end` of this process, reporting runs of
/// pages in any of `anyof` into `out`. Returns how many entries were filled.
pub(crate) fn pagemap_scan(
    pagemap: BorrowedFd<'_>,
    start: u64,
    end: u64,
    anyof: u64,
    out: &mut [PageRegion],
) -> Result<usize, Errno> {
    let mut arg = PmScanArg {
        size: size_of::<PmScanArg>() as u64,
        start,
        end,
        vec: out.as_mut_ptr() as u64,
        vec_len: out.len() as u64,
        category_anyof_mask: anyof,
        return_mask: anyof,
        ..PmScanArg::default()
    };
    // SAFETY: `arg` is a live `pm_scan_arg`; `vec`/`vec_len` describe `out`,
    // which is exclusively borrowed for the call, so the kernel writes at
    // most `out.len()` `page_region`s into memory we own. The scanned range
    // is only read (no PM_SCAN_WP_MATCHING flag).
    let rc = unsafe {
        libc::ioctl(
            pagemap.as_raw_fd(),
            PAGEMAP_SCAN,
            &mut arg as *mut PmScanArg,
        )
    };
    let n = Errno::result(rc)?;
    usize::try_from(n).map_err(|_| Errno::EINVAL)
}

/// `UFFDIO_WRITEPROTECT`: protects (`protect`) or unprotects a range; an
/// unprotect wakes the threads waiting on it.
pub(crate) fn writeprotect(
    uffd: BorrowedFd<'_>,
    start: u64,
    len: u64,
    protect: bool,
) -> Result<(), Errno> {
    let mut arg = UffdioWriteprotect {
        range: UffdioRange { start, len },
        mode: if protect {
            UFFDIO_WRITEPROTECT_MODE_WP
        } else {
            0
        },
    };
    // SAFETY: `arg` is a live `uffdio_writeprotect` used only during the
    // call; the kernel checks that the range is registered with `uffd` and
    // changes only page protection there, never memory contents.
    let rc = unsafe {
        libc::ioctl(
            uffd.as_raw_fd(),
            UFFDIO_WRITEPROTECT,
            &mut arg as *mut UffdioWriteprotect,
        )
    };
    Errno::result(rc).map(drop)
}

/// `PAGEMAP_SCAN` with `PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC` over
/// `start..end`: reports runs of written pages into `out` and
/// write-protects them again in the same walk. Returns the entries filled
/// and where the walk stopped (`end` unless `out` filled up first).
pub(crate) fn pagemap_scan_written(
    pagemap: BorrowedFd<'_>,
    start: u64,
    end: u64,
    out: &mut [PageRegion],
) -> Result<(usize, u64), Errno> {
    let mut arg = PmScanArg {
        size: size_of::<PmScanArg>() as u64,
        flags: PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
        start,
        end,
        vec: out.as_mut_ptr() as u64,
        vec_len: out.len() as u64,
        category_mask: PAGE_IS_WRITTEN,
        return_mask: PAGE_IS_WRITTEN,
        ..PmScanArg::default()
    };
    // SAFETY: `arg` is a live `pm_scan_arg`; `vec`/`vec_len` describe `out`,
    // exclusively borrowed for the call, so the kernel writes at most
    // `out.len()` entries into memory we own. WP_MATCHING changes only the
    // uffd-wp bit of pages in `start..end`, a range the caller registered
    // for async write-protect; contents are untouched.
    let rc = unsafe {
        libc::ioctl(
            pagemap.as_raw_fd(),
            PAGEMAP_SCAN,
            &mut arg as *mut PmScanArg,
        )
    };
    let n = Errno::result(rc)?;
    Ok((usize::try_from(n).map_err(|_| Errno::EINVAL)?, arg.walk_end))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reference values printed by a C program including the kernel headers
    // (`PAGEMAP_SCAN` computed from its `_IOWR` definition).
    #[test]
    fn request_codes_match_the_kernel_headers() {
        assert_eq!(UFFDIO_API, 0xc018_aa3f as ioctl_num_type);
        assert_eq!(UFFDIO_REGISTER, 0xc020_aa00 as ioctl_num_type);
        assert_eq!(UFFDIO_WAKE, 0x8010_aa02 as ioctl_num_type);
        assert_eq!(UFFDIO_COPY, 0xc028_aa03 as ioctl_num_type);
        assert_eq!(USERFAULTFD_IOC_NEW, 0xaa00 as ioctl_num_type);
        assert_eq!(PAGEMAP_SCAN, 0xc060_6610 as ioctl_num_type);
        assert_eq!(UFFDIO_WRITEPROTECT, 0xc018_aa06 as ioctl_num_type);
    }

    #[test]
    fn struct_sizes_match_the_kernel_headers() {
        assert_eq!(size_of::<UffdioApi>(), 24);
        assert_eq!(size_of::<UffdioRange>(), 16);
        assert_eq!(size_of::<UffdioRegister>(), 32);
        assert_eq!(size_of::<UffdioCopy>(), 40);
        assert_eq!(size_of::<PageRegion>(), 24);
        assert_eq!(size_of::<UffdioWriteprotect>(), 24);
        assert_eq!(size_of::<PmScanArg>(), 96);
    }

    #[test]
    fn parses_a_pagefault_message() {
        let mut raw = [0u8; UFFD_MSG_SIZE];
        raw[0] = UFFD_EVENT_PAGEFAULT;
        raw[8..16].copy_from_slice(&UFFD_PAGEFAULT_FLAG_WRITE.to_ne_bytes());
        raw[16..24].copy_from_slice(&0x7f00_dead_b000u64.to_ne_bytes());
        assert_eq!(
            UffdMsg::parse(&raw),
            UffdMsg::Pagefault {
                flags: UFFD_PAGEFAULT_FLAG_WRITE,
                address: 0x7f00_dead_b000
            }
        );
        raw[0] = 0x15;
        assert_eq!(UffdMsg::parse(&raw), UffdMsg::Other { event: 0x15 });
    }
}
