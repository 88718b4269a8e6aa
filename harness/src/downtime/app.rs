//! The migrating application: a loop that keeps dirtying the region at a
//! set rate while it checks what it reads, and that carries its whole state
//! in the region, so it resumes on the destination from what migrated.
//!
//! Every write is op `i` of a stream fixed by the seed: it stamps one page
//! (chosen by [`AppSpec::page_of`]) with bytes derived from `(seed, page,
//! i)`. The state of the application is therefore one number, how many
//! ops it has done, which it keeps in page 0 with the time of its last tick
//! ([`StateRecord`]). A destination reads page 0, replays the page choices
//! of the ops done (no bytes, only which op last wrote which page:
//! [`Versions::replay`]) and goes on with op `ops`.
//!
//! Each tick (every millisecond) writes the pages the rate asks for, reads
//! one page and compares it with what it must hold (the op that last wrote
//! it, or the source's bytes if none did), and writes page 0. The largest
//! gap between two ticks, counted across the move, is the stall the
//! application felt (`app_stall_max_ms`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use migration::AppGate;

/// Bytes the application dirties at a time: a page.
pub const PAGE: usize = 4096;
/// Page 0 begins with this; anything else means no application state.
const STATE_MAGIC: u64 = u64::from_le_bytes(*b"MSBAPP01");
/// Pause between ticks.
const TICK: Duration = Duration::from_millis(1);
/// Most writes one tick catches up with after a stall, so a resumed
/// application does not stop for a burst.
const MAX_WRITES_PER_TICK: u64 = 256;
/// How long the loop waits for a suspended gate before looking at its stop
/// flag again.
const GATE_POLL: Duration = Duration::from_millis(20);
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
/// The version of a page no op wrote.
const PRISTINE: u64 = u64::MAX;

/// Where the writes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DirtyPattern {
    /// Every data page alike.
    Uniform,
    /// A hot set of a tenth of the data pages takes every write.
    HotSet,
}

impl DirtyPattern {
    pub fn name(self) -> &'static str {
        match self {
            Self::Uniform => "uniform",
            Self::HotSet => "hot-set",
        }
    }
}

impl std::fmt::Display for DirtyPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the application does; both ends must agree on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppSpec {
    pub seed: u64,
    /// Pages in the region, page 0 (the state) included; at least 2.
    pub pages: u64,
    /// Pages written per second.
    pub dirty_rate: u64,
    pub pattern: DirtyPattern,
}

/// Why the application could not run or resume.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("a {len}-byte region is not {pages} pages of {PAGE} bytes")]
    Size { len: usize, pages: u64 },
    #[error(
        "page 0 holds no application state (magic {found:#x}): the migration did not bring it"
    )]
    NoState { found: u64 },
    #[error("page 0 says {ops} ops were done, more than the {limit} a run this short can do")]
    ImplausibleState { ops: u64, limit: u64 },
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl AppSpec {
    fn data_pages(&self) -> u64 {
        self.pages - 1
    }

    /// The page op `op` writes: never page 0.
    pub fn page_of(&self, op: u64) -> u64 {
        let h = mix(self.seed ^ op.wrapping_mul(GOLDEN));
        let data = self.data_pages();
        match self.pattern {
            DirtyPattern::Uniform => 1 + h % data,
            DirtyPattern::HotSet => {
                let hot = (data / 10).max(1);
                let start = mix(self.seed ^ 0x4807) % data;
                1 + (start + h % hot) % data
            }
        }
    }

    /// The bytes op `op` leaves in page `page`.
    pub fn stamp(&self, page: u64, op: u64, out: &mut [u8]) {
        let mut x = mix(self.seed ^ page.rotate_left(32) ^ op.wrapping_mul(GOLDEN));
        for (i, word) in out.chunks_exact_mut(8).enumerate() {
            let v = match i {
                0 => page,
                1 => op,
                _ => {
                    x = x.wrapping_add(GOLDEN);
                    mix(x)
                }
            };
            word.copy_from_slice(&v.to_le_bytes());
        }
    }

    /// The page the `tick`th check reads.
    fn page_checked(&self, tick: u64) -> u64 {
        1 + mix(self.seed ^ 0xC4EC ^ tick.wrapping_mul(GOLDEN)) % self.data_pages()
    }

    fn check_len(&self, mem: &[u8]) -> Result<(), AppError> {
        if self.pages < 2 || mem.len() as u64 != self.pages * PAGE as u64 {
            return Err(AppError::Size {
                len: mem.len(),
                pages: self.pages,
            });
        }
        Ok(())
    }
}

/// Which op last wrote each page.
#[derive(Debug, Clone)]
pub struct Versions(Vec<u64>);

impl Versions {
    /// The versions after ops `0..ops`, from the page choices alone.
    pub fn replay(spec: &AppSpec, ops: u64) -> Self {
        let mut v = vec![PRISTINE; spec.pages as usize];
        for op in 0..ops {
            v[spec.page_of(op) as usize] = op;
        }
        Self(v)
    }

    /// What page `page` must hold: the last stamp, or the source's bytes.
    fn expected<'a>(
        &self,
        spec: &AppSpec,
        page: u64,
        source: &'a [u8],
        buf: &'a mut [u8; PAGE],
    ) -> &'a [u8] {
        match self.0[page as usize] {
            PRISTINE => &source[page as usize * PAGE..(page as usize + 1) * PAGE],
            op => {
                spec.stamp(page, op, buf);
                &buf[..]
            }
        }
    }

    /// SHA-256 of what pages 1.. must hold.
    pub fn expected_data_sha256(&self, spec: &AppSpec, source: &[u8]) -> [u8; 32] {
        let mut hasher = Sha256::new();
        let mut buf = [0u8; PAGE];
        for page in 1..spec.pages {
            hasher.update(self.expected(spec, page, source, &mut buf));
        }
        hasher.finalize().into()
    }
}

/// SHA-256 of pages 1.. of a region: what [`Versions::expected_data_sha256`]
/// is compared with.
pub fn data_sha256(mem: &[u8]) -> [u8; 32] {
    Sha256::digest(&mem[PAGE.min(mem.len())..]).into()
}

/// Page 0: how far the application got, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateRecord {
    /// Ops (page writes) done.
    pub ops: u64,
    /// CLOCK_MONOTONIC of the end of the last tick, ns.
    pub last_tick_ns: u64,
}

impl StateRecord {
    fn write(&self, mem: &mut [u8]) {
        mem[0..8].copy_from_slice(&STATE_MAGIC.to_le_bytes());
        mem[8..16].copy_from_slice(&self.ops.to_le_bytes());
        mem[16..24].copy_from_slice(&self.last_tick_ns.to_le_bytes());
    }

    /// The record in `mem`'s page 0; `max_ops` bounds what is believed (the
    /// replay allocates nothing per op, but takes time per op).
    pub fn read(mem: &[u8], max_ops: u64) -> Result<Self, AppError> {
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&mem[i * 8..i * 8 + 8]);
            u64::from_le_bytes(w)
        };
        if word(0) != STATE_MAGIC {
            return Err(AppError::NoState { found: word(0) });
        }
        let record = Self {
            ops: word(1),
            last_tick_ns: word(2),
        };
        if record.ops > max_ops {
            return Err(AppError::ImplausibleState {
                ops: record.ops,
                limit: max_ops,
            });
        }
        Ok(record)
    }
}

/// CLOCK_MONOTONIC in ns: comparable between the processes of one host
/// (the roles share the host's clock, namespaces or not).
pub fn monotonic_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(t) => t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64,
        // CLOCK_MONOTONIC cannot fail on Linux; 0 would show as a huge gap.
        Err(_) => 0,
    }
}

/// What one run of the loop did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunStats {
    /// Ops done in total (carried over included) when the loop stopped.
    pub ops: u64,
    /// Ops this run did.
    pub ops_here: u64,
    pub ticks: u64,
    pub checks: u64,
    /// Checks that found bytes other than the expected ones.
    pub check_failures: u64,
    /// Largest gap between the end of one tick and the next, ns (the first
    /// measured from the state record's `last_tick_ns`).
    pub max_gap_ns: u64,
    /// End of the first and last tick of this run, CLOCK_MONOTONIC ns.
    pub first_tick_ns: u64,
    pub last_tick_ns: u64,
}

/// The application on one host.
pub struct App<'a> {
    spec: AppSpec,
    source: &'a [u8],
    versions: Versions,
    state: StateRecord,
}

impl<'a> App<'a> {
    /// A fresh application on the source: no op done yet. `source` is the
    /// region's initial content.
    pub fn start(spec: AppSpec, source: &'a [u8]) -> Result<Self, AppError> {
        spec.check_len(source)?;
        Ok(Self {
            spec,
            source,
            versions: Versions(vec![PRISTINE; spec.pages as usize]),
            state: StateRecord {
                ops: 0,
                last_tick_ns: monotonic_ns(),
            },
        })
    }

    /// The application as it was when suspended, from the region it left
    /// (`mem`, the migrated region): page 0 and a replay.
    pub fn resume(spec: AppSpec, source: &'a [u8], mem: &[u8]) -> Result<Self, AppError> {
        spec.check_len(source)?;
        spec.check_len(mem)?;
        // A day of writing at the rate (and a floor for rate 0).
        let limit = spec.dirty_rate.saturating_mul(86_400).max(1 << 20);
        let state = StateRecord::read(mem, limit)?;
        Ok(Self {
            spec,
            source,
            versions: Versions::replay(&spec, state.ops),
            state,
        })
    }

    pub fn state(&self) -> StateRecord {
        self.state
    }

    /// Ticks until `stop` is set. With a `gate` (the source), each tick is
    /// one pass through it, so a suspended gate stops the loop between
    /// ticks; without one (the destination), nothing stops it but `stop`.
    pub fn run(
        &mut self,
        mem: &mut [u8],
        gate: Option<&AppGate>,
        stop: &AtomicBool,
    ) -> Result<RunStats, AppError> {
        self.spec.check_len(mem)?;
        let ops_at_start = self.state.ops;
        let started_ns = monotonic_ns();
        let mut stats = RunStats {
            ops: ops_at_start,
            ..RunStats::default()
        };
        let mut previous_ns = self.state.last_tick_ns;
        let mut check_buf = [0u8; PAGE];
        while !stop.load(Ordering::Relaxed) {
            let pass = match gate {
                Some(gate) => match gate.enter_within(GATE_POLL) {
                    Some(pass) => Some(pass),
                    None => continue,
                },
                None => None,
            };
            // Writes due at the rate since this run began.
            let elapsed_ns = monotonic_ns().saturating_sub(started_ns);
            let due = ((elapsed_ns as u128 * self.spec.dirty_rate as u128) / 1_000_000_000) as u64;
            let todo = (ops_at_start + due)
                .saturating_sub(self.state.ops)
                .min(MAX_WRITES_PER_TICK);
            for _ in 0..todo {
                let op = self.state.ops;
                let page = self.spec.page_of(op);
                let at = page as usize * PAGE;
                self.spec.stamp(page, op, &mut mem[at..at + PAGE]);
                self.versions.0[page as usize] = op;
                self.state.ops += 1;
            }
            let page = self.spec.page_checked(stats.ticks);
            let at = page as usize * PAGE;
            let expected = self
                .versions
                .expected(&self.spec, page, self.source, &mut check_buf);
            stats.checks += 1;
            if mem[at..at + PAGE] != *expected {
                stats.check_failures += 1;
                tracing::error!(
                    page,
                    ops = self.state.ops,
                    "the application read bytes it did not expect"
                );
            }
            let now = monotonic_ns();
            self.state.last_tick_ns = now;
            self.state.write(mem);
            drop(pass);
            stats.max_gap_ns = stats.max_gap_ns.max(now.saturating_sub(previous_ns));
            if stats.ticks == 0 {
                stats.first_tick_ns = now;
            }
            stats.last_tick_ns = now;
            stats.ticks += 1;
            previous_ns = now;
            std::thread::sleep(TICK);
        }
        stats.ops = self.state.ops;
        stats.ops_here = self.state.ops - ops_at_start;
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn spec(pattern: DirtyPattern) -> AppSpec {
        AppSpec {
            seed: 7,
            pages: 64,
            dirty_rate: 20_000,
            pattern,
        }
    }

    fn source(spec: &AppSpec) -> Vec<u8> {
        (0..spec.pages as usize * PAGE)
            .map(|i| (i % 251) as u8)
            .collect()
    }

    fn run_for(app: &mut App, mem: &mut [u8], gate: Option<&AppGate>, ms: u64) -> RunStats {
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            let stopper = s.spawn(|| {
                std::thread::sleep(Duration::from_millis(ms));
                stop.store(true, Ordering::Relaxed);
            });
            let stats = app.run(mem, gate, &stop).unwrap();
            stopper.join().unwrap();
            stats
        })
    }

    #[test]
    fn pages_chosen_are_data_pages_and_the_hot_set_is_a_tenth() {
        for pattern in [DirtyPattern::Uniform, DirtyPattern::HotSet] {
            let s = spec(pattern);
            let pages: std::collections::BTreeSet<u64> =
                (0..10_000).map(|op| s.page_of(op)).collect();
            assert!(
                pages.iter().all(|&p| (1..s.pages).contains(&p)),
                "{pattern}"
            );
            let expect = match pattern {
                DirtyPattern::Uniform => 63,
                DirtyPattern::HotSet => 6,
            };
            assert_eq!(pages.len(), expect, "{pattern}");
        }
    }

    /// The application moves by copying its memory: the copy resumes where
    /// the original stopped, and the final bytes are what the replay says.
    #[test]
    fn a_copied_region_resumes_and_matches_the_replay() {
        let s = spec(DirtyPattern::Uniform);
        let src = source(&s);
        let mut mem = src.clone();
        let mut app = App::start(s, &src).unwrap();
        let first = run_for(&mut app, &mut mem, None, 30);
        assert!(first.ops > 0 && first.checks > 0, "{first:?}");
        assert_eq!(first.check_failures, 0);

        let mut moved = mem.clone();
        let mut resumed = App::resume(s, &src, &moved).unwrap();
        assert_eq!(resumed.state(), app.state());
        let second = run_for(&mut resumed, &mut moved, None, 30);
        assert_eq!(second.check_failures, 0);
        assert!(second.ops > first.ops);
        assert!(second.max_gap_ns >= second.first_tick_ns - first.last_tick_ns);

        let replay = Versions::replay(&s, second.ops);
        assert_eq!(replay.expected_data_sha256(&s, &src), data_sha256(&moved));
        assert_ne!(replay.expected_data_sha256(&s, &src), data_sha256(&mem));
    }

    #[test]
    fn a_lost_write_is_caught_by_the_checks_or_the_digest() {
        let s = AppSpec {
            dirty_rate: 200_000,
            ..spec(DirtyPattern::HotSet)
        };
        let src = source(&s);
        let mut mem = src.clone();
        let mut app = App::start(s, &src).unwrap();
        run_for(&mut app, &mut mem, None, 20);
        // A migration that lost the last write to one page.
        let page = s.page_of(app.state().ops - 1) as usize;
        mem[page * PAGE + 100] ^= 0xFF;
        let resumed = App::resume(s, &src, &mem).unwrap();
        let expected = Versions::replay(&s, resumed.state().ops).expected_data_sha256(&s, &src);
        assert_ne!(expected, data_sha256(&mem));
    }

    #[test]
    fn a_region_without_state_or_of_the_wrong_size_is_an_error() {
        let s = spec(DirtyPattern::Uniform);
        let src = source(&s);
        assert!(matches!(
            App::resume(s, &src, &src),
            Err(AppError::NoState { .. })
        ));
        assert!(matches!(
            App::start(s, &src[..PAGE * 3]),
            Err(AppError::Size { .. })
        ));
        let mut garbage = src.clone();
        StateRecord {
            ops: u64::MAX / 2,
            last_tick_ns: 0,
        }
        .write(&mut garbage);
        assert!(matches!(
            App::resume(s, &src, &garbage),
            Err(AppError::ImplausibleState { .. })
        ));
    }

    #[test]
    fn a_suspended_gate_stops_the_writes_until_resumed() {
        use migration::AppControl as _;
        let s = spec(DirtyPattern::Uniform);
        let src = source(&s);
        let mut mem = src.clone();
        let mut app = App::start(s, &src).unwrap();
        let gate = Arc::new(AppGate::default());
        let stop = AtomicBool::new(false);
        std::thread::scope(|sc| {
            let g = gate.clone();
            let stop = &stop;
            let control = sc.spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                g.suspend().unwrap();
                std::thread::sleep(Duration::from_millis(50));
                stop.store(true, Ordering::Relaxed);
            });
            let stats = app.run(&mut mem, Some(&gate), stop).unwrap();
            control.join().unwrap();
            // The loop ended while suspended: its last tick ended before
            // the stop, at least the 50 ms of suspension earlier (less
            // the sleep's slack).
            assert!(stats.ticks > 0);
            assert!(
                monotonic_ns() - stats.last_tick_ns >= 40_000_000,
                "{stats:?}"
            );
        });
        // Page 0 holds the state as of the suspension.
        assert_eq!(StateRecord::read(&mem, u64::MAX).unwrap(), app.state());
    }
}
