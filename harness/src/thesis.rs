//! `harness scenario thesis`: every built-in scenario of the study, one
//! after the other, at one profile, with a page that links their reports.
//!
//! Each scenario runs as its own `harness scenario NAME` child process, so
//! a scenario that fails or is interrupted ends only itself, and each run
//! directory is exactly what running that scenario alone leaves.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::Context as _;
use serde::Serialize;

/// The name that selects this meta-scenario.
pub const NAME: &str = "thesis";

/// How one scenario of the set ended.
#[derive(Debug, Serialize)]
struct Part {
    scenario: String,
    /// The child's exit code; `None` when a signal ended it.
    exit_code: Option<i32>,
    wall_s: f64,
    /// Its run directory, relative to the set's directory.
    run_dir: Option<String>,
}

/// Runs every built-in scenario at `profile` below a new `out/<time>-thesis`.
pub fn run(profile: &str, emulation: &str, out: &Path) -> anyhow::Result<ExitCode> {
    let set_dir = out.join(crate::runner::run_id(NAME));
    std::fs::create_dir_all(&set_dir).with_context(|| format!("creating {}", set_dir.display()))?;
    let exe = std::env::current_exe().context("finding the harness binary")?;
    let names: Vec<&str> = crate::scenario::built_in_names().collect();
    let mut parts = Vec::new();
    for (i, name) in names.iter().enumerate() {
        eprintln!(
            "== thesis: scenario {} of {}: {name} ({profile} profile)",
            i + 1,
            names.len()
        );
        let start = Instant::now();
        let mut command = Command::new(&exe);
        command.args(["scenario", name, "--profile", profile, "--out"]);
        command.arg(&set_dir);
        // Link calibrations measure the emulators their file names; the
        // in-memory scenarios cross no link.
        if takes_emulation(name) {
            command.args(["--emulation", emulation]);
        }
        let before = run_dirs(&set_dir)?;
        let status = command
            .status()
            .with_context(|| format!("running scenario {name}"))?;
        let run_dir = run_dirs(&set_dir)?
            .into_iter()
            .find(|d| !before.contains(d))
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()));
        parts.push(Part {
            scenario: (*name).to_owned(),
            exit_code: status.code(),
            wall_s: start.elapsed().as_secs_f64(),
            run_dir,
        });
        // Ctrl-C reached the child too: stop the set, keep what ran.
        if status.code() == Some(130) || crate::interrupt::requested() {
            eprintln!("== thesis: interrupted; the scenarios that ran keep their results");
            break;
        }
    }
    let index = write_index(&set_dir, profile, &parts)?;
    std::fs::write(
        set_dir.join("thesis.json"),
        serde_json::to_vec_pretty(&parts).context("encoding the set")?,
    )
    .with_context(|| format!("writing {}", set_dir.display()))?;
    for p in &parts {
        println!(
            "{:<20} {:>8.1} s  {}",
            p.scenario,
            p.wall_s,
            match p.exit_code {
                Some(0) => "ok".to_owned(),
                Some(code) => format!("exit {code}"),
                None => "killed by a signal".to_owned(),
            }
        );
    }
    println!("all reports: {}", index.display());
    let all_ok = parts.len() == names.len() && parts.iter().all(|p| p.exit_code == Some(0));
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn takes_emulation(name: &str) -> bool {
    !matches!(
        crate::scenario::load_any(name, "default"),
        Ok(crate::scenario::AnyScenario::LinkCalibration(_)
            | crate::scenario::AnyScenario::HashThroughput(_)
            | crate::scenario::AnyScenario::PrecopyCost(_))
    )
}

fn run_dirs(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        if path.join("manifest.json").is_file() {
            dirs.push(path);
        }
    }
    Ok(dirs)
}

/// A page linking each scenario's report, offline like the reports.
fn write_index(set_dir: &Path, profile: &str, parts: &[Part]) -> anyhow::Result<PathBuf> {
    let mut rows = String::new();
    for p in parts {
        let status = match p.exit_code {
            Some(0) => "ok".to_owned(),
            Some(code) => format!("exit {code}"),
            None => "killed by a signal".to_owned(),
        };
        let link = match &p.run_dir {
            Some(dir) if set_dir.join(dir).join("index.html").is_file() => format!(
                "<a href=\"{}/index.html\">{}</a>",
                reports::html::esc(dir),
                reports::html::esc(dir)
            ),
            Some(dir) => format!("{} (no report)", reports::html::esc(dir)),
            None => "no run directory".to_owned(),
        };
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{:.1} s</td><td>{link}</td></tr>\n",
            reports::html::esc(&p.scenario),
            reports::html::esc(&status),
            p.wall_s
        ));
    }
    let html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>memsync-bench: the study ({profile} profile)</title>\n\
         <style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:4px 12px;text-align:left}}</style></head>\n\
         <body><h1>memsync-bench: every scenario of the study</h1>\n\
         <p>Profile <b>{profile}</b>. Each scenario ran on its own; its report lists its figures, and the \
         figures whose scenario is not built yet as missing.</p>\n\
         <table><tr><th>scenario</th><th>outcome</th><th>wall time</th><th>report</th></tr>\n{rows}</table>\n\
         </body></html>\n",
        profile = reports::html::esc(profile),
    );
    let index = set_dir.join("index.html");
    std::fs::write(&index, html).with_context(|| format!("writing {}", index.display()))?;
    Ok(index)
}
