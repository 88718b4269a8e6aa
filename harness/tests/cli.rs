//! End-to-end tests of the `harness` binary: the commands users type, on
//! small scenarios, checking what lands on disk.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

mod common;
use common::{
    cells, harness, is_root, namespaces_since, project_namespaces, run, run_dir, run_failing,
    write_scenario,
};

const TINY: &str = r#"
name = "tiny"
description = "two implementations, two RTTs, a region of 1 MiB"
implementations = ["baseline", "uffd"]
repetitions = 1
cell_time_budget_s = 30
access_kib = 4
seed = 9
[axes]
rtt_ms = [0, 2]
region_mib = [1]
chunk_kib = [64]
workload = ["sequential", "zipfian"]
"#;

/// Runs `harness scenario FILE --emulation MODE --out DIR`.
fn run_scenario(scenario: &Path, emulation: &str, out_dir: &Path) -> Output {
    run(harness()
        .arg("scenario")
        .arg(scenario)
        .args(["--emulation", emulation, "--out"])
        .arg(out_dir))
}

#[test]
fn list_names_scenarios_and_implementations() {
    let out = run(harness().arg("list"));
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in ["rtt-sweep", "baseline", "uffd"] {
        assert!(text.contains(needle), "`list` lacks {needle}: {text}");
    }
}

#[test]
fn doctor_reports_every_capability_as_json() {
    let out = run(harness().args(["doctor", "--json"]));
    assert!(out.status.success());
    let caps: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = caps.iter().map(|c| c["name"].as_str().unwrap()).collect();
    for needed in [
        "root",
        "userfaultfd",
        "userfaultfd write-protect",
        "FUSE",
        "network namespaces",
        "veth",
        "TUN",
        "kernel netem",
        "kernel NBD client",
        "tbf qdisc",
    ] {
        assert!(names.contains(&needed), "doctor lacks {needed}: {names:?}");
    }
    let root = caps.iter().find(|c| c["name"] == "root").unwrap();
    assert_eq!(root["present"].as_bool().unwrap(), is_root());
}

#[test]
fn tiny_scenario_writes_intact_cells_manifest_and_summary() {
    // As root, the default (`auto`) emulation creates the project's namespaces.
    let _one_at_a_time = NAMESPACES.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let scenario = write_scenario(tmp.path(), TINY);
    let out_dir = tmp.path().join("runs");
    let out = run(harness()
        .args(["scenario", scenario.to_str().unwrap(), "--out"])
        .arg(&out_dir));
    assert!(out.status.success());
    let dir = run_dir(&out_dir);

    let manifest: Value =
        serde_json::from_slice(&fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["scenario"], "tiny");
    let auto_mode = if is_root() {
        "userspace-link"
    } else {
        "inproc"
    };
    assert_eq!(manifest["emulation"]["mode"], auto_mode);
    assert!(manifest["finished_at"].is_string());
    assert!(manifest["build"]["opt_level"].is_string());
    // baseline: 2 workloads; uffd: 2 workloads x 2 RTTs.
    assert_eq!(manifest["cells_planned"], 6);
    assert_eq!(manifest["cells_recorded"], 6);

    let cells = cells(&dir);
    assert_eq!(cells.len(), 6);
    for c in &cells {
        let id = c["cell_id"].as_str().unwrap();
        let status = c["status"].as_str().unwrap();
        if status == "skipped" {
            // Only uffd may be skipped, and only with the kernel's reason.
            assert_eq!(c["implementation"], "uffd", "{id} skipped");
            assert!(c["reason"].as_str().unwrap().contains("userfaultfd"), "{c}");
            assert!(!is_root(), "uffd must run as root: {c}");
            continue;
        }
        assert_eq!(status, "ok", "{id}: {c}");
        assert_eq!(c["metrics"]["integrity"], true, "{id}");
        for m in [
            "setup_ms",
            "first_chunk_latency_us",
            "read_throughput_mib_s",
        ] {
            assert!(c["metrics"][m].as_f64().unwrap() > 0.0, "{id}: {m}");
        }
        let faults = &c["histograms"]["fault_latency_ns"];
        assert!(
            faults["hdr_v2_base64"].is_string(),
            "{id}: no fault histogram"
        );
        if c["implementation"] == "uffd" && c["params"]["workload"] == "sequential" {
            // 1 MiB in 64 KiB chunks: exactly 16 chunks installed, one fault each.
            assert_eq!(faults["count"], 16, "{id}");
            assert!(c["destination_sha256"] == c["source_sha256"], "{id}");
            let rtt_ms = c["params"]["rtt_ms"].as_f64().unwrap();
            // Each fault waits at least one round trip.
            assert!(
                faults["min"].as_f64().unwrap() >= rtt_ms * 1e6,
                "{id}: {faults}"
            );
        }
        if c["implementation"] == "baseline" {
            assert_eq!(faults["count"], 0, "baseline cannot fault: {id}");
            assert!(
                c["params"].get("rtt_ms").is_none(),
                "baseline expanded over RTT"
            );
        }
    }
    let summary = fs::read_to_string(dir.join("summary.csv")).unwrap();
    assert_eq!(summary.lines().count(), 7, "{summary}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("first chunk us"),
        "no summary table: {stdout}"
    );
}

#[test]
fn per_call_emulation_is_recorded_and_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let text = TINY
        .replace(
            "implementations = [\"baseline\", \"uffd\"]",
            "implementations = [\"uffd\"]",
        )
        .replace(
            "workload = [\"sequential\", \"zipfian\"]",
            "workload = [\"random\"]",
        )
        .replace("rtt_ms = [0, 2]", "rtt_ms = [1]");
    let scenario = write_scenario(tmp.path(), &text);
    let out_dir = tmp.path().join("runs");
    let out = run_scenario(&scenario, "per-call", &out_dir);
    assert!(out.status.success());
    let cells = cells(&run_dir(&out_dir));
    assert_eq!(cells.len(), 1);
    assert_eq!(cells[0]["emulation"], "per-call");
    if cells[0]["status"] != "skipped" {
        assert_eq!(cells[0]["status"], "ok", "{}", cells[0]);
        assert_eq!(cells[0]["metrics"]["integrity"], true);
    }
}

/// A rate needs a link that carries packets: in process, the cell is
/// skipped and says why, and nothing is measured under a false label.
#[test]
fn a_rate_limited_cell_is_skipped_in_process_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let text = TINY
        .replace(
            "implementations = [\"baseline\", \"uffd\"]",
            "implementations = [\"uffd\"]",
        )
        .replace(
            "workload = [\"sequential\", \"zipfian\"]",
            "workload = [\"sequential\"]\nlink_mbit = [100]",
        )
        .replace("rtt_ms = [0, 2]", "rtt_ms = [2]");
    let scenario = write_scenario(tmp.path(), &text);
    let out_dir = tmp.path().join("runs");
    let out = run_scenario(&scenario, "inproc", &out_dir);
    assert!(out.status.success());
    let cells = cells(&run_dir(&out_dir));
    assert_eq!(cells.len(), 1);
    assert_eq!(cells[0]["status"], "skipped", "{}", cells[0]);
    assert_eq!(cells[0]["params"]["link_mbit"], 100);
    let reason = cells[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("100 Mbit/s") && reason.contains("userspace-link"),
        "{reason}"
    );
}

/// Whether `harness doctor` finds `capability` on this host.
fn host_has(capability: &str) -> bool {
    let out = run(harness().args(["doctor", "--json"]));
    let caps: Value = serde_json::from_slice(&out.stdout).unwrap();
    caps.as_array()
        .unwrap()
        .iter()
        .any(|c| c["name"] == capability && c["present"] == true)
}

#[test]
fn unavailable_emulation_mode_fails_naming_what_is_available() {
    if is_root() && host_has("kernel netem") {
        eprintln!("skipping: kernel-netem is available here, so asking for it does not fail");
        return;
    }
    let err = run_failing(harness().args(["scenario", "rtt-sweep", "--emulation", "kernel-netem"]));
    assert!(
        err.contains("kernel-netem") && err.contains("inproc"),
        "{err}"
    );
}

#[test]
fn malformed_scenario_names_file_key_and_allowed_values() {
    let tmp = tempfile::tempdir().unwrap();
    let scenario = write_scenario(
        tmp.path(),
        &TINY.replace("chunk_kib = [64]", "chunk_kb = [64]"),
    );
    let err = run_failing(harness().args(["scenario", scenario.to_str().unwrap()]));
    assert!(err.contains("scenario.toml"), "{err}");
    assert!(
        err.contains("chunk_kb") && err.contains("chunk_kib"),
        "{err}"
    );

    let err = run_failing(harness().args(["scenario", "no-such-scenario"]));
    assert!(
        err.contains("no-such-scenario") && err.contains("rtt-sweep"),
        "{err}"
    );
}

/// As an unprivileged user, uffd cells either run intact (user-mode-only
/// faults) or are skipped with the kernel's reason; nothing fails.
#[test]
fn unprivileged_run_completes() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    if !is_root() {
        eprintln!("skipping: needs root to switch to an unprivileged user");
        return;
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_harness"));
    // The binary must be reachable by `nobody`: every directory above it
    // must be searchable.
    let reachable = bin.ancestors().skip(1).all(|d| {
        fs::metadata(d)
            .map(|m| m.permissions().mode() & 0o001 != 0)
            .unwrap_or(false)
    });
    if !reachable {
        eprintln!(
            "skipping: {} is not reachable by other users",
            bin.display()
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let scenario = write_scenario(tmp.path(), TINY);
    fs::set_permissions(&scenario, fs::Permissions::from_mode(0o644)).unwrap();
    let out_dir = tmp.path().join("runs");
    let nobody = 65534;
    let out = run(Command::new(bin)
        .args(["scenario", scenario.to_str().unwrap(), "--out"])
        .arg(&out_dir)
        .current_dir(tmp.path())
        .uid(nobody)
        .gid(nobody));
    assert!(out.status.success());
    let dir = run_dir(&out_dir);
    let manifest: Value =
        serde_json::from_slice(&fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["host"]["is_root"], false);
    for c in cells(&dir) {
        match c["status"].as_str().unwrap() {
            "ok" => assert_eq!(c["metrics"]["integrity"], true, "{c}"),
            "skipped" => assert!(c["reason"].as_str().unwrap().contains("userfaultfd"), "{c}"),
            other => panic!("unprivileged cell ended {other}: {c}"),
        }
    }
}

/// The remote backend role serves the seeded region over frpc and reports
/// its counters when told to stop.
#[test]
fn remote_backend_role_serves_the_region_and_stops() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;

    use backends::Backend;
    use sha2::{Digest, Sha256};

    let size = 1u64 << 20;
    let mut child = harness()
        .args([
            "role",
            "remote-backend",
            "--listen",
            "127.0.0.1:0",
            "--seed",
            "5",
            "--size",
        ])
        .arg(size.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(ready["event"], "ready", "{ready}");
    let addr = ready["addr"].as_str().unwrap().to_owned();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let bytes = rt.block_on(async {
        let client = transports::FrpcClient::connect(addr.as_str(), Default::default())
            .await
            .unwrap();
        assert_eq!(client.size().await.unwrap(), size);
        let mut buf = vec![0u8; size as usize];
        client.read_exact_at(&mut buf, 0).await.unwrap();
        buf
    });
    let digest: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(ready["sha256"].as_str().unwrap(), digest);

    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"{\"command\":\"stop\"}\n").unwrap();
    let stopped: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(stopped["event"], "stopped", "{stopped}");
    assert!(
        stopped["serve"]["requests"].as_u64().unwrap() >= 2,
        "{stopped}"
    );
    // Nothing wrote: the store still holds what it was made with.
    assert_eq!(stopped["store_sha256"].as_str().unwrap(), digest);
    assert!(child.wait().unwrap().success());
}

#[test]
fn remote_backend_role_reports_a_bad_listen_address() {
    let out = run(harness().args([
        "role",
        "remote-backend",
        "--listen",
        "192.0.2.1:0",
        "--size",
        "4096",
        "--seed",
        "1",
    ]));
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("\"event\":\"error\"") && stdout.contains("192.0.2.1"),
        "{stdout}"
    );
}

/// Tests that create or remove the project's namespaces run one at a time:
/// `harness cleanup` removes every `msb-` namespace, a running test's too.
static NAMESPACES: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// As root, cells run across two namespaces through the packet relay, the
/// remote backend as a role process, and the namespaces are gone afterwards.
#[test]
fn userspace_link_runs_across_namespaces_and_cleans_up() {
    if !is_root() {
        eprintln!("skipping: userspace-link needs root");
        return;
    }
    let _one_at_a_time = NAMESPACES.lock().unwrap_or_else(|e| e.into_inner());
    let namespaces_before = project_namespaces();
    let tmp = tempfile::tempdir().unwrap();
    let text = TINY
        .replace(
            "implementations = [\"baseline\", \"uffd\"]",
            "implementations = [\"uffd\"]",
        )
        .replace(
            "workload = [\"sequential\", \"zipfian\"]",
            "workload = [\"sequential\"]",
        );
    let scenario = write_scenario(tmp.path(), &text);
    let out_dir = tmp.path().join("runs");
    let out = run_scenario(&scenario, "userspace-link", &out_dir);
    assert!(out.status.success());
    let dir = run_dir(&out_dir);
    let manifest: Value =
        serde_json::from_slice(&fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["emulation"]["mode"], "userspace-link");
    assert!(manifest["emulation"]["accuracy"]["count"].as_u64().unwrap() > 0);
    // The link was measured at each RTT the cells use (0 and 2 ms).
    let calibration = manifest["emulation"]["calibration"].as_array().unwrap();
    let rtts: Vec<f64> = calibration
        .iter()
        .map(|c| c["rtt_ms"].as_f64().unwrap())
        .collect();
    assert_eq!(rtts, vec![0.0, 2.0]);
    for c in calibration {
        assert!(c.get("error").is_none(), "calibration failed: {c}");
        let idle = &c["report"]["idle_rtt"];
        assert!(idle["count"].as_u64().unwrap() > 0, "{c}");
        let floor_ns = c["rtt_ms"].as_f64().unwrap() * 1e6;
        assert!(
            idle["min_ns"].as_f64().unwrap() >= floor_ns,
            "an RTT below the configured one: {c}"
        );
        assert!(!c["checks"].as_array().unwrap().is_empty());
    }
    let cells = cells(&dir);
    assert_eq!(cells.len(), 2);
    for c in &cells {
        assert_eq!(c["status"], "ok", "{c}");
        assert_eq!(c["emulation"], "userspace-link");
        assert_eq!(c["metrics"]["integrity"], true, "{c}");
        // The relay counted whole frames: more than the region crossed.
        let transferred = c["metrics"]["transferred_bytes"].as_u64().unwrap();
        assert!(transferred > 1 << 20, "{transferred}");
        let faults = &c["histograms"]["fault_latency_ns"];
        let rtt_ns = c["params"]["rtt_ms"].as_f64().unwrap() * 1e6;
        assert!(faults["min"].as_f64().unwrap() >= rtt_ns, "{c}");
    }
    let left = namespaces_since(&namespaces_before);
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// The link-calibration scenario measures the link at each point, records
/// configured beside measured (within twice the RTT targets), skips the
/// emulators this host lacks with the reason, and leaves nothing behind.
#[test]
fn link_calibration_scenario_measures_each_point_and_cleans_up() {
    if !is_root() {
        eprintln!("skipping: link calibration needs root");
        return;
    }
    let _one_at_a_time = NAMESPACES.lock().unwrap_or_else(|e| e.into_inner());
    let namespaces_before = project_namespaces();
    let tmp = tempfile::tempdir().unwrap();
    let scenario = write_scenario(
        tmp.path(),
        r#"
        name = "cal"
        kind = "link-calibration"
        description = "d"
        emulators = ["userspace-link", "kernel-netem"]
        repetitions = 1
        [axes]
        rtt_ms = [20]
        rate_mbit = [0, 50]
        [plan]
        round_trips = 100
        udp_probes = 200
        bulk_warmup_s = 0.3
        bulk_s = 0.5
        "#,
    );
    let out_dir = tmp.path().join("runs");
    let out = run(harness()
        .arg("scenario")
        .arg(&scenario)
        .arg("--out")
        .arg(&out_dir));
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("userspace-link capacity:"), "{stdout}");
    let dir = run_dir(&out_dir);
    let cells = cells(&dir);
    assert_eq!(cells.len(), 4);
    let netem_here = host_has("kernel netem");
    for c in &cells {
        let m = &c["metrics"];
        if c["implementation"] == "kernel-netem" && !netem_here {
            assert_eq!(c["status"], "skipped", "{c}");
            assert!(c["reason"].as_str().unwrap().contains("sch_netem"), "{c}");
            continue;
        }
        assert_eq!(c["status"], "ok", "{c}");
        assert_eq!(m["rtt_configured_ms"], 20.0);
        // Twice the target: max(2%, 100 us) at the median. (At a few ms the
        // veth hops and the endpoints' wake-ups alone take 0.1-0.25 ms on a
        // busy 2-core VM, so this uses an RTT where 2% is the bound.)
        let p50 = m["rtt_p50_ms"].as_f64().unwrap();
        assert!((p50 - 20.0).abs() <= 0.8, "{c}");
        assert!(m["goodput_mbit_s"].as_f64().unwrap() > 0.0, "{c}");
        if c["params"]["rate_mbit"] == 0.0 {
            assert_eq!(m["capacity_mbit_s"], m["goodput_mbit_s"], "{c}");
        } else {
            // Twice the 5% target, against the payload the rate carries.
            let ceiling = m["goodput_ceiling_mbit_s"].as_f64().unwrap();
            let goodput = m["goodput_mbit_s"].as_f64().unwrap();
            assert!((goodput - ceiling).abs() <= 0.1 * ceiling, "{c}");
        }
    }
    let manifest: Value =
        serde_json::from_slice(&fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let measured = manifest["emulation"]["calibration"].as_array().unwrap();
    assert_eq!(measured.len(), if netem_here { 4 } else { 2 });
    let left = namespaces_since(&namespaces_before);
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// `scenario thesis` runs every built-in scenario into one set directory
/// whose page links each scenario's own report.
#[test]
fn thesis_runs_every_built_in_scenario_and_links_their_reports() {
    let _one_at_a_time = NAMESPACES.lock().unwrap_or_else(|e| e.into_inner());
    let namespaces_before = project_namespaces();
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("runs");
    let out = run(harness()
        .args(["scenario", "thesis", "--profile", "quick", "--out"])
        .arg(&out_dir));
    assert!(out.status.success());
    let set = run_dir(&out_dir);
    let parts: Value = serde_json::from_slice(&fs::read(set.join("thesis.json")).unwrap()).unwrap();
    let index = fs::read_to_string(set.join("index.html")).unwrap();
    // The built-in scenarios `harness list` names, `thesis` itself aside.
    let listed = String::from_utf8(run(harness().arg("list")).stdout).unwrap();
    let built_in: Vec<&str> = listed
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "thesis")
        .collect();
    let parts = parts.as_array().unwrap();
    let ran: Vec<&str> = parts
        .iter()
        .map(|p| p["scenario"].as_str().unwrap())
        .collect();
    assert_eq!(ran, built_in);
    for part in parts {
        assert_eq!(part["exit_code"], 0, "{part}");
        let dir = part["run_dir"].as_str().unwrap();
        assert!(set.join(dir).join("cells.jsonl").is_file(), "{part}");
        assert!(set.join(dir).join("index.html").is_file(), "{part}");
        assert!(
            index.contains(&format!("{dir}/index.html")),
            "{dir} not linked"
        );
    }
    let left = namespaces_since(&namespaces_before);
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn emulation_flag_is_refused_for_a_link_calibration() {
    let err =
        run_failing(harness().args(["scenario", "netem-calibration", "--emulation", "inproc"]));
    assert!(
        err.contains("--emulation") && err.contains("emulators"),
        "{err}"
    );
}

/// Deletes the named network namespaces that still exist when dropped.
struct NamespacesGuard(Vec<String>);

impl Drop for NamespacesGuard {
    fn drop(&mut self) {
        for name in &self.0 {
            if Path::new("/run/netns").join(name).exists() {
                let _ = Command::new("ip").args(["netns", "del", name]).status();
            }
        }
    }
}

/// A run killed with SIGKILL leaves its namespaces; `harness cleanup`
/// removes them, and only the project's.
#[test]
fn cleanup_removes_what_a_killed_run_left() {
    if !is_root() {
        eprintln!("skipping: namespaces need root");
        return;
    }
    let _one_at_a_time = NAMESPACES.lock().unwrap_or_else(|e| e.into_inner());
    let namespaces_before = project_namespaces();
    let foreign = format!("other-ns-cli-{}", std::process::id());
    assert!(Command::new("ip")
        .args(["netns", "add", &foreign])
        .status()
        .unwrap()
        .success());
    // Removes the foreign namespace, and the killed run's if cleanup did
    // not, however the test ends.
    let mut guard = NamespacesGuard(vec![foreign.clone()]);

    let tmp = tempfile::tempdir().unwrap();
    let text = TINY
        .replace(
            "implementations = [\"baseline\", \"uffd\"]",
            "implementations = [\"uffd\"]",
        )
        .replace("rtt_ms = [0, 2]", "rtt_ms = [50]")
        .replace("chunk_kib = [64]", "chunk_kib = [4]");
    let scenario = write_scenario(tmp.path(), &text);
    let mut child = harness()
        .args([
            "scenario",
            scenario.to_str().unwrap(),
            "--emulation",
            "userspace-link",
            "--out",
        ])
        .arg(tmp.path().join("runs"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while namespaces_since(&namespaces_before).len() < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Let the cell start faulting across the link, then kill without warning.
    std::thread::sleep(std::time::Duration::from_millis(500));
    child.kill().unwrap();
    child.wait().unwrap();
    let left = namespaces_since(&namespaces_before);
    guard.0.extend(left.iter().cloned());
    assert_eq!(
        left.len(),
        3,
        "expected the killed run's src, dst and link: {left:?}"
    );

    let out = run(harness().arg("cleanup"));
    assert!(out.status.success());
    let said = String::from_utf8_lossy(&out.stdout);
    for ns in &left {
        assert!(
            said.contains(ns.as_str()),
            "cleanup did not report {ns}: {said}"
        );
    }
    assert!(
        project_namespaces().is_empty(),
        "{:?}",
        project_namespaces()
    );
    let still_there = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let foreign_kept = String::from_utf8_lossy(&still_there.stdout).contains(&foreign);
    drop(guard);
    assert!(
        foreign_kept,
        "cleanup removed a namespace that is not the project's"
    );
    // The killed run's role process went with its process group? It was a
    // child of the killed harness: make sure none is left serving.
    let roles = Command::new("pgrep")
        .args(["-f", "role remote-backend"])
        .output()
        .unwrap();
    assert!(
        roles.stdout.is_empty(),
        "a role outlived the run: {}",
        String::from_utf8_lossy(&roles.stdout)
    );

    let out = run(harness().arg("cleanup"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to remove"));
}
