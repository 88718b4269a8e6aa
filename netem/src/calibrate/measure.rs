//! The four measurement phases, on blocking sockets and scoped threads.
//!
//! Sockets are opened on a short-lived thread inside `src` or `dst`
//! ([`NetNs::run`]) and used from any thread afterwards: a socket stays in
//! the namespace it was created in. Every phase runs inside
//! `std::thread::scope`, so its threads are joined before it returns, and
//! every blocking call has a timeout, so joining cannot hang.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::thread::{Scope, ScopedJoinHandle};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::report::{
    nanos, BulkDetail, CalibrationReport, Configured, HistSummary, RelayObservation, UdpLoss,
    ETHERNET_HEADER_BYTES,
};
use super::{CalibrationError, CalibrationPlan, Phase};
use crate::link::{Relay, RelayStats};
use crate::topology::{NetNs, MTU};

/// Exchanges at the start of each round-trip phase left out of the
/// histogram: the first ones pay for cold caches and the connection's
/// first wake-ups, which no later exchange does.
const WARMUP_EXCHANGES: u32 = 3;

/// How often threads blocked on a socket look at their stop flag.
const POLL: Duration = Duration::from_millis(20);

/// Bytes per `write` of the bulk sender and per `read` of its sink.
const BULK_CHUNK: usize = 128 * 1024;

/// Largest value the latency histograms hold (60 s); larger ones are
/// recorded as this.
const HIST_MAX_NS: u64 = 60_000_000_000;

/// What every phase needs.
pub(super) struct Env<'a> {
    pub(super) src: NetNs,
    pub(super) dst: NetNs,
    pub(super) dst_addr: Ipv4Addr,
    pub(super) plan: &'a CalibrationPlan,
    pub(super) relay: Option<&'a Relay>,
    /// Both directions' delay plus jitter: the longest a UDP answer may
    /// take on the configured link.
    pub(super) worst_rtt: Duration,
}

/// Runs the phases in order and assembles the report.
pub(super) fn measure(
    env: &Env<'_>,
    configured: Configured,
) -> Result<CalibrationReport, CalibrationError> {
    let start_stats = env.relay.map(Relay::stats);

    let idle_rtt = idle_round_trips(env)?;
    let before_udp = env.relay.map(Relay::stats);
    let (udp_rtt, mut udp_loss) = udp_probes(env)?;
    let after_udp = env.relay.map(Relay::stats);
    udp_loss.expected = configured.round_trip_loss;
    udp_loss.sampling_stddev = if udp_loss.sent == 0 {
        0.0
    } else {
        (udp_loss.expected * (1.0 - udp_loss.expected) / udp_loss.sent as f64).sqrt()
    };
    let bulk = bulk(env, configured.rate_bps)?;
    let loaded = loaded_round_trips(env)?;

    let relay = match (env.relay, start_stats, before_udp, after_udp) {
        (Some(relay), Some(start), Some(before_udp), Some(after_udp)) => {
            let end = relay.stats();
            let delta = |f: fn(&RelayStats) -> u64| f(&end).saturating_sub(f(&start));
            let loss_drops =
                |s: &RelayStats| s.a_to_b.dropped_loss.packets + s.b_to_a.dropped_loss.packets;
            Some(RelayObservation {
                departure_error_a_to_b_ns: HistSummary::from_histogram(&histogram_delta(
                    &end.a_to_b.departure_error_ns,
                    &start.a_to_b.departure_error_ns,
                )),
                departure_error_b_to_a_ns: HistSummary::from_histogram(&histogram_delta(
                    &end.b_to_a.departure_error_ns,
                    &start.b_to_a.departure_error_ns,
                )),
                loaded_queue_wait_a_to_b_ns: loaded.queue_waits.as_ref().map_or_else(
                    HistSummary::default,
                    |(before, after)| {
                        HistSummary::from_histogram(&histogram_delta(
                            &after.a_to_b.queue_wait_ns,
                            &before.a_to_b.queue_wait_ns,
                        ))
                    },
                ),
                loaded_queue_wait_b_to_a_ns: loaded.queue_waits.as_ref().map_or_else(
                    HistSummary::default,
                    |(before, after)| {
                        HistSummary::from_histogram(&histogram_delta(
                            &after.b_to_a.queue_wait_ns,
                            &before.b_to_a.queue_wait_ns,
                        ))
                    },
                ),
                bulk_frame_bps: bulk.frame_bps.unwrap_or(0.0),
                udp_phase_dropped_loss: loss_drops(&after_udp)
                    .saturating_sub(loss_drops(&before_udp)),
                dropped_queue: delta(|s| {
                    s.a_to_b.dropped_queue.packets + s.b_to_a.dropped_queue.packets
                }),
                kernel_drops: delta(|s| s.a_to_b.kernel_drops + s.b_to_a.kernel_drops),
                dropped_overflow: delta(|s| {
                    s.a_to_b.dropped_overflow.packets + s.b_to_a.dropped_overflow.packets
                }),
                send_errors: delta(|s| s.a_to_b.send_errors.packets + s.b_to_a.send_errors.packets),
                transferred_bytes: delta(RelayStats::transferred_bytes),
            })
        }
        _ => None,
    };

    Ok(CalibrationReport {
        plan: env.plan.clone(),
        idle_rtt,
        loaded_rtt: loaded.rtt,
        udp_rtt,
        udp_loss,
        bulk_goodput_bps: bulk.goodput_bps,
        bulk: bulk.detail,
        loaded_goodput_bps: loaded.goodput_bps,
        relay,
        configured,
    })
}

/// `end - start` of two snapshots of one cumulative histogram.
fn histogram_delta(end: &Histogram<u64>, start: &Histogram<u64>) -> Histogram<u64> {
    let mut delta = end.clone();
    if let Err(e) = delta.subtract(start) {
        // Cannot happen for snapshots of one growing histogram; if it did,
        // the whole history is still a truthful (if wider) answer.
        tracing::warn!(error = %e, "departure error histogram: using the relay's whole history");
        return end.clone();
    }
    delta
}

fn new_histogram() -> Histogram<u64> {
    // 1 ns to 60 s at 3 significant digits: constant, valid bounds.
    Histogram::new_with_bounds(1, HIST_MAX_NS, 3).expect("constant histogram bounds are valid")
}

/// Maps socket errors of one phase: timeouts become `Stalled`.
#[derive(Clone, Copy)]
struct Ctx {
    phase: Phase,
    timeout: Duration,
}

impl Ctx {
    fn err(self, what: &'static str) -> impl Fn(io::Error) -> CalibrationError {
        move |source| match source.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => CalibrationError::Stalled {
                phase: self.phase,
                what,
                waited: self.timeout,
            },
            _ => CalibrationError::Io {
                phase: self.phase,
                what,
                source,
            },
        }
    }

    fn join<T>(
        self,
        handle: ScopedJoinHandle<'_, Result<T, CalibrationError>>,
        thread: &'static str,
    ) -> Result<T, CalibrationError> {
        handle.join().unwrap_or(Err(CalibrationError::Panicked {
            phase: self.phase,
            thread,
        }))
    }
}

/// A connected TCP pair, `src` end first, both with `TCP_NODELAY` and
/// read/write timeouts.
fn tcp_pair(env: &Env<'_>, ctx: Ctx) -> Result<(TcpStream, TcpStream), CalibrationError> {
    let timeout = env.plan.io_timeout;
    let dst_addr = env.dst_addr;
    let listener = env
        .dst
        .run(|| TcpListener::bind((dst_addr, 0)))?
        .map_err(ctx.err("binding a TCP listener in dst"))?;
    let addr = listener
        .local_addr()
        .map_err(ctx.err("reading the listener's address"))?;
    let client = env
        .src
        .run(|| TcpStream::connect_timeout(&addr, timeout))?
        .map_err(ctx.err("connecting from src to dst"))?;
    // The handshake's last ACK may still be crossing the link (or be
    // lost, until the next segment carries it): poll for it.
    listener
        .set_nonblocking(true)
        .map_err(ctx.err("making the listener non-blocking"))?;
    let deadline = Instant::now() + timeout;
    let server = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(ctx.err("accepting the connection in dst")(e)),
        }
    };
    for stream in [&client, &server] {
        stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_nodelay(true))
            .and_then(|()| stream.set_read_timeout(Some(timeout)))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(ctx.err("setting socket options"))?;
    }
    Ok((client, server))
}

/// Echoes `len`-byte messages until the peer closes.
fn echo(mut stream: TcpStream, len: usize, ctx: Ctx) -> Result<(), CalibrationError> {
    let mut buf = vec![0; len];
    loop {
        match stream.read_exact(&mut buf) {
            Ok(()) => {}
            // The client's shutdown: the normal end.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(ctx.err("echo server reading a request")(e)),
        }
        stream
            .write_all(&buf)
            .map_err(ctx.err("echo server writing a response"))?;
    }
}

/// Timed request/response exchanges until `max` are recorded or
/// `deadline` passes.
fn round_trips(
    mut stream: &TcpStream,
    len: usize,
    max: u32,
    deadline: Instant,
    ctx: Ctx,
) -> Result<Histogram<u64>, CalibrationError> {
    let mut hist = new_histogram();
    let mut request = vec![0u8; len];
    let mut response = vec![0u8; len];
    for exchange in 0..max.saturating_add(WARMUP_EXCHANGES) {
        if exchange >= WARMUP_EXCHANGES && Instant::now() >= deadline {
            break;
        }
        // A different request each time, so a stale or misrouted response
        // cannot pass for the right one.
        request[..4].copy_from_slice(&exchange.to_le_bytes());
        for (i, byte) in request[4..].iter_mut().enumerate() {
            *byte = (exchange as usize).wrapping_add(i) as u8;
        }
        let sent = Instant::now();
        stream
            .write_all(&request)
            .map_err(ctx.err("writing a request"))?;
        stream
            .read_exact(&mut response)
            .map_err(ctx.err("reading a response"))?;
        let rtt = sent.elapsed();
        if response != request {
            return Err(CalibrationError::EchoMismatch {
                phase: ctx.phase,
                exchange,
            });
        }
        if exchange >= WARMUP_EXCHANGES {
            hist.saturating_record(nanos(rtt));
        }
    }
    Ok(hist)
}

/// Runs `round_trips` on `client` against an echo thread on `server`, and
/// stops the echo thread whatever happens.
fn echoed_round_trips(
    client: &TcpStream,
    server: TcpStream,
    env: &Env<'_>,
    ctx: Ctx,
    deadline: impl FnOnce() -> Instant,
) -> Result<Histogram<u64>, CalibrationError> {
    let len = env.plan.message_bytes;
    std::thread::scope(|s| {
        let echo = s.spawn(move || echo(server, len, ctx));
        let result = round_trips(client, len, env.plan.round_trips, deadline(), ctx);
        // EOF for the echo thread, on success and on failure alike.
        let _ = client.shutdown(Shutdown::Write);
        let echoed = ctx.join(echo, "echo");
        let hist = result?;
        echoed?;
        Ok(hist)
    })
}

fn idle_round_trips(env: &Env<'_>) -> Result<HistSummary, CalibrationError> {
    let ctx = Ctx {
        phase: Phase::IdleRtt,
        timeout: env.plan.io_timeout,
    };
    let (client, server) = tcp_pair(env, ctx)?;
    let hist = echoed_round_trips(&client, server, env, ctx, || {
        Instant::now() + env.plan.idle_max
    })?;
    Ok(HistSummary::from_histogram(&hist))
}

/// Probe layout: sequence number, then nanoseconds from the phase's start
/// to the send, both little-endian, then padding.
fn encode_probe(buf: &mut [u8], seq: u64, sent_ns: u64) {
    buf[..8].copy_from_slice(&seq.to_le_bytes());
    buf[8..16].copy_from_slice(&sent_ns.to_le_bytes());
}

fn decode_probe(buf: &[u8]) -> Option<(u64, u64)> {
    let seq = u64::from_le_bytes(buf.get(..8)?.try_into().ok()?);
    let sent_ns = u64::from_le_bytes(buf.get(8..16)?.try_into().ok()?);
    Some((seq, sent_ns))
}

fn udp_probes(env: &Env<'_>) -> Result<(HistSummary, UdpLoss), CalibrationError> {
    let ctx = Ctx {
        phase: Phase::Udp,
        timeout: env.plan.io_timeout,
    };
    let plan = env.plan;
    let dst_addr = env.dst_addr;
    let responder = env
        .dst
        .run(|| UdpSocket::bind((dst_addr, 0)))?
        .map_err(ctx.err("binding the UDP responder in dst"))?;
    let responder_addr = responder
        .local_addr()
        .map_err(ctx.err("reading the responder's address"))?;
    let prober = env
        .src
        .run(|| {
            let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
            socket.connect(responder_addr)?;
            Ok::<_, io::Error>(socket)
        })?
        .map_err(ctx.err("opening the UDP prober in src"))?;
    for socket in [&responder, &prober] {
        socket
            .set_read_timeout(Some(POLL))
            .and_then(|()| socket.set_write_timeout(Some(plan.io_timeout)))
            .map_err(ctx.err("setting socket options"))?;
    }
    let sender_socket = prober
        .try_clone()
        .map_err(ctx.err("cloning the prober socket"))?;

    let stop = AtomicBool::new(false);
    // When the last probe went out, and how many did.
    let finished: OnceLock<(Instant, u64)> = OnceLock::new();
    let base = Instant::now();
    let len = plan.message_bytes;

    std::thread::scope(|s| {
        let responder_thread = s.spawn(|| respond(&responder, len, &stop, ctx));
        let sender_thread = s.spawn(|| {
            let result = send_probes(&sender_socket, plan, base, &stop, ctx);
            let sent = *result.as_ref().unwrap_or(&0);
            let _ = finished.set((Instant::now(), sent));
            result
        });

        let received = collect_answers(&prober, env, base, &finished, ctx);
        stop.store(true, Ordering::Release);
        let sent = ctx.join(sender_thread, "udp-sender");
        let responded = ctx.join(responder_thread, "udp-responder");
        let (hist, mut loss) = received?;
        loss.sent = sent?;
        responded?;
        loss.observed = if loss.sent == 0 {
            0.0
        } else {
            1.0 - loss.received as f64 / loss.sent as f64
        };
        Ok((HistSummary::from_histogram(&hist), loss))
    })
}

/// Sends the plan's probes on schedule, unless stopped (the receiver
/// failed); returns how many went out.
fn send_probes(
    socket: &UdpSocket,
    plan: &CalibrationPlan,
    base: Instant,
    stop: &AtomicBool,
    ctx: Ctx,
) -> Result<u64, CalibrationError> {
    let mut buf = vec![0u8; plan.message_bytes];
    let mut sent = 0;
    for seq in 0..u64::from(plan.udp_probes) {
        if stop.load(Ordering::Acquire) {
            break;
        }
        // Absolute schedule: a late wake-up sends at once and the next
        // probe keeps its own time, so the mean rate holds.
        let due = base + plan.udp_interval.saturating_mul(seq as u32);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        encode_probe(&mut buf, seq, nanos(base.elapsed()));
        socket.send(&buf).map_err(ctx.err("sending a probe"))?;
        sent += 1;
    }
    Ok(sent)
}

/// Echoes every datagram to its sender until `stop`.
fn respond(
    socket: &UdpSocket,
    len: usize,
    stop: &AtomicBool,
    ctx: Ctx,
) -> Result<(), CalibrationError> {
    let mut buf = vec![0u8; len + 1];
    while !stop.load(Ordering::Acquire) {
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                socket
                    .send_to(&buf[..n], from)
                    .map_err(ctx.err("answering a probe"))?;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(ctx.err("responder receiving a probe")(e)),
        }
    }
    Ok(())
}

/// Reads answers until every probe sent is answered or the drain time
/// after the last one has passed.
fn collect_answers(
    socket: &UdpSocket,
    env: &Env<'_>,
    base: Instant,
    finished: &OnceLock<(Instant, u64)>,
    ctx: Ctx,
) -> Result<(Histogram<u64>, UdpLoss), CalibrationError> {
    let plan = env.plan;
    let drain = plan.udp_drain + env.worst_rtt;
    // A backstop in case the sender never reports (it always does, even on
    // error): the whole schedule, the drain and one timeout.
    let backstop =
        base + plan.udp_interval.saturating_mul(plan.udp_probes) + drain + plan.io_timeout;
    let probes = plan.udp_probes as usize;
    let mut answered = vec![false; probes];
    let mut hist = new_histogram();
    let mut loss = UdpLoss {
        sent: 0,
        received: 0,
        duplicates: 0,
        malformed: 0,
        observed: 0.0,
        expected: 0.0,
        sampling_stddev: 0.0,
    };
    let mut buf = vec![0u8; plan.message_bytes + 1];
    loop {
        let now = Instant::now();
        if let Some(&(last, sent)) = finished.get() {
            if loss.received >= sent || now >= last + drain {
                break;
            }
        }
        if now >= backstop {
            break;
        }
        match socket.recv(&mut buf) {
            Ok(n) => {
                let arrived = base.elapsed();
                let probe = (n == plan.message_bytes)
                    .then(|| decode_probe(&buf[..n]))
                    .flatten()
                    .filter(|&(seq, sent_ns)| {
                        (seq as usize) < probes && u128::from(sent_ns) <= arrived.as_nanos()
                    });
                let Some((seq, sent_ns)) = probe else {
                    loss.malformed += 1;
                    continue;
                };
                let slot = &mut answered[seq as usize];
                if *slot {
                    loss.duplicates += 1;
                    continue;
                }
                *slot = true;
                loss.received += 1;
                hist.saturating_record(nanos(arrived).saturating_sub(sent_ns));
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(ctx.err("receiving an answer")(e)),
        }
    }
    Ok((hist, loss))
}

/// A bulk flow `src -> dst` running on two scoped threads.
struct BulkFlow<'scope> {
    sender: ScopedJoinHandle<'scope, Result<(), CalibrationError>>,
    sink: ScopedJoinHandle<'scope, Result<(), CalibrationError>>,
    /// Clones of the two sockets, to wake the threads with `shutdown`.
    sender_socket: TcpStream,
    sink_socket: TcpStream,
    mss: u32,
}

/// What the bulk threads share with the phase.
struct BulkShared {
    stop: AtomicBool,
    received: AtomicU64,
}

impl BulkShared {
    fn new() -> Self {
        Self {
            stop: AtomicBool::new(false),
            received: AtomicU64::new(0),
        }
    }
}

/// Connects a bulk pair and starts the sender and the sink.
fn start_bulk<'scope, 'env>(
    s: &'scope Scope<'scope, 'env>,
    env: &Env<'_>,
    shared: &'env BulkShared,
    ctx: Ctx,
) -> Result<BulkFlow<'scope>, CalibrationError> {
    let (client, server) = tcp_pair(env, ctx)?;
    let mss = tcp_mss(&client).map_err(ctx.err("reading TCP_MAXSEG"))?;
    let sender_socket = client
        .try_clone()
        .map_err(ctx.err("cloning the bulk socket"))?;
    let sink_socket = server
        .try_clone()
        .map_err(ctx.err("cloning the bulk socket"))?;
    let sender = s.spawn(move || send_bulk(client, shared, ctx));
    let sink = s.spawn(move || sink_bulk(server, shared, ctx));
    Ok(BulkFlow {
        sender,
        sink,
        sender_socket,
        sink_socket,
        mss,
    })
}

impl BulkFlow<'_> {
    /// Stops both threads, drops what is still queued (so no data from
    /// this flow crosses the link after the phase), and joins them.
    fn stop(self, shared: &BulkShared, ctx: Ctx) -> Result<(), CalibrationError> {
        shared.stop.store(true, Ordering::Release);
        for socket in [&self.sender_socket, &self.sink_socket] {
            // Failing here only delays the thread until its next timeout.
            if let Err(e) = abort_on_close(socket) {
                tracing::debug!(error = %e, "SO_LINGER 0 on a bulk socket");
            }
            let _ = socket.shutdown(Shutdown::Both);
        }
        let sent = ctx.join(self.sender, "bulk-sender");
        let sunk = ctx.join(self.sink, "bulk-sink");
        sent?;
        sunk
    }
}

fn send_bulk(mut stream: TcpStream, shared: &BulkShared, ctx: Ctx) -> Result<(), CalibrationError> {
    let buf: Vec<u8> = (0..BULK_CHUNK).map(|i| i as u8).collect();
    while !shared.stop.load(Ordering::Acquire) {
        match stream.write(&buf) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // `stop` shuts the socket down under a blocked write.
            Err(_) if shared.stop.load(Ordering::Acquire) => break,
            Err(e) => return Err(ctx.err("bulk sender writing")(e)),
        }
    }
    Ok(())
}

fn sink_bulk(mut stream: TcpStream, shared: &BulkShared, ctx: Ctx) -> Result<(), CalibrationError> {
    let mut buf = vec![0u8; BULK_CHUNK];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                shared.received.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) if shared.stop.load(Ordering::Acquire) => return Ok(()),
            Err(e) => return Err(ctx.err("bulk sink reading")(e)),
        }
    }
}

/// Makes `close` reset the connection and drop unsent data at once
/// (`SO_LINGER` with a zero timeout) instead of draining it through the
/// link after the phase.
fn abort_on_close(stream: &TcpStream) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the descriptor is open (borrowed from `stream`), and the
    // option value is a live `linger` whose exact size is passed.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::from_ref(&linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The connection's current MSS: payload bytes per full-sized segment.
fn tcp_mss(stream: &TcpStream) -> io::Result<u32> {
    let mut mss: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the descriptor is open (borrowed from `stream`); `mss` and
    // `len` are live locals and `len` holds the size of `mss`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            std::ptr::from_mut(&mut mss).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    u32::try_from(mss).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("TCP_MAXSEG returned {mss}"),
        )
    })
}

/// A snapshot at one edge of a goodput window.
struct Mark {
    at: Instant,
    received: u64,
    frame_bytes: Option<u64>,
}

impl Mark {
    fn take(shared: &BulkShared, relay: Option<&Relay>) -> Self {
        Self {
            at: Instant::now(),
            received: shared.received.load(Ordering::Relaxed),
            frame_bytes: relay.map(|r| r.stats().a_to_b.sent.bytes),
        }
    }
}

/// Bit/s between two marks: payload, and frames if the relay is read.
fn rates(from: &Mark, to: &Mark) -> (f64, Option<f64>, u64, f64) {
    let seconds = to.at.duration_since(from.at).as_secs_f64();
    let bytes = to.received.saturating_sub(from.received);
    let per_second = |b: u64| {
        if seconds > 0.0 {
            b as f64 * 8.0 / seconds
        } else {
            0.0
        }
    };
    let frames = match (from.frame_bytes, to.frame_bytes) {
        (Some(a), Some(b)) => Some(per_second(b.saturating_sub(a))),
        _ => None,
    };
    (per_second(bytes), frames, bytes, seconds)
}

struct BulkResult {
    goodput_bps: f64,
    frame_bps: Option<f64>,
    detail: BulkDetail,
}

fn bulk(env: &Env<'_>, rate_bps: Option<u64>) -> Result<BulkResult, CalibrationError> {
    let ctx = Ctx {
        phase: Phase::Bulk,
        timeout: env.plan.io_timeout,
    };
    let shared = BulkShared::new();
    std::thread::scope(|s| {
        let flow = start_bulk(s, env, &shared, ctx)?;
        let mss = flow.mss;
        std::thread::sleep(env.plan.bulk_warmup);
        let from = Mark::take(&shared, env.relay);
        std::thread::sleep(env.plan.bulk_duration);
        let to = Mark::take(&shared, env.relay);
        flow.stop(&shared, ctx)?;
        let (goodput_bps, frame_bps, bytes, seconds) = rates(&from, &to);
        let frame_len = u64::from(MTU) + ETHERNET_HEADER_BYTES;
        Ok(BulkResult {
            goodput_bps,
            frame_bps,
            detail: BulkDetail {
                bytes,
                seconds,
                mss_bytes: mss,
                payload_ceiling_bps: rate_bps
                    .map(|rate| rate as f64 * f64::from(mss) / frame_len as f64),
            },
        })
    })
}

/// Phase 4's measurements.
struct Loaded {
    rtt: HistSummary,
    goodput_bps: f64,
    /// Relay counters just before and just after the round trips.
    queue_waits: Option<(RelayStats, RelayStats)>,
}

fn loaded_round_trips(env: &Env<'_>) -> Result<Loaded, CalibrationError> {
    let ctx = Ctx {
        phase: Phase::LoadedRtt,
        timeout: env.plan.io_timeout,
    };
    // Connected before the load starts: a handshake behind a full queue
    // would only add a retransmitted SYN to the phase.
    let (client, server) = tcp_pair(env, ctx)?;
    let shared = BulkShared::new();
    std::thread::scope(|s| {
        let flow = start_bulk(s, env, &shared, ctx)?;
        std::thread::sleep(env.plan.bulk_warmup);
        let from = Mark::take(&shared, None);
        let relay_before = env.relay.map(Relay::stats);
        let result = echoed_round_trips(&client, server, env, ctx, || {
            Instant::now() + env.plan.loaded_duration
        });
        let relay_after = env.relay.map(Relay::stats);
        let to = Mark::take(&shared, None);
        let stopped = flow.stop(&shared, ctx);
        let hist = result?;
        stopped?;
        let (goodput_bps, ..) = rates(&from, &to);
        Ok(Loaded {
            rtt: HistSummary::from_histogram(&hist),
            goodput_bps,
            queue_waits: relay_before.zip(relay_after),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_round_trip_and_short_ones_are_rejected() {
        let mut buf = [0u8; 64];
        encode_probe(&mut buf, 1234, 5_678_000);
        assert_eq!(decode_probe(&buf), Some((1234, 5_678_000)));
        assert_eq!(decode_probe(&buf[..15]), None);
    }

    #[test]
    fn rates_between_marks() {
        let at = Instant::now();
        let from = Mark {
            at,
            received: 1_000,
            frame_bytes: Some(10_000),
        };
        let to = Mark {
            at: at + Duration::from_millis(500),
            received: 1_000 + 6_250_000,
            frame_bytes: Some(10_000 + 6_500_000),
        };
        let (goodput, frames, bytes, seconds) = rates(&from, &to);
        assert_eq!(bytes, 6_250_000);
        assert!((seconds - 0.5).abs() < 1e-9);
        assert!((goodput - 100e6).abs() < 1.0, "{goodput}");
        assert!((frames.unwrap() - 104e6).abs() < 1.0);
    }
}
