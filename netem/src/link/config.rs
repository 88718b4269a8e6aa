//! What the link does to each direction: loss, queue, rate, delay, jitter.
//!
//! Plain data, validated once by [`LinkConfig::validate`] before a relay
//! starts, so the packet path never meets a bad value.

use std::time::Duration;

/// Largest delay plus jitter accepted: far beyond any WAN, and small enough
/// that adding it to an `Instant` can never overflow.
pub const MAX_DELAY: Duration = Duration::from_secs(3600);

/// Largest recvmmsg/sendmmsg batch accepted (the kernel caps a batch at
/// `UIO_MAXIOV` = 1024 messages).
pub const MAX_BATCH: usize = 1024;

/// How packets are lost in one direction, before they reach the queue.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum LossModel {
    /// Nothing is lost by the emulator.
    #[default]
    None,
    /// Each packet is lost independently with probability `p`.
    Random {
        /// Loss probability in `[0, 1]`.
        p: f64,
    },
    /// Bursty loss: a two-state Markov chain (Gilbert-Elliott). Each packet
    /// is lost with the probability of the state the chain is in, then the
    /// chain moves: good to bad with `p_gb`, bad to good with `p_bg`. The
    /// long-run loss rate is `(p_bg * loss_good + p_gb * loss_bad) /
    /// (p_gb + p_bg)`; mean burst length in the bad state is `1 / p_bg`.
    GilbertElliott {
        /// Probability of moving from the good to the bad state, per packet.
        p_gb: f64,
        /// Probability of moving from the bad to the good state, per packet.
        p_bg: f64,
        /// Loss probability while in the good state.
        loss_good: f64,
        /// Loss probability while in the bad state.
        loss_bad: f64,
    },
}

impl LossModel {
    /// The long-run fraction of packets this model loses.
    pub fn mean_loss(&self) -> f64 {
        match *self {
            LossModel::None => 0.0,
            LossModel::Random { p } => p,
            LossModel::GilbertElliott {
                p_gb,
                p_bg,
                loss_good,
                loss_bad,
            } => {
                if p_gb + p_bg == 0.0 {
                    // The chain never moves: it stays in the good state it starts in.
                    loss_good
                } else {
                    (p_bg * loss_good + p_gb * loss_bad) / (p_gb + p_bg)
                }
            }
        }
    }

    fn validate(&self, direction: &'static str) -> Result<(), ConfigError> {
        let probabilities: &[(&'static str, f64)] = match self {
            LossModel::None => &[],
            LossModel::Random { p } => &[("p", *p)],
            LossModel::GilbertElliott {
                p_gb,
                p_bg,
                loss_good,
                loss_bad,
            } => &[
                ("p_gb", *p_gb),
                ("p_bg", *p_bg),
                ("loss_good", *loss_good),
                ("loss_bad", *loss_bad),
            ],
        };
        for &(name, value) in probabilities {
            // `contains` is false for NaN too.
            if !(0.0..=1.0).contains(&value) {
                return Err(ConfigError::Probability {
                    direction,
                    name,
                    value,
                });
            }
        }
        Ok(())
    }
}

/// What the link does to the packets of one direction, applied in this
/// order: loss, a byte-limited drop-tail queue, serialization at
/// `rate_bps`, then `delay` (plus jitter) of propagation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DirectionConfig {
    /// Constant one-way propagation delay (RTT / 2 on a symmetric link).
    pub delay: Duration,
    /// Each packet's delay is `delay` plus a uniform offset in
    /// `[-jitter, +jitter]` (never below zero); packets are never
    /// reordered: a departure is never earlier than the previous one.
    pub jitter: Duration,
    /// How packets are lost before the queue.
    pub loss: LossModel,
    /// Bottleneck rate in bits per second, counting whole Ethernet frames
    /// (header included, as a qdisc does); `None` serializes instantly.
    pub rate_bps: Option<u64>,
    /// Bytes the drop-tail queue holds: frames admitted and not yet fully
    /// serialized, the one on the wire included. A frame that would take
    /// the queue past this is dropped. Only meaningful with a rate: without
    /// one, frames never wait to be serialized.
    pub queue_limit_bytes: u64,
}

impl Default for DirectionConfig {
    /// A perfect wire: no delay, loss or rate limit, and a 1 MiB queue
    /// for when a rate is set.
    fn default() -> Self {
        Self {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: LossModel::None,
            rate_bps: None,
            queue_limit_bytes: 1 << 20,
        }
    }
}

impl DirectionConfig {
    /// A direction with only a propagation delay.
    pub fn with_delay(delay: Duration) -> Self {
        Self {
            delay,
            ..Self::default()
        }
    }

    fn validate(&self, direction: &'static str) -> Result<(), ConfigError> {
        self.loss.validate(direction)?;
        if self.rate_bps == Some(0) {
            return Err(ConfigError::ZeroRate { direction });
        }
        if self.queue_limit_bytes == 0 {
            return Err(ConfigError::ZeroQueue { direction });
        }
        let worst = self.delay.saturating_add(self.jitter);
        if worst > MAX_DELAY {
            return Err(ConfigError::DelayTooLong {
                direction,
                delay: self.delay,
                jitter: self.jitter,
            });
        }
        Ok(())
    }
}

/// Both directions of a link and how the relay runs them.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkConfig {
    /// Frames received on interface A and sent out of B.
    pub a_to_b: DirectionConfig,
    /// Frames received on interface B and sent out of A.
    pub b_to_a: DirectionConfig,
    /// Seed for loss and jitter draws, for reproducible runs; `None` takes
    /// one from the OS. The two directions draw from different streams.
    pub seed: Option<u64>,
    /// The least time before a departure a relay thread stops blocking in
    /// `ppoll` and spins; see [`crate::timer::SPIN_WINDOW`] for why 200 us.
    /// The relay widens it (up to 1 ms) while its wake-ups run late.
    pub spin_window: Duration,
    /// Frames per recvmmsg/sendmmsg call, `1..=`[`MAX_BATCH`].
    pub batch: usize,
    /// Frames one direction may hold (queued or propagating) at once;
    /// past it new frames are dropped and counted as `dropped_overflow`.
    /// Bounds the relay's memory (each frame takes one MTU-sized slot,
    /// allocated as needed).
    pub max_in_flight_packets: usize,
    /// SO_RCVBUF / SO_SNDBUF asked for each socket (forced past the
    /// sysctl limits when running as root), so bursts wait in the kernel
    /// rather than being dropped while a thread is busy.
    pub socket_buffer_bytes: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self::symmetric(DirectionConfig::default())
    }
}

impl LinkConfig {
    /// The same behaviour in both directions.
    pub fn symmetric(direction: DirectionConfig) -> Self {
        Self::asymmetric(direction, direction)
    }

    /// Different behaviour per direction.
    pub fn asymmetric(a_to_b: DirectionConfig, b_to_a: DirectionConfig) -> Self {
        Self {
            a_to_b,
            b_to_a,
            seed: None,
            spin_window: crate::timer::SPIN_WINDOW,
            batch: 64,
            max_in_flight_packets: 32 * 1024,
            socket_buffer_bytes: 16 << 20,
        }
    }

    /// Checks every value; the relay refuses to start otherwise.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.a_to_b.validate("a_to_b")?;
        self.b_to_a.validate("b_to_a")?;
        if !(1..=MAX_BATCH).contains(&self.batch) {
            return Err(ConfigError::Batch { batch: self.batch });
        }
        if self.max_in_flight_packets == 0 || self.max_in_flight_packets > u32::MAX as usize {
            return Err(ConfigError::MaxInFlight {
                packets: self.max_in_flight_packets,
            });
        }
        if self.spin_window > Duration::from_secs(1) {
            return Err(ConfigError::SpinWindow {
                window: self.spin_window,
            });
        }
        if self.socket_buffer_bytes > i32::MAX as usize {
            return Err(ConfigError::SocketBuffer {
                bytes: self.socket_buffer_bytes,
            });
        }
        Ok(())
    }
}

/// A [`LinkConfig`] value out of range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A loss probability outside `[0, 1]` (or NaN).
    #[error("{direction}: loss probability {name} = {value} is outside the allowed range [0, 1]")]
    Probability {
        /// `a_to_b` or `b_to_a`.
        direction: &'static str,
        /// Which field of the loss model.
        name: &'static str,
        /// The rejected value.
        value: f64,
    },
    /// `rate_bps: Some(0)`.
    #[error("{direction}: rate_bps = Some(0); allowed: None (no limit) or at least 1 bit/s")]
    ZeroRate {
        /// `a_to_b` or `b_to_a`.
        direction: &'static str,
    },
    /// `queue_limit_bytes: 0`.
    #[error("{direction}: queue_limit_bytes = 0; allowed: at least 1 (one frame needs its whole length)")]
    ZeroQueue {
        /// `a_to_b` or `b_to_a`.
        direction: &'static str,
    },
    /// Delay plus jitter beyond [`MAX_DELAY`].
    #[error("{direction}: delay {delay:?} + jitter {jitter:?} exceeds the allowed maximum of {MAX_DELAY:?}")]
    DelayTooLong {
        /// `a_to_b` or `b_to_a`.
        direction: &'static str,
        /// The configured delay.
        delay: Duration,
        /// The configured jitter.
        jitter: Duration,
    },
    /// Batch size out of range.
    #[error("batch = {batch}; allowed: 1..={MAX_BATCH}")]
    Batch {
        /// The rejected batch size.
        batch: usize,
    },
    /// In-flight cap out of range.
    #[error("max_in_flight_packets = {packets}; allowed: 1..={}", u32::MAX)]
    MaxInFlight {
        /// The rejected cap.
        packets: usize,
    },
    /// Spin window out of range.
    #[error("spin_window = {window:?}; allowed: at most 1 s")]
    SpinWindow {
        /// The rejected window.
        window: Duration,
    },
    /// Socket buffer size out of range.
    #[error("socket_buffer_bytes = {bytes}; allowed: at most {}", i32::MAX)]
    SocketBuffer {
        /// The rejected size.
        bytes: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        LinkConfig::default().validate().unwrap();
    }

    #[test]
    fn bad_values_are_rejected_with_their_name() {
        let mut config = LinkConfig::default();
        config.b_to_a.loss = LossModel::GilbertElliott {
            p_gb: 0.1,
            p_bg: 1.5,
            loss_good: 0.0,
            loss_bad: 1.0,
        };
        let err = config.validate().unwrap_err();
        assert_eq!(
            err,
            ConfigError::Probability {
                direction: "b_to_a",
                name: "p_bg",
                value: 1.5
            }
        );
        assert!(err.to_string().contains("p_bg = 1.5"), "{err}");

        let mut config = LinkConfig::default();
        config.a_to_b.loss = LossModel::Random { p: f64::NAN };
        assert!(matches!(
            config.validate(),
            Err(ConfigError::Probability { name: "p", .. })
        ));

        let mut config = LinkConfig::default();
        config.a_to_b.rate_bps = Some(0);
        assert_eq!(
            config.validate(),
            Err(ConfigError::ZeroRate {
                direction: "a_to_b"
            })
        );

        let mut config = LinkConfig::default();
        config.a_to_b.queue_limit_bytes = 0;
        assert!(matches!(
            config.validate(),
            Err(ConfigError::ZeroQueue { .. })
        ));

        let mut config = LinkConfig::default();
        config.a_to_b.delay = MAX_DELAY;
        config.a_to_b.jitter = Duration::from_nanos(1);
        assert!(matches!(
            config.validate(),
            Err(ConfigError::DelayTooLong { .. })
        ));

        for batch in [0, MAX_BATCH + 1] {
            let config = LinkConfig {
                batch,
                ..LinkConfig::default()
            };
            assert_eq!(config.validate(), Err(ConfigError::Batch { batch }));
        }

        let config = LinkConfig {
            max_in_flight_packets: 0,
            ..LinkConfig::default()
        };
        assert!(matches!(
            config.validate(),
            Err(ConfigError::MaxInFlight { .. })
        ));
    }

    #[test]
    fn mean_loss_of_each_model() {
        assert_eq!(LossModel::None.mean_loss(), 0.0);
        assert_eq!(LossModel::Random { p: 0.25 }.mean_loss(), 0.25);
        let ge = LossModel::GilbertElliott {
            p_gb: 0.01,
            p_bg: 0.09,
            loss_good: 0.0,
            loss_bad: 0.5,
        };
        // Bad 10% of the time, losing half there.
        assert!((ge.mean_loss() - 0.05).abs() < 1e-12);
    }
}
