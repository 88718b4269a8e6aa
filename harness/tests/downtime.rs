//! End-to-end tests of `kind = "downtime"` scenarios through the `harness`
//! binary: as root, every strategy migrates a region whose application
//! keeps writing, across namespaces, and every byte arrives; without
//! packet-level emulation the cells are skipped with the reason; bad
//! settings are refused naming the key.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;
use common::{
    cells, harness, is_root, namespaces_since, project_namespaces, run, run_dir, run_failing,
    write_scenario,
};

const SMALL: &str = r#"
name = "downtime"
kind = "downtime"
description = "every strategy, a small region"
strategies = ["two-step", "stop-and-copy", "precopy-iterative", "postcopy"]
transports = ["frpc"]
repetitions = 1
seed = 3
chunk_kib = 64
pull_workers = 16
pattern = "hot-set"
warm_ms = 100
tail_ms = 50
finalize_after_local = 1.0
downtime_target_ms = 5
max_rounds = 3
[base]
rtt_ms = 2
region_mib = 8
dirty_rate = 5000
[sweeps.size]
region_mib = [16]
"#;

#[test]
fn every_strategy_migrates_a_written_region_intact_across_namespaces() {
    if !is_root() {
        eprintln!("skipping: the downtime scenario needs root (namespaces and mounts)");
        return;
    }
    let before = project_namespaces();
    let tmp = tempfile::tempdir().unwrap();
    let scenario = write_scenario(tmp.path(), SMALL);
    let out_dir = tmp.path().join("runs");
    let out = run(harness()
        .args(["scenario", scenario.to_str().unwrap(), "--out"])
        .arg(&out_dir)
        .args(["--emulation", "userspace-link"]));
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let records = cells(&run_dir(&out_dir));
    // 4 strategies x 2 points.
    assert_eq!(records.len(), 8, "{stdout}");
    for r in &records {
        assert_eq!(r["status"], "ok", "{r}");
        let m = &r["metrics"];
        assert_eq!(m["integrity"], true, "{r}");
        // The application did write, on both hosts, and checked its reads.
        assert!(m["app_ops"].as_f64().unwrap() > 0.0, "{r}");
        assert!(m["app_checks"].as_f64().unwrap() > 0.0, "{r}");
        let downtime = m["downtime_ms"].as_f64().unwrap();
        let stall = m["app_stall_max_ms"].as_f64().unwrap();
        // The source stops inside Sync; its reply still has half the
        // 2 ms round trip to go before the destination can resume. The
        // application's longest gap spans its downtime.
        assert!(downtime >= 1.0, "{r}");
        assert!(stall >= downtime, "{r}");
        assert!(m["transfer_amplification"].as_f64().unwrap() >= 1.0, "{r}");
        if r["implementation"] == "stop-and-copy" {
            assert_eq!(m["dirty_sync_count"], 0.0, "{r}");
        }
    }
    assert!(stdout.contains("two-step downtime"), "{stdout}");
    assert!(
        namespaces_since(&before).is_empty(),
        "namespaces left behind"
    );
}

#[test]
fn without_packet_emulation_the_cells_are_skipped_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let scenario = write_scenario(tmp.path(), SMALL);
    let out_dir = tmp.path().join("runs");
    let out = run(harness()
        .args(["scenario", scenario.to_str().unwrap(), "--out"])
        .arg(&out_dir)
        .args(["--emulation", "inproc"]));
    assert!(out.status.success());
    for r in cells(&run_dir(&out_dir)) {
        assert_eq!(r["status"], "skipped", "{r}");
        assert!(
            r["reason"]
                .as_str()
                .unwrap()
                .contains("packet-level emulation"),
            "{r}"
        );
    }
}

#[test]
fn bad_settings_name_the_key_and_what_is_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    for (from, to, expect) in [
        (
            "\"postcopy\"]",
            "\"postcopy-magic\"]",
            "two-step, stop-and-copy, precopy-iterative, postcopy",
        ),
        ("transports = [\"frpc\"]", "transports = [\"raw\"]", "raw"),
        ("chunk_kib = 64", "chunk_kib = 48", "power of two"),
        (
            "finalize_after_local = 1.0",
            "finalize_after_local = 2.0",
            "fraction",
        ),
        ("region_mib = [16]", "region_mib = [0]", "region_mib"),
    ] {
        let text = SMALL.replace(from, to);
        assert_ne!(text, SMALL, "{from}");
        let scenario = write_scenario(tmp.path(), &text);
        let err = run_failing(
            harness()
                .args(["scenario", scenario.to_str().unwrap(), "--out"])
                .arg(tmp.path()),
        );
        assert!(err.contains(expect), "{to}: {err}");
    }
}
