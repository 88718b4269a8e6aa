//! Network emulation for memsync-bench.
//!
//! Two families: in-process delays (a delay line on a byte stream, a sleep
//! per call), and the packet level: network namespaces joined through a
//! user-space relay that delays, drops and rate-limits every frame.
//!
//! # Layout
//!
//! - [`timer`]: a precise async sleep (sub-millisecond, never early) served
//!   by one spinning thread, and histograms of how late it wakes.
//! - [`delay_line`]: [`DelayLine`], a pair of connected byte streams where
//!   every byte arrives a fixed one-way delay after it was written, with
//!   many writes in flight at once.
//! - [`delay_proxy`]: [`DelayProxy`], a loopback TCP proxy that runs every
//!   connection through a delay line, for transports that only speak TCP.
//! - [`per_call`]: [`PerCallDelay`], a backend wrapper that sleeps one RTT
//!   before every call, the way the thesis emulated latency.
//! - [`topology`]: [`Topology`], a run's namespaces (`src`, `dst`, and the
//!   relay's `link`), owned and removed on drop; `cleanup` for leftovers.
//! - [`calibrate`]: measures a relayed link (RTT idle and loaded, UDP
//!   loss, goodput) against its configuration and the accuracy targets.
//! - [`link`]: the packet relay between two interfaces: loss, drop-tail
//!   queue, rate, delay and jitter per direction, with counters and its
//!   departure error.
//! - [`kernel_netem`]: [`KernelNetem`], the same link model as the kernel's
//!   netem qdisc on a direct veth pair, where the kernel has it.
//!
//! # Example
//!
//! ```
//! use std::time::{Duration, Instant};
//! use netem::DelayLine;
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let one_way = Duration::from_micros(500);
//! let (mut near, mut far) = DelayLine::pair(one_way);
//! let start = Instant::now();
//! near.write_all(b"ping").await?;
//! let mut buf = [0; 4];
//! far.read_exact(&mut buf).await?;
//! far.write_all(b"pong").await?;
//! near.read_exact(&mut buf).await?;
//! assert!(start.elapsed() >= 2 * one_way); // one RTT, never less
//! println!("{:?}", netem::timer::lateness_snapshot().value_at_quantile(0.99));
//! # Ok(())
//! # }
//! ```
//!
//! Depends on `backends`; nothing in `impls/` depends on this crate, so the
//! implementations under test never see how their link is emulated.

pub mod calibrate;
pub mod delay_line;
pub mod delay_proxy;
pub mod kernel_netem;
pub mod link;
pub mod per_call;
pub mod timer;
pub mod topology;

pub use delay_line::{DelayLine, DelayStream, LinkStats};
pub use delay_proxy::{DelayProxy, DelayProxyError};
pub use kernel_netem::{KernelNetem, KernelNetemError};
pub use per_call::PerCallDelay;
pub use timer::{precise_sleep, precise_sleep_until, PreciseSleep};
pub use topology::{Layout, NetNs, Topology, TopologyError};
