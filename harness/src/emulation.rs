//! How the network between the two sides is made for a run.

use std::fmt;

use clap::ValueEnum;
use results::schema::Capability;

/// `--emulation`, as the user asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EmulationChoice {
    /// The most faithful mode this host supports.
    Auto,
    /// Delay the transport's byte stream in this process (no root needed).
    Inproc,
    /// Sleep one RTT inside every remote call, as the thesis measured.
    PerCall,
    /// Packet-level relay between two network namespaces.
    UserspaceLink,
    /// The kernel's netem qdisc between two network namespaces.
    KernelNetem,
}

impl EmulationChoice {
    /// The name `--emulation` takes.
    pub fn name(self) -> &'static str {
        match self {
            EmulationChoice::Auto => "auto",
            EmulationChoice::Inproc => "inproc",
            EmulationChoice::PerCall => "per-call",
            EmulationChoice::UserspaceLink => "userspace-link",
            EmulationChoice::KernelNetem => "kernel-netem",
        }
    }
}

impl serde::Serialize for EmulationChoice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// A mode this build can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emulation {
    /// Each direction of the transport's byte stream is delayed by RTT/2 in
    /// a delay line; many requests stay in flight.
    Inproc,
    /// The remote sleeps one RTT in every call; the stream itself is not delayed.
    PerCall,
    /// The remote backend runs as a process in the `src` namespace; every
    /// packet to and from `dst` crosses the project's relay, delayed RTT/2
    /// each way.
    UserspaceLink,
    /// As `UserspaceLink`, with the kernel's netem qdisc on a direct veth
    /// pair doing the delaying.
    KernelNetem,
}

impl Emulation {
    /// The name results record.
    pub fn name(self) -> &'static str {
        match self {
            Emulation::Inproc => "inproc",
            Emulation::PerCall => "per-call",
            Emulation::UserspaceLink => "userspace-link",
            Emulation::KernelNetem => "kernel-netem",
        }
    }

    /// What does the delaying, in words, for the manifest.
    pub fn emulator(self) -> &'static str {
        match self {
            Emulation::Inproc => {
                "in-process delay line on the transport's byte stream (RTT/2 each way), \
                 precise timer thread (park then spin)"
            }
            Emulation::PerCall => {
                "a sleep of one RTT inside every remote backend call (the thesis's method); \
                 calls do not overlap their delays with each other's transfer"
            }
            Emulation::UserspaceLink => {
                "packet relay on AF_PACKET sockets in a third network namespace between src and dst \
                 (offloads off), RTT/2 propagation delay per direction from a sleep-then-spin timer"
            }
            Emulation::KernelNetem => {
                "the kernel's netem qdisc on the egress of each end of a direct veth pair between \
                 src and dst, RTT/2 delay per direction"
            }
        }
    }
}

impl Emulation {
    /// How `src` and `dst` are joined in the packet-level modes; `None`
    /// for the in-process ones.
    pub fn layout(self) -> Option<netem::Layout> {
        match self {
            Emulation::Inproc | Emulation::PerCall => None,
            Emulation::UserspaceLink => Some(netem::Layout::Relayed),
            Emulation::KernelNetem => Some(netem::Layout::Direct),
        }
    }
}

impl fmt::Display for Emulation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What `userspace-link` needs, as `harness doctor` names it.
const PACKET_LEVEL_NEEDS: &[&str] = &["root", "network namespaces", "veth"];
/// What `kernel-netem` needs besides those.
const KERNEL_NETEM_NEED: &str = "kernel netem";

/// The mode to run, or why the requested one cannot run here. `auto` takes
/// the most faithful mode `caps` allow: the kernel's netem between
/// namespaces, else the project's relay between them, else the
/// in-process delay line.
pub fn resolve(choice: EmulationChoice, caps: &[Capability]) -> Result<Emulation, String> {
    let has = |need: &str| caps.iter().any(|c| c.name == need && c.present);
    let missing: Vec<&str> = PACKET_LEVEL_NEEDS
        .iter()
        .copied()
        .filter(|need| !has(need))
        .collect();
    let packets = missing.is_empty();
    let kernel = packets && has(KERNEL_NETEM_NEED);
    let available = || {
        let mut modes = vec!["inproc", "per-call"];
        if packets {
            modes.push("userspace-link");
        }
        if kernel {
            modes.push("kernel-netem");
        }
        modes.join(", ")
    };
    match choice {
        EmulationChoice::Auto if kernel => Ok(Emulation::KernelNetem),
        EmulationChoice::Auto if packets => Ok(Emulation::UserspaceLink),
        EmulationChoice::Auto | EmulationChoice::Inproc => Ok(Emulation::Inproc),
        EmulationChoice::PerCall => Ok(Emulation::PerCall),
        EmulationChoice::UserspaceLink if packets => Ok(Emulation::UserspaceLink),
        EmulationChoice::KernelNetem if kernel => Ok(Emulation::KernelNetem),
        EmulationChoice::UserspaceLink | EmulationChoice::KernelNetem => {
            let mut missing = missing;
            if choice == EmulationChoice::KernelNetem && !has(KERNEL_NETEM_NEED) {
                missing.push("the kernel's netem qdisc (module sch_netem)");
            }
            let mode = if choice == EmulationChoice::KernelNetem {
                "kernel-netem"
            } else {
                "userspace-link"
            };
            Err(format!(
                "emulation mode `{mode}` needs {} (see `harness doctor`); modes available here: {}",
                missing.join(", "),
                available()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(present: bool) -> Vec<Capability> {
        PACKET_LEVEL_NEEDS
            .iter()
            .map(|n| Capability {
                name: n.to_string(),
                present,
                detail: String::new(),
                enables: String::new(),
            })
            .collect()
    }

    #[test]
    fn auto_takes_packets_when_it_can_and_the_delay_line_otherwise() {
        let all = caps(true);
        let none = caps(false);
        assert_eq!(
            resolve(EmulationChoice::Auto, &all),
            Ok(Emulation::UserspaceLink)
        );
        assert_eq!(resolve(EmulationChoice::Auto, &none), Ok(Emulation::Inproc));
        assert_eq!(
            resolve(EmulationChoice::Inproc, &all),
            Ok(Emulation::Inproc)
        );
        let err = resolve(EmulationChoice::UserspaceLink, &none).unwrap_err();
        assert!(
            err.contains("root") && err.contains("veth") && err.contains("inproc"),
            "{err}"
        );
        let err = resolve(EmulationChoice::KernelNetem, &all).unwrap_err();
        assert!(
            err.contains("kernel-netem") && err.contains("sch_netem"),
            "{err}"
        );
        assert!(err.contains("userspace-link"), "{err}");
    }

    #[test]
    fn auto_prefers_the_kernels_netem_where_it_works() {
        let mut all = caps(true);
        all.push(Capability {
            name: KERNEL_NETEM_NEED.into(),
            present: true,
            detail: String::new(),
            enables: String::new(),
        });
        assert_eq!(
            resolve(EmulationChoice::Auto, &all),
            Ok(Emulation::KernelNetem)
        );
        assert_eq!(
            resolve(EmulationChoice::UserspaceLink, &all),
            Ok(Emulation::UserspaceLink)
        );
        // netem without root or namespaces is of no use.
        let mut none = caps(false);
        none.push(all.pop().unwrap());
        assert_eq!(resolve(EmulationChoice::Auto, &none), Ok(Emulation::Inproc));
        assert!(resolve(EmulationChoice::KernelNetem, &none).is_err());
    }
}
