//! Maps a 64 MiB region backed by a byte pattern, reads it once, checks it
//! and prints the fault statistics.
//!
//! ```text
//! cargo run -p uffd --example pattern -- [chunk KiB, default 64] [handler CPU]
//! ```

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use backends::{BlockingBackend, MemoryBackend};
use uffd::{UffdConfig, UffdError, UffdRegion};

const SIZE: usize = 64 << 20;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let chunk_kib: usize = match args.next().map(|a| a.parse()) {
        None => 64,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("chunk size must be a number of KiB: {e}");
            return ExitCode::FAILURE;
        }
    };
    let handler_cpu = match args.next().map(|a| a.parse::<usize>()) {
        None => None,
        Some(Ok(cpu)) => Some(cpu),
        Some(Err(e)) => {
            eprintln!("handler CPU must be a CPU index: {e}");
            return ExitCode::FAILURE;
        }
    };

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start a tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // A pattern that differs from page to page, so a misplaced page shows.
    let pattern: Vec<u8> = (0..SIZE).map(|i| (i / 4096 + i % 251) as u8).collect();
    let source = BlockingBackend::new(
        Arc::new(MemoryBackend::from_bytes(pattern.clone())),
        runtime.handle().clone(),
    );
    let mut config = UffdConfig::new(SIZE, chunk_kib << 10);
    config.handler_cpu = handler_cpu;

    let opened = Instant::now();
    let region = match UffdRegion::open(config, source) {
        Ok(region) => region,
        Err(UffdError::Unavailable { reason }) => {
            eprintln!("userfaultfd unavailable: {reason}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("open failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let setup = opened.elapsed();

    let started = Instant::now();
    let intact = region.as_slice() == &pattern[..];
    let read = started.elapsed();

    let stats = region.stats();
    let h = &stats.service_ns;
    println!("opened via {} in {setup:?}", region.opened_via());
    println!(
        "read {} MiB in {read:?} ({:.0} MiB/s), intact: {intact}",
        SIZE >> 20,
        (SIZE >> 20) as f64 / read.as_secs_f64()
    );
    println!(
        "faults {} (duplicates {}), chunks {}, fetched {} bytes",
        stats.faults, stats.duplicate_faults, stats.chunks_installed, stats.bytes_fetched
    );
    println!(
        "service ns: p50 {} p90 {} p99 {} p99.9 {} max {}",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.9),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max()
    );
    println!("faults by handler CPU: {:?}", stats.faults_by_cpu);
    if let Some(e) = region.error() {
        eprintln!("handler failed: {e}");
        return ExitCode::FAILURE;
    }
    if intact {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
