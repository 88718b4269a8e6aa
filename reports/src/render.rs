//! Drawing a [`FigureData`] as SVG and PNG with plotters.
//!
//! One layout for every figure: a title block (what is compared, under
//! which emulation mode; the run underneath), the panels side by side, a
//! legend column to their right (never over the data), and the notes a
//! reader needs under everything (what the whiskers are, which settings
//! the cells share, what is missing). Both axes are drawn in transformed
//! coordinates (log10 where the scale is logarithmic) with explicit tick
//! positions, so the ticks are the data's own values or whole decades.

use std::collections::BTreeSet;
use std::path::Path;

use plotters::backend::{BitMapBackend, SVGBackend};
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::catalog::{Extra, Scale, XAxis};
use crate::figure::FigureData;
use crate::font::FAMILY;
use crate::palette::Style;
use crate::run::fmt_num;
use crate::stats::BandKind;

/// A figure that could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("drawing {figure} as {format}: {message}")]
pub struct RenderError {
    pub figure: String,
    pub format: &'static str,
    pub message: String,
}

const LEGEND_W: u32 = 280;
const MIN_PANEL_W: u32 = 560;
const PLOT_H: u32 = 460;
const PAD: i32 = 16;
const TITLE_SIZE: f64 = 22.0;
const SUBTITLE_SIZE: f64 = 14.0;
const NOTE_SIZE: f64 = 13.0;
const TICK_SIZE: f64 = 14.0;
const DESC_SIZE: f64 = 15.0;
const LEGEND_SIZE: f64 = 14.0;
const MARKER_R: f64 = 5.0;

const INK: RGBColor = RGBColor(0x22, 0x22, 0x22);
const MUTED: RGBColor = RGBColor(0x55, 0x55, 0x55);
const GRID: RGBColor = RGBColor(0xd0, 0xd0, 0xd0);
const GRID_LIGHT: RGBColor = RGBColor(0xee, 0xee, 0xee);
const EXTRA_LINE: RGBColor = RGBColor(0x44, 0x44, 0x44);

fn rgb(style: &Style) -> RGBColor {
    RGBColor(style.rgb.0, style.rgb.1, style.rgb.2)
}

fn text_width(text: &str, size: f64) -> u32 {
    (FAMILY, size)
        .into_font()
        .box_size(text)
        .map(|(w, _)| w)
        // The bundled font always measures; this is only a fallback.
        .unwrap_or_else(|_| (text.chars().count() as f64 * size * 0.6) as u32)
}

/// Greedy word wrap to `max_w` pixels.
fn wrap(text: &str, size: f64, max_w: u32) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let candidate = if line.is_empty() {
            word.to_string()
        } else {
            format!("{line} {word}")
        };
        if !line.is_empty() && text_width(&candidate, size) > max_w {
            lines.push(std::mem::replace(&mut line, word.to_string()));
        } else {
            line = candidate;
        }
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// The emulation modes of the drawn cells, in words.
pub fn emulation_text(fig: &FigureData) -> String {
    let modes: Vec<&str> = fig
        .emulation
        .iter()
        .map(String::as_str)
        .filter(|m| *m != "none")
        .collect();
    let local = fig.emulation.contains("none");
    match (modes.as_slice(), local) {
        ([], _) => "no network (local cells only)".to_string(),
        (m, false) => format!("emulation: {}", m.join(", ")),
        (m, true) => format!("emulation: {} (baseline: local, no network)", m.join(", ")),
    }
}

/// The figure's title: what is compared, and under which emulation mode.
pub fn title(fig: &FigureData) -> String {
    format!("{} — {}", fig.spec.title, emulation_text(fig))
}

fn join_values(values: &[String]) -> String {
    values.join(", ")
}

/// What a reader must know to read the figure, one sentence each; the
/// image shows them under the plot and the HTML report as the caption.
pub fn notes(fig: &FigureData) -> Vec<String> {
    let mut notes = Vec::new();
    let ns: BTreeSet<usize> = fig
        .panels
        .iter()
        .flat_map(|p| p.series.iter())
        .flat_map(|s| {
            s.points
                .iter()
                .map(|p| p.band.n)
                .chain(s.reference.map(|b| b.n))
        })
        .collect();
    let n_text = match (ns.first(), ns.last()) {
        (Some(a), Some(b)) if a == b => format!("{a}"),
        (Some(a), Some(b)) => format!("{a} to {b}"),
        _ => "0".into(),
    };
    let mut whiskers: Vec<&str> = Vec::new();
    let mut point = "median of the repetitions".to_string();
    for k in &fig.band_kinds {
        match k {
            BandKind::HistP1P99 => {
                let q = fig
                    .spec
                    .measures
                    .iter()
                    .find_map(|m| match m.source {
                        crate::catalog::Source::HistMerged { q, .. } => Some(q),
                        _ => None,
                    })
                    .unwrap_or(0.5);
                point = format!(
                    "p{} of all samples of all repetitions (histograms merged)",
                    fmt_num(q * 100.0)
                );
                whiskers.push("p1-p99 of those samples");
            }
            BandKind::P10P90 => whiskers.push("p10-p90 across repetitions (where 5 or more)"),
            BandKind::MinMax => whiskers.push("min-max across repetitions"),
            BandKind::Single => whiskers.push("none where a point has a single repetition"),
        }
    }
    notes.push(format!(
        "Points: {point}; {n_text} repetition(s) per point. Whiskers: {}.",
        if whiskers.is_empty() {
            "none".to_string()
        } else {
            whiskers.join("; ")
        }
    ));
    let refs: BTreeSet<&str> = fig
        .panels
        .iter()
        .flat_map(|p| p.series.iter())
        .filter(|s| s.reference.is_some())
        .map(|s| s.label.as_str())
        .collect();
    if !refs.is_empty() {
        let shaded = fig
            .panels
            .iter()
            .flat_map(|p| p.series.iter())
            .filter_map(|s| s.reference)
            .any(|b| b.high > b.low);
        notes.push(format!(
            "Dashed horizontal line: {}, which has no {} axis (the same at every x){}.",
            refs.into_iter().collect::<Vec<_>>().join(", "),
            fig.x_dim(),
            if shaded {
                "; shading: its spread, as the whiskers"
            } else {
                ""
            }
        ));
    }
    for (h, extra) in fig.hlines.iter().zip(
        fig.spec
            .extras
            .iter()
            .filter(|e| matches!(e, Extra::HLine { .. })),
    ) {
        if let Extra::HLine {
            source, filters, ..
        } = extra
        {
            let name = match source {
                crate::catalog::Source::Metric(m) => m.to_string(),
                crate::catalog::Source::HistQuantile { histogram, q }
                | crate::catalog::Source::HistMerged { histogram, q } => {
                    format!("p{} of {histogram}", fmt_num(q * 100.0))
                }
            };
            let cells = filters
                .iter()
                .map(|f| match f.cond {
                    crate::catalog::Cond::Eq(v) => format!("{} = {}", f.param, fmt_num(v)),
                    crate::catalog::Cond::Gt(v) => format!("{} > {}", f.param, fmt_num(v)),
                    crate::catalog::Cond::Is(v) => format!("{} = {v}", f.param),
                })
                .collect::<Vec<_>>()
                .join(", ");
            notes.push(format!(
                "Dotted line: {}, the median of {name} over {} repetition(s){}.",
                h.label,
                h.band.n,
                if cells.is_empty() {
                    String::new()
                } else {
                    format!(" of the {cells} cells")
                }
            ));
        }
    }
    if fig.spec.extras.contains(&Extra::Identity) {
        notes.push("Thin dashed diagonal: measured equals configured.".into());
    }
    if let XAxis::Param {
        scale: Scale::Log, ..
    } = fig.spec.x
    {
        let has_zero = fig
            .panels
            .iter()
            .flat_map(|p| p.series.iter())
            .flat_map(|s| s.points.iter())
            .any(|p| p.x == 0.0);
        if has_zero {
            notes.push(
                "x axis logarithmic; x = 0 is drawn one decade below the smallest positive value."
                    .into(),
            );
        }
    }
    if !fig.constant.is_empty() {
        let c: Vec<String> = fig
            .constant
            .iter()
            .map(|(d, v)| format!("{d} = {v}"))
            .collect();
        notes.push(format!(
            "Every cell that has the setting: {}.",
            c.join(", ")
        ));
    }
    for p in &fig.pinned {
        notes.push(format!(
            "{} held at {} (this figure does not draw {}; see the summary table).",
            p.dim,
            p.value,
            join_values(&p.others)
        ));
    }
    if !fig.missing_expected.is_empty() {
        notes.push(format!(
            "Not in this run: {} (no data cells of {} {}).",
            join_values(&fig.missing_expected),
            fig.spec.scenario,
            if fig.missing_expected.len() == 1 {
                "for it"
            } else {
                "for them"
            }
        ));
    }
    if !fig.dropped.is_empty() {
        notes.push(format!(
            "Left out: {} value(s): {}.",
            fig.dropped.len(),
            fig.dropped
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    notes
}

/// An axis in plot coordinates (log10 of the value on log scales).
#[derive(Debug, Clone)]
struct Axis {
    lo: f64,
    hi: f64,
    ticks: Vec<(f64, String)>,
    light: Vec<f64>,
    log: bool,
    /// Where 0 sits on a log x axis.
    zero_at: Option<f64>,
}

impl Axis {
    fn pos(&self, v: f64) -> Option<f64> {
        if !self.log {
            return Some(v);
        }
        if v > 0.0 {
            Some(v.log10())
        } else if v == 0.0 {
            self.zero_at
        } else {
            None
        }
    }

    fn label(&self, p: f64) -> String {
        self.ticks
            .iter()
            .find(|(t, _)| (t - p).abs() < 1e-9)
            .map(|(_, s)| s.clone())
            .unwrap_or_default()
    }

    /// The value range where the axis is a true scale (excludes the zero
    /// stand-in of a log x axis).
    fn real_range(&self) -> (f64, f64) {
        if self.log {
            let lo = self.zero_at.map_or(self.lo, |z| z + 0.5).max(self.lo);
            (10f64.powf(lo), 10f64.powf(self.hi))
        } else {
            (self.lo, self.hi)
        }
    }
}

/// A linear coordinate over plot units whose grid lines are exactly the
/// given ticks (plotters' own `with_key_points` wrapper cannot carry a
/// label formatter for floats).
#[derive(Debug, Clone)]
struct Ticked {
    lo: f64,
    hi: f64,
    bold: Vec<f64>,
    light: Vec<f64>,
}

impl Ranged for Ticked {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let span = self.hi - self.lo;
        let frac = if span == 0.0 {
            0.0
        } else {
            (value - self.lo) / span
        };
        let pixels = f64::from(limit.1 - limit.0);
        limit.0 + (pixels * frac).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            self.light.clone()
        } else {
            self.bold.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

impl Axis {
    fn coord(&self) -> Ticked {
        Ticked {
            lo: self.lo,
            hi: self.hi,
            bold: self.ticks.iter().map(|t| t.0).collect(),
            light: self.light.clone(),
        }
    }
}

fn tick_text(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e6).contains(&a) {
        format!("{v:.0e}")
    } else {
        fmt_num(v)
    }
}

/// A "nice" step (1, 2 or 5 times a power of ten) for about `n` ticks.
fn nice_step(span: f64, n: f64) -> f64 {
    let raw = span / n;
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn linear_ticks(lo: f64, hi: f64) -> Vec<(f64, String)> {
    let step = nice_step(hi - lo, 6.0);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + step * 1e-9 {
        // Avoid "-0" and float dust such as 0.30000000000000004.
        let v = (t / step).round() * step;
        out.push((v, tick_text(if v == 0.0 { 0.0 } else { v })));
        t += step;
    }
    out
}

/// Whole decades over [lo, hi] (log10 units), with 2 and 5 when the axis
/// spans few decades; light lines at the other integers.
fn log_ticks(lo: f64, hi: f64) -> (Vec<(f64, String)>, Vec<f64>) {
    let (d0, d1) = (lo.floor() as i32, hi.ceil() as i32);
    let few = hi - lo <= 2.5;
    let mut ticks = Vec::new();
    let mut light = Vec::new();
    for d in d0..=d1 {
        for m in 1..=9 {
            let v = f64::from(m) * 10f64.powi(d);
            let p = v.log10();
            if p < lo - 1e-9 || p > hi + 1e-9 {
                continue;
            }
            if m == 1 || (few && (m == 2 || m == 5)) {
                ticks.push((p, tick_text(v)));
            } else if hi - lo <= 6.0 {
                light.push(p);
            }
        }
    }
    (ticks, light)
}

fn y_axis(fig: &FigureData) -> Axis {
    let mut values: Vec<f64> = Vec::new();
    for s in fig.panels.iter().flat_map(|p| p.series.iter()) {
        for b in s.points.iter().map(|p| &p.band).chain(s.reference.iter()) {
            values.extend([b.low, b.median, b.high]);
        }
    }
    for h in &fig.hlines {
        values.extend([h.band.low, h.band.median, h.band.high]);
    }
    values.retain(|v| v.is_finite());
    match fig.spec.y_scale {
        Scale::Log => {
            let logs: Vec<f64> = values
                .iter()
                .filter(|v| **v > 0.0)
                .map(|v| v.log10())
                .collect();
            let min = logs.iter().copied().fold(f64::INFINITY, f64::min);
            let max = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            // End on whole decades unless data sit close to one; then
            // leave a sixth of a decade so nothing rides the frame.
            const ROOM: f64 = 0.15;
            let (lo, mut hi) = if min.is_finite() {
                let lo = if min - min.floor() >= ROOM {
                    min.floor()
                } else {
                    min - ROOM
                };
                let hi = if max.ceil() - max >= ROOM {
                    max.ceil()
                } else {
                    max + ROOM
                };
                (lo, hi)
            } else {
                (0.0, 1.0)
            };
            if hi - lo < 1.0 {
                hi = lo + 1.0;
            }
            let (ticks, light) = log_ticks(lo, hi);
            Axis {
                lo,
                hi,
                ticks,
                light,
                log: true,
                zero_at: None,
            }
        }
        Scale::Linear => {
            let min = values.iter().copied().fold(0.0, f64::min);
            let max = values.iter().copied().fold(0.0, f64::max);
            let hi = if max > min { max * 1.08 } else { min + 1.0 };
            let lo = if min < 0.0 { min * 1.08 } else { 0.0 };
            let ticks = linear_ticks(lo, hi);
            Axis {
                lo,
                hi,
                ticks,
                light: Vec::new(),
                log: false,
                zero_at: None,
            }
        }
    }
}

/// Keeps ticks whose labels do not collide at `px_per_unit`.
fn thin_ticks(ticks: Vec<(f64, String)>, px_per_unit: f64) -> Vec<(f64, String)> {
    let mut kept: Vec<(f64, String)> = Vec::new();
    for (p, label) in ticks {
        let half = f64::from(text_width(&label, TICK_SIZE)) / 2.0 + 6.0;
        let clash = kept.last().is_some_and(|(q, l)| {
            let other = f64::from(text_width(l, TICK_SIZE)) / 2.0 + 6.0;
            (p - q) * px_per_unit < half + other
        });
        if !clash {
            kept.push((p, label));
        }
    }
    kept
}

fn x_axis(fig: &FigureData, plot_w: f64) -> Axis {
    match fig.spec.x {
        XAxis::Category { .. } => {
            let n = fig.categories.len().max(1) as f64;
            Axis {
                lo: -0.6,
                hi: n - 0.4,
                ticks: fig
                    .categories
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (i as f64, c.clone()))
                    .collect(),
                light: Vec::new(),
                log: false,
                zero_at: None,
            }
        }
        XAxis::Param { scale, .. } => {
            let mut xs: Vec<f64> = fig
                .panels
                .iter()
                .flat_map(|p| p.series.iter())
                .flat_map(|s| s.points.iter().map(|p| p.x))
                .filter(|x| x.is_finite())
                .collect();
            xs.sort_by(f64::total_cmp);
            xs.dedup();
            let positive: Vec<f64> = xs.iter().copied().filter(|x| *x > 0.0).collect();
            let log = scale == Scale::Log && !positive.is_empty();
            let zero_at = (log && xs.contains(&0.0)).then(|| positive[0].log10() - 1.0);
            let mut axis = Axis {
                lo: 0.0,
                hi: 1.0,
                ticks: Vec::new(),
                light: Vec::new(),
                log,
                zero_at,
            };
            let pts: Vec<f64> = xs.iter().filter_map(|x| axis.pos(*x)).collect();
            let (min, max) = match (pts.first(), pts.last()) {
                (Some(a), Some(b)) => (*a, *b),
                _ => (0.0, 1.0),
            };
            let span = (max - min).max(if log { 1.0 } else { max.abs().max(1.0) });
            let pad = span * 0.06;
            if log {
                axis.lo = min - pad;
                axis.hi = max + pad;
            } else {
                axis.lo = min.min(0.0) - if min < 0.0 { pad } else { 0.0 };
                axis.hi = max + pad;
            }
            let candidates: Vec<(f64, String)> = if xs.len() <= 12 {
                xs.iter()
                    .filter_map(|x| axis.pos(*x).map(|p| (p, fmt_num(*x))))
                    .collect()
            } else if log {
                let (mut t, _) = log_ticks(axis.lo, axis.hi);
                if let Some(z) = zero_at {
                    t.insert(0, (z, "0".into()));
                }
                t
            } else {
                linear_ticks(axis.lo, axis.hi)
            };
            let px_per_unit = plot_w / (axis.hi - axis.lo);
            axis.ticks = thin_ticks(candidates, px_per_unit);
            axis
        }
    }
}

/// Pixel sizes of one figure.
struct Layout {
    w: u32,
    panel_w: u32,
    title: Vec<String>,
    subtitle: Vec<String>,
    notes: Vec<String>,
    title_h: u32,
    footer_h: u32,
}

impl Layout {
    fn h(&self) -> u32 {
        self.title_h + PLOT_H + self.footer_h
    }
}

fn layout(fig: &FigureData, subtitle: &str) -> Layout {
    let panels = fig.panels.len().max(1) as u32;
    let widest_category = fig
        .categories
        .iter()
        .map(|c| text_width(c, TICK_SIZE))
        .max()
        .unwrap_or(0);
    let per_category = fig.categories.len() as u32 * (widest_category + 28) + 130;
    let panel_w = MIN_PANEL_W.max(per_category);
    let w = LEGEND_W + panels * panel_w;
    let text_w = w - 2 * PAD as u32;
    let title = wrap(&title(fig), TITLE_SIZE, text_w);
    let subtitle = wrap(subtitle, SUBTITLE_SIZE, text_w);
    let notes: Vec<String> = notes(fig)
        .iter()
        .flat_map(|n| wrap(n, NOTE_SIZE, text_w))
        .collect();
    let title_h = 14 + title.len() as u32 * 28 + subtitle.len() as u32 * 19 + 8;
    let footer_h = 12 + notes.len() as u32 * 18 + 10;
    Layout {
        w,
        panel_w,
        title,
        subtitle,
        notes,
        title_h,
        footer_h,
    }
}

fn text_style(size: f64, color: &'static RGBColor) -> TextStyle<'static> {
    TextStyle::from((FAMILY, size).into_font()).color(color)
}

/// Draws `fig` into `svg` and `png`; `subtitle` names the run.
pub fn render(fig: &FigureData, subtitle: &str, svg: &Path, png: &Path) -> Result<(), RenderError> {
    let lay = layout(fig, subtitle);
    let err = |format: &'static str| {
        move |message: String| RenderError {
            figure: fig.spec.id.to_string(),
            format,
            message,
        }
    };
    {
        let root = SVGBackend::new(svg, (lay.w, lay.h())).into_drawing_area();
        draw(&root, fig, &lay).map_err(err("SVG"))?;
        root.present().map_err(|e| err("SVG")(e.to_string()))?;
    }
    {
        let root = BitMapBackend::new(png, (lay.w, lay.h())).into_drawing_area();
        draw(&root, fig, &lay).map_err(err("PNG"))?;
        root.present().map_err(|e| err("PNG")(e.to_string()))?;
    }
    Ok(())
}

fn s<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    fig: &FigureData,
    lay: &Layout,
) -> Result<(), String> {
    root.fill(&WHITE).map_err(s)?;
    let (top, rest) = root.split_vertically(lay.title_h);
    let (plots, footer) = rest.split_vertically(PLOT_H);
    let (panels_area, legend) =
        plots.split_horizontally(lay.panel_w * fig.panels.len().max(1) as u32);

    // Title block.
    let mut y = 14;
    for line in &lay.title {
        top.draw(&Text::new(
            line.as_str(),
            (PAD, y),
            text_style(TITLE_SIZE, &INK),
        ))
        .map_err(s)?;
        y += 28;
    }
    for line in &lay.subtitle {
        top.draw(&Text::new(
            line.as_str(),
            (PAD, y),
            text_style(SUBTITLE_SIZE, &MUTED),
        ))
        .map_err(s)?;
        y += 19;
    }

    let plot_w = f64::from(lay.panel_w) - 84.0 - 16.0;
    let xa = x_axis(fig, plot_w);
    let ya = y_axis(fig);
    let areas = panels_area.split_evenly((1, fig.panels.len().max(1)));
    for (panel, area) in fig.panels.iter().zip(areas.iter()) {
        draw_panel(area, fig, panel, &xa, &ya)?;
    }
    draw_legend(&legend, fig)?;

    let mut y = 12;
    for line in &lay.notes {
        footer
            .draw(&Text::new(
                line.as_str(),
                (PAD, y),
                text_style(NOTE_SIZE, &MUTED),
            ))
            .map_err(s)?;
        y += 18;
    }
    Ok(())
}

fn line_style(style: &Style) -> ShapeStyle {
    rgb(style).stroke_width(2)
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    fig: &FigureData,
    panel: &crate::figure::Panel,
    xa: &Axis,
    ya: &Axis,
) -> Result<(), String> {
    let mut builder = ChartBuilder::on(area);
    builder
        .margin_top(6)
        .margin_right(16)
        .margin_left(4)
        .x_label_area_size(58)
        .y_label_area_size(84);
    if let Some(f) = &panel.facet {
        let dim = fig.spec.facet.unwrap_or("");
        builder.caption(format!("{dim} = {f}"), (FAMILY, 16.0).into_font());
    }
    let mut chart = builder
        .build_cartesian_2d(xa.coord(), ya.coord())
        .map_err(s)?;

    let x_label = |v: &f64| xa.label(*v);
    let y_label = |v: &f64| ya.label(*v);
    let x_desc = match fig.spec.x {
        XAxis::Param { label, .. } | XAxis::Category { label, .. } => label,
    };
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(x_desc)
        .y_desc(fig.spec.y_label)
        .label_style(text_style(TICK_SIZE, &INK))
        .axis_desc_style(text_style(DESC_SIZE, &INK))
        .bold_line_style(GRID.stroke_width(1))
        .light_line_style(GRID_LIGHT.stroke_width(1))
        .axis_style(MUTED.stroke_width(1))
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label);
    if matches!(fig.spec.x, XAxis::Category { .. }) {
        mesh.disable_x_mesh();
    }
    mesh.draw().map_err(s)?;

    // Reference bands and lines first, so points stay on top.
    for sd in &panel.series {
        let Some(b) = sd.reference else { continue };
        let c = rgb(&sd.style);
        if let (Some(lo), Some(hi)) = (ya.pos(b.low), ya.pos(b.high)) {
            if hi > lo {
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(xa.lo, lo), (xa.hi, hi)],
                        c.mix(0.12).filled(),
                    )))
                    .map_err(s)?;
            }
        }
        if let Some(y) = ya.pos(b.median) {
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(xa.lo, y), (xa.hi, y)],
                    10,
                    6,
                    line_style(&sd.style),
                ))
                .map_err(s)?;
        }
    }
    for extra in fig.spec.extras {
        if let Extra::Identity = extra {
            let (x0, x1) = xa.real_range();
            let (y0, y1) = ya.real_range();
            let (a, b) = (x0.max(y0), x1.min(y1));
            if let (Some(pa), Some(pb), Some(qa), Some(qb)) =
                (xa.pos(a), xa.pos(b), ya.pos(a), ya.pos(b))
            {
                if b > a {
                    chart
                        .draw_series(DashedLineSeries::new(
                            vec![(pa, qa), (pb, qb)],
                            6,
                            5,
                            EXTRA_LINE.mix(0.7).stroke_width(1),
                        ))
                        .map_err(s)?;
                }
            }
        }
    }
    for h in &fig.hlines {
        if let Some(y) = ya.pos(h.band.median) {
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(xa.lo, y), (xa.hi, y)],
                    2,
                    4,
                    EXTRA_LINE.stroke_width(2),
                ))
                .map_err(s)?;
        }
    }

    // Expected categories without data say so in their slot.
    if matches!(fig.spec.x, XAxis::Category { .. }) {
        let y_mid = (ya.lo + ya.hi) / 2.0;
        let style = text_style(NOTE_SIZE, &MUTED).pos(plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Center,
            plotters::style::text_anchor::VPos::Center,
        ));
        for (i, c) in fig.categories.iter().enumerate() {
            let x = i as f64;
            if panel
                .series
                .iter()
                .any(|s| s.points.iter().any(|p| p.x == x))
            {
                continue;
            }
            let what = if fig.missing_expected.contains(c) {
                "not run"
            } else {
                "no data"
            };
            let half = text_width(what, NOTE_SIZE) as i32 / 2 + 5;
            chart
                .draw_series(std::iter::once(
                    EmptyElement::at((x, y_mid))
                        + Rectangle::new([(-half, -10), (half, 10)], WHITE.filled())
                        + Text::new(what, (0, 0), style.clone()),
                ))
                .map_err(s)?;
        }
    }

    // Categorical axes: series sharing a category sit side by side.
    let dodge = |si: usize, x: f64| -> f64 {
        if !matches!(fig.spec.x, XAxis::Category { .. }) {
            return 0.0;
        }
        let sharing: Vec<usize> = panel
            .series
            .iter()
            .enumerate()
            .filter(|(_, s)| s.points.iter().any(|p| p.x == x))
            .map(|(i, _)| i)
            .collect();
        let m = sharing.len();
        let k = sharing.iter().position(|i| *i == si).unwrap_or(0);
        let w = (0.7 / m as f64).min(0.22);
        (k as f64 - (m as f64 - 1.0) / 2.0) * w
    };

    for (si, sd) in panel.series.iter().enumerate() {
        let c = rgb(&sd.style);
        let pts: Vec<(f64, f64, f64, f64)> = sd
            .points
            .iter()
            .filter_map(|p| {
                let x = xa.pos(p.x)? + dodge(si, p.x);
                let y = ya.pos(p.band.median)?;
                let lo = ya.pos(p.band.low).unwrap_or(y);
                let hi = ya.pos(p.band.high).unwrap_or(y);
                Some((x, y, lo, hi))
            })
            .collect();
        if matches!(fig.spec.x, XAxis::Param { .. }) && pts.len() > 1 {
            let line: Vec<(f64, f64)> = pts.iter().map(|p| (p.0, p.1)).collect();
            match sd.measure {
                0 => chart
                    .draw_series(LineSeries::new(line, line_style(&sd.style)))
                    .map(|_| ()),
                1 => chart
                    .draw_series(DashedLineSeries::new(line, 8, 5, line_style(&sd.style)))
                    .map(|_| ()),
                _ => chart
                    .draw_series(DashedLineSeries::new(line, 2, 4, line_style(&sd.style)))
                    .map(|_| ()),
            }
            .map_err(s)?;
        }
        // Whiskers with caps.
        let whisker = c.stroke_width(2);
        chart
            .draw_series(
                pts.iter()
                    .filter(|p| p.3 > p.2)
                    .map(|p| PathElement::new(vec![(p.0, p.2), (p.0, p.3)], whisker)),
            )
            .map_err(s)?;
        for end in [2usize, 3] {
            chart
                .draw_series(pts.iter().filter(|p| p.3 > p.2).map(|p| {
                    let y = if end == 2 { p.2 } else { p.3 };
                    EmptyElement::at((p.0, y)) + PathElement::new(vec![(-5, 0), (5, 0)], whisker)
                }))
                .map_err(s)?;
        }
        // Markers: filled for the first measure, hollow for the others.
        let outline = sd.style.marker.outline(MARKER_R);
        let hollow = sd.measure > 0;
        chart
            .draw_series(pts.iter().map(|p| {
                let fill = if hollow { WHITE.filled() } else { c.filled() };
                EmptyElement::at((p.0, p.1)) + Polygon::new(outline.clone(), fill)
            }))
            .map_err(s)?;
        let mut closed = outline.clone();
        if let Some(first) = outline.first() {
            closed.push(*first);
        }
        let edge = if hollow {
            c.stroke_width(2)
        } else {
            WHITE.stroke_width(1)
        };
        chart
            .draw_series(
                pts.iter()
                    .map(|p| EmptyElement::at((p.0, p.1)) + PathElement::new(closed.clone(), edge)),
            )
            .map_err(s)?;
    }
    Ok(())
}

enum Swatch {
    Series { style: Style, measure: usize },
    Reference(Style),
    HLine,
    Identity,
}

struct Entry {
    swatch: Swatch,
    label: String,
    detail: Option<String>,
}

fn legend_entries(fig: &FigureData) -> Vec<Entry> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut seen = BTreeSet::new();
    let unit = fig.unit();
    for p in &fig.panels {
        for sd in &p.series {
            if sd.points.is_empty() || !seen.insert(sd.label.clone()) {
                continue;
            }
            entries.push(Entry {
                swatch: Swatch::Series {
                    style: sd.style,
                    measure: sd.measure,
                },
                label: sd.label.clone(),
                detail: None,
            });
        }
    }
    let mut ref_labels: Vec<String> = Vec::new();
    for sd in fig.panels.iter().flat_map(|p| p.series.iter()) {
        if sd.reference.is_some() && !ref_labels.contains(&sd.label) {
            ref_labels.push(sd.label.clone());
        }
    }
    for label in ref_labels {
        let mut values = Vec::new();
        let mut style = None;
        for p in &fig.panels {
            for sd in p.series.iter().filter(|s| s.label == label) {
                if let Some(b) = sd.reference {
                    style = Some(sd.style);
                    let v = format!("{} {unit}", tick_value(b.median));
                    values.push(match &p.facet {
                        Some(f) => format!("{f}: {v}"),
                        None => v,
                    });
                }
            }
        }
        if let Some(style) = style {
            entries.push(Entry {
                swatch: Swatch::Reference(style),
                label,
                detail: Some(values.join(", ")),
            });
        }
    }
    for h in &fig.hlines {
        entries.push(Entry {
            swatch: Swatch::HLine,
            label: h.label.clone(),
            detail: Some(format!("{} {unit}", tick_value(h.band.median))),
        });
    }
    if fig.spec.extras.contains(&Extra::Identity) {
        entries.push(Entry {
            swatch: Swatch::Identity,
            label: "measured = configured".into(),
            detail: None,
        });
    }
    entries
}

/// A value for a legend: three significant digits.
fn tick_value(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let digits = (2 - v.abs().log10().floor() as i32).max(0) as usize;
    format!("{v:.digits$}")
}

fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    fig: &FigureData,
) -> Result<(), String> {
    let entries = legend_entries(fig);
    let lines = matches!(fig.spec.x, XAxis::Param { .. });
    let mut y: i32 = 40;
    let x0 = 12;
    area.draw(&Text::new(
        fig.spec.series.name(),
        (x0, y - 26),
        text_style(LEGEND_SIZE, &MUTED),
    ))
    .map_err(s)?;
    let text_w = LEGEND_W - 60;
    for e in entries {
        let cy = y + 8;
        match &e.swatch {
            Swatch::Series { style, measure } => {
                let c = rgb(style);
                let line = vec![(x0, cy), (x0 + 36, cy)];
                match measure {
                    // Categorical figures draw no lines between points.
                    _ if !lines => Ok(()),
                    0 => area.draw(&PathElement::new(line, c.stroke_width(2))),
                    1 => area.draw(&plotters::element::DashedPathElement::new(
                        line,
                        8,
                        5,
                        c.stroke_width(2),
                    )),
                    _ => area.draw(&plotters::element::DashedPathElement::new(
                        line,
                        2,
                        4,
                        c.stroke_width(2),
                    )),
                }
                .map_err(s)?;
                let outline: Vec<(i32, i32)> = style
                    .marker
                    .outline(MARKER_R)
                    .into_iter()
                    .map(|(dx, dy)| (x0 + 18 + dx, cy + dy))
                    .collect();
                let fill = if *measure > 0 {
                    WHITE.filled()
                } else {
                    c.filled()
                };
                area.draw(&Polygon::new(outline.clone(), fill)).map_err(s)?;
                if *measure > 0 {
                    let mut closed = outline.clone();
                    closed.push(outline[0]);
                    area.draw(&PathElement::new(closed, c.stroke_width(2)))
                        .map_err(s)?;
                }
            }
            Swatch::Reference(style) => {
                area.draw(&plotters::element::DashedPathElement::new(
                    vec![(x0, cy), (x0 + 36, cy)],
                    10,
                    6,
                    rgb(style).stroke_width(2),
                ))
                .map_err(s)?;
            }
            Swatch::HLine => {
                area.draw(&plotters::element::DashedPathElement::new(
                    vec![(x0, cy), (x0 + 36, cy)],
                    2,
                    4,
                    EXTRA_LINE.stroke_width(2),
                ))
                .map_err(s)?;
            }
            Swatch::Identity => {
                area.draw(&plotters::element::DashedPathElement::new(
                    vec![(x0, cy + 6), (x0 + 36, cy - 6)],
                    6,
                    5,
                    EXTRA_LINE.mix(0.7).stroke_width(1),
                ))
                .map_err(s)?;
            }
        }
        for line in wrap(&e.label, LEGEND_SIZE, text_w) {
            area.draw(&Text::new(
                line,
                (x0 + 46, y),
                text_style(LEGEND_SIZE, &INK),
            ))
            .map_err(s)?;
            y += 19;
        }
        if let Some(d) = &e.detail {
            for line in wrap(d, NOTE_SIZE - 1.0, text_w) {
                area.draw(&Text::new(
                    line,
                    (x0 + 46, y),
                    text_style(NOTE_SIZE - 1.0, &MUTED),
                ))
                .map_err(s)?;
                y += 16;
            }
        }
        y += 8;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_ticks_are_decades_and_add_2_5_on_short_spans() {
        let (t, light) = log_ticks(-1.0, 5.0);
        let labels: Vec<&str> = t.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["0.1", "1", "10", "100", "1000", "10000", "100000"]);
        assert!(!light.is_empty());
        let (t, _) = log_ticks(0.0, 2.0);
        let labels: Vec<&str> = t.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["1", "2", "5", "10", "20", "50", "100"]);
    }

    #[test]
    fn linear_ticks_start_at_zero_with_nice_steps() {
        let t = linear_ticks(0.0, 108.0);
        assert_eq!(t.first().unwrap().1, "0");
        assert!(t.iter().any(|(_, l)| l == "100"), "{t:?}");
        assert!(t.len() >= 4 && t.len() <= 12, "{t:?}");
    }

    #[test]
    fn crowded_tick_labels_are_thinned() {
        let ticks = vec![(0.0, "20".into()), (0.01, "25".into()), (1.0, "50".into())];
        let kept = thin_ticks(ticks, 100.0);
        let labels: Vec<&str> = kept.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["20", "50"]);
    }

    #[test]
    fn wrap_keeps_lines_within_width() {
        crate::font::ensure_registered();
        let text = "Points: median of the repetitions (3 per point). Whiskers: min-max across repetitions.";
        let lines = wrap(text, NOTE_SIZE, 200);
        assert!(lines.len() > 1);
        assert!(lines
            .iter()
            .all(|l| text_width(l, NOTE_SIZE) <= 200 || !l.contains(' ')));
        assert_eq!(lines.join(" "), text);
    }

    #[test]
    fn legend_values_have_three_significant_digits() {
        assert_eq!(tick_value(0.742), "0.742");
        assert_eq!(tick_value(8113.1), "8113");
        assert_eq!(tick_value(12.345), "12.3");
    }
}
