//! Chunking on the client vs on the server (thesis 3.5.2) end to end: a tiny
//! chunk-sweep-like scenario runs `mount-direct` over a store that takes only
//! whole chunks, cut on either side, with a read and a write workload, in
//! process and (as root) across namespaces. Every cell must leave the bytes
//! intact: what was read equals the source, and after a write workload's
//! flush the source's store holds the source with the writes applied.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::path::Path;

use serde_json::Value;

use common::{cells, harness, is_root, run, run_dir, write_scenario};

/// 64 KiB chunks over 4 KiB pages: the scattered pages `zipfian-write`
/// dirties are partial chunks, so the client must read-modify-write them
/// across the link and the server next to its store.
const SCENARIO: &str = r#"
name = "chunking"
description = "where a direct mount's requests are cut into chunks, on a small region"
implementations = ["mount-direct", "uffd"]
repetitions = 1
cell_time_budget_s = 60
access_kib = 4
seed = 5
[axes]
rtt_ms = [1]
region_mib = [1]
chunk_kib = [64]
workload = ["sequential", "zipfian-write"]
transport = ["frpc"]
chunking = ["client", "server"]
"#;

fn can_mount() -> bool {
    let can = Path::new("/dev/nbd0").exists() || Path::new("/dev/fuse").exists();
    if !can {
        eprintln!("skipping: neither /dev/nbd0 nor /dev/fuse exists");
    }
    can
}

/// Runs the scenario under `emulation` and returns its records.
fn run_scenario(emulation: &str) -> Vec<Value> {
    let tmp = tempfile::tempdir().unwrap();
    let scenario = write_scenario(tmp.path(), SCENARIO);
    let out_dir = tmp.path().join("runs");
    let out = run(harness()
        .arg("scenario")
        .arg(&scenario)
        .args(["--emulation", emulation, "--out"])
        .arg(&out_dir));
    assert!(out.status.success());
    cells(&run_dir(&out_dir))
}

fn check(records: &[Value], emulation: &str) {
    let direct: Vec<&Value> = records
        .iter()
        .filter(|c| c["implementation"] == "mount-direct")
        .collect();
    // Two sides x two workloads.
    assert_eq!(direct.len(), 4, "{records:#?}");
    let mut transferred = std::collections::BTreeMap::new();
    for c in &direct {
        if c["status"] == "skipped" && !is_root() {
            // Unprivileged hosts without fusermount3 cannot mount.
            assert!(c["reason"].as_str().unwrap().contains("device"), "{c}");
            continue;
        }
        assert_eq!(c["status"], "ok", "{c}");
        assert_eq!(c["emulation"], emulation, "{c}");
        assert_eq!(c["metrics"]["integrity"], true, "{c}");
        assert_eq!(c["params"]["chunk_kib"], 64, "{c}");
        let m = &c["metrics"];
        let workload = c["params"]["workload"].as_str().unwrap();
        if workload == "zipfian-write" {
            assert!(m["write_throughput_mib_s"].as_f64().unwrap() > 0.0, "{c}");
            assert!(m["bytes_written"].as_u64().unwrap() > 0, "{c}");
            assert!(m["flush_ms"].as_f64().is_some(), "{c}");
            assert!(m.get("read_throughput_mib_s").is_none(), "{c}");
            let side = c["params"]["chunking"].as_str().unwrap().to_owned();
            transferred.insert(side, m["transferred_bytes"].as_u64().unwrap());
        } else {
            assert!(m["read_throughput_mib_s"].as_f64().unwrap() > 0.0, "{c}");
            assert!(m.get("write_throughput_mib_s").is_none(), "{c}");
        }
    }
    if let (Some(client), Some(server)) = (transferred.get("client"), transferred.get("server")) {
        // Each scattered page the client writes back costs it a whole chunk
        // read and a whole chunk write across the link; the server gets the
        // page alone.
        assert!(client > server, "client {client} B, server {server} B");
    }
    for c in records.iter().filter(|c| c["implementation"] == "uffd") {
        if c["params"]["workload"] == "zipfian-write" {
            assert_eq!(c["status"], "skipped", "{c}");
            let reason = c["reason"].as_str().unwrap();
            assert!(reason.contains("cannot write back"), "{reason}");
        }
    }
}

#[test]
fn both_sides_keep_reads_and_writes_intact_in_process() {
    if can_mount() {
        check(&run_scenario("inproc"), "inproc");
    }
}

#[test]
fn both_sides_keep_reads_and_writes_intact_across_namespaces() {
    if !is_root() {
        eprintln!("skipping: namespaces need root");
        return;
    }
    if can_mount() {
        check(&run_scenario("userspace-link"), "userspace-link");
    }
}
