//! The NBD implementations end to end: a tiny rtt-sweep-like scenario runs
//! `nbd-direct`, libnbd's `nbdfuse`, `mount-direct` (over two transports) and `mount-managed`
//! across namespaces (as root) or in process, and leaves no namespace and
//! no FUSE mount behind.

mod common;

use std::path::Path;

use common::{
    cells, harness, is_root, namespaces_since, project_namespaces, run, run_dir, write_scenario,
};

const SCENARIO: &str = r#"
name = "mounts"
description = "the NBD family on a small region"
implementations = ["nbd-direct", "nbdfuse", "mount-direct", "mount-managed"]
repetitions = 1
cell_time_budget_s = 60
access_kib = 4
seed = 3
[axes]
rtt_ms = [2]
region_mib = [2]
chunk_kib = [64]
workload = ["sequential"]
transport = ["frpc", "grpc"]
pull_workers = [16]
pull_heuristic = ["linear", "trace"]
"#;

/// Mount points of the project's FUSE file systems still mounted.
fn project_fuse_mounts() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" msb-"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn nbd_implementations_read_the_region_intact_and_record_their_device() {
    let can_mount = Path::new("/dev/nbd0").exists() || Path::new("/dev/fuse").exists();
    if !can_mount {
        eprintln!("skipping: neither /dev/nbd0 nor /dev/fuse exists");
        return;
    }
    let emulation = if is_root() {
        "userspace-link"
    } else {
        "inproc"
    };
    let namespaces_before = project_namespaces();
    let mounts_before = project_fuse_mounts();
    let tmp = tempfile::tempdir().unwrap();
    let scenario = write_scenario(tmp.path(), SCENARIO);
    let out_dir = tmp.path().join("runs");
    let out = run(harness()
        .arg("scenario")
        .arg(&scenario)
        .args(["--emulation", emulation, "--out"])
        .arg(&out_dir));
    assert!(out.status.success());
    let records = cells(&run_dir(&out_dir));
    // nbd-direct and nbdfuse once; mount-direct per transport;
    // mount-managed per transport and heuristic.
    assert_eq!(records.len(), 2 + 2 + 4, "{records:#?}");
    let expected_device = if Path::new("/dev/nbd0").exists() {
        "kernel-nbd"
    } else {
        "fuse"
    };
    for c in &records {
        if c["status"] == "skipped" && !is_root() {
            // Unprivileged hosts without fusermount3 cannot mount.
            assert!(c["reason"].as_str().unwrap().contains("device"), "{c}");
            continue;
        }
        let implementation = c["implementation"].as_str().unwrap();
        if implementation == "nbdfuse" {
            if c["status"] == "skipped" {
                // Only where libnbd's tools are missing (.ci/run installs them).
                assert!(c["reason"].as_str().unwrap().contains("nbdfuse"), "{c}");
                eprintln!("nbdfuse skipped: {}", c["reason"]);
                continue;
            }
            assert_eq!(c["status"], "ok", "{c}");
            assert_eq!(c["metrics"]["integrity"], true, "{c}");
            assert_eq!(c["device"], "nbdfuse", "{c}");
            assert_eq!(c["transport"], "nbd", "{c}");
            continue;
        }
        assert_eq!(c["status"], "ok", "{c}");
        assert_eq!(c["metrics"]["integrity"], true, "{c}");
        assert_eq!(c["device"], expected_device, "{c}");
        let transport = c["transport"].as_str().unwrap();
        if implementation == "nbd-direct" {
            assert_eq!(transport, "nbd", "{c}");
        } else {
            assert_eq!(c["params"]["transport"], transport, "{c}");
        }
        if implementation == "mount-managed" {
            let prepulled = c["metrics"]["prepulled_mib"].as_f64().unwrap();
            assert!((0.0..=2.0).contains(&prepulled), "{c}");
            assert!(
                c["metrics"]["pull_throughput_mib_s"].as_f64().unwrap() > 0.0,
                "{c}"
            );
        }
    }
    let mounted: Vec<String> = project_fuse_mounts()
        .into_iter()
        .filter(|m| !mounts_before.contains(m))
        .collect();
    assert!(mounted.is_empty(), "left mounted: {mounted:?}");
    let left = namespaces_since(&namespaces_before);
    assert!(left.is_empty(), "left behind: {left:?}");
}
