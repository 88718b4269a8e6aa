//! Comparing two sample sets cell by cell and metric by metric: which
//! direction is better, how large a change must be to count, and the
//! verdict.
//!
//! A change is a regression (or an improvement) only when it is both
//! significant (two-sided permutation test, p below [`CompareConfig::alpha`])
//! and larger than the metric's noise threshold (ratio of medians beyond
//! 1 +- threshold). A report tests a hundred or more cell-metric pairs at
//! once; at p < 0.01 each, one of them would cross by chance in most
//! comparisons of two identical trees. So by default the level holds for
//! the whole report (Holm's step-down correction, [`Correction`]). Only metrics whose better direction is known
//! ([`builtin_direction`] or the config) can gate; the rest are reported.
//! Where a cell has an in-run ratio of a metric (see [`crate::samples`]) in
//! both sets, that ratio gates and the absolute metric is only reported.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::samples::{ratio_name, SampleSet, IN_RUN_RATIOS};
use crate::stats::{bootstrap_ratio_ci, permutation_test, ratio_of_medians, PermutationPlan};

/// Which way is better for a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Times, latencies, CPU, bytes moved.
    Lower,
    /// Throughputs, efficiencies.
    Higher,
}

/// The better direction of the metrics the harness records, by name.
/// Deliberately a closed list: a metric not named here (or in the config)
/// is reported but never gates, rather than guessed from its name.
pub fn builtin_direction(metric: &str) -> Option<Direction> {
    use Direction::{Higher, Lower};
    Some(match metric {
        "setup_ms"
        | "first_chunk_latency_us"
        | "fault_latency_p50_us"
        | "fault_latency_p99_us"
        | "access_latency_p50_us"
        | "access_latency_p99_us"
        | "cpu_s"
        | "total_ms"
        | "transferred_bytes"
        | "transfer_amplification"
        | "pull_ms"
        | "request_latency_p50_us"
        | "request_latency_p99_us"
        | "client_cpu_us_per_request"
        | "server_cpu_us_per_request" => Lower,
        "read_throughput_mib_s"
        | "write_throughput_mib_s"
        | "pull_throughput_mib_s"
        | "pull_efficiency"
        | "efficiency"
        | "latency_bound_fraction" => Higher,
        _ => {
            // An in-run ratio is better the same way as its metric.
            let base = metric.strip_suffix(&format!("/{}", crate::samples::RATIO_REFERENCE))?;
            if IN_RUN_RATIOS.contains(&base) {
                return builtin_direction(base);
            }
            return None;
        }
    })
}

/// How the significance level is shared among a report's comparisons.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Correction {
    /// Holm's step-down: the chance that any unchanged pair is called
    /// changed stays below alpha (family-wise), with more power than
    /// Bonferroni.
    #[default]
    Holm,
    /// Each pair at alpha on its own.
    None,
}

/// Per-metric settings from the thresholds file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricOverride {
    /// Relative change below which a difference is noise (0.05 = 5 %).
    #[serde(default)]
    pub threshold: Option<f64>,
    /// Which way is better, for a metric the harness does not know or to
    /// change its built-in direction.
    #[serde(default)]
    pub direction: Option<Direction>,
}

/// How two sets are compared. `Deserialize` reads the thresholds file:
///
/// ```toml
/// threshold = 0.05            # default noise threshold
/// alpha = 0.01                # significance level
/// correction = "holm"         # or "none": alpha per comparison
/// [metrics.setup_ms]
/// threshold = 0.15
/// [metrics.prepulled_mib]
/// direction = "higher"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareConfig {
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    #[serde(default)]
    pub correction: Correction,
    /// Let an in-run ratio (`<metric>/baseline`) gate in place of its
    /// absolute metric where a cell has both (the default). False: the
    /// absolute metric gates and the ratio is reported, for a reference
    /// cell noisier than the cells it divides.
    #[serde(default = "default_true")]
    pub prefer_in_run_ratios: bool,
    #[serde(default)]
    pub metrics: BTreeMap<String, MetricOverride>,
    /// Resamples of the bootstrap confidence interval.
    #[serde(default = "default_resamples")]
    pub bootstrap_resamples: u32,
    /// Seed of the random permutations and of the bootstrap.
    #[serde(default = "default_seed")]
    pub seed: u64,
}

fn default_threshold() -> f64 {
    0.05
}
fn default_true() -> bool {
    true
}
fn default_alpha() -> f64 {
    0.01
}
fn default_resamples() -> u32 {
    2000
}
fn default_seed() -> u64 {
    PermutationPlan::default().seed
}

impl Default for CompareConfig {
    fn default() -> Self {
        Self {
            threshold: default_threshold(),
            alpha: default_alpha(),
            correction: Correction::default(),
            prefer_in_run_ratios: true,
            metrics: BTreeMap::new(),
            bootstrap_resamples: default_resamples(),
            seed: default_seed(),
        }
    }
}

/// A config value out of range.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{key} = {value}: must be {allowed}")]
pub struct ConfigError {
    pub key: String,
    pub value: f64,
    pub allowed: &'static str,
}

impl CompareConfig {
    /// Checks every number is in range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let threshold_ok = |key: String, v: f64| {
            if v.is_finite() && (0.0..10.0).contains(&v) {
                Ok(())
            } else {
                Err(ConfigError {
                    key,
                    value: v,
                    allowed: "a fraction in [0, 10) (0.05 = 5 %)",
                })
            }
        };
        threshold_ok("threshold".into(), self.threshold)?;
        for (name, m) in &self.metrics {
            if let Some(t) = m.threshold {
                threshold_ok(format!("metrics.{name}.threshold"), t)?;
            }
        }
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return Err(ConfigError {
                key: "alpha".into(),
                value: self.alpha,
                allowed: "in (0, 1)",
            });
        }
        Ok(())
    }

    /// The better direction of `metric`: the config's, else the built-in.
    pub fn direction(&self, metric: &str) -> Option<Direction> {
        self.metrics
            .get(metric)
            .and_then(|m| m.direction)
            .or_else(|| builtin_direction(metric))
    }

    /// The noise threshold of `metric`.
    pub fn threshold(&self, metric: &str) -> f64 {
        self.metrics
            .get(metric)
            .and_then(|m| m.threshold)
            .unwrap_or(self.threshold)
    }
}

/// What a comparison found for one cell and metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Improved,
    Unchanged,
    Regressed,
    /// Significant and beyond the threshold, but which way is better is not
    /// known for this metric.
    Changed,
    /// Too few samples for the test ever to reach the significance level.
    TooFewSamples,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Improved => "improved",
            Verdict::Unchanged => "unchanged",
            Verdict::Regressed => "REGRESSED",
            Verdict::Changed => "changed",
            Verdict::TooFewSamples => "too few samples",
        }
    }
}

/// One cell and metric, compared.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricComparison {
    pub cell_id: String,
    pub metric: String,
    pub direction: Option<Direction>,
    pub base_n: usize,
    pub new_n: usize,
    pub base_median: f64,
    pub new_median: f64,
    /// Median of new over median of base; `None` when base's median is 0.
    pub ratio: Option<f64>,
    /// Bootstrap confidence interval of the ratio at `1 - alpha`.
    pub ratio_ci: Option<(f64, f64)>,
    pub p_value: f64,
    /// The level `p_value` was held to: alpha, or less after correction.
    pub level: f64,
    pub exact: bool,
    pub threshold: f64,
    pub verdict: Verdict,
    /// Whether this row may fail the comparison. False for metrics of
    /// unknown direction and for absolute metrics whose in-run ratio gates.
    pub gates: bool,
    /// Why the row does not gate, or anything else a reader must know.
    pub note: Option<String>,
}

impl MetricComparison {
    /// The relative change of the medians (`ratio - 1`).
    pub fn change(&self) -> Option<f64> {
        self.ratio.map(|r| r - 1.0)
    }
}

/// Everything a comparison found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompareReport {
    pub rows: Vec<MetricComparison>,
    /// Cells only in the base set, or only in the new one.
    pub only_in_base: Vec<String>,
    pub only_in_new: Vec<String>,
    /// Machine, emulation or build differences between the sets.
    pub machine_differences: Vec<String>,
    /// Cells with failed repetitions in the new set, with the count.
    pub new_failures: Vec<(String, usize)>,
}

impl CompareReport {
    /// Gating rows that regressed and whose change is beyond `fail_above`
    /// (a fraction; 0 for every gating regression).
    pub fn regressions(&self, fail_above: f64) -> Vec<&MetricComparison> {
        self.rows
            .iter()
            .filter(|r| r.gates && r.verdict == Verdict::Regressed)
            .filter(|r| r.change().is_some_and(|c| c.abs() > fail_above))
            .collect()
    }
}

/// Compares one metric's samples.
pub fn compare_samples(
    cell_id: &str,
    metric: &str,
    base: &[f64],
    new: &[f64],
    config: &CompareConfig,
) -> Option<MetricComparison> {
    let plan = PermutationPlan {
        seed: config.seed,
        ..PermutationPlan::default()
    };
    let test = permutation_test(base, new, &plan)?;
    let ratio = ratio_of_medians(base, new);
    let ratio_ci = bootstrap_ratio_ci(
        base,
        new,
        1.0 - config.alpha,
        config.bootstrap_resamples,
        config.seed,
    );
    let threshold = config.threshold(metric);
    let direction = config.direction(metric);
    let significant = test.p_value < config.alpha;
    let beyond = ratio.is_some_and(|r| (r - 1.0).abs() > threshold);
    let verdict = if test.min_p_value >= config.alpha {
        Verdict::TooFewSamples
    } else if !(significant && beyond) {
        Verdict::Unchanged
    } else {
        let up = ratio.is_some_and(|r| r > 1.0);
        match (direction, up) {
            (None, _) => Verdict::Changed,
            (Some(Direction::Higher), true) | (Some(Direction::Lower), false) => Verdict::Improved,
            (Some(Direction::Higher), false) | (Some(Direction::Lower), true) => Verdict::Regressed,
        }
    };
    let median = |v: &[f64]| crate::stats::median_of(v).unwrap_or(f64::NAN);
    Some(MetricComparison {
        cell_id: cell_id.to_owned(),
        metric: metric.to_owned(),
        direction,
        base_n: base.len(),
        new_n: new.len(),
        base_median: median(base),
        new_median: median(new),
        ratio,
        ratio_ci,
        p_value: test.p_value,
        level: config.alpha,
        exact: test.exact,
        threshold,
        verdict,
        gates: direction.is_some(),
        note: direction
            .is_none()
            .then(|| "direction unknown: reported, never gates".to_owned()),
    })
}

/// Compares every cell and metric present in both sets.
pub fn compare(base: &SampleSet, new: &SampleSet, config: &CompareConfig) -> CompareReport {
    let mut rows = Vec::new();
    for (id, b) in &base.cells {
        let Some(n) = new.cells.get(id) else { continue };
        for (metric, base_values) in &b.samples {
            let Some(new_values) = n.samples.get(metric) else {
                continue;
            };
            let Some(mut row) = compare_samples(id, metric, base_values, new_values, config) else {
                continue;
            };
            let ratio = ratio_name(metric);
            let is_ratio = IN_RUN_RATIOS.iter().any(|m| ratio_name(m) == *metric);
            if config.prefer_in_run_ratios {
                if row.gates && b.samples.contains_key(&ratio) && n.samples.contains_key(&ratio) {
                    row.gates = false;
                    row.note = Some(format!("gated by the in-run ratio {ratio}"));
                }
            } else if is_ratio && row.gates {
                row.gates = false;
                row.note = Some("in-run ratio: reported (prefer_in_run_ratios = false)".into());
            }
            rows.push(row);
        }
    }
    if config.correction == Correction::Holm {
        holm(&mut rows, config.alpha);
    }
    CompareReport {
        rows,
        only_in_base: base
            .cells
            .keys()
            .filter(|id| !new.cells.contains_key(*id))
            .cloned()
            .collect(),
        only_in_new: new
            .cells
            .keys()
            .filter(|id| !base.cells.contains_key(*id))
            .cloned()
            .collect(),
        machine_differences: base.machine.differences(&new.machine),
        new_failures: new
            .cells
            .iter()
            .filter(|(_, c)| c.failed > 0)
            .map(|(id, c)| (id.clone(), c.failed))
            .collect(),
    }
}

/// Holm's step-down over every row that could reach significance: the
/// k-th smallest p-value (from 0) must be below alpha / (m - k), and the
/// first that is not stops the walk. Changes that do not survive become
/// `Unchanged`, saying why.
fn holm(rows: &mut [MetricComparison], alpha: f64) {
    let mut order: Vec<usize> = (0..rows.len())
        .filter(|&i| rows[i].verdict != Verdict::TooFewSamples)
        .collect();
    order.sort_by(|&a, &b| rows[a].p_value.total_cmp(&rows[b].p_value));
    let m = order.len();
    let mut rejecting = true;
    for (k, &i) in order.iter().enumerate() {
        let level = alpha / (m - k) as f64;
        let row = &mut rows[i];
        row.level = level;
        rejecting = rejecting && row.p_value < level;
        if !rejecting
            && matches!(
                row.verdict,
                Verdict::Improved | Verdict::Regressed | Verdict::Changed
            )
        {
            row.note = Some(format!(
                "{} alone (p {:.4} < {alpha}); not after Holm over {m} comparisons",
                row.verdict.name(),
                row.p_value
            ));
            row.verdict = Verdict::Unchanged;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ten samples around `center` with a fixed +-1 % spread.
    fn ten(center: f64) -> Vec<f64> {
        [0.0, 0.4, -0.3, 0.8, -0.9, 0.2, -0.5, 1.0, -0.1, 0.6]
            .iter()
            .map(|d| center * (1.0 + d / 100.0))
            .collect()
    }

    fn verdict(metric: &str, base: &[f64], new: &[f64]) -> MetricComparison {
        compare_samples("c", metric, base, new, &CompareConfig::default()).unwrap()
    }

    #[test]
    fn identical_samples_are_unchanged() {
        let s = ten(100.0);
        let row = verdict("read_throughput_mib_s", &s, &s);
        assert_eq!(row.verdict, Verdict::Unchanged);
        assert!((row.p_value - 1.0).abs() < 1e-12);
        assert_eq!(row.ratio, Some(1.0));
    }

    #[test]
    fn a_clear_20_percent_shift_with_ten_samples_regresses() {
        // Throughput down 20 %: worse.
        let row = verdict("read_throughput_mib_s", &ten(100.0), &ten(80.0));
        assert_eq!(row.verdict, Verdict::Regressed, "{row:?}");
        assert!(row.exact && row.p_value < 0.01, "{row:?}");
        let (lo, hi) = row.ratio_ci.unwrap();
        assert!(lo <= 0.8 && (0.8..0.95).contains(&hi), "{lo} {hi}");
        // Latency up 20 %: also worse; down 20 %: better.
        assert_eq!(
            verdict("setup_ms", &ten(100.0), &ten(120.0)).verdict,
            Verdict::Regressed
        );
        assert_eq!(
            verdict("setup_ms", &ten(100.0), &ten(80.0)).verdict,
            Verdict::Improved
        );
    }

    #[test]
    fn significant_noise_within_threshold_is_unchanged() {
        // 3 % lower: the test sees it (p < 0.01), the 5 % threshold does not count it.
        let row = verdict("read_throughput_mib_s", &ten(100.0), &ten(97.0));
        assert!(row.p_value < 0.01, "{row:?}");
        assert_eq!(row.verdict, Verdict::Unchanged);
        // A per-metric threshold of 2 % makes the same shift a regression.
        let mut config = CompareConfig::default();
        config.metrics.insert(
            "read_throughput_mib_s".into(),
            MetricOverride {
                threshold: Some(0.02),
                direction: None,
            },
        );
        let row = compare_samples(
            "c",
            "read_throughput_mib_s",
            &ten(100.0),
            &ten(97.0),
            &config,
        )
        .unwrap();
        assert_eq!(row.verdict, Verdict::Regressed);
    }

    #[test]
    fn a_large_shift_without_significance_is_unchanged() {
        // Overlapping samples: median moves 10 % but the test cannot tell.
        let base = [100.0, 60.0, 140.0, 90.0, 120.0, 70.0];
        let new = [110.0, 65.0, 150.0, 80.0, 130.0, 75.0];
        let row = verdict("setup_ms", &base, &new);
        assert!(row.p_value > 0.01, "{row:?}");
        assert_eq!(row.verdict, Verdict::Unchanged);
    }

    #[test]
    fn unknown_direction_never_gates() {
        let row = verdict("some_new_metric", &ten(100.0), &ten(50.0));
        assert_eq!(row.verdict, Verdict::Changed);
        assert!(!row.gates);
        let mut config = CompareConfig::default();
        config.metrics.insert(
            "some_new_metric".into(),
            MetricOverride {
                threshold: None,
                direction: Some(Direction::Higher),
            },
        );
        let row =
            compare_samples("c", "some_new_metric", &ten(100.0), &ten(50.0), &config).unwrap();
        assert_eq!(row.verdict, Verdict::Regressed);
        assert!(row.gates);
    }

    #[test]
    fn three_samples_are_too_few() {
        let row = verdict("setup_ms", &[1.0, 1.0, 1.0], &[9.0, 9.0, 9.0]);
        assert_eq!(row.verdict, Verdict::TooFewSamples);
    }

    #[test]
    fn in_run_ratio_directions_follow_their_metric() {
        assert_eq!(
            builtin_direction("read_throughput_mib_s/baseline"),
            Some(Direction::Higher)
        );
        assert_eq!(builtin_direction("setup_ms/baseline"), None);
        assert_eq!(builtin_direction("prepulled_mib"), None);
    }

    #[test]
    fn config_reads_toml_shape_and_rejects_bad_numbers() {
        let config: CompareConfig = serde_json::from_value(serde_json::json!({
            "threshold": 0.1,
            "metrics": {"setup_ms": {"threshold": 0.2}, "x": {"direction": "lower"}}
        }))
        .unwrap();
        assert_eq!(config.threshold("setup_ms"), 0.2);
        assert_eq!(config.threshold("cpu_s"), 0.1);
        assert_eq!(config.direction("x"), Some(Direction::Lower));
        assert_eq!(config.alpha, 0.01);
        config.validate().unwrap();
        let bad = CompareConfig {
            alpha: 1.5,
            ..CompareConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().key, "alpha");
    }

    #[test]
    fn regressions_respect_fail_above() {
        let base =
            crate::samples::tests_support::set(&[("c", "read_throughput_mib_s", ten(100.0))]);
        let new = crate::samples::tests_support::set(&[("c", "read_throughput_mib_s", ten(85.0))]);
        let report = compare(&base, &new, &CompareConfig::default());
        assert_eq!(report.regressions(0.0).len(), 1);
        assert_eq!(report.regressions(0.20).len(), 0);
    }

    #[test]
    fn an_in_run_ratio_gates_instead_of_its_absolute_metric() {
        use crate::samples::tests_support::set;
        let base = set(&[
            ("c", "read_throughput_mib_s", ten(100.0)),
            ("c", "read_throughput_mib_s/baseline", ten(0.5)),
        ]);
        // The whole machine got slower: absolute down 20 %, ratio unchanged.
        let new = set(&[
            ("c", "read_throughput_mib_s", ten(80.0)),
            ("c", "read_throughput_mib_s/baseline", ten(0.5)),
        ]);
        let report = compare(&base, &new, &CompareConfig::default());
        let absolute = &report.rows[0];
        assert_eq!(absolute.metric, "read_throughput_mib_s");
        assert_eq!(absolute.verdict, Verdict::Regressed);
        assert!(!absolute.gates);
        assert_eq!(report.rows[1].verdict, Verdict::Unchanged);
        assert!(report.regressions(0.0).is_empty());

        // Asked not to prefer ratios: the absolute metric gates again.
        let config = CompareConfig {
            prefer_in_run_ratios: false,
            ..CompareConfig::default()
        };
        let report = compare(&base, &new, &config);
        assert!(report.rows[0].gates && !report.rows[1].gates);
        assert_eq!(report.regressions(0.0).len(), 1);
    }

    #[test]
    fn holm_keeps_clear_changes_and_drops_borderline_ones_among_many() {
        use crate::samples::tests_support::set;
        // 100 unchanged metrics, one borderline shift (p about 0.005 alone)
        // and one clean separation (p = 2 / C(20, 10) = 1.1e-5).
        let mut base_entries: Vec<(String, Vec<f64>)> =
            (0..100).map(|i| (format!("m{i}"), ten(100.0))).collect();
        let mut new_entries = base_entries.clone();
        let borderline_base = vec![
            100.0, 104.0, 96.0, 110.0, 90.0, 102.0, 98.0, 106.0, 94.0, 100.0,
        ];
        let borderline_new: Vec<f64> = borderline_base.iter().map(|v| v * 1.09).collect();
        base_entries.push(("setup_ms".into(), borderline_base));
        new_entries.push(("setup_ms".into(), borderline_new));
        base_entries.push(("total_ms".into(), ten(100.0)));
        new_entries.push(("total_ms".into(), ten(130.0)));
        let as_set = |entries: &[(String, Vec<f64>)]| {
            let refs: Vec<(&str, &str, Vec<f64>)> = entries
                .iter()
                .map(|(m, v)| ("c", m.as_str(), v.clone()))
                .collect();
            set(&refs)
        };
        let (base, new) = (as_set(&base_entries), as_set(&new_entries));
        let alone = compare(
            &base,
            &new,
            &CompareConfig {
                correction: Correction::None,
                ..CompareConfig::default()
            },
        );
        let row =
            |r: &CompareReport, m: &str| r.rows.iter().find(|x| x.metric == m).cloned().unwrap();
        assert_eq!(
            row(&alone, "setup_ms").verdict,
            Verdict::Regressed,
            "{:?}",
            row(&alone, "setup_ms")
        );
        let holm = compare(&base, &new, &CompareConfig::default());
        let borderline = row(&holm, "setup_ms");
        assert_eq!(borderline.verdict, Verdict::Unchanged, "{borderline:?}");
        assert!(borderline.note.unwrap().contains("Holm"));
        assert_eq!(row(&holm, "total_ms").verdict, Verdict::Regressed);
        assert_eq!(holm.regressions(0.0).len(), 1);
    }
}
