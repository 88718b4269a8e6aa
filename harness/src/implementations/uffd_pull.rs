//! `uffd`: post-copy pull on fault (thesis 3.1, 4.1). The destination region
//! is registered with userfaultfd; each missing chunk is fetched from the
//! remote on first touch and installed with `UFFDIO_COPY`.

use std::collections::BTreeMap;
use std::time::Instant;

use backends::BlockingBackend;
use results::LatencyHistogram;
use uffd::{UffdConfig, UffdError, UffdRegion};

use super::{
    open_link, read_and_verify, Axis, CellContext, CellOutcome, Descriptor, LinkRecord, Measured,
    ReadOutcome,
};
use crate::placement::handler_cpu;
use crate::remote::{ServeOptions, Wire};

pub const DESCRIPTOR: Descriptor = Descriptor {
    name: "uffd",
    summary: "post-copy: userfaultfd MISSING faults, each chunk fetched from the remote and installed with UFFDIO_COPY",
    axes: &[Axis::Rtt, Axis::ChunkSize, Axis::Placement, Axis::Transport],
    // Not listed as a hard need: the region itself tries every way to get a
    // userfaultfd and reports the kernel's reason when none works.
    needs: &[],
    wire: None,
    read_only: Some(
        "it pulls pages on fault; writes stay in the destination's region and nothing pushes them to the source",
    ),
    run,
};

fn run(ctx: &CellContext) -> CellOutcome {
    let spec = ctx.spec;
    let (link, rtt) = match open_link(ctx, Wire::Rpc(spec.transport), ServeOptions::default()) {
        Ok(opened) => opened,
        Err(e) => return CellOutcome::Failed(e),
    };
    // Setup: learn the region's size from the remote (one round trip, as a
    // real destination must), map and register the region.
    let setup_start = Instant::now();
    let remote = match link.client() {
        Ok(remote) => remote,
        Err(e) => return CellOutcome::Failed(e),
    };
    let size = match ctx.runtime.block_on(remote.size()) {
        Ok(s) => s,
        Err(e) => return CellOutcome::Failed(format!("asking the remote for its size: {e}")),
    };
    if size != spec.region_bytes {
        return CellOutcome::Failed(format!(
            "the remote serves {size} bytes, the cell expects {}",
            spec.region_bytes
        ));
    }
    let config = UffdConfig {
        handler_cpu: handler_cpu(spec.placement),
        ..UffdConfig::new(size as usize, spec.chunk_bytes as usize)
    };
    let source = BlockingBackend::new(remote, ctx.runtime.handle().clone());
    let region = match UffdRegion::open(config, source) {
        Ok(r) => r,
        Err(UffdError::Unavailable { reason }) => {
            return CellOutcome::Skipped(format!("userfaultfd is unavailable: {reason}"))
        }
        Err(e) => return CellOutcome::Failed(format!("opening the userfaultfd region: {e}")),
    };
    let setup = setup_start.elapsed();

    let ReadOutcome {
        workload,
        integrity,
        integrity_scope,
    } = match read_and_verify(ctx, region.as_slice()) {
        Ok(r) => r,
        Err(e) => return CellOutcome::Failed(e),
    };
    let handler_error = region.error();
    let stats = region.stats();
    drop(region);
    let carried = LinkRecord::of(&link, ctx, rtt);
    if let Err(e) = ctx.runtime.block_on(link.close()) {
        return CellOutcome::Failed(e);
    }
    if let Some(e) = handler_error {
        return CellOutcome::Failed(format!("the fault handler failed: {e}"));
    }

    let mut fault_latency = LatencyHistogram::new();
    fault_latency.merge(&stats.service_ns);
    let handler_cpus: BTreeMap<String, u64> = stats
        .faults_by_cpu
        .iter()
        .map(|(cpu, n)| (cpu.to_string(), *n))
        .collect();
    CellOutcome::Measured(Box::new(Measured {
        setup,
        workload,
        integrity,
        integrity_scope,
        fault_latency,
        faults: Some(stats.faults),
        transferred_bytes: carried.transferred_bytes,
        handler_cpus,
        emulator_error: carried.emulator_error,
        device: None,
        other: BTreeMap::new(),
    }))
}
