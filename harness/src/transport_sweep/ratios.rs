//! The target ratios, computed from a sweep's records, and the
//! tables printed at the end.

use std::collections::BTreeMap;

use serde::Serialize;

/// One target of the issue, checked against a run's rows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetCheck {
    /// What is compared, e.g. `frpc/raw read_throughput_mib_s`.
    pub target: String,
    /// The point it was taken at.
    pub at: String,
    pub value: f64,
    /// The target: `value >= threshold`.
    pub threshold: f64,
    pub met: bool,
}

/// What a run is missing to check a target.
fn row_at<'a>(
    rows: &'a [results::SummaryRow],
    transport: &str,
    matches: &dyn Fn(&results::SummaryRow) -> bool,
) -> Vec<&'a results::SummaryRow> {
    rows.iter()
        .filter(|r| r.transport.as_deref() == Some(transport) && r.ok > 0 && matches(r))
        .collect()
}

fn param(r: &results::SummaryRow, key: &str) -> Option<f64> {
    r.params.get(key).and_then(serde_json::Value::as_f64)
}

fn metric(r: &results::SummaryRow, key: &str) -> Option<f64> {
    match key {
        "read_throughput_mib_s" => r.medians.get(key).copied(),
        _ => r.other_medians.get(key).copied(),
    }
}

/// The two targets that come as ratios between transports, at every point
/// of the run that has both sides, plus every transport's share of its
/// latency bound at RTT >= 10 ms.
pub fn targets(rows: &[results::SummaryRow]) -> Vec<TargetCheck> {
    let mut checks = Vec::new();
    let same_point = |a: &results::SummaryRow, b: &results::SummaryRow| {
        ["rtt_ms", "workers", "chunk_kib", "region_mib"]
            .iter()
            .all(|k| param(a, k) == param(b, k))
    };
    let at = |r: &results::SummaryRow| {
        format!(
            "rtt {} ms, {} workers, {} KiB chunks, {} MiB region",
            param(r, "rtt_ms").unwrap_or(f64::NAN),
            param(r, "workers").unwrap_or(f64::NAN),
            param(r, "chunk_kib").unwrap_or(f64::NAN),
            param(r, "region_mib").unwrap_or(f64::NAN)
        )
    };
    let mut ratio = |num: &str,
                     den: &str,
                     what: &str,
                     threshold: f64,
                     cond: &dyn Fn(&results::SummaryRow) -> bool| {
        for n in row_at(rows, num, cond) {
            for d in row_at(rows, den, cond)
                .into_iter()
                .filter(|d| same_point(n, d))
            {
                if let (Some(a), Some(b)) = (metric(n, what), metric(d, what)) {
                    if b > 0.0 {
                        checks.push(TargetCheck {
                            target: format!("{num}/{den} {what}"),
                            at: at(n),
                            value: a / b,
                            threshold,
                            met: a / b >= threshold,
                        });
                    }
                }
            }
        }
    };
    ratio("frpc", "raw", "read_throughput_mib_s", 0.8, &|r| {
        param(r, "chunk_kib") == Some(1024.0) && param(r, "rtt_ms") == Some(0.0)
    });
    ratio("frpc", "grpc", "requests_per_s", 2.0, &|r| {
        param(r, "chunk_kib") == Some(4.0)
            && param(r, "workers") == Some(64.0)
            && param(r, "rtt_ms") == Some(0.0)
    });
    // The link has no configured rate, so its rate is what the emulator
    // carries, and that depends on the RTT (the relay holds a
    // bandwidth-delay product of frames). A transport is judged against
    // what raw TCP carried at its own point: the link's rate there. Raw
    // itself is judged against what it carried at RTT 0, which shows what
    // the emulator loses to the delay.
    let raw_at_zero = rows
        .iter()
        .filter(|r| r.transport.as_deref() == Some("raw") && r.ok > 0)
        .filter(|r| param(r, "rtt_ms") == Some(0.0))
        .filter_map(|r| metric(r, "read_throughput_mib_s"))
        .fold(None, |best: Option<f64>, v| {
            Some(best.map_or(v, |b| b.max(v)))
        });
    for r in rows.iter().filter(|r| r.ok > 0) {
        if param(r, "rtt_ms").is_some_and(|rtt| rtt >= 10.0) {
            let (Some(t), Some(tput), Some(bound)) = (
                &r.transport,
                metric(r, "read_throughput_mib_s"),
                metric(r, "latency_bound_mib_s"),
            ) else {
                continue;
            };
            let (capacity, source) = if t == "raw" {
                (raw_at_zero, "as raw carried it at RTT 0")
            } else {
                let raw_here = row_at(rows, "raw", &|_| true)
                    .into_iter()
                    .find(|raw| same_point(raw, r))
                    .and_then(|raw| metric(raw, "read_throughput_mib_s"));
                (raw_here, "as raw carried it at this point")
            };
            let limit = capacity.map_or(bound, |c| bound.min(c));
            let link = capacity.map_or(
                "link rate unmeasured (no raw cell to take it from)".to_owned(),
                |c| format!("link rate {c:.0} MiB/s {source}"),
            );
            checks.push(TargetCheck {
                target: format!("{t} share of min(link rate, workers x chunk / RTT)"),
                at: format!("{}; {link}, latency bound {bound:.0} MiB/s", at(r)),
                value: tput / limit,
                threshold: 0.9,
                met: tput / limit >= 0.9,
            });
        }
    }
    checks
}

/// The target lines to print, and a note for each ratio the run could not
/// compute.
pub fn target_lines(rows: &[results::SummaryRow]) -> Vec<String> {
    let checks = targets(rows);
    let mut lines: Vec<String> = checks
        .iter()
        .map(|c| {
            format!(
                "target {} at {}: {:.3} (>= {}): {}",
                c.target,
                c.at,
                c.value,
                c.threshold,
                if c.met { "met" } else { "MISSED" }
            )
        })
        .collect();
    for (target, needs) in [
        (
            "frpc/raw read_throughput_mib_s",
            "ok frpc and raw cells at 1024 KiB chunks and RTT 0",
        ),
        (
            "frpc/grpc requests_per_s",
            "ok frpc and grpc cells at 4 KiB chunks, 64 workers and RTT 0",
        ),
    ] {
        if !checks.iter().any(|c| c.target == target) {
            lines.push(format!("target {target}: not measured (needs {needs})"));
        }
    }
    lines
}

/// One line per transport whose cells were skipped, with the reason.
pub fn skipped_lines(rows: &[results::SummaryRow]) -> Vec<String> {
    let mut skipped: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.skipped == r.repetitions) {
        let entry = skipped
            .entry(r.transport.as_deref().unwrap_or("?"))
            .or_insert((0, r.reason.as_deref().unwrap_or("")));
        entry.0 += 1;
    }
    skipped
        .into_iter()
        .map(|(t, (cells, reason))| format!("{t}: {cells} cells skipped: {reason}"))
        .collect()
}

/// One row per cell that ran.
pub fn table(rows: &[results::SummaryRow]) -> comfy_table::Table {
    use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header([
        "transport",
        "RTT ms",
        "workers",
        "chunk KiB",
        "MiB/s",
        "req/s",
        "p50 us",
        "p99 us",
        "client CPU s",
        "server CPU s",
        "efficiency",
    ]);
    for r in rows.iter().filter(|r| r.skipped < r.repetitions) {
        let p = |k: &str| {
            r.params
                .get(k)
                .map(results::summary::param_text)
                .unwrap_or_default()
        };
        let fmt =
            |v: Option<f64>, digits: usize| v.map_or("-".to_owned(), |v| format!("{v:.digits$}"));
        let mut line = vec![
            r.transport.clone().unwrap_or_default(),
            p("rtt_ms"),
            p("workers"),
            p("chunk_kib"),
        ];
        if r.ok + r.truncated == 0 {
            line.push(format!("failed: {}", r.reason.clone().unwrap_or_default()));
        } else {
            line.extend([
                fmt(metric(r, "read_throughput_mib_s"), 1),
                fmt(metric(r, "requests_per_s"), 0),
                fmt(metric(r, "request_latency_p50_us"), 0),
                fmt(metric(r, "request_latency_p99_us"), 0),
                fmt(r.medians.get("cpu_s").copied(), 2),
                fmt(metric(r, "server_cpu_s"), 2),
                fmt(metric(r, "efficiency"), 2),
            ]);
        }
        t.add_row(line);
    }
    t
}
