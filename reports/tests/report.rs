//! Renders whole reports from run directories and checks what they hold.

use std::fs;
use std::path::{Path, PathBuf};

use reports::{write_report, FigureStatus};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/rtt-sweep-mini");

/// A scratch copy of a fixture run, so rendering never writes into the
/// source tree.
fn copy_fixture(src: &Path) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let dir = tmp.path().join("run");
    fs::create_dir_all(&dir).expect("creating the run directory");
    for name in ["manifest.json", "cells.jsonl"] {
        fs::copy(src.join(name), dir.join(name)).expect("copying the fixture");
    }
    (tmp, dir)
}

fn status_of<'a>(out: &'a reports::ReportOutcome, id: &str) -> &'a FigureStatus {
    &out.figures
        .iter()
        .find(|f| f.spec.id == id)
        .unwrap_or_else(|| panic!("{id} not in the outcome"))
        .status
}

#[test]
fn fixture_run_renders_every_figure_it_has_data_for() {
    let (_tmp, dir) = copy_fixture(Path::new(FIXTURE));
    // A figure file left by an earlier render whose data is gone must go.
    fs::create_dir_all(dir.join("figures")).unwrap();
    let stale = dir.join("figures/rtt-sweep-prepulled-vs-rtt.png");
    fs::write(&stale, b"old").unwrap();

    let out = write_report(&dir).unwrap();
    let html = fs::read_to_string(&out.index).unwrap();
    assert_eq!(out.index, dir.join("index.html"));

    let rendered: Vec<_> = out
        .figures
        .iter()
        .filter(|f| matches!(f.status, FigureStatus::Rendered { .. }))
        .collect();
    assert!(!rendered.is_empty());
    for f in &rendered {
        let id = f.spec.id;
        assert_eq!(
            f.spec.scenario, "rtt-sweep",
            "{id} rendered from another scenario"
        );
        for ext in ["svg", "png", "csv"] {
            let path = dir.join(format!("figures/{id}.{ext}"));
            let len = fs::metadata(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                .len();
            assert!(len > 0, "{} is empty", path.display());
            assert!(
                html.contains(&format!("href=\"figures/{id}.{ext}\"")),
                "index.html does not link {id}.{ext}"
            );
        }
        assert!(
            html.contains(&format!("<img src=\"figures/{id}.png\"")),
            "{id} not shown"
        );
        let png = fs::read(dir.join(format!("figures/{id}.png"))).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{id}.png is not a PNG");
        let svg = fs::read_to_string(dir.join(format!("figures/{id}.svg"))).unwrap();
        assert!(svg.contains("<svg"), "{id}.svg is not SVG");
        assert!(
            svg.contains("emulation: inproc"),
            "{id}.svg title lacks the emulation mode"
        );
    }

    // The figures the issue names for an rtt-sweep run.
    for id in [
        "rtt-sweep-first-chunk-latency-vs-rtt",
        "rtt-sweep-read-throughput-vs-rtt",
        "rtt-sweep-fault-latency-vs-rtt",
        "rtt-sweep-first-chunk-latency-at-0ms",
    ] {
        assert!(
            matches!(status_of(&out, id), FigureStatus::Rendered { .. }),
            "{id}: {:?}",
            status_of(&out, id)
        );
    }
    // Pre-pulled MiB needs managed mounts, which this run did not have:
    // missing data of this run's own scenario, listed with its producer.
    match status_of(&out, "rtt-sweep-prepulled-vs-rtt") {
        FigureStatus::MissingData { why } => assert!(why.contains("mount-managed"), "{why}"),
        other => panic!("pre-pulled figure: {other:?}"),
    }
    assert!(html.contains("id=\"missing-rtt-sweep-prepulled-vs-rtt\""));
    assert!(!stale.exists(), "stale figure file kept");
    // A figure of another scenario is listed under its producer, not as
    // missing data of this run.
    assert!(matches!(
        status_of(&out, "netem-calibration-rtt"),
        FigureStatus::OtherScenario
    ));
    assert!(html.contains("id=\"other-netem-calibration-rtt\""));
    assert!(!html.contains("id=\"missing-netem-calibration-rtt\""));

    // The CSV is the plotted series, baseline as a reference row.
    let csv =
        fs::read_to_string(dir.join("figures/rtt-sweep-first-chunk-latency-vs-rtt.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("facet,series,x,median,low,high,n,band,unit")
    );
    assert!(
        csv.lines()
            .any(|l| l.starts_with("sequential,baseline (local memory),,")),
        "{csv}"
    );
    // Two repetitions at uffd / sequential / 0 ms: min-max band, n = 2.
    let uffd0 = csv
        .lines()
        .find(|l| l.starts_with("sequential,uffd,0,"))
        .unwrap_or_else(|| panic!("{csv}"));
    assert!(uffd0.ends_with(",2,min-max,µs"), "{uffd0}");

    // Manifest, skipped cells with their reason, the thesis beside us.
    for needle in [
        "6.18.44-fc-v657",
        "aab9c7fab08acc2ba84d7a75187acda36feeaf03",
        "emulator accuracy",
        "userfaultfd write-protect",
        "fixture: a skipped repetition",
        "i7-1280P",
        "78.5",
        "not in this run",
        "no comparable measurement",
    ] {
        assert!(html.contains(needle), "index.html lacks {needle:?}");
    }
    // Offline: no scripts, no remote resources.
    assert!(!html.contains("<script"));
    assert!(!html.contains("http://") && !html.contains("https://"));

    // Rendering again is fine and gives the same set of files.
    let again = write_report(&dir).unwrap();
    assert_eq!(again.counts(), out.counts());
}

fn netem_record(rep: u32, rtt: f64, rate: f64, metrics: serde_json::Value) -> String {
    serde_json::json!({
        "cell_id": format!("netem-calibration/userspace-link/rate_mbit={rate},rtt_ms={rtt}"),
        "scenario": "netem-calibration",
        "implementation": "userspace-link",
        "emulation": "userspace-link",
        "params": {"rtt_ms": rtt, "rate_mbit": rate},
        "repetition": rep,
        "status": "ok",
        "started_at": "2026-01-01T00:00:00Z",
        "wall_ms": 1.0,
        "metrics": metrics
    })
    .to_string()
}

#[test]
fn calibration_run_draws_identity_and_capacity_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut lines = Vec::new();
    for rep in 0..2 {
        let jitter = f64::from(rep) * 0.01;
        for rtt in [0.0, 1.0, 10.0, 50.0] {
            lines.push(netem_record(
                rep,
                rtt,
                0.0,
                serde_json::json!({
                    "rtt_p50_ms": rtt + 0.05 + jitter,
                    "rtt_p99_ms": rtt + 0.2 + jitter,
                    "goodput_mbit_s": 900.0,
                    "capacity_mbit_s": 950.0 + jitter,
                }),
            ));
        }
        for rate in [10.0, 100.0, 1000.0] {
            lines.push(netem_record(
                rep,
                0.0,
                rate,
                serde_json::json!({ "goodput_mbit_s": (rate * 0.95).min(900.0) }),
            ));
        }
    }
    fs::write(dir.join("cells.jsonl"), lines.join("\n") + "\n").unwrap();

    let out = write_report(dir).unwrap();
    for id in ["netem-calibration-rtt", "netem-calibration-goodput"] {
        assert!(
            matches!(status_of(&out, id), FigureStatus::Rendered { .. }),
            "{id}: {:?}",
            status_of(&out, id)
        );
    }
    let rtt = fs::read_to_string(dir.join("figures/netem-calibration-rtt.csv")).unwrap();
    assert!(rtt.contains(",userspace-link p50,50,"), "{rtt}");
    assert!(rtt.contains(",userspace-link p99,50,"), "{rtt}");
    // The rate figure leaves out the unlimited (rate 0) cells and draws
    // the emulator's capacity as a line.
    let goodput = fs::read_to_string(dir.join("figures/netem-calibration-goodput.csv")).unwrap();
    assert!(!goodput.contains(",userspace-link,0,"), "{goodput}");
    assert!(goodput.contains(",userspace-link,10,9.5,"), "{goodput}");
    assert!(
        goodput.contains(",emulator capacity,,950.005,"),
        "{goodput}"
    );
    // Without a manifest the report still renders, and says so.
    let html = fs::read_to_string(&out.index).unwrap();
    assert!(
        html.contains("manifest.json"),
        "missing-manifest warning absent"
    );
    assert!(matches!(
        status_of(&out, "rtt-sweep-first-chunk-latency-vs-rtt"),
        FigureStatus::OtherScenario
    ));
}

#[test]
fn a_directory_that_is_not_a_run_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let err = write_report(tmp.path()).unwrap_err();
    assert!(err.to_string().contains("not a run directory"), "{err}");
    assert!(!tmp.path().join("index.html").exists());
}
