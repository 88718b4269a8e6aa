//! End-to-end tests of `kind = "precopy-cost"` scenarios through the
//! `harness` binary: every tracker finds exactly the written pages, the
//! claim check and the figures come out, `--emulation` is refused.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;
use common::{cells, harness, run, run_dir, run_failing, write_scenario};

// Named as the built-in one (figures are keyed by scenario name), with the
// base point the catalog's figures filter on.
const SMALL: &str = r#"
name = "precopy-cost"
kind = "precopy-cost"
description = "every tracker, tiny regions"
implementations = ["hashsync", "uffd-wp", "uffd-wp-sync"]
algorithms = ["crc32", "sha256"]
hash_threads = 2
chunk_kib = 16
cycles = 2
repetitions = 1
seed = 2
[base]
region_mib = 1024
dirty_fraction = 0.01
[sweeps.region]
region_mib = [8, 32]
[sweeps.dirty]
dirty_fraction = [0.001, 0.5]
"#;

#[test]
fn every_tracker_reports_the_written_pages_and_the_claims_are_printed() {
    let tmp = tempfile::tempdir().unwrap();
    // A 1 GiB base point would make this test slow: at a 16 MiB base only
    // the by-region figure (held at 1 % dirty) has data, which is enough
    // to see the figures wired to the records.
    let text = SMALL.replace("region_mib = 1024", "region_mib = 16");
    let scenario = write_scenario(tmp.path(), &text);
    let out_dir = tmp.path().join("runs");
    let out = run(harness()
        .args(["scenario", scenario.to_str().unwrap(), "--out"])
        .arg(&out_dir));
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("claim check"), "{stdout}");
    assert!(
        stdout.contains("crossover uffd-wp vs hashsync-crc32"),
        "{stdout}"
    );
    let dir = run_dir(&out_dir);
    assert!(dir.join("claims.txt").is_file());
    let records = cells(&dir);
    // 4 trackers (2 hash algorithms, async and sync write-protect) x 5
    // points (base, 2 regions, 2 fractions).
    assert_eq!(records.len(), 4 * 5);
    let caps = uffd::probe();
    for r in &records {
        let implementation = r["implementation"].as_str().unwrap();
        if r["status"] == "skipped" {
            // Only a mode the kernel lacks may be skipped.
            let async_ok =
                caps.features.iter().any(|f| f == "WP_ASYNC") && caps.pagemap_scan.works();
            assert!(
                implementation == "uffd-wp" && !async_ok || !caps.available(),
                "{r}"
            );
            continue;
        }
        assert_eq!(r["status"], "ok", "{r}");
        assert_eq!(r["metrics"]["integrity"], true, "{r}");
        let m = &r["metrics"];
        let pages = m["dirty_pages"].as_f64().unwrap();
        assert!(pages >= 1.0, "{r}");
        let bytes = m["bytes_to_send"].as_f64().unwrap();
        if implementation.starts_with("uffd-wp") {
            assert_eq!(bytes, pages * 4096.0, "{r}");
        } else {
            assert!(
                bytes >= pages * 4096.0 && m["hash_ms"].as_f64().is_some(),
                "{r}"
            );
        }
    }
    assert!(dir
        .join("figures/precopy-cost-by-region-size.svg")
        .is_file());
}

#[test]
fn emulation_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let scenario = write_scenario(tmp.path(), SMALL);
    let err = run_failing(harness().args([
        "scenario",
        scenario.to_str().unwrap(),
        "--emulation",
        "per-call",
    ]));
    assert!(
        err.contains("--emulation") && err.contains("no link"),
        "{err}"
    );
}
