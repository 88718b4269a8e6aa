//! The user-space link emulator: a packet relay between two interfaces.
//!
//! On hosts without the `netem` qdisc, the link between the `src` and
//! `dst` namespaces is a third namespace holding two veth ends, `A` and
//! `B`, with this relay between them:
//!
//! ```text
//! src: s0 <--veth--> [ A  relay  B ] <--veth--> d0 :dst
//! ```
//!
//! The relay reads every frame arriving on one interface with an
//! `AF_PACKET` socket and sends it out of the other, applying per
//! direction, in this order: loss ([`LossModel`]), a byte-limited
//! drop-tail queue, serialization at a rate, then a constant propagation
//! delay with optional jitter (never reordering). Frames the host itself
//! sends (`PACKET_OUTGOING`) are ignored, so the relay never loops its own
//! transmissions.
//!
//! # Layout
//!
//! - `config`: [`LinkConfig`], [`DirectionConfig`], [`LossModel`],
//!   validated up front ([`ConfigError`]).
//! - `shaper`: the link model alone (loss draws, queue, departure times),
//!   unit tested without sockets.
//! - `relay`: the per-direction thread (recvmmsg, schedule, sendmmsg).
//! - `stats`: [`RelayStats`], per-direction [`Count`]s and the departure
//!   error histogram.
//! - `offload`: [`disable_offloads`], the `ethtool -K` the relay needs,
//!   without the binary.
//! - `sys`: the raw Linux calls, each `unsafe` justified there.
//!
//! # Behavior
//!
//! - One thread per direction; each blocks in `ppoll` until a frame
//!   arrives or the next departure is a spin window away, then spins, so
//!   frames leave within microseconds of their schedule when a core is
//!   free. The window is at least `spin_window` and widens (up to 1 ms) to
//!   cover how late recent `ppoll` timeouts woke. Every departure's error
//!   (actual minus scheduled) is recorded.
//! - [`Relay::stop`] (or drop) wakes both threads through an eventfd,
//!   joins them, and closes all four sockets; frames still scheduled are
//!   counted as `discarded_at_stop`.
//! - The interfaces may go down and up while the relay runs (fault
//!   windows); frames that cannot be sent are counted as `send_errors`.
//!
//! # Limitations
//!
//! - Offloads must be off on every veth frames cross (see
//!   [`disable_offloads`]): TSO/GSO super-frames are dropped as
//!   `dropped_oversize`, and frames with an unfinished checksum are
//!   rejected by the receiving host.
//! - Copies each frame in and out of user space (`recvmmsg`/`sendmmsg`);
//!   `TPACKET_V3` rings would save the copies and are not done yet.
//! - The spin costs up to a core per direction while frames are due
//!   back to back (a rate-limited stream); on two cores that competes with
//!   the endpoints. The departure-error histogram shows when it hurts.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use netem::link::{DirectionConfig, LinkConfig, LossModel, Relay};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let netns = std::fs::File::open("/run/netns/run42-link")?;
//! let config = LinkConfig::asymmetric(
//!     DirectionConfig {
//!         delay: Duration::from_millis(10),
//!         rate_bps: Some(100_000_000),
//!         loss: LossModel::Random { p: 0.01 },
//!         ..DirectionConfig::default()
//!     },
//!     DirectionConfig::with_delay(Duration::from_millis(10)),
//! );
//! let relay = Relay::start_in(&netns, "la", "lb", config)?;
//! // ... run the workload between the src and dst namespaces ...
//! let stats = relay.stop()?;
//! println!(
//!     "a->b sent {} frames, p99 departure error {} ns",
//!     stats.a_to_b.sent.packets,
//!     stats.a_to_b.departure_error_ns.value_at_quantile(0.99)
//! );
//! # Ok(())
//! # }
//! ```

mod config;
mod offload;
mod relay;
mod shaper;
mod stats;
mod sys;

pub use config::{ConfigError, DirectionConfig, LinkConfig, LossModel, MAX_BATCH, MAX_DELAY};
pub use offload::{disable_offloads, offloads, OffloadError, Offloads};
pub use stats::{Count, DirectionStats, RelayStats};

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use relay::Worker;
use shaper::Shaper;
use stats::SharedStats;

/// Why a relay could not start, or why a relay thread ended.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// A configuration value out of range.
    #[error("invalid link config: {0}")]
    Config(#[from] ConfigError),
    /// The name cannot be an interface name.
    #[error("interface name {0:?} is invalid; allowed: 1 to 15 bytes, no NUL or '/'")]
    InvalidName(String),
    /// Both ends are the same interface.
    #[error("the relay needs two different interfaces; both are {0:?}")]
    SameInterface(String),
    /// The interface is administratively down.
    #[error("interface {0} is down; bring it up (ip link set {0} up) before starting the relay")]
    InterfaceDown(String),
    /// A syscall on an interface's socket failed.
    #[error("interface {interface}: {syscall} failed: {source}")]
    Sys {
        /// The interface the socket is bound to (or was being opened for).
        interface: String,
        /// The call that failed.
        syscall: &'static str,
        /// What the kernel said.
        source: io::Error,
    },
    /// Entering the given network namespace failed.
    #[error("could not enter the link's network namespace: {syscall} failed: {source}")]
    Netns {
        /// The call that failed.
        syscall: &'static str,
        /// What the kernel said.
        source: io::Error,
    },
    /// A thread could not be started.
    #[error("could not start thread {name}: {source}")]
    Spawn {
        /// The thread's name.
        name: &'static str,
        /// What the OS said.
        source: io::Error,
    },
    /// A relay thread panicked (a bug).
    #[error("relay thread {0} panicked")]
    Panicked(&'static str),
}

impl RelayError {
    fn sys(interface: &str, e: sys::SysError) -> Self {
        RelayError::Sys {
            interface: interface.to_owned(),
            syscall: e.syscall,
            source: e.source,
        }
    }
}

/// One interface's two sockets, opened in the link namespace.
#[derive(Debug)]
struct Endpoint {
    name: String,
    rx: OwnedFd,
    tx: OwnedFd,
    mtu: usize,
}

impl Endpoint {
    /// Opens the sockets for `name` in the calling thread's namespace.
    fn open(name: &str, config: &LinkConfig) -> Result<Self, RelayError> {
        let on = |e| RelayError::sys(name, e);
        let rx = sys::packet_socket().map_err(on)?;
        let index = sys::ifindex(rx.as_fd(), name).map_err(on)?;
        let mtu = sys::mtu(rx.as_fd(), name).map_err(on)?;
        if !sys::is_up(rx.as_fd(), name).map_err(on)? {
            return Err(RelayError::InterfaceDown(name.to_owned()));
        }
        if !sys::ignore_outgoing(rx.as_fd()).map_err(on)? {
            tracing::debug!(
                interface = name,
                "no PACKET_IGNORE_OUTGOING; filtering own frames by sll_pkttype"
            );
        }
        sys::socket_buffer(rx.as_fd(), true, config.socket_buffer_bytes).map_err(on)?;
        sys::bind_receive_all(rx.as_fd(), index).map_err(on)?;

        let tx = sys::packet_socket().map_err(on)?;
        sys::bind_packet(tx.as_fd(), index, 0).map_err(on)?;
        if let Err(e) = sys::qdisc_bypass(tx.as_fd()) {
            tracing::debug!(interface = name, error = %e.source, "no PACKET_QDISC_BYPASS; sending through the qdisc");
        }
        sys::socket_buffer(tx.as_fd(), false, config.socket_buffer_bytes).map_err(on)?;
        Ok(Self {
            name: name.to_owned(),
            rx,
            tx,
            // A negative MTU is impossible; 0 would only make every frame
            // oversize, which the counters show.
            mtu: usize::try_from(mtu).unwrap_or(0),
        })
    }
}

/// A running packet relay between two interfaces (see the module docs).
#[derive(Debug)]
pub struct Relay {
    if_a: String,
    if_b: String,
    stop: Arc<AtomicBool>,
    shutdown: Arc<OwnedFd>,
    threads: Vec<(&'static str, JoinHandle<Result<(), RelayError>>)>,
    a_to_b: Arc<SharedStats>,
    b_to_a: Arc<SharedStats>,
}

impl Relay {
    /// Starts relaying between `if_a` and `if_b`, which must exist and be
    /// up in the calling thread's network namespace.
    pub fn start(if_a: &str, if_b: &str, config: LinkConfig) -> Result<Self, RelayError> {
        Self::check(if_a, if_b, &config)?;
        let a = Endpoint::open(if_a, &config)?;
        let b = Endpoint::open(if_b, &config)?;
        Self::spawn(a, b, config)
    }

    /// Starts relaying between `if_a` and `if_b` in the network namespace
    /// `netns` refers to (e.g. an open `/run/netns/NAME`). The caller's
    /// thread stays where it is: the sockets are opened by a short-lived
    /// thread that enters the namespace, and keep it for their lifetime.
    pub fn start_in(
        netns: impl AsFd,
        if_a: &str,
        if_b: &str,
        config: LinkConfig,
    ) -> Result<Self, RelayError> {
        Self::check(if_a, if_b, &config)?;
        let netns = netns.as_fd();
        let opened = std::thread::scope(|scope| {
            let opener = std::thread::Builder::new()
                .name("relay-open".into())
                .spawn_scoped(scope, || {
                    sys::setns_net(netns).map_err(|e| RelayError::Netns {
                        syscall: e.syscall,
                        source: e.source,
                    })?;
                    Ok((
                        Endpoint::open(if_a, &config)?,
                        Endpoint::open(if_b, &config)?,
                    ))
                })
                .map_err(|source| RelayError::Spawn {
                    name: "relay-open",
                    source,
                })?;
            opener
                .join()
                .unwrap_or(Err(RelayError::Panicked("relay-open")))
        });
        let (a, b) = opened?;
        Self::spawn(a, b, config)
    }

    fn check(if_a: &str, if_b: &str, config: &LinkConfig) -> Result<(), RelayError> {
        config.validate()?;
        for name in [if_a, if_b] {
            if !sys::valid_ifname(name) {
                return Err(RelayError::InvalidName(name.to_owned()));
            }
        }
        if if_a == if_b {
            return Err(RelayError::SameInterface(if_a.to_owned()));
        }
        Ok(())
    }

    fn spawn(a: Endpoint, b: Endpoint, config: LinkConfig) -> Result<Self, RelayError> {
        let shutdown = Arc::new(sys::eventfd().map_err(|e| RelayError::sys(&a.name, e))?);
        let stop = Arc::new(AtomicBool::new(false));
        let seed = config.seed.unwrap_or_else(sys::random_seed);
        let mtu = a.mtu.max(b.mtu);
        let a_to_b = Arc::new(SharedStats::new());
        let b_to_a = Arc::new(SharedStats::new());
        let worker = |direction,
                      ingress: &str,
                      egress: &str,
                      rx,
                      tx,
                      link,
                      stats: &Arc<SharedStats>,
                      stream: u64| Worker {
            direction,
            ingress: ingress.to_owned(),
            egress: egress.to_owned(),
            rx,
            tx,
            shutdown: shutdown.clone(),
            stop: stop.clone(),
            // One seed, a distinct stream per direction.
            shaper: Shaper::new(link, seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            stats: stats.clone(),
            mtu,
            batch: config.batch,
            max_in_flight: config.max_in_flight_packets,
            spin_window: config.spin_window,
        };
        let Endpoint {
            name: if_a,
            rx: a_rx,
            tx: a_tx,
            ..
        } = a;
        let Endpoint {
            name: if_b,
            rx: b_rx,
            tx: b_tx,
            ..
        } = b;
        let workers = [
            (
                "relay-a2b",
                worker(
                    "a_to_b",
                    &if_a,
                    &if_b,
                    a_rx,
                    b_tx,
                    config.a_to_b,
                    &a_to_b,
                    1,
                ),
            ),
            (
                "relay-b2a",
                worker(
                    "b_to_a",
                    &if_b,
                    &if_a,
                    b_rx,
                    a_tx,
                    config.b_to_a,
                    &b_to_a,
                    2,
                ),
            ),
        ];
        tracing::info!(%if_a, %if_b, ?config, "link relay starting");
        let mut relay = Relay {
            if_a,
            if_b,
            stop,
            shutdown,
            threads: Vec::with_capacity(2),
            a_to_b,
            b_to_a,
        };
        for (name, worker) in workers {
            let handle = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || worker.run())
                // Dropping `relay` stops a thread already started.
                .map_err(|source| RelayError::Spawn { name, source })?;
            relay.threads.push((name, handle));
        }
        Ok(relay)
    }

    /// The two interfaces, A then B.
    pub fn interfaces(&self) -> (&str, &str) {
        (&self.if_a, &self.if_b)
    }

    /// A snapshot of both directions' counters and departure errors.
    pub fn stats(&self) -> RelayStats {
        RelayStats {
            a_to_b: self.a_to_b.snapshot(),
            b_to_a: self.b_to_a.snapshot(),
        }
    }

    /// Whether both relay threads are still running (a thread ends early
    /// only on a socket error it cannot recover from; [`Relay::stop`]
    /// returns that error).
    pub fn is_running(&self) -> bool {
        self.threads.len() == 2 && self.threads.iter().all(|(_, handle)| !handle.is_finished())
    }

    /// Stops both threads, closes the sockets, and returns the final
    /// counters, or the first error a thread ended with.
    pub fn stop(mut self) -> Result<RelayStats, RelayError> {
        self.shut_down()?;
        Ok(self.stats())
    }

    fn shut_down(&mut self) -> Result<(), RelayError> {
        self.stop.store(true, Ordering::Release);
        // Threads also check `stop` on every turn, so a failed signal only
        // delays them until their next wake; it is still reported.
        let signalled = sys::eventfd_signal(self.shutdown.as_fd());
        let mut first_error = None;
        for (name, handle) in self.threads.drain(..) {
            let result = handle.join().unwrap_or(Err(RelayError::Panicked(name)));
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        signalled.map_err(|e| RelayError::sys(&self.if_a, e))
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if self.threads.is_empty() {
            return;
        }
        if let Err(e) = self.shut_down() {
            tracing::warn!(error = %e, if_a = %self.if_a, if_b = %self.if_b, "link relay ended with an error");
        }
    }
}
