//! Serves one memory-backed export over TCP until killed.
//!
//! ```text
//! cargo run -p nbd --example serve -- [PORT] [SIZE_MIB] [NAME]
//! nbdinfo nbd://127.0.0.1:10809/disk
//! ```

use std::sync::Arc;

use backends::{MemoryBackend, SharedBackend};
use nbd::{Export, Server, ServerLimits};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().map_or(Ok(10809), |a| a.parse())?;
    let size_mib: u64 = args.next().map_or(Ok(64), |a| a.parse())?;
    let name = args.next().unwrap_or_else(|| "disk".to_owned());

    let disk: SharedBackend = Arc::new(MemoryBackend::new(size_mib << 20));
    let server = Server::new(
        vec![Export::new(name.clone(), disk).description("memory export")],
        ServerLimits::default(),
    )?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    eprintln!(
        "serving {size_mib} MiB as nbd://{}/{name}",
        listener.local_addr()?
    );
    let stats = server
        .serve_listener(listener, std::future::pending())
        .await?;
    eprintln!("{stats:?}");
    Ok(())
}
