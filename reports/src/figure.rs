//! From a catalog entry and a run's records to the numbers a figure draws.
//!
//! Steps, in order: keep the data cells of the entry's scenario; apply its
//! filters; pin every other dimension that varies (to the first value the
//! scenario declared) so no point pools different settings; split into
//! panels by the facet; group by series and x; fold each group's
//! repetitions into a [`Band`]. The result, [`FigureData`], is exactly
//! what is drawn and exported as CSV.

use std::collections::{BTreeMap, BTreeSet};
use std::io;

use crate::catalog::{Cond, Extra, FigureSpec, Filter, Scale, SeriesKey, Source, XAxis};
use crate::palette::{self, Style};
use crate::run::{fmt_num, value_number, value_text, Record, Run};
use crate::stats::{band_of, band_of_histograms, Band, BandKind, BandPolicy};
use hdrhistogram::Histogram;

/// One point: where on x, and the band.
#[derive(Debug, Clone, PartialEq)]
pub struct PointData {
    /// The x value (a category's index for categorical axes).
    pub x: f64,
    /// The x value as the CSV and the tick label show it.
    pub x_text: String,
    pub band: Band,
}

/// One series of one measure in one panel.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesData {
    /// The series value (implementation, transport, backend, ...).
    pub key: String,
    pub label: String,
    /// Index into the spec's measures.
    pub measure: usize,
    pub style: Style,
    /// Sorted by x.
    pub points: Vec<PointData>,
    /// Cells without the x dimension: drawn as a horizontal line.
    pub reference: Option<Band>,
}

/// One panel (one facet value, or the whole figure).
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    pub facet: Option<String>,
    pub series: Vec<SeriesData>,
}

/// A horizontal line from [`Extra::HLine`].
#[derive(Debug, Clone, PartialEq)]
pub struct HLineData {
    pub label: String,
    pub band: Band,
}

/// A dimension held at one value.
#[derive(Debug, Clone, PartialEq)]
pub struct Pinned {
    pub dim: String,
    pub value: String,
    /// Other values the run has that this figure does not draw.
    pub others: Vec<String>,
}

/// Everything one figure draws.
#[derive(Debug, Clone)]
pub struct FigureData {
    pub spec: &'static FigureSpec,
    pub panels: Vec<Panel>,
    /// Categories of a categorical x axis, in drawing order (expected
    /// series without data included, drawn as empty slots).
    pub categories: Vec<String>,
    pub hlines: Vec<HLineData>,
    pub band_kinds: BTreeSet<BandKind>,
    /// Dimensions that varied and were held at one value.
    pub pinned: Vec<Pinned>,
    /// Dimensions with one value in every drawn cell (context).
    pub constant: Vec<(String, String)>,
    /// Expected series the run does not have.
    pub missing_expected: Vec<String>,
    /// Emulation modes of the drawn cells (`none` for local ones).
    pub emulation: BTreeSet<String>,
    /// Values left out: not positive on a log axis, or an x that is not a
    /// number.
    pub dropped: Vec<String>,
    /// Data repetitions drawn.
    pub repetitions: usize,
}

impl FigureData {
    /// The unit of the y axis, from the label's parentheses.
    pub fn unit(&self) -> &str {
        unit_of(self.spec.y_label)
    }

    /// True when the figure has nothing to draw.
    pub fn is_empty(&self) -> bool {
        self.panels.iter().all(|p| {
            p.series
                .iter()
                .all(|s| s.points.is_empty() && s.reference.is_none())
        })
    }

    /// The name of the x dimension (a parameter or the category key).
    pub fn x_dim(&self) -> &'static str {
        x_dim(&self.spec.x)
    }
}

fn unit_of(label: &str) -> &str {
    match (label.rfind('('), label.rfind(')')) {
        (Some(a), Some(b)) if a < b => &label[a + 1..b],
        _ => "",
    }
}

fn x_dim(x: &XAxis) -> &'static str {
    match x {
        XAxis::Param { name, .. } => name,
        XAxis::Category { key, .. } => key.name(),
    }
}

fn passes(record: &Record, filter: &Filter) -> bool {
    let Some(v) = record.dim(filter.param) else {
        return true;
    };
    match filter.cond {
        Cond::Eq(want) => value_number(&v).is_some_and(|x| (x - want).abs() < 1e-9),
        Cond::Gt(min) => value_number(&v).is_some_and(|x| x > min),
        Cond::Is(want) => value_text(&v) == want,
    }
}

/// Sorts values: the scenario's declared order first, then numbers
/// ascending, then text.
fn order_values(values: BTreeSet<String>, declared: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for d in declared {
        if values.contains(d) && !out.contains(d) {
            out.push(d.clone());
        }
    }
    let mut rest: Vec<String> = values.into_iter().filter(|v| !out.contains(v)).collect();
    rest.sort_by(|a, b| match (a.parse::<f64>(), b.parse::<f64>()) {
        (Ok(x), Ok(y)) => x.total_cmp(&y),
        (Ok(_), Err(_)) => std::cmp::Ordering::Less,
        (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
        (Err(_), Err(_)) => a.cmp(b),
    });
    out.extend(rest);
    out
}

/// One value per repetition for `source`, already in recorded units.
fn values_of(records: &[&Record], source: &Source) -> Vec<f64> {
    records
        .iter()
        .filter_map(|r| match source {
            Source::Metric(name) => r.metric(name),
            Source::HistQuantile { histogram, q } | Source::HistMerged { histogram, q } => {
                let h = r.cell.histograms.get(*histogram).filter(|h| h.count > 0)?;
                recorded_quantile(h, *q)
            }
        })
        .collect()
}

fn recorded_quantile(h: &results::HistogramRecord, q: f64) -> Option<f64> {
    let exact = [(0.5, h.p50), (0.9, h.p90), (0.99, h.p99), (0.999, h.p999)];
    if let Some((_, v)) = exact.iter().find(|(at, _)| (at - q).abs() < 1e-12) {
        return Some(*v as f64);
    }
    h.decode()
        .filter(|d| !d.is_empty())
        .map(|d| d.value_at_quantile(q) as f64)
}

/// Folds the repetitions of one group into a band in recorded units.
fn fold(records: &[&Record], source: &Source, policy: BandPolicy) -> Option<Band> {
    if let Source::HistMerged { histogram, q } = source {
        let decoded: Option<Vec<Histogram<u64>>> = records
            .iter()
            .filter_map(|r| r.cell.histograms.get(*histogram).filter(|h| h.count > 0))
            .map(|h| h.decode())
            .collect();
        if let Some(band) = decoded
            .filter(|d| !d.is_empty())
            .and_then(|d| band_of_histograms(&d, *q))
        {
            return Some(band);
        }
        // A histogram that cannot be decoded: fall back to the recorded
        // percentile per repetition, spread across repetitions.
        return band_of(&values_of(records, source), BandPolicy::MinMax);
    }
    band_of(&values_of(records, source), policy)
}

/// Builds the figure's data from a run; the figure may be empty (see
/// [`FigureData::is_empty`]).
pub fn build(spec: &'static FigureSpec, run: &Run) -> FigureData {
    let mut records: Vec<&Record> = run
        .records
        .iter()
        .filter(|r| r.cell.scenario == spec.scenario && r.cell.status.is_data())
        .collect();
    // Extras look at the scenario's cells through their own filters.
    let scenario_records = records.clone();
    records.retain(|r| spec.filters.iter().all(|f| passes(r, f)));
    // Cells without anything this figure plots (a read cell in a write
    // figure) neither make panels nor pin settings.
    records.retain(|r| {
        spec.measures
            .iter()
            .any(|m| !values_of(&[*r], &m.source).is_empty())
    });

    let series_dim = spec.series.name();
    let xd = x_dim(&spec.x);
    let mut fixed: BTreeSet<&str> = [series_dim, xd].into_iter().collect();
    fixed.extend(spec.facet);
    fixed.extend(spec.filters.iter().map(|f| f.param));

    // Pin or note every other dimension.
    let dims: BTreeSet<String> = records
        .iter()
        .flat_map(|r| r.dim_names().map(String::from).collect::<Vec<_>>())
        .collect();
    let mut pinned = Vec::new();
    let mut constant = Vec::new();
    for dim in dims.iter().filter(|d| !fixed.contains(d.as_str())) {
        let values: BTreeSet<String> = records
            .iter()
            .filter_map(|r| r.dim(dim))
            .map(|v| value_text(&v))
            .collect();
        let ordered = order_values(values, &run.axis_order(dim));
        match ordered.as_slice() {
            [] => {}
            [only] => constant.push((dim.clone(), only.clone())),
            [keep, others @ ..] => {
                records.retain(|r| r.dim(dim).is_none_or(|v| value_text(&v) == *keep));
                pinned.push(Pinned {
                    dim: dim.clone(),
                    value: keep.clone(),
                    others: others.to_vec(),
                });
            }
        }
    }

    // Facets.
    let facet_values: Vec<Option<String>> = match spec.facet {
        Some(f) => {
            let values: BTreeSet<String> = records
                .iter()
                .filter_map(|r| r.dim(f))
                .map(|v| value_text(&v))
                .collect();
            let ordered = order_values(values, &run.axis_order(f));
            if ordered.len() > 1 {
                ordered.into_iter().map(Some).collect()
            } else {
                if let Some(only) = ordered.into_iter().next() {
                    constant.push((f.to_string(), only));
                }
                vec![None]
            }
        }
        None => vec![None],
    };

    // Series order and styles are figure-wide, so a series keeps its
    // place in every panel.
    let series_values: BTreeSet<String> = records
        .iter()
        .filter_map(|r| r.dim(series_dim))
        .map(|v| value_text(&v))
        .collect();
    let mut declared: Vec<String> = spec.expects.iter().map(|s| s.to_string()).collect();
    declared.extend(run.axis_order(series_dim));
    let series_order = order_values(series_values, &declared);
    let numeric_series = matches!(spec.series, SeriesKey::Param(_))
        && !series_order.is_empty()
        && series_order.iter().all(|s| s.parse::<f64>().is_ok());
    let style_of = |key: &str| -> Style {
        if numeric_series {
            let i = series_order.iter().position(|s| s == key).unwrap_or(0);
            palette::ordinal(i, series_order.len())
        } else {
            palette::style_for(key)
        }
    };

    let categories: Vec<String> = match spec.x {
        XAxis::Category { key, .. } => {
            let mut values: BTreeSet<String> = records
                .iter()
                .filter_map(|r| r.dim(key.name()))
                .map(|v| value_text(&v))
                .collect();
            // Expected series that did not run keep an empty slot, so
            // "baseline vs uffd vs direct vs managed" shows all four.
            if key == spec.series {
                values.extend(spec.expects.iter().map(|e| e.to_string()));
            }
            let mut declared: Vec<String> = spec.expects.iter().map(|s| s.to_string()).collect();
            declared.extend(run.axis_order(key.name()));
            order_values(values, &declared)
        }
        XAxis::Param { .. } => Vec::new(),
    };

    let mut band_kinds = BTreeSet::new();
    let mut dropped = Vec::new();
    let mut emulation = BTreeSet::new();
    let mut repetitions = 0;
    let mut panels = Vec::new();
    let several = spec.measures.len() > 1;
    let log_y = spec.y_scale == Scale::Log;

    for facet in &facet_values {
        let in_panel: Vec<&Record> = records
            .iter()
            .copied()
            .filter(|r| match (facet, spec.facet) {
                (Some(want), Some(f)) => r.dim(f).is_none_or(|v| value_text(&v) == *want),
                _ => true,
            })
            .collect();
        let mut series = Vec::new();
        for (mi, measure) in spec.measures.iter().enumerate() {
            for key in &series_order {
                let of_series: Vec<&Record> = in_panel
                    .iter()
                    .copied()
                    .filter(|r| r.dim(series_dim).is_some_and(|v| value_text(&v) == *key))
                    .collect();
                if of_series.is_empty() {
                    continue;
                }
                // Group by x.
                let mut groups: BTreeMap<String, (f64, Vec<&Record>)> = BTreeMap::new();
                let mut reference: Vec<&Record> = Vec::new();
                for r in &of_series {
                    match spec.x {
                        XAxis::Param { name, .. } => match r.dim(name) {
                            None => reference.push(r),
                            Some(v) => match value_number(&v) {
                                Some(x) => {
                                    groups
                                        .entry(fmt_num(x))
                                        .or_insert_with(|| (x, Vec::new()))
                                        .1
                                        .push(r);
                                }
                                None => dropped.push(format!(
                                    "{}: {name} = {} is not a number",
                                    r.cell.cell_id,
                                    value_text(&v)
                                )),
                            },
                        },
                        XAxis::Category { key: ck, .. } => {
                            if let Some(v) = r.dim(ck.name()) {
                                let text = value_text(&v);
                                if let Some(i) = categories.iter().position(|c| *c == text) {
                                    groups
                                        .entry(text)
                                        .or_insert_with(|| (i as f64, Vec::new()))
                                        .1
                                        .push(r);
                                }
                            }
                        }
                    }
                }
                let mut accept = |group: &[&Record], what: &str| -> Option<Band> {
                    let band = fold(group, &measure.source, spec.band)?.scaled(spec.y_factor);
                    if log_y && band.median <= 0.0 {
                        dropped.push(format!(
                            "{key} {}at {what}: {} is not positive (log axis)",
                            if several {
                                format!("{} ", measure.suffix)
                            } else {
                                String::new()
                            },
                            fmt_num(band.median)
                        ));
                        return None;
                    }
                    let band = if log_y && band.low <= 0.0 {
                        Band {
                            low: band.median,
                            ..band
                        }
                    } else {
                        band
                    };
                    band_kinds.insert(band.kind);
                    repetitions += group.len();
                    emulation.extend(group.iter().map(|r| r.cell.emulation.clone()));
                    Some(band)
                };
                let mut points: Vec<PointData> = groups
                    .into_iter()
                    .filter_map(|(text, (x, group))| {
                        accept(&group, &text).map(|band| PointData {
                            x,
                            x_text: text,
                            band,
                        })
                    })
                    .collect();
                points.sort_by(|a, b| a.x.total_cmp(&b.x));
                let reference = if reference.is_empty() {
                    None
                } else {
                    accept(&reference, "every x")
                };
                if points.is_empty() && reference.is_none() {
                    continue;
                }
                let base = if points.is_empty() && reference.is_some() {
                    palette::reference_label(key, xd)
                } else if numeric_series {
                    format!("{series_dim} = {key}")
                } else {
                    key.clone()
                };
                let label = if several {
                    format!("{base} {}", measure.suffix)
                } else {
                    base
                };
                series.push(SeriesData {
                    key: key.clone(),
                    label,
                    measure: mi,
                    style: style_of(key),
                    points,
                    reference,
                });
            }
        }
        panels.push(Panel {
            facet: facet.clone(),
            series,
        });
    }

    let hlines = spec
        .extras
        .iter()
        .filter_map(|e| match e {
            Extra::HLine {
                source,
                filters,
                label,
            } => {
                // Its own filters, and the figure's pinned settings (the
                // emulator's capacity at the RTT the figure draws).
                let group: Vec<&Record> = scenario_records
                    .iter()
                    .copied()
                    .filter(|r| filters.iter().all(|f| passes(r, f)))
                    .filter(|r| {
                        pinned
                            .iter()
                            .all(|p| r.dim(&p.dim).is_none_or(|v| value_text(&v) == p.value))
                    })
                    .collect();
                // Only the median is drawn, so the band's kind does not
                // enter the caption's whisker description.
                let band = fold(&group, source, BandPolicy::Spread)?.scaled(spec.y_factor);
                Some(HLineData {
                    label: label.to_string(),
                    band,
                })
            }
            Extra::Identity => None,
        })
        .collect();

    let present: BTreeSet<&str> = panels
        .iter()
        .flat_map(|p| p.series.iter().map(|s| s.key.as_str()))
        .collect();
    let missing_expected = spec
        .expects
        .iter()
        .filter(|e| !present.contains(**e))
        .map(|e| e.to_string())
        .collect();

    FigureData {
        spec,
        panels,
        categories,
        hlines,
        band_kinds,
        pinned,
        constant,
        missing_expected,
        emulation,
        dropped,
        repetitions,
    }
}

/// Writes the plotted numbers as CSV: one row per point, reference line
/// and extra line, in the figure's y unit.
pub fn write_csv(fig: &FigureData, out: impl io::Write) -> csv::Result<()> {
    let mut w = csv::Writer::from_writer(out);
    w.write_record([
        "facet", "series", "x", "median", "low", "high", "n", "band", "unit",
    ])?;
    let unit = fig.unit();
    let row = |w: &mut csv::Writer<_>, facet: &str, series: &str, x: &str, b: &Band| {
        w.write_record([
            facet,
            series,
            x,
            &b.median.to_string(),
            &b.low.to_string(),
            &b.high.to_string(),
            &b.n.to_string(),
            b.kind.short(),
            unit,
        ])
    };
    for p in &fig.panels {
        let facet = p.facet.as_deref().unwrap_or("");
        for s in &p.series {
            for pt in &s.points {
                row(&mut w, facet, &s.label, &pt.x_text, &pt.band)?;
            }
            // A reference line holds at every x: its x cell is empty.
            if let Some(b) = &s.reference {
                row(&mut w, facet, &s.label, "", b)?;
            }
        }
    }
    for h in &fig.hlines {
        row(&mut w, "", &h.label, "", &h.band)?;
    }
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use results::{CellRecord, CellStatus, Metrics};
    use serde_json::Value;

    fn rec(imp: &str, params: Value, rep: u32, fcl: f64) -> Record {
        let params: BTreeMap<String, Value> = serde_json::from_value(params).unwrap();
        let cell = CellRecord {
            cell_id: format!("rtt-sweep/{imp}/{params:?}"),
            scenario: "rtt-sweep".into(),
            implementation: imp.into(),
            transport: None,
            device: None,
            emulation: if params.contains_key("rtt_ms") {
                "inproc"
            } else {
                "none"
            }
            .into(),
            params,
            repetition: rep,
            status: CellStatus::Ok,
            reason: None,
            started_at: "2026-01-01T00:00:00Z".into(),
            wall_ms: 1.0,
            metrics: Metrics {
                first_chunk_latency_us: Some(fcl),
                ..Metrics::default()
            },
            histograms: BTreeMap::new(),
            placement: BTreeMap::new(),
            source_sha256: None,
            destination_sha256: None,
        };
        let metrics = serde_json::to_value(&cell.metrics)
            .unwrap()
            .as_object()
            .unwrap()
            .clone();
        Record { cell, metrics }
    }

    fn run(records: Vec<Record>) -> Run {
        Run {
            dir: "/nonexistent".into(),
            manifest: None,
            manifest_problem: None,
            records,
            bad_lines: 0,
        }
    }

    #[test]
    fn repetitions_fold_per_x_and_baseline_becomes_a_reference() {
        let mut records = vec![
            rec("baseline", serde_json::json!({"workload": "seq"}), 0, 1.0),
            rec("baseline", serde_json::json!({"workload": "seq"}), 1, 3.0),
        ];
        for (rep, v) in [(0, 100.0), (1, 300.0), (2, 200.0)] {
            records.push(rec(
                "uffd",
                serde_json::json!({"workload": "seq", "rtt_ms": 0.0}),
                rep,
                v,
            ));
        }
        records.push(rec(
            "uffd",
            serde_json::json!({"workload": "seq", "rtt_ms": 5.0}),
            0,
            5000.0,
        ));
        let spec = crate::catalog::find("rtt-sweep-first-chunk-latency-vs-rtt").unwrap();
        let fig = build(spec, &run(records));
        assert_eq!(fig.panels.len(), 1, "one workload: no facets");
        let s = &fig.panels[0].series;
        let base = s.iter().find(|s| s.key == "baseline").unwrap();
        assert_eq!(base.label, "baseline (local memory)");
        let r = base.reference.unwrap();
        assert_eq!((r.median, r.low, r.high, r.n), (2.0, 1.0, 3.0, 2));
        let uffd = s.iter().find(|s| s.key == "uffd").unwrap();
        assert_eq!(uffd.points.len(), 2);
        assert_eq!(uffd.points[0].x, 0.0);
        assert_eq!(uffd.points[0].band.median, 200.0);
        assert_eq!(uffd.points[0].band.kind, BandKind::MinMax);
        assert_eq!(uffd.points[1].band.kind, BandKind::Single);
        assert!(fig.missing_expected.contains(&"mount-managed".to_string()));
        assert_eq!(
            fig.constant,
            vec![("workload".to_string(), "seq".to_string())]
        );

        let mut csv = Vec::new();
        write_csv(&fig, &mut csv).unwrap();
        let text = String::from_utf8(csv).unwrap();
        assert!(
            text.starts_with("facet,series,x,median,low,high,n,band,unit\n"),
            "{text}"
        );
        assert!(
            text.contains(",uffd,0,200,100,300,3,min-max,µs\n"),
            "{text}"
        );
        assert!(
            text.contains(",baseline (local memory),,2,1,3,2,min-max,µs\n"),
            "{text}"
        );
    }

    #[test]
    fn cells_without_the_plotted_metric_make_no_panel() {
        let mut records = vec![rec(
            "uffd",
            serde_json::json!({"workload": "sequential", "rtt_ms": 1.0}),
            0,
            7.0,
        )];
        let mut write = rec(
            "uffd",
            serde_json::json!({"workload": "sequential-write", "rtt_ms": 1.0}),
            0,
            0.0,
        );
        write.metrics.remove("first_chunk_latency_us");
        records.push(write);
        let spec = crate::catalog::find("rtt-sweep-first-chunk-latency-vs-rtt").unwrap();
        let fig = build(spec, &run(records));
        assert_eq!(fig.panels.len(), 1, "{:?}", fig.panels);
        assert_eq!(
            fig.constant,
            vec![("workload".to_string(), "sequential".to_string())]
        );
    }

    #[test]
    fn varying_dimensions_are_pinned_and_facets_split() {
        let mut records = Vec::new();
        for wl in ["sequential", "random"] {
            for region in [64, 512] {
                records.push(rec(
                    "uffd",
                    serde_json::json!({"workload": wl, "region_mib": region, "rtt_ms": 1.0}),
                    0,
                    f64::from(region),
                ));
            }
        }
        let spec = crate::catalog::find("rtt-sweep-first-chunk-latency-vs-rtt").unwrap();
        let fig = build(spec, &run(records));
        assert_eq!(fig.panels.len(), 2);
        // No manifest: numbers ascend, text sorts.
        assert_eq!(fig.panels[0].facet.as_deref(), Some("random"));
        assert_eq!(
            fig.pinned,
            vec![Pinned {
                dim: "region_mib".into(),
                value: "64".into(),
                others: vec!["512".into()]
            }]
        );
        for p in &fig.panels {
            assert_eq!(
                p.series[0].points[0].band.median, 64.0,
                "512 MiB cells pooled in"
            );
        }
    }

    #[test]
    fn chunk_sweep_draws_where_chunks_are_cut_with_unchunked_as_the_reference() {
        let mut records = Vec::new();
        let mut push = |imp: &str, params: Value, write_mib_s: f64| {
            let mut r = rec(imp, params, 0, 1.0);
            r.cell.scenario = "chunk-sweep".into();
            r.metrics
                .insert("write_throughput_mib_s".into(), write_mib_s.into());
            records.push(r);
        };
        let at = |chunking: &str, chunk_kib: Option<u64>, workload: &str| {
            let mut p =
                serde_json::json!({"workload": workload, "rtt_ms": 20.0, "chunking": chunking});
            if let Some(kib) = chunk_kib {
                p["chunk_kib"] = kib.into();
            }
            p
        };
        for (side, slow) in [("client", 1.0), ("server", 10.0)] {
            push("mount-direct", at(side, Some(4), "zipfian-write"), slow);
            push(
                "mount-direct",
                at(side, Some(64), "zipfian-write"),
                2.0 * slow,
            );
        }
        push("mount-direct", at("none", None, "zipfian-write"), 5.0);
        // Left out: another workload, and the managed mount (no `chunking`).
        push(
            "mount-direct",
            at("client", Some(4), "sequential-write"),
            999.0,
        );
        let mut managed = at("client", Some(4), "zipfian-write");
        managed.as_object_mut().unwrap().remove("chunking");
        push("mount-managed", managed, 999.0);

        let spec = crate::catalog::find("chunk-sweep-client-vs-server").unwrap();
        let fig = build(spec, &run(records));
        assert_eq!(fig.panels.len(), 1, "one RTT: no facets");
        assert!(fig.pinned.is_empty(), "{:?}", fig.pinned);
        let series = &fig.panels[0].series;
        let points = |key: &str| -> Vec<(f64, f64)> {
            let s = series.iter().find(|s| s.key == key).unwrap();
            s.points.iter().map(|p| (p.x, p.band.median)).collect()
        };
        assert_eq!(points("client"), [(4.0, 1.0), (64.0, 2.0)]);
        assert_eq!(points("server"), [(4.0, 10.0), (64.0, 20.0)]);
        let none = series.iter().find(|s| s.key == "none").unwrap();
        assert!(none.points.is_empty());
        assert_eq!(none.reference.unwrap().median, 5.0);
        assert_eq!(series.len(), 3, "{series:?}");
    }

    #[test]
    fn non_positive_values_on_a_log_axis_are_dropped_and_said() {
        let records = vec![rec("uffd", serde_json::json!({"rtt_ms": 1.0}), 0, 0.0)];
        let spec = crate::catalog::find("rtt-sweep-first-chunk-latency-vs-rtt").unwrap();
        let fig = build(spec, &run(records));
        assert!(fig.is_empty());
        assert_eq!(fig.dropped.len(), 1, "{:?}", fig.dropped);
    }

    #[test]
    fn zero_rtt_filter_keeps_cells_without_rtt() {
        let records = vec![
            rec("baseline", serde_json::json!({}), 0, 1.0),
            rec("uffd", serde_json::json!({"rtt_ms": 0.0}), 0, 100.0),
            rec("uffd", serde_json::json!({"rtt_ms": 5.0}), 0, 5000.0),
        ];
        let spec = crate::catalog::find("rtt-sweep-first-chunk-latency-at-0ms").unwrap();
        let fig = build(spec, &run(records));
        // Expected implementations keep an empty slot.
        assert_eq!(
            fig.categories,
            vec!["baseline", "uffd", "mount-direct", "mount-managed"]
        );
        assert_eq!(fig.missing_expected, vec!["mount-direct", "mount-managed"]);
        let uffd = fig.panels[0]
            .series
            .iter()
            .find(|s| s.key == "uffd")
            .unwrap();
        assert_eq!(uffd.points.len(), 1);
        assert_eq!(uffd.points[0].band.median, 100.0);
        assert_eq!(uffd.points[0].x, 1.0);
    }
}
