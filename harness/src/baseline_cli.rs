//! `harness baseline update NAME --run RUN_DIR`: a run's samples, machine
//! and git revision kept as `results/baselines/<NAME>.json` for
//! `harness compare` to judge later runs against.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use results::{Baseline, SampleSet};

/// Where baselines live, relative to the workspace root.
pub const DEFAULT_DIR: &str = "results/baselines";

/// Names become file names: letters, digits, `-`, `_` and `.`, not leading.
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        anyhow::bail!(
            "baseline name `{name}`: use letters, digits, `-`, `_` and `.` (not first), e.g. `ci`"
        )
    }
}

/// Writes `dir/NAME.json` from `run_dirs` (their samples pooled); returns
/// its path.
pub fn update(name: &str, run_dirs: &[PathBuf], dir: &Path) -> anyhow::Result<PathBuf> {
    check_name(name)?;
    let Some((first, rest)) = run_dirs.split_first() else {
        anyhow::bail!("no run directory given (--run RUN_DIR, repeatable)");
    };
    let mut samples = SampleSet::from_run_dir(first)?;
    for other in rest {
        for d in samples.absorb(SampleSet::from_run_dir(other)?) {
            eprintln!(
                "WARNING: {} differs from {}: {d}",
                other.display(),
                first.display()
            );
        }
    }
    let run_dir = first;
    if samples.cells.values().all(|c| c.samples.is_empty()) {
        anyhow::bail!(
            "{} has no measured repetition (every cell skipped or failed): nothing to keep",
            run_dir.display()
        );
    }
    let build = &samples.machine.build;
    if !build.fit_for_numbers {
        eprintln!(
            "WARNING: {} was built as {} opt-level {} (not fit for numbers); the baseline keeps it",
            run_dir.display(),
            build.profile,
            build.opt_level
        );
    }
    if build.git_dirty == Some(true) {
        eprintln!(
            "WARNING: {} ran on a tree with uncommitted changes; the baseline's revision {} does not describe it exactly",
            run_dir.display(),
            build.git_revision.as_deref().unwrap_or("unknown")
        );
    }
    for (id, cell) in &samples.cells {
        if cell.failed > 0 {
            eprintln!(
                "WARNING: {id}: {} repetition(s) failed in the run",
                cell.failed
            );
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{name}.json"));
    let cells = samples.cells.len();
    let values: usize = samples
        .cells
        .values()
        .flat_map(|c| c.samples.values())
        .map(Vec::len)
        .sum();
    let revision = build.git_revision.clone();
    Baseline {
        format: Baseline::FORMAT.to_owned(),
        name: name.to_owned(),
        created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        source_run: run_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(" "),
        samples,
    }
    .write(&path)?;
    println!(
        "baseline {name}: {cells} cells, {values} samples, revision {} -> {}",
        revision.as_deref().unwrap_or("unknown"),
        path.display()
    );
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_are_not_plain_file_names_are_refused() {
        check_name("ci").unwrap();
        check_name("ci-2026.12").unwrap();
        for bad in ["", "../x", "a/b", ".hidden", "a b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_missing_run_directory_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = update("ci", &[dir.path().join("no-such-run")], dir.path()).unwrap_err();
        assert!(format!("{err:#}").contains("no-such-run"), "{err:#}");
    }
}
