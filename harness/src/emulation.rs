//! How the network between the two sides is made for a run.

use std::fmt;

use clap::ValueEnum;

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

/// The mode to run, or why the requested one cannot run here.
pub fn resolve(choice: EmulationChoice) -> Result<Emulation, String> {
    match choice {
        EmulationChoice::Auto | EmulationChoice::Inproc => Ok(Emulation::Inproc),
        EmulationChoice::PerCall => Ok(Emulation::PerCall),
        EmulationChoice::UserspaceLink if crate::host::is_root() => Ok(Emulation::UserspaceLink),
        EmulationChoice::UserspaceLink => Err(
            "emulation mode `userspace-link` needs root (it creates network namespaces); \
             modes available without root: inproc, per-call"
                .into(),
        ),
        EmulationChoice::KernelNetem => Err(
            "emulation mode `kernel-netem` is not built yet; modes available: inproc, per-call, \
             userspace-link (as root)"
                .into(),
        ),
    }
}
