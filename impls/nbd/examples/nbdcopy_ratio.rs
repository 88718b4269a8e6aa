//! How fast `nbdcopy` reads from our server compared with `nbdkit memory`.
//!
//! Serves the same random data from our server (a memory export) and from
//! `nbdkit memory`, then runs `nbdcopy --no-extents --request-size=S URI
//! null:` against each, alternating which goes first, and prints one JSON
//! line per run and one summary line per request size with the median
//! throughputs and their ratio (ours / nbdkit). Not a test: the numbers
//! depend on the machine; the ratio is what to compare across changes.
//!
//! ```text
//! cargo run -p nbd --example nbdcopy_ratio -- [--size-mib 256] [--reps 3]
//!     [--request-sizes 4096,262144] [--transport tcp|unix]
//! ```
//!
//! `--no-extents` makes nbdcopy read every byte from both servers (ours
//! offers no block status; nbdkit does). Both servers offer multi-conn,
//! so nbdcopy uses its default of 4 connections with each.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backends::{Backend, MemoryBackend, SharedBackend};
use nbd::{Export, NbdClient, Server, ServerLimits};
use rand::{RngCore, SeedableRng};
use serde_json::json;

#[derive(Debug)]
struct Options {
    size_mib: u64,
    reps: usize,
    request_sizes: Vec<u32>,
    transport: String,
}

fn parse_args() -> Result<Options, Box<dyn Error>> {
    let mut o = Options {
        size_mib: 256,
        reps: 3,
        request_sizes: vec![4096, 262_144],
        transport: "tcp".into(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--size-mib" => o.size_mib = value()?.parse()?,
            "--reps" => o.reps = value()?.parse()?,
            "--request-sizes" => {
                o.request_sizes = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--transport" => o.transport = value()?,
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    if o.transport != "tcp" && o.transport != "unix" {
        return Err(format!("--transport must be tcp or unix, not {:?}", o.transport).into());
    }
    Ok(o)
}

/// nbdkit, killed and reaped on drop.
struct Kit(Child);

impl Drop for Kit {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_nbdkit(dir: &Path, size: u64, transport: &str) -> Result<(Kit, String), Box<dyn Error>> {
    let pid = dir.join("nbdkit.pid");
    let mut cmd = Command::new("nbdkit");
    cmd.args(["-f", "--exit-with-parent", "-P"]).arg(&pid);
    let uri = if transport == "tcp" {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        cmd.args(["-i", "127.0.0.1", "-p", &port.to_string()]);
        format!("nbd://127.0.0.1:{port}/")
    } else {
        let sock = dir.join("nbdkit.sock");
        cmd.arg("-U").arg(&sock);
        format!("nbd+unix:///?socket={}", sock.display())
    };
    let mut kit = Kit(cmd
        .args(["memory", &size.to_string()])
        .stdin(Stdio::null())
        .spawn()?);
    let start = Instant::now();
    while !std::fs::metadata(&pid).is_ok_and(|m| m.len() > 0) {
        if let Some(status) = kit.0.try_wait()? {
            return Err(format!("nbdkit exited with {status}").into());
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err("nbdkit did not start within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((kit, uri))
}

async fn connect(uri: &str, dir: &Path) -> Result<NbdClient, Box<dyn Error>> {
    if let Some(rest) = uri.strip_prefix("nbd://") {
        let (addr, name) = rest.split_once('/').unwrap_or((rest, ""));
        Ok(NbdClient::connect_tcp(addr, name).await?)
    } else {
        let sock: PathBuf = if uri.contains("nbdkit") {
            dir.join("nbdkit.sock")
        } else {
            dir.join("ours.sock")
        };
        let name = uri
            .strip_prefix("nbd+unix:///")
            .and_then(|r| r.split('?').next())
            .unwrap_or("");
        Ok(NbdClient::connect_unix(sock, name).await?)
    }
}

/// Checks that `uri` serves `data` at its start and end.
async fn spot_check(uri: &str, dir: &Path, data: &[u8]) -> Result<(), Box<dyn Error>> {
    let client = connect(uri, dir).await?;
    let n = (1 << 20).min(data.len());
    let mut buf = vec![0u8; n];
    for at in [0, data.len() - n] {
        client.read_at(&mut buf, at as u64).await?;
        if buf[..] != data[at..at + n] {
            return Err(format!("{uri} does not serve the data at offset {at}").into());
        }
    }
    client.disconnect().await?;
    Ok(())
}

async fn time_nbdcopy(uri: &str, request_size: u32) -> Result<Duration, Box<dyn Error>> {
    let mut cmd = Command::new("nbdcopy");
    cmd.args([
        "--no-extents",
        &format!("--request-size={request_size}"),
        uri,
        "null:",
    ]);
    let start = Instant::now();
    let out = tokio::task::spawn_blocking(move || cmd.stdin(Stdio::null()).output()).await??;
    let took = start.elapsed();
    if !out.status.success() {
        return Err(format!(
            "nbdcopy from {uri} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(took)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let o = parse_args()?;
    let size = o.size_mib << 20;
    let dir = tempfile::tempdir()?;

    let mut data = vec![0u8; size as usize];
    rand::rngs::StdRng::seed_from_u64(0x6e62_6463).fill_bytes(&mut data);

    let disk: SharedBackend = Arc::new(MemoryBackend::from_bytes(data.clone()));
    let server = Server::new(
        vec![Export::new("mem", disk).multi_conn(true)],
        ServerLimits::default(),
    )?;
    let ours_uri = if o.transport == "tcp" {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let uri = format!("nbd://{}/mem", listener.local_addr()?);
        tokio::spawn(async move {
            server
                .serve_listener(listener, std::future::pending())
                .await
        });
        uri
    } else {
        let sock = dir.path().join("ours.sock");
        let listener = tokio::net::UnixListener::bind(&sock)?;
        tokio::spawn(async move {
            server
                .serve_listener(listener, std::future::pending())
                .await
        });
        format!("nbd+unix:///mem?socket={}", sock.display())
    };

    let (_kit, kit_uri) = start_nbdkit(dir.path(), size, &o.transport)?;
    let filler = connect(&kit_uri, dir.path()).await?;
    filler.write_at(&data, 0).await?;
    filler.disconnect().await?;
    spot_check(&ours_uri, dir.path(), &data).await?;
    spot_check(&kit_uri, dir.path(), &data).await?;
    drop(data);

    let servers = [("ours", ours_uri.as_str()), ("nbdkit", kit_uri.as_str())];
    for &request_size in &o.request_sizes {
        let mut speeds: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        for rep in 0..o.reps {
            // Alternate who goes first, so warm-up and drift hit both.
            let order: [usize; 2] = if rep % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                let (name, uri) = servers[i];
                let took = time_nbdcopy(uri, request_size).await?;
                let mib_s = o.size_mib as f64 / took.as_secs_f64();
                speeds[i].push(mib_s);
                println!(
                    "{}",
                    json!({
                        "kind": "run",
                        "server": name,
                        "transport": o.transport,
                        "request_size": request_size,
                        "size_mib": o.size_mib,
                        "rep": rep,
                        "seconds": took.as_secs_f64(),
                        "mib_s": mib_s,
                    })
                );
            }
        }
        let ours = median(speeds[0].clone());
        let kit = median(speeds[1].clone());
        println!(
            "{}",
            json!({
                "kind": "summary",
                "transport": o.transport,
                "request_size": request_size,
                "size_mib": o.size_mib,
                "reps": o.reps,
                "ours_mib_s_median": ours,
                "nbdkit_mib_s_median": kit,
                "ratio_ours_over_nbdkit": ours / kit,
            })
        );
    }
    Ok(())
}
