//! The background pull of a post-copy region: worker threads that fetch
//! every chunk in order and install it with `UFFDIO_COPY`, while the fault
//! handler keeps serving the chunks the application touches first (QEMU's
//! post-copy: the source streams pages while faults jump the queue).
//!
//! A worker and the handler may install the same chunk at once; whoever
//! comes second gets `EEXIST` for the pages already there and keeps them,
//! so each page is filled once. The source must not change while the region
//! fills (post-copy's source is stopped), since a page is never refreshed.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use backends::BlockingBackend;
use parking_lot::Mutex;

use crate::handler::{install_range, AlignedBuf, Geometry, HandlerError, Shared};

/// How far a background pull has come; shared with the region's owner.
#[derive(Debug, Default)]
pub struct BackgroundPull {
    chunks: u64,
    next: AtomicU64,
    /// Chunks a worker fetched and installed (pages the handler had
    /// installed already kept).
    installed: AtomicU64,
    workers_left: AtomicU64,
    stop: AtomicBool,
    error: Mutex<Option<HandlerError>>,
}

impl BackgroundPull {
    /// Chunks in the region.
    pub fn chunks(&self) -> u64 {
        self.chunks
    }

    /// Chunks the workers installed so far.
    pub fn installed(&self) -> u64 {
        self.installed.load(Ordering::SeqCst)
    }

    /// Every worker has stopped: all chunks installed, or an error, or the
    /// region is being dropped.
    pub fn finished(&self) -> bool {
        self.workers_left.load(Ordering::SeqCst) == 0
    }

    /// Why a worker stopped early, if one did.
    pub fn error(&self) -> Option<HandlerError> {
        self.error.lock().clone()
    }

    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Starts `workers` threads pulling every chunk of the region.
pub(crate) fn spawn(
    workers: usize,
    uffd: Arc<OwnedFd>,
    handler: Arc<Shared>,
    geometry: Geometry,
    source: BlockingBackend,
) -> std::io::Result<(Arc<BackgroundPull>, Vec<JoinHandle<()>>)> {
    let progress = Arc::new(BackgroundPull {
        chunks: geometry.size.div_ceil(geometry.chunk_size),
        workers_left: AtomicU64::new(workers as u64),
        ..BackgroundPull::default()
    });
    let mut joins = Vec::with_capacity(workers);
    for i in 0..workers {
        let (uffd, source, progress_w) = (uffd.clone(), source.clone(), progress.clone());
        let handler = handler.clone();
        let spawned = thread::Builder::new()
            .name(format!("uffd-pull-{i}"))
            .spawn(move || {
                if let Err(e) = pull(&uffd, &handler, &geometry, &source, &progress_w) {
                    tracing::error!(error = %e, "background pull stopped");
                    progress_w.error.lock().get_or_insert(e);
                    progress_w.stop();
                }
                progress_w.workers_left.fetch_sub(1, Ordering::SeqCst);
            });
        match spawned {
            Ok(join) => joins.push(join),
            Err(e) => {
                // The ones started stop at their next chunk; the count of
                // workers left must not wait for threads that never ran.
                progress.stop();
                progress
                    .workers_left
                    .fetch_sub((workers - i) as u64, Ordering::SeqCst);
                for join in joins {
                    let _ = join.join();
                }
                return Err(e);
            }
        }
    }
    Ok((progress, joins))
}

fn pull(
    uffd: &OwnedFd,
    handler: &Shared,
    geometry: &Geometry,
    source: &BlockingBackend,
    progress: &BackgroundPull,
) -> Result<(), HandlerError> {
    let mut buf = AlignedBuf::new(geometry.chunk_size as usize, geometry.page_size as usize);
    // A stopped handler closes its descriptor only once every worker has
    // let go of it: give it up at the next chunk.
    while !progress.stop.load(Ordering::SeqCst) && handler.error.lock().is_none() {
        let chunk = progress.next.fetch_add(1, Ordering::SeqCst);
        if chunk >= progress.chunks {
            return Ok(());
        }
        let (offset, len) = geometry.chunk(chunk as usize);
        source
            .read_exact_at(buf.prefix_mut(len as usize), offset)
            .map_err(|e| HandlerError::Fetch {
                chunk: chunk as usize,
                offset,
                len,
                attempts: 1,
                source: Arc::new(e),
            })?;
        // SAFETY: `buf` holds the `len` fetched bytes and is not touched
        // during the call; the chunk lies inside the region, registered with
        // `uffd` and mapped until the region's drop has joined this thread.
        unsafe { install_range(uffd.as_fd(), geometry, buf.as_ptr(), offset, len, true)? };
        progress.installed.fetch_add(1, Ordering::SeqCst);
    }
    Ok(())
}
