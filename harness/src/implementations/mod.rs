//! The implementations under test: one way each of making a region on the
//! destination reflect the source.
//!
//! Each is a [`Descriptor`]: its name, the axes it varies over, the host
//! capabilities it needs, and the function that runs one cell of it.

mod baseline;
mod mounts;
mod nbdfuse;
mod uffd_pull;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use results::LatencyHistogram;

use crate::emulation::Emulation;
use crate::scenario::CellSpec;
use crate::source::SourceImage;
use crate::workload::{WorkloadKind, WorkloadOutcome};

/// An axis an implementation's result depends on. Axes it ignores are not
/// expanded for it (baseline does not run once per RTT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Axis {
    Rtt,
    ChunkSize,
    Placement,
    /// The RPC wire to the source's service.
    Transport,
    /// Background pull workers.
    PullWorkers,
    /// The background puller's order.
    PullHeuristic,
    /// Where accesses are cut into chunks.
    Chunking,
}

/// One implementation.
#[derive(Debug)]
pub struct Descriptor {
    pub name: &'static str,
    pub summary: &'static str,
    /// Axes besides region size and workload, which every implementation uses.
    pub axes: &'static [Axis],
    /// Capabilities (as `harness doctor` names them) without which a cell
    /// is skipped.
    pub needs: &'static [&'static str],
    /// The wire to the source when it is fixed (not the transport axis).
    pub wire: Option<crate::remote::Wire>,
    /// Why the application's writes cannot reach the source through this
    /// implementation, when they cannot: its cells of write workloads are
    /// skipped with this reason.
    pub read_only: Option<&'static str>,
    pub run: fn(&CellContext) -> CellOutcome,
}

impl PartialEq for Descriptor {
    /// Names are unique, so they identify a descriptor.
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

/// Every implementation, in the order `harness list` shows them.
pub static ALL: &[Descriptor] = &[
    baseline::DESCRIPTOR,
    uffd_pull::DESCRIPTOR,
    mounts::NBD_DIRECT,
    mounts::MOUNT_DIRECT,
    mounts::MOUNT_MANAGED,
    nbdfuse::DESCRIPTOR,
];

/// The implementation named `name`.
pub fn find(name: &str) -> Option<&'static Descriptor> {
    ALL.iter().find(|d| d.name == name)
}

/// Every implementation name.
pub fn names() -> Vec<&'static str> {
    ALL.iter().map(|d| d.name).collect()
}

/// What a cell gets to work with.
#[derive(Debug)]
pub struct CellContext<'a> {
    pub spec: &'a CellSpec,
    pub source: Arc<SourceImage>,
    pub emulation: Emulation,
    /// The run's namespaces, in the packet-level emulation modes.
    pub network: Option<&'a crate::network::Namespaces>,
    /// The order of the application's accesses.
    pub order: &'a [u64],
    /// When the cell's time budget runs out.
    pub deadline: Instant,
    pub runtime: &'a tokio::runtime::Runtime,
}

/// How much of the region the integrity check covered.
#[derive(Debug, Clone, PartialEq)]
pub enum IntegrityScope {
    /// SHA-256 of the whole destination region, compared with the source's.
    Region { destination_sha256: String },
    /// Every byte the application read, compared with the source (used
    /// when the workload did not read the whole region).
    AccessedBytes,
    /// The rows the SQLite lookups returned, hashed, compared with the
    /// same lookups on the source's bytes.
    QueryAnswers,
    /// What the writes went into (the source's store; for `baseline`, the
    /// local region) after the flush, by SHA-256, against the source's
    /// bytes with every completed write applied.
    AfterWrites { sha256: String },
}

/// What a measured cell reports.
#[derive(Debug)]
pub struct Measured {
    pub setup: Duration,
    pub workload: WorkloadOutcome,
    pub integrity: bool,
    pub integrity_scope: IntegrityScope,
    /// Per-fault (or per-request) service time; empty when nothing faulted.
    pub fault_latency: LatencyHistogram,
    pub faults: Option<u64>,
    pub transferred_bytes: Option<u64>,
    /// Where the fault handler ran: CPU -> faults.
    pub handler_cpus: BTreeMap<String, u64>,
    /// How late the emulator delivered, when one was in the path.
    pub emulator_error: Option<LatencyHistogram>,
    /// The device the region was seen through, where that varies by host.
    pub device: Option<&'static str>,
    /// Metrics only some implementations have (`prepulled_mib`, ...).
    pub other: BTreeMap<String, f64>,
}

/// How a cell ended.
#[derive(Debug)]
pub enum CellOutcome {
    Measured(Box<Measured>),
    Skipped(String),
    Failed(String),
}

/// The link to the source for the cell, over `wire`, served as `serve`
/// says, at the cell's RTT and
/// rate; the emulator's lateness record starts afresh (cells run one at a
/// time, so from here on it is this cell's). The source side, and across
/// namespaces the connection to it, exists before the destination opens,
/// as it would on a real source host.
pub fn open_link(
    ctx: &CellContext,
    wire: crate::remote::Wire,
    serve: crate::remote::ServeOptions,
) -> Result<(crate::remote::RemoteLink, Duration), String> {
    let spec = ctx.spec;
    let rtt = Duration::from_secs_f64(spec.rtt_ms.unwrap_or(0.0) / 1e3);
    netem::timer::reset_lateness();
    crate::remote::RemoteLink::open(
        &ctx.source,
        wire,
        serve,
        ctx.emulation,
        ctx.network,
        crate::remote::LinkShape {
            rtt,
            rate_bps: spec.link_mbit.map(|mbit| mbit * 1_000_000),
        },
        ctx.runtime.handle(),
    )
    .map(|link| (link, rtt))
    .map_err(|e| format!("opening the link to the source: {e}"))
}

/// What the link carried for a cell and how late its emulator delivered.
#[derive(Debug)]
pub struct LinkRecord {
    pub transferred_bytes: Option<u64>,
    pub emulator_error: Option<LatencyHistogram>,
}

impl LinkRecord {
    /// Read from `link` before it closes.
    pub fn of(link: &crate::remote::RemoteLink, ctx: &CellContext, rtt: Duration) -> Self {
        let transferred_bytes = link
            .transferred_bytes()
            .map_err(|e| tracing::warn!(error = %e, "transferred bytes not recorded"))
            .ok();
        Self {
            transferred_bytes,
            emulator_error: emulator_error(ctx.emulation, rtt, link.relay_departure_error()),
        }
    }
}

impl Measured {
    /// A cell whose region was a device the workload read through its
    /// mapping: its requests are not timed one by one (the workload's own
    /// access latencies are recorded instead).
    pub fn device_read(
        setup: Duration,
        read: ReadOutcome,
        link: LinkRecord,
        device: &'static str,
        other: BTreeMap<String, f64>,
    ) -> Self {
        Self {
            setup,
            workload: read.workload,
            integrity: read.integrity,
            integrity_scope: read.integrity_scope,
            fault_latency: LatencyHistogram::new(),
            faults: None,
            transferred_bytes: link.transferred_bytes,
            handler_cpus: BTreeMap::new(),
            emulator_error: link.emulator_error,
            device: Some(device),
            other,
        }
    }
}

/// What delayed the bytes, as the cell can know it: the relay's departure
/// error where packets are relayed, the in-process timer's wake error where
/// that timer delays; the kernel's netem reports no such thing.
pub fn emulator_error(
    emulation: Emulation,
    rtt: Duration,
    relay: Option<hdrhistogram::Histogram<u64>>,
) -> Option<LatencyHistogram> {
    match (emulation, relay) {
        (_, Some(relay)) => {
            let mut h = LatencyHistogram::new();
            h.merge(&relay);
            Some(h)
        }
        (Emulation::Inproc | Emulation::PerCall, None) if !rtt.is_zero() => {
            let mut h = LatencyHistogram::new();
            h.merge(&netem::timer::lateness_snapshot());
            Some(h)
        }
        _ => None,
    }
}

/// What the workload did on a region and whether it read the source's
/// bytes.
#[derive(Debug)]
pub struct ReadOutcome {
    pub workload: WorkloadOutcome,
    pub integrity: bool,
    pub integrity_scope: IntegrityScope,
}

/// Runs the cell's workload on `region`, its threads placed as the cell
/// says, and checks what it read against the source.
pub fn read_and_verify(ctx: &CellContext, region: &[u8]) -> Result<ReadOutcome, String> {
    let spec = ctx.spec;
    if spec.workload == WorkloadKind::Sqlite {
        return query_and_verify(ctx, region);
    }
    let access = spec.access_bytes as usize;
    let workload = crate::placement::run_workload_placed(spec.placement, || {
        crate::workload::run_reads(region, ctx.order, access, ctx.deadline)
    })?;
    let whole = spec.workload.covers_region() && !workload.truncated;
    let (integrity, integrity_scope) = verify(
        region,
        &ctx.source,
        ctx.order,
        workload.accesses,
        access,
        whole,
    );
    Ok(ReadOutcome {
        workload,
        integrity,
        integrity_scope,
    })
}

/// The `sqlite` workload: lookups in the database the region holds,
/// their answers compared with the same lookups on the source.
fn query_and_verify(ctx: &CellContext, region: &[u8]) -> Result<ReadOutcome, String> {
    let outcome = crate::placement::run_workload_placed(ctx.spec.placement, || {
        crate::sqlite_app::run_lookups(region, ctx.order, ctx.deadline)
    })?
    .map_err(|e| format!("the sqlite workload: {e}"))?;
    let done = &ctx.order[..outcome.workload.accesses];
    let expected = crate::sqlite_app::expected_answers(&ctx.source.bytes(), done)
        .map_err(|e| format!("the sqlite workload on the source's bytes: {e}"))?;
    Ok(ReadOutcome {
        integrity: outcome.answers_sha256 == expected,
        workload: outcome.workload,
        integrity_scope: IntegrityScope::QueryAnswers,
    })
}

/// What a write workload did, and what its target must hold after it.
#[derive(Debug)]
pub struct WriteOutcome {
    pub workload: WorkloadOutcome,
    /// SHA-256 of the source's bytes with every completed write applied.
    pub expected_sha256: String,
}

/// Runs the cell's write workload on `region`, its thread placed as the
/// cell says, flushes it (`msync`), and works out what the writes' target
/// must hold now.
pub fn write_and_expect(
    ctx: &CellContext,
    region: &mut memmap2::MmapMut,
) -> Result<WriteOutcome, String> {
    let spec = ctx.spec;
    let access = spec.access_bytes as usize;
    let source_guard = ctx.source.bytes();
    let source: &[u8] = &source_guard;
    let workload = crate::placement::run_workload_placed(spec.placement, || {
        crate::workload::run_writes(region, source, ctx.order, access, ctx.deadline, |r| {
            r.flush()
                .map_err(|e| format!("flushing the region (msync): {e}"))
        })
    })??;
    let expected =
        crate::workload::expected_after_writes(source, ctx.order, workload.accesses, access);
    Ok(WriteOutcome {
        workload,
        expected_sha256: crate::source::sha256_hex(&expected),
    })
}

/// Checks what the application read against the source: a full SHA-256
/// comparison when the whole region was read, byte comparison of the
/// accessed ranges otherwise.
pub fn verify(
    region: &[u8],
    source: &SourceImage,
    order: &[u64],
    accesses_done: usize,
    access_bytes: usize,
    whole_region_read: bool,
) -> (bool, IntegrityScope) {
    if whole_region_read {
        let digest = crate::source::sha256_hex(region);
        let ok = digest == source.sha256;
        (
            ok,
            IntegrityScope::Region {
                destination_sha256: digest,
            },
        )
    } else {
        let src = source.bytes();
        let ok = order[..accesses_done].iter().all(|&off| {
            let at = off as usize;
            region[at..at + access_bytes] == src[at..at + access_bytes]
        });
        (ok, IntegrityScope::AccessedBytes)
    }
}
