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
}

impl Emulation {
    /// The name results record.
    pub fn name(self) -> &'static str {
        match self {
            Emulation::Inproc => "inproc",
            Emulation::PerCall => "per-call",
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
        EmulationChoice::UserspaceLink | EmulationChoice::KernelNetem => Err(format!(
            "emulation mode `{}` is not built yet (it comes with the network-emulation work: \
             namespaces and a packet-level link); modes available now: inproc, per-call",
            choice
                .to_possible_value()
                .map(|v| v.get_name().to_owned())
                .unwrap_or_default()
        )),
    }
}
