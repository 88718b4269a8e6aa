//! Serves a memory backend over frpc on TCP loopback and reads it back.
//!
//! `cargo run -p transports --example frpc_loopback`

use std::sync::Arc;

use backends::{Backend, MemoryBackend};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use transports::{serve_listener, ClientConfig, FrpcClient, ServeConfig};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let source = Arc::new(MemoryBackend::from_bytes(
        (0..1 << 20).map(|i| (i % 251) as u8).collect(),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve_listener(
        listener,
        source,
        ServeConfig::default(),
        shutdown.clone(),
    ));

    let client = Arc::new(FrpcClient::connect(addr, ClientConfig::default()).await?);
    let size = client.size().await?;
    // 256 reads of 4 KiB, all in flight at once on one connection.
    let reads = (0..size / 4096).map(|i| {
        let client = client.clone();
        tokio::spawn(async move {
            let mut page = vec![0; 4096];
            client
                .read_exact_at(&mut page, i * 4096)
                .await
                .map(|()| page)
        })
    });
    let mut copy = Vec::with_capacity(size as usize);
    for read in reads.collect::<Vec<_>>() {
        copy.extend(read.await??);
    }
    let intact = copy.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8);
    println!("read {} bytes over frpc, intact: {intact}", copy.len());
    println!("client: {:?}", client.stats());

    drop(client);
    shutdown.cancel();
    println!("server: {:?}", server.await??);
    Ok(())
}
