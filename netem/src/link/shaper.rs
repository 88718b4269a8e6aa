//! The per-direction link model, with no sockets: given a frame's arrival
//! time and length, decide whether it is lost, dropped by the queue, or
//! when it leaves the link.
//!
//! Kept apart from the relay so the model is unit tested exactly (a seeded
//! generator and synthetic clocks), and the relay thread is left with I/O.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::config::{DirectionConfig, LossModel};

/// What happens to one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Lost by the loss model.
    Lost,
    /// The drop-tail queue was full.
    QueueFull,
    /// Leaves the link (is sent on) at this instant.
    Depart(Instant),
}

/// One direction's state: loss chain, queue occupancy, last departures.
#[derive(Debug)]
pub(crate) struct Shaper {
    config: DirectionConfig,
    rng: Rng,
    /// Gilbert-Elliott chain state; starts good.
    bad: bool,
    /// Frames admitted and not yet fully serialized: (end of
    /// serialization, length), oldest first.
    queue: VecDeque<(Instant, u64)>,
    queued_bytes: u64,
    /// When the last admitted frame finishes serializing.
    line_free_at: Option<Instant>,
    /// The last departure handed out, so jitter never reorders.
    last_departure: Option<Instant>,
    /// How long the last departing frame waited in the queue before its
    /// serialization began.
    last_queue_wait: Duration,
}

impl Shaper {
    pub(crate) fn new(config: DirectionConfig, seed: u64) -> Self {
        Self {
            config,
            rng: Rng::new(seed),
            bad: false,
            queue: VecDeque::new(),
            queued_bytes: 0,
            line_free_at: None,
            last_departure: None,
            last_queue_wait: Duration::ZERO,
        }
    }

    /// Decides the fate of a frame of `len` bytes that arrived at `now`.
    /// Calls must come with non-decreasing `now`.
    pub(crate) fn admit(&mut self, now: Instant, len: usize) -> Verdict {
        if self.lose() {
            return Verdict::Lost;
        }
        let len = len as u64;
        let serialized = match self.config.rate_bps {
            None => now,
            Some(rate) => {
                while let Some(&(done, bytes)) = self.queue.front() {
                    if done > now {
                        break;
                    }
                    self.queue.pop_front();
                    self.queued_bytes -= bytes;
                }
                if self.queued_bytes + len > self.config.queue_limit_bytes {
                    return Verdict::QueueFull;
                }
                let start = self.line_free_at.map_or(now, |free| free.max(now));
                self.last_queue_wait = start - now;
                let done = start + serialization_time(len, rate);
                self.line_free_at = Some(done);
                self.queue.push_back((done, len));
                self.queued_bytes += len;
                done
            }
        };
        let mut departure = serialized + self.propagation();
        if let Some(last) = self.last_departure {
            departure = departure.max(last);
        }
        self.last_departure = Some(departure);
        Verdict::Depart(departure)
    }

    /// How long the frame of the last [`Verdict::Depart`] waits in the
    /// drop-tail queue before its serialization begins: the queueing delay
    /// the link model adds (zero without a rate limit).
    pub(crate) fn last_queue_wait(&self) -> Duration {
        self.last_queue_wait
    }

    /// Bytes in the queue as of the last `admit` (for tests).
    #[cfg(test)]
    fn queued_bytes(&self) -> u64 {
        self.queued_bytes
    }

    fn lose(&mut self) -> bool {
        match self.config.loss {
            LossModel::None => false,
            LossModel::Random { p } => self.rng.chance(p),
            LossModel::GilbertElliott {
                p_gb,
                p_bg,
                loss_good,
                loss_bad,
            } => {
                let lost = self.rng.chance(if self.bad { loss_bad } else { loss_good });
                let flip = self.rng.chance(if self.bad { p_bg } else { p_gb });
                self.bad ^= flip;
                lost
            }
        }
    }

    /// The delay plus a uniform jitter offset, never negative.
    fn propagation(&mut self) -> Duration {
        let delay = self.config.delay;
        let jitter = self.config.jitter.as_nanos() as u64;
        if jitter == 0 {
            return delay;
        }
        // Uniform in [0, 2 * jitter], then shifted down by `jitter`.
        let offset = self.rng.below(2 * jitter + 1);
        (delay + Duration::from_nanos(offset)).saturating_sub(Duration::from_nanos(jitter))
    }
}

/// How long `len` bytes take on a line of `rate` bit/s, rounded up to the
/// nanosecond so a rate is never exceeded.
fn serialization_time(len: u64, rate: u64) -> Duration {
    let nanos = (u128::from(len) * 8 * 1_000_000_000).div_ceil(u128::from(rate));
    // At 1 bit/s a 64 KiB frame takes about six days: far inside u64 nanos.
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// A small, fast, seedable generator (xoshiro256** seeded through
/// splitmix64). Loss and jitter need speed and reproducibility, not
/// cryptographic quality.
#[derive(Debug, Clone)]
pub(crate) struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        // splitmix64 never yields four zeros in a row, the one state
        // xoshiro cannot leave.
        Self {
            s: [next(), next(), next(), next()],
        }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)` with 53 bits of precision.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// True with probability `p` (exactly never for 0, always for 1).
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Uniform in `[0, n)`; `n` must be non-zero. Uses the widening
    /// multiply, whose bias (at most n / 2^64) is far below anything a
    /// link emulation can observe.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn pure_delay_departs_exactly_delay_later() {
        let mut shaper = Shaper::new(DirectionConfig::with_delay(ms(5)), 1);
        let t0 = Instant::now();
        for i in 0..100 {
            let now = t0 + Duration::from_micros(i * 7);
            assert_eq!(shaper.admit(now, 1514), Verdict::Depart(now + ms(5)));
        }
    }

    #[test]
    fn rate_spaces_departures_by_serialization_time() {
        let config = DirectionConfig {
            rate_bps: Some(8_000_000), // 1 byte per microsecond
            queue_limit_bytes: 10_000,
            delay: ms(1),
            ..DirectionConfig::default()
        };
        let mut shaper = Shaper::new(config, 1);
        let t0 = Instant::now();
        // A burst of 5 frames of 1000 bytes at once: each waits for the
        // previous one; propagation is added after serialization.
        for i in 1..=5u64 {
            assert_eq!(
                shaper.admit(t0, 1000),
                Verdict::Depart(t0 + Duration::from_micros(1000 * i) + ms(1))
            );
            // Frame i waits for the i - 1 before it.
            assert_eq!(
                shaper.last_queue_wait(),
                Duration::from_micros(1000 * (i - 1))
            );
        }
        assert_eq!(shaper.queued_bytes(), 5000);
        // A frame arriving after the line went idle starts at once.
        let later = t0 + ms(100);
        assert_eq!(
            shaper.admit(later, 500),
            Verdict::Depart(later + Duration::from_micros(500) + ms(1))
        );
        assert_eq!(shaper.queued_bytes(), 500);
    }

    #[test]
    fn queue_drops_the_tail_and_frees_as_frames_serialize() {
        let config = DirectionConfig {
            rate_bps: Some(8_000_000),
            queue_limit_bytes: 3000,
            ..DirectionConfig::default()
        };
        let mut shaper = Shaper::new(config, 1);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(matches!(shaper.admit(t0, 1000), Verdict::Depart(_)));
        }
        assert_eq!(shaper.admit(t0, 1000), Verdict::QueueFull);
        assert_eq!(shaper.admit(t0, 1), Verdict::QueueFull);
        // The first frame is fully serialized at t0 + 1 ms: room for one.
        let t1 = t0 + ms(1);
        assert_eq!(
            shaper.admit(t1, 1000),
            Verdict::Depart(t0 + Duration::from_micros(4000))
        );
        assert_eq!(shaper.admit(t1, 1000), Verdict::QueueFull);
        // A dropped frame must not have moved the line's schedule.
        assert_eq!(shaper.queued_bytes(), 3000);
    }

    #[test]
    fn jitter_stays_in_bounds_and_never_reorders() {
        let config = DirectionConfig {
            delay: ms(10),
            jitter: ms(3),
            ..DirectionConfig::default()
        };
        let mut shaper = Shaper::new(config, 7);
        let t0 = Instant::now();
        let mut last = t0;
        let mut spread = (Duration::MAX, Duration::ZERO);
        for i in 0..20_000u64 {
            // Arrivals far apart, so monotonic clamping does not hide the
            // raw draw, then bursts where it must act.
            let now = t0 + if i < 10_000 { ms(i * 20) } else { ms(200_000) };
            let Verdict::Depart(at) = shaper.admit(now, 100) else {
                panic!("no loss configured");
            };
            assert!(at >= last, "frame {i} departs before the previous one");
            last = at;
            if i < 10_000 {
                let d = at - now;
                assert!(d >= ms(7) && d <= ms(13), "frame {i}: delay {d:?}");
                spread = (spread.0.min(d), spread.1.max(d));
            }
        }
        // The draw covers the range, not one point.
        assert!(spread.0 < ms(8) && spread.1 > ms(12), "{spread:?}");
    }

    #[test]
    fn random_loss_matches_p() {
        let config = DirectionConfig {
            loss: LossModel::Random { p: 0.05 },
            ..DirectionConfig::default()
        };
        let mut shaper = Shaper::new(config, 42);
        let now = Instant::now();
        let n = 200_000;
        let lost = (0..n)
            .filter(|_| shaper.admit(now, 64) == Verdict::Lost)
            .count();
        let rate = lost as f64 / n as f64;
        // 5 standard deviations of a binomial(200k, 0.05) is 0.0024.
        assert!((rate - 0.05).abs() < 0.0025, "loss rate {rate}");
    }

    #[test]
    fn loss_extremes_are_exact() {
        for (p, expect_lost) in [(0.0, false), (1.0, true)] {
            let config = DirectionConfig {
                loss: LossModel::Random { p },
                ..DirectionConfig::default()
            };
            let mut shaper = Shaper::new(config, 3);
            let now = Instant::now();
            for _ in 0..10_000 {
                assert_eq!(shaper.admit(now, 64) == Verdict::Lost, expect_lost);
            }
        }
    }

    #[test]
    fn gilbert_elliott_loses_in_bursts_at_the_stationary_rate() {
        let model = LossModel::GilbertElliott {
            p_gb: 0.01,
            p_bg: 0.2,
            loss_good: 0.0,
            loss_bad: 1.0,
        };
        let config = DirectionConfig {
            loss: model,
            ..DirectionConfig::default()
        };
        let mut shaper = Shaper::new(config, 9);
        let now = Instant::now();
        let n = 400_000;
        let mut lost = 0u64;
        let mut bursts = 0u64;
        let mut previous_lost = false;
        for _ in 0..n {
            let is_lost = shaper.admit(now, 64) == Verdict::Lost;
            lost += u64::from(is_lost);
            bursts += u64::from(is_lost && !previous_lost);
            previous_lost = is_lost;
        }
        let rate = lost as f64 / f64::from(n);
        let expected = model.mean_loss(); // 0.01 / 0.21 = 0.0476
        assert!((rate - expected).abs() < 0.005, "loss {rate} vs {expected}");
        // Loss only in the bad state, which lasts 1 / p_bg = 5 frames on
        // average: bursts, unlike independent loss (mean run ~1.05).
        let mean_burst = lost as f64 / bursts as f64;
        assert!((4.0..6.0).contains(&mean_burst), "mean burst {mean_burst}");
    }

    #[test]
    fn same_seed_same_decisions_different_seed_different() {
        let config = DirectionConfig {
            loss: LossModel::Random { p: 0.5 },
            jitter: ms(1),
            delay: ms(1),
            ..DirectionConfig::default()
        };
        let now = Instant::now();
        let run = |seed| {
            let mut shaper = Shaper::new(config, seed);
            (0..1000).map(|_| shaper.admit(now, 64)).collect::<Vec<_>>()
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
    }

    #[test]
    fn serialization_time_rounds_up() {
        assert_eq!(
            serialization_time(1500, 12_000_000),
            Duration::from_micros(1000)
        );
        // 1514 bytes at 10 Gbit/s is 1211.2 ns.
        assert_eq!(
            serialization_time(1514, 10_000_000_000),
            Duration::from_nanos(1212)
        );
        assert_eq!(serialization_time(1, 1), Duration::from_secs(8));
    }
}
