//! The `sqlite` workload end to end: SQLite answers lookups from the
//! database in the destination's region, under every kind of
//! implementation, and its answers match the source's.

mod common;

use common::{cells, harness, is_root, run, run_dir, write_scenario};

const SCENARIO: &str = r#"
name = "sqlite-tiny"
description = "SQLite lookups on a small region, every kind of implementation"
implementations = ["baseline", "uffd", "nbd-direct", "mount-managed"]
repetitions = 1
cell_time_budget_s = 60
access_kib = 4
seed = 4
[axes]
rtt_ms = [1]
region_mib = [2]
chunk_kib = [16]
workload = ["sqlite"]
transport = ["frpc"]
pull_workers = [8]
pull_heuristic = ["linear", "trace"]
"#;

#[test]
fn sqlite_lookups_answer_as_the_source_does_under_every_implementation() {
    let tmp = tempfile::tempdir().unwrap();
    let scenario = write_scenario(tmp.path(), SCENARIO);
    let out_dir = tmp.path().join("runs");
    // In process: this test is about the workload, not the link.
    let out = run(harness()
        .arg("scenario")
        .arg(&scenario)
        .args(["--emulation", "inproc", "--out"])
        .arg(&out_dir));
    assert!(out.status.success());
    let records = cells(&run_dir(&out_dir));
    // baseline, uffd, nbd-direct, and mount-managed per heuristic.
    assert_eq!(records.len(), 5, "{records:#?}");
    let mut measured = 0;
    for c in &records {
        if c["status"] == "skipped" && !is_root() {
            // Unprivileged: no userfaultfd or no way to mount here.
            assert!(!c["reason"].as_str().unwrap().is_empty(), "{c}");
            continue;
        }
        assert_eq!(c["status"], "ok", "{c}");
        assert_eq!(c["metrics"]["integrity"], true, "{c}");
        assert_eq!(c["params"]["workload"], "sqlite", "{c}");
        // 2 MiB / 4 KiB slots / 16 slots per lookup.
        let lookups = c["metrics"]["lookups_per_s"].as_f64().unwrap();
        assert!(lookups > 0.0, "{c}");
        assert!(c["metrics"]["bytes_read"].as_u64().unwrap() > 0, "{c}");
        assert!(
            c["metrics"]["first_chunk_latency_us"].as_f64().unwrap() > 0.0,
            "{c}"
        );
        measured += 1;
    }
    if is_root() {
        assert_eq!(measured, 5);
    }
}
