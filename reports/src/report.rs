//! Rendering a whole run: every catalog figure, the CSVs, `index.html`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::catalog::{FigureSpec, CATALOG};
use crate::figure;
use crate::html;
use crate::render;
use crate::run::{Run, RunError};
use crate::thesis::{self, Reference};

/// Errors that stop a report from being written at all. A single figure
/// that cannot be drawn does not stop it: the index says why.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: results::WriterError,
    },
    #[error("the bundled font could not be registered with plotters")]
    Font,
}

/// What became of one catalog figure.
#[derive(Debug, Clone)]
pub enum FigureStatus {
    /// Drawn: `figures/<id>.svg`, `.png` and `.csv` exist.
    Rendered {
        title: String,
        notes: Vec<String>,
        files: Vec<PathBuf>,
    },
    /// The run has the figure's scenario but not the data it needs.
    MissingData { why: String },
    /// The figure belongs to a scenario this run did not run.
    OtherScenario,
    /// The data exist but drawing failed.
    Failed(String),
}

/// One catalog figure and what became of it.
#[derive(Debug, Clone)]
pub struct FigureOutcome {
    pub spec: &'static FigureSpec,
    pub status: FigureStatus,
}

/// A written report.
#[derive(Debug, Clone)]
pub struct ReportOutcome {
    pub index: PathBuf,
    pub figures: Vec<FigureOutcome>,
}

impl ReportOutcome {
    /// Counts for a one-line summary: (rendered, missing data, other
    /// scenarios, failed).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let mut c = (0, 0, 0, 0);
        for f in &self.figures {
            match f.status {
                FigureStatus::Rendered { .. } => c.0 += 1,
                FigureStatus::MissingData { .. } => c.1 += 1,
                FigureStatus::OtherScenario => c.2 += 1,
                FigureStatus::Failed(_) => c.3 += 1,
            }
        }
        c
    }
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ReportError + 'a {
    move |source| ReportError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

fn subtitle(run: &Run) -> String {
    match &run.manifest {
        Some(m) => format!(
            "Scenario {} ({} profile), run {}; host {}: {}, {} CPUs, kernel {}; git {}",
            m.scenario,
            m.profile,
            m.run_id,
            m.host.hostname,
            m.host.cpu_model,
            m.host.cpus,
            m.host.kernel,
            m.build
                .git_revision
                .as_deref()
                .map_or("unknown", |r| &r[..r.len().min(12)])
        ),
        None => format!("run {} (no manifest)", run.dir.display()),
    }
}

/// Renders `run_dir`: reads its records, writes `figures/` and
/// `index.html` into it, and returns what became of every figure.
pub fn write_report(run_dir: &Path) -> Result<ReportOutcome, ReportError> {
    if !crate::font::ensure_registered() {
        return Err(ReportError::Font);
    }
    let run = Run::load(run_dir)?;
    let fig_dir = run_dir.join("figures");
    fs::create_dir_all(&fig_dir).map_err(io_err("creating", &fig_dir))?;
    let scenarios = run.scenarios();
    let sub = subtitle(&run);

    let mut figures = Vec::new();
    for spec in CATALOG {
        let status = if !scenarios.contains(spec.scenario) {
            FigureStatus::OtherScenario
        } else {
            let data = figure::build(spec, &run);
            if data.is_empty() {
                let mut why = format!("needs {}", spec.needs);
                if !data.dropped.is_empty() {
                    why.push_str(&format!(
                        "; {} value(s) could not be drawn: {}",
                        data.dropped.len(),
                        data.dropped.join("; ")
                    ));
                }
                FigureStatus::MissingData { why }
            } else {
                draw_one(&data, &sub, &fig_dir)?
            }
        };
        if !matches!(status, FigureStatus::Rendered { .. }) {
            // A figure drawn by an earlier report of this run, whose data
            // the catalog no longer finds, must not linger unreferenced.
            for ext in ["svg", "png", "csv"] {
                let stale = fig_dir.join(format!("{}.{ext}", spec.id));
                if stale.exists() {
                    fs::remove_file(&stale).map_err(io_err("removing", &stale))?;
                }
            }
        }
        figures.push(FigureOutcome { spec, status });
    }

    let reference = Reference::bundled();
    let rows = reference
        .as_ref()
        .map(|r| thesis::compare(r, &run))
        .unwrap_or_default();
    let cells: Vec<results::CellRecord> = run.records.iter().map(|r| r.cell.clone()).collect();
    let summary = results::summarize(&cells);
    let page = html::page(&html::Page {
        run: &run,
        figures: &figures,
        thesis: reference
            .as_ref()
            .map(|r| (&r.setup, rows.as_slice()))
            .map_err(|e| e.to_string()),
        rows: &summary,
    });
    let index = run_dir.join("index.html");
    results::writer::write_atomically(&index, page.as_bytes()).map_err(|source| {
        ReportError::Write {
            path: index.clone(),
            source,
        }
    })?;
    Ok(ReportOutcome { index, figures })
}

fn draw_one(
    data: &figure::FigureData,
    subtitle: &str,
    fig_dir: &Path,
) -> Result<FigureStatus, ReportError> {
    let id = data.spec.id;
    let svg = fig_dir.join(format!("{id}.svg"));
    let png = fig_dir.join(format!("{id}.png"));
    let csv_path = fig_dir.join(format!("{id}.csv"));
    let mut csv = Vec::new();
    figure::write_csv(data, &mut csv).map_err(|e| ReportError::Io {
        action: "formatting",
        path: csv_path.clone(),
        source: io::Error::other(e.to_string()),
    })?;
    results::writer::write_atomically(&csv_path, &csv).map_err(|source| ReportError::Write {
        path: csv_path.clone(),
        source,
    })?;
    if let Err(e) = render::render(data, subtitle, &svg, &png) {
        return Ok(FigureStatus::Failed(e.to_string()));
    }
    Ok(FigureStatus::Rendered {
        title: render::title(data),
        notes: render::notes(data),
        files: vec![svg, png, csv_path],
    })
}
