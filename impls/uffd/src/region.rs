//! [`UffdRegion`]: the mapping, its userfaultfd registration and handler.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;

use backends::{BackendError, BlockingBackend};
use nix::errno::Errno;
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::background::{self, BackgroundPull};
use crate::config::{page_size, ConfigError, UffdConfig};
use crate::handler::{self, Geometry, Handler, HandlerError, Shared};
use crate::mapping::Mapping;
use crate::open::{self, OpenedVia};
use crate::probe::Features;
use crate::stats::FaultStats;
use crate::sys::{self, IOCTL_COPY_BIT, UFFDIO_REGISTER_MODE_MISSING};

/// Errors opening a [`UffdRegion`].
#[derive(Debug, thiserror::Error)]
pub enum UffdError {
    /// The config is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No way of opening a userfaultfd is allowed to this process.
    #[error("userfaultfd is unavailable: {reason}")]
    Unavailable {
        /// The kernel's errno text for each way tried, and what to change.
        reason: String,
    },
    /// Asking the source for its size failed.
    #[error("asking the source for its size failed: {0}")]
    SourceSize(#[source] BackendError),
    /// The source is smaller than the region.
    #[error("the source holds {source_size} bytes; the region needs at least {size}")]
    SourceTooSmall {
        /// The source's size.
        source_size: u64,
        /// The region's size.
        size: usize,
    },
    /// `mmap` failed.
    #[error("mapping {size} bytes of anonymous memory failed: {errno}")]
    Map {
        /// The region size.
        size: usize,
        /// The kernel's answer.
        errno: Errno,
    },
    /// `UFFDIO_REGISTER` failed.
    #[error("registering {size} bytes at {start:#x} for MISSING faults failed: {errno}")]
    Register {
        /// The region start.
        start: u64,
        /// The region size.
        size: usize,
        /// The kernel's answer.
        errno: Errno,
    },
    /// The registered range does not support `UFFDIO_COPY`.
    #[error("the kernel offers no UFFDIO_COPY on the registered range (range ioctls {ioctls:#x})")]
    CopyUnsupported {
        /// The ioctl bits the kernel returned.
        ioctls: u64,
    },
    /// Creating the handler's shutdown eventfd failed.
    #[error("creating the shutdown eventfd failed: {0}")]
    EventFd(Errno),
    /// Spawning the handler thread failed.
    #[error("spawning the handler thread failed: {0}")]
    Spawn(#[source] std::io::Error),
    /// Starting the background pull failed.
    #[error("starting the background pull failed: {0}")]
    BackgroundPull(#[source] std::io::Error),
    /// Pinning the handler thread failed.
    #[error("pinning the handler thread to CPU {cpu} failed: {errno}; allowed: a CPU in this process's affinity mask")]
    Pin {
        /// The requested CPU.
        cpu: usize,
        /// The kernel's answer.
        errno: Errno,
    },
    /// The handler thread died before it was ready.
    #[error("the handler thread exited before it was ready")]
    HandlerStart,
}

/// A memory region whose pages are fetched from a source when first touched.
///
/// # Behavior
///
/// - [`UffdRegion::open`] maps `size` bytes of anonymous private memory,
///   registers them with a userfaultfd in MISSING mode and starts one handler
///   thread (named `uffd-handler`, pinned to `handler_cpu` if set). Nothing
///   is fetched yet.
/// - The first touch of a missing page blocks the touching thread. The
///   handler fetches the page's whole chunk from the source (one
///   `read_exact_at` of `chunk_size` bytes, or the shorter remainder for the
///   last chunk), installs it with `UFFDIO_COPY`, updates the stats, then
///   wakes every thread waiting in the chunk. Each chunk is fetched once; a
///   thread that faults on a chunk already being installed is counted as a
///   duplicate and not fetched again.
/// - [`UffdRegion::stats`] already counts the fault a thread just resumed
///   from (duplicates excepted: they are counted when their event is read).
/// - A write to a missing page behaves the same way: the chunk is installed
///   first, then the write lands on it.
/// - A source read that fails with an I/O or remote error is retried, up to
///   [`crate::FETCH_ATTEMPTS`] attempts in all with a short doubling pause.
///   Range errors and a closed source are not retried.
/// - When a fetch fails for good (or the kernel rejects a copy), the handler
///   records the error, stops and closes the userfaultfd. Closing
///   unregisters the region and wakes every blocked thread; from then on
///   every page not yet installed reads as zeros. Nothing blocks forever, and
///   the failure shows in two places: [`UffdRegion::error`] returns it, and
///   the zeros fail the caller's integrity check.
/// - Pages the application discards (`MADV_DONTNEED`) are fetched from the
///   source again on the next touch.
/// - Drop signals the handler, joins it (waiting out a fetch in flight),
///   closes the userfaultfd and unmaps the region.
///
/// # Limitations
///
/// - One handler thread serves faults one at a time: a slow fetch delays
///   every other fault. There is no background pull of untouched chunks.
/// - With [`OpenedVia::SyscallUserModeOnly`], faults taken by the kernel on
///   the process's behalf are not delivered: a syscall reading a missing page
///   (for example `write(2)` from the region) fails with `EFAULT`. Touch the
///   pages from user space first, or run where the device or full syscall
///   is allowed.
/// - `mremap`, `munmap` or `mprotect` of the region behind its back are not
///   supported.
/// - Drop waits for a fetch in flight; a source that never returns makes
///   drop wait as long. Bound it with the source's own timeouts.
/// - The handler calls the source through [`BlockingBackend`]; `open` does
///   too (to check its size). Neither may run on a thread that drives the
///   source's tokio runtime.
#[derive(Debug)]
pub struct UffdRegion {
    config: UffdConfig,
    opened_via: OpenedVia,
    features: Features,
    shutdown: Arc<EventFd>,
    shared: Arc<Shared>,
    handler: Option<JoinHandle<()>>,
    /// The handler's userfaultfd, for the background pull. Weak: when the
    /// handler stops on an error, its descriptor must close (waking every
    /// waiting thread) whatever the region holds.
    uffd: Weak<OwnedFd>,
    geometry: Geometry,
    /// The background pull, when started; joined before the handler.
    background: Option<(Arc<BackgroundPull>, Vec<JoinHandle<()>>)>,
    /// Dropped after `Drop::drop` has joined the handler.
    mapping: Mapping,
}

impl UffdRegion {
    /// Maps the region and starts serving its faults from `source`.
    ///
    /// `source` must hold at least `config.size` bytes; region byte `i` is
    /// source byte `i`.
    ///
    /// # Panics
    ///
    /// If called on a thread that drives the source's tokio runtime (the
    /// [`BlockingBackend`] rule).
    pub fn open(config: UffdConfig, source: BlockingBackend) -> Result<Self, UffdError> {
        let page_size = page_size();
        config.validate_for_page_size(page_size)?;
        let source_size = source.size().map_err(UffdError::SourceSize)?;
        if source_size < config.size as u64 {
            return Err(UffdError::SourceTooSmall {
                source_size,
                size: config.size,
            });
        }

        let opened =
            open::open(config.open_mode, 0).map_err(|reason| UffdError::Unavailable { reason })?;
        let mapping =
            Mapping::anonymous(config.size, page_size).map_err(|errno| UffdError::Map {
                size: config.size,
                errno,
            })?;
        let ioctls = sys::register(
            opened.fd.as_fd(),
            mapping.addr(),
            config.size as u64,
            UFFDIO_REGISTER_MODE_MISSING,
        )
        .map_err(|errno| UffdError::Register {
            start: mapping.addr(),
            size: config.size,
            errno,
        })?;
        if ioctls & IOCTL_COPY_BIT == 0 {
            return Err(UffdError::CopyUnsupported { ioctls });
        }

        let shutdown = Arc::new(
            EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .map_err(UffdError::EventFd)?,
        );
        let shared = Arc::new(Shared::default());
        let geometry = Geometry {
            start: mapping.addr(),
            size: config.size as u64,
            chunk_size: config.chunk_size as u64,
            page_size: page_size as u64,
        };
        let fd = Arc::new(opened.fd);
        let uffd = Arc::downgrade(&fd);
        let handler = Handler::new(
            fd,
            Arc::clone(&shutdown),
            Arc::clone(&shared),
            source,
            geometry,
        );
        let join = handler::spawn(handler, config.handler_cpu)?;
        tracing::debug!(
            start = format_args!("{:#x}", mapping.addr()),
            size = config.size,
            chunk_size = config.chunk_size,
            via = %opened.via,
            "uffd region open"
        );
        Ok(Self {
            config,
            opened_via: opened.via,
            features: Features(opened.api.features),
            shutdown,
            shared,
            handler: Some(join),
            uffd,
            geometry,
            background: None,
            mapping,
        })
    }

    /// Starts `workers` threads that fetch every chunk from `source` in
    /// order and install it, while faults keep being served first: the
    /// background half of a post-copy. Returns its progress. `source` must
    /// hold the same bytes as the handler's and must not change meanwhile.
    /// At most one background pull per region.
    pub fn start_background_pull(
        &mut self,
        source: BlockingBackend,
        workers: usize,
    ) -> Result<Arc<BackgroundPull>, UffdError> {
        if let Some((progress, _)) = &self.background {
            return Ok(progress.clone());
        }
        let uffd = self.uffd.upgrade().ok_or_else(|| {
            UffdError::BackgroundPull(std::io::Error::other(
                "the fault handler has stopped (see `error()`)",
            ))
        })?;
        let (progress, joins) = background::spawn(
            workers.max(1),
            uffd,
            self.shared.clone(),
            self.geometry,
            source,
        )
        .map_err(UffdError::BackgroundPull)?;
        self.background = Some((progress.clone(), joins));
        Ok(progress)
    }

    /// The first byte of the region.
    pub fn as_ptr(&self) -> *const u8 {
        self.mapping.ptr().as_ptr()
    }

    /// The first byte of the region, for writing.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.mapping.ptr().as_ptr()
    }

    /// The region size in bytes.
    pub fn len(&self) -> usize {
        self.mapping.len()
    }

    /// Always `false`: a region has at least one page.
    pub fn is_empty(&self) -> bool {
        self.mapping.len() == 0
    }

    /// The whole region. Reading it is the point: each first touch of a
    /// missing page blocks until the handler installs its chunk.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes owned by `self` and
        // live for the borrow. A missing page is never unreadable: touching
        // it blocks until the handler installs it, or, once the handler has
        // stopped, resolves to a zero page. Pages only ever go from missing
        // to installed, atomically, so nothing the borrow has observed
        // changes under it.
        unsafe { std::slice::from_raw_parts(self.mapping.ptr().as_ptr(), self.mapping.len()) }
    }

    /// The whole region, for writing. A write to a missing page first
    /// installs its chunk from the source.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; `&mut self` makes this the only live
        // reference into the mapping.
        unsafe { std::slice::from_raw_parts_mut(self.mapping.ptr().as_ptr(), self.mapping.len()) }
    }

    /// The config the region was opened with.
    pub fn config(&self) -> &UffdConfig {
        &self.config
    }

    /// How the userfaultfd was obtained.
    pub fn opened_via(&self) -> OpenedVia {
        self.opened_via
    }

    /// Every feature the kernel reported in the handshake (supported, not
    /// necessarily enabled: this region enables none).
    pub fn kernel_features(&self) -> Features {
        self.features
    }

    /// A snapshot of the handler's counters and service times.
    pub fn stats(&self) -> FaultStats {
        self.shared.stats.lock().clone()
    }

    /// Why the handler stopped, if it failed. Once this is `Some`, pages not
    /// yet installed read as zeros.
    pub fn error(&self) -> Option<HandlerError> {
        self.shared.error.lock().clone()
    }

    /// Whether the handler is still serving faults.
    pub fn is_serving(&self) -> bool {
        self.handler.as_ref().is_some_and(|h| !h.is_finished())
    }
}

impl Drop for UffdRegion {
    fn drop(&mut self) {
        if let Some((progress, joins)) = self.background.take() {
            progress.stop();
            for join in joins {
                if join.join().is_err() {
                    tracing::error!("a background pull thread panicked");
                }
            }
        }
        let Some(join) = self.handler.take() else {
            return;
        };
        if let Err(errno) = self.shutdown.write(1) {
            // Not ignorable: the handler cannot be told to stop, so joining
            // would hang; it keeps its thread and userfaultfd until the
            // process exits. Unmapping below stays sound: the kernel refuses
            // UFFDIO_COPY into a range that is no longer registered.
            tracing::error!(%errno, "cannot signal the uffd handler to stop; leaking its thread and userfaultfd");
            return;
        }
        if join.join().is_err() {
            // Not ignorable: a panic is a bug in the handler, and any fault it
            // was serving was released with zeros when its userfaultfd closed
            // during unwinding, so the region's content may be wrong.
            tracing::error!(
                "the uffd handler thread panicked; the region may hold zero-filled pages"
            );
        }
    }
}
