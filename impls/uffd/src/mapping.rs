//! An owned anonymous private mapping, unmapped on drop.

use std::num::NonZeroUsize;
use std::ptr::NonNull;

use nix::errno::Errno;
use nix::sys::mman::{mmap_anonymous, munmap, MapFlags, ProtFlags};

/// `len` bytes of anonymous, private, read-write memory at a kernel-chosen,
/// page-aligned address.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a `Mapping` is plain process memory owned by this value alone; no
// thread owns it more than another. Shared references only hand out `&[u8]`
// (see `UffdRegion::as_slice`) and mutation needs `&mut`, so the usual
// borrow rules keep access race-free across threads.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` exposes no interior mutability.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes; `len` must be a positive multiple of `page_size`.
    pub(crate) fn anonymous(len: usize, page_size: usize) -> Result<Self, Errno> {
        assert!(
            len > 0 && len.is_multiple_of(page_size),
            "mapping length {len} must be a positive multiple of the {page_size}-byte page"
        );
        let length = NonZeroUsize::new(len).ok_or(Errno::EINVAL)?;
        // MAP_NORESERVE: the region is filled lazily, page by page, so
        // reserving swap for all of it up front would only make large
        // regions fail under strict overcommit for no benefit.
        // SAFETY: a new anonymous mapping at an address the kernel picks
        // overlaps nothing this process uses, so creating it cannot
        // invalidate any existing reference.
        let ptr = unsafe {
            mmap_anonymous(
                None,
                length,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE,
            )?
        };
        let addr = ptr.as_ptr() as usize;
        assert_eq!(
            addr % page_size,
            0,
            "mmap returned {addr:#x}, which is not aligned to the {page_size}-byte page"
        );
        assert!(
            addr.checked_add(len).is_some(),
            "mapping of {len} bytes at {addr:#x} wraps around the address space"
        );
        Ok(Self {
            ptr: ptr.cast(),
            len,
        })
    }

    /// The first byte.
    pub(crate) fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    /// The start address, as the kernel ABI wants it.
    pub(crate) fn addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// The length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe exactly the mapping created in
        // `anonymous`, unmapped only here; every borrow of it is tied to
        // `&self`, so none outlives this call.
        if let Err(errno) = unsafe { munmap(self.ptr.cast(), self.len) } {
            // Not ignorable: the memory stays committed and the address range
            // stays reserved until the process exits, so a harness opening
            // regions in a loop would leak until it ran out of memory.
            tracing::error!(
                addr = format_args!("{:#x}", self.addr()),
                len = self.len,
                %errno,
                "munmap of a uffd region failed; its memory is leaked until the process exits"
            );
        }
    }
}
