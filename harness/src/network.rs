//! The run's network namespaces, for the packet-level emulation modes.
//!
//! `userspace-link` puts the source's remote backend role in `src`, the
//! destination's connection in `dst`, and the project's packet relay in a
//! third namespace between them. The whole topology lives for one run and
//! is removed when [`Namespaces`] drops; `harness cleanup` removes what a
//! killed run left.

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
