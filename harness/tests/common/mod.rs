//! Helpers the `harness` binary's end-to-end test files share.

#![allow(dead_code)] // each test file uses its own subset

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The binary under test.
pub fn harness() -> Command {
    Command::new(env!("CARGO_BIN_EXE_harness"))
}

/// Runs `cmd`, printing what it said when it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("the harness binary runs");
    if !out.status.success() {
        eprintln!(
            "stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Runs a command that must fail, and returns what it said on stderr.
pub fn run_failing(cmd: &mut Command) -> String {
    let out = cmd.output().expect("the harness binary runs");
    assert!(!out.status.success(), "{cmd:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Writes a scenario file into `dir`.
pub fn write_scenario(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("scenario.toml");
    fs::write(&path, text).expect("the temporary directory is writable");
    path
}

/// The one run directory below `out`.
pub fn run_dir(out: &Path) -> PathBuf {
    let mut dirs: Vec<PathBuf> = fs::read_dir(out)
        .expect("the run's output directory exists")
        .map(|e| e.expect("a directory entry").path())
        .collect();
    assert_eq!(
        dirs.len(),
        1,
        "expected one run directory in {}",
        out.display()
    );
    dirs.pop().expect("one directory")
}

/// A run directory's records.
pub fn cells(dir: &Path) -> Vec<Value> {
    fs::read_to_string(dir.join("cells.jsonl"))
        .expect("the run wrote cells.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is a record"))
        .collect()
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The project's network namespaces that exist now.
pub fn project_namespaces() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("msb-"))
        .map(String::from)
        .collect()
}

/// The project's namespaces that exist now and were not in `before`: a
/// test judges only what it made, not what a killed earlier run on the
/// same machine may have left.
pub fn namespaces_since(before: &[String]) -> Vec<String> {
    project_namespaces()
        .into_iter()
        .filter(|n| !before.contains(n))
        .collect()
}
