//! The run's network namespaces, for the packet-level emulation modes.
//!
//! `userspace-link` puts the source's remote backend role in `src`, the
//! destination's connection in `dst`, and the project's packet relay in a
//! third namespace between them. The whole topology lives for one run and
//! is removed when [`Namespaces`] drops; `harness cleanup` removes what a
//! killed run left.

use std::time::Duration;

use netem::link::{DirectionConfig, LinkConfig, LossModel, Relay};
use netem::{Layout, NetNs, Topology};

/// The namespaces of one run and handles to enter them.
#[derive(Debug)]
pub struct Namespaces {
    // Handles first: a handle keeps its namespace alive, so they must be
    // closed before the topology deletes the names.
    pub src: NetNs,
    pub dst: NetNs,
    pub link: NetNs,
    pub topology: Topology,
}

impl Namespaces {
    /// Creates `src`, `dst` and the relay's `link` namespace for this run.
    pub fn create() -> Result<Self, String> {
        let run_id = Topology::new_run_id();
        let topology = Topology::create(&run_id, Layout::Relayed)
            .map_err(|e| format!("creating the network namespaces: {e}"))?;
        let open = |name: Option<&str>| {
            let name = name.ok_or("the relayed topology has no link namespace")?;
            NetNs::open(name).map_err(|e| format!("opening namespace {name}: {e}"))
        };
        Ok(Self {
            src: open(Some(topology.src_ns()))?,
            dst: open(Some(topology.dst_ns()))?,
            link: open(topology.link_ns())?,
            topology,
        })
    }
}

impl Namespaces {
    /// Starts the packet relay on the link namespace with `config`.
    /// Interface A faces `src`, so the relay's `a_to_b` is src -> dst.
    pub fn start_relay(&self, config: LinkConfig) -> Result<Relay, String> {
        let topo = &self.topology;
        let (Some(if_src), Some(if_dst)) = (topo.link_src_if(), topo.link_dst_if()) else {
            return Err("the topology has no relayed link".into());
        };
        Relay::start_in(&self.link, if_src, if_dst, config)
            .map_err(|e| format!("starting the packet relay: {e}"))
    }
}

/// A symmetric link: RTT/2 delay each way, and the same jitter, rate and
/// independent loss in both directions.
pub fn symmetric_link(
    rtt: Duration,
    jitter: Duration,
    rate_bps: Option<u64>,
    loss: f64,
) -> LinkConfig {
    LinkConfig::symmetric(DirectionConfig {
        delay: rtt / 2,
        jitter,
        loss: if loss > 0.0 {
            LossModel::Random { p: loss }
        } else {
            LossModel::None
        },
        rate_bps,
        ..DirectionConfig::default()
    })
}
