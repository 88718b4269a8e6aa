//! What a region is asked to be: size, chunk size, handler placement, open mode.

use crate::open::OpenMode;

/// Errors in a [`UffdConfig`]; each names the bad value and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `size` is zero.
    #[error("region size 0 is not allowed: the size must be a positive multiple of the {page_size}-byte page")]
    ZeroSize {
        /// The system page size.
        page_size: usize,
    },
    /// `size` is not a whole number of pages.
    #[error("region size {size} is not a multiple of the {page_size}-byte page")]
    SizeNotPageMultiple {
        /// The rejected size.
        size: usize,
        /// The system page size.
        page_size: usize,
    },
    /// `size` does not fit a slice (`isize::MAX` bytes).
    #[error("region size {size} exceeds the largest mappable size {max}")]
    SizeTooLarge {
        /// The rejected size.
        size: usize,
        /// The largest allowed size.
        max: usize,
    },
    /// `chunk_size` is zero or not a whole number of pages.
    #[error("chunk size {chunk_size} is not a positive multiple of the {page_size}-byte page")]
    ChunkNotPageMultiple {
        /// The rejected chunk size.
        chunk_size: usize,
        /// The system page size.
        page_size: usize,
    },
    /// `chunk_size` is larger than the region.
    #[error("chunk size {chunk_size} exceeds the region size {size}; allowed: at most {size}")]
    ChunkLargerThanRegion {
        /// The rejected chunk size.
        chunk_size: usize,
        /// The region size.
        size: usize,
    },
    /// `handler_cpu` is past what a CPU set can name.
    #[error("handler CPU {cpu} is out of range; allowed: 0..{limit}")]
    CpuOutOfRange {
        /// The rejected CPU index.
        cpu: usize,
        /// One past the largest CPU index a CPU set can hold.
        limit: usize,
    },
}

/// How a [`crate::UffdRegion`] is laid out and served.
///
/// The region is fetched in chunks of `chunk_size` bytes aligned to the
/// region's start. When `size` is not a multiple of `chunk_size`, the last
/// chunk is shorter: it covers the remaining `size % chunk_size` bytes (a
/// whole number of pages, since both sizes are) and is fetched with one read
/// of exactly that length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UffdConfig {
    /// Region size in bytes: a positive multiple of the page size.
    pub size: usize,
    /// Bytes fetched and installed per fault: a positive multiple of the
    /// page size, at most `size`.
    pub chunk_size: usize,
    /// The CPU the handler thread is pinned to; `None` leaves placement to
    /// the scheduler.
    pub handler_cpu: Option<usize>,
    /// How the userfaultfd is obtained.
    pub open_mode: OpenMode,
}

impl UffdConfig {
    /// A config with no CPU pinning and [`OpenMode::Auto`].
    pub fn new(size: usize, chunk_size: usize) -> Self {
        Self {
            size,
            chunk_size,
            handler_cpu: None,
            open_mode: OpenMode::Auto,
        }
    }

    /// Checks the config against this system's page size.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_for_page_size(page_size())
    }

    pub(crate) fn validate_for_page_size(&self, page_size: usize) -> Result<(), ConfigError> {
        let &Self {
            size, chunk_size, ..
        } = self;
        if size == 0 {
            return Err(ConfigError::ZeroSize { page_size });
        }
        if size % page_size != 0 {
            return Err(ConfigError::SizeNotPageMultiple { size, page_size });
        }
        let max = isize::MAX as usize;
        if size > max {
            return Err(ConfigError::SizeTooLarge { size, max });
        }
        if chunk_size == 0 || chunk_size % page_size != 0 {
            return Err(ConfigError::ChunkNotPageMultiple {
                chunk_size,
                page_size,
            });
        }
        if chunk_size > size {
            return Err(ConfigError::ChunkLargerThanRegion { chunk_size, size });
        }
        if let Some(cpu) = self.handler_cpu {
            let limit = nix::sched::CpuSet::count();
            if cpu >= limit {
                return Err(ConfigError::CpuOutOfRange { cpu, limit });
            }
        }
        Ok(())
    }

    /// How many chunks cover the region (the last may be short).
    pub fn chunk_count(&self) -> usize {
        self.size.div_ceil(self.chunk_size)
    }
}

/// The system page size, falling back to 4 KiB if `sysconf` cannot say.
pub(crate) fn page_size() -> usize {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE) {
        Ok(Some(n)) if n > 0 => n as usize,
        // Linux always answers for _SC_PAGESIZE; should it not, the alignment
        // asserts after mmap catch a wrong guess before any fault is served.
        _ => 4096,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = 4096;

    fn check(size: usize, chunk: usize) -> Result<(), ConfigError> {
        UffdConfig::new(size, chunk).validate_for_page_size(PAGE)
    }

    #[test]
    fn accepts_page_multiples_and_a_short_last_chunk() {
        assert_eq!(check(PAGE, PAGE), Ok(()));
        assert_eq!(check(3 * 64 * 1024 + 2 * PAGE, 64 * 1024), Ok(()));
        assert_eq!(
            UffdConfig::new(3 * 64 * 1024 + 2 * PAGE, 64 * 1024).chunk_count(),
            4
        );
        assert_eq!(UffdConfig::new(1 << 20, 64 * 1024).chunk_count(), 16);
    }

    #[test]
    fn rejects_bad_sizes_naming_the_value() {
        assert_eq!(
            check(0, PAGE),
            Err(ConfigError::ZeroSize { page_size: PAGE })
        );
        assert_eq!(
            check(PAGE + 1, PAGE),
            Err(ConfigError::SizeNotPageMultiple {
                size: PAGE + 1,
                page_size: PAGE
            })
        );
        assert_eq!(
            check(PAGE, 0),
            Err(ConfigError::ChunkNotPageMultiple {
                chunk_size: 0,
                page_size: PAGE
            })
        );
        assert_eq!(
            check(4 * PAGE, PAGE + 512),
            Err(ConfigError::ChunkNotPageMultiple {
                chunk_size: PAGE + 512,
                page_size: PAGE
            })
        );
        let err = check(PAGE, 2 * PAGE).unwrap_err();
        assert_eq!(
            err,
            ConfigError::ChunkLargerThanRegion {
                chunk_size: 2 * PAGE,
                size: PAGE
            }
        );
        assert!(err.to_string().contains("8192"), "{err}");
    }

    #[test]
    fn rejects_an_unnameable_cpu() {
        let mut config = UffdConfig::new(PAGE, PAGE);
        config.handler_cpu = Some(usize::MAX);
        assert!(matches!(
            config.validate_for_page_size(PAGE),
            Err(ConfigError::CpuOutOfRange {
                cpu: usize::MAX,
                ..
            })
        ));
        config.handler_cpu = Some(0);
        assert_eq!(config.validate_for_page_size(PAGE), Ok(()));
    }
}
