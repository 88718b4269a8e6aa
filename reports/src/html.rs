//! `index.html`: the whole report in one self-contained page.
//!
//! No scripts, no web fonts, no external style sheets: the page links only
//! to files beside it (`figures/*.png`, `*.svg`, `*.csv`), so it opens from
//! the file system on a machine without a network.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use results::summary::{SummaryRow, SUMMARY_METRICS};
use results::CellStatus;

use crate::report::{FigureOutcome, FigureStatus};
use crate::run::{fmt_num, value_text, Run};
use crate::thesis::{sig3, Row, Setup};

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes `s`, then turns `code` spans (as catalog texts write them)
/// into `<code>` elements.
fn esc_code(s: &str) -> String {
    let mut out = String::new();
    for (i, part) in esc(s).split('`').enumerate() {
        if i % 2 == 1 {
            out.push_str("<code>");
            out.push_str(part);
            out.push_str("</code>");
        } else {
            out.push_str(part);
        }
    }
    out
}

const STYLE: &str = "
body { font-family: 'DejaVu Sans', sans-serif; margin: 2em auto; max-width: 1500px; padding: 0 1.5em; color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
.meta { color: #555; }
.warn { background: #fff4e0; border-left: 4px solid #e69f00; padding: 0.5em 1em; margin: 0.5em 0; }
figure { margin: 1.5em 0 2.5em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { color: #333; font-size: 0.95em; margin-top: 0.4em; }
figcaption .files { color: #555; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.missing td { color: #555; }
code { background: #f3f3f3; padding: 0 0.2em; }
.wide { overflow-x: auto; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
nav ul { columns: 2; }
";

/// Everything the page shows.
#[derive(Debug)]
pub struct Page<'a> {
    pub run: &'a Run,
    pub figures: &'a [FigureOutcome],
    pub thesis: Result<(&'a Setup, &'a [Row]), String>,
    pub rows: &'a [SummaryRow],
}

fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// Renders the page.
pub fn page(p: &Page) -> String {
    let mut h = String::new();
    let run = p.run;
    let m = run.manifest.as_ref();
    let run_id = m.map_or_else(
        || {
            run.dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        },
        |m| m.run_id.clone(),
    );
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>memsync-bench report: {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        esc(&run_id)
    );
    let _ = writeln!(h, "<h1>memsync-bench: {}</h1>", esc(&run_id));
    if let Some(m) = m {
        let _ = writeln!(
            h,
            "<p class=\"meta\">Scenario <b>{}</b>, profile <b>{}</b>; emulation mode <b>{}</b>; started {}, finished {}; {} of {} planned cell repetitions recorded. Host {} ({}, {} CPUs, kernel {}); git {}{}.</p>",
            esc(&m.scenario),
            esc(&m.profile),
            esc(&m.emulation.mode),
            esc(&m.started_at),
            esc(m.finished_at.as_deref().unwrap_or("never (the run did not finish)")),
            m.cells_recorded.max(run.records.len()),
            m.cells_planned,
            esc(&m.host.hostname),
            esc(&m.host.cpu_model),
            m.host.cpus,
            esc(&m.host.kernel),
            esc(m.build.git_revision.as_deref().unwrap_or("unknown")),
            if m.build.git_dirty == Some(true) {
                " (with uncommitted changes)"
            } else {
                ""
            },
        );
        for w in &m.warnings {
            let _ = writeln!(h, "<p class=\"warn\">Warning: {}</p>", esc(w));
        }
    }
    if let Some(problem) = &run.manifest_problem {
        let _ = writeln!(h, "<p class=\"warn\">{}</p>", esc(problem));
    }
    if run.bad_lines > 0 {
        let _ = writeln!(
            h,
            "<p class=\"warn\">cells.jsonl has {} line(s) that are not records (a run killed mid-write leaves one); they are left out.</p>",
            run.bad_lines
        );
    }

    let rendered: Vec<&FigureOutcome> = p
        .figures
        .iter()
        .filter(|f| matches!(f.status, FigureStatus::Rendered { .. }))
        .collect();
    h.push_str("<nav><h2>Contents</h2><ul>\n");
    for f in &rendered {
        let _ = writeln!(
            h,
            "<li><a href=\"#fig-{}\">{}</a></li>",
            f.spec.id,
            esc(f.spec.title)
        );
    }
    h.push_str("<li><a href=\"#missing\">Figures without data</a></li>\n<li><a href=\"#thesis\">The thesis beside us</a></li>\n<li><a href=\"#summary\">Summary per scenario</a></li>\n<li><a href=\"#not-data\">Skipped, failed and truncated cells</a></li>\n<li><a href=\"#manifest\">Manifest</a></li>\n</ul></nav>\n");

    h.push_str("<h2 id=\"figures\">Figures</h2>\n");
    if rendered.is_empty() {
        h.push_str("<p>No figure has data in this run.</p>\n");
    }
    for f in &rendered {
        let FigureStatus::Rendered { title, notes, .. } = &f.status else {
            continue;
        };
        let id = f.spec.id;
        let _ = writeln!(
            h,
            "<figure id=\"fig-{id}\">\n<img src=\"figures/{id}.png\" alt=\"{}\">\n<figcaption><b>{}</b><br>\n{}<br>\n<span class=\"files\">Files: <a href=\"figures/{id}.svg\">SVG</a> · <a href=\"figures/{id}.png\">PNG</a> · <a href=\"figures/{id}.csv\">CSV</a> (the plotted numbers). DESIGN.md row: “{}”.</span></figcaption>\n</figure>",
            esc(title),
            esc(title),
            notes
                .iter()
                .map(|n| esc_code(n))
                .collect::<Vec<_>>()
                .join("<br>\n"),
            esc(f.spec.design_row),
        );
    }

    missing_section(&mut h, p);
    thesis_section(&mut h, p);
    summary_section(&mut h, p);
    not_data_section(&mut h, run);
    manifest_section(&mut h, run);
    h.push_str("<p class=\"meta\">Written by <code>harness report</code> from manifest.json and cells.jsonl only. Figures are drawn with the bundled DejaVu Sans font; this page needs no network.</p>\n</body>\n</html>\n");
    h
}

fn missing_section(h: &mut String, p: &Page) {
    h.push_str("<h2 id=\"missing\">Figures without data</h2>\n");
    let scenarios = p.run.scenarios();
    let here: Vec<&FigureOutcome> = p
        .figures
        .iter()
        .filter(|f| {
            matches!(
                f.status,
                FigureStatus::MissingData { .. } | FigureStatus::Failed(_)
            )
        })
        .collect();
    if here.is_empty() {
        let _ = writeln!(
            h,
            "<p>Every figure of {} has data.</p>",
            esc(&scenarios.iter().cloned().collect::<Vec<_>>().join(", "))
        );
    } else {
        h.push_str("<p>Figures of the scenario(s) in this run that have no data here:</p>\n<table class=\"missing\"><tr><th>figure</th><th>produced by</th><th>why it is missing</th></tr>\n");
        for f in here {
            let why = match &f.status {
                FigureStatus::MissingData { why } => why.clone(),
                FigureStatus::Failed(e) => format!("could not be drawn: {e}"),
                _ => String::new(),
            };
            let _ = writeln!(
                h,
                "<tr id=\"missing-{}\"><td>{} <small>(<code>{}</code>)</small></td><td>scenario <code>{}</code></td><td>missing data: {}</td></tr>",
                f.spec.id,
                esc(f.spec.title),
                f.spec.id,
                esc(f.spec.scenario),
                esc_code(&why)
            );
        }
        h.push_str("</table>\n");
    }
    let mut other: BTreeMap<&str, Vec<&FigureOutcome>> = BTreeMap::new();
    for f in p.figures {
        if matches!(f.status, FigureStatus::OtherScenario) {
            other.entry(f.spec.scenario).or_default().push(f);
        }
    }
    if !other.is_empty() {
        h.push_str("<p>Figures other scenarios produce (not expected from this run):</p>\n<table class=\"missing\"><tr><th>produced by scenario</th><th>figures</th></tr>\n");
        for (scenario, figs) in other {
            let _ = writeln!(
                h,
                "<tr><td><code>{}</code><br><small>run <code>harness scenario {}</code></small></td><td>{}</td></tr>",
                esc(scenario),
                esc(scenario),
                figs.iter()
                    .map(|f| format!("<span id=\"other-{}\">{}</span>", f.spec.id, esc(f.spec.title)))
                    .collect::<Vec<_>>()
                    .join("<br>")
            );
        }
        h.push_str("</table>\n");
    }
}

fn thesis_section(h: &mut String, p: &Page) {
    h.push_str("<h2 id=\"thesis\">The thesis beside us</h2>\n");
    let (setup, rows) = match &p.thesis {
        Ok(t) => *t,
        Err(e) => {
            let _ = writeln!(
                h,
                "<p class=\"warn\">The thesis reference could not be used: {}</p>",
                esc(e)
            );
            return;
        }
    };
    let ours_host = p.run.manifest.as_ref().map_or_else(
        || "unknown".to_string(),
        |m| format!("{} ({} CPUs)", m.host.cpu_model, m.host.cpus),
    );
    let mode = p.run.emulation_mode().unwrap_or("unknown");
    let _ = writeln!(
        h,
        "<p>Theirs: {}; RTT as {}. Ours: {}; emulation mode <b>{}</b> (the mode that delays the way the thesis did is <code>{}</code>{}). Published values come from <code>scenarios/reference/thesis.toml</code>; a ratio of theirs to a quantity we also measure is derived there and marked so.</p>",
        esc(&setup.machine),
        esc(&setup.rtt),
        esc(&ours_host),
        esc(mode),
        esc(&setup.closest_mode),
        if mode == setup.closest_mode {
            ", which this run used".to_string()
        } else {
            format!(
                "; run with <code>--emulation {}</code> for the closest setup",
                esc(&setup.closest_mode)
            )
        }
    );
    h.push_str("<table><tr><th>quantity</th><th>thesis</th><th>ours</th><th>ours / thesis</th><th>our emulation</th></tr>\n");
    for r in rows {
        let (ours, ratio, emu) = match &r.ours {
            Ok(o) => (
                format!(
                    "{} {} <small>(median, {} cell(s), {} repetition(s))</small>",
                    sig3(o.value),
                    esc(&r.unit),
                    o.cells,
                    o.repetitions
                ),
                r.ratio().map(sig3).unwrap_or_default(),
                o.emulation
                    .iter()
                    .map(|e| {
                        if e == "none" {
                            "none (local)".to_string()
                        } else {
                            e.clone()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            Err(why) => (format!("<i>{}</i>", esc(why)), String::new(), String::new()),
        };
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{ours}</td><td class=\"num\">{ratio}</td><td>{}</td></tr>",
            esc(&r.quantity),
            esc(&r.thesis_text),
            esc(&emu)
        );
    }
    h.push_str("</table>\n");
}

fn summary_section(h: &mut String, p: &Page) {
    h.push_str("<h2 id=\"summary\">Summary per scenario</h2>\n<p>One row per cell; numbers are medians over the data repetitions (ok and truncated).</p>\n");
    let mut by_scenario: BTreeMap<&str, Vec<&SummaryRow>> = BTreeMap::new();
    for r in p.rows {
        by_scenario.entry(&r.scenario).or_default().push(r);
    }
    if by_scenario.is_empty() {
        h.push_str("<p>No cell was recorded.</p>\n");
    }
    for (scenario, rows) in by_scenario {
        let mut params: Vec<String> = Vec::new();
        for r in &rows {
            for k in r.params.keys() {
                if !params.contains(k) {
                    params.push(k.clone());
                }
            }
        }
        let metrics: Vec<&str> = SUMMARY_METRICS
            .iter()
            .copied()
            .filter(|m| rows.iter().any(|r| r.medians.contains_key(m)))
            .collect();
        // Metrics of newer scenarios (link calibration, ...), by name.
        let others: Vec<&str> = rows
            .iter()
            .flat_map(|r| r.other_medians.keys().map(String::as_str))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let _ = writeln!(
            h,
            "<h3>{}</h3>\n<div class=\"wide\"><table><tr><th>implementation</th><th>transport</th><th>emulation</th>",
            esc(scenario)
        );
        for k in &params {
            let _ = write!(h, "<th>{}</th>", esc(k));
        }
        h.push_str("<th>data/reps</th><th>intact</th>");
        for m in metrics.iter().chain(&others) {
            let _ = write!(h, "<th>{}</th>", esc(m));
        }
        h.push_str("</tr>\n");
        for r in rows {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td>",
                esc(&r.implementation),
                esc(r.transport.as_deref().unwrap_or("")),
                esc(&r.emulation)
            );
            for k in &params {
                let _ = write!(
                    h,
                    "<td class=\"num\">{}</td>",
                    esc(&r.params.get(k).map(value_text).unwrap_or_default())
                );
            }
            let _ = write!(
                h,
                "<td class=\"num\">{}/{}</td><td>{}</td>",
                r.ok + r.truncated,
                r.repetitions,
                match r.integrity {
                    Some(true) => "yes",
                    Some(false) => "<b>NO</b>",
                    None => "-",
                }
            );
            if r.ok + r.truncated == 0 {
                let _ = write!(
                    h,
                    "<td colspan=\"{}\"><i>{}</i></td>",
                    (metrics.len() + others.len()).max(1),
                    esc(r.reason.as_deref().unwrap_or("no data"))
                );
            } else {
                for m in &metrics {
                    let _ = write!(
                        h,
                        "<td class=\"num\">{}</td>",
                        r.medians
                            .get(m)
                            .map(|v| num(*v))
                            .unwrap_or_else(|| "-".into())
                    );
                }
                for m in &others {
                    let _ = write!(
                        h,
                        "<td class=\"num\">{}</td>",
                        r.other_medians
                            .get(*m)
                            .map(|v| num(*v))
                            .unwrap_or_else(|| "-".into())
                    );
                }
            }
            h.push_str("</tr>\n");
        }
        h.push_str("</table></div>\n");
    }
}

fn not_data_section(h: &mut String, run: &Run) {
    h.push_str("<h2 id=\"not-data\">Skipped, failed and truncated cells</h2>\n");
    let not_ok: Vec<_> = run
        .records
        .iter()
        .filter(|r| r.cell.status != CellStatus::Ok)
        .collect();
    if not_ok.is_empty() {
        let _ = writeln!(
            h,
            "<p>None: all {} recorded cell repetitions are ok.</p>",
            run.records.len()
        );
        return;
    }
    h.push_str("<p>Truncated repetitions are plotted (with what they measured before their time budget); skipped and failed ones are not.</p>\n<table><tr><th>cell</th><th>repetition</th><th>status</th><th>reason</th></tr>\n");
    for r in not_ok {
        let status = match r.cell.status {
            CellStatus::Ok => "ok",
            CellStatus::Truncated => "truncated",
            CellStatus::Skipped => "skipped",
            CellStatus::Failed => "failed",
        };
        let _ = writeln!(
            h,
            "<tr><td><code>{}</code></td><td class=\"num\">{}</td><td>{status}</td><td>{}</td></tr>",
            esc(&r.cell.cell_id),
            r.cell.repetition,
            esc(r.cell.reason.as_deref().unwrap_or("(no reason recorded)"))
        );
    }
    h.push_str("</table>\n");
}

fn us(ns: u64) -> String {
    fmt_num((ns as f64 / 10.0).round() / 100.0)
}

fn manifest_section(h: &mut String, run: &Run) {
    h.push_str("<h2 id=\"manifest\">Manifest</h2>\n");
    let Some(m) = &run.manifest else {
        h.push_str("<p class=\"warn\">No usable manifest.json: host, build and emulation are unknown.</p>\n");
        return;
    };
    let gib = m.host.memory_bytes as f64 / (1u64 << 30) as f64;
    let _ = writeln!(
        h,
        "<h3>Host</h3>\n<table><tr><th>hostname</th><td>{}</td></tr><tr><th>kernel</th><td>{}</td></tr><tr><th>arch</th><td>{}</td></tr><tr><th>CPU</th><td>{} ({} CPUs)</td></tr><tr><th>memory</th><td>{:.1} GiB</td></tr><tr><th>root</th><td>{}</td></tr></table>",
        esc(&m.host.hostname),
        esc(&m.host.kernel),
        esc(&m.host.arch),
        esc(&m.host.cpu_model),
        m.host.cpus,
        gib,
        if m.host.is_root { "yes" } else { "no" }
    );
    let b = &m.build;
    let _ = writeln!(
        h,
        "<h3>Build</h3>\n<table><tr><th>git revision</th><td><code>{}</code>{}</td></tr><tr><th>version</th><td>{}</td></tr><tr><th>cargo profile</th><td>{} (opt-level {}, debug assertions {})</td></tr><tr><th>fit for numbers</th><td>{}</td></tr></table>",
        esc(b.git_revision.as_deref().unwrap_or("unknown")),
        match b.git_dirty {
            Some(true) => " with uncommitted changes",
            Some(false) => " (clean)",
            None => "",
        },
        esc(&b.version),
        esc(&b.profile),
        esc(&b.opt_level),
        if b.debug_assertions { "on" } else { "off" },
        if b.fit_for_numbers { "yes" } else { "<b>no</b>" }
    );
    let e = &m.emulation;
    let _ = writeln!(
        h,
        "<h3>Emulation</h3>\n<table><tr><th>mode</th><td><b>{}</b></td></tr><tr><th>emulator</th><td>{}</td></tr>",
        esc(&e.mode),
        esc(&e.emulator)
    );
    match &e.accuracy {
        Some(a) => {
            let _ = writeln!(
                h,
                "<tr><th>emulator accuracy</th><td>departure error over {} scheduled departures: p50 {} µs, p90 {} µs, p99 {} µs, p99.9 {} µs, max {} µs</td></tr>",
                a.count,
                us(a.p50),
                us(a.p90),
                us(a.p99),
                us(a.p999),
                us(a.max)
            );
        }
        None => h.push_str("<tr><th>emulator accuracy</th><td>not recorded (no cell went through the emulator, or the run did not finish)</td></tr>\n"),
    }
    h.push_str("</table>\n");
    if !e.calibration.is_empty() {
        let _ = writeln!(
            h,
            "<details><summary>Link calibration before the cells ({} RTT(s))</summary><pre>{}</pre></details>",
            e.calibration.len(),
            esc(&serde_json::to_string_pretty(&e.calibration).unwrap_or_default())
        );
    }
    h.push_str("<h3>Capabilities</h3>\n<table><tr><th>capability</th><th>present</th><th>detail</th><th>enables</th></tr>\n");
    for c in &m.capabilities {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&c.name),
            if c.present { "yes" } else { "<b>no</b>" },
            esc(&c.detail),
            esc(&c.enables)
        );
    }
    h.push_str("</table>\n");
    let planned: BTreeSet<&str> = run
        .records
        .iter()
        .map(|r| r.cell.cell_id.as_str())
        .collect();
    let _ = writeln!(
        h,
        "<p>Cells: {} planned repetitions, {} recorded ({} distinct cells).</p>",
        m.cells_planned,
        run.records.len(),
        planned.len()
    );
    let _ = writeln!(
        h,
        "<details><summary>The scenario as run (profile applied)</summary><pre>{}</pre></details>",
        esc(&serde_json::to_string_pretty(&m.scenario_resolved).unwrap_or_default())
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_spans_become_code_elements_after_escaping() {
        assert_eq!(
            esc_code("needs `mount-managed` <now>"),
            "needs <code>mount-managed</code> &lt;now&gt;"
        );
    }

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            esc("<a href=\"x\">&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
    }
}
