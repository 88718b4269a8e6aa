//! Finding and removing what runs left behind (`harness cleanup`).
//!
//! Only names starting with the given prefix are touched: namespaces in
//! `/var/run/netns` and veth interfaces in the caller's (root) namespace.
//! Our own topologies never put a veth in the root namespace; a stray one
//! there comes from other tooling using the prefix, and is removed too.

use std::fmt;

use super::{ip, require_root, validate_prefix, TopologyError};

/// What carries the prefix right now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leftovers {
    /// Named network namespaces, sorted.
    pub namespaces: Vec<String>,
    /// veth interfaces in the caller's namespace.
    pub links: Vec<String>,
}

impl Leftovers {
    /// True when nothing carries the prefix.
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty() && self.links.is_empty()
    }
}

/// What [`cleanup`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Namespaces deleted.
    pub namespaces: Vec<String>,
    /// veth interfaces deleted from the caller's namespace (both ends of a
    /// pair are listed when both had the prefix).
    pub links: Vec<String>,
}

impl CleanupReport {
    /// True when there was nothing to remove.
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty() && self.links.is_empty()
    }
}

impl fmt::Display for CleanupReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} namespace(s) [{}], {} link(s) [{}]",
            self.namespaces.len(),
            self.namespaces.join(", "),
            self.links.len(),
            self.links.join(", ")
        )
    }
}

/// Lists the namespaces and root-namespace veths whose names start with
/// `prefix` (normally [`PREFIX`](super::PREFIX)). Needs no root.
pub fn leftovers(prefix: &str) -> Result<Leftovers, TopologyError> {
    validate_prefix(prefix)?;
    let mine = |names: Vec<String>| -> Vec<String> {
        names
            .into_iter()
            .filter(|n| n.starts_with(prefix))
            .collect()
    };
    Ok(Leftovers {
        namespaces: mine(ip::list_namespaces()?),
        links: mine(ip::list_veths()?),
    })
}

/// Removes every namespace and root-namespace veth whose name starts with
/// `prefix`, and nothing else. Tries every item even if some fail, then
/// returns [`TopologyError::CleanupIncomplete`] naming what is left.
///
/// This includes the namespaces of runs still in progress: run it when no
/// run is active.
pub fn cleanup(prefix: &str) -> Result<CleanupReport, TopologyError> {
    require_root()?;
    let found = leftovers(prefix)?;
    let mut report = CleanupReport::default();
    let mut failed = Vec::new();

    // Namespaces first: deleting one also deletes a root veth whose peer
    // was inside, which the link pass then finds gone.
    for ns in found.namespaces {
        match ip::delete_namespace(&ns) {
            Ok(true) => report.namespaces.push(ns),
            Ok(false) => tracing::debug!(namespace = %ns, "already gone"),
            Err(err) => failed.push(format!("namespace {ns}: {err}")),
        }
    }
    for link in found.links {
        match ip::ip(&["link", "delete", "dev", &link]) {
            Ok(_) => report.links.push(link),
            // Deleting one end of a veth deletes its peer: listed, then
            // gone because of us.
            Err(_) if !ip::link_exists(&link) => report.links.push(link),
            Err(err) => failed.push(format!("link {link}: {err}")),
        }
    }

    if failed.is_empty() {
        if !report.is_empty() {
            tracing::info!(%report, prefix, "cleaned up");
        }
        Ok(report)
    } else {
        Err(TopologyError::CleanupIncomplete {
            removed: report,
            failed,
        })
    }
}
