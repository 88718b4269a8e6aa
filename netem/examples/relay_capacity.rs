//! How fast the link relay can forward at zero delay: TCP bulk from a src
//! namespace to a dst namespace through the relay, next to the same
//! transfer over a plain veth pair (the kernel's own ceiling with the same
//! offloads off), with the relay threads' CPU time and departure errors.
//!
//! ```text
//! sudo cargo run -p netem --example relay_capacity -- [SECONDS] [STREAMS] [BATCH]
//! ```
//!
//! Defaults: 5 seconds, 1 stream, batch 64. Needs root and `ip`. Creates
//! namespaces named `msbt-relaycap-<pid>-*` and removes them at the end.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

use netem::link::{LinkConfig, Relay};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().map_or(Ok(5), |a| a.parse())?;
    let streams: usize = args.next().map_or(Ok(1), |a| a.parse())?;
    let batch: usize = args.next().map_or(Ok(64), |a| a.parse())?;
    let duration = Duration::from_secs(seconds);

    let direct = Namespaces::direct()?;
    let plain = bulk(&direct, duration, streams)?;
    println!("plain veth (offloads off): {:.2} Gbit/s", plain / 1e9);
    drop(direct);

    let topo = Namespaces::relayed()?;
    let config = LinkConfig {
        batch,
        ..LinkConfig::default()
    };
    let relay = Relay::start_in(
        File::open(format!("/run/netns/{}-link", topo.prefix))?,
        "la",
        "lb",
        config,
    )?;
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

/// Namespaces `src` and `dst`, either joined by one veth pair or through a
/// `link` namespace holding `la` and `lb`. Removed on drop.
struct Namespaces {
    prefix: String,
    names: Vec<String>,
}

impl Namespaces {
    fn new(kind: &str, with_link: bool) -> Result<Self> {
        let prefix = format!("msbt-relaycap-{}-{kind}", std::process::id());
        let mut topo = Namespaces {
            prefix: prefix.clone(),
            names: Vec::new(),
        };
        let roles: &[&str] = if with_link {
            &["src", "link", "dst"]
        } else {
            &["src", "dst"]
        };
        for role in roles {
            let ns = format!("{prefix}-{role}");
            ip(&["netns", "add", &ns])?;
            topo.names.push(ns.clone());
            sh(&[
                "ip",
                "netns",
                "exec",
                &ns,
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
            ])?;
        }
        Ok(topo)
    }

    fn direct() -> Result<Self> {
        let topo = Self::new("direct", false)?;
        let (src, dst) = (topo.ns("src"), topo.ns("dst"));
        ip(&[
            "-n", &src, "link", "add", "s0", "type", "veth", "peer", "name", "d0", "netns", &dst,
        ])?;
        topo.finish(&[(&src, "s0"), (&dst, "d0")])?;
        Ok(topo)
    }

    fn relayed() -> Result<Self> {
        let topo = Self::new("relay", true)?;
        let (src, link, dst) = (topo.ns("src"), topo.ns("link"), topo.ns("dst"));
        ip(&[
            "-n", &link, "link", "add", "la", "type", "veth", "peer", "name", "s0", "netns", &src,
        ])?;
        ip(&[
            "-n", &link, "link", "add", "lb", "type", "veth", "peer", "name", "d0", "netns", &dst,
        ])?;
        topo.finish(&[(&src, "s0"), (&link, "la"), (&link, "lb"), (&dst, "d0")])?;
        Ok(topo)
    }

    fn finish(&self, interfaces: &[(&String, &str)]) -> Result<()> {
        ip(&[
            "-n",
            &self.ns("src"),
            "addr",
            "add",
            "10.223.0.1/24",
            "dev",
            "s0",
        ])?;
        ip(&[
            "-n",
            &self.ns("dst"),
            "addr",
            "add",
            "10.223.0.2/24",
            "dev",
            "d0",
        ])?;
        for (ns, ifname) in interfaces {
            ip(&["-n", ns, "link", "set", ifname, "up"])?;
            in_ns(ns, || netem::link::disable_offloads(ifname))??;
        }
        Ok(())
    }

    fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let mut full = vec!["ip"];
    full.extend_from_slice(args);
    sh(&full)
}

fn sh(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0]).args(&args[1..]).output()?;
    if !out.status.success() {
        return Err(format!("{args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(())
}

/// Runs `f` on a thread inside namespace `ns`.
fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let file = File::open(format!("/run/netns/{ns}"))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns only reads the descriptor, open for the
                // call, and changes this thread's namespace only.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error().into());
                }
                Ok(f())
            })
            .join()
            .map_err(|_| "namespace thread panicked")?
    })
}

/// TCP bulk from src to dst on `streams` connections for `duration`;
/// returns the receivers' goodput in bit/s.
fn bulk(topo: &Namespaces, duration: Duration, streams: usize) -> Result<f64> {
    let addr = SocketAddr::V4(SocketAddrV4::new([10, 223, 0, 2].into(), 5201));
    let listener = in_ns(&topo.ns("dst"), || TcpListener::bind(addr))??;
    let mut clients = Vec::new();
    for _ in 0..streams {
        clients.push(in_ns(&topo.ns("src"), || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        })??);
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
