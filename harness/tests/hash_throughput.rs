//! End-to-end tests of `kind = "hash-throughput"` scenarios through the
//! `harness` binary: every cell verified and measured, the ceilings
//! recorded beside the hashes, the figures drawn, `--emulation` refused.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::fs;

mod common;
use common::{cells, harness, run, run_dir, run_failing, write_scenario};

const SMALL: &str = r#"
# Named as the built-in one: figures are keyed by scenario name.
name = "hash-throughput"
kind = "hash-throughput"
description = "two algorithms, tiny region"
algorithms = ["crc32", "sha256"]
threads = [1, 2]
chunk_kib = [4, 64]
region_mib = 4
repetitions = 1
seed = 1
measure_s = 0
"#;

#[test]
fn every_cell_is_verified_and_the_ceilings_are_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let scenario = write_scenario(tmp.path(), SMALL);
    let out_dir = tmp.path().join("runs");
    let out = run(harness()
        .args(["scenario", scenario.to_str().unwrap(), "--out"])
        .arg(&out_dir));
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("of the memory-read ceiling"), "{stdout}");
    let dir = run_dir(&out_dir);
    let records = cells(&dir);
    // Per thread count: two ceilings and 2 algorithms x 2 chunk sizes.
    assert_eq!(records.len(), 2 * (2 + 2 * 2));
    for r in &records {
        assert_eq!(r["status"], "ok", "{r}");
        assert_eq!(r["metrics"]["integrity"], true, "{r}");
        assert!(
            r["metrics"]["hash_throughput_mib_s"].as_f64().unwrap() > 0.0,
            "{r}"
        );
        assert!(r["metrics"]["passes"].as_f64().unwrap() >= 1.0, "{r}");
    }
    let ceilings: Vec<_> = records
        .iter()
        .filter(|r| r["params"].get("chunk_kib").is_none())
        .map(|r| r["params"]["algorithm"].as_str().unwrap())
        .collect();
    assert_eq!(ceilings, ["memory-read", "memcpy", "memory-read", "memcpy"]);
    for figure in ["hash-throughput-by-algorithm", "hash-throughput-by-threads"] {
        assert!(
            dir.join("figures").join(format!("{figure}.svg")).is_file(),
            "{figure}"
        );
    }
    let csv = fs::read_to_string(dir.join("figures/hash-throughput-by-algorithm.csv")).unwrap();
    assert!(
        csv.contains("sha256") && csv.contains("memory-read"),
        "{csv}"
    );
}

#[test]
fn emulation_is_refused_and_bad_files_name_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let scenario = write_scenario(tmp.path(), SMALL);
    let err = run_failing(harness().args([
        "scenario",
        scenario.to_str().unwrap(),
        "--emulation",
        "inproc",
    ]));
    assert!(
        err.contains("--emulation") && err.contains("no link"),
        "{err}"
    );
    let bad = write_scenario(tmp.path(), &SMALL.replace("\"sha256\"", "\"md5\""));
    let err = run_failing(harness().args(["scenario", bad.to_str().unwrap()]));
    assert!(err.contains("algorithms") && err.contains("md5"), "{err}");
}
