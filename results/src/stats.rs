//! Two-sample statistics for regression checks: a two-sided permutation
//! test on the difference of means and a bootstrap confidence interval of
//! the ratio of medians.
//!
//! Hand-written: the few crates that offer a permutation test do not give
//! the exact enumeration needed for the 5-10 samples a benchmark has, and
//! the whole method is some sixty lines.
//!
//! Both are deterministic for a given seed, so the same two sample sets
//! always get the same verdict.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::summary::median;

/// How a permutation test is run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PermutationPlan {
    /// Enumerate every split of the pooled samples when there are at most
    /// this many; beyond, draw [`Self::random_permutations`] at random.
    pub exact_limit: u64,
    /// The most random permutations drawn when the exact test is too large:
    /// its reciprocal is the smallest p-value the test can give, which must
    /// stay below alpha / m after Holm's correction over m comparisons.
    pub random_permutations: u32,
    /// Stop drawing once this many permutations were at least as extreme
    /// (Besag & Clifford 1991): p is then clearly large, and only the
    /// comparisons with a small p pay for all the draws.
    pub stop_after_exceedances: u32,
    /// Seed of the random permutations.
    pub seed: u64,
}

impl Default for PermutationPlan {
    fn default() -> Self {
        Self {
            // C(20, 10) = 184756: ten repetitions a side stay exact.
            exact_limit: 200_000,
            // Smallest p 1e-6: below 0.01 / 1000 comparisons.
            random_permutations: 1_000_000,
            stop_after_exceedances: 20,
            seed: 0x6d73_622d_6265_6e63,
        }
    }
}

/// The outcome of a permutation test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PermutationOutcome {
    /// Two-sided p-value of the difference of means.
    pub p_value: f64,
    /// The smallest p-value this test could have given these sample counts:
    /// above the significance level, no difference can ever be significant.
    pub min_p_value: f64,
    /// Every split enumerated (true) or random permutations drawn.
    pub exact: bool,
    /// Splits enumerated or permutations drawn.
    pub permutations: u64,
}

/// Number of ways to choose `k` of `n`, saturating at `u64::MAX`.
pub fn binomial(n: u64, k: u64) -> u64 {
    if k > n {
        return 0;
    }
    let k = k.min(n - k);
    let mut acc: u128 = 1;
    for i in 0..k {
        acc = acc * u128::from(n - i) / u128::from(i + 1);
        if acc > u128::from(u64::MAX) {
            return u64::MAX;
        }
    }
    acc as u64
}

/// Two-sided permutation test of `a` against `b` on the difference of
/// means. `None` when either side is empty.
///
/// A split counts as at least as extreme as the observed one when its
/// absolute difference is not smaller, with a relative tolerance for
/// rounding, so the observed split itself always counts.
pub fn permutation_test(
    a: &[f64],
    b: &[f64],
    plan: &PermutationPlan,
) -> Option<PermutationOutcome> {
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let pooled: Vec<f64> = a.iter().chain(b).copied().collect();
    let total: f64 = pooled.iter().sum();
    let (n_a, n_b) = (a.len(), b.len());
    let diff_of = |sum_a: f64| ((total - sum_a) / n_b as f64 - sum_a / n_a as f64).abs();
    let observed = diff_of(a.iter().sum());
    let scale = pooled.iter().fold(0.0_f64, |m, v| m.max(v.abs()));
    let tolerance = scale * 1e-12;
    let splits = binomial(pooled.len() as u64, n_a as u64);
    // Two splits (a, b) and (b, a) are mirror images when the sides are the
    // same size, so the observed extreme always has a twin: 2 / C(n, k).
    let extremes_at_least = if n_a == n_b { 2 } else { 1 };
    if splits <= plan.exact_limit {
        let mut at_least = 0_u64;
        let mut index: Vec<usize> = (0..n_a).collect();
        loop {
            let sum_a: f64 = index.iter().map(|&i| pooled[i]).sum();
            if diff_of(sum_a) >= observed - tolerance {
                at_least += 1;
            }
            if !next_combination(&mut index, pooled.len()) {
                break;
            }
        }
        Some(PermutationOutcome {
            p_value: at_least as f64 / splits as f64,
            min_p_value: extremes_at_least as f64 / splits as f64,
            exact: true,
            permutations: splits,
        })
    } else {
        let mut rng = StdRng::seed_from_u64(plan.seed);
        let mut shuffled = pooled.clone();
        let mut at_least = 0_u64;
        let mut drawn = 0_u64;
        let max = u64::from(plan.random_permutations);
        let stop = u64::from(plan.stop_after_exceedances.max(1));
        while drawn < max {
            // Only the first side's members matter: draw n_a of the pool.
            let (side_a, _) = shuffled.partial_shuffle(&mut rng, n_a);
            drawn += 1;
            if diff_of(side_a.iter().sum()) >= observed - tolerance {
                at_least += 1;
                if at_least >= stop {
                    return Some(PermutationOutcome {
                        p_value: at_least as f64 / drawn as f64,
                        min_p_value: 1.0 / (max + 1) as f64,
                        exact: false,
                        permutations: drawn,
                    });
                }
            }
        }
        // The observed split is one of the permutations (Phipson & Smyth
        // 2010), so p is never zero.
        Some(PermutationOutcome {
            p_value: (at_least + 1) as f64 / (drawn + 1) as f64,
            min_p_value: 1.0 / (max + 1) as f64,
            exact: false,
            permutations: drawn,
        })
    }
}

/// Advances `index` (strictly increasing, each < `n`) to the next
/// combination in lexicographic order; false after the last.
fn next_combination(index: &mut [usize], n: usize) -> bool {
    let k = index.len();
    let mut i = k;
    while i > 0 {
        i -= 1;
        if index[i] < n - k + i {
            index[i] += 1;
            for j in i + 1..k {
                index[j] = index[j - 1] + 1;
            }
            return true;
        }
    }
    false
}

/// The median of `values` without reordering the caller's slice.
pub fn median_of(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    median(&mut v)
}

/// `median(b) / median(a)`; `None` when a side is empty or `a`'s median is 0.
pub fn ratio_of_medians(a: &[f64], b: &[f64]) -> Option<f64> {
    let (ma, mb) = (median_of(a)?, median_of(b)?);
    (ma != 0.0).then(|| mb / ma)
}

/// Percentile bootstrap confidence interval of [`ratio_of_medians`]: both
/// sides resampled with replacement `resamples` times. `confidence` is the
/// interval's coverage (0.99 for 99 %). `None` when the ratio is undefined
/// or every resample's is.
pub fn bootstrap_ratio_ci(
    a: &[f64],
    b: &[f64],
    confidence: f64,
    resamples: u32,
    seed: u64,
) -> Option<(f64, f64)> {
    ratio_of_medians(a, b)?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut draw = |from: &[f64], into: &mut Vec<f64>| {
        into.clear();
        into.extend((0..from.len()).map(|_| from[rng.random_range(0..from.len())]));
    };
    let (mut ra, mut rb) = (Vec::with_capacity(a.len()), Vec::with_capacity(b.len()));
    let mut ratios = Vec::with_capacity(resamples as usize);
    for _ in 0..resamples {
        draw(a, &mut ra);
        draw(b, &mut rb);
        if let Some(r) = ratio_of_medians(&ra, &rb) {
            ratios.push(r);
        }
    }
    if ratios.is_empty() {
        return None;
    }
    ratios.sort_by(f64::total_cmp);
    let tail = (1.0 - confidence.clamp(0.0, 1.0)) / 2.0;
    let at = |q: f64| ratios[((ratios.len() - 1) as f64 * q).round() as usize];
    Some((at(tail), at(1.0 - tail)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binomial_known_values() {
        assert_eq!(binomial(4, 2), 6);
        assert_eq!(binomial(10, 5), 252);
        assert_eq!(binomial(20, 10), 184_756);
        assert_eq!(binomial(5, 0), 1);
        assert_eq!(binomial(3, 4), 0);
        assert_eq!(binomial(200, 100), u64::MAX);
    }

    #[test]
    fn exact_p_value_of_a_hand_case() {
        // Pooled {1,2,3,4}, six splits; |mean difference| is 2 for
        // ({1,2},{3,4}) and its mirror, 1 for two splits, 0 for two:
        // two of six are as extreme as the observed 2.
        let out = permutation_test(&[1.0, 2.0], &[3.0, 4.0], &PermutationPlan::default()).unwrap();
        assert!(out.exact);
        assert_eq!(out.permutations, 6);
        assert!((out.p_value - 2.0 / 6.0).abs() < 1e-12, "{out:?}");
        assert!((out.min_p_value - 2.0 / 6.0).abs() < 1e-12);

        // Observed split in the middle: every split is at least as extreme.
        let out = permutation_test(&[1.0, 4.0], &[2.0, 3.0], &PermutationPlan::default()).unwrap();
        assert!((out.p_value - 1.0).abs() < 1e-12, "{out:?}");
    }

    #[test]
    fn exact_three_against_three_cannot_reach_one_percent() {
        let out = permutation_test(
            &[1.0, 2.0, 3.0],
            &[10.0, 11.0, 12.0],
            &PermutationPlan::default(),
        )
        .unwrap();
        assert_eq!(out.permutations, 20);
        assert!((out.p_value - 0.1).abs() < 1e-12, "{out:?}");
        assert!(out.min_p_value > 0.01);
    }

    #[test]
    fn identical_samples_give_p_one() {
        let s = [5.0, 5.1, 4.9, 5.0, 5.2];
        let out = permutation_test(&s, &s, &PermutationPlan::default()).unwrap();
        assert!((out.p_value - 1.0).abs() < 1e-12, "{out:?}");
    }

    #[test]
    fn random_permutations_are_seeded_and_separate_clear_shifts() {
        let a: Vec<f64> = (0..15).map(|i| 100.0 + f64::from(i % 5)).collect();
        let b: Vec<f64> = (0..15).map(|i| 80.0 + f64::from(i % 5)).collect();
        let plan = PermutationPlan::default();
        let one = permutation_test(&a, &b, &plan).unwrap();
        let two = permutation_test(&a, &b, &plan).unwrap();
        assert!(!one.exact);
        assert_eq!(one, two);
        assert!(one.p_value < 0.001, "{one:?}");
        // Far below what Holm's correction over a thousand comparisons needs.
        assert!(one.p_value < 0.01 / 1000.0, "{one:?}");
        let same = permutation_test(&a, &a, &plan).unwrap();
        assert!(same.p_value > 0.5, "{same:?}");
    }

    #[test]
    fn empty_side_has_no_test() {
        assert!(permutation_test(&[], &[1.0], &PermutationPlan::default()).is_none());
    }

    #[test]
    fn bootstrap_interval_brackets_the_ratio() {
        let a = [100.0, 101.0, 99.0, 100.5, 99.5, 100.0, 100.2, 99.8];
        let b: Vec<f64> = a.iter().map(|v| v * 1.2).collect();
        let ratio = ratio_of_medians(&a, &b).unwrap();
        assert!((ratio - 1.2).abs() < 1e-9);
        let (lo, hi) = bootstrap_ratio_ci(&a, &b, 0.99, 2000, 7).unwrap();
        assert!(lo <= ratio && ratio <= hi, "{lo} {ratio} {hi}");
        assert!(lo > 1.1 && hi < 1.3, "{lo} {hi}");
        assert_eq!(bootstrap_ratio_ci(&a, &b, 0.99, 2000, 7), Some((lo, hi)));
    }

    #[test]
    fn ratio_undefined_for_zero_median() {
        assert_eq!(ratio_of_medians(&[0.0, 0.0, 0.0], &[1.0]), None);
        assert_eq!(bootstrap_ratio_ci(&[0.0, 0.0], &[1.0], 0.99, 10, 1), None);
    }
}
