//! Running iproute2's `ip` and reading what it and `/var/run/netns` report.

use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use super::TopologyError;

/// Where `ip netns add` puts the name of each namespace (a bind mount of
/// its nsfs inode).
pub(crate) const NETNS_DIR: &str = "/var/run/netns";

/// The `ip` binary: root's PATH usually has `/usr/sbin`, but a test runner's
/// environment may not, so look in the usual places first.
fn program() -> &'static str {
    static PROGRAM: OnceLock<&'static str> = OnceLock::new();
    PROGRAM.get_or_init(|| {
        ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("ip")
    })
}

/// Runs `ip ARGS...` and returns its stdout, or the command line, exit
/// status and stderr if it fails.
pub(crate) fn ip(args: &[&str]) -> Result<String, TopologyError> {
    let command = format!("ip {}", args.join(" "));
    tracing::debug!(%command, "running");
    let out = Command::new(program())
        .args(args)
        // Stable, untranslated messages in errors.
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| TopologyError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(TopologyError::Command {
            command,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Whether a namespace of that name exists.
pub(crate) fn namespace_exists(name: &str) -> bool {
    netns_path(name).symlink_metadata().is_ok()
}

/// Every named namespace, sorted. No directory means none yet.
pub(crate) fn list_namespaces() -> Result<Vec<String>, TopologyError> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(TopologyError::Io {
                what: "listing",
                path: PathBuf::from(NETNS_DIR),
                source,
            })
        }
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| TopologyError::Io {
            what: "listing",
            path: PathBuf::from(NETNS_DIR),
            source,
        })?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// Deletes a namespace by name; `Ok(false)` if it was already gone.
pub(crate) fn delete_namespace(name: &str) -> Result<bool, TopologyError> {
    if !namespace_exists(name) {
        return Ok(false);
    }
    match ip(&["netns", "delete", name]) {
        Ok(_) => Ok(true),
        // Someone else (a concurrent cleanup) removed it first.
        Err(_) if !namespace_exists(name) => Ok(false),
        Err(err) => Err(err),
    }
}

/// Names of the veth interfaces of the caller's namespace.
pub(crate) fn list_veths() -> Result<Vec<String>, TopologyError> {
    Ok(parse_link_names(&ip(&[
        "-o", "link", "show", "type", "veth",
    ])?))
}

/// Whether the caller's namespace has an interface of that name.
pub(crate) fn link_exists(name: &str) -> bool {
    ip(&["link", "show", "dev", name]).is_ok()
}

/// Interface names from `ip -o link show` lines such as
/// `5: veth0@if4: <BROADCAST,...> mtu 1500 ...` (the part after `@` names
/// the peer and is dropped).
pub(crate) fn parse_link_names(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ": ");
            let _index = fields.next()?;
            let name = fields.next()?;
            let name = name.split('@').next().unwrap_or(name).trim();
            (!name.is_empty()).then(|| name.to_owned())
        })
        .collect()
}

/// Third octets of the IPv4 addresses inside `base.0.0/16` in
/// `ip -4 -o addr show` output (`2: eth0    inet 10.203.7.1/24 brd ...`).
pub(crate) fn parse_third_octets(out: &str, base: [u8; 2]) -> Vec<u8> {
    let mut octets = Vec::new();
    for line in out.lines() {
        let mut words = line.split_whitespace();
        while let Some(word) = words.next() {
            if word != "inet" {
                continue;
            }
            let Some(cidr) = words.next() else { break };
            let addr = cidr.split('/').next().unwrap_or(cidr);
            if let Ok(addr) = addr.parse::<Ipv4Addr>() {
                let [a, b, c, _] = addr.octets();
                if [a, b] == base {
                    octets.push(c);
                }
            }
        }
    }
    octets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_are_parsed_without_peer() {
        let out = "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN\\    link/loopback 00:00:00:00:00:00\n\
                   7: msb-x@msb-y: <BROADCAST,MULTICAST,M-DOWN> mtu 1500 qdisc noop state DOWN\n\
                   8: veth-src@if2: <BROADCAST,MULTICAST> mtu 1500 link-netns zz-b\n\
                   garbage\n";
        assert_eq!(parse_link_names(out), ["lo", "msb-x", "veth-src"]);
        assert!(parse_link_names("").is_empty());
    }

    #[test]
    fn third_octets_only_from_the_base() {
        let out = "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever\n\
                   2: veth-src    inet 10.203.17.1/24 scope global veth-src\n\
                   3: eth0    inet 10.204.3.1/24 scope global eth0\n\
                   4: eth1    inet 10.203.255.2/24 scope global eth1\n\
                   5: eth2    inet\n";
        assert_eq!(parse_third_octets(out, [10, 203]), [17, 255]);
        assert!(parse_third_octets(out, [192, 168]).is_empty());
    }
}
