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

use super::{
    open_link, read_and_verify, write_and_expect, Axis, CellContext, CellOutcome, Descriptor,
    IntegrityScope, LinkRecord, Measured, ReadOutcome, WriteOutcome,
};
use crate::access_trace;
use crate::remote::{RemoteLink, ServeOptions, StoreChunking, Wire, NBD_EXPORT};
use crate::scenario::{ChunkingSide, PullHeuristic as PullOrder};
use crate::workload::{WorkloadKind, WorkloadOutcome};

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
    let heuristic = match spec.pull_heuristic {
        PullOrder::Linear => PullHeuristic::Linear,
        PullOrder::Reverse => PullHeuristic::Reverse,
        PullOrder::Random => PullHeuristic::Random { seed: 1 },
        PullOrder::Trace => match trace(ctx) {
            Ok(order) => PullHeuristic::Order(order),
            Err(e) => return CellOutcome::Failed(format!("the trace to pull in: {e}")),
        },
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

/// The chunks the workload touches, in the order it first touches them, as
/// a previous run of the same workload records them: computed for the
/// seeded synthetic orders (exact), recorded on a local userfaultfd region
/// for SQLite, whose reads only the run itself decides.
fn trace(ctx: &CellContext) -> Result<Vec<u64>, String> {
    let spec = ctx.spec;
    if spec.workload != WorkloadKind::Sqlite {
        return Ok(access_trace::first_touch_chunks(
            ctx.order,
            spec.access_bytes,
            spec.chunk_bytes,
            spec.region_bytes.div_ceil(spec.chunk_bytes),
        ));
    }
    let no_deadline = Instant::now() + Duration::from_secs(3600);
    access_trace::record_first_touch(
        &ctx.source,
        spec.chunk_bytes,
        ctx.runtime.handle(),
        |region| crate::sqlite_app::run_lookups(region, ctx.order, no_deadline),
    )
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
    let (link, rtt) = match open_link(ctx, wire, serve_options(spec)) {
        Ok(opened) => opened,
        Err(e) => return CellOutcome::Failed(e),
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
    if let Some(advice) = spec.workload.mapping_advice() {
        if let Err(e) = map.advise(advice) {
            return CellOutcome::Failed(format!("madvise({advice:?}) on the mount: {e}"));
        }
    }
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
        let read = match (&mounted, spec.workload) {
            (Opened::Managed(m), WorkloadKind::Idle) => {
                pull_then_verify(m, ctx, map.as_slice(), rtt, &mut other)
            }
            _ => read_and_verify(ctx, map.as_slice()),
        };
        match read {
            Ok(ReadOutcome {
                workload,
                integrity,
                integrity_scope,
            }) => (workload, Verdict::Checked(integrity, integrity_scope)),
            Err(e) => return CellOutcome::Failed(e),
        }
    };
    drop(map);
    if let (Opened::Managed(m), false) = (&mounted, spec.workload == WorkloadKind::Idle) {
        record_pull(m, spec, ctx.deadline, &mut other);
    }
    let carried = LinkRecord::of(&link, ctx, rtt);
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
    let read = ReadOutcome {
        workload,
        integrity,
        integrity_scope,
    };
    CellOutcome::Measured(Box::new(Measured::device_read(
        setup, read, carried, device, other,
    )))
}

/// How a cell's integrity is settled.
enum Verdict {
    /// Read cells: checked against the source while the region was mapped.
    Checked(bool, IntegrityScope),
    /// Write cells: the source's store must have this SHA-256 once closed.
    StoreMustHold(String),
}

/// The `idle` workload: nothing reads while the background pull runs, so
/// its rate is the pull's alone; then the whole region, all local, is
/// checked against the source.
fn pull_then_verify(
    mount: &ManagedMount,
    ctx: &CellContext,
    region: &[u8],
    rtt: Duration,
    other: &mut BTreeMap<String, f64>,
) -> Result<ReadOutcome, String> {
    let spec = ctx.spec;
    if !record_pull(mount, spec, ctx.deadline, other) {
        return Err(format!(
            "the background pull did not finish within the cell's budget ({} of {} chunks local)",
            mount.stats().local_chunks,
            mount.stats().chunk_count
        ));
    }
    let mib = spec.region_bytes as f64 / f64::from(1 << 20);
    let bound = pull_bound_mib_s(spec, rtt);
    if let (Some(rate), Some(bound)) = (other.get("pull_throughput_mib_s"), bound) {
        let rate = *rate;
        other.insert("pull_bound_mib_s".into(), bound);
        other.insert("pull_efficiency".into(), rate / bound);
    }
    tracing::debug!(mib, "pull done; hashing the region");
    let digest = crate::source::sha256_hex(region);
    Ok(ReadOutcome {
        workload: WorkloadOutcome::nothing(),
        integrity: digest == ctx.source.sha256,
        integrity_scope: IntegrityScope::Region {
            destination_sha256: digest,
        },
    })
}

/// What the pull could reach at best: `workers x chunk / RTT` (what the
/// workers keep in flight), or the link's rate where that is lower. `None`
/// at RTT 0 on an unlimited link, where nothing but the machine bounds it.
fn pull_bound_mib_s(spec: &crate::scenario::CellSpec, rtt: Duration) -> Option<f64> {
    const MIB: f64 = (1u64 << 20) as f64;
    let workers = (!rtt.is_zero())
        .then(|| spec.pull_workers as f64 * spec.chunk_bytes as f64 / MIB / rtt.as_secs_f64());
    let link = spec.link_mbit.map(|mbit| mbit as f64 * 1e6 / 8.0 / MIB);
    match (workers, link) {
        (Some(w), Some(l)) => Some(w.min(l)),
        (w, l) => w.or(l),
    }
}

/// The background pull's time and rate (the region over the time until
/// every chunk is local, whoever fetched it). Waits for the pull up to the
/// cell's deadline; records nothing and returns false for a pull that did
/// not finish. The efficiency against the bound is taken only when nothing
/// else reads (`idle`), since an application's own reads fetch chunks too.
fn record_pull(
    mount: &ManagedMount,
    spec: &crate::scenario::CellSpec,
    deadline: Instant,
    other: &mut BTreeMap<String, f64>,
) -> bool {
    let pull_time = loop {
        match mount.stats().pull_time {
            Some(t) => break t,
            None if Instant::now() >= deadline => return false,
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    let mib = spec.region_bytes as f64 / f64::from(1 << 20);
    other.insert("pull_ms".into(), pull_time.as_secs_f64() * 1e3);
    other.insert(
        "pull_throughput_mib_s".into(),
        mib / pull_time.as_secs_f64(),
    );
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::parse;

    fn managed_cell(link_mbit: Option<u64>, workers: usize) -> crate::scenario::CellSpec {
        let text = r#"
            name = "t"
            description = "d"
            implementations = ["mount-managed"]
            repetitions = 1
            cell_time_budget_s = 10
            [axes]
            rtt_ms = [10]
            region_mib = [4]
            chunk_kib = [64]
            workload = ["idle"]
        "#;
        let mut cell = parse("t", text, "default").unwrap().cells().remove(0);
        cell.link_mbit = link_mbit;
        cell.pull_workers = workers;
        cell
    }

    #[test]
    fn the_pull_bound_is_the_lesser_of_the_workers_and_the_link() {
        let rtt = Duration::from_millis(10);
        // 1 worker x 64 KiB / 10 ms = 6.25 MiB/s; 200 Mbit/s = 23.84 MiB/s.
        let one = pull_bound_mib_s(&managed_cell(Some(200), 1), rtt).unwrap();
        assert!((one - 6.25).abs() < 1e-9, "{one}");
        let many = pull_bound_mib_s(&managed_cell(Some(200), 64), rtt).unwrap();
        assert!((many - 200e6 / 8.0 / 1048576.0).abs() < 1e-9, "{many}");
        let unlimited = pull_bound_mib_s(&managed_cell(None, 64), rtt).unwrap();
        assert!((unlimited - 400.0).abs() < 1e-9, "{unlimited}");
        assert_eq!(
            pull_bound_mib_s(&managed_cell(None, 64), Duration::ZERO),
            None
        );
    }
}
