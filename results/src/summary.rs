//! Folding repetitions into one row per cell.
//!
//! Only data cells (`ok`, `truncated`) contribute numbers; a cell whose
//! integrity check failed is `failed` and contributes none. Each number is
//! the median over the data repetitions, so one noisy repetition does not
//! move the summary.

use std::collections::BTreeMap;
use std::io;

use crate::{CellRecord, CellStatus};

/// Scalar metrics summarized, in column order.
pub const SUMMARY_METRICS: &[&str] = &[
    "setup_ms",
    "first_chunk_latency_us",
    "read_throughput_mib_s",
    "write_throughput_mib_s",
    "fault_latency_p50_us",
    "fault_latency_p99_us",
    "access_latency_p50_us",
    "access_latency_p99_us",
    "transferred_bytes",
    "transfer_amplification",
    "total_ms",
    "cpu_s",
];

/// One cell, repetitions folded.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryRow {
    pub cell_id: String,
    pub scenario: String,
    pub implementation: String,
    pub transport: Option<String>,
    pub emulation: String,
    pub params: BTreeMap<String, serde_json::Value>,
    pub repetitions: usize,
    pub ok: usize,
    pub truncated: usize,
    pub skipped: usize,
    pub failed: usize,
    /// True when every data repetition verified; None when none was checked.
    pub integrity: Option<bool>,
    /// The first reason given by a repetition that was not `ok`.
    pub reason: Option<String>,
    /// Median over data repetitions, by [`SUMMARY_METRICS`] name.
    pub medians: BTreeMap<&'static str, f64>,
    /// Median over data repetitions of each metric in
    /// [`crate::Metrics::other`], by name.
    pub other_medians: BTreeMap<String, f64>,
}

/// The value of one of [`SUMMARY_METRICS`] in `record`.
pub fn scalar(record: &CellRecord, name: &str) -> Option<f64> {
    let m = &record.metrics;
    let hist_us = |h: &str, q: fn(&crate::HistogramRecord) -> u64| {
        record
            .histograms
            .get(h)
            .filter(|r| r.count > 0)
            .map(|r| q(r) as f64 / 1000.0)
    };
    match name {
        "setup_ms" => m.setup_ms,
        "first_chunk_latency_us" => m.first_chunk_latency_us,
        "read_throughput_mib_s" => m.read_throughput_mib_s,
        "write_throughput_mib_s" => m.write_throughput_mib_s,
        "fault_latency_p50_us" => hist_us("fault_latency_ns", |r| r.p50),
        "fault_latency_p99_us" => hist_us("fault_latency_ns", |r| r.p99),
        "access_latency_p50_us" => hist_us("access_latency_ns", |r| r.p50),
        "access_latency_p99_us" => hist_us("access_latency_ns", |r| r.p99),
        "transferred_bytes" => m.transferred_bytes.map(|b| b as f64),
        "transfer_amplification" => m.transfer_amplification,
        "total_ms" => m.total_ms,
        "cpu_s" => m.cpu_s,
        _ => None,
    }
}

/// The median of `values` (mean of the middle two for an even count).
pub fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    })
}

/// One row per `cell_id`, in order of first appearance.
pub fn summarize(records: &[CellRecord]) -> Vec<SummaryRow> {
    let mut order: Vec<&str> = Vec::new();
    let mut groups: BTreeMap<&str, Vec<&CellRecord>> = BTreeMap::new();
    for r in records {
        let g = groups.entry(&r.cell_id).or_default();
        if g.is_empty() {
            order.push(&r.cell_id);
        }
        g.push(r);
    }
    order
        .into_iter()
        .map(|id| summarize_cell(&groups[id]))
        .collect()
}

fn summarize_cell(reps: &[&CellRecord]) -> SummaryRow {
    let first = reps[0];
    let count = |s: CellStatus| reps.iter().filter(|r| r.status == s).count();
    let data: Vec<&&CellRecord> = reps.iter().filter(|r| r.status.is_data()).collect();
    let checked: Vec<bool> = data.iter().filter_map(|r| r.metrics.integrity).collect();
    let mut medians = BTreeMap::new();
    for &name in SUMMARY_METRICS {
        let mut values: Vec<f64> = data.iter().filter_map(|r| scalar(r, name)).collect();
        if let Some(m) = median(&mut values) {
            medians.insert(name, m);
        }
    }
    let mut other_medians = BTreeMap::new();
    let other_names: std::collections::BTreeSet<&String> =
        data.iter().flat_map(|r| r.metrics.other.keys()).collect();
    for name in other_names {
        let mut values: Vec<f64> = data
            .iter()
            .filter_map(|r| r.metrics.other.get(name).copied())
            .collect();
        if let Some(m) = median(&mut values) {
            other_medians.insert(name.clone(), m);
        }
    }
    SummaryRow {
        cell_id: first.cell_id.clone(),
        scenario: first.scenario.clone(),
        implementation: first.implementation.clone(),
        transport: first.transport.clone(),
        emulation: first.emulation.clone(),
        params: first.params.clone(),
        repetitions: reps.len(),
        ok: count(CellStatus::Ok),
        truncated: count(CellStatus::Truncated),
        skipped: count(CellStatus::Skipped),
        failed: count(CellStatus::Failed),
        integrity: (!checked.is_empty()).then(|| checked.iter().all(|&ok| ok)),
        reason: reps
            .iter()
            .filter(|r| r.status != CellStatus::Ok)
            .find_map(|r| r.reason.clone()),
        medians,
        other_medians,
    }
}

/// Formats a parameter value without JSON quotes around strings.
pub fn param_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Writes the rows as CSV: fixed columns, then one column per parameter
/// name found in any row, then the metric medians ([`SUMMARY_METRICS`],
/// then every other metric found in any row, by name).
pub fn write_csv(rows: &[SummaryRow], out: impl io::Write) -> io::Result<()> {
    let mut param_names: Vec<&str> = rows
        .iter()
        .flat_map(|r| r.params.keys().map(String::as_str))
        .collect();
    param_names.sort_unstable();
    param_names.dedup();
    let mut other_names: Vec<&str> = rows
        .iter()
        .flat_map(|r| r.other_medians.keys().map(String::as_str))
        .collect();
    other_names.sort_unstable();
    other_names.dedup();

    let mut w = csv::Writer::from_writer(out);
    let mut header: Vec<String> = [
        "cell_id",
        "scenario",
        "implementation",
        "transport",
        "emulation",
        "repetitions",
        "ok",
        "truncated",
        "skipped",
        "failed",
        "integrity",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    header.extend(param_names.iter().map(|p| p.to_string()));
    header.extend(SUMMARY_METRICS.iter().map(|m| format!("{m}_median")));
    header.extend(other_names.iter().map(|m| format!("{m}_median")));
    header.push("reason".into());
    w.write_record(&header)?;

    for r in rows {
        let mut rec: Vec<String> = vec![
            r.cell_id.clone(),
            r.scenario.clone(),
            r.implementation.clone(),
            r.transport.clone().unwrap_or_default(),
            r.emulation.clone(),
            r.repetitions.to_string(),
            r.ok.to_string(),
            r.truncated.to_string(),
            r.skipped.to_string(),
            r.failed.to_string(),
            r.integrity.map(|b| b.to_string()).unwrap_or_default(),
        ];
        rec.extend(
            param_names
                .iter()
                .map(|p| r.params.get(*p).map(param_text).unwrap_or_default()),
        );
        rec.extend(
            SUMMARY_METRICS
                .iter()
                .map(|m| r.medians.get(m).map(|v| format!("{v}")).unwrap_or_default()),
        );
        rec.extend(other_names.iter().map(|m| {
            r.other_medians
                .get(*m)
                .map(|v| format!("{v}"))
                .unwrap_or_default()
        }));
        rec.push(r.reason.clone().unwrap_or_default());
        w.write_record(&rec)?;
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writer::tests::record;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    #[test]
    fn failed_repetitions_contribute_no_numbers() {
        let recs = vec![
            record(0, CellStatus::Ok, 10.0),
            record(1, CellStatus::Ok, 30.0),
            record(2, CellStatus::Failed, 1000.0),
        ];
        let rows = summarize(&recs);
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!((r.ok, r.failed, r.repetitions), (2, 1, 3));
        assert_eq!(r.medians["read_throughput_mib_s"], 20.0);
        assert_eq!(r.integrity, Some(true));
    }

    #[test]
    fn csv_has_one_column_per_param_and_quotes_commas() {
        let mut rec = record(0, CellStatus::Failed, 1.0);
        rec.reason = Some("boom, with a comma".into());
        let mut out = Vec::new();
        write_csv(&summarize(&[rec]), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let header = text.lines().next().unwrap();
        assert!(header.contains(",rtt_ms,"), "{header}");
        assert!(text.contains("\"boom, with a comma\""), "{text}");
    }

    #[test]
    fn other_metrics_get_medians_and_csv_columns() {
        let mut recs = vec![
            record(0, CellStatus::Ok, 1.0),
            record(1, CellStatus::Ok, 1.0),
            record(2, CellStatus::Failed, 1.0),
        ];
        for (r, goodput) in recs.iter_mut().zip([90.0, 100.0, 5000.0]) {
            r.metrics.other.insert("goodput_mbit_s".into(), goodput);
        }
        let rows = summarize(&recs);
        assert_eq!(rows[0].other_medians["goodput_mbit_s"], 95.0);
        let mut out = Vec::new();
        write_csv(&rows, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        let row: Vec<&str> = lines.next().unwrap().split(',').collect();
        let column = header
            .iter()
            .position(|h| *h == "goodput_mbit_s_median")
            .unwrap();
        assert_eq!(row[column], "95");
    }

    #[test]
    fn other_metrics_round_trip_flat_in_the_record() {
        let mut rec = record(0, CellStatus::Ok, 1.0);
        rec.metrics.other.insert("rtt_p50_ms".into(), 10.2);
        let json = serde_json::to_value(&rec).unwrap();
        assert_eq!(json["metrics"]["rtt_p50_ms"], 10.2);
        let back: CellRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back.metrics, rec.metrics);
    }
}
