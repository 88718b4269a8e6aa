//! The NBD-based implementations (thesis 3.4-3.5, 4.4-4.5): the region is a
//! device (`/dev/nbdN` where the kernel has an NBD client, else a FUSE
//! file), mapped `MAP_SHARED` and read by the workload.
//!
//! - `nbd-direct`: the source serves NBD; the destination's NBD client
//!   talks to it across the link.
//! - `mount-direct`: a local NBD server whose backend is the source's
//!   service over the cell's transport.
//! - `mount-managed`: the same with the managed pipeline in between: whole
//!   chunks, a local cache, a background puller started before the device.
//!
//! `mount-direct` also varies where requests are cut into chunks for a
//! source whose store takes only whole chunks (thesis 3.5.2): on the client
//! (an [`ArbitraryReadWriterAt`] in front of the remote client) or on the
//! server (the source's server cuts them next to its store). The managed
//! mount is left off that axis: its cache, pulls and pushes are whole chunks
//! by construction, so it always cuts on the client.
//!
//! Write workloads write through the `MAP_SHARED` mapping and flush it
//! (`msync`); once the mount and the link are closed, the source's store
//! must hold the source's bytes with the writes applied.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use std::sync::Arc;

use backends::SharedBackend;
use chunks::{ArbitraryReadWriterAt, ChunkGeometry, PullHeuristic};
use mount::{DirectMount, ManagedMount, ManagedOptions, MountOptions, MountedRegion, RegionMap};
use results::LatencyHistogram;

use super::{
    emulator_error, read_and_verify, write_and_expect, Axis, CellContext, CellOutcome, Descriptor,
    IntegrityScope, Measured, ReadOutcome, WriteOutcome,
};
use crate::remote::{RemoteLink, ServeOptions, StoreChunking, Wire, NBD_EXPORT};
use crate::scenario::{ChunkingSide, PullHeuristic as PullOrder};

pub const NBD_DIRECT: Descriptor = Descriptor {
    name: "nbd-direct",
    summary: "an NBD client across the link to the source's NBD server, shown as a device (kernel NBD or FUSE file) and mmap'ed",
    axes: &[Axis::Rtt, Axis::Placement],
    needs: &[],
    wire: Some(Wire::Nbd),
    read_only: None,
    run: run_nbd_direct,
};

pub const MOUNT_DIRECT: Descriptor = Descriptor {
    name: "mount-direct",
    summary: "a local NBD server + client whose backend is the source's service over a transport, shown as a device and mmap'ed; requests cut into chunks on the client, the server, or not at all",
    axes: &[
        Axis::Rtt,
        Axis::ChunkSize,
        Axis::Placement,
        Axis::Transport,
        Axis::Chunking,
    ],
    needs: &[],
    wire: None,
    read_only: None,
    run: run_mount_direct,
};

pub const MOUNT_MANAGED: Descriptor = Descriptor {
    name: "mount-managed",
    summary: "the direct mount with chunking, a local cache, background pull (N workers, a heuristic order) and push",
    axes: &[
        Axis::Rtt,
        Axis::ChunkSize,
        Axis::Placement,
        Axis::Transport,
        Axis::PullWorkers,
        Axis::PullHeuristic,
    ],
    needs: &[],
    wire: None,
    read_only: None,
    run: run_managed,
};

/// The mount a cell opened.
enum Opened {
    Direct(DirectMount),
    Managed(ManagedMount),
}

impl Opened {
    fn region(&self) -> &MountedRegion {
        match self {
            Opened::Direct(m) => m.region(),
            Opened::Managed(m) => m.region(),
        }
    }

    fn close(self) -> Result<(), mount::MountError> {
        match self {
            Opened::Direct(m) => m.close(),
            Opened::Managed(m) => m.close(),
        }
    }
}

fn mount_options() -> MountOptions {
    MountOptions::default()
}

fn run_nbd_direct(ctx: &CellContext) -> CellOutcome {
    run_mounted(ctx, Wire::Nbd, |link, ctx| {
        let stream = link.dial()?;
        DirectMount::over_nbd(stream, NBD_EXPORT, mount_options(), ctx.runtime.handle())
            .map(Opened::Direct)
            .map_err(|e| format!("mounting the source's NBD export: {e}"))
    })
}

fn run_mount_direct(ctx: &CellContext) -> CellOutcome {
    let spec = ctx.spec;
    run_mounted(ctx, Wire::Rpc(spec.transport), |link, ctx| {
        let remote = link.client()?;
        let backend: SharedBackend = match spec.chunking {
            ChunkingSide::Client => {
                // The cell knows the region's size; asking the remote here
                // would add a round trip the other sides do not pay. The
                // mount checks the size the remote reports.
                let geometry = ChunkGeometry::new(spec.chunk_bytes, spec.region_bytes)
                    .map_err(|e| format!("chunking on the client: {e}"))?;
                Arc::new(ArbitraryReadWriterAt::with_geometry(remote, geometry))
            }
            ChunkingSide::Server | ChunkingSide::Unchunked => remote,
        };
        DirectMount::open(backend, mount_options(), ctx.runtime.handle())
            .map(Opened::Direct)
            .map_err(|e| format!("opening the direct mount: {e}"))
    })
}

/// How the source serves a cell: its store chunked as the cell's chunking
/// axis says (for implementations that vary it), a store of its own when
/// the cell writes.
fn serve_options(spec: &crate::scenario::CellSpec) -> ServeOptions {
    let chunking = if spec.implementation.axes.contains(&Axis::Chunking) {
        StoreChunking::of(spec.chunking, spec.chunk_bytes)
    } else {
        StoreChunking::Any
    };
    ServeOptions {
        chunking,
        writable: spec.workload.writes(),
    }
}

fn run_managed(ctx: &CellContext) -> CellOutcome {
    let spec = ctx.spec;
    let chunk_count = spec.region_bytes / spec.chunk_bytes;
    let heuristic = match spec.pull_heuristic {
        PullOrder::Linear => PullHeuristic::Linear,
        PullOrder::Reverse => PullHeuristic::Reverse,
        PullOrder::Random => PullHeuristic::Random { seed: 1 },
        PullOrder::Trace => PullHeuristic::Order(first_touch_order(
            ctx.order,
            spec.access_bytes,
            spec.chunk_bytes,
            chunk_count,
        )),
    };
    run_mounted(ctx, Wire::Rpc(spec.transport), move |link, ctx| {
        let managed = ManagedOptions {
            pull_workers: spec.pull_workers,
            pull_heuristic: heuristic,
            ..ManagedOptions::new(spec.chunk_bytes)
        };
        ManagedMount::open(
            link.client()?,
            managed,
            mount_options(),
            ctx.runtime.handle(),
        )
        .map(Opened::Managed)
        .map_err(|e| format!("opening the managed mount: {e}"))
    })
}

/// The chunks the workload touches, in the order it first touches them:
/// the trace a previous run of the same workload records. The workload's
/// order is seeded, so the trace is exact.
fn first_touch_order(order: &[u64], access: u64, chunk: u64, chunk_count: u64) -> Vec<u64> {
    let mut seen = vec![false; chunk_count as usize];
    let mut trace = Vec::new();
    for &offset in order {
        let first = offset / chunk;
        let last = (offset + access - 1) / chunk;
        for c in first..=last.min(chunk_count.saturating_sub(1)) {
            if !std::mem::replace(&mut seen[c as usize], true) {
                trace.push(c);
            }
        }
    }
    trace
}

/// One cell of a mount: link, open (set-up time), map, read, verify,
/// close.
fn run_mounted(
    ctx: &CellContext,
    wire: Wire,
    open: impl FnOnce(&RemoteLink, &CellContext) -> Result<Opened, String>,
) -> CellOutcome {
    let spec = ctx.spec;
    if let Err(why) = mount::device::probe(mount_options().device.preference) {
        return CellOutcome::Skipped(format!("no device to mount on: {why}"));
    }
    let rtt = Duration::from_secs_f64(spec.rtt_ms.unwrap_or(0.0) / 1e3);
    netem::timer::reset_lateness();
    let link = match RemoteLink::open(
        &ctx.source,
        wire,
        serve_options(spec),
        ctx.emulation,
        ctx.network,
        rtt,
        ctx.runtime.handle(),
    ) {
        Ok(link) => link,
        Err(e) => return CellOutcome::Failed(format!("opening the link to the source: {e}")),
    };

    let setup_start = Instant::now();
    let mounted = match open(&link, ctx) {
        Ok(m) => m,
        Err(e) => return CellOutcome::Failed(e),
    };
    let region = mounted.region();
    let device = region.device_kind().name();
    if region.size() != spec.region_bytes {
        return CellOutcome::Failed(format!(
            "the mount is {} bytes, the cell expects {}",
            region.size(),
            spec.region_bytes
        ));
    }
    let mut map = match region.map() {
        Ok(m) => m,
        Err(e) => return CellOutcome::Failed(format!("mapping the mount: {e}")),
    };
    let setup = setup_start.elapsed();

    let mut other = BTreeMap::new();
    if let Opened::Managed(m) = &mounted {
        let s = m.stats();
        let local = (s.local_chunks * s.chunk_size).min(spec.region_bytes);
        other.insert(
            "prepulled_mib".to_owned(),
            local as f64 / f64::from(1 << 20),
        );
    }
    // A read is checked against the source now; a write only once the
    // link is closed and the source's store says what it holds.
    let (workload, verdict) = if spec.workload.writes() {
        let RegionMap::ReadWrite(writable) = &mut map else {
            return CellOutcome::Failed(format!(
                "the {device} device was mapped read-only; a write workload needs it writable"
            ));
        };
        match write_and_expect(ctx, writable) {
            Ok(WriteOutcome {
                workload,
                expected_sha256,
            }) => (workload, Verdict::StoreMustHold(expected_sha256)),
            Err(e) => return CellOutcome::Failed(e),
        }
    } else {
        match read_and_verify(ctx, map.as_slice()) {
            Ok(ReadOutcome {
                workload,
                integrity,
                integrity_scope,
            }) => (workload, Verdict::Checked(integrity, integrity_scope)),
            Err(e) => return CellOutcome::Failed(e),
        }
    };
    drop(map);
    if let Opened::Managed(m) = &mounted {
        record_pull(m, spec, rtt, ctx.deadline, &mut other);
    }
    let transferred = link
        .transferred_bytes()
        .map_err(|e| tracing::warn!(error = %e, "transferred bytes not recorded"))
        .ok();
    let relay_error = link.relay_departure_error();
    let unmounted = mounted.close();
    let closed = match ctx.runtime.block_on(link.close()) {
        Ok(c) => c,
        Err(e) => return CellOutcome::Failed(e),
    };
    if let Err(e) = unmounted {
        return CellOutcome::Failed(format!("closing the mount: {e}"));
    }
    let (integrity, integrity_scope) = match verdict {
        Verdict::Checked(integrity, scope) => (integrity, scope),
        Verdict::StoreMustHold(expected) => match closed.store_sha256 {
            Some(sha256) => (sha256 == expected, IntegrityScope::AfterWrites { sha256 }),
            None => {
                return CellOutcome::Failed(
                    "the source's server did not report what its store holds".into(),
                )
            }
        },
    };
    CellOutcome::Measured(Box::new(Measured {
        setup,
        workload,
        integrity,
        integrity_scope,
        // The device's requests are not timed one by one; the workload's
        // own access latencies are recorded instead.
        fault_latency: LatencyHistogram::new(),
        faults: None,
        transferred_bytes: transferred,
        handler_cpus: BTreeMap::new(),
        emulator_error: emulator_error(ctx.emulation, rtt, relay_error),
        device: Some(device),
        other,
    }))
}

/// How a cell's integrity is settled.
enum Verdict {
    /// Read cells: checked against the source while the region was mapped.
    Checked(bool, IntegrityScope),
    /// Write cells: the source's store must have this SHA-256 once closed.
    StoreMustHold(String),
}

/// The background pull's rate, and how close it came to what its workers
/// can keep in flight (`workers x chunk / RTT`). Region cells do not limit
/// the link's rate, so that is the only bound the efficiency is taken
/// against. Waits for the pull up to the cell's deadline; records nothing
/// for a pull that did not finish.
fn record_pull(
    mount: &ManagedMount,
    spec: &crate::scenario::CellSpec,
    rtt: Duration,
    deadline: Instant,
    other: &mut BTreeMap<String, f64>,
) {
    let pull_time = loop {
        match mount.stats().pull_time {
            Some(t) => break t,
            None if Instant::now() >= deadline => return,
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    let mib = spec.region_bytes as f64 / f64::from(1 << 20);
    let rate = mib / pull_time.as_secs_f64();
    other.insert("pull_ms".into(), pull_time.as_secs_f64() * 1e3);
    other.insert("pull_throughput_mib_s".into(), rate);
    if !rtt.is_zero() {
        let bound = (spec.pull_workers as f64 * spec.chunk_bytes as f64 / f64::from(1 << 20))
            / rtt.as_secs_f64();
        other.insert("pull_bound_mib_s".into(), bound);
        other.insert("pull_efficiency".into(), rate / bound);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_lists_each_touched_chunk_once_in_first_touch_order() {
        // Accesses of 4 KiB; chunks of 8 KiB; one access straddles 1 and 2.
        let order = [16384, 0, 4096, 12288, 14336];
        let trace = first_touch_order(&order, 4096, 8192, 4);
        assert_eq!(trace, vec![2, 0, 1]);
        let straddling = first_touch_order(&[6144], 4096, 8192, 4);
        assert_eq!(straddling, vec![0, 1]);
    }
}
