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
}

impl Emulation {
    /// The name results record.
    pub fn name(self) -> &'static str {
        match self {
            Emulation::Inproc => "inproc",
            Emulation::PerCall => "per-call",
            Emulation::UserspaceLink => "userspace-link",
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

/// The mode to run, or why the requested one cannot run here. `auto` takes
/// the most faithful mode `caps` allow: packets between namespaces when it
/// can, else the in-process delay line.
pub fn resolve(choice: EmulationChoice, caps: &[Capability]) -> Result<Emulation, String> {
    let missing: Vec<&str> = PACKET_LEVEL_NEEDS
        .iter()
        .copied()
        .filter(|need| !caps.iter().any(|c| c.name == *need && c.present))
        .collect();
    match choice {
        EmulationChoice::Auto if missing.is_empty() => Ok(Emulation::UserspaceLink),
        EmulationChoice::Auto | EmulationChoice::Inproc => Ok(Emulation::Inproc),
        EmulationChoice::PerCall => Ok(Emulation::PerCall),
        EmulationChoice::UserspaceLink if missing.is_empty() => Ok(Emulation::UserspaceLink),
        EmulationChoice::UserspaceLink => Err(format!(
            "emulation mode `userspace-link` needs {} (see `harness doctor`); \
             modes available here: inproc, per-call",
            missing.join(", ")
        )),
        EmulationChoice::KernelNetem => Err(
            "emulation mode `kernel-netem` is not built yet; modes available: inproc, per-call, \
             userspace-link (as root)"
                .into(),
        ),
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
        assert!(err.contains("kernel-netem"), "{err}");
    }
}
