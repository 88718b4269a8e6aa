//! Dirty-page tracking with userfaultfd write-protect: which pages of a
//! region were written since the last look (the `uffd-wp` pre-copy source).
//!
//! Two ways, picked by [`WpMode`]:
//!
//! - **Async** (Linux 6.7: `UFFD_FEATURE_WP_ASYNC` and `PAGEMAP_SCAN`): the
//!   kernel resolves write faults on protected pages itself, clearing the
//!   page's uffd-wp bit; [`DirtyTracker::collect`] asks `PAGEMAP_SCAN`
//!   for the pages whose bit is clear and re-protects them in the same walk
//!   (`PM_SCAN_WP_MATCHING`). No thread, no fault message per page.
//! - **Sync** (Linux 5.7: `UFFD_FEATURE_PAGEFAULT_FLAG_WP`): each first
//!   write to a protected page stops the writer and sends a fault message;
//!   a handler thread records the page and unprotects it, which wakes the
//!   writer. `collect` takes the recorded pages and protects them again.
//!
//! Both protect pages never touched too (`UFFD_FEATURE_WP_UNPOPULATED`,
//! 6.4), so a sparse region stays sparse. On a kernel without it, the sync
//! mode populates the region first (`MADV_POPULATE_WRITE`): otherwise a
//! first write to an untouched page would go unseen. Transparent huge pages
//! are turned off for the region (`MADV_NOHUGEPAGE`) so that one write
//! dirties one page, not 512.
//!
//! # Races the sync handler handles
//!
//! Recording a fault (set the bit, unprotect) and `collect` (take the
//! bits, protect those pages) each run under one lock. Were they
//! interleaved, a page recorded into the old set after `collect` took it
//! but unprotected after `collect` protected it would stay writable and
//! missing from every later set. A write between `collect` taking the
//! bits and protecting a page raises no fault, but it happened before
//! `collect` returned, so a caller that reads the pages it is given after
//! `collect` returns sees it.

use std::fs::File;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use parking_lot::Mutex;

use crate::config::page_size;
use crate::mapping::Mapping;
use crate::open::{self, OpenMode, OpenedVia};
use crate::probe::Features;
use crate::sys::{self, PageRegion, UffdMsg, UFFD_MSG_SIZE, UFFD_PAGEFAULT_FLAG_WP};

/// Name of the sync handler thread.
pub const WP_THREAD_NAME: &str = "uffd-wp";
/// `PAGEMAP_SCAN` entries read per ioctl.
const SCAN_BATCH: usize = 1024;
/// `MADV_POPULATE_WRITE` (Linux 5.14), absent from older libc crates.
const MADV_POPULATE_WRITE: libc::c_int = 23;

/// How written pages are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WpMode {
    /// `WP_ASYNC` + `PAGEMAP_SCAN`: no fault reaches user space.
    Async,
    /// A fault message per first write, served by a handler thread.
    Sync,
}

impl WpMode {
    /// The name used in records: `async` or `sync`.
    pub fn name(self) -> &'static str {
        match self {
            WpMode::Async => "async",
            WpMode::Sync => "sync",
        }
    }
}

/// Which mode [`DirtyTracker::anonymous`] may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WpChoice {
    /// Async where the kernel has it, else sync.
    #[default]
    Auto,
    /// Only this mode; [`WpError::Unavailable`] if the kernel lacks it.
    Only(WpMode),
}

/// Why tracking could not start, or a collection failed.
#[derive(Debug, thiserror::Error)]
pub enum WpError {
    /// The region length is zero or not a page multiple.
    #[error("region length {len} must be a positive multiple of the {page}-byte page")]
    Length { len: usize, page: usize },
    /// The kernel or this process's privileges do not allow the mode.
    #[error("write-protect tracking ({mode}) is unavailable: {reason}")]
    Unavailable { mode: &'static str, reason: String },
    /// A system call failed.
    #[error("{what} failed: {errno}")]
    Sys { what: &'static str, errno: Errno },
    /// `/proc/self/pagemap` could not be opened.
    #[error("opening /proc/self/pagemap: {0}")]
    Pagemap(std::io::Error),
    /// The handler thread could not start.
    #[error("starting the write-protect handler thread: {0}")]
    Spawn(std::io::Error),
    /// The handler thread stopped; faults may be unserved.
    #[error("the write-protect handler stopped: {0}")]
    Handler(String),
}

fn sys_err(what: &'static str) -> impl Fn(Errno) -> WpError {
    move |errno| WpError::Sys { what, errno }
}

/// Pages recorded by the sync handler, and its first error.
#[derive(Debug)]
struct SyncState {
    dirty: Vec<u64>,
    error: Option<String>,
}

/// What each mode owns besides the userfaultfd and the mapping.
#[derive(Debug)]
enum Engine {
    Async {
        pagemap: File,
        buf: Vec<PageRegion>,
    },
    Sync {
        state: Arc<Mutex<SyncState>>,
        shutdown: Arc<EventFd>,
        handler: Option<JoinHandle<()>>,
    },
}

/// An anonymous region whose written pages are tracked.
///
/// # Behavior
///
/// [`DirtyTracker::anonymous`] maps `len` bytes (private, unpopulated,
/// `MAP_NORESERVE`), registers them for write-protect and protects them.
/// [`DirtyTracker::collect`] returns the byte ranges written since the
/// previous call (or since tracking started), page aligned, ascending and
/// merged, and arms tracking again. Writes from any thread count; so do
/// writes by the kernel on this process's behalf (a `read(2)` into the
/// region), except in sync mode on a user-mode-only userfaultfd, where
/// they fail with `EFAULT`.
///
/// Drop stops and joins the handler thread (sync), closes the
/// userfaultfd, the eventfd and `/proc/self/pagemap`, and unmaps.
///
/// # Limitations
///
/// - The region is anonymous memory this type maps; tracking a file
///   mapping or someone else's memory is not offered.
/// - `mremap`, `munmap` or `madvise(MADV_DONTNEED)` of part of the region
///   by the application are not supported.
/// - Sync mode: should the handler stop (an ioctl it cannot recover from),
///   writers to protected pages wait until the tracker is dropped, which
///   closes the userfaultfd and lets them go; `collect` returns the
///   handler's error from then on.
#[derive(Debug)]
pub struct DirtyTracker {
    engine: Engine,
    /// Dropped before `mapping`: the kernel unregisters the range then.
    uffd: Arc<OwnedFd>,
    mapping: Mapping,
    mode: WpMode,
    via: OpenedVia,
    page: usize,
}

impl DirtyTracker {
    /// Maps `len` bytes and starts tracking writes to them.
    pub fn anonymous(len: usize, choice: WpChoice) -> Result<Self, WpError> {
        let page = page_size();
        if len == 0 || !len.is_multiple_of(page) {
            return Err(WpError::Length { len, page });
        }
        match choice {
            WpChoice::Only(mode) => Self::with_mode(len, page, mode),
            WpChoice::Auto => match Self::with_mode(len, page, WpMode::Async) {
                Err(WpError::Unavailable { reason, .. }) => {
                    tracing::debug!(%reason, "async write-protect unavailable; using sync");
                    Self::with_mode(len, page, WpMode::Sync)
                }
                other => other,
            },
        }
    }

    fn with_mode(len: usize, page: usize, mode: WpMode) -> Result<Self, WpError> {
        let unavailable = |reason: String| WpError::Unavailable {
            mode: mode.name(),
            reason,
        };
        // What the kernel offers, from a handshake that asks for nothing.
        let offered = open::open(OpenMode::Auto, 0).map_err(unavailable)?;
        let offered = Features(offered.api.features);
        let unpopulated = offered.contains(Features::WP_UNPOPULATED);
        let mut features = match mode {
            WpMode::Async => Features::WP_ASYNC.bits(),
            WpMode::Sync => Features::PAGEFAULT_FLAG_WP.bits(),
        };
        if !offered.contains(Features(features)) {
            return Err(unavailable(format!(
                "the kernel offers {} (needs {})",
                offered.names().join(" "),
                Features(features).names().join(" ")
            )));
        }
        if unpopulated {
            features |= Features::WP_UNPOPULATED.bits();
        } else if mode == WpMode::Async {
            return Err(unavailable(
                "the kernel has WP_ASYNC but not WP_UNPOPULATED".into(),
            ));
        }
        let opened = open::open(OpenMode::Auto, features).map_err(unavailable)?;
        let mapping = Mapping::anonymous(len, page).map_err(sys_err("mmap"))?;
        // SAFETY: the range is exactly our own fresh mapping; the advice
        // changes how it is backed (no huge pages), not its contents.
        let rc =
            unsafe { libc::madvise(mapping.ptr().as_ptr().cast(), len, libc::MADV_NOHUGEPAGE) };
        Errno::result(rc).map_err(sys_err("madvise(MADV_NOHUGEPAGE)"))?;
        if !unpopulated {
            // SAFETY: as above; populating writes zeros into pages that were
            // zero already (untouched anonymous memory reads as zeros).
            let rc =
                unsafe { libc::madvise(mapping.ptr().as_ptr().cast(), len, MADV_POPULATE_WRITE) };
            Errno::result(rc).map_err(sys_err("madvise(MADV_POPULATE_WRITE)"))?;
        }
        let uffd = opened.fd;
        sys::register(
            uffd.as_fd(),
            mapping.addr(),
            len as u64,
            sys::UFFDIO_REGISTER_MODE_WP,
        )
        .map_err(sys_err("UFFDIO_REGISTER (write-protect)"))?;
        sys::writeprotect(uffd.as_fd(), mapping.addr(), len as u64, true)
            .map_err(sys_err("UFFDIO_WRITEPROTECT"))?;
        let uffd = Arc::new(uffd);
        let engine = match mode {
            WpMode::Async => Engine::Async {
                pagemap: File::open("/proc/self/pagemap").map_err(WpError::Pagemap)?,
                buf: vec![PageRegion::default(); SCAN_BATCH],
            },
            WpMode::Sync => {
                let shutdown = Arc::new(
                    EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC)
                        .map_err(sys_err("eventfd"))?,
                );
                let state = Arc::new(Mutex::new(SyncState {
                    dirty: vec![0; (len / page).div_ceil(64)],
                    error: None,
                }));
                let handler = SyncHandler {
                    uffd: uffd.clone(),
                    shutdown: shutdown.clone(),
                    state: state.clone(),
                    start: mapping.addr(),
                    len: len as u64,
                    page: page as u64,
                };
                let join = thread::Builder::new()
                    .name(WP_THREAD_NAME.into())
                    .spawn(move || handler.run())
                    .map_err(WpError::Spawn)?;
                Engine::Sync {
                    state,
                    shutdown,
                    handler: Some(join),
                }
            }
        };
        Ok(Self {
            engine,
            uffd,
            mapping,
            mode,
            via: opened.via,
            page,
        })
    }

    /// The mode in use.
    pub fn mode(&self) -> WpMode {
        self.mode
    }

    /// How the userfaultfd was obtained.
    pub fn opened_via(&self) -> OpenedVia {
        self.via
    }

    /// The region's first byte. Writes through it from any thread are
    /// tracked; the region lives as long as `self`.
    pub fn as_ptr(&self) -> *mut u8 {
        self.mapping.ptr().as_ptr()
    }

    /// The region's length in bytes.
    pub fn len(&self) -> usize {
        self.mapping.len()
    }

    /// Always false: a region has at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The page size tracking works in.
    pub fn page_size(&self) -> usize {
        self.page
    }

    /// The region's bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes owned by `self`;
        // writes through `as_ptr` from other threads while this borrow
        // lives are the caller's race to avoid, as with any shared memory.
        unsafe { std::slice::from_raw_parts(self.as_ptr(), self.len()) }
    }

    /// The region's bytes, to write from this thread.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as `as_slice`; `&mut self` excludes other borrows made
        // through this value.
        unsafe { std::slice::from_raw_parts_mut(self.as_ptr(), self.len()) }
    }

    /// Byte ranges written since the last call, page aligned, ascending,
    /// merged; tracking is armed again before it returns.
    pub fn collect(&mut self) -> Result<Vec<Range<usize>>, WpError> {
        let start = self.mapping.addr();
        let end = start + self.len() as u64;
        match &mut self.engine {
            Engine::Async { pagemap, buf } => {
                let mut ranges: Vec<Range<usize>> = Vec::new();
                let mut at = start;
                while at < end {
                    let (n, walk_end) = sys::pagemap_scan_written(pagemap.as_fd(), at, end, buf)
                        .map_err(sys_err("PAGEMAP_SCAN"))?;
                    for r in &buf[..n] {
                        push_merged(
                            &mut ranges,
                            (r.start - start) as usize..(r.end - start) as usize,
                        );
                    }
                    if walk_end <= at {
                        // The kernel made no progress: it would loop forever.
                        return Err(WpError::Sys {
                            what: "PAGEMAP_SCAN (no progress)",
                            errno: Errno::EIO,
                        });
                    }
                    at = walk_end;
                }
                Ok(ranges)
            }
            Engine::Sync { state, .. } => {
                let mut state = state.lock();
                if let Some(e) = &state.error {
                    return Err(WpError::Handler(e.clone()));
                }
                let page = self.page;
                let mut ranges: Vec<Range<usize>> = Vec::new();
                for (w, word) in state.dirty.iter_mut().enumerate() {
                    let mut bits = std::mem::take(word);
                    while bits != 0 {
                        let i = w * 64 + bits.trailing_zeros() as usize;
                        bits &= bits - 1;
                        push_merged(&mut ranges, i * page..(i + 1) * page);
                    }
                }
                for r in &ranges {
                    sys::writeprotect(
                        self.uffd.as_fd(),
                        start + r.start as u64,
                        (r.end - r.start) as u64,
                        true,
                    )
                    .map_err(sys_err("UFFDIO_WRITEPROTECT (re-arm)"))?;
                }
                Ok(ranges)
            }
        }
    }
}

/// What one [`DirtyTracker::push_dirty`] cycle sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushReport {
    /// The ranges written since the previous cycle, as sent.
    pub ranges: Vec<Range<usize>>,
    /// Bytes sent.
    pub bytes: u64,
}

/// Why a push cycle failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// Finding the dirty pages failed.
    #[error(transparent)]
    Track(#[from] WpError),
    /// The peer refused a write or the sync.
    #[error("pushing {len} bytes at {offset}: {source}")]
    Backend {
        offset: u64,
        len: u64,
        source: backends::BackendError,
    },
}

impl DirtyTracker {
    /// One pre-copy cycle: collects the pages written since the last
    /// cycle and writes them (and only them) to `peer` at the same
    /// offsets, then syncs it.
    ///
    /// Pages are read after `collect` re-armed tracking, so a write racing
    /// with the read is either in the bytes sent or reported next cycle.
    /// After an error the pages of this cycle are not reported again: the
    /// caller must resend everything (or stop).
    pub fn push_dirty(
        &mut self,
        peer: &backends::BlockingBackend,
    ) -> Result<PushReport, PushError> {
        let ranges = self.collect()?;
        let mut bytes = 0;
        for r in &ranges {
            let data = &self.as_slice()[r.clone()];
            peer.write_at(data, r.start as u64)
                .map_err(|source| PushError::Backend {
                    offset: r.start as u64,
                    len: data.len() as u64,
                    source,
                })?;
            bytes += data.len() as u64;
        }
        peer.sync().map_err(|source| PushError::Backend {
            offset: 0,
            len: 0,
            source,
        })?;
        Ok(PushReport { ranges, bytes })
    }
}

fn push_merged(ranges: &mut Vec<Range<usize>>, r: Range<usize>) {
    match ranges.last_mut() {
        Some(last) if last.end == r.start => last.end = r.end,
        _ => ranges.push(r),
    }
}

impl Drop for DirtyTracker {
    fn drop(&mut self) {
        if let Engine::Sync {
            shutdown, handler, ..
        } = &mut self.engine
        {
            if let Some(join) = handler.take() {
                if let Err(errno) = shutdown.write(1) {
                    // Not ignorable: the thread cannot be told to stop, so
                    // joining would hang; it is left running and holds the
                    // userfaultfd until the process exits.
                    tracing::error!(%errno, "signalling the uffd-wp handler failed; leaking it");
                    return;
                }
                if join.join().is_err() {
                    tracing::error!("the uffd-wp handler thread panicked");
                }
            }
        }
    }
}

/// The sync mode's fault server.
struct SyncHandler {
    uffd: Arc<OwnedFd>,
    shutdown: Arc<EventFd>,
    state: Arc<Mutex<SyncState>>,
    start: u64,
    len: u64,
    page: u64,
}

impl SyncHandler {
    fn run(self) {
        if let Err(e) = self.serve() {
            tracing::error!(error = %e, "uffd-wp handler stopped");
            self.state.lock().error = Some(e);
        }
    }

    fn serve(&self) -> Result<(), String> {
        let mut buf = [0u8; UFFD_MSG_SIZE * 16];
        loop {
            let mut fds = [
                PollFd::new(self.uffd.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.shutdown.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(format!("poll: {e}")),
            }
            if fds[1].any().unwrap_or(false) {
                return Ok(());
            }
            // SAFETY: reads into our own buffer; the fd is non-blocking.
            let n =
                unsafe { libc::read(self.uffd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            let n = match Errno::result(n) {
                Ok(n) => n as usize,
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                Err(e) => return Err(format!("reading fault messages: {e}")),
            };
            for raw in buf[..n].chunks_exact(UFFD_MSG_SIZE) {
                let mut msg = [0u8; UFFD_MSG_SIZE];
                msg.copy_from_slice(raw);
                match UffdMsg::parse(&msg) {
                    UffdMsg::Pagefault { flags, address }
                        if flags & UFFD_PAGEFAULT_FLAG_WP != 0 =>
                    {
                        self.record(address)?;
                    }
                    other => tracing::warn!(?other, "unexpected userfaultfd message"),
                }
            }
        }
    }

    /// Marks the page dirty and lets the writer go, under the lock
    /// `collect` takes (see the module docs).
    fn record(&self, address: u64) -> Result<(), String> {
        if !(self.start..self.start + self.len).contains(&address) {
            return Err(format!("fault at {address:#x} outside the region"));
        }
        let page = (address - self.start) / self.page;
        let mut state = self.state.lock();
        state.dirty[(page / 64) as usize] |= 1 << (page % 64);
        match sys::writeprotect(
            self.uffd.as_fd(),
            self.start + page * self.page,
            self.page,
            false,
        ) {
            Ok(()) => Ok(()),
            // The region is going away under a writer the process is
            // tearing down; nothing is left to protect.
            Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(format!("unprotecting page {page}: {e}")),
        }
    }
}
