//! How fast the link relay can forward at zero delay: TCP bulk from a src
//! namespace to a dst namespace through the relay, next to the same
//! transfer over a plain veth pair (the kernel's own ceiling with the same
//! offloads off), with the relay threads' CPU time and departure errors.
//!
//! ```text
//! sudo cargo run -p netem --example relay_capacity -- [SECONDS] [STREAMS] [BATCH]
//! ```
//!
//! Defaults: 5 seconds, 1 stream, batch 64. Needs root and `ip`. Builds its
//! namespaces with `netem::Topology` (prefix `msbt-rcap-`) and removes
//! them at the end.

use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use netem::link::{LinkConfig, Relay};
use netem::topology::{Layout, NetNs, Topology, DST_IF, LINK_DST_IF, LINK_SRC_IF, SRC_IF};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().map_or(Ok(5), |a| a.parse())?;
    let streams: usize = args.next().map_or(Ok(1), |a| a.parse())?;
    let batch: usize = args.next().map_or(Ok(64), |a| a.parse())?;
    let duration = Duration::from_secs(seconds);

    let direct = Namespaces::new("direct", Layout::Direct)?;
    let plain = bulk(&direct, duration, streams)?;
    println!("plain veth (offloads off): {:.2} Gbit/s", plain / 1e9);
    drop(direct);

    let topo = Namespaces::new("relay", Layout::Relayed)?;
    let config = LinkConfig {
        batch,
        ..LinkConfig::default()
    };
    let link = topo
        .link
        .as_ref()
        .ok_or("a relayed topology has a link namespace")?;
    let relay = Relay::start_in(link, LINK_SRC_IF, LINK_DST_IF, config)?;
    let cpu_before = relay_cpu_seconds()?;
    let started = Instant::now();
    let relayed = bulk(&topo, duration, streams)?;
    let wall = started.elapsed().as_secs_f64();
    let cpu = relay_cpu_seconds()? - cpu_before;
    let stats = relay.stop()?;
    let ab = &stats.a_to_b;
    println!(
        "through the relay: {:.2} Gbit/s ({streams} stream(s), batch {batch}), {:.0} frames/s a->b",
        relayed / 1e9,
        ab.sent.packets as f64 / wall
    );
    println!(
        "relay threads: {:.2} CPU-seconds per second; kernel drops a->b {} b->a {}; send errors {}",
        cpu / wall,
        ab.kernel_drops,
        stats.b_to_a.kernel_drops,
        ab.send_errors.packets
    );
    println!(
        "departure error a->b: p50 {} ns, p99 {} ns, max {} ns",
        ab.departure_error_ns.value_at_quantile(0.5),
        ab.departure_error_ns.value_at_quantile(0.99),
        ab.departure_error_ns.max()
    );
    Ok(())
}

/// A `netem::Topology` with its namespaces opened. `Direct` leaves
/// offloads on (kernel netem copes with them), so they are turned off here
/// too: both transfers then move wire-sized frames.
struct Namespaces {
    src: NetNs,
    dst: NetNs,
    link: Option<NetNs>,
    topology: Topology,
}

impl Namespaces {
    fn new(kind: &str, layout: Layout) -> Result<Self> {
        let run_id = format!("{}_{kind}", std::process::id());
        let topology = Topology::create_with_prefix("msbt-rcap-", &run_id, layout)?;
        let src = NetNs::open(topology.src_ns())?;
        let dst = NetNs::open(topology.dst_ns())?;
        let link = topology.link_ns().map(NetNs::open).transpose()?;
        for (ns, ifname) in [(&src, SRC_IF), (&dst, DST_IF)] {
            ns.run(|| netem::link::disable_offloads(ifname))??;
        }
        Ok(Self {
            src,
            dst,
            link,
            topology,
        })
    }
}

/// TCP bulk from src to dst on `streams` connections for `duration`;
/// returns the receivers' goodput in bit/s.
fn bulk(topo: &Namespaces, duration: Duration, streams: usize) -> Result<f64> {
    let addr = SocketAddr::V4(SocketAddrV4::new(topo.topology.dst_addr(), 5201));
    let listener = topo.dst.run(|| TcpListener::bind(addr))??;
    let mut clients = Vec::new();
    for _ in 0..streams {
        clients.push(
            topo.src
                .run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(10)))??,
        );
    }
    let mut servers = Vec::new();
    for _ in 0..streams {
        servers.push(listener.accept()?.0);
    }
    let start = Instant::now();
    let received: u64 = std::thread::scope(|scope| {
        let readers: Vec<_> = servers
            .into_iter()
            .map(|mut server| {
                scope.spawn(move || {
                    let mut buf = vec![0u8; 1 << 20];
                    let mut total = 0u64;
                    while let Ok(n) = server.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        total += n as u64;
                    }
                    total
                })
            })
            .collect();
        for mut client in clients {
            scope.spawn(move || {
                let buf = vec![0x5au8; 1 << 20];
                while start.elapsed() < duration {
                    if client.write_all(&buf).is_err() {
                        break;
                    }
                }
                let _ = client.shutdown(std::net::Shutdown::Write);
            });
        }
        readers.into_iter().map(|r| r.join().unwrap_or(0)).sum()
    });
    Ok(received as f64 * 8.0 / start.elapsed().as_secs_f64())
}

/// User plus system CPU seconds of this process's `relay-*` threads.
fn relay_cpu_seconds() -> Result<f64> {
    // SAFETY: sysconf takes an integer and reads no memory.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut total = 0.0;
    for task in std::fs::read_dir("/proc/self/task")? {
        let stat = std::fs::read_to_string(task?.path().join("stat"))?;
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !stat[open + 1..close].starts_with("relay-") {
            continue;
        }
        // After the name: state is field 3, utime 14, stime 15.
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let utime: f64 = fields.get(11).ok_or("short stat")?.parse()?;
        let stime: f64 = fields.get(12).ok_or("short stat")?.parse()?;
        total += (utime + stime) / ticks;
    }
    Ok(total)
}
