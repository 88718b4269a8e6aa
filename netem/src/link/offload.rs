//! Turning off segmentation and checksum offloads on an interface, without
//! the `ethtool` binary (CI images often lack it).
//!
//! Why the relay needs this: with offloads on, a veth hands the packet
//! socket 64 KiB TSO/GSO super-frames (which cannot be sent again as one
//! frame) and TCP/UDP frames whose checksum is left for "the hardware" to
//! fill in (which the receiving veth then rejects). Turn them off on every
//! interface frames cross: the two endpoints' veths (where TCP builds
//! frames) and the relay's own pair.
//!
//! Uses the legacy `SIOCETHTOOL` get/set commands, which every kernel
//! since 2.6 still serves by mapping them onto netdev features.

use std::io;

use super::sys::{self, EthtoolValue};

// ethtool commands from include/uapi/linux/ethtool.h.
const ETHTOOL_GRXCSUM: u32 = 0x14;
const ETHTOOL_SRXCSUM: u32 = 0x15;
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;
const ETHTOOL_GSG: u32 = 0x18;
const ETHTOOL_SSG: u32 = 0x19;
const ETHTOOL_GTSO: u32 = 0x1e;
const ETHTOOL_STSO: u32 = 0x1f;
const ETHTOOL_GGSO: u32 = 0x23;
const ETHTOOL_SGSO: u32 = 0x24;
const ETHTOOL_GGRO: u32 = 0x2b;
const ETHTOOL_SGRO: u32 = 0x2c;

/// Which offloads an interface has on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offloads {
    /// Transmit checksum offload (`tx-checksumming`).
    pub tx_checksum: bool,
    /// Receive checksum offload (`rx-checksumming`).
    pub rx_checksum: bool,
    /// Scatter-gather (`sg`), a prerequisite of TSO.
    pub scatter_gather: bool,
    /// TCP segmentation offload (`tso`).
    pub tso: bool,
    /// Generic segmentation offload (`gso`).
    pub gso: bool,
    /// Generic receive offload (`gro`).
    pub gro: bool,
}

impl Offloads {
    /// The first offload that hands the relay frames it cannot forward as
    /// they are (oversized or with an unfinished checksum), if any.
    /// Receive checksum offload is harmless and not counted.
    pub fn harmful(&self) -> Option<&'static str> {
        [
            (self.tso, "tso"),
            (self.gso, "gso"),
            (self.gro, "gro"),
            (self.tx_checksum, "tx-checksumming"),
            (self.scatter_gather, "scatter-gather"),
        ]
        .into_iter()
        .find_map(|(on, name)| on.then_some(name))
    }
}

/// A failure to read or change an interface's offloads.
#[derive(Debug, thiserror::Error)]
pub enum OffloadError {
    /// The name cannot be an interface name.
    #[error("interface name {0:?} is invalid; allowed: 1 to 15 bytes, no NUL or '/'")]
    InvalidName(String),
    /// An ioctl failed.
    #[error("interface {interface}: {syscall} failed: {source}")]
    Sys {
        /// The interface.
        interface: String,
        /// The call and command that failed.
        syscall: &'static str,
        /// What the kernel said.
        source: io::Error,
    },
    /// The kernel kept an offload on after being asked to turn it off.
    #[error("interface {interface}: offload {feature} is still on after turning it off (fixed by the driver?)")]
    StillOn {
        /// The interface.
        interface: String,
        /// The offload, as `ethtool -k` names it.
        feature: &'static str,
    },
}

/// Reads the offloads of `interface` in the calling thread's network
/// namespace.
pub fn offloads(interface: &str) -> Result<Offloads, OffloadError> {
    let socket = control_socket(interface)?;
    let get = |cmd, syscall| -> Result<bool, OffloadError> {
        let mut value = EthtoolValue { cmd, data: 0 };
        sys::ethtool(
            std::os::fd::AsFd::as_fd(&socket),
            interface,
            &mut value,
            syscall,
        )
        .map_err(|e| sys_error(interface, e))?;
        Ok(value.data != 0)
    };
    Ok(Offloads {
        tx_checksum: get(ETHTOOL_GTXCSUM, "ioctl(SIOCETHTOOL, ETHTOOL_GTXCSUM)")?,
        rx_checksum: get(ETHTOOL_GRXCSUM, "ioctl(SIOCETHTOOL, ETHTOOL_GRXCSUM)")?,
        scatter_gather: get(ETHTOOL_GSG, "ioctl(SIOCETHTOOL, ETHTOOL_GSG)")?,
        tso: get(ETHTOOL_GTSO, "ioctl(SIOCETHTOOL, ETHTOOL_GTSO)")?,
        gso: get(ETHTOOL_GGSO, "ioctl(SIOCETHTOOL, ETHTOOL_GGSO)")?,
        gro: get(ETHTOOL_GGRO, "ioctl(SIOCETHTOOL, ETHTOOL_GGRO)")?,
    })
}

/// Turns off TSO, GSO, GRO, scatter-gather and both checksum offloads on
/// `interface` in the calling thread's network namespace (as `ethtool -K
/// IF tso off gso off gro off sg off tx off rx off` would), and returns
/// what is left on. Fails if a harmful offload (see
/// [`Offloads::harmful`]) stays on. Needs CAP_NET_ADMIN.
pub fn disable_offloads(interface: &str) -> Result<Offloads, OffloadError> {
    let socket = control_socket(interface)?;
    // Dependents first: TSO needs SG, SG needs TX checksums; the kernel
    // would drop them anyway, this order just avoids surprising it.
    let sets = [
        (ETHTOOL_SGRO, "ioctl(SIOCETHTOOL, ETHTOOL_SGRO)"),
        (ETHTOOL_SGSO, "ioctl(SIOCETHTOOL, ETHTOOL_SGSO)"),
        (ETHTOOL_STSO, "ioctl(SIOCETHTOOL, ETHTOOL_STSO)"),
        (ETHTOOL_SSG, "ioctl(SIOCETHTOOL, ETHTOOL_SSG)"),
        (ETHTOOL_STXCSUM, "ioctl(SIOCETHTOOL, ETHTOOL_STXCSUM)"),
        (ETHTOOL_SRXCSUM, "ioctl(SIOCETHTOOL, ETHTOOL_SRXCSUM)"),
    ];
    for (cmd, syscall) in sets {
        let mut value = EthtoolValue { cmd, data: 0 };
        match sys::ethtool(
            std::os::fd::AsFd::as_fd(&socket),
            interface,
            &mut value,
            syscall,
        ) {
            Ok(()) => {}
            // A driver that cannot change a feature: what matters is
            // whether it ends up off, checked below.
            Err(e)
                if matches!(
                    e.source.raw_os_error(),
                    Some(libc::EOPNOTSUPP | libc::EINVAL)
                ) => {}
            Err(e) => return Err(sys_error(interface, e)),
        }
    }
    let left = offloads(interface)?;
    match left.harmful() {
        Some(feature) => Err(OffloadError::StillOn {
            interface: interface.to_owned(),
            feature,
        }),
        None => Ok(left),
    }
}

fn control_socket(interface: &str) -> Result<std::os::fd::OwnedFd, OffloadError> {
    if !sys::valid_ifname(interface) {
        return Err(OffloadError::InvalidName(interface.to_owned()));
    }
    // Any socket works for SIOCETHTOOL; a packet socket with protocol 0
    // receives nothing, so it costs nothing while open.
    sys::packet_socket().map_err(|e| sys_error(interface, e))
}

fn sys_error(interface: &str, e: sys::SysError) -> OffloadError {
    OffloadError::Sys {
        interface: interface.to_owned(),
        syscall: e.syscall,
        source: e.source,
    }
}
