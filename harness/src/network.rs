//! The run's network namespaces, for the packet-level emulation modes.
//!
//! The packet-level modes put the source's remote backend role in `src`
//! and the destination's connection in `dst`. `userspace-link` joins them
//! through a third namespace where the project's packet relay shapes every
//! frame; `kernel-netem` joins them by one veth pair whose ends carry the
//! kernel's netem qdisc. The whole topology lives for one run and
//! is removed when [`Namespaces`] drops; `harness cleanup` removes what a
//! killed run left.

use std::time::Duration;

use netem::link::{DirectionConfig, LinkConfig, LossModel, Relay};
use netem::{KernelNetem, Layout, NetNs, Topology};

/// The namespaces of one run and handles to enter them.
#[derive(Debug)]
pub struct Namespaces {
    // Handles first: a handle keeps its namespace alive, so they must be
    // closed before the topology deletes the names.
    pub src: NetNs,
    pub dst: NetNs,
    /// The relay's namespace (`Layout::Relayed` only).
    pub link: Option<NetNs>,
    pub topology: Topology,
}

impl Namespaces {
    /// Creates `src` and `dst` for this run, joined the way `layout` says:
    /// through the relay's `link` namespace, or by one veth pair for the
    /// kernel's netem; TCP in both may use large windows.
    pub fn create(layout: Layout) -> Result<Self, String> {
        let run_id = Topology::new_run_id();
        let topology = Topology::create(&run_id, layout)
            .map_err(|e| format!("creating the network namespaces: {e}"))?;
        let open =
            |name: &str| NetNs::open(name).map_err(|e| format!("opening namespace {name}: {e}"));
        let net = Self {
            src: open(topology.src_ns())?,
            dst: open(topology.dst_ns())?,
            link: topology.link_ns().map(open).transpose()?,
            topology,
        };
        net.raise_tcp_buffers()?;
        Ok(net)
    }

    /// Lets TCP in `src` and `dst` grow its windows to 128 MiB, so a long
    /// fat emulated link is limited by its configured rate rather than by
    /// the kernel's default buffer ceiling (6 MiB here: 120 Mbit/s at
    /// 400 ms). The sysctls are per namespace; the host's stay as they are.
    fn raise_tcp_buffers(&self) -> Result<(), String> {
        const SETTINGS: [(&str, &str); 2] = [
            ("/proc/sys/net/ipv4/tcp_rmem", "4096 131072 134217728"),
            ("/proc/sys/net/ipv4/tcp_wmem", "4096 16384 134217728"),
        ];
        for ns in [&self.src, &self.dst] {
            ns.run(|| {
                // /proc/sys/net follows the calling thread's namespace.
                SETTINGS.iter().try_for_each(|(path, value)| {
                    std::fs::write(path, value).map_err(|e| (path, e))
                })
            })
            .map_err(|e| format!("entering namespace {}: {e}", ns.name()))?
            .map_err(|(path, e)| format!("writing {path} in namespace {}: {e}", ns.name()))?;
        }
        Ok(())
    }

    /// Shapes the link with `config`: the packet relay on a relayed
    /// topology (its interface A faces `src`, so `a_to_b` is src -> dst),
    /// the kernel's netem qdiscs on a direct one.
    pub fn start_link(&self, config: LinkConfig) -> Result<ShapedLink, String> {
        let topo = &self.topology;
        match (&self.link, topo.link_src_if(), topo.link_dst_if()) {
            (Some(link), Some(if_src), Some(if_dst)) => {
                Relay::start_in(link, if_src, if_dst, config)
                    .map(ShapedLink::Relay)
                    .map_err(|e| format!("starting the packet relay: {e}"))
            }
            _ => KernelNetem::apply(topo, &config)
                .map(ShapedLink::Kernel)
                .map_err(|e| format!("applying the kernel's netem: {e}")),
        }
    }
}

/// What shapes the link between `src` and `dst` while it lives.
#[derive(Debug)]
pub enum ShapedLink {
    /// The project's packet relay.
    Relay(Relay),
    /// The kernel's netem qdiscs.
    Kernel(KernelNetem),
}

impl ShapedLink {
    /// The relay, when one carries the packets.
    pub fn relay(&self) -> Option<&Relay> {
        match self {
            ShapedLink::Relay(relay) => Some(relay),
            ShapedLink::Kernel(_) => None,
        }
    }

    /// Frame bytes that crossed the link so far, both directions, as the
    /// relay or the kernel counted them.
    pub fn transferred_bytes(&self) -> Result<u64, String> {
        match self {
            ShapedLink::Relay(relay) => Ok(relay.stats().transferred_bytes()),
            ShapedLink::Kernel(netem) => netem
                .transferred_bytes()
                .map_err(|e| format!("reading the veth counters: {e}")),
        }
    }

    /// Stops shaping (the relay stops relaying; the qdiscs go).
    pub fn stop(self) -> Result<(), String> {
        match self {
            ShapedLink::Relay(relay) => relay
                .stop()
                .map(drop)
                .map_err(|e| format!("stopping the packet relay: {e}")),
            ShapedLink::Kernel(netem) => netem
                .remove()
                .map_err(|e| format!("removing the netem qdiscs: {e}")),
        }
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
