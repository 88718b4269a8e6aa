//! Turns a run's records into what people read: the terminal summary
//! table, figures (SVG, PNG and the plotted numbers as CSV) and a
//! self-contained `index.html`.
//!
//! Reports read only records (`manifest.json`, `cells.jsonl`), never logs,
//! so any run directory can be re-rendered at any time.
//!
//! # Layout
//!
//! - [`table`]: the summary table `harness scenario` prints.
//! - [`catalog`]: one declarative entry per figure of the study.
//! - [`run`]: reading a run directory.
//! - [`figure`]: from records to the numbers a figure draws (and its CSV).
//! - [`stats`]: medians and bands over repetitions.
//! - [`palette`]: one colour and marker per implementation or transport.
//! - [`render`]: drawing with plotters, text in the bundled font ([`font`]).
//! - [`thesis`]: the study's published numbers beside ours.
//! - [`html`]: the index page.
//! - [`report`]: all of it for one run directory ([`write_report`]).

pub mod catalog;
pub mod figure;
pub mod font;
pub mod html;
pub mod palette;
pub mod render;
pub mod report;
pub mod run;
pub mod stats;
pub mod table;
pub mod thesis;

pub use report::{write_report, FigureOutcome, FigureStatus, ReportError, ReportOutcome};
pub use table::summary_table;
