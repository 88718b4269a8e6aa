//! End-to-end tests of `harness compare` and `harness baseline update` on
//! run directories written here: a regression planted in the samples must
//! exit 1, the same samples must exit 0, and the machine warning must show.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use results::schema::{BuildInfo, EmulationInfo, HostInfo};
use results::{CellRecord, CellStatus, Manifest, Metrics, RunWriter, SCHEMA_VERSION};

mod common;
use common::harness;

fn manifest(cpus: usize) -> Manifest {
    Manifest {
        schema_version: SCHEMA_VERSION,
        run_id: "t".into(),
        scenario: "ci".into(),
        profile: "default".into(),
        started_at: "2026-01-01T00:00:00Z".into(),
        finished_at: None,
        host: HostInfo {
            hostname: "h".into(),
            kernel: "k".into(),
            arch: "x86_64".into(),
            cpu_model: "c".into(),
            cpus,
            memory_bytes: 1 << 30,
            is_root: true,
        },
        build: BuildInfo {
            profile: "dev".into(),
            opt_level: "3".into(),
            debug_assertions: false,
            fit_for_numbers: true,
            git_revision: Some("abc".into()),
            git_dirty: Some(false),
            version: "0.1.0".into(),
        },
        capabilities: vec![],
        emulation: EmulationInfo {
            mode: "inproc".into(),
            emulator: "delay line".into(),
            accuracy: None,
            calibration: vec![],
        },
        scenario_resolved: serde_json::json!({}),
        cells_planned: 2,
        cells_recorded: 0,
        warnings: vec![],
    }
}

fn record(implementation: &str, repetition: u32, tput: f64, setup_ms: f64) -> CellRecord {
    CellRecord {
        cell_id: format!("ci/{implementation}/region_mib=8"),
        scenario: "ci".into(),
        implementation: implementation.into(),
        transport: None,
        device: None,
        emulation: "inproc".into(),
        params: BTreeMap::from([("region_mib".into(), serde_json::json!(8))]),
        repetition,
        status: CellStatus::Ok,
        reason: None,
        started_at: "2026-01-01T00:00:00Z".into(),
        wall_ms: 1.0,
        metrics: Metrics {
            read_throughput_mib_s: Some(tput),
            setup_ms: Some(setup_ms),
            integrity: Some(true),
            ..Metrics::default()
        },
        histograms: BTreeMap::new(),
        placement: BTreeMap::new(),
        source_sha256: None,
        destination_sha256: None,
    }
}

/// A run of `baseline` and `uffd` cells, ten repetitions each; uffd's
/// throughput is `uffd_tput` times a fixed +-1 % spread.
fn write_run(dir: &Path, cpus: usize, uffd_tput: f64) -> PathBuf {
    let spread = [0.0, 0.4, -0.3, 0.8, -0.9, 0.2, -0.5, 1.0, -0.1, 0.6];
    let mut w = RunWriter::create(dir, manifest(cpus)).unwrap();
    for (rep, d) in spread.iter().enumerate() {
        let f = 1.0 + d / 100.0;
        w.append(record("baseline", rep as u32, 1000.0 * f, 1.0 * f))
            .unwrap();
        w.append(record("uffd", rep as u32, uffd_tput * f, 10.0 * f))
            .unwrap();
    }
    w.finish("2026-01-01T00:01:00Z".into()).unwrap()
}

fn compare(base: &Path, new: &Path, extra: &[&str]) -> Output {
    harness()
        .arg("compare")
        .arg(base)
        .arg(new)
        .args(extra)
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_planted_regression_exits_1_and_its_absence_exits_0() {
    let tmp = tempfile::tempdir().unwrap();
    let base = write_run(&tmp.path().join("base"), 2, 200.0);
    let same = write_run(&tmp.path().join("same"), 2, 200.0);
    let slower = write_run(&tmp.path().join("slower"), 2, 160.0);

    let out = compare(&base, &same, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("ok: no significant regression"));
    assert!(!text(&out).contains("WARNING"), "{}", text(&out));

    let md = tmp.path().join("compare.md");
    let out = compare(&base, &slower, &["--markdown", md.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let md = std::fs::read_to_string(&md).unwrap();
    // The in-run ratio gates; the absolute throughput is reported beside it.
    assert!(
        md.contains("| read_throughput_mib_s/baseline | higher |"),
        "{md}"
    );
    assert!(md.contains("REGRESSED"), "{md}");
    assert!(md.contains("-20.0%"), "{md}");

    // Report-only above 20 %: the same 20 % drop does not fail.
    let out = compare(&base, &slower, &["--fail-above", "25"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("reported only"), "{}", text(&out));
    let out = compare(&base, &slower, &["--report-only"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("FAIL: 1 significant"), "{}", text(&out));
}

#[test]
fn baselines_are_written_and_compared_and_other_machines_warned_about() {
    let tmp = tempfile::tempdir().unwrap();
    let base = write_run(&tmp.path().join("base"), 2, 200.0);
    let other_machine = write_run(&tmp.path().join("other"), 8, 200.0);
    let baselines = tmp.path().join("baselines");
    let out = harness()
        .args(["baseline", "update", "ci", "--run"])
        .arg(&base)
        .arg("--dir")
        .arg(&baselines)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let file = baselines.join("ci.json");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(json["samples"]["machine"]["build"]["git_revision"], "abc");
    assert_eq!(
        json["samples"]["cells"]["ci/uffd/region_mib=8"]["samples"]["setup_ms"]
            .as_array()
            .unwrap()
            .len(),
        10
    );

    let out = compare(&file, &other_machine, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("WARNING: the two sets were NOT measured on the same machine"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("cpus: 2 -> 8"), "{}", text(&out));
}

#[test]
fn a_missing_input_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let base = write_run(&tmp.path().join("base"), 2, 200.0);
    let out = compare(&base, &tmp.path().join("nope.json"), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("nope.json"), "{}", text(&out));
}
