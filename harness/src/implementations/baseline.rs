//! `baseline`: the region is local memory, no network. The reference every
//! figure is read against.

use std::time::Instant;

use memmap2::MmapMut;
use results::LatencyHistogram;

use super::{
    read_and_verify, write_and_expect, Axis, CellContext, CellOutcome, Descriptor, IntegrityScope,
    Measured, ReadOutcome, WriteOutcome,
};

pub const DESCRIPTOR: Descriptor = Descriptor {
    name: "baseline",
    summary: "local anonymous memory holding the source bytes; no network, no faults to serve",
    axes: &[Axis::Placement],
    needs: &[],
    wire: None,
    read_only: None,
    run,
};

fn run(ctx: &CellContext) -> CellOutcome {
    let spec = ctx.spec;
    let size = spec.region_bytes as usize;
    let setup_start = Instant::now();
    // Setup is making the region usable: allocate and fill it, as a process
    // that already has its memory would have.
    let mut region = match MmapMut::map_anon(size) {
        Ok(m) => m,
        Err(e) => return CellOutcome::Failed(format!("mmap of {size} bytes: {e}")),
    };
    region.copy_from_slice(&ctx.source.bytes());
    let setup = setup_start.elapsed();

    let (workload, integrity, integrity_scope) = if spec.workload.writes() {
        // The region is the store: the writes' target is the region itself,
        // and the flush of an anonymous mapping has nothing to write back.
        let WriteOutcome {
            workload,
            expected_sha256,
        } = match write_and_expect(ctx, &mut region) {
            Ok(w) => w,
            Err(e) => return CellOutcome::Failed(e),
        };
        let sha256 = crate::source::sha256_hex(&region);
        let integrity = sha256 == expected_sha256;
        (workload, integrity, IntegrityScope::AfterWrites { sha256 })
    } else {
        let ReadOutcome {
            workload,
            integrity,
            integrity_scope,
        } = match read_and_verify(ctx, &region) {
            Ok(r) => r,
            Err(e) => return CellOutcome::Failed(e),
        };
        (workload, integrity, integrity_scope)
    };
    CellOutcome::Measured(Box::new(Measured {
        setup,
        workload,
        integrity,
        integrity_scope,
        // Nothing faults here: the region is local and already populated.
        fault_latency: LatencyHistogram::new(),
        faults: Some(0),
        transferred_bytes: Some(0),
        handler_cpus: Default::default(),
        emulator_error: None,
        device: None,
        other: Default::default(),
    }))
}
