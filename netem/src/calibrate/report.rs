//! What a calibration found, and how it compares with the project's
//! accuracy targets.
//!
//! Every bound is a named constant below. RTT bounds are absolute errors
//! against the configured RTT (`a_to_b.delay + b_to_a.delay`): the larger of
//! a fraction of it and a floor, since on a short link the veth hops and
//! the endpoints' wake-ups alone take tens of microseconds.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::CalibrationPlan;
use crate::link::LinkConfig;
use crate::topology::MTU;

/// Median RTT error allowed, as a fraction of the configured RTT...
pub const RTT_P50_REL: f64 = 0.02;
/// ...or this much, whichever is larger.
pub const RTT_P50_ABS: Duration = Duration::from_micros(100);
/// p99 RTT error allowed, as a fraction of the configured RTT...
pub const RTT_P99_REL: f64 = 0.05;
/// ...or this much, whichever is larger.
pub const RTT_P99_ABS: Duration = Duration::from_micros(300);
/// Throughput error allowed, as a fraction of the expected rate.
pub const RATE_REL: f64 = 0.05;
/// Loss error allowed, as a fraction of the expected loss.
pub const LOSS_REL: f64 = 0.10;
/// Bytes an Ethernet header adds to an IP packet on the wire, as the relay
/// counts frames (no FCS, preamble or gap).
pub const ETHERNET_HEADER_BYTES: u64 = 14;

/// The link as configured, in the units the report uses. Direction A is the
/// relay's interface facing `src`, so `a_to_b` is `src -> dst`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Configured {
    /// `a_to_b.delay + b_to_a.delay`.
    pub rtt_ns: u64,
    /// Bottleneck rate `src -> dst` (the bulk direction), whole frames.
    pub rate_bps: Option<u64>,
    /// Rate `dst -> src` (responses and ACKs).
    pub reverse_rate_bps: Option<u64>,
    /// Mean loss `src -> dst` of the loss model.
    pub loss_a_to_b: f64,
    /// Mean loss `dst -> src`.
    pub loss_b_to_a: f64,
    /// Expected loss of a round trip: `1 - (1 - loss_a_to_b)(1 - loss_b_to_a)`.
    pub round_trip_loss: f64,
    /// Jitter `src -> dst` (uniform, +-).
    pub jitter_a_to_b_ns: u64,
    /// Jitter `dst -> src`.
    pub jitter_b_to_a_ns: u64,
    /// Drop-tail queue `src -> dst`, bytes (only acts with a rate).
    pub queue_limit_bytes: u64,
}

impl Configured {
    /// Summarizes `config` (A facing `src`).
    pub fn from_config(config: &LinkConfig) -> Self {
        let (ab, ba) = (&config.a_to_b, &config.b_to_a);
        let loss_a_to_b = ab.loss.mean_loss();
        let loss_b_to_a = ba.loss.mean_loss();
        Self {
            rtt_ns: nanos(ab.delay + ba.delay),
            rate_bps: ab.rate_bps,
            reverse_rate_bps: ba.rate_bps,
            loss_a_to_b,
            loss_b_to_a,
            round_trip_loss: 1.0 - (1.0 - loss_a_to_b) * (1.0 - loss_b_to_a),
            jitter_a_to_b_ns: nanos(ab.jitter),
            jitter_b_to_a_ns: nanos(ba.jitter),
            queue_limit_bytes: ab.queue_limit_bytes,
        }
    }

    fn has_rate(&self) -> bool {
        self.rate_bps.is_some() || self.reverse_rate_bps.is_some()
    }

    fn has_jitter(&self) -> bool {
        self.jitter_a_to_b_ns != 0 || self.jitter_b_to_a_ns != 0
    }

    fn has_loss(&self) -> bool {
        self.round_trip_loss > 0.0
    }
}

/// A latency distribution in nanoseconds. All zero when `count` is 0.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct HistSummary {
    /// Samples.
    pub count: u64,
    /// Smallest.
    pub min_ns: u64,
    /// Median.
    pub p50_ns: u64,
    /// 90th percentile.
    pub p90_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// Largest.
    pub max_ns: u64,
    /// Mean.
    pub mean_ns: f64,
}

impl HistSummary {
    /// Summarizes a histogram of nanoseconds (values within its precision).
    pub fn from_histogram(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        Self {
            count: histogram.len(),
            min_ns: histogram.min(),
            p50_ns: histogram.value_at_quantile(0.50),
            p90_ns: histogram.value_at_quantile(0.90),
            p99_ns: histogram.value_at_quantile(0.99),
            max_ns: histogram.max(),
            mean_ns: histogram.mean(),
        }
    }
}

/// UDP probes sent and answered.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UdpLoss {
    /// Probes the kernel accepted for sending.
    pub sent: u64,
    /// Distinct probes answered in time.
    pub received: u64,
    /// Answers to a probe already answered (the link duplicated a frame).
    pub duplicates: u64,
    /// Datagrams that were not a well-formed answer to a probe sent.
    pub malformed: u64,
    /// `1 - received / sent`.
    pub observed: f64,
    /// The configured round-trip loss, `1 - (1 - p_ab)(1 - p_ba)`.
    pub expected: f64,
    /// Standard deviation of `observed` if loss were binomial with
    /// `expected` over `sent` probes: how finely this sample resolves loss.
    pub sampling_stddev: f64,
}

/// How the bulk goodput was obtained, and what it can reach at most.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BulkDetail {
    /// Payload bytes the receiver read inside the window.
    pub bytes: u64,
    /// Length of the window.
    pub seconds: f64,
    /// The connection's MSS (`TCP_MAXSEG`: payload per full segment, TCP
    /// options already taken off).
    pub mss_bytes: u32,
    /// Highest goodput the configured rate allows: full-sized frames carry
    /// `mss` payload bytes in `MTU + 14` frame bytes, so
    /// `rate * mss / (MTU + 14)`. `None` without a rate.
    pub payload_ceiling_bps: Option<f64>,
}

/// What the relay's own counters said during the calibration (differences
/// between snapshots, so earlier traffic is left out).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RelayObservation {
    /// Actual minus scheduled departure, `src -> dst` frames.
    pub departure_error_a_to_b_ns: HistSummary,
    /// Actual minus scheduled departure, `dst -> src` frames.
    pub departure_error_b_to_a_ns: HistSummary,
    /// How long `src -> dst` frames waited in the link's queue during the
    /// loaded round trips: the queueing delay the model adds behind the
    /// bulk flow.
    pub loaded_queue_wait_a_to_b_ns: HistSummary,
    /// The same, `dst -> src` frames.
    pub loaded_queue_wait_b_to_a_ns: HistSummary,
    /// Frame bytes (headers included) sent `src -> dst` per second during
    /// the bulk window, in bit/s: what the rate limit acts on.
    pub bulk_frame_bps: f64,
    /// Frames the loss model dropped (both directions) during the UDP
    /// phase: the emulator's side of `udp_loss`.
    pub udp_phase_dropped_loss: u64,
    /// Frames the drop-tail queues dropped (both directions).
    pub dropped_queue: u64,
    /// Frames the kernel dropped before the relay read them: the emulator
    /// could not keep up.
    pub kernel_drops: u64,
    /// Frames dropped at the relay's in-flight cap: its own limit.
    pub dropped_overflow: u64,
    /// Frames the kernel refused to send.
    pub send_errors: u64,
    /// Frame bytes sent, both directions.
    pub transferred_bytes: u64,
}

impl RelayObservation {
    /// Frames lost to the emulator's own limits rather than the emulated
    /// link's: a run with any is saturated by its emulator.
    pub fn emulator_drops(&self) -> u64 {
        self.kernel_drops + self.dropped_overflow + self.send_errors
    }
}

/// Everything a calibration measured, next to the configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CalibrationReport {
    /// What the link was configured to do.
    pub configured: Configured,
    /// What was run.
    pub plan: CalibrationPlan,
    /// Phase 1: TCP request/response round trips on an idle link.
    pub idle_rtt: HistSummary,
    /// Phase 4: the same while a bulk flow saturates the link (includes
    /// queueing delay when the link has a rate limit).
    pub loaded_rtt: HistSummary,
    /// Phase 2: round trips of the answered UDP probes.
    pub udp_rtt: HistSummary,
    /// Phase 2: probes lost.
    pub udp_loss: UdpLoss,
    /// Phase 3: TCP payload bytes per second `src -> dst`, in bit/s (not
    /// frame bytes: see [`BulkDetail::payload_ceiling_bps`]).
    pub bulk_goodput_bps: f64,
    /// Phase 3 details.
    pub bulk: BulkDetail,
    /// Phase 4: goodput of the loading flow while the round trips ran.
    pub loaded_goodput_bps: f64,
    /// The relay's counters, with [`super::run_with_relay`].
    pub relay: Option<RelayObservation>,
}

/// The outcome of one target check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Within the bound.
    Met,
    /// Outside the bound.
    Missed,
    /// The target does not apply to this configuration (the note says why).
    Skipped,
}

/// One quantity against its target.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetCheck {
    /// What was checked, e.g. `idle_rtt_p50`.
    pub quantity: &'static str,
    /// Unit of `expected`, `measured` and `allowed_error`.
    pub unit: &'static str,
    /// What the configuration implies.
    pub expected: f64,
    /// What was measured.
    pub measured: f64,
    /// Largest `|measured - expected|` that meets the target.
    pub allowed_error: f64,
    /// The outcome.
    pub verdict: Verdict,
    /// Why a check was skipped, or what else the reader should know.
    pub note: Option<String>,
}

impl TargetCheck {
    /// `measured - expected`.
    pub fn error(&self) -> f64 {
        self.measured - self.expected
    }

    fn judged(
        quantity: &'static str,
        unit: &'static str,
        expected: f64,
        measured: f64,
        allowed_error: f64,
    ) -> Self {
        let verdict = if (measured - expected).abs() <= allowed_error {
            Verdict::Met
        } else {
            Verdict::Missed
        };
        Self {
            quantity,
            unit,
            expected,
            measured,
            allowed_error,
            verdict,
            note: None,
        }
    }

    fn skipped(self, why: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Skipped,
            note: Some(why.into()),
            ..self
        }
    }

    fn noted(self, note: Option<String>) -> Self {
        Self { note, ..self }
    }
}

impl CalibrationReport {
    /// Every quantity against the project's targets (the constants of this
    /// module):
    ///
    /// - `*_rtt_p50`: within max([`RTT_P50_REL`], [`RTT_P50_ABS`]) of the
    ///   configured RTT; `*_rtt_p99`: max([`RTT_P99_REL`], [`RTT_P99_ABS`]).
    ///   Idle, loaded and UDP. Under a rate limit the saturating flow
    ///   queues by design: `loaded_rtt_p50` then expects the configured RTT
    ///   plus the median queue wait the relay observed in each direction
    ///   during the phase (skipped without relay counters), and
    ///   `loaded_rtt_p99` is skipped (the queueing tail follows the flow's
    ///   congestion window). p99s are skipped with jitter (the tail is the
    ///   jitter's), TCP p99s with loss (a lost segment adds a
    ///   retransmission timeout); any with no samples is missed.
    /// - `bulk_goodput`: within [`RATE_REL`] of the payload ceiling the
    ///   configured rate allows; `bulk_frame_rate` (with relay counters):
    ///   within [`RATE_REL`] of the rate itself. Skipped without a rate.
    /// - `udp_loss`: within [`LOSS_REL`] (relative) of the expected
    ///   round-trip loss; skipped when no loss is configured.
    /// - `emulator_drops` (with relay counters): zero.
    pub fn check_targets(&self) -> Vec<TargetCheck> {
        let c = &self.configured;
        let mut checks = Vec::new();
        let queue_wait = self.relay.as_ref().map(|r| {
            (
                r.loaded_queue_wait_a_to_b_ns.p50_ns,
                r.loaded_queue_wait_b_to_a_ns.p50_ns,
            )
        });
        for (name50, name99, hist, tcp, loaded) in [
            ("idle_rtt_p50", "idle_rtt_p99", &self.idle_rtt, true, false),
            ("udp_rtt_p50", "udp_rtt_p99", &self.udp_rtt, false, false),
            (
                "loaded_rtt_p50",
                "loaded_rtt_p99",
                &self.loaded_rtt,
                true,
                true,
            ),
        ] {
            let p50 = rtt_check(
                c,
                name50,
                hist,
                hist.p50_ns,
                RTT_P50_REL,
                RTT_P50_ABS,
                loaded,
            );
            checks.push(match (loaded, c.has_rate(), queue_wait) {
                (true, true, Some((a_to_b, b_to_a))) if hist.count > 0 => {
                    let expected = (c.rtt_ns + a_to_b + b_to_a) as f64;
                    TargetCheck::judged(
                        name50,
                        "ns",
                        expected,
                        hist.p50_ns as f64,
                        (RTT_P50_REL * expected).max(RTT_P50_ABS.as_nanos() as f64),
                    )
                    .noted(Some(format!(
                        "expected = configured RTT + the relay's median queue wait during the \
                         phase ({:.3} ms src -> dst, {:.3} ms dst -> src)",
                        a_to_b as f64 / 1e6,
                        b_to_a as f64 / 1e6
                    )))
                }
                (true, false, _) if p50.verdict == Verdict::Missed => p50.noted(Some(
                    "no rate limit: the flow is bounded only by the emulator's capacity, so \
                     packets queue in the emulator (see departure error and emulator_drops)"
                        .to_owned(),
                )),
                _ => p50,
            });
            let p99 = rtt_check(
                c,
                name99,
                hist,
                hist.p99_ns,
                RTT_P99_REL,
                RTT_P99_ABS,
                loaded,
            );
            let p99 = if p99.verdict == Verdict::Skipped {
                p99
            } else if c.has_jitter() {
                p99.skipped("jitter is set: the tail follows the jitter distribution")
            } else if tcp && c.has_loss() {
                p99.skipped("loss is set: a lost TCP segment adds a retransmission timeout")
            } else {
                p99
            };
            checks.push(p99);
        }

        let goodput = TargetCheck::judged(
            "bulk_goodput",
            "bit/s",
            self.bulk.payload_ceiling_bps.unwrap_or(0.0),
            self.bulk_goodput_bps,
            RATE_REL * self.bulk.payload_ceiling_bps.unwrap_or(0.0),
        );
        checks.push(match self.bulk.payload_ceiling_bps {
            Some(_) => goodput.noted(Some(format!(
                "expected = rate x {} payload bytes per {}-byte frame",
                self.bulk.mss_bytes,
                u64::from(MTU) + ETHERNET_HEADER_BYTES
            ))),
            None => goodput.skipped("no rate limit src -> dst"),
        });
        if let Some(relay) = &self.relay {
            let rate = c.rate_bps.unwrap_or(0) as f64;
            let frames = TargetCheck::judged(
                "bulk_frame_rate",
                "bit/s",
                rate,
                relay.bulk_frame_bps,
                RATE_REL * rate,
            );
            checks.push(match c.rate_bps {
                Some(_) => frames,
                None => frames.skipped("no rate limit src -> dst"),
            });
        }

        let loss = &self.udp_loss;
        let check = TargetCheck::judged(
            "udp_loss",
            "fraction",
            loss.expected,
            loss.observed,
            LOSS_REL * loss.expected,
        );
        checks.push(if !c.has_loss() {
            let note = (loss.received < loss.sent).then(|| {
                format!(
                    "no loss configured, yet {} of {} probes went unanswered",
                    loss.sent - loss.received,
                    loss.sent
                )
            });
            check.skipped("no loss configured").noted(note)
        } else {
            // Two standard deviations wider than the bound: the sample alone
            // can miss (or meet) the target by chance.
            let note = (2.0 * loss.sampling_stddev > LOSS_REL * loss.expected).then(|| {
                format!(
                    "{} probes resolve loss only to +-{:.2}% (2 sd) against a bound of +-{:.2}%: \
                     use more probes",
                    loss.sent,
                    200.0 * loss.sampling_stddev,
                    100.0 * LOSS_REL * loss.expected
                )
            });
            check.noted(note)
        });

        if let Some(relay) = &self.relay {
            checks.push(
                TargetCheck::judged(
                    "emulator_drops",
                    "frames",
                    0.0,
                    relay.emulator_drops() as f64,
                    0.0,
                )
                .noted(
                    (relay.emulator_drops() > 0)
                        .then(|| "the emulator itself dropped frames: it was saturated".to_owned()),
                ),
            );
        }
        checks
    }

    /// Whether every applicable target is met.
    pub fn meets_targets(&self) -> bool {
        self.check_targets()
            .iter()
            .all(|check| check.verdict != Verdict::Missed)
    }
}

fn rtt_check(
    configured: &Configured,
    quantity: &'static str,
    hist: &HistSummary,
    measured_ns: u64,
    rel: f64,
    abs: Duration,
    loaded: bool,
) -> TargetCheck {
    let expected = configured.rtt_ns as f64;
    let allowed = (rel * expected).max(abs.as_nanos() as f64);
    let check = TargetCheck::judged(quantity, "ns", expected, measured_ns as f64, allowed);
    if loaded && configured.has_rate() {
        check.skipped(
            "a rate limit is set: queueing behind the bulk flow adds delay by design \
             (the p50 check accounts for it from the relay's queue counters)",
        )
    } else if hist.count == 0 {
        TargetCheck {
            verdict: Verdict::Missed,
            note: Some("no samples".to_owned()),
            ..check
        }
    } else {
        check
    }
}

pub(super) fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::{DirectionConfig, LossModel};

    fn hist(p50_us: u64, p99_us: u64) -> HistSummary {
        HistSummary {
            count: 1000,
            min_ns: p50_us * 1000,
            p50_ns: p50_us * 1000,
            p90_ns: p50_us * 1000,
            p99_ns: p99_us * 1000,
            max_ns: p99_us * 1000,
            mean_ns: (p50_us * 1000) as f64,
        }
    }

    fn report(config: &LinkConfig) -> CalibrationReport {
        let configured = Configured::from_config(config);
        let rtt_us = configured.rtt_ns / 1000;
        CalibrationReport {
            idle_rtt: hist(rtt_us + 50, rtt_us + 200),
            loaded_rtt: hist(rtt_us + 50, rtt_us + 200),
            udp_rtt: hist(rtt_us + 50, rtt_us + 200),
            udp_loss: UdpLoss {
                sent: 10_000,
                received: 10_000,
                duplicates: 0,
                malformed: 0,
                observed: 0.0,
                expected: configured.round_trip_loss,
                sampling_stddev: 0.0,
            },
            bulk_goodput_bps: 0.0,
            bulk: BulkDetail {
                bytes: 0,
                seconds: 1.0,
                mss_bytes: 1448,
                payload_ceiling_bps: None,
            },
            loaded_goodput_bps: 0.0,
            relay: None,
            plan: CalibrationPlan::quick(),
            configured,
        }
    }

    fn verdict(checks: &[TargetCheck], quantity: &str) -> Verdict {
        checks
            .iter()
            .find(|c| c.quantity == quantity)
            .unwrap_or_else(|| panic!("no check {quantity} in {checks:?}"))
            .verdict
    }

    #[test]
    fn configured_round_trip_loss_combines_both_directions() {
        let config = LinkConfig::asymmetric(
            DirectionConfig {
                loss: LossModel::Random { p: 0.02 },
                ..DirectionConfig::with_delay(Duration::from_millis(3))
            },
            DirectionConfig {
                loss: LossModel::Random { p: 0.05 },
                ..DirectionConfig::with_delay(Duration::from_millis(7))
            },
        );
        let c = Configured::from_config(&config);
        assert_eq!(c.rtt_ns, 10_000_000);
        assert!((c.round_trip_loss - (1.0 - 0.98 * 0.95)).abs() < 1e-12);
    }

    #[test]
    fn rtt_bounds_use_the_floor_on_short_links_and_the_fraction_on_long_ones() {
        // 1 ms RTT: 2% is 20 us, so the 100 us floor applies; +50 us meets.
        let short = report(&LinkConfig::symmetric(DirectionConfig::with_delay(
            Duration::from_micros(500),
        )));
        let checks = short.check_targets();
        let p50 = checks
            .iter()
            .find(|c| c.quantity == "idle_rtt_p50")
            .unwrap();
        assert_eq!(p50.allowed_error, 100_000.0);
        assert_eq!(p50.verdict, Verdict::Met);
        assert!(short.meets_targets(), "{checks:#?}");

        // 100 ms RTT: 2% is 2 ms.
        let mut long = report(&LinkConfig::symmetric(DirectionConfig::with_delay(
            Duration::from_millis(50),
        )));
        let p50 = long
            .check_targets()
            .into_iter()
            .find(|c| c.quantity == "idle_rtt_p50")
            .unwrap();
        assert_eq!(p50.allowed_error, 2_000_000.0);
        // 2.5 ms over: missed at the median, still within 5% at p99.
        long.idle_rtt = hist(102_500, 102_500);
        let checks = long.check_targets();
        assert_eq!(verdict(&checks, "idle_rtt_p50"), Verdict::Missed);
        assert_eq!(verdict(&checks, "idle_rtt_p99"), Verdict::Met);
        assert!(!long.meets_targets());
        // Too fast is as wrong as too slow.
        long.idle_rtt = hist(97_000, 100_000);
        assert_eq!(
            verdict(&long.check_targets(), "idle_rtt_p50"),
            Verdict::Missed
        );
    }

    #[test]
    fn loaded_rtt_is_not_judged_under_a_rate_limit() {
        let mut r = report(&LinkConfig::symmetric(DirectionConfig {
            rate_bps: Some(50_000_000),
            ..DirectionConfig::with_delay(Duration::from_millis(5))
        }));
        r.loaded_rtt = hist(150_000, 170_000);
        r.bulk.payload_ceiling_bps = Some(50e6 * 1448.0 / 1514.0);
        r.bulk_goodput_bps = 47.5e6;
        let checks = r.check_targets();
        assert_eq!(verdict(&checks, "loaded_rtt_p50"), Verdict::Skipped);
        assert_eq!(verdict(&checks, "loaded_rtt_p99"), Verdict::Skipped);
        assert_eq!(verdict(&checks, "bulk_goodput"), Verdict::Met);
        assert!(r.meets_targets(), "{checks:#?}");

        // Without a rate the same loaded RTT is a miss.
        let mut r = report(&LinkConfig::symmetric(DirectionConfig::with_delay(
            Duration::from_millis(5),
        )));
        r.loaded_rtt = hist(150_000, 170_000);
        assert_eq!(
            verdict(&r.check_targets(), "loaded_rtt_p50"),
            Verdict::Missed
        );
    }

    #[test]
    fn goodput_and_frame_rate_are_judged_only_with_a_rate() {
        let mut r = report(&LinkConfig::default());
        r.relay = Some(RelayObservation {
            bulk_frame_bps: 3e9,
            transferred_bytes: 1,
            ..RelayObservation::default()
        });
        r.bulk_goodput_bps = 3e9;
        let checks = r.check_targets();
        assert_eq!(verdict(&checks, "bulk_goodput"), Verdict::Skipped);
        assert_eq!(verdict(&checks, "bulk_frame_rate"), Verdict::Skipped);
        assert_eq!(verdict(&checks, "emulator_drops"), Verdict::Met);

        let mut r = report(&LinkConfig::symmetric(DirectionConfig {
            rate_bps: Some(100_000_000),
            ..DirectionConfig::default()
        }));
        let ceiling = 100e6 * 1448.0 / 1514.0;
        r.bulk.payload_ceiling_bps = Some(ceiling);
        r.bulk_goodput_bps = ceiling * 0.94;
        r.relay = Some(RelayObservation {
            bulk_frame_bps: 96e6,
            kernel_drops: 3,
            ..RelayObservation::default()
        });
        let checks = r.check_targets();
        assert_eq!(verdict(&checks, "bulk_goodput"), Verdict::Missed);
        assert_eq!(verdict(&checks, "bulk_frame_rate"), Verdict::Met);
        assert_eq!(verdict(&checks, "emulator_drops"), Verdict::Missed);
    }

    #[test]
    fn loss_is_judged_relative_to_the_expected_round_trip_loss() {
        let config = LinkConfig::symmetric(DirectionConfig {
            loss: LossModel::Random { p: 0.02 },
            ..DirectionConfig::default()
        });
        let mut r = report(&config);
        let expected = r.configured.round_trip_loss;
        r.udp_loss.observed = expected * 1.08;
        r.udp_loss.sampling_stddev = (expected * (1.0 - expected) / 10_000.0).sqrt();
        let checks = r.check_targets();
        let loss = checks.iter().find(|c| c.quantity == "udp_loss").unwrap();
        assert_eq!(loss.verdict, Verdict::Met);
        // 10000 probes at ~4% resolve to +-0.39% (2 sd), just inside the
        // +-0.40% bound: no warning about the sample size.
        assert!(loss.note.is_none(), "{loss:?}");
        // TCP p99 is not judged under loss; UDP p99 is.
        assert_eq!(verdict(&checks, "idle_rtt_p99"), Verdict::Skipped);
        assert_eq!(verdict(&checks, "udp_rtt_p99"), Verdict::Met);

        r.udp_loss.observed = expected * 1.15;
        r.udp_loss.sampling_stddev = (expected * (1.0 - expected) / 500.0).sqrt();
        let checks = r.check_targets();
        let loss = checks.iter().find(|c| c.quantity == "udp_loss").unwrap();
        assert_eq!(loss.verdict, Verdict::Missed);
        assert!(loss.note.as_deref().unwrap_or("").contains("more probes"));

        // No loss configured: skipped, but unanswered probes are noted.
        let mut r = report(&LinkConfig::default());
        r.udp_loss.received = 9_990;
        let checks = r.check_targets();
        let loss = checks.iter().find(|c| c.quantity == "udp_loss").unwrap();
        assert_eq!(loss.verdict, Verdict::Skipped);
        assert!(loss.note.as_deref().unwrap_or("").contains("10 of 10000"));
    }

    #[test]
    fn empty_histograms_miss_and_jitter_skips_p99() {
        let mut r = report(&LinkConfig::symmetric(DirectionConfig {
            jitter: Duration::from_millis(1),
            ..DirectionConfig::with_delay(Duration::from_millis(5))
        }));
        r.udp_rtt = HistSummary::default();
        let checks = r.check_targets();
        assert_eq!(verdict(&checks, "udp_rtt_p50"), Verdict::Missed);
        assert_eq!(verdict(&checks, "idle_rtt_p99"), Verdict::Skipped);
        assert_eq!(verdict(&checks, "idle_rtt_p50"), Verdict::Met);
    }

    #[test]
    fn loaded_rtt_under_a_rate_limit_expects_the_observed_queue_wait() {
        let config = LinkConfig::symmetric(DirectionConfig {
            rate_bps: Some(100_000_000),
            ..DirectionConfig::with_delay(Duration::from_millis(5))
        });
        let mut r = report(&config);
        // 10 ms RTT, 4 ms of queue src -> dst, 50 us of veth and wake-ups.
        r.loaded_rtt = hist(14_050, 19_000);
        let checks = r.check_targets();
        assert_eq!(
            verdict(&checks, "loaded_rtt_p50"),
            Verdict::Skipped,
            "without relay counters the queue is unknown"
        );
        let wait = |p50_us: u64| HistSummary {
            count: 5000,
            p50_ns: p50_us * 1000,
            ..HistSummary::default()
        };
        let mut relay = RelayObservation {
            loaded_queue_wait_a_to_b_ns: wait(4000),
            loaded_queue_wait_b_to_a_ns: wait(0),
            ..RelayObservation::default()
        };
        r.relay = Some(relay.clone());
        let checks = r.check_targets();
        let p50 = checks
            .iter()
            .find(|c| c.quantity == "loaded_rtt_p50")
            .unwrap();
        assert_eq!(p50.expected, 14_000_000.0);
        assert_eq!(p50.verdict, Verdict::Met, "{p50:?}");
        assert_eq!(verdict(&checks, "loaded_rtt_p99"), Verdict::Skipped);
        // A queue the relay did not see is an emulator error.
        relay.loaded_queue_wait_a_to_b_ns = wait(1000);
        r.relay = Some(relay);
        assert_eq!(
            verdict(&r.check_targets(), "loaded_rtt_p50"),
            Verdict::Missed
        );
    }

    #[test]
    fn hist_summary_of_a_histogram() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        assert_eq!(HistSummary::from_histogram(&h), HistSummary::default());
        for v in 1..=100u64 {
            h.record(v * 1000).unwrap();
        }
        let s = HistSummary::from_histogram(&h);
        assert_eq!(s.count, 100);
        assert_eq!(s.min_ns, 1000);
        assert!(h.equivalent(s.p50_ns, 50_000), "{s:?}");
        assert!(h.equivalent(s.p99_ns, 99_000), "{s:?}");
        assert!(h.equivalent(s.max_ns, 100_000), "{s:?}");
    }
}
