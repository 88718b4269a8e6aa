//! Network namespaces for one run: which namespaces exist, how they are
//! wired, which addresses they have, and the guard that removes them.
//!
//! # Layouts
//!
//! ```text
//! Direct   (kernel-netem: qdiscs go on veth-src / veth-dst)
//!
//!   [msb-<run>-src]  veth-src <====veth====> veth-dst  [msb-<run>-dst]
//!    10.203.X.1/24                                      10.203.X.2/24
//!
//! Relayed  (userspace-link: a relay in the link namespace moves L2 frames
//!           between link-src and link-dst with AF_PACKET sockets)
//!
//!   [msb-<run>-src]                 [msb-<run>-link]                 [msb-<run>-dst]
//!   veth-src <==veth==> link-src   (not bridged)   link-dst <==veth==> veth-dst
//!   10.203.X.1/24                                                  10.203.X.2/24
//! ```
//!
//! In `Relayed`, `src` and `dst` sit in one /24 because the relay forwards
//! Ethernet frames: to them the link is one L2 segment (ARP included). The
//! kernel does not join `link-src` and `link-dst`, so without a relay the
//! two cannot reach each other. On the four relayed interfaces TSO, GSO,
//! GRO and TX/RX checksum offload are off (the relay must see wire-sized
//! frames with real checksums), the link-side ends are promiscuous, and
//! every interface has MTU [`MTU`].
//!
//! In every namespace loopback is up and IPv6 is off, so the only traffic
//! crossing the link is what the run sends (no router solicitations, DAD
//! or MLD reports in the measurements). Addresses exist only inside the
//! namespaces; the root namespace is not touched.
//!
//! # Names
//!
//! Namespaces are `<prefix><run id>-src|dst|link`, prefix [`PREFIX`]
//! (`msb-`), so parallel runs never collide and [`cleanup`] finds what a
//! killed run left behind. Interface names ([`SRC_IF`], [`DST_IF`],
//! [`LINK_SRC_IF`], [`LINK_DST_IF`]) are fixed: they live inside the run's
//! own namespaces, where they cannot collide. Each run gets its own third
//! octet in `10.203.0.0/16`, chosen under a lock file
//! ([`LOCK_PATH`]) after reading the addresses of every existing namespace,
//! so runs in parallel processes differ too.
//!
//! # Ownership
//!
//! A [`Topology`] owns the namespaces it created and deletes them on drop
//! (deleting a namespace deletes its veths); a failure half-way through
//! [`Topology::create`] deletes what was already made. Drop failures are
//! logged with `tracing`; [`Topology::destroy`] returns them instead.
//!
//! # How it talks to the kernel
//!
//! Namespaces, links and addresses are made by running `ip` (iproute2):
//! every step is one readable command whose exit status and stderr go into
//! the error, with no netlink crate and async runtime to depend on. Offloads
//! are switched with the legacy `SIOCETHTOOL` ioctls (see [`offload_state`])
//! because the `ethtool` binary is often missing (it is on the dev VM).
//! Entering a namespace is `setns(2)` on a thread ([`NetNs`]).
//!
//! # Limitations
//!
//! - A namespace lives until its last user is gone: a socket opened in it
//!   or a [`NetNs`] still held keeps it (and its veths) alive after its name
//!   is deleted. Names are removed at once; the kernel frees the rest when
//!   those users close.
//! - [`cleanup`] removes every name with the prefix, including those of a
//!   run still in progress in another process: run it when no run is active.
//! - `Direct` leaves offloads at their defaults: kernel netem handles GSO
//!   packets itself.

mod cleanup;
mod ip;
mod netns;
mod offload;

use std::fmt;
use std::fs::{File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub use cleanup::{cleanup, leftovers, CleanupReport, Leftovers};
pub use netns::{run_in, spawn_in, NetNs, NetNsError};
pub use offload::{offload_state, OffloadState};

/// Project prefix of every namespace name (`msb-<run id>-src`).
pub const PREFIX: &str = "msb-";
/// First two octets of every run's /24.
pub const SUBNET_BASE: [u8; 2] = [10, 203];
/// Prefix length of a run's subnet.
pub const PREFIX_LEN: u8 = 24;
/// MTU of every veth end.
pub const MTU: u32 = 1500;
/// Interface of the `src` namespace (towards `dst` or the link namespace).
pub const SRC_IF: &str = "veth-src";
/// Interface of the `dst` namespace.
pub const DST_IF: &str = "veth-dst";
/// `Relayed` only: the link namespace's end of the veth to `src`.
pub const LINK_SRC_IF: &str = "link-src";
/// `Relayed` only: the link namespace's end of the veth to `dst`.
pub const LINK_DST_IF: &str = "link-dst";
/// Lock file held while a topology picks its subnet and is built, so that
/// parallel creations (threads or processes) see each other's subnets. It
/// is never deleted: removing a lock file others may hold breaks `flock`.
pub const LOCK_PATH: &str = "/run/msb-netem-topology.lock";

/// Longest run id accepted; namespace names stay short in `ip` output.
pub const MAX_RUN_ID_LEN: usize = 32;

/// How `src` and `dst` are joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// One veth pair from `src` to `dst`; for `kernel-netem`.
    Direct,
    /// `src` and `dst` each joined by a veth to a third, `link`, namespace
    /// that does not forward between them; for `userspace-link`.
    Relayed,
}

impl Layout {
    /// Lower-case name, as recorded in results.
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::Direct => "direct",
            Layout::Relayed => "relayed",
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a topology could not be built, cleaned up or inspected.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// Namespaces and veths need root.
    #[error(
        "network namespaces need root (effective uid 0), running as effective uid {euid}; \
         rerun with sudo or use the `inproc` link mode"
    )]
    NeedsRoot {
        /// The effective uid we run as.
        euid: u32,
    },
    /// The run id would make an unusable or ambiguous name.
    #[error("invalid run id {run_id:?}: {reason} (allowed: 1 to {MAX_RUN_ID_LEN} of a-z, 0-9, _)")]
    InvalidRunId {
        /// The rejected id.
        run_id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The name prefix is unsafe (too short would let cleanup match
    /// unrelated namespaces) or unusable.
    #[error(
        "invalid name prefix {prefix:?}: {reason} (allowed: 3 to 12 of a-z, 0-9, -, _, \
         starting with a letter)"
    )]
    InvalidPrefix {
        /// The rejected prefix.
        prefix: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A namespace this run would create already exists; it is left alone.
    #[error(
        "network namespace {name} already exists (a run with the same id is active, or a \
         killed run left it: `harness cleanup` removes leftovers)"
    )]
    NamespaceExists {
        /// The existing namespace.
        name: String,
    },
    /// A command could not be started at all (e.g. `ip` not installed).
    #[error("could not run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why it did not start.
        source: io::Error,
    },
    /// A command ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// What it wrote to stderr, trimmed.
        stderr: String,
    },
    /// Every third octet of `10.203.0.0/16` is taken.
    #[error(
        "no free /24 left in {}.{}.0.0/16: all 256 are used by existing namespaces \
         (`harness cleanup` removes leftovers)",
        SUBNET_BASE[0],
        SUBNET_BASE[1]
    )]
    SubnetsExhausted,
    /// A file operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What we were doing.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Opening or entering a namespace failed.
    #[error(transparent)]
    NetNs(#[from] NetNsError),
    /// An offload could not be read or switched off, or stayed on.
    #[error("offloads of {iface} in namespace {ns}: {source}")]
    Offload {
        /// Namespace of the interface.
        ns: String,
        /// The interface.
        iface: String,
        /// What the ioctl said.
        source: crate::link::OffloadError,
    },
    /// An interface name longer than the kernel allows (15 bytes).
    #[error("interface name {name:?} is {len} bytes; Linux allows at most 15")]
    InterfaceName {
        /// The name.
        name: String,
        /// Its length.
        len: usize,
    },
    /// Cleanup removed some things but not all.
    #[error(
        "cleanup removed {removed} but could not remove: {}",
        failed.join("; ")
    )]
    CleanupIncomplete {
        /// What was removed.
        removed: CleanupReport,
        /// One message per item left behind.
        failed: Vec<String>,
    },
}

/// The namespaces of one run, removed on drop (see the module docs).
#[derive(Debug)]
pub struct Topology {
    run_id: String,
    prefix: String,
    layout: Layout,
    third_octet: u8,
    src_ns: String,
    dst_ns: String,
    link_ns: Option<String>,
    /// Namespaces this value created and must delete, in creation order.
    /// Only names `ip netns add` succeeded for are here, so a name another
    /// run owns is never deleted.
    owned: Vec<String>,
}

/// A step of [`Topology::create`], reported to the test hook so unit tests
/// can fail creation at any point and check the rollback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Namespaces,
    Veths,
    Addresses,
    Offloads,
}

impl Topology {
    /// Builds the namespaces of run `run_id` with the project [`PREFIX`].
    ///
    /// Fails with [`TopologyError::NeedsRoot`] before touching anything if
    /// not root, and with [`TopologyError::NamespaceExists`] if a name is
    /// taken. Any later failure deletes what was created.
    pub fn create(run_id: &str, layout: Layout) -> Result<Self, TopologyError> {
        Self::create_with_prefix(PREFIX, run_id, layout)
    }

    /// [`Topology::create`] with another name prefix, so that a test or a
    /// second harness can [`cleanup`] its own namespaces without touching
    /// the project's.
    pub fn create_with_prefix(
        prefix: &str,
        run_id: &str,
        layout: Layout,
    ) -> Result<Self, TopologyError> {
        Self::create_hooked(prefix, run_id, layout, &mut |_| Ok(()))
    }

    fn create_hooked(
        prefix: &str,
        run_id: &str,
        layout: Layout,
        after_step: &mut dyn FnMut(Step) -> Result<(), TopologyError>,
    ) -> Result<Self, TopologyError> {
        require_root()?;
        validate_prefix(prefix)?;
        validate_run_id(run_id)?;

        let name = |role: &str| format!("{prefix}{run_id}-{role}");
        let src_ns = name("src");
        let dst_ns = name("dst");
        let link_ns = (layout == Layout::Relayed).then(|| name("link"));

        let _lock = CreateLock::acquire()?;
        for ns in [Some(&src_ns), Some(&dst_ns), link_ns.as_ref()]
            .into_iter()
            .flatten()
        {
            if ip::namespace_exists(ns) {
                return Err(TopologyError::NamespaceExists { name: ns.clone() });
            }
        }
        let third_octet = pick_third_octet(run_id)?;

        let mut topology = Topology {
            run_id: run_id.to_owned(),
            prefix: prefix.to_owned(),
            layout,
            third_octet,
            src_ns,
            dst_ns,
            link_ns,
            owned: Vec::new(),
        };
        // An early return from here drops `topology`, whose Drop deletes
        // the namespaces already in `owned`: that is the rollback.
        topology.build(after_step)?;
        tracing::info!(
            run_id,
            layout = %layout,
            subnet = %topology.subnet(),
            "created network topology"
        );
        Ok(topology)
    }

    fn build(
        &mut self,
        after_step: &mut dyn FnMut(Step) -> Result<(), TopologyError>,
    ) -> Result<(), TopologyError> {
        for ns in self.namespaces() {
            ip::ip(&["netns", "add", &ns])?;
            self.owned.push(ns.clone());
            ip::ip(&["-n", &ns, "link", "set", "dev", "lo", "up"])?;
            disable_ipv6(&NetNs::open(&ns)?)?;
        }
        after_step(Step::Namespaces)?;

        let mtu = MTU.to_string();
        let veth = |a_ns: &str, a_if: &str, b_ns: &str, b_if: &str| {
            ip::ip(&[
                "link", "add", a_if, "netns", a_ns, "mtu", &mtu, "type", "veth", "peer", "name",
                b_if, "netns", b_ns, "mtu", &mtu,
            ])
        };
        match &self.link_ns {
            None => veth(&self.src_ns, SRC_IF, &self.dst_ns, DST_IF)?,
            Some(link) => {
                veth(&self.src_ns, SRC_IF, link, LINK_SRC_IF)?;
                veth(&self.dst_ns, DST_IF, link, LINK_DST_IF)?
            }
        };
        after_step(Step::Veths)?;

        let prefix_len = PREFIX_LEN.to_string();
        for (ns, iface, addr) in [
            (&self.src_ns, SRC_IF, self.src_addr()),
            (&self.dst_ns, DST_IF, self.dst_addr()),
        ] {
            let cidr = format!("{addr}/{prefix_len}");
            ip::ip(&["-n", ns, "addr", "add", &cidr, "dev", iface])?;
            ip::ip(&["-n", ns, "link", "set", "dev", iface, "up"])?;
        }
        if let Some(link) = &self.link_ns {
            for iface in [LINK_SRC_IF, LINK_DST_IF] {
                ip::ip(&[
                    "-n", link, "link", "set", "dev", iface, "promisc", "on", "up",
                ])?;
            }
        }
        after_step(Step::Addresses)?;

        if let Some(link) = &self.link_ns {
            for (ns, iface) in [
                (&self.src_ns, SRC_IF),
                (&self.dst_ns, DST_IF),
                (link, LINK_SRC_IF),
                (link, LINK_DST_IF),
            ] {
                offload::disable_offloads(&NetNs::open(ns)?, iface)?;
            }
        }
        after_step(Step::Offloads)?;
        Ok(())
    }

    /// Deletes the namespaces now, returning the first failure (the others
    /// are logged). Dropping does the same but can only log.
    pub fn destroy(mut self) -> Result<(), TopologyError> {
        let mut failures = self.teardown().into_iter();
        let first = failures.next();
        for (ns, err) in failures {
            tracing::error!(namespace = %ns, error = %err, "could not delete network namespace");
        }
        match first {
            Some((_, err)) => Err(err),
            None => Ok(()),
        }
    }

    /// Deletes the owned namespaces, newest first, and returns what failed.
    fn teardown(&mut self) -> Vec<(String, TopologyError)> {
        let mut failures = Vec::new();
        while let Some(ns) = self.owned.pop() {
            match ip::delete_namespace(&ns) {
                Ok(true) => tracing::debug!(namespace = %ns, "deleted network namespace"),
                Ok(false) => tracing::warn!(
                    namespace = %ns,
                    "network namespace was already gone (removed by `cleanup`?)"
                ),
                Err(err) => failures.push((ns, err)),
            }
        }
        failures
    }

    /// A run id unlikely to collide with any other run, live or leftover:
    /// process id, a per-process counter and the clock.
    pub fn new_run_id() -> String {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let clock = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
            .unwrap_or(0);
        format!("{}_{n}_{clock:x}", std::process::id())
    }

    /// The run id the names carry.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The name prefix (normally [`PREFIX`]).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// How `src` and `dst` are joined.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Name of the source namespace (`<prefix><run id>-src`).
    pub fn src_ns(&self) -> &str {
        &self.src_ns
    }

    /// Name of the destination namespace.
    pub fn dst_ns(&self) -> &str {
        &self.dst_ns
    }

    /// Name of the link namespace; `None` in `Direct`.
    pub fn link_ns(&self) -> Option<&str> {
        self.link_ns.as_deref()
    }

    /// All namespace names of this run, `src`, `dst`, then `link`.
    pub fn namespaces(&self) -> Vec<String> {
        let mut names = vec![self.src_ns.clone(), self.dst_ns.clone()];
        names.extend(self.link_ns.clone());
        names
    }

    /// Interface of `src` (always [`SRC_IF`]).
    pub fn src_if(&self) -> &'static str {
        SRC_IF
    }

    /// Interface of `dst` (always [`DST_IF`]).
    pub fn dst_if(&self) -> &'static str {
        DST_IF
    }

    /// `Relayed`: the link namespace's interface facing `src`.
    pub fn link_src_if(&self) -> Option<&'static str> {
        self.link_ns.as_ref().map(|_| LINK_SRC_IF)
    }

    /// `Relayed`: the link namespace's interface facing `dst`.
    pub fn link_dst_if(&self) -> Option<&'static str> {
        self.link_ns.as_ref().map(|_| LINK_DST_IF)
    }

    /// Network address of the run's /24 (`10.203.X.0`).
    pub fn subnet(&self) -> Ipv4Addr {
        self.host(0)
    }

    /// Address of `src` (`10.203.X.1`).
    pub fn src_addr(&self) -> Ipv4Addr {
        self.host(1)
    }

    /// Address of `dst` (`10.203.X.2`).
    pub fn dst_addr(&self) -> Ipv4Addr {
        self.host(2)
    }

    fn host(&self, last: u8) -> Ipv4Addr {
        Ipv4Addr::new(SUBNET_BASE[0], SUBNET_BASE[1], self.third_octet, last)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for (ns, err) in self.teardown() {
            tracing::error!(
                namespace = %ns,
                error = %err,
                "could not delete network namespace; `harness cleanup` removes it"
            );
        }
    }
}

/// Fails with [`TopologyError::NeedsRoot`] unless the effective uid is 0.
pub(crate) fn require_root() -> Result<(), TopologyError> {
    // SAFETY: geteuid(2) takes no arguments, cannot fail and touches no memory.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        Ok(())
    } else {
        Err(TopologyError::NeedsRoot { euid })
    }
}

fn validate_run_id(run_id: &str) -> Result<(), TopologyError> {
    let reason = if run_id.is_empty() {
        Some("empty")
    } else if run_id.len() > MAX_RUN_ID_LEN {
        Some("too long")
    } else if !run_id
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        // No '-': it separates the run id from the role, so one run's
        // names can never be a prefix-match of another's.
        Some("contains a character other than a-z, 0-9, _")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(TopologyError::InvalidRunId {
            run_id: run_id.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

pub(crate) fn validate_prefix(prefix: &str) -> Result<(), TopologyError> {
    let reason = if prefix.len() < 3 {
        Some("shorter than 3 characters, which could match unrelated namespaces")
    } else if prefix.len() > 12 {
        Some("longer than 12 characters")
    } else if !prefix.as_bytes()[0].is_ascii_lowercase() {
        Some("does not start with a lower-case letter")
    } else if !prefix
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        Some("contains a character other than a-z, 0-9, -, _")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(TopologyError::InvalidPrefix {
            prefix: prefix.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Turns IPv6 off in `ns` for existing and future interfaces. A kernel
/// without IPv6 has no such files, which is just as good.
fn disable_ipv6(ns: &NetNs) -> Result<(), TopologyError> {
    ns.run(|| {
        // /proc/sys/net follows the network namespace of the calling
        // thread, which `run` has just entered.
        for conf in ["default", "all"] {
            let path = PathBuf::from(format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6"));
            match std::fs::write(&path, "1") {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(TopologyError::Io {
                        what: "disabling IPv6 via",
                        path,
                        source,
                    })
                }
            }
        }
        Ok(())
    })?
}

/// Picks a free third octet: a hash of the run id, then the next unused
/// one. "Used" means some existing namespace has an address in it; the
/// caller holds [`CreateLock`], so no other creation is half-way.
fn pick_third_octet(run_id: &str) -> Result<u8, TopologyError> {
    let mut used = [false; 256];
    for ns in ip::list_namespaces()? {
        match ip::ip(&["-n", &ns, "-4", "-o", "addr", "show"]) {
            Ok(out) => {
                for octet in ip::parse_third_octets(&out, SUBNET_BASE) {
                    used[usize::from(octet)] = true;
                }
            }
            // A stale name whose namespace is gone holds no address; it
            // cannot make our choice wrong.
            Err(err) => tracing::debug!(namespace = %ns, error = %err, "skipping namespace"),
        }
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    run_id.hash(&mut hasher);
    let start = hasher.finish() as u8;
    (0..=255u8)
        .map(|i| start.wrapping_add(i))
        .find(|&octet| !used[usize::from(octet)])
        .ok_or(TopologyError::SubnetsExhausted)
}

/// An exclusive `flock` on [`LOCK_PATH`], released when dropped (or when
/// the process dies, so a killed run never leaves it held).
struct CreateLock {
    _file: File,
}

impl CreateLock {
    fn acquire() -> Result<Self, TopologyError> {
        let path = PathBuf::from(LOCK_PATH);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| TopologyError::Io {
                what: "opening lock file",
                path: path.clone(),
                source,
            })?;
        loop {
            // SAFETY: flock(2) takes only the descriptor, which `file` keeps
            // open for the duration of the call.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(Self { _file: file });
            }
            let source = io::Error::last_os_error();
            if source.kind() != io::ErrorKind::Interrupted {
                return Err(TopologyError::Io {
                    what: "locking",
                    path,
                    source,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_validated() {
        assert!(validate_run_id("abc_123").is_ok());
        for bad in [
            "",
            "a-b",
            "A",
            "a/b",
            "a b",
            &"x".repeat(MAX_RUN_ID_LEN + 1),
        ] {
            let err = validate_run_id(bad).unwrap_err();
            assert!(
                matches!(err, TopologyError::InvalidRunId { ref run_id, .. } if run_id == bad),
                "{bad:?}: {err}"
            );
        }
        assert!(validate_run_id(&Topology::new_run_id()).is_ok());
        assert_ne!(Topology::new_run_id(), Topology::new_run_id());
    }

    #[test]
    fn prefixes_are_validated() {
        assert!(validate_prefix(PREFIX).is_ok());
        assert!(validate_prefix("msbt_1-").is_ok());
        for bad in [
            "",
            "ms",
            "-msb",
            "1msb",
            "msb/",
            "MSB-",
            "a-very-long-prefix",
        ] {
            assert!(
                matches!(
                    validate_prefix(bad),
                    Err(TopologyError::InvalidPrefix { .. })
                ),
                "{bad:?} accepted"
            );
        }
    }

    /// Fails creation after each step in turn and checks that nothing is
    /// left behind.
    #[test]
    fn failed_creation_is_rolled_back() {
        if require_root().is_err() {
            eprintln!("skipping failed_creation_is_rolled_back: needs root");
            return;
        }
        for layout in [Layout::Direct, Layout::Relayed] {
            for fail_at in [
                Step::Namespaces,
                Step::Veths,
                Step::Addresses,
                Step::Offloads,
            ] {
                let run_id = Topology::new_run_id();
                let names: Vec<String> = ["src", "dst", "link"]
                    .iter()
                    .take(if layout == Layout::Relayed { 3 } else { 2 })
                    .map(|role| format!("msbu-{run_id}-{role}"))
                    .collect();
                let mut existed_at_failure = false;
                let mut hook = |step: Step| {
                    if step == fail_at {
                        // Proves there was something to roll back.
                        existed_at_failure = names.iter().all(|n| ip::namespace_exists(n));
                        Err(TopologyError::SubnetsExhausted)
                    } else {
                        Ok(())
                    }
                };
                let err = Topology::create_hooked("msbu-", &run_id, layout, &mut hook).unwrap_err();
                assert!(matches!(err, TopologyError::SubnetsExhausted), "{err}");
                assert!(
                    existed_at_failure,
                    "{layout} at {fail_at:?}: namespaces missing"
                );
                for name in &names {
                    assert!(
                        !ip::namespace_exists(name),
                        "{layout} failing at {fail_at:?} left {name}"
                    );
                }
            }
        }
    }
}
