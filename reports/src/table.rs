//! The summary table printed at the end of a run.

use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
use results::summary::{param_text, SummaryRow};

/// Parameters shown in their own column when any row varies them, in order.
const PARAM_COLUMNS: &[(&str, &str)] = &[
    ("rtt_ms", "RTT ms"),
    ("region_mib", "region MiB"),
    ("chunk_kib", "chunk KiB"),
    ("workload", "workload"),
    ("placement", "placement"),
    ("transport", "transport"),
    ("pull_workers", "pull workers"),
    ("pull_heuristic", "pull heuristic"),
    ("chunking", "chunking"),
];

/// Metrics shown, with their column titles.
const METRIC_COLUMNS: &[(&str, &str)] = &[
    ("setup_ms", "setup ms"),
    ("first_chunk_latency_us", "first chunk us"),
    ("read_throughput_mib_s", "read MiB/s"),
    ("write_throughput_mib_s", "write MiB/s"),
    ("fault_latency_p50_us", "fault p50 us"),
    ("fault_latency_p99_us", "fault p99 us"),
];

fn fmt_number(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// A table with one row per cell: its parameters, how its repetitions
/// ended, and the medians of the headline metrics. Cells that are not data
/// show their reason instead of numbers.
pub fn summary_table(rows: &[SummaryRow]) -> Table {
    let shown_params: Vec<&(&str, &str)> = PARAM_COLUMNS
        .iter()
        .filter(|(key, _)| rows.iter().any(|r| r.params.contains_key(*key)))
        .collect();

    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    let mut header = vec![Cell::new("implementation")];
    header.extend(shown_params.iter().map(|(_, title)| Cell::new(title)));
    header.push(Cell::new("ok/reps"));
    header.push(Cell::new("intact"));
    header.extend(METRIC_COLUMNS.iter().map(|(_, title)| Cell::new(title)));
    table.set_header(header);

    for r in rows {
        let mut line = vec![Cell::new(&r.implementation)];
        line.extend(shown_params.iter().map(|(key, _)| {
            Cell::new(r.params.get(*key).map(param_text).unwrap_or_default())
                .set_alignment(CellAlignment::Right)
        }));
        line.push(Cell::new(format!(
            "{}/{}",
            r.ok + r.truncated,
            r.repetitions
        )));
        line.push(Cell::new(match r.integrity {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        }));
        if r.ok + r.truncated == 0 {
            let why = match (r.skipped, &r.reason) {
                (s, Some(reason)) if s > 0 => format!("skipped: {reason}"),
                (_, Some(reason)) => format!("failed: {reason}"),
                _ => "no data".to_string(),
            };
            line.push(Cell::new(why));
        } else {
            line.extend(METRIC_COLUMNS.iter().map(|(key, _)| {
                Cell::new(
                    r.medians
                        .get(key)
                        .map(|v| fmt_number(*v))
                        .unwrap_or("-".into()),
                )
                .set_alignment(CellAlignment::Right)
            }));
        }
        table.add_row(line);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn row(implementation: &str, ok: usize, reason: Option<&str>) -> SummaryRow {
        SummaryRow {
            cell_id: format!("s/{implementation}/rtt_ms=5"),
            scenario: "s".into(),
            implementation: implementation.into(),
            transport: None,
            emulation: "inproc".into(),
            params: BTreeMap::from([("rtt_ms".to_string(), serde_json::json!(5))]),
            repetitions: 1,
            ok,
            truncated: 0,
            skipped: usize::from(ok == 0),
            failed: 0,
            integrity: (ok > 0).then_some(true),
            reason: reason.map(String::from),
            medians: BTreeMap::from([("read_throughput_mib_s", 1234.5)]),
            other_medians: BTreeMap::new(),
        }
    }

    #[test]
    fn table_shows_numbers_for_data_and_reasons_for_the_rest() {
        let text = summary_table(&[
            row("uffd", 1, None),
            row("uffd", 0, Some("userfaultfd: EPERM")),
        ])
        .to_string();
        assert!(text.contains("RTT ms"), "{text}");
        assert!(text.contains("1234"), "{text}");
        assert!(text.contains("skipped: userfaultfd: EPERM"), "{text}");
        assert!(
            !text.contains("chunk KiB"),
            "unused parameter shown: {text}"
        );
    }
}
