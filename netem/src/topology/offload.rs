//! Offloads of a namespace's interfaces: the relay's offload code
//! ([`crate::link::offload`]), run inside the namespace.
//!
//! Relayed interfaces need segmentation and checksum offloads off: with
//! TSO/GSO a "packet" handed to the relay can be a 64 KiB super-frame that
//! would pass the emulated link as one unit, and with TX checksum offload
//! frames read from an `AF_PACKET` socket carry unfinished checksums.

use super::{NetNs, TopologyError};
use crate::link::{self, Offloads};

/// Which offloads an interface has on.
pub type OffloadState = Offloads;

fn wrap(ns: &NetNs, iface: &str, source: link::OffloadError) -> TopologyError {
    TopologyError::Offload {
        ns: ns.name().to_owned(),
        iface: iface.to_owned(),
        source,
    }
}

/// Reads the offloads of `iface` in `ns` (what `ethtool -k` shows).
pub fn offload_state(ns: &NetNs, iface: &str) -> Result<OffloadState, TopologyError> {
    ns.run(|| link::offloads(iface))?
        .map_err(|e| wrap(ns, iface, e))
}

/// Turns the offloads the relay cannot live with off on `iface` in `ns`;
/// fails if one stays on.
pub(crate) fn disable_offloads(ns: &NetNs, iface: &str) -> Result<(), TopologyError> {
    ns.run(|| link::disable_offloads(iface))?
        .map(drop)
        .map_err(|e| wrap(ns, iface, e))
}
