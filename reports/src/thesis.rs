//! The thesis beside us: its published numbers and ours, row by row.
//!
//! `scenarios/reference/thesis.toml` holds the study's numbers, its setup,
//! and how to compare (see the file's header). It is compiled in, so a
//! report needs no file besides the run directory.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::Value;

use crate::run::{value_number, value_text, Run};

/// The reference shipped with the project.
pub const BUNDLED: &str = include_str!("../../scenarios/reference/thesis.toml");

/// Errors in a reference file.
#[derive(Debug, thiserror::Error)]
pub enum ThesisError {
    #[error("the thesis reference is not valid TOML for its schema: {0}")]
    Parse(#[from] toml::de::Error),
    #[error(
        "compare row {quantity:?} names published value {id:?}, which is not in [[published]]"
    )]
    UnknownId { quantity: String, id: String },
    #[error(
        "unit {unit:?} (in {context}) is not one of ns, us, ms, s, MB/s, GB/s, MiB/s, Mbit/s, x"
    )]
    UnknownUnit { unit: String, context: String },
    #[error("compare row {quantity:?}: the {side} side's units do not reduce to {unit:?}")]
    UnitMismatch {
        quantity: String,
        side: &'static str,
        unit: String,
    },
}

/// Their setup.
#[derive(Debug, Clone, Deserialize)]
pub struct Setup {
    pub machine: String,
    pub rtt: String,
    pub closest_mode: String,
}

/// One published number.
#[derive(Debug, Clone, Deserialize)]
pub struct Published {
    pub id: String,
    pub what: String,
    pub rtt_ms: f64,
    pub value: f64,
    pub unit: String,
    #[serde(default)]
    pub approximate: bool,
    /// "above" when the thesis gives a lower bound.
    #[serde(default)]
    pub bound: Option<String>,
}

/// Published ids multiplied, divided by published ids multiplied.
#[derive(Debug, Clone, Deserialize)]
pub struct ThesisSide {
    pub times: Vec<String>,
    #[serde(default)]
    pub over: Vec<String>,
}

/// Which of our cells and metric one term stands for.
#[derive(Debug, Clone, Deserialize)]
pub struct Selector {
    pub scenario: String,
    pub implementation: String,
    #[serde(default)]
    pub transport: Option<String>,
    pub metric: String,
    /// The metric's unit.
    pub unit: String,
    /// Parameters the cells must have (cells without one pass).
    #[serde(default)]
    pub params: BTreeMap<String, Value>,
}

/// Our side of a row.
#[derive(Debug, Clone, Deserialize)]
pub struct OurSide {
    pub times: Vec<Selector>,
    #[serde(default)]
    pub over: Vec<Selector>,
}

/// One row of the comparison.
#[derive(Debug, Clone, Deserialize)]
pub struct Compare {
    pub quantity: String,
    pub unit: String,
    pub thesis: ThesisSide,
    #[serde(default)]
    pub ours: Option<OurSide>,
    /// Why we have nothing to compare with, when we never will.
    #[serde(default)]
    pub no_comparable: Option<String>,
}

/// The whole reference file.
#[derive(Debug, Clone, Deserialize)]
pub struct Reference {
    pub setup: Setup,
    pub published: Vec<Published>,
    #[serde(default)]
    pub compare: Vec<Compare>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Family {
    Time,
    Rate,
}

/// (family, factor to the family's base unit: seconds, bytes per second);
/// a ratio has no family.
fn unit_of(unit: &str) -> Option<(Option<Family>, f64)> {
    Some(match unit {
        "ns" => (Some(Family::Time), 1e-9),
        "us" | "µs" => (Some(Family::Time), 1e-6),
        "ms" => (Some(Family::Time), 1e-3),
        "s" => (Some(Family::Time), 1.0),
        "MB/s" => (Some(Family::Rate), 1e6),
        "GB/s" => (Some(Family::Rate), 1e9),
        "MiB/s" => (Some(Family::Rate), 1_048_576.0),
        "Mbit/s" => (Some(Family::Rate), 125_000.0),
        "x" => (None, 1.0),
        _ => return None,
    })
}

/// Checks that `times` over `over` reduces to `unit`.
fn reduces_to(times: &[&str], over: &[&str], unit: &str) -> Option<bool> {
    let mut exp: BTreeMap<Family, i32> = BTreeMap::new();
    for (units, sign) in [(times, 1), (over, -1)] {
        for u in units {
            if let (Some(f), _) = unit_of(u)? {
                *exp.entry(f).or_default() += sign;
            }
        }
    }
    exp.retain(|_, e| *e != 0);
    let want: BTreeMap<Family, i32> = match unit_of(unit)?.0 {
        Some(f) => BTreeMap::from([(f, 1)]),
        None => BTreeMap::new(),
    };
    Some(exp == want)
}

impl Reference {
    /// Parses and checks a reference: every id exists, every unit is
    /// known, and both sides of every row reduce to the row's unit.
    pub fn parse(text: &str) -> Result<Reference, ThesisError> {
        let r: Reference = toml::from_str(text)?;
        let unit_err = |unit: &str, context: String| ThesisError::UnknownUnit {
            unit: unit.to_string(),
            context,
        };
        for p in &r.published {
            unit_of(&p.unit).ok_or_else(|| unit_err(&p.unit, format!("published {}", p.id)))?;
        }
        for c in &r.compare {
            unit_of(&c.unit).ok_or_else(|| unit_err(&c.unit, format!("compare {}", c.quantity)))?;
            let units = |ids: &[String]| -> Result<Vec<&str>, ThesisError> {
                ids.iter()
                    .map(|id| {
                        r.published
                            .iter()
                            .find(|p| p.id == *id)
                            .map(|p| p.unit.as_str())
                            .ok_or_else(|| ThesisError::UnknownId {
                                quantity: c.quantity.clone(),
                                id: id.clone(),
                            })
                    })
                    .collect()
            };
            let (t, o) = (units(&c.thesis.times)?, units(&c.thesis.over)?);
            let mismatch = |side| ThesisError::UnitMismatch {
                quantity: c.quantity.clone(),
                side,
                unit: c.unit.clone(),
            };
            if reduces_to(&t, &o, &c.unit) != Some(true) {
                return Err(mismatch("thesis"));
            }
            if let Some(ours) = &c.ours {
                for s in ours.times.iter().chain(&ours.over) {
                    unit_of(&s.unit)
                        .ok_or_else(|| unit_err(&s.unit, format!("compare {}", c.quantity)))?;
                }
                let t: Vec<&str> = ours.times.iter().map(|s| s.unit.as_str()).collect();
                let o: Vec<&str> = ours.over.iter().map(|s| s.unit.as_str()).collect();
                if reduces_to(&t, &o, &c.unit) != Some(true) {
                    return Err(mismatch("ours"));
                }
            }
        }
        Ok(r)
    }

    /// The reference compiled into the binary.
    pub fn bundled() -> Result<Reference, ThesisError> {
        Reference::parse(BUNDLED)
    }

    fn published(&self, id: &str) -> Option<&Published> {
        self.published.iter().find(|p| p.id == id)
    }
}

/// Our side of one row, measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Ours {
    pub value: f64,
    /// Emulation modes of the cells used.
    pub emulation: BTreeSet<String>,
    pub cells: usize,
    pub repetitions: usize,
}

/// One row, evaluated against a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub quantity: String,
    pub unit: String,
    pub thesis_value: f64,
    /// The thesis number as published, and how a derived one is derived.
    pub thesis_text: String,
    /// Ours, or why there is none.
    pub ours: Result<Ours, String>,
}

impl Row {
    /// ours / theirs, when both exist.
    pub fn ratio(&self) -> Option<f64> {
        let ours = self.ours.as_ref().ok()?;
        (self.thesis_value != 0.0).then(|| ours.value / self.thesis_value)
    }
}

/// Three significant digits, no exponent for everyday magnitudes.
pub fn sig3(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let mag = v.abs().log10().floor() as i32;
    if !(-4..9).contains(&mag) {
        return format!("{v:.2e}");
    }
    let digits = (2 - mag).max(0) as usize;
    format!("{v:.digits$}")
}

fn published_text(p: &Published) -> String {
    format!(
        "{}{}{} {}",
        if p.bound.as_deref() == Some("above") {
            "> "
        } else {
            ""
        },
        if p.approximate { "≈ " } else { "" },
        sig3(p.value),
        p.unit
    )
}

fn thesis_side(r: &Reference, c: &Compare) -> (f64, String) {
    let (_, display) = unit_of(&c.unit).unwrap_or((None, 1.0));
    let term = |id: &String| r.published(id);
    let times: Vec<&Published> = c.thesis.times.iter().filter_map(term).collect();
    let over: Vec<&Published> = c.thesis.over.iter().filter_map(term).collect();
    let base = |p: &Published| p.value * unit_of(&p.unit).map_or(1.0, |u| u.1);
    let value = times.iter().map(|p| base(p)).product::<f64>()
        / over.iter().map(|p| base(p)).product::<f64>()
        / display;
    let text = match (times.as_slice(), over.as_slice()) {
        ([only], []) if only.unit == c.unit => published_text(only),
        ([only], []) => format!(
            "{} {} (published: {})",
            sig3(value),
            c.unit,
            published_text(only)
        ),
        _ => {
            let join = |ps: &[&Published]| {
                ps.iter()
                    .map(|p| published_text(p))
                    .collect::<Vec<_>>()
                    .join(" × ")
            };
            let approx = times.iter().chain(&over).any(|p| p.approximate);
            format!(
                "{}{} {} (derived: {}{})",
                if approx { "≈ " } else { "" },
                sig3(value),
                c.unit,
                join(&times),
                if over.is_empty() {
                    String::new()
                } else {
                    format!(" / {}", join(&over))
                }
            )
        }
    };
    (value, text)
}

fn params_text(s: &Selector) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(t) = &s.transport {
        parts.push(format!("transport {t}"));
    }
    parts.extend(
        s.params
            .iter()
            .map(|(k, v)| format!("{k} = {}", value_text(v))),
    );
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

fn matches(v: &Value, want: &Value) -> bool {
    match (value_number(v), value_number(want)) {
        (Some(a), Some(b)) => (a - b).abs() < 1e-9,
        _ => value_text(v) == value_text(want),
    }
}

/// The median of `s`'s metric over the matching data repetitions, in the
/// base unit of its family.
fn measure(run: &Run, s: &Selector) -> Result<Ours, String> {
    let recs: Vec<_> = run
        .records
        .iter()
        .filter(|r| {
            let c = &r.cell;
            c.scenario == s.scenario
                && c.implementation == s.implementation
                && c.status.is_data()
                && s.transport
                    .as_ref()
                    .is_none_or(|t| c.transport.as_ref() == Some(t))
                && s.params
                    .iter()
                    .all(|(k, want)| c.params.get(k).is_none_or(|v| matches(v, want)))
        })
        .filter(|r| r.metric(&s.metric).is_some())
        .collect();
    let values: Vec<f64> = recs.iter().filter_map(|r| r.metric(&s.metric)).collect();
    let Some(median) =
        crate::stats::band_of(&values, crate::stats::BandPolicy::MinMax).map(|b| b.median)
    else {
        return Err(format!(
            "not in this run: no data cells of {} for {}{} recording {}",
            s.scenario,
            s.implementation,
            params_text(s),
            s.metric
        ));
    };
    let factor = unit_of(&s.unit).map_or(1.0, |u| u.1);
    Ok(Ours {
        value: median * factor,
        emulation: recs.iter().map(|r| r.cell.emulation.clone()).collect(),
        cells: recs
            .iter()
            .map(|r| &r.cell.cell_id)
            .collect::<BTreeSet<_>>()
            .len(),
        repetitions: recs.len(),
    })
}

fn our_side(run: &Run, c: &Compare) -> Result<Ours, String> {
    if let Some(why) = &c.no_comparable {
        return Err(format!("no comparable measurement: {why}"));
    }
    let Some(ours) = &c.ours else {
        return Err("no comparable measurement".into());
    };
    let (_, display) = unit_of(&c.unit).unwrap_or((None, 1.0));
    let mut value = 1.0 / display;
    let mut emulation = BTreeSet::new();
    let (mut cells, mut repetitions) = (0, 0);
    for (sels, divide) in [(&ours.times, false), (&ours.over, true)] {
        for s in sels {
            let m = measure(run, s)?;
            if divide {
                value /= m.value;
            } else {
                value *= m.value;
            }
            emulation.extend(m.emulation);
            cells += m.cells;
            repetitions += m.repetitions;
        }
    }
    Ok(Ours {
        value,
        emulation,
        cells,
        repetitions,
    })
}

/// Every row of the reference, evaluated against `run`.
pub fn compare(reference: &Reference, run: &Run) -> Vec<Row> {
    reference
        .compare
        .iter()
        .map(|c| {
            let (thesis_value, thesis_text) = thesis_side(reference, c);
            Row {
                quantity: c.quantity.clone(),
                unit: c.unit.clone(),
                thesis_value,
                thesis_text,
                ours: our_side(run, c),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_reference_parses_with_the_issue_numbers() {
        let r = Reference::bundled().unwrap();
        let v = |id: &str| r.published(id).unwrap().value;
        assert_eq!(v("first_chunk_memory"), 767.0);
        assert_eq!(v("first_chunk_disk"), 4014.0);
        assert_eq!(v("first_chunk_uffd_x_disk"), 15.0);
        assert_eq!(v("first_chunk_direct_x_disk"), 28.0);
        assert_eq!(v("first_chunk_managed_x_disk"), 40.0);
        assert_eq!(v("read_memory"), 20.0);
        assert_eq!(v("read_direct"), 2.8);
        assert_eq!(v("read_managed"), 2.4);
        assert_eq!(v("read_disk"), 2.3);
        assert_eq!(v("read_uffd"), 450.0);
        assert_eq!(v("read_managed_25ms"), 500.0);
        assert_eq!(v("transport_grpc"), 500.0);
        assert_eq!(v("transport_frpc"), 390.0);
        assert_eq!(v("transport_dudirekta"), 50.0);
        assert!(r.setup.machine.contains("i7-1280P"));
        assert_eq!(r.setup.closest_mode, "per-call");
    }

    #[test]
    fn derived_thesis_ratio_is_computed_and_explained() {
        let r = Reference::bundled().unwrap();
        let c = r
            .compare
            .iter()
            .find(|c| {
                c.quantity
                    .starts_with("first-chunk latency, userfaultfd / local memory")
            })
            .unwrap();
        let (value, text) = thesis_side(&r, c);
        assert!((value - 15.0 * 4014.0 / 767.0).abs() < 1e-9, "{value}");
        assert!(text.contains("derived"), "{text}");
        assert!(text.starts_with("≈ 78.5 x"), "{text}");
        // A GB/s value shown in MB/s is converted and keeps its original.
        let mem = r
            .compare
            .iter()
            .find(|c| c.quantity == "read throughput, local memory, 0 ms RTT")
            .unwrap();
        let (value, text) = thesis_side(&r, mem);
        assert_eq!(value, 20_000.0);
        assert!(text.contains("published: 20.0 GB/s"), "{text}");
    }

    #[test]
    fn bad_references_are_rejected_with_the_culprit_named() {
        let base = r#"
            [setup]
            machine = "m"
            rtt = "r"
            closest_mode = "per-call"
            [[published]]
            id = "a"
            what = "a"
            rtt_ms = 0
            value = 1
            unit = "ns"
        "#;
        let unknown_id = format!(
            "{base}\n[[compare]]\nquantity = \"q\"\nunit = \"ns\"\nthesis = {{ times = [\"nope\"] }}\n"
        );
        let e = Reference::parse(&unknown_id).unwrap_err();
        assert!(e.to_string().contains("\"nope\""), "{e}");
        let mismatch = format!(
            "{base}\n[[compare]]\nquantity = \"q\"\nunit = \"MB/s\"\nthesis = {{ times = [\"a\"] }}\n"
        );
        let e = Reference::parse(&mismatch).unwrap_err();
        assert!(matches!(e, ThesisError::UnitMismatch { .. }), "{e}");
        let bad_unit = base.replace("unit = \"ns\"", "unit = \"furlongs\"");
        let e = Reference::parse(&bad_unit).unwrap_err();
        assert!(e.to_string().contains("furlongs"), "{e}");
    }

    #[test]
    fn sig3_rounds_to_three_significant_digits() {
        assert_eq!(sig3(78.4974), "78.5");
        assert_eq!(sig3(0.02249), "0.0225");
        assert_eq!(sig3(8507.0), "8507");
        assert_eq!(sig3(2.8), "2.80");
    }
}
