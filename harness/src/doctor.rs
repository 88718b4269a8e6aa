//! What this host offers the harness, found by trying, never assumed.
//!
//! Each probe does the smallest real thing the feature is needed for (open
//! the device, create the namespace, add the qdisc) in a throwaway network
//! namespace owned by one short-lived thread, so nothing outlives the probe.

use std::path::Path;
use std::process::{Command, Stdio};

use results::schema::Capability;

fn cap(name: &str, present: bool, detail: impl Into<String>, enables: &str) -> Capability {
    Capability {
        name: name.to_owned(),
        present,
        detail: detail.into(),
        enables: enables.to_owned(),
    }
}

/// Runs every probe. Takes about a tenth of a second (it forks `ip`/`tc`).
pub fn probe_all() -> Vec<Capability> {
    let mut caps = vec![cap(
        "root",
        crate::host::is_root(),
        format!("effective uid {}", nix::unistd::geteuid()),
        "namespaces, links, mounts, and userfaultfd without the user-mode-only restriction",
    )];
    caps.extend(userfaultfd());
    caps.push(fuse());
    caps.extend(network());
    caps.push(kernel_nbd());
    caps
}

fn userfaultfd() -> Vec<Capability> {
    let p = uffd::probe();
    let enables_missing = "the `uffd` implementation (post-copy pull on fault)";
    let mut caps = vec![match &p.error {
        None => cap(
            "userfaultfd",
            true,
            format!(
                "opened via {}",
                p.mode.map_or("?".into(), |m| m.to_string())
            ),
            enables_missing,
        ),
        Some(e) => cap("userfaultfd", false, e.clone(), enables_missing),
    }];
    let has = |f: &str| p.features.iter().any(|x| x == f);
    caps.push(cap(
        "userfaultfd write-protect",
        p.error.is_none() && has("PAGEFAULT_FLAG_WP"),
        format!(
            "features: {}",
            if p.features.is_empty() {
                "none".into()
            } else {
                p.features.join(" ")
            }
        ),
        "`uffd-wp` dirty tracking with write-protect faults",
    ));
    caps.push(cap(
        "async write-protect + PAGEMAP_SCAN",
        // WP_UNPOPULATED too: without it, first writes to untouched pages
        // of a sparse region would go unseen (uffd::wp needs it for async).
        p.error.is_none() && has("WP_ASYNC") && has("WP_UNPOPULATED") && p.pagemap_scan.works(),
        format!(
            "WP_ASYNC {}, WP_UNPOPULATED {}, PAGEMAP_SCAN {}",
            if has("WP_ASYNC") { "yes" } else { "no" },
            if has("WP_UNPOPULATED") { "yes" } else { "no" },
            p.pagemap_scan
        ),
        "`uffd-wp` scanning dirty pages without a fault per page",
    ));
    caps
}

fn fuse() -> Capability {
    let enables = "the `fuse` implementation and FUSE exposure of NBD exports";
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        Ok(_) => cap("FUSE", true, "/dev/fuse opens read-write", enables),
        Err(e) => cap("FUSE", false, format!("/dev/fuse: {e}"), enables),
    }
}

fn kernel_nbd() -> Capability {
    let enables = "attaching NBD exports as /dev/nbd* block devices";
    let dev = Path::new("/dev/nbd0").exists();
    let sys = Path::new("/sys/block/nbd0").exists();
    let module = Path::new("/sys/module/nbd").exists();
    if dev && sys {
        cap("kernel NBD client", true, "/dev/nbd0 present", enables)
    } else {
        let detail = format!(
            "/dev/nbd0 {}, nbd module {} (exports are exposed through FUSE instead)",
            if dev { "present" } else { "absent" },
            if module { "loaded" } else { "not loaded" }
        );
        cap("kernel NBD client", false, detail, enables)
    }
}

/// Runs a command, returns Ok or the tail of its stderr.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    match Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
    {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_owned()),
        Err(e) => Err(format!("cannot run `{program}`: {e}")),
    }
}

const NS_ENABLES: &str = "two network stacks per run (`src`, `dst`) joined by an emulated link";

fn without_namespaces(why: String) -> Vec<Capability> {
    let none = |name: &str, enables: &str| cap(name, false, "needs a network namespace", enables);
    vec![
        cap("network namespaces", false, why, NS_ENABLES),
        none("veth", "joining the namespaces"),
        none("TUN", "the user-space link emulator"),
        none("kernel netem", "`kernel-netem` link emulation"),
        none("tbf qdisc", "kernel rate shaping"),
        none("htb qdisc", "kernel rate shaping with classes"),
    ]
}

fn network() -> Vec<Capability> {
    // A network namespace belongs to the thread that unshares it; children it
    // forks start inside it, and it is freed when the thread exits.
    let probe = std::thread::spawn(|| {
        if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
            return Err(format!("unshare(CLONE_NEWNET): {e}"));
        }
        let veth = run(
            "ip",
            &[
                "link", "add", "mbprobe0", "type", "veth", "peer", "name", "mbprobe1",
            ],
        );
        let tun = run("ip", &["tuntap", "add", "dev", "mbprobe2", "mode", "tun"]);
        let up = run("ip", &["link", "set", "lo", "up"]);
        let qdisc = |kind: &[&str]| {
            let mut args = vec!["qdisc", "replace", "dev", "lo", "root"];
            args.extend_from_slice(kind);
            run("tc", &args)
        };
        let netem = up.clone().and_then(|_| qdisc(&["netem", "delay", "1ms"]));
        let tbf = up.clone().and_then(|_| {
            qdisc(&[
                "tbf", "rate", "1mbit", "burst", "32kbit", "latency", "400ms",
            ])
        });
        let htb = up.and_then(|_| qdisc(&["htb", "default", "1"]));
        Ok([veth, tun, netem, tbf, htb])
    })
    .join();
    let results = match probe {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return without_namespaces(e),
        Err(_) => return without_namespaces("the probe thread panicked".into()),
    };
    let [veth, tun, netem, tbf, htb] = results;
    let row = |name: &str, r: Result<(), String>, ok: &str, enables: &str| match r {
        Ok(()) => cap(name, true, ok, enables),
        Err(e) => cap(name, false, e, enables),
    };
    vec![
        cap(
            "network namespaces",
            true,
            "unshare(CLONE_NEWNET) works",
            NS_ENABLES,
        ),
        row("veth", veth, "veth pair created", "joining the namespaces"),
        row(
            "TUN",
            tun,
            "tun device created",
            "the user-space link emulator",
        ),
        row(
            "kernel netem",
            netem,
            "netem qdisc added",
            "`kernel-netem` link emulation",
        ),
        row("tbf qdisc", tbf, "tbf qdisc added", "kernel rate shaping"),
        row(
            "htb qdisc",
            htb,
            "htb qdisc added",
            "kernel rate shaping with classes",
        ),
    ]
}

/// The capabilities as a table for the terminal.
pub fn table(caps: &[Capability]) -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header(["capability", "present", "detail", "enables"]);
    for c in caps {
        t.add_row([
            c.name.as_str(),
            if c.present { "yes" } else { "no" },
            c.detail.as_str(),
            c.enables.as_str(),
        ]);
    }
    t
}
