//! Pushes a written region to a remote over a transport, cycle by cycle.
//!
//! ```text
//! cargo run -p hashsync --example push -- [transport] [algorithm] [MiB]
//! ```
//!
//! Serves an in-memory backend over the transport (default frpc) on
//! loopback, maps a region file of MiB (default 64) in the temporary
//! directory, writes random bytes into it between cycles, and prints each
//! cycle's report; at the end the remote must equal the region.

use std::num::NonZeroUsize;
use std::sync::Arc;

use backends::MemoryBackend;
use hashsync::{Algorithm, BackendSink, HashList, SyncConfig, SyncSource};
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;
use transports::{Services, TransportConfig, TransportKind};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let kind: TransportKind = args.next().as_deref().unwrap_or("frpc").parse()?;
    let algorithm: Algorithm = args.next().as_deref().unwrap_or("xxh3").parse()?;
    let mib: usize = args.next().as_deref().unwrap_or("64").parse()?;
    let len = mib << 20;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let remote = Arc::new(MemoryBackend::new(len as u64));
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(kind.serve(
        listener,
        Services::backend(remote.clone()),
        TransportConfig::default(),
        shutdown.clone(),
    ));
    let client = kind.connect(addr, &TransportConfig::default()).await?;
    let sink = BackendSink(client.backend());

    let dir = tempfile::tempdir()?;
    let path = dir.path().join("region");
    std::fs::File::create(&path)?.set_len(len as u64)?;
    let config = SyncConfig {
        threads: NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN),
        ..SyncConfig::new(64 << 10, algorithm)
    };
    let mut source = SyncSource::open(&path, config)?;
    // Both sides start as zeros; saying so spares the first full push.
    source.set_peer_hashes(HashList::compute(
        &vec![0u8; len],
        config.chunk_size,
        algorithm,
        config.threads,
    )?);
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for cycle in 0..5 {
        for _ in 0..(cycle + 1) * 100 {
            let at = rng.random_range(0..len);
            source.region_mut()[at] = rng.random();
        }
        let r = source.cycle(&sink).await?;
        println!(
            "{kind} {algorithm} cycle {cycle}: msync {:?}, hash {:?}, push {:?}, {} of {} chunks, {} KiB",
            r.msync,
            r.hash,
            r.push,
            r.chunks_sent,
            r.chunks,
            r.bytes_sent >> 10
        );
    }
    let intact = *remote.bytes() == *source.region();
    println!("remote equals the region: {intact}");
    drop(sink);
    drop(client);
    shutdown.cancel();
    server.await??;
    if intact {
        Ok(())
    } else {
        Err("the remote differs from the region".into())
    }
}
