//! `harness compare BASE NEW`: two runs (or baselines) compared cell by cell
//! and metric by metric, as a terminal table and Markdown, with an exit
//! code for CI. The statistics are in [`results::compare`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use results::compare::{CompareConfig, CompareReport, MetricComparison, Verdict};
use results::SampleSet;

/// The exit code of a comparison that found a gating regression.
pub const REGRESSION_EXIT: u8 = 1;

/// How a comparison is judged and where it is written.
#[derive(Debug, Clone, clap::Args)]
pub struct GateOptions {
    /// TOML file of noise thresholds and metric directions: `threshold =
    /// 0.05`, `alpha = 0.01`, `[metrics.NAME] threshold = 0.1, direction =
    /// "lower"|"higher"`. Default: 5 % for every metric, p < 0.01.
    #[arg(long)]
    pub thresholds: Option<PathBuf>,
    /// Also write the comparison as Markdown to this file.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Exit non-zero only for a significant regression larger than this
    /// many percent (a report-only gate for wall-clock metrics: CI uses 20).
    /// Default 0: every significant regression beyond its noise threshold.
    #[arg(long, default_value_t = 0.0)]
    pub fail_above: f64,
    /// Print and write everything, but exit 0 whatever regressed (a gate
    /// on wall-clock numbers of a machine shared with other work).
    #[arg(long)]
    pub report_only: bool,
}

/// Reads the thresholds file, or the defaults without one.
pub fn load_config(path: Option<&Path>) -> anyhow::Result<CompareConfig> {
    let config = match path {
        None => CompareConfig::default(),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading thresholds file {}", p.display()))?;
            toml::from_str(&text)
                .with_context(|| format!("parsing thresholds file {}", p.display()))?
        }
    };
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("thresholds: {e}"))?;
    Ok(config)
}

/// `harness compare BASE NEW`.
pub fn run(base: &Path, new: &Path, options: &GateOptions) -> anyhow::Result<ExitCode> {
    let base_set = SampleSet::load(base)?;
    let new_set = SampleSet::load(new)?;
    judge(
        &base_set,
        &base.display().to_string(),
        &new_set,
        &new.display().to_string(),
        options,
    )
}

/// Compares two loaded sets, prints the table (and writes Markdown), and
/// returns the exit code.
pub fn judge(
    base: &SampleSet,
    base_label: &str,
    new: &SampleSet,
    new_label: &str,
    options: &GateOptions,
) -> anyhow::Result<ExitCode> {
    if !(options.fail_above.is_finite() && options.fail_above >= 0.0) {
        anyhow::bail!(
            "--fail-above {}: must be a percentage >= 0",
            options.fail_above
        );
    }
    let config = load_config(options.thresholds.as_deref())?;
    let report = results::compare(base, new, &config);
    let labels = cell_labels(base, new);
    let fail_above = options.fail_above / 100.0;
    let failing = report.regressions(fail_above);

    for line in warnings(base, new, &report) {
        eprintln!("WARNING: {line}");
    }
    println!("{}", table(&report, &labels));
    println!("{}", counts_line(&report));
    println!("{}", verdict_line(&report, &failing, options.fail_above));
    if let Some(path) = &options.markdown {
        let md = markdown(
            base,
            base_label,
            new,
            new_label,
            &report,
            &labels,
            &failing,
            options.fail_above,
        );
        std::fs::write(path, md).with_context(|| format!("writing {}", path.display()))?;
        println!("markdown: {}", path.display());
    }
    if options.report_only && !failing.is_empty() {
        println!("--report-only: exit status 0 all the same");
    }
    Ok(if failing.is_empty() || options.report_only {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(REGRESSION_EXIT)
    })
}

/// What a reader must know before trusting the numbers.
fn warnings(base: &SampleSet, new: &SampleSet, report: &CompareReport) -> Vec<String> {
    let mut out = Vec::new();
    if !report.machine_differences.is_empty() {
        out.push(format!(
            "the two sets were NOT measured on the same machine/build; differences can be the machine's, not the code's: {}",
            report.machine_differences.join("; ")
        ));
    }
    if base.scenario != new.scenario || base.profile != new.profile {
        out.push(format!(
            "different scenarios: {} ({}) against {} ({})",
            base.scenario, base.profile, new.scenario, new.profile
        ));
    }
    if !report.only_in_base.is_empty() {
        out.push(format!(
            "{} cell(s) only in the base (not compared): {}",
            report.only_in_base.len(),
            report.only_in_base.join(", ")
        ));
    }
    if !report.only_in_new.is_empty() {
        out.push(format!(
            "{} cell(s) only in the new set (not compared): {}",
            report.only_in_new.len(),
            report.only_in_new.join(", ")
        ));
    }
    for (cell, n) in &report.new_failures {
        out.push(format!(
            "{cell}: {n} repetition(s) FAILED in the new set (see its cells.jsonl)"
        ));
    }
    if report.rows.is_empty() {
        out.push("no cell and metric is present in both sets: nothing was compared".into());
    }
    out
}

/// A short name per cell: the implementation and the parameters that vary
/// between the cells, so rows stay readable.
fn cell_labels(base: &SampleSet, new: &SampleSet) -> BTreeMap<String, String> {
    let cells: Vec<_> = base.cells.iter().chain(&new.cells).collect();
    let mut values: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for (_, c) in &cells {
        for (k, v) in &c.params {
            values.entry(k).or_default().insert(v.to_string());
        }
    }
    let varying: BTreeSet<&str> = values
        .iter()
        .filter(|(k, vs)| vs.len() > 1 || cells.iter().any(|(_, c)| !c.params.contains_key(**k)))
        .map(|(k, _)| *k)
        .collect();
    cells
        .iter()
        .map(|(id, c)| {
            let mut label = c.implementation.clone();
            for (k, v) in &c.params {
                if varying.contains(k.as_str()) && k != "access_kib" {
                    let _ = write!(label, " {k}={}", results::summary::param_text(v));
                }
            }
            ((*id).clone(), label)
        })
        .collect()
}

fn percent(change: Option<f64>) -> String {
    change.map_or_else(|| "-".into(), |c| format!("{:+.1}%", c * 100.0))
}

fn ci_text(row: &MetricComparison) -> String {
    row.ratio_ci.map_or_else(
        || "-".into(),
        |(lo, hi)| format!("{:+.1}%..{:+.1}%", (lo - 1.0) * 100.0, (hi - 1.0) * 100.0),
    )
}

fn number(v: f64) -> String {
    if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else if v == 0.0 || v.abs() >= 0.01 {
        format!("{v:.4}")
    } else {
        format!("{v:.3e}")
    }
}

fn direction_text(row: &MetricComparison) -> &'static str {
    match row.direction {
        Some(results::Direction::Lower) => "lower",
        Some(results::Direction::Higher) => "higher",
        None => "?",
    }
}

fn columns() -> [&'static str; 10] {
    [
        "cell",
        "metric",
        "better",
        "base median",
        "new median",
        "change",
        "CI (1-alpha)",
        "p",
        "verdict",
        "note",
    ]
}

fn cells_of(row: &MetricComparison, labels: &BTreeMap<String, String>) -> [String; 10] {
    [
        labels
            .get(&row.cell_id)
            .cloned()
            .unwrap_or_else(|| row.cell_id.clone()),
        row.metric.clone(),
        direction_text(row).into(),
        number(row.base_median),
        number(row.new_median),
        percent(row.change()),
        ci_text(row),
        format!("{:.4}{}", row.p_value, if row.exact { "" } else { "~" }),
        row.verdict.name().into(),
        row.note.clone().unwrap_or_else(|| {
            format!(
                "n={}/{}, threshold {:.0}%",
                row.base_n,
                row.new_n,
                row.threshold * 100.0
            )
        }),
    ]
}

/// The terminal table: every compared cell and metric.
pub fn table(report: &CompareReport, labels: &BTreeMap<String, String>) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(columns());
    for row in &report.rows {
        t.add_row(cells_of(row, labels));
    }
    t
}

fn counts_line(report: &CompareReport) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &report.rows {
        *counts.entry(r.verdict.name()).or_default() += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
    format!(
        "{} comparisons: {} (gating: {})",
        report.rows.len(),
        parts.join(", "),
        report.rows.iter().filter(|r| r.gates).count()
    )
}

fn verdict_line(report: &CompareReport, failing: &[&MetricComparison], fail_above: f64) -> String {
    let regressed = report
        .rows
        .iter()
        .filter(|r| r.gates && r.verdict == Verdict::Regressed)
        .count();
    if !failing.is_empty() {
        format!(
            "FAIL: {} significant regression(s) beyond {fail_above}%",
            failing.len()
        )
    } else if regressed > 0 {
        format!(
            "ok: {regressed} significant regression(s), none beyond {fail_above}% (reported only)"
        )
    } else {
        "ok: no significant regression".into()
    }
}

#[allow(clippy::too_many_arguments)]
fn markdown(
    base: &SampleSet,
    base_label: &str,
    new: &SampleSet,
    new_label: &str,
    report: &CompareReport,
    labels: &BTreeMap<String, String>,
    failing: &[&MetricComparison],
    fail_above: f64,
) -> String {
    let mut md = String::new();
    let revision = |s: &SampleSet| {
        s.machine
            .build
            .git_revision
            .clone()
            .unwrap_or_else(|| "unknown".into())
    };
    let _ = writeln!(md, "## Benchmark comparison\n");
    let _ = writeln!(
        md,
        "- base: `{base_label}` (run {}, revision {})",
        base.run_id,
        revision(base)
    );
    let _ = writeln!(
        md,
        "- new: `{new_label}` (run {}, revision {})",
        new.run_id,
        revision(new)
    );
    let _ = writeln!(md, "- **{}**", verdict_line(report, failing, fail_above));
    let _ = writeln!(md, "- {}\n", counts_line(report));
    for w in warnings(base, new, report) {
        let _ = writeln!(md, "> **WARNING:** {w}\n");
    }
    let _ = writeln!(md, "| {} |", columns().join(" | "));
    let _ = writeln!(md, "|{}", " --- |".repeat(columns().len()));
    for row in &report.rows {
        let cells = cells_of(row, labels).map(|c| c.replace('|', "\\|"));
        let _ = writeln!(md, "| {} |", cells.join(" | "));
    }
    md
}
