//! Link calibration: measures what the emulated link between a topology's
//! `src` and `dst` really does, next to what it was configured to do.
//!
//! The project measures its emulator's accuracy instead of assuming it
//! (DESIGN.md, "Network emulation"). [`run`] drives four phases through the
//! link, one after the other, with sockets opened in the two namespaces:
//!
//! 1. **Idle TCP round trips**: one connection (`TCP_NODELAY` on both ends),
//!    many small request/response exchanges, each round trip timed.
//! 2. **UDP probes**: sequence-numbered datagrams at a paced rate, echoed by
//!    a responder in `dst`; round-trip times of the answered ones, and the
//!    fraction never answered.
//! 3. **Bulk TCP** from `src` to `dst`: payload bytes the receiver read per
//!    second (goodput), over a window that starts after a warm-up.
//! 4. **Loaded TCP round trips**: phase 1 again on its own connection while
//!    a phase-3 flow saturates the link.
//!
//! [`CalibrationReport::check_targets`] then says, quantity by quantity,
//! whether the project's accuracy targets are met (see [`report`] for the
//! bounds, all named constants).
//!
//! # Behavior
//!
//! - The relay (or kernel netem) must already shape the link; calibration
//!   only sends traffic and reads clocks. `relay_config` is what it reports
//!   as "configured". The relay's interface A is taken to face `src`
//!   (`Relay::start_in(link_ns, LINK_SRC_IF, LINK_DST_IF, config)`), so
//!   `a_to_b` is `src -> dst`, the direction of the bulk flow.
//! - Every socket op has a timeout ([`CalibrationPlan::io_timeout`]): a link
//!   that carries nothing (no relay running) ends in
//!   [`CalibrationError::Stalled`], never a hang. Every thread a phase
//!   starts is joined before the phase returns, error or not.
//! - With [`run_with_relay`], relay counter snapshots taken around each
//!   phase add the departure error, the frame rate during the bulk window
//!   and the emulator's own drops to the report.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use netem::calibrate::{self, CalibrationPlan, Verdict};
//! use netem::link::{DirectionConfig, LinkConfig, Relay};
//! use netem::topology::{Layout, NetNs, Topology};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let topology = Topology::create(&Topology::new_run_id(), Layout::Relayed)?;
//! let config = LinkConfig::symmetric(DirectionConfig::with_delay(Duration::from_millis(5)));
//! let link_ns = NetNs::open(topology.link_ns().ok_or("not relayed")?)?;
//! let (a, b) = (topology.link_src_if(), topology.link_dst_if());
//! let relay = Relay::start_in(&link_ns, a.ok_or("no if")?, b.ok_or("no if")?, config.clone())?;
//!
//! let report = calibrate::run_with_relay(&topology, &config, &relay, &CalibrationPlan::default())?;
//! println!("idle RTT p50 {} ns", report.idle_rtt.p50_ns);
//! for check in report.check_targets() {
//!     if check.verdict == Verdict::Missed {
//!         println!("{}: {} vs {} {}", check.quantity, check.measured, check.expected, check.unit);
//!     }
//! }
//! relay.stop()?;
//! topology.destroy()?;
//! # Ok(())
//! # }
//! ```
//!
//! # Limitations
//!
//! - Every endpoint runs in this process, on the same cores as the relay:
//!   what is measured includes the veth hops and the endpoints' wake-ups
//!   (tens of microseconds here), which is also what a run sees.
//! - Loaded round trips queue behind the bulk flow by design: with a rate
//!   limit their RTT is mostly queueing delay (up to the queue limit over
//!   the rate), so no RTT target applies to them then.
//! - Loss is a sample: [`CalibrationPlan::udp_probes`] bounds how finely it
//!   can be resolved; the loss check says when the sample is too small.

mod measure;
pub mod report;

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::link::{ConfigError, LinkConfig, Relay};
use crate::topology::{NetNs, NetNsError, Topology};

pub use report::{
    BulkDetail, CalibrationReport, Configured, HistSummary, RelayObservation, TargetCheck, UdpLoss,
    Verdict,
};

/// Smallest request, response and probe size: a probe carries an 8-byte
/// sequence number and an 8-byte send time.
pub const MIN_MESSAGE_BYTES: usize = 16;
/// Largest request, response and probe size: a UDP probe must fit one
/// 1500-byte frame, or IP fragments would multiply its loss.
pub const MAX_MESSAGE_BYTES: usize = 1400;
/// Shortest accepted socket timeout (a zero timeout means "none" to the
/// kernel and is refused by std).
pub const MIN_IO_TIMEOUT: Duration = Duration::from_millis(10);

/// What to measure and for how long. Fields are public; [`Default`] takes
/// about 5 to 10 s, [`CalibrationPlan::quick`] about 4 s.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CalibrationPlan {
    /// Most request/response exchanges per round-trip phase (idle and
    /// loaded), warm-up excluded.
    pub round_trips: u32,
    /// Bytes of each TCP request, each response and each UDP probe,
    /// [`MIN_MESSAGE_BYTES`]..=[`MAX_MESSAGE_BYTES`].
    pub message_bytes: usize,
    /// Time bound of the idle round-trip phase: on a long RTT it ends
    /// before `round_trips`.
    #[serde(rename = "idle_max_ns", serialize_with = "as_nanos")]
    pub idle_max: Duration,
    /// UDP probes sent.
    pub udp_probes: u32,
    /// Time between two probes' scheduled sends; zero sends back to back
    /// (which can overflow the responder's socket buffer and look like loss).
    #[serde(rename = "udp_interval_ns", serialize_with = "as_nanos")]
    pub udp_interval: Duration,
    /// How long to wait for answers after the last probe, on top of the
    /// configured worst-case RTT; later answers count as lost.
    #[serde(rename = "udp_drain_ns", serialize_with = "as_nanos")]
    pub udp_drain: Duration,
    /// Bulk flow time before its goodput window opens (slow start, queue
    /// filling), for both the bulk and the loaded phases.
    #[serde(rename = "bulk_warmup_ns", serialize_with = "as_nanos")]
    pub bulk_warmup: Duration,
    /// Length of the bulk goodput window.
    #[serde(rename = "bulk_duration_ns", serialize_with = "as_nanos")]
    pub bulk_duration: Duration,
    /// Time bound of the loaded round-trip phase (after the warm-up).
    #[serde(rename = "loaded_duration_ns", serialize_with = "as_nanos")]
    pub loaded_duration: Duration,
    /// Longest any single socket operation may wait (connect, accept, one
    /// read or write) before the phase fails as stalled. Must exceed the
    /// link's worst RTT plus a TCP retransmission timeout (1 s for a SYN).
    #[serde(rename = "io_timeout_ns", serialize_with = "as_nanos")]
    pub io_timeout: Duration,
}

impl Default for CalibrationPlan {
    /// About 5 to 10 s on a 10 ms link: 1000 round trips (at most 2 s), 2000
    /// probes 0.5 ms apart, 3 s of bulk and 2 s loaded, each after 0.5 s of
    /// warm-up.
    fn default() -> Self {
        Self {
            round_trips: 1000,
            message_bytes: 64,
            idle_max: Duration::from_secs(2),
            udp_probes: 2000,
            udp_interval: Duration::from_micros(500),
            udp_drain: Duration::from_millis(200),
            bulk_warmup: Duration::from_millis(500),
            bulk_duration: Duration::from_secs(3),
            loaded_duration: Duration::from_secs(2),
            io_timeout: Duration::from_secs(5),
        }
    }
}

impl CalibrationPlan {
    /// A short plan for tests and smoke checks (about 4 s on a 10 ms link):
    /// 200 round trips (at most 1 s), 500 probes, 1 s bulk and 1 s loaded
    /// after 0.3 s warm-ups.
    pub fn quick() -> Self {
        Self {
            round_trips: 200,
            idle_max: Duration::from_secs(1),
            udp_probes: 500,
            udp_drain: Duration::from_millis(100),
            bulk_warmup: Duration::from_millis(300),
            bulk_duration: Duration::from_secs(1),
            loaded_duration: Duration::from_secs(1),
            ..Self::default()
        }
    }

    /// Checks every value; [`run`] refuses a plan that fails.
    pub fn validate(&self) -> Result<(), CalibrationError> {
        let bad = |field, value: String, allowed| {
            Err(CalibrationError::Plan {
                field,
                value,
                allowed,
            })
        };
        if self.round_trips == 0 {
            return bad("round_trips", "0".into(), "at least 1");
        }
        if !(MIN_MESSAGE_BYTES..=MAX_MESSAGE_BYTES).contains(&self.message_bytes) {
            return bad(
                "message_bytes",
                self.message_bytes.to_string(),
                "16..=1400 (a probe holds 16 bytes of header and must fit one frame)",
            );
        }
        if self.udp_probes == 0 {
            return bad("udp_probes", "0".into(), "at least 1");
        }
        for (field, value) in [
            ("idle_max", self.idle_max),
            ("bulk_duration", self.bulk_duration),
            ("loaded_duration", self.loaded_duration),
        ] {
            if value.is_zero() {
                return bad(field, "0s".into(), "more than zero");
            }
        }
        if self.io_timeout < MIN_IO_TIMEOUT {
            return bad(
                "io_timeout",
                format!("{:?}", self.io_timeout),
                "at least 10ms",
            );
        }
        Ok(())
    }
}

/// The phase an error happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Setting up (opening namespaces, checking the relay).
    Setup,
    /// Phase 1, idle TCP round trips.
    IdleRtt,
    /// Phase 2, UDP probes.
    Udp,
    /// Phase 3, bulk TCP.
    Bulk,
    /// Phase 4, TCP round trips under load.
    LoadedRtt,
}

impl Phase {
    /// Snake-case name, as in the report's field names.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Setup => "setup",
            Phase::IdleRtt => "idle_rtt",
            Phase::Udp => "udp",
            Phase::Bulk => "bulk",
            Phase::LoadedRtt => "loaded_rtt",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a calibration could not run or finish.
#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    /// A plan value out of range.
    #[error("invalid calibration plan: {field} = {value}; allowed: {allowed}")]
    Plan {
        /// The field.
        field: &'static str,
        /// The rejected value.
        value: String,
        /// What is accepted.
        allowed: &'static str,
    },
    /// The relay configuration to report is itself invalid.
    #[error("invalid relay configuration: {0}")]
    Config(#[from] ConfigError),
    /// The relay passed to [`run_with_relay`] is not running.
    #[error(
        "the relay between {if_a} and {if_b} is not running (a thread ended; Relay::stop says why)"
    )]
    RelayStopped {
        /// Interface A.
        if_a: String,
        /// Interface B.
        if_b: String,
    },
    /// Opening or entering `src` or `dst` failed.
    #[error(transparent)]
    NetNs(#[from] NetNsError),
    /// A socket operation failed.
    #[error("{phase}: {what}: {source}")]
    Io {
        /// Where.
        phase: Phase,
        /// What we were doing.
        what: &'static str,
        /// What the kernel said.
        source: std::io::Error,
    },
    /// A socket operation saw nothing for the whole timeout.
    #[error(
        "{phase}: {what}: nothing after {waited:?} (is the relay running on the link \
         namespace? is io_timeout above the link's RTT plus a retransmission timeout?)"
    )]
    Stalled {
        /// Where.
        phase: Phase,
        /// What we were waiting for.
        what: &'static str,
        /// How long we waited.
        waited: Duration,
    },
    /// An echoed response differs from its request.
    #[error("{phase}: response to exchange {exchange} differs from its request (bytes corrupted or reordered on the link)")]
    EchoMismatch {
        /// Where.
        phase: Phase,
        /// The exchange's number.
        exchange: u32,
    },
    /// A measurement thread panicked (a bug).
    #[error("{phase}: thread {thread} panicked")]
    Panicked {
        /// Where.
        phase: Phase,
        /// Which thread.
        thread: &'static str,
    },
}

/// Measures the link between `topology`'s `src` and `dst`, which the
/// caller's relay (started with `relay_config`) already shapes.
///
/// Runs the four phases of the module docs in order and returns their
/// results next to the configuration; nothing is judged here (see
/// [`CalibrationReport::check_targets`]).
pub fn run(
    topology: &Topology,
    relay_config: &LinkConfig,
    plan: &CalibrationPlan,
) -> Result<CalibrationReport, CalibrationError> {
    run_inner(topology, relay_config, None, plan)
}

/// [`run`], also reading `relay`'s counters around each phase: the report's
/// [`CalibrationReport::relay`] then holds the departure error, the frame
/// rate of the bulk window and the emulator's own drops.
pub fn run_with_relay(
    topology: &Topology,
    relay_config: &LinkConfig,
    relay: &Relay,
    plan: &CalibrationPlan,
) -> Result<CalibrationReport, CalibrationError> {
    if !relay.is_running() {
        let (a, b) = relay.interfaces();
        return Err(CalibrationError::RelayStopped {
            if_a: a.to_owned(),
            if_b: b.to_owned(),
        });
    }
    run_inner(topology, relay_config, Some(relay), plan)
}

fn run_inner(
    topology: &Topology,
    relay_config: &LinkConfig,
    relay: Option<&Relay>,
    plan: &CalibrationPlan,
) -> Result<CalibrationReport, CalibrationError> {
    plan.validate()?;
    relay_config.validate()?;
    let configured = Configured::from_config(relay_config);
    let env = measure::Env {
        src: NetNs::open(topology.src_ns())?,
        dst: NetNs::open(topology.dst_ns())?,
        dst_addr: topology.dst_addr(),
        plan,
        relay,
        worst_rtt: relay_config.a_to_b.delay
            + relay_config.a_to_b.jitter
            + relay_config.b_to_a.delay
            + relay_config.b_to_a.jitter,
    };
    tracing::info!(
        src = topology.src_ns(),
        dst = topology.dst_ns(),
        configured_rtt_ns = configured.rtt_ns,
        "calibrating link"
    );
    measure::measure(&env, configured)
}

fn as_nanos<S: serde::Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(u64::try_from(value.as_nanos()).unwrap_or(u64::MAX))
}
