//! The fault-handling thread: reads fault events, fetches chunks from the
//! source, installs them with `UFFDIO_COPY`.
//!
//! One thread serves every fault of a region, one at a time: the thesis's
//! design (3.1), and the one whose latency the benchmark measures.
//!
//! # Races it handles
//!
//! - **Duplicate faults.** Two threads touching the same missing chunk both
//!   raise an event. The first event installs the whole chunk and wakes
//!   every thread waiting anywhere in it; the second event then finds the
//!   chunk installed. `mincore` confirms its page is present and the event
//!   is dropped: the kernel re-checks the page table after queueing a
//!   waiter, so a thread either was queued before the wake or never sleeps.
//! - **Stats before wake.** Chunks are copied with `DONTWAKE`, the stats
//!   updated, and only then the chunk woken, so a thread resuming from a
//!   fault sees that fault in `stats()`. Duplicate events are counted when
//!   read, which may be after their thread resumed.
//! - **Discarded pages.** If the application drops installed pages
//!   (`MADV_DONTNEED`), touching them again raises a fresh MISSING fault on
//!   an installed chunk; `mincore` says the page is absent, so the chunk is
//!   fetched again. No `UFFD_EVENT_REMOVE` subscription is needed for this.
//! - **`EEXIST`.** Some page of the chunk is already present (a refetch after
//!   a partial discard): the copy continues page by page, keeping present
//!   pages, since `UFFDIO_COPY` refuses any range holding a present page.
//! - **`EAGAIN`.** With progress, the copy resumes where the kernel stopped.
//!   Without progress the kernel reports the address space changing under a
//!   non-cooperative event; this handler subscribes to none, so it only
//!   yields and retries, a bounded number of times. A handler that enabled
//!   `UFFD_EVENT_REMOVE` or `UNMAP` would have to read the pending event
//!   before retrying, or it would spin against itself.
//!
//! # What a production handler would add
//!
//! Several faults in flight at once (one slow fetch here stalls every other
//! fault), background pulling of chunks nobody touched yet, and handling of
//! `mremap`/`munmap` of the region (both unsupported; see the crate docs).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use backends::{BackendError, BlockingBackend};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::EventFd;
use parking_lot::Mutex;

use crate::stats::FaultStats;
use crate::sys::{self, CopyOutcome, UffdMsg, UFFD_MSG_SIZE, UFFD_PAGEFAULT_FLAG_WRITE};

/// Name of the handler thread (at most 15 bytes: the kernel's limit).
pub(crate) const THREAD_NAME: &str = "uffd-handler";

/// Attempts per chunk fetch, the first included.
pub const FETCH_ATTEMPTS: u32 = 3;
/// Pause before the second attempt; doubles for each further one.
const FETCH_BACKOFF: Duration = Duration::from_millis(2);
/// `UFFDIO_COPY` calls in a row answered with `EAGAIN` and no progress
/// before the handler gives up.
const MAX_COPY_STALLS: u32 = 1_000;
/// Events read per `read(2)`.
const EVENT_BATCH: usize = 16;

/// Why the handler stopped serving faults.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HandlerError {
    /// The source failed to deliver a chunk, every attempt.
    #[error("fetching chunk {chunk} ({len} bytes at source offset {offset}) failed after {attempts} attempt(s)")]
    Fetch {
        /// The chunk index.
        chunk: usize,
        /// Its offset in the source.
        offset: u64,
        /// Its length.
        len: u64,
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        #[source]
        source: Arc<BackendError>,
    },
    /// `UFFDIO_COPY` failed.
    #[error("UFFDIO_COPY of {len} bytes at region offset {offset} failed: {errno}")]
    Copy {
        /// Region offset of the first byte not installed.
        offset: u64,
        /// Bytes that were still to install.
        len: u64,
        /// The kernel's answer.
        errno: Errno,
    },
    /// `UFFDIO_WAKE` failed.
    #[error("UFFDIO_WAKE of {len} bytes at region offset {offset} failed: {errno}")]
    Wake {
        /// Region offset of the chunk.
        offset: u64,
        /// Its length.
        len: u64,
        /// The kernel's answer.
        errno: Errno,
    },
    /// `UFFDIO_COPY` kept answering `EAGAIN` without progress.
    #[error("UFFDIO_COPY at region offset {offset} made no progress after {stalls} EAGAIN answers in a row; allowed: {max}")]
    CopyStalled {
        /// Region offset of the first byte not installed.
        offset: u64,
        /// `EAGAIN` answers in a row.
        stalls: u32,
        /// The limit.
        max: u32,
    },
    /// The kernel claimed to copy more than was asked.
    #[error("UFFDIO_COPY at region offset {offset} reported {copied} bytes copied of {requested} requested")]
    CopyOverreport {
        /// Region offset of the copy.
        offset: u64,
        /// What the kernel reported.
        copied: u64,
        /// What was asked.
        requested: u64,
    },
    /// A fault arrived for an address outside the region.
    #[error("page fault at {address:#x} is outside the region {start:#x}..{end:#x}")]
    OutsideRegion {
        /// The faulting address.
        address: u64,
        /// Region start.
        start: u64,
        /// Region end (exclusive).
        end: u64,
    },
    /// `poll(2)` on the userfaultfd and shutdown eventfd failed.
    #[error("polling the userfaultfd failed: {0}")]
    Poll(Errno),
    /// The userfaultfd reported an error or hang-up condition.
    #[error("the userfaultfd reported {revents}: it can deliver no more faults")]
    PollCondition {
        /// The returned poll flags.
        revents: String,
    },
    /// Reading events failed.
    #[error("reading userfaultfd events failed: {0}")]
    Read(Errno),
    /// A read returned a partial message.
    #[error(
        "userfaultfd read returned {len} bytes, not a multiple of the {UFFD_MSG_SIZE}-byte message"
    )]
    TruncatedMessage {
        /// Bytes returned.
        len: usize,
    },
    /// A read returned end of file.
    #[error("userfaultfd read returned end of file")]
    Eof,
    /// `mincore(2)` failed while checking a duplicate fault.
    #[error("mincore on page {address:#x} failed: {errno}")]
    Mincore {
        /// The page.
        address: u64,
        /// The kernel's answer.
        errno: Errno,
    },
}

/// State the handler shares with its [`crate::UffdRegion`].
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub stats: Mutex<FaultStats>,
    pub error: Mutex<Option<HandlerError>>,
}

/// Where the region is and how it is cut.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    pub start: u64,
    pub size: u64,
    pub chunk_size: u64,
    pub page_size: u64,
}

impl Geometry {
    /// Region offset and length of chunk `index`; the last may be short.
    pub(crate) fn chunk(&self, index: usize) -> (u64, u64) {
        let offset = index as u64 * self.chunk_size;
        (offset, self.chunk_size.min(self.size - offset))
    }
}

/// A page-aligned buffer of `len` bytes, without `unsafe`: a `Vec` one page
/// longer than needed, used from its first aligned byte.
#[derive(Debug)]
pub(crate) struct AlignedBuf {
    storage: Vec<u8>,
    offset: usize,
    len: usize,
}

impl AlignedBuf {
    pub(crate) fn new(len: usize, align: usize) -> Self {
        let storage = vec![0u8; len + align];
        let offset = storage.as_ptr().align_offset(align);
        assert!(
            offset < align,
            "cannot align a {len}-byte buffer to {align} bytes (offset {offset})"
        );
        Self {
            storage,
            offset,
            len,
        }
    }

    pub(crate) fn prefix_mut(&mut self, len: usize) -> &mut [u8] {
        assert!(
            len <= self.len,
            "asked for {len} bytes of a {}-byte buffer",
            self.len
        );
        &mut self.storage[self.offset..self.offset + len]
    }

    pub(crate) fn as_ptr(&self) -> *const u8 {
        self.storage[self.offset..].as_ptr()
    }
}

/// What installing one chunk took.
#[derive(Debug, Default)]
pub(crate) struct InstallReport {
    eagain_retries: u64,
    eexist_fallbacks: u64,
}

/// The handler's state; owned by its thread.
#[derive(Debug)]
pub(crate) struct Handler {
    /// Shared with the background pull's workers while they run; the
    /// last holder's drop closes it, which unregisters the range and wakes
    /// every waiting thread.
    uffd: Arc<OwnedFd>,
    shutdown: Arc<EventFd>,
    shared: Arc<Shared>,
    source: BlockingBackend,
    geometry: Geometry,
    /// `installed[c]`: chunk `c` was installed in full. Only this thread
    /// reads or writes it, so no lock.
    installed: Vec<bool>,
    buf: AlignedBuf,
}

impl Handler {
    pub(crate) fn new(
        uffd: Arc<OwnedFd>,
        shutdown: Arc<EventFd>,
        shared: Arc<Shared>,
        source: BlockingBackend,
        geometry: Geometry,
    ) -> Self {
        let chunks = geometry.size.div_ceil(geometry.chunk_size) as usize;
        Self {
            uffd,
            shutdown,
            shared,
            source,
            geometry,
            installed: vec![false; chunks],
            buf: AlignedBuf::new(geometry.chunk_size as usize, geometry.page_size as usize),
        }
    }

    /// Serves faults until shutdown or the first error.
    ///
    /// On error the error is published first and the userfaultfd closed
    /// second (when `self` drops): closing unregisters the range and wakes
    /// every blocked faulting thread, which then finds zero-filled pages, so
    /// a thread woken this way already sees the error in `error()`.
    fn run(mut self) {
        if let Err(e) = self.serve() {
            tracing::error!(
                error = %e,
                "uffd handler stopped; closing the userfaultfd, so untouched pages now read as zeros"
            );
            *self.shared.error.lock() = Some(e);
        }
    }

    fn serve(&mut self) -> Result<(), HandlerError> {
        let mut raw = [0u8; UFFD_MSG_SIZE * EVENT_BATCH];
        loop {
            if self.wait()? == Wake::Shutdown {
                return Ok(());
            }
            let n = match nix::unistd::read(self.uffd.as_raw_fd(), &mut raw) {
                Ok(0) => return Err(HandlerError::Eof),
                Ok(n) => n,
                // Readiness can be stale: a waiter may have given up (a
                // fatal signal) between poll and read.
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                Err(errno) => return Err(HandlerError::Read(errno)),
            };
            let read_at = Instant::now();
            if n % UFFD_MSG_SIZE != 0 {
                return Err(HandlerError::TruncatedMessage { len: n });
            }
            for msg in raw[..n].chunks_exact(UFFD_MSG_SIZE) {
                let msg: &[u8; UFFD_MSG_SIZE] = msg
                    .try_into()
                    .map_err(|_| HandlerError::TruncatedMessage { len: msg.len() })?;
                match UffdMsg::parse(msg) {
                    UffdMsg::Pagefault { flags, address } => {
                        self.serve_fault(flags, address, read_at)?
                    }
                    UffdMsg::Other { event } => tracing::warn!(
                        event = format_args!("{event:#x}"),
                        "ignoring a userfaultfd event this handler never subscribed to"
                    ),
                }
            }
        }
    }

    /// Blocks until a fault is pending or shutdown is signalled.
    fn wait(&self) -> Result<Wake, HandlerError> {
        let mut fds = [
            PollFd::new(self.uffd.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.shutdown.as_fd(), PollFlags::POLLIN),
        ];
        loop {
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => break,
                Err(Errno::EINTR) => continue,
                Err(errno) => return Err(HandlerError::Poll(errno)),
            }
        }
        let revents = |fd: &PollFd<'_>| fd.revents().unwrap_or(PollFlags::empty());
        // Shutdown wins over pending faults: closing the userfaultfd on the
        // way out wakes any thread still waiting.
        if !revents(&fds[1]).is_empty() {
            return Ok(Wake::Shutdown);
        }
        let uffd = revents(&fds[0]);
        if uffd.intersects(PollFlags::POLLERR | PollFlags::POLLHUP | PollFlags::POLLNVAL) {
            return Err(HandlerError::PollCondition {
                revents: format!("{uffd:?}"),
            });
        }
        Ok(Wake::Fault)
    }

    fn serve_fault(
        &mut self,
        flags: u64,
        address: u64,
        read_at: Instant,
    ) -> Result<(), HandlerError> {
        let Geometry {
            start,
            size,
            chunk_size,
            page_size,
        } = self.geometry;
        let offset = address.checked_sub(start).filter(|&o| o < size).ok_or(
            HandlerError::OutsideRegion {
                address,
                start,
                end: start + size,
            },
        )?;
        let chunk = (offset / chunk_size) as usize;
        let write = flags & UFFD_PAGEFAULT_FLAG_WRITE != 0;

        let mut refetch = false;
        if self.installed[chunk] {
            let page = address & !(page_size - 1);
            if page_resident(page, page_size)? {
                let cpu = current_cpu();
                let mut stats = self.shared.stats.lock();
                stats.faults += 1;
                stats.write_faults += u64::from(write);
                stats.duplicate_faults += 1;
                stats.count_cpu(cpu);
                return Ok(());
            }
            tracing::debug!(
                chunk,
                page,
                "installed chunk lost a page; fetching it again"
            );
            refetch = true;
        }

        let (chunk_offset, len) = self.geometry.chunk(chunk);
        self.fetch(chunk, chunk_offset, len)?;
        let report = self.install(chunk_offset, len)?;
        self.installed[chunk] = true;
        let elapsed = read_at.elapsed();
        let cpu = current_cpu();

        {
            let mut stats = self.shared.stats.lock();
            stats.faults += 1;
            stats.write_faults += u64::from(write);
            stats.chunks_installed += 1;
            stats.chunks_refetched += u64::from(refetch);
            stats.bytes_fetched += len;
            stats.eagain_retries += report.eagain_retries;
            stats.eexist_fallbacks += report.eexist_fallbacks;
            stats.record_service(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
            stats.count_cpu(cpu);
        }
        // Wake only now, after the stats include this chunk: a thread that
        // resumes from this fault and reads `stats()` must see its own fault.
        // One wake also covers every copy a partial or page-by-page install
        // needed.
        sys::wake(self.uffd.as_fd(), self.geometry.start + chunk_offset, len).map_err(|errno| {
            HandlerError::Wake {
                offset: chunk_offset,
                len,
                errno,
            }
        })
    }

    /// Reads chunk `chunk` into the buffer, retrying transient failures.
    fn fetch(&mut self, chunk: usize, offset: u64, len: u64) -> Result<(), HandlerError> {
        let buf = self.buf.prefix_mut(len as usize);
        let mut attempt = 1;
        loop {
            match self.source.read_exact_at(buf, offset) {
                Ok(()) => return Ok(()),
                Err(e) if attempt < FETCH_ATTEMPTS && is_transient(&e) => {
                    tracing::warn!(chunk, offset, attempt, error = %e, "chunk fetch failed; retrying");
                    self.shared.stats.lock().fetch_retries += 1;
                    thread::sleep(FETCH_BACKOFF * 2u32.pow(attempt - 1));
                    attempt += 1;
                }
                Err(e) => {
                    return Err(HandlerError::Fetch {
                        chunk,
                        offset,
                        len,
                        attempts: attempt,
                        source: Arc::new(e),
                    })
                }
            }
        }
    }

    /// Installs the first `len` buffered bytes at region offset `offset`.
    fn install(&self, offset: u64, len: u64) -> Result<InstallReport, HandlerError> {
        // SAFETY: `self.buf` holds at least `len` bytes (the chunk fetched
        // into it) and is not touched during the call; the range is a chunk
        // of the region registered with `self.uffd`.
        unsafe {
            install_range(
                self.uffd.as_fd(),
                &self.geometry,
                self.buf.as_ptr(),
                offset,
                len,
                false,
            )
        }
    }
}

/// Installs `len` bytes from `src` at region offset `offset` with
/// `UFFDIO_COPY`, keeping pages already present (`EEXIST`: copied page by
/// page) and resuming after partial copies. `wake` wakes threads waiting
/// on the range; the fault handler copies without waking and wakes later.
///
/// # Safety
///
/// `src..src + len` must be readable and unchanged for the call, and
/// `offset..offset + len` must lie inside the region `geometry` describes,
/// registered with `uffd` and mapped for the whole call.
pub(crate) unsafe fn install_range(
    uffd: BorrowedFd<'_>,
    geometry: &Geometry,
    src: *const u8,
    offset: u64,
    len: u64,
    wake: bool,
) -> Result<InstallReport, HandlerError> {
    let mut report = InstallReport::default();
    let mut done = 0u64;
    let mut page_by_page = false;
    let mut stalls = 0u32;
    while done < len {
        let step = if page_by_page {
            geometry.page_size
        } else {
            len - done
        };
        let dst = geometry.start + offset + done;
        // SAFETY: the source is `step` bytes of `src..src + len`
        // (`done + step <= len`), readable per the caller. The
        // destination lies inside the registered region per the caller;
        // the kernel only fills pages that are missing, which no one can
        // have observed.
        let outcome = unsafe { sys::copy(uffd, dst, src.add(done as usize), step, wake) };
        match outcome {
            CopyOutcome::Done => {
                done += step;
                stalls = 0;
            }
            CopyOutcome::Partial { copied } if copied <= step => {
                done += copied;
                stalls = 0;
                report.eagain_retries += 1;
            }
            CopyOutcome::Partial { copied } => {
                return Err(HandlerError::CopyOverreport {
                    offset: offset + done,
                    copied,
                    requested: step,
                })
            }
            CopyOutcome::Failed(Errno::EAGAIN) => {
                stalls += 1;
                report.eagain_retries += 1;
                if stalls >= MAX_COPY_STALLS {
                    return Err(HandlerError::CopyStalled {
                        offset: offset + done,
                        stalls,
                        max: MAX_COPY_STALLS,
                    });
                }
                thread::yield_now();
            }
            // This page is present already: keep it.
            CopyOutcome::Failed(Errno::EEXIST) if page_by_page => done += step,
            CopyOutcome::Failed(Errno::EEXIST) => {
                page_by_page = true;
                report.eexist_fallbacks += 1;
            }
            CopyOutcome::Failed(errno) => {
                return Err(HandlerError::Copy {
                    offset: offset + done,
                    len: len - done,
                    errno,
                })
            }
        }
    }
    Ok(report)
}

/// Why `poll` returned.
#[derive(Debug, PartialEq, Eq)]
enum Wake {
    Fault,
    Shutdown,
}

/// Source errors worth another attempt: the medium or the remote failed.
/// Range and alignment errors and a closed backend will not change.
fn is_transient(e: &BackendError) -> bool {
    matches!(e, BackendError::Io(_) | BackendError::Remote(_))
}

/// Whether the page at `page` (page aligned, inside the region) is present.
fn page_resident(page: u64, page_size: u64) -> Result<bool, HandlerError> {
    let mut vec = [0u8; 1];
    // SAFETY: mincore only inspects the page tables of `page..page +
    // page_size`, a page of our own mapping, and writes one byte per page
    // into `vec`, which has room for exactly that one page.
    let rc = unsafe {
        libc::mincore(
            page as *mut libc::c_void,
            page_size as usize,
            vec.as_mut_ptr(),
        )
    };
    Errno::result(rc).map_err(|errno| HandlerError::Mincore {
        address: page,
        errno,
    })?;
    Ok(vec[0] & 1 == 1)
}

/// The CPU this thread runs on now, if the kernel says.
fn current_cpu() -> Option<usize> {
    // SAFETY: sched_getcpu takes no arguments and touches no memory of ours.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).ok()
}

/// Starts `handler` on a new thread named [`THREAD_NAME`], pinned to `cpu`
/// if given; returns once the thread is pinned and about to serve.
pub(crate) fn spawn(
    handler: Handler,
    cpu: Option<usize>,
) -> Result<JoinHandle<()>, crate::UffdError> {
    let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), Errno>>(1);
    let join = thread::Builder::new()
        .name(THREAD_NAME.into())
        .spawn(move || {
            if let Some(cpu) = cpu {
                if let Err(errno) = pin_current_thread(cpu) {
                    // Dropping `handler` closes the userfaultfd; nothing can
                    // have faulted yet because `open` has not returned.
                    let _ = ready_tx.send(Err(errno));
                    return;
                }
            }
            let _ = ready_tx.send(Ok(()));
            handler.run();
        })
        .map_err(crate::UffdError::Spawn)?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(join),
        Ok(Err(errno)) => {
            let _ = join.join();
            Err(crate::UffdError::Pin {
                cpu: cpu.unwrap_or_default(),
                errno,
            })
        }
        Err(mpsc::RecvError) => {
            let _ = join.join();
            Err(crate::UffdError::HandlerStart)
        }
    }
}

fn pin_current_thread(cpu: usize) -> Result<(), Errno> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_chunk_is_short() {
        let g = Geometry {
            start: 0x10_0000,
            size: 3 * 65536 + 8192,
            chunk_size: 65536,
            page_size: 4096,
        };
        assert_eq!(g.chunk(0), (0, 65536));
        assert_eq!(g.chunk(2), (2 * 65536, 65536));
        assert_eq!(g.chunk(3), (3 * 65536, 8192));
    }

    #[test]
    fn aligned_buf_is_page_aligned() {
        for _ in 0..8 {
            let mut buf = AlignedBuf::new(3 * 4096, 4096);
            assert_eq!(buf.as_ptr() as usize % 4096, 0);
            assert_eq!(buf.prefix_mut(3 * 4096).len(), 3 * 4096);
        }
    }

    #[test]
    fn only_medium_failures_are_retried() {
        assert!(is_transient(&BackendError::Remote("reset".into())));
        assert!(is_transient(&BackendError::Io(std::io::Error::other(
            "eio"
        ))));
        assert!(!is_transient(&BackendError::Closed));
        assert!(!is_transient(&BackendError::OutOfRange {
            offset: 0,
            len: 1,
            size: 0
        }));
    }
}
