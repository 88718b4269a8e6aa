//! `harness icount`: instruction counts of the `icount-workloads` binary
//! under valgrind's callgrind, against a committed baseline.
//!
//! Wall-clock numbers on a shared two-core machine move by tens of percent
//! with the neighbours' load; the instructions one binary executes on one
//! input do not, so this gate can be strict (1 % by default). The count
//! still depends on the compiler and the dependency versions: the baseline
//! records the valgrind version and the harness revision it came from, and
//! a run says when they differ.
//!
//! Hand-written rather than through gungraun/iai-callgrind: those need a
//! runner binary of the library's exact version installed on every CI
//! machine; this is one valgrind call per workload and a line of its output.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::Context as _;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use serde::{Deserialize, Serialize};

/// Where the committed counts live, relative to the workspace root.
pub const DEFAULT_BASELINE: &str = "results/baselines/icount.json";

/// The callgrind pattern of the counted functions (see the workloads binary).
const TOGGLE: &str = "*measured_*";

/// What `results/baselines/icount.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IcountBaseline {
    pub format: String,
    pub created_at: String,
    pub git_revision: Option<String>,
    pub valgrind: String,
    /// How the workloads binary was built (`icount-workloads --build`).
    pub build: String,
    /// Workload name -> instructions executed inside `measured_*`.
    pub counts: BTreeMap<String, u64>,
}

const FORMAT: &str = "memsync-bench-icount/1";

/// The instructions executed (`Ir`) from a callgrind output file: its
/// `totals:` line (or `summary:`, which older versions write).
pub fn parse_totals(text: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .find_map(|rest| rest.split_whitespace().next()?.parse().ok())
}

fn workloads_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the harness binary")?;
    let bin = exe.with_file_name("icount-workloads");
    if !bin.exists() {
        anyhow::bail!(
            "{} is missing: build it with `cargo build -p harness --bins` (the same profile as this harness)",
            bin.display()
        );
    }
    Ok(bin)
}

/// The workloads binary's build line; an error for a build with debug
/// assertions, whose counts are not those of the code users run.
fn workloads_build(bin: &Path) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .arg("--build")
        .output()
        .with_context(|| format!("running {} --build", bin.display()))?;
    let build = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || build.is_empty() {
        anyhow::bail!("{} --build said nothing", bin.display());
    }
    if build.contains("debug-assertions=true") {
        anyhow::bail!(
            "{} was built with debug assertions ({build}; `cargo test` leaves such a build in target/debug): \
             run `cargo build -p harness --bins` first",
            bin.display()
        );
    }
    Ok(build)
}

fn valgrind_version() -> anyhow::Result<String> {
    let out = Command::new("valgrind").arg("--version").output().context(
        "running `valgrind --version` (is valgrind installed? apt-get install valgrind)",
    )?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Counts one workload: valgrind's exit status must be success and the
/// output file must carry a total.
fn count(bin: &Path, name: &str, scratch: &Path) -> anyhow::Result<u64> {
    let out_file = scratch.join(format!("callgrind.{name}.out"));
    let output = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out_file.display()))
        .arg(format!("--toggle-collect={TOGGLE}"))
        .arg(bin)
        .arg(name)
        .output()
        .with_context(|| format!("running valgrind on {name}"))?;
    if !output.status.success() {
        anyhow::bail!(
            "{name} under callgrind exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .join(" / ")
        );
    }
    let text = std::fs::read_to_string(&out_file)
        .with_context(|| format!("reading {}", out_file.display()))?;
    let total =
        parse_totals(&text).with_context(|| format!("no totals line in {}", out_file.display()))?;
    if total == 0 {
        anyhow::bail!(
            "{name}: callgrind counted 0 instructions inside {TOGGLE}: the measured functions were not found (inlined or renamed?)"
        );
    }
    Ok(total)
}

/// Counts every workload (or those named).
fn count_all(only: &[String]) -> anyhow::Result<BTreeMap<String, u64>> {
    let bin = workloads_binary()?;
    let list = Command::new(&bin)
        .arg("--list")
        .output()
        .with_context(|| format!("running {} --list", bin.display()))?;
    let names: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(str::to_owned)
        .filter(|n| only.is_empty() || only.contains(n))
        .collect();
    if names.is_empty() {
        anyhow::bail!("no workload to count (asked for {:?})", only);
    }
    let scratch = tempfile_dir()?;
    let mut counts = BTreeMap::new();
    for name in names {
        eprintln!("counting {name} ...");
        let n = count(&bin, &name, scratch.path())?;
        counts.insert(name, n);
    }
    Ok(counts)
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempfile_dir() -> anyhow::Result<Scratch> {
    let dir = std::env::temp_dir().join(format!("msb-icount-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(Scratch(dir))
}

/// How one workload's count moved.
#[derive(Debug, Clone, PartialEq)]
pub struct CountChange {
    pub name: String,
    pub base: Option<u64>,
    pub new: u64,
    /// `new / base - 1`.
    pub change: Option<f64>,
    pub regressed: bool,
}

/// Judges `new` against `base` at `threshold` (a fraction).
pub fn judge(
    base: &BTreeMap<String, u64>,
    new: &BTreeMap<String, u64>,
    threshold: f64,
) -> Vec<CountChange> {
    new.iter()
        .map(|(name, &n)| {
            let b = base.get(name).copied();
            let change = b.filter(|b| *b > 0).map(|b| n as f64 / b as f64 - 1.0);
            CountChange {
                name: name.clone(),
                base: b,
                new: n,
                change,
                regressed: change.is_some_and(|c| c > threshold),
            }
        })
        .collect()
}

/// `harness icount`.
pub fn run(
    baseline: &Path,
    update: bool,
    threshold_percent: f64,
    only: &[String],
) -> anyhow::Result<ExitCode> {
    if !(threshold_percent.is_finite() && threshold_percent >= 0.0) {
        anyhow::bail!("--threshold {threshold_percent}: must be a percentage >= 0");
    }
    let valgrind = valgrind_version()?;
    let build = workloads_build(&workloads_binary()?)?;
    let counts = count_all(only)?;
    let revision = crate::host::build_info().git_revision;
    if update {
        let file = IcountBaseline {
            format: FORMAT.to_owned(),
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            git_revision: revision,
            valgrind,
            build,
            counts,
        };
        let mut json = serde_json::to_vec_pretty(&file)?;
        json.push(b'\n');
        if let Some(dir) = baseline.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        results::writer::write_atomically(baseline, &json)?;
        for (name, n) in &file.counts {
            println!("{name:<28} {n:>14}");
        }
        println!("baseline: {}", baseline.display());
        return Ok(ExitCode::SUCCESS);
    }
    let text = std::fs::read(baseline).with_context(|| {
        format!(
            "reading {} (write one with `harness icount --update`)",
            baseline.display()
        )
    })?;
    let base: IcountBaseline = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not an icount baseline", baseline.display()))?;
    if base.format != FORMAT {
        anyhow::bail!(
            "{}: format `{}`, this harness reads `{FORMAT}`",
            baseline.display(),
            base.format
        );
    }
    if base.build != build {
        anyhow::bail!(
            "the baseline counted a build `{}`, this one is `{build}`: counts are not comparable",
            base.build
        );
    }
    if base.valgrind != valgrind {
        eprintln!(
            "WARNING: baseline counted with {}, now {valgrind}: counts may differ for that reason",
            base.valgrind
        );
    }
    let changes = judge(&base.counts, &counts, threshold_percent / 100.0);
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(["workload", "baseline Ir", "now Ir", "change", "verdict"]);
    for c in &changes {
        t.add_row([
            c.name.clone(),
            c.base.map_or_else(|| "-".into(), |b| b.to_string()),
            c.new.to_string(),
            c.change
                .map_or_else(|| "-".into(), |x| format!("{:+.3}%", x * 100.0)),
            if c.regressed {
                "REGRESSED".to_owned()
            } else if c.base.is_none() {
                "new (no baseline)".to_owned()
            } else if c.change.is_some_and(|x| x < -threshold_percent / 100.0) {
                "improved".to_owned()
            } else {
                "unchanged".to_owned()
            },
        ]);
    }
    println!("{t}");
    println!(
        "baseline from revision {}, threshold {threshold_percent}%",
        base.git_revision.as_deref().unwrap_or("unknown")
    );
    let regressed = changes.iter().filter(|c| c.regressed).count();
    if regressed > 0 {
        println!(
            "FAIL: {regressed} workload(s) execute more instructions than the baseline allows"
        );
        Ok(ExitCode::from(crate::compare_cli::REGRESSION_EXIT))
    } else {
        println!("ok: no instruction-count regression");
        Ok(ExitCode::SUCCESS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_line_is_read_and_absent_totals_are_none() {
        let text =
            "version: 1\ncmd: x\nevents: Ir\nfn=(1) main\n5 10\nsummary: 1234\ntotals: 1234\n";
        assert_eq!(parse_totals(text), Some(1234));
        assert_eq!(parse_totals("summary: 99\n"), Some(99));
        assert_eq!(parse_totals("events: Ir\n"), None);
        assert_eq!(parse_totals("totals: lots\n"), None);
    }

    #[test]
    fn a_count_over_the_threshold_regresses_and_one_within_does_not() {
        let base = BTreeMap::from([("a".to_owned(), 1000), ("b".to_owned(), 1000)]);
        let new = BTreeMap::from([
            ("a".to_owned(), 1011),
            ("b".to_owned(), 1009),
            ("c".to_owned(), 5),
        ]);
        let j = judge(&base, &new, 0.01);
        assert!(j[0].regressed);
        assert!(!j[1].regressed);
        assert!(!j[2].regressed && j[2].base.is_none());
    }
}
