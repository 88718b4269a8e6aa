//! What this process may do with userfaultfd and `PAGEMAP_SCAN`, found by
//! trying: the harness's `doctor` command prints it, and implementations
//! that need write-protect tracking check it before they run.

use std::fmt;
use std::fs::File;
use std::os::fd::AsFd;

use nix::errno::Errno;

use crate::config::page_size;
use crate::mapping::Mapping;
use crate::open::{self, AttemptError, OpenedVia};
use crate::sys::{self, PageRegion, PAGE_IS_PRESENT};

/// `UFFD_FEATURE_*` bits, as `UFFDIO_API` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Features(pub u64);

/// Names of the feature bits, in bit order (`include/uapi/linux/userfaultfd.h`).
const FEATURE_NAMES: [(u64, &str); 17] = [
    (Features::PAGEFAULT_FLAG_WP.0, "PAGEFAULT_FLAG_WP"),
    (Features::EVENT_FORK.0, "EVENT_FORK"),
    (Features::EVENT_REMAP.0, "EVENT_REMAP"),
    (Features::EVENT_REMOVE.0, "EVENT_REMOVE"),
    (Features::MISSING_HUGETLBFS.0, "MISSING_HUGETLBFS"),
    (Features::MISSING_SHMEM.0, "MISSING_SHMEM"),
    (Features::EVENT_UNMAP.0, "EVENT_UNMAP"),
    (Features::SIGBUS.0, "SIGBUS"),
    (Features::THREAD_ID.0, "THREAD_ID"),
    (Features::MINOR_HUGETLBFS.0, "MINOR_HUGETLBFS"),
    (Features::MINOR_SHMEM.0, "MINOR_SHMEM"),
    (Features::EXACT_ADDRESS.0, "EXACT_ADDRESS"),
    (Features::WP_HUGETLBFS_SHMEM.0, "WP_HUGETLBFS_SHMEM"),
    (Features::WP_UNPOPULATED.0, "WP_UNPOPULATED"),
    (Features::POISON.0, "POISON"),
    (Features::WP_ASYNC.0, "WP_ASYNC"),
    (Features::MOVE.0, "MOVE"),
];

impl Features {
    /// Write-protect faults are reported (Linux 5.7).
    pub const PAGEFAULT_FLAG_WP: Self = Self(1 << 0);
    /// `fork` events (needs `CAP_SYS_PTRACE`).
    pub const EVENT_FORK: Self = Self(1 << 1);
    /// `mremap` events.
    pub const EVENT_REMAP: Self = Self(1 << 2);
    /// `MADV_DONTNEED`/`MADV_REMOVE` events.
    pub const EVENT_REMOVE: Self = Self(1 << 3);
    /// MISSING mode on hugetlbfs.
    pub const MISSING_HUGETLBFS: Self = Self(1 << 4);
    /// MISSING mode on shmem.
    pub const MISSING_SHMEM: Self = Self(1 << 5);
    /// `munmap` events.
    pub const EVENT_UNMAP: Self = Self(1 << 6);
    /// Faults raise `SIGBUS` instead of events.
    pub const SIGBUS: Self = Self(1 << 7);
    /// Fault events carry the faulting thread id.
    pub const THREAD_ID: Self = Self(1 << 8);
    /// MINOR mode on hugetlbfs (5.13).
    pub const MINOR_HUGETLBFS: Self = Self(1 << 9);
    /// MINOR mode on shmem (5.14).
    pub const MINOR_SHMEM: Self = Self(1 << 10);
    /// Fault events carry the exact, unaligned address (5.18).
    pub const EXACT_ADDRESS: Self = Self(1 << 11);
    /// Write-protect on hugetlbfs and shmem (5.19).
    pub const WP_HUGETLBFS_SHMEM: Self = Self(1 << 12);
    /// Write-protect also covers pages never populated (6.4).
    pub const WP_UNPOPULATED: Self = Self(1 << 13);
    /// `UFFDIO_POISON` (6.6).
    pub const POISON: Self = Self(1 << 14);
    /// Asynchronous write-protect: the kernel resolves WP faults itself and
    /// `PAGEMAP_SCAN` reports the written pages (6.7).
    pub const WP_ASYNC: Self = Self(1 << 15);
    /// `UFFDIO_MOVE` (6.8).
    pub const MOVE: Self = Self(1 << 16);

    /// The raw bits.
    pub fn bits(self) -> u64 {
        self.0
    }

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: Features) -> bool {
        self.0 & other.0 == other.0
    }

    /// Names of the set bits; bits this crate has no name for appear as
    /// `bitN`.
    pub fn names(self) -> Vec<String> {
        let mut names: Vec<String> = FEATURE_NAMES
            .iter()
            .filter(|(bit, _)| self.0 & bit != 0)
            .map(|(_, name)| (*name).to_owned())
            .collect();
        let known = FEATURE_NAMES.iter().fold(0, |acc, (bit, _)| acc | bit);
        let unknown = self.0 & !known;
        names.extend(
            (0..64)
                .filter(|i| unknown & (1u64 << i) != 0)
                .map(|i| format!("bit{i}")),
        );
        names
    }
}

/// The outcome of one way of opening a userfaultfd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenAttempt {
    /// The way tried.
    pub via: OpenedVia,
    /// `None` if it worked, else the kernel's errno text.
    pub error: Option<String>,
}

/// Whether the `PAGEMAP_SCAN` ioctl works on `/proc/self/pagemap`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PagemapScan {
    /// It reported exactly the pages a test mapping had present.
    Works,
    /// The kernel does not know the ioctl (`ENOTTY`/`EINVAL`: before 6.7).
    Absent {
        /// The kernel's answer.
        errno: Errno,
    },
    /// It could not be tried, or answered wrongly.
    Failed {
        /// What went wrong.
        reason: String,
    },
}

impl PagemapScan {
    /// Whether the ioctl works.
    pub fn works(&self) -> bool {
        matches!(self, PagemapScan::Works)
    }
}

impl fmt::Display for PagemapScan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PagemapScan::Works => f.write_str("works"),
            PagemapScan::Absent { errno } => write!(f, "absent ({errno})"),
            PagemapScan::Failed { reason } => write!(f, "failed ({reason})"),
        }
    }
}

/// What [`probe`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UffdCapabilities {
    /// Every way of opening, in the order [`crate::OpenMode::Auto`] tries them.
    pub attempts: Vec<OpenAttempt>,
    /// The way [`crate::OpenMode::Auto`] would use; `None` if none works.
    pub mode: Option<OpenedVia>,
    /// Why no way works, with a hint; `None` if one does.
    pub error: Option<String>,
    /// Feature bits the kernel supports (zero if nothing opened).
    pub feature_bits: Features,
    /// `feature_bits` decoded to names (`PAGEFAULT_FLAG_WP`, `WP_ASYNC`, ...).
    pub features: Vec<String>,
    /// `UFFDIO_*` ioctl bits the kernel reported in the handshake.
    pub ioctls: u64,
    /// Whether `PAGEMAP_SCAN` works.
    pub pagemap_scan: PagemapScan,
}

impl UffdCapabilities {
    /// Whether any way of opening worked.
    pub fn available(&self) -> bool {
        self.mode.is_some()
    }

    /// Assembles the report from each way's outcome.
    fn from_attempts(
        attempts: Vec<OpenAttempt>,
        api: Option<sys::UffdioApi>,
        pagemap_scan: PagemapScan,
    ) -> Self {
        let mode = attempts.iter().find(|a| a.error.is_none()).map(|a| a.via);
        let error = mode.is_none().then(|| {
            let failures = attempts
                .iter()
                .map(|a| format!("{}: {}", a.via, a.error.as_deref().unwrap_or("ok")))
                .collect::<Vec<_>>()
                .join("; ");
            format!("{failures}. {}", open::hint())
        });
        let feature_bits = Features(api.map_or(0, |a| a.features));
        Self {
            attempts,
            mode,
            error,
            feature_bits,
            features: feature_bits.names(),
            ioctls: api.map_or(0, |a| a.ioctls),
            pagemap_scan,
        }
    }
}

/// Tries every way of opening a userfaultfd and the `PAGEMAP_SCAN` ioctl.
///
/// Opens and closes a descriptor per way and maps (then unmaps) four pages;
/// it changes nothing else and takes well under a millisecond.
pub fn probe() -> UffdCapabilities {
    let mut attempts = Vec::new();
    let mut api = None;
    for &via in crate::OpenMode::Auto.attempts() {
        match open::attempt(via, 0) {
            Ok(opened) => {
                api.get_or_insert(opened.api);
                attempts.push(OpenAttempt { via, error: None });
            }
            Err(e) => attempts.push(OpenAttempt {
                via,
                error: Some(match e {
                    AttemptError::Create { errno, .. } => errno.to_string(),
                    AttemptError::Handshake { .. } => e.to_string(),
                }),
            }),
        }
    }
    UffdCapabilities::from_attempts(attempts, api, probe_pagemap_scan())
}

/// Maps four pages, makes the first and third present, and checks that
/// `PAGEMAP_SCAN` reports exactly those two.
fn probe_pagemap_scan() -> PagemapScan {
    let page = page_size();
    let mapping = match Mapping::anonymous(4 * page, page) {
        Ok(m) => m,
        Err(errno) => {
            return PagemapScan::Failed {
                reason: format!("mapping 4 test pages failed: {errno}"),
            }
        }
    };
    for index in [0, 2] {
        // SAFETY: the byte is inside the four-page mapping we own and no
        // reference to it exists; writing it makes the page present.
        unsafe { mapping.ptr().as_ptr().add(index * page).write_volatile(1) };
    }
    let pagemap = match File::open("/proc/self/pagemap") {
        Ok(f) => f,
        Err(e) => {
            return PagemapScan::Failed {
                reason: format!("opening /proc/self/pagemap failed: {e}"),
            }
        }
    };
    let start = mapping.addr();
    let page = page as u64;
    let mut regions = [PageRegion::default(); 4];
    match sys::pagemap_scan(
        pagemap.as_fd(),
        start,
        start + 4 * page,
        PAGE_IS_PRESENT,
        &mut regions,
    ) {
        Ok(n) => {
            let expected = [0, 2].map(|i| PageRegion {
                start: start + i * page,
                end: start + (i + 1) * page,
                categories: PAGE_IS_PRESENT,
            });
            if regions.get(..n) == Some(&expected[..]) {
                PagemapScan::Works
            } else {
                PagemapScan::Failed {
                    reason: format!(
                        "expected pages 0 and 2 present, got {:?}",
                        regions.get(..n).unwrap_or(&regions[..])
                    ),
                }
            }
        }
        Err(errno @ (Errno::ENOTTY | Errno::EINVAL)) => PagemapScan::Absent { errno },
        Err(errno) => PagemapScan::Failed {
            reason: format!("PAGEMAP_SCAN failed: {errno}"),
        },
    }
}

impl fmt::Display for UffdCapabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.mode {
            Some(via) => writeln!(
                f,
                "userfaultfd: available via {via} (kernel-mode faults {})",
                if via.handles_kernel_faults() {
                    "handled"
                } else {
                    "not handled"
                }
            )?,
            None => writeln!(f, "userfaultfd: unavailable")?,
        }
        for attempt in &self.attempts {
            writeln!(
                f,
                "  {}: {}",
                attempt.via,
                attempt.error.as_deref().unwrap_or("ok")
            )?;
        }
        if let Some(reason) = &self.error {
            writeln!(f, "  {reason}")?;
        } else {
            writeln!(
                f,
                "  features {:#x}: {}",
                self.feature_bits.bits(),
                self.features.join(" ")
            )?;
            writeln!(f, "  ioctls {:#x}", self.ioctls)?;
        }
        write!(f, "PAGEMAP_SCAN: {}", self.pagemap_scan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_known_and_unknown_bits() {
        let f = Features(Features::PAGEFAULT_FLAG_WP.0 | Features::WP_ASYNC.0 | (1 << 40));
        assert_eq!(f.names(), vec!["PAGEFAULT_FLAG_WP", "WP_ASYNC", "bit40"]);
        assert!(f.contains(Features::WP_ASYNC));
        assert!(!f.contains(Features::MOVE));
        assert!(Features(0).names().is_empty());
    }

    #[test]
    fn feature_names_are_in_bit_order() {
        for (i, (bit, _)) in FEATURE_NAMES.iter().enumerate() {
            assert_eq!(*bit, 1u64 << i);
        }
    }

    #[test]
    fn error_explains_total_failure_only() {
        let failed = OpenAttempt {
            via: OpenedVia::SyscallUserModeOnly,
            error: Some("EPERM: Operation not permitted".into()),
        };
        let absent = PagemapScan::Absent {
            errno: Errno::ENOTTY,
        };
        let caps = UffdCapabilities::from_attempts(vec![failed.clone()], None, absent.clone());
        assert!(!caps.available());
        let reason = caps.error.clone().unwrap();
        assert!(reason.contains("EPERM"), "{reason}");
        assert!(reason.contains("vm.unprivileged_userfaultfd"), "{reason}");
        assert!(caps.features.is_empty());
        assert!(caps.to_string().contains("unavailable"));
        assert!(!caps.pagemap_scan.works());

        let api = sys::UffdioApi {
            api: sys::UFFD_API,
            features: Features::WP_ASYNC.bits(),
            ioctls: 3,
        };
        let ok = OpenAttempt {
            via: OpenedVia::Device,
            error: None,
        };
        let caps = UffdCapabilities::from_attempts(vec![ok, failed], Some(api), absent);
        assert_eq!(caps.error, None);
        assert_eq!(caps.mode, Some(OpenedVia::Device));
        assert_eq!(caps.features, vec!["WP_ASYNC"]);
        assert_eq!(caps.ioctls, 3);
    }
}
