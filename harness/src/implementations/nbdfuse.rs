//! `nbdfuse`: libnbd's `nbdfuse` across the link to the source's NBD
//! server, its file mapped and read. The reference for `nbd-direct`, which
//! does the same with the project's NBD client and FUSE file: same export,
//! same link, same workload.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use fusefs::nbdfuse::{NbdFuse, NbdFuseOptions, NBDFUSE};

use super::{
    open_link, read_and_verify, Axis, CellContext, CellOutcome, Descriptor, LinkRecord, Measured,
};
use crate::remote::{ServeOptions, Wire, NBD_EXPORT};

pub const DESCRIPTOR: Descriptor = Descriptor {
    name: "nbdfuse",
    summary: "libnbd's nbdfuse across the link to the source's NBD server, its file mmap'ed: the reference for nbd-direct",
    axes: &[Axis::Rtt, Axis::Placement],
    needs: &[],
    wire: Some(Wire::Nbd),
    read_only: Some("it mounts nbdfuse --readonly: it is the reference for reads"),
    run,
};

/// Tells apart the mount points of one process's cells.
static MOUNTS: AtomicU64 = AtomicU64::new(0);

fn run(ctx: &CellContext) -> CellOutcome {
    let spec = ctx.spec;
    if let Err(e) = fusefs::nbdfuse::available() {
        return CellOutcome::Skipped(e.to_string());
    }
    if !fusefs::device_available() {
        return CellOutcome::Skipped("/dev/fuse cannot be opened".into());
    }
    let (link, rtt) = match open_link(ctx, Wire::Nbd, ServeOptions::default()) {
        Ok(opened) => opened,
        Err(e) => return CellOutcome::Failed(e),
    };

    let setup_start = Instant::now();
    // Across namespaces the client must dial from the destination's.
    let command = match ctx.network {
        Some(net) => net.dst.command(NBDFUSE),
        None => Command::new(NBDFUSE),
    };
    let dir = std::env::temp_dir().join(format!(
        "msb-nbdfuse-{}-{}",
        std::process::id(),
        MOUNTS.fetch_add(1, Ordering::Relaxed)
    ));
    let uri = fusefs::nbdfuse::tcp_uri(link.server_addr(), NBD_EXPORT);
    let fuse = match NbdFuse::mount(command, &dir, &uri, &NbdFuseOptions::default()) {
        Ok(f) => f,
        Err(e) => return CellOutcome::Failed(format!("mounting with nbdfuse: {e}")),
    };
    let map = match map_read_only(&fuse.path(), spec.region_bytes) {
        Ok(m) => m,
        Err(e) => return CellOutcome::Failed(e),
    };
    let setup = setup_start.elapsed();

    let read = match read_and_verify(ctx, &map) {
        Ok(r) => r,
        Err(e) => return CellOutcome::Failed(e),
    };
    drop(map);
    let carried = LinkRecord::of(&link, ctx, rtt);
    let unmounted = fuse.unmount();
    if let Err(e) = ctx.runtime.block_on(link.close()) {
        return CellOutcome::Failed(e);
    }
    if let Err(e) = unmounted {
        return CellOutcome::Failed(format!("unmounting nbdfuse: {e}"));
    }
    CellOutcome::Measured(Box::new(Measured::device_read(
        setup,
        read,
        carried,
        "nbdfuse",
        BTreeMap::new(),
    )))
}

/// The whole file, mapped shared and read-only, after checking its size.
fn map_read_only(path: &std::path::Path, expected: u64) -> Result<memmap2::Mmap, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    let size = file
        .metadata()
        .map_err(|e| format!("stat of {}: {e}", path.display()))?
        .len();
    if size != expected {
        return Err(format!(
            "nbdfuse shows {size} bytes, the cell expects {expected}"
        ));
    }
    // SAFETY: the file is nbdfuse's view of a read-only export that
    // nothing resizes while the cell runs.
    unsafe { memmap2::MmapOptions::new().len(size as usize).map(&file) }
        .map_err(|e| format!("mapping {}: {e}", path.display()))
}
