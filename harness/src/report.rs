//! `harness report RUN_DIR`: re-renders a run's figures and `index.html`
//! from its records, without running anything; `harness scenario` calls
//! [`after_run`] when a run ends.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::Context as _;
use reports::{FigureStatus, ReportOutcome};

fn summary(outcome: &ReportOutcome) -> String {
    let (rendered, missing, other, failed) = outcome.counts();
    let mut s = format!(
        "{rendered} figure(s) drawn, {missing} of this run's scenario without data, {other} from other scenarios"
    );
    if failed > 0 {
        s.push_str(&format!(", {failed} could not be drawn"));
    }
    s
}

/// Renders `dir` and prints what it wrote; with `open`, shows index.html.
pub fn run(dir: &Path, open: bool) -> anyhow::Result<ExitCode> {
    let outcome = reports::write_report(dir)
        .with_context(|| format!("rendering the report of {}", dir.display()))?;
    for f in &outcome.figures {
        match &f.status {
            FigureStatus::Rendered { .. } => println!("  drawn    {}", f.spec.id),
            FigureStatus::MissingData { why } => {
                println!(
                    "  missing  {} (scenario {}: {why})",
                    f.spec.id, f.spec.scenario
                )
            }
            FigureStatus::Failed(e) => println!("  FAILED   {}: {e}", f.spec.id),
            FigureStatus::OtherScenario => {}
        }
    }
    println!("{}", summary(&outcome));
    println!("report: {}", outcome.index.display());
    if open {
        if let Err(why) = open_in_browser(&outcome.index) {
            println!(
                "not opened: {why}; open {} in a browser",
                outcome.index.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Renders the report of a run that just ended. The records are on disk
/// whatever happens here, so a failure is reported, not fatal.
pub fn after_run(dir: &Path) {
    match reports::write_report(dir) {
        Ok(outcome) => {
            println!("{}", summary(&outcome));
            println!("report: {}", outcome.index.display());
        }
        Err(e) => println!(
            "warning: the report could not be written ({e}); the records are intact, retry with `harness report {}`",
            dir.display()
        ),
    }
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

fn open_in_browser(index: &Path) -> Result<(), String> {
    let opener = find_in_path("xdg-open")
        .ok_or("xdg-open is not installed (no desktop opener on this machine)")?;
    let status = Command::new(&opener)
        .arg(index)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("{} could not start: {e}", opener.display()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} exited with {status} (no browser or display?)",
            opener.display()
        ))
    }
}
