//! The link relay between real namespaces: reachability and integrity,
//! delay, loss, rate, counters, and clean shutdown.
//!
//! Each test builds its own relayed `netem::Topology` (namespaces prefixed
//! `msbt-relay-`) and removes it on drop, failure included:
//!
//! ```text
//! ns src: veth-src .1 <--> ns link: link-src [relay] link-dst <--> ns dst: veth-dst .2
//! ```
//!
//! Needs root and `ip`; without them each test prints why and passes.
//! Tests take a global lock: they measure time and count the process's
//! threads and descriptors, which concurrent tests would disturb.

// Test helpers outside #[test] fns are test code too.
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use netem::link::{DirectionConfig, LinkConfig, LossModel, Relay, RelayError, RelayStats};
use netem::topology::{Layout, Topology, LINK_DST_IF, LINK_SRC_IF, SRC_IF};
use rand::{RngCore, SeedableRng};

static SERIAL: Mutex<()> = Mutex::new(());

/// `UDP_SEGMENT` from include/uapi/linux/udp.h (not in glibc's libc crate).
const UDP_SEGMENT: libc::c_int = 103;

/// Takes the global test lock, surviving a test that panicked holding it.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Why these tests cannot run here, if they cannot (asked once).
fn skip_reason() -> Option<String> {
    static REASON: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    REASON.get_or_init(find_skip_reason).clone()
}

fn find_skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(out) if out.status.success() => None,
        _ => Some("`ip` (iproute2) not found".into()),
    }
}

macro_rules! require_root {
    () => {
        if let Some(reason) = skip_reason() {
            eprintln!("skipped: {reason}");
            return;
        }
    };
}

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The relay's interfaces in the link namespace, and the veth ends in
/// `src` and `dst`, as `netem::Topology` names them.
const LA: &str = LINK_SRC_IF;
const LB: &str = LINK_DST_IF;
const S0: &str = SRC_IF;

/// A relayed `netem::Topology` (src, link, dst; offloads and IPv6 off),
/// with its namespace names at hand; removed on drop.
struct Topo {
    src: String,
    link: String,
    dst: String,
    inner: Topology,
}

impl Topo {
    /// `tag` keeps names unique per test.
    fn new(tag: &str) -> Topo {
        let run_id = format!("{}_{tag}", std::process::id());
        let inner = Topology::create_with_prefix("msbt-relay-", &run_id, Layout::Relayed).unwrap();
        Topo {
            src: inner.src_ns().to_owned(),
            link: inner.link_ns().unwrap().to_owned(),
            dst: inner.dst_ns().to_owned(),
            inner,
        }
    }

    fn src_addr(&self) -> Ipv4Addr {
        self.inner.src_addr()
    }

    fn dst_addr(&self) -> Ipv4Addr {
        self.inner.dst_addr()
    }

    fn link_ns(&self) -> File {
        File::open(format!("/run/netns/{}", self.link)).unwrap()
    }

    fn relay(&self, config: LinkConfig) -> Relay {
        Relay::start_in(self.link_ns(), LA, LB, config).unwrap()
    }
}

/// Runs `f` on a thread inside namespace `ns`. Sockets it creates stay in
/// that namespace wherever they are used afterwards.
fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let file = File::open(format!("/run/netns/{ns}")).unwrap();
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns only reads the descriptor, open for the
                // call, and changes this thread's namespace only.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap()
    })
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

fn set_rcvbuf(socket: &impl AsRawFd, bytes: libc::c_int) {
    // SAFETY: passes a live c_int and its size; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
}

/// Sends `data` from src to dst over TCP port `port`; returns what dst
/// received and how long from connect to the last byte.
fn tcp_transfer(topo: &Topo, port: u16, data: &[u8]) -> (Vec<u8>, Duration) {
    let dst = SocketAddr::V4(SocketAddrV4::new(topo.dst_addr(), port));
    let listener = in_ns(&topo.dst, || TcpListener::bind(dst).unwrap());
    let client = in_ns(&topo.src, || {
        TcpStream::connect_timeout(&dst, Duration::from_secs(10)).unwrap()
    });
    let start = Instant::now();
    std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let (mut stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(60)))
                .unwrap();
            let mut received = Vec::with_capacity(data.len());
            stream.read_to_end(&mut received).unwrap();
            (received, start.elapsed())
        });
        let mut client = client;
        client.write_all(data).unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        reader.join().unwrap()
    })
}

/// Every frame received is accounted for once nothing is in flight.
fn assert_counts_add_up(stats: &RelayStats) {
    for (name, d) in [("a_to_b", &stats.a_to_b), ("b_to_a", &stats.b_to_a)] {
        let accounted = d.sent.packets + d.dropped().packets;
        assert_eq!(d.received.packets, accounted, "{name} packets: {d:#?}");
        assert_eq!(
            d.received.bytes,
            d.sent.bytes + d.dropped().bytes,
            "{name} bytes: {d:#?}"
        );
        assert_eq!(d.in_flight().packets, 0, "{name}: {d:#?}");
        assert_eq!(
            d.departure_error_ns.len(),
            d.sent.packets,
            "{name}: one error per departure"
        );
    }
}

/// A UDP echo server in dst; returns the client socket (in src) and the
/// server's thread, which ends after `idle` without a datagram.
fn udp_echo(topo: &Topo, port: u16, idle: Duration) -> (UdpSocket, std::thread::JoinHandle<()>) {
    let server_addr = SocketAddrV4::new(topo.dst_addr(), port);
    let server = in_ns(&topo.dst, || UdpSocket::bind(server_addr).unwrap());
    server.set_read_timeout(Some(idle)).unwrap();
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, peer)) = server.recv_from(&mut buf) {
            server.send_to(&buf[..n], peer).unwrap();
        }
    });
    let client = in_ns(&topo.src, || {
        UdpSocket::bind(SocketAddrV4::new(topo.src_addr(), 0)).unwrap()
    });
    client.connect(server_addr).unwrap();
    (client, echo)
}

/// One UDP round trip of a 64-byte datagram tagged `seq`; `None` on
/// timeout. Stale replies (earlier tags) are skipped.
fn ping(client: &UdpSocket, seq: u64, timeout: Duration) -> Option<Duration> {
    client.set_read_timeout(Some(timeout)).unwrap();
    let mut msg = [0u8; 64];
    msg[..8].copy_from_slice(&seq.to_le_bytes());
    let start = Instant::now();
    client.send(&msg).unwrap();
    let mut buf = [0u8; 64];
    loop {
        match client.recv(&mut buf) {
            Ok(n) if n >= 8 && buf[..8] == msg[..8] => return Some(start.elapsed()),
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return None
            }
            Err(e) => panic!("recv: {e}"),
        }
    }
}

#[test]
fn without_the_relay_nothing_passes_with_it_8_mib_arrive_intact() {
    let _serial = serial();
    require_root!();
    let topo = Topo::new("tcp");
    let dst = SocketAddr::V4(SocketAddrV4::new(topo.dst_addr(), 5001));
    let _listener = in_ns(&topo.dst, || TcpListener::bind(dst).unwrap());
    let no_route = in_ns(&topo.src, || {
        TcpStream::connect_timeout(&dst, Duration::from_secs(2))
    });
    assert!(
        no_route.is_err(),
        "src reached dst with no relay in between"
    );
    drop(_listener);

    let relay = topo.relay(LinkConfig::default());
    let data = pattern(8 << 20, 11);
    let (received, _) = tcp_transfer(&topo, 5002, &data);
    assert_eq!(received.len(), data.len());
    assert!(received == data, "bytes differ after the relay");

    let stats = relay.stop().unwrap();
    assert!(stats.a_to_b.sent.bytes > 8 << 20, "{:#?}", stats.a_to_b);
    assert!(
        stats.b_to_a.sent.packets > 0,
        "no ACKs came back: {:#?}",
        stats.b_to_a
    );
    assert_eq!(
        stats.a_to_b.dropped_oversize.packets, 0,
        "offloads still on?"
    );
    assert_counts_add_up(&stats);
}

#[test]
fn round_trip_time_is_twice_the_one_way_delay() {
    let _serial = serial();
    require_root!();
    let topo = Topo::new("delay");
    for (i, one_way) in [Duration::from_millis(5), Duration::from_millis(20)]
        .into_iter()
        .enumerate()
    {
        let relay = topo.relay(LinkConfig::symmetric(DirectionConfig::with_delay(one_way)));
        let (client, echo) = udp_echo(&topo, 6000 + i as u16, Duration::from_secs(2));
        // Resolve ARP first: its round trips are not part of the sample.
        assert!(
            (0..20).any(|seq| ping(&client, seq, Duration::from_secs(1)).is_some()),
            "no echo through the relay"
        );
        let rounds = 40;
        let mut rtts: Vec<Duration> = (0..rounds)
            .map(|seq| {
                ping(&client, 100 + seq, Duration::from_secs(2))
                    .expect("echo lost on a lossless link")
            })
            .collect();
        rtts.sort_unstable();
        let target = 2 * one_way;
        let median = rtts[rtts.len() / 2];
        let tolerance = (target / 25).max(Duration::from_micros(200));
        assert!(rtts[0] >= target, "RTT {:?} below 2 x {one_way:?}", rtts[0]);
        assert!(
            median <= target + tolerance,
            "median RTT {median:?} for 2 x {one_way:?} (tolerance {tolerance:?}); all: {rtts:?}"
        );
        let stats = relay.stop().unwrap();
        echo.join().unwrap();
        let p99 = stats.a_to_b.departure_error_ns.value_at_quantile(0.99);
        eprintln!(
            "one-way {one_way:?}: RTT min {:?} median {median:?} max {:?}; departure error p50 {} ns p99 {p99} ns",
            rtts[0],
            rtts[rtts.len() - 1],
            stats.a_to_b.departure_error_ns.value_at_quantile(0.5)
        );
        assert_counts_add_up(&stats);
    }
}

#[test]
fn random_loss_drops_about_p_of_the_datagrams() {
    let _serial = serial();
    require_root!();
    let topo = Topo::new("loss");
    let p = 0.05;
    let config = LinkConfig {
        seed: Some(13),
        ..LinkConfig::asymmetric(
            DirectionConfig {
                loss: LossModel::Random { p },
                ..DirectionConfig::default()
            },
            DirectionConfig::default(),
        )
    };
    let relay = topo.relay(config);
    let receiver_addr = SocketAddrV4::new(topo.dst_addr(), 7000);
    let receiver = in_ns(&topo.dst, || UdpSocket::bind(receiver_addr).unwrap());
    set_rcvbuf(&receiver, 16 << 20);
    receiver
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let sender = in_ns(&topo.src, || {
        UdpSocket::bind(SocketAddrV4::new(topo.src_addr(), 0)).unwrap()
    });
    sender.connect(receiver_addr).unwrap();

    // Warm up (ARP, which the loss also hits) until one datagram arrives.
    let mut buf = [0u8; 256];
    let warm = (0..50).any(|_| {
        sender.send(&u64::MAX.to_le_bytes()).unwrap();
        receiver.recv(&mut buf).is_ok()
    });
    assert!(warm, "nothing crossed the relay");
    while receiver.recv(&mut buf).is_ok() {}
    let before = relay.stats();

    let total: u64 = 20_000;
    let received = std::thread::scope(|scope| {
        let counter = scope.spawn(|| {
            let mut seen = vec![false; total as usize];
            let mut buf = [0u8; 256];
            while let Ok(n) = receiver.recv(&mut buf) {
                let seq = u64::from_le_bytes(buf[..8].try_into().unwrap());
                if n == 200 && seq < total {
                    seen[seq as usize] = true;
                }
            }
            seen.iter().filter(|&&s| s).count() as u64
        });
        let mut msg = [0u8; 200];
        for seq in 0..total {
            msg[..8].copy_from_slice(&seq.to_le_bytes());
            sender.send(&msg).unwrap();
            // Paced (about 50k datagrams/s at most) so only the emulated
            // loss drops anything.
            if seq % 100 == 99 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        counter.join().unwrap()
    });
    let stats = relay.stop().unwrap();
    let missing = total - received;
    let observed = missing as f64 / total as f64;
    eprintln!("random loss p = {p}: {missing} of {total} lost ({observed:.4})");
    assert!(
        (observed - p).abs() <= 0.2 * p,
        "observed loss {observed} for p = {p}"
    );

    let lost_by_relay = stats.a_to_b.dropped_loss.packets - before.a_to_b.dropped_loss.packets;
    // The relay lost every missing datagram, plus at most a few ARP frames.
    assert!(
        lost_by_relay >= missing && lost_by_relay <= missing + 5,
        "relay lost {lost_by_relay}, receiver missed {missing}"
    );
    assert_eq!(
        stats.b_to_a.dropped_loss.packets, 0,
        "loss configured on a_to_b only"
    );
    assert_eq!(stats.a_to_b.kernel_drops, 0);
    assert_counts_add_up(&stats);
}

#[test]
fn rate_limits_tcp_goodput() {
    let _serial = serial();
    require_root!();
    let topo = Topo::new("rate");
    let rate: u64 = 50_000_000;
    let relay = topo.relay(LinkConfig::asymmetric(
        DirectionConfig {
            rate_bps: Some(rate),
            queue_limit_bytes: 128 << 10,
            delay: Duration::from_millis(1),
            ..DirectionConfig::default()
        },
        DirectionConfig::with_delay(Duration::from_millis(1)),
    ));
    let data = pattern(20 << 20, 14);
    let (received, elapsed) = tcp_transfer(&topo, 5003, &data);
    assert!(received == data, "bytes differ after the relay");
    let goodput = data.len() as f64 * 8.0 / elapsed.as_secs_f64();
    let stats = relay.stop().unwrap();
    eprintln!(
        "rate {} Mbit/s: goodput {:.2} Mbit/s over {elapsed:?}; queue drops {}; departure error p99 {} ns",
        rate / 1_000_000,
        goodput / 1e6,
        stats.a_to_b.dropped_queue.packets,
        stats.a_to_b.departure_error_ns.value_at_quantile(0.99)
    );
    let rate = rate as f64;
    assert!(
        goodput >= 0.9 * rate,
        "goodput {goodput} below 90% of {rate}"
    );
    assert!(
        goodput <= 1.05 * rate,
        "goodput {goodput} above the rate {rate} + 5%"
    );
    assert_counts_add_up(&stats);
}

#[test]
fn counters_add_up_with_loss_and_queue_drops() {
    let _serial = serial();
    require_root!();
    let topo = Topo::new("count");
    let config = LinkConfig {
        seed: Some(15),
        ..LinkConfig::asymmetric(
            DirectionConfig {
                loss: LossModel::GilbertElliott {
                    p_gb: 0.02,
                    p_bg: 0.25,
                    loss_good: 0.0,
                    loss_bad: 0.8,
                },
                rate_bps: Some(20_000_000),
                queue_limit_bytes: 32 << 10,
                delay: Duration::from_millis(2),
                ..DirectionConfig::default()
            },
            DirectionConfig::default(),
        )
    };
    let relay = topo.relay(config);
    let receiver_addr = SocketAddrV4::new(topo.dst_addr(), 7001);
    let receiver = in_ns(&topo.dst, || UdpSocket::bind(receiver_addr).unwrap());
    set_rcvbuf(&receiver, 16 << 20);
    receiver
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let sender = in_ns(&topo.src, || {
        UdpSocket::bind(SocketAddrV4::new(topo.src_addr(), 0)).unwrap()
    });
    sender.connect(receiver_addr).unwrap();

    // Resolve ARP first: unresolved, the kernel keeps only 3 datagrams.
    let mut buf = [0u8; 2048];
    let warm = (0..100).any(|_| {
        sender.send(&[1; 8]).unwrap();
        receiver.recv(&mut buf).is_ok()
    });
    assert!(warm, "nothing crossed the relay");
    while receiver.recv(&mut buf).is_ok() {}
    let before = relay.stats().a_to_b;

    let sent_by_app = 5_000u64;
    let received_by_app = std::thread::scope(|scope| {
        let counter = scope.spawn(|| {
            let mut buf = [0u8; 2048];
            let mut n = 0u64;
            while receiver.recv(&mut buf).is_ok() {
                n += 1;
            }
            n
        });
        // Unpaced 1000-byte datagrams: far over 20 Mbit/s, so the 32 KiB
        // queue overflows.
        let msg = [7u8; 1000];
        for _ in 0..sent_by_app {
            sender.send(&msg).unwrap();
        }
        counter.join().unwrap()
    });
    let stats = relay.stop().unwrap();
    let ab = &stats.a_to_b;
    eprintln!("{ab:#?}");
    assert!(ab.dropped_loss.packets > 0, "no loss drops");
    assert!(ab.dropped_queue.packets > 0, "no queue drops");
    // Everything the relay sent on (datagrams, and the odd ARP frame)
    // reached the application; nothing else did.
    let sent_on = ab.sent.packets - before.sent.packets;
    assert!(
        received_by_app <= sent_on && sent_on <= received_by_app + 5,
        "relay sent {sent_on}, application received {received_by_app}"
    );
    // Every datagram reached the relay, or the kernel says it dropped it.
    assert!(
        ab.received.packets - before.received.packets + ab.kernel_drops >= sent_by_app,
        "{sent_by_app} datagrams sent, relay saw {}",
        ab.received.packets
    );
    assert_counts_add_up(&stats);
}

/// Descriptors open in this process.
fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Waits (up to a hang limit) until `relay_threads()` is `n`: a new
/// thread names itself only once it runs.
fn expect_relay_threads(n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while relay_threads() != n {
        assert!(
            Instant::now() < deadline,
            "{} relay threads, expected {n}",
            relay_threads()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Threads of this process whose name starts with `relay-`.
fn relay_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("relay-"))
        .count()
}

#[test]
fn stop_and_drop_join_the_threads_and_close_the_sockets() {
    let _serial = serial();
    require_root!();
    let topo = Topo::new("stop");
    let link_ns = topo.link_ns();
    let fds = fd_count();
    assert_eq!(relay_threads(), 0);

    // Idle relay: stop must wake threads blocked in ppoll.
    let relay = Relay::start_in(&link_ns, LA, LB, LinkConfig::default()).unwrap();
    assert!(relay.is_running());
    expect_relay_threads(2);
    assert_eq!(fd_count(), fds + 5, "4 packet sockets and an eventfd");
    relay.stop().unwrap();
    assert_eq!(relay_threads(), 0);
    assert_eq!(fd_count(), fds);

    // Dropped with frames scheduled far in the future: nothing waits for
    // them, and they are counted as discarded.
    let relay = Relay::start_in(
        &link_ns,
        LA,
        LB,
        LinkConfig::symmetric(DirectionConfig::with_delay(Duration::from_secs(30))),
    )
    .unwrap();
    let target = SocketAddrV4::new(topo.dst_addr(), 9);
    let sender = in_ns(&topo.src, || {
        UdpSocket::bind(SocketAddrV4::new(topo.src_addr(), 0)).unwrap()
    });
    // The first datagram triggers ARP requests, which the relay holds.
    let _ = sender.send_to(&[1; 32], target);
    let deadline = Instant::now() + Duration::from_secs(10);
    while relay.stats().a_to_b.in_flight().packets == 0 {
        assert!(Instant::now() < deadline, "no frame reached the relay");
        std::thread::sleep(Duration::from_millis(10));
    }
    let started = Instant::now();
    let stats = relay.stop().unwrap();
    // A hang detector, not a performance bound: a stop that waited for the
    // held frames would take 30 s.
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        stats.a_to_b.discarded_at_stop.packets > 0,
        "{:#?}",
        stats.a_to_b
    );
    assert_counts_add_up(&stats);
    drop(sender);
    assert_eq!(relay_threads(), 0);
    assert_eq!(fd_count(), fds);

    let relay = Relay::start_in(&link_ns, LA, LB, LinkConfig::default()).unwrap();
    expect_relay_threads(2);
    drop(relay);
    assert_eq!(relay_threads(), 0);
    assert_eq!(fd_count(), fds);
}

#[test]
fn bad_interfaces_and_configs_are_refused_with_their_name() {
    let _serial = serial();
    require_root!();
    let topo = Topo::new("err");
    let link_ns = topo.link_ns();

    let err = Relay::start_in(&link_ns, LA, "nosuch0", LinkConfig::default()).unwrap_err();
    assert!(
        matches!(&err, RelayError::Sys { interface, syscall, .. } if interface == "nosuch0" && syscall.contains("SIOCGIFINDEX")),
        "{err}"
    );
    assert!(err.to_string().contains("nosuch0"), "{err}");

    // s0 lives in src, not in the link namespace.
    let err = Relay::start_in(&link_ns, LA, S0, LinkConfig::default()).unwrap_err();
    assert!(
        matches!(&err, RelayError::Sys { interface, .. } if interface == S0),
        "{err}"
    );

    run(&["ip", "-n", &topo.link, "link", "set", LB, "down"]);
    let err = Relay::start_in(&link_ns, LA, LB, LinkConfig::default()).unwrap_err();
    assert!(
        matches!(&err, RelayError::InterfaceDown(name) if name == LB),
        "{err}"
    );
    run(&["ip", "-n", &topo.link, "link", "set", LB, "up"]);

    let err = Relay::start_in(&link_ns, LA, LA, LinkConfig::default()).unwrap_err();
    assert!(matches!(err, RelayError::SameInterface(_)), "{err}");
    let err =
        Relay::start_in(&link_ns, LA, "a-name-far-too-long", LinkConfig::default()).unwrap_err();
    assert!(matches!(err, RelayError::InvalidName(_)), "{err}");

    let mut config = LinkConfig::default();
    config.a_to_b.loss = LossModel::Random { p: 2.0 };
    let err = Relay::start_in(&link_ns, LA, LB, config).unwrap_err();
    assert!(matches!(err, RelayError::Config(_)), "{err}");
    assert!(err.to_string().contains("p = 2"), "{err}");

    // The namespace argument is honoured: the same names are not found
    // from this thread's own namespace.
    if Relay::start(LA, LB, LinkConfig::default()).is_ok() {
        panic!("found la/lb outside the link namespace");
    }
}

#[test]
fn oversized_frames_from_offloads_are_counted_not_sent() {
    let _serial = serial();
    require_root!();
    let topo = Topo::new("tso");
    // A fresh veth pair has offloads on; replace the src side's with one
    // and leave them so (TCP builds super-frames on s0).
    run(&["ip", "-n", &topo.link, "link", "del", LA]);
    run(&[
        "ip", "-n", &topo.link, "link", "add", LA, "type", "veth", "peer", "name", S0, "netns",
        &topo.src,
    ]);
    run(&[
        "ip",
        "-n",
        &topo.src,
        "addr",
        "add",
        &format!("{}/24", topo.src_addr()),
        "dev",
        S0,
    ]);
    run(&["ip", "-n", &topo.src, "link", "set", S0, "up"]);
    run(&["ip", "-n", &topo.link, "link", "set", LA, "up"]);
    let on = in_ns(&topo.src, || netem::link::offloads(S0)).unwrap();
    assert!(
        on.harmful().is_some(),
        "a fresh veth has offloads on: {on:?}"
    );

    let relay = topo.relay(LinkConfig::default());
    // One UDP GSO send: 8 segments of 1000 bytes leave s0 as one 8 KB
    // frame (checksum offload also leaves it unfinished, which does not
    // matter here: it never gets sent on).
    let sender = in_ns(&topo.src, || {
        UdpSocket::bind(SocketAddrV4::new(topo.src_addr(), 0)).unwrap()
    });
    let segment: libc::c_int = 1000;
    // SAFETY: passes a live c_int and its size; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            sender.as_raw_fd(),
            libc::SOL_UDP,
            UDP_SEGMENT,
            (&segment as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "UDP_SEGMENT: {}", std::io::Error::last_os_error());
    let target = SocketAddrV4::new(topo.dst_addr(), 9);
    let deadline = Instant::now() + Duration::from_secs(10);
    while relay.stats().a_to_b.dropped_oversize.packets == 0 {
        assert!(
            Instant::now() < deadline,
            "no oversize frame counted: {:#?}",
            relay.stats().a_to_b
        );
        sender.send_to(&[3u8; 8000], target).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    let stats = relay.stop().unwrap();
    assert!(stats.a_to_b.dropped_oversize.bytes > stats.a_to_b.dropped_oversize.packets * 1514);
    assert_counts_add_up(&stats);
}
