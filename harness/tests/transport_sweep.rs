//! End-to-end tests of `kind = "transport-sweep"` scenarios through the
//! `harness` binary: every transport carries intact bytes in process, the
//! packet-level run crosses namespaces and removes them, bad files name
//! the bad key.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::fs;
use std::path::PathBuf;

use serde_json::Value;

mod common;
use common::{harness, is_root, project_namespaces, run, write_scenario};

const TRANSPORTS: [&str; 5] = ["jsonl", "grpc", "frpc", "tarpc", "raw"];

/// All five transports; the base point at RTT 0 plus an RTT of 2 ms and
/// two more chunk sizes; short windows.
const SMALL: &str = r#"
name = "small-sweep"
kind = "transport-sweep"
description = "all transports, tiny region"
transports = ["jsonl", "grpc", "frpc", "tarpc", "raw"]
repetitions = 1
seed = 3
connections = 2
warmup_s = 0.05
measure_s = 0.2
[base]
rtt_ms = 0
workers = 8
chunk_kib = 16
region_mib = 2
[sweeps.rtt]
rtt_ms = [0, 2]
[sweeps.chunk]
chunk_kib = [4, 64]
"#;

/// Runs `text` with `--emulation MODE`; returns stdout and the records.
fn run_sweep(text: &str, mode: &str) -> (String, PathBuf, Vec<Value>, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let scenario = write_scenario(tmp.path(), text);
    let out_dir = tmp.path().join("runs");
    let out = run(harness()
        .args([
            "scenario",
            scenario.to_str().unwrap(),
            "--emulation",
            mode,
            "--out",
        ])
        .arg(&out_dir));
    assert!(out.status.success());
    let dir = fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    let cells: Vec<Value> = fs::read_to_string(dir.join("cells.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        dir,
        cells,
        tmp,
    )
}

/// Tests that create namespaces run one at a time.
static NAMESPACES: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Checks an ok cell: intact, measured, attributed to its transport.
fn assert_ok_cell(cell: &Value) {
    let id = cell["cell_id"].as_str().unwrap();
    assert_eq!(cell["status"], "ok", "{id}: {cell}");
    let m = &cell["metrics"];
    assert_eq!(m["integrity"], true, "{id}");
    assert!(m["read_throughput_mib_s"].as_f64().unwrap() > 0.0, "{id}");
    assert!(m["requests_per_s"].as_f64().unwrap() > 0.0, "{id}");
    assert!(m["cpu_s"].as_f64().unwrap() > 0.0, "{id}: client CPU");
    assert!(m["server_cpu_s"].as_f64().unwrap() >= 0.0, "{id}");
    // Whatever crossed carried at least the bytes the window counted.
    assert!(
        m["transferred_bytes"].as_u64().unwrap() >= m["bytes_read"].as_u64().unwrap(),
        "{id}"
    );
    let h = &cell["histograms"]["request_latency_ns"];
    assert!(h["count"].as_u64().unwrap() > 0, "{id}: {h}");
    assert_eq!(cell["params"]["transport"], cell["transport"], "{id}");
    // The server answered every request the client completed.
    assert!(
        m["server_requests"].as_f64().unwrap() >= m["requests"].as_f64().unwrap(),
        "{id}"
    );
    if cell["transport"] == "raw" {
        assert!(m.get("efficiency").is_none(), "{id}");
    } else {
        assert!(m["efficiency"].as_f64().unwrap() > 0.0, "{id}");
    }
}

/// Without packet-level emulation every transport runs in process over
/// loopback; the RTT cells are skipped with the reason, never faked.
#[test]
fn small_sweep_in_process_writes_intact_cells_for_every_transport() {
    let (stdout, dir, cells, _tmp) = run_sweep(SMALL, "inproc");
    // 4 points (base, rtt 2, chunks 4 and 64) x 5 transports.
    assert_eq!(cells.len(), 20, "{stdout}");
    for transport in TRANSPORTS {
        let mine: Vec<&Value> = cells
            .iter()
            .filter(|c| c["transport"] == transport)
            .collect();
        assert_eq!(mine.len(), 4, "{transport}");
        for cell in mine {
            if cell["params"]["rtt_ms"].as_f64().unwrap() > 0.0 {
                assert_eq!(cell["status"], "skipped", "{cell}");
                let reason = cell["reason"].as_str().unwrap();
                assert!(reason.contains("packet-level"), "{reason}");
            } else {
                assert_ok_cell(cell);
            }
        }
    }
    // Raw runs first at every point, so efficiency is relative to it.
    assert_eq!(cells[0]["transport"], "raw");
    let manifest: Value =
        serde_json::from_str(&fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["emulation"]["mode"], "inproc");
    assert_eq!(manifest["scenario_resolved"]["axes"]["chunk_kib"][0], 16);
    let targets: Value =
        serde_json::from_str(&fs::read_to_string(dir.join("targets.json")).unwrap()).unwrap();
    assert!(targets.as_array().unwrap().is_empty(), "{targets}");
    assert!(
        stdout.contains("frpc/raw read_throughput_mib_s: not measured"),
        "{stdout}"
    );
    assert!(
        stdout.contains("RTT needs a packet-level emulation mode"),
        "{stdout}"
    );
}

/// As root, the server role runs in `src`, the client in `dst`, through
/// the packet relay at 2 ms; the run's namespaces are gone afterwards.
#[test]
fn userspace_link_sweep_crosses_namespaces_and_cleans_up() {
    if !is_root() {
        eprintln!("skipping: userspace-link needs root");
        return;
    }
    let _one_at_a_time = NAMESPACES.lock().unwrap_or_else(|e| e.into_inner());
    let text = SMALL
        .replace("rtt_ms = 0\n", "rtt_ms = 2\n")
        .replace("rtt_ms = [0, 2]", "rtt_ms = [2]")
        .replace("chunk_kib = [4, 64]", "chunk_kib = [16]");
    let (stdout, dir, cells, _tmp) = run_sweep(&text, "userspace-link");
    assert_eq!(cells.len(), 5, "{stdout}");
    for cell in &cells {
        assert_ok_cell(cell);
        assert_eq!(cell["params"]["rtt_ms"], 2.0);
        // The role reported its own CPU, and the relay counted frames.
        assert!(cell["metrics"]["server_cpu_s"].as_f64().unwrap() > 0.0);
        // At 2 ms, no request can complete faster than one round trip.
        let p50 = cell["histograms"]["request_latency_ns"]["p50"]
            .as_u64()
            .unwrap();
        assert!(p50 >= 2_000_000, "{}: p50 {p50} ns", cell["transport"]);
    }
    let manifest: Value =
        serde_json::from_str(&fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["emulation"]["mode"], "userspace-link");
    let emulator = manifest["emulation"]["emulator"].as_str().unwrap();
    let ours: Vec<&str> = emulator
        .split(|c: char| c.is_whitespace() || c == ',' || c == '(' || c == ')')
        .filter(|w| w.starts_with("msb-"))
        .collect();
    assert!(!ours.is_empty(), "{emulator}");
    let left = project_namespaces();
    for ns in ours {
        assert!(!left.iter().any(|l| l == ns), "namespace {ns} left behind");
    }
}

/// A bad value or an unknown key fails before anything runs, naming it.
#[test]
fn malformed_scenarios_name_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    for (from, to, expect) in [
        (
            "workers = 8\n",
            "workers = 0\n",
            ["base.workers", "1..=4096"],
        ),
        (
            "chunk_kib = [4, 64]",
            "chunk_kib = [4, 48]",
            ["sweeps.chunk.chunk_kib", "power of two"],
        ),
        ("rtt_ms = [0, 2]", "rtts = [0, 2]", ["rtts", "rtt_ms"]),
        (
            "transports = [\"jsonl\", \"grpc\", \"frpc\", \"tarpc\", \"raw\"]",
            "transports = [\"quic\"]",
            ["transports", "\"quic\""],
        ),
    ] {
        assert!(SMALL.contains(from), "{from}");
        let path = write_scenario(tmp.path(), &SMALL.replace(from, to));
        let out = harness()
            .args([
                "scenario",
                path.to_str().unwrap(),
                "--emulation",
                "inproc",
                "--out",
            ])
            .arg(tmp.path().join("runs"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{to} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        for e in expect {
            assert!(err.contains(e), "{to}: {err}");
        }
    }
    assert!(
        !tmp.path().join("runs").exists(),
        "a bad scenario created a run directory"
    );
}
