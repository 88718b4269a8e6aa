//! Folding repetitions into one plotted point: a median and a band.
//!
//! Every point of every figure is a [`Band`]: the median of the
//! repetitions, a low and a high end, how many repetitions it stands for,
//! and which spread the ends are ([`BandKind`]), so a caption can say
//! exactly what the whiskers mean.

use hdrhistogram::Histogram;

/// Repetitions needed before p10 and p90 mean something different from
/// the extremes; with fewer, the band is the min-max range and says so.
pub const MIN_REPS_FOR_P10_P90: usize = 5;

/// What the ends of a band are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BandKind {
    /// One repetition: no spread to show.
    Single,
    /// The smallest and largest repetition.
    MinMax,
    /// The 10th and 90th percentile across repetitions (interpolated).
    P10P90,
    /// The 1st and 99th percentile of every sample of every repetition
    /// (merged latency histograms).
    HistP1P99,
}

impl BandKind {
    /// How captions and CSV files name it.
    pub fn describe(self) -> &'static str {
        match self {
            BandKind::Single => "one repetition (no spread)",
            BandKind::MinMax => "min-max across repetitions",
            BandKind::P10P90 => "p10-p90 across repetitions",
            BandKind::HistP1P99 => "p1-p99 of all samples (merged histograms)",
        }
    }

    /// A short machine-friendly name for the CSV column.
    pub fn short(self) -> &'static str {
        match self {
            BandKind::Single => "single",
            BandKind::MinMax => "min-max",
            BandKind::P10P90 => "p10-p90",
            BandKind::HistP1P99 => "p1-p99",
        }
    }
}

/// How a figure wants its repetitions folded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BandPolicy {
    /// p10-p90 across repetitions when there are enough, else min-max.
    Spread,
    /// min-max across repetitions: latencies measured once per repetition,
    /// where the extremes are the honest spread.
    MinMax,
}

/// One plotted point: a median and the band around it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Band {
    pub median: f64,
    pub low: f64,
    pub high: f64,
    /// Repetitions (or, for merged histograms, repetitions merged).
    pub n: usize,
    pub kind: BandKind,
}

impl Band {
    /// Multiplies every value (unit conversion).
    pub fn scaled(self, factor: f64) -> Band {
        Band {
            median: self.median * factor,
            low: self.low * factor,
            high: self.high * factor,
            ..self
        }
    }
}

/// The `q` quantile (0..=1) of sorted values, interpolating linearly
/// between the two nearest ranks (the usual "type 7" definition), so the
/// 0.5 quantile of an even count is the mean of the middle two.
///
/// Returns None for an empty slice or a `q` outside 0..=1.
pub fn quantile_sorted(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * frac)
}

/// Folds one value per repetition into a band. Non-finite values are
/// ignored (they cannot be plotted); None when nothing is left.
pub fn band_of(values: &[f64], policy: BandPolicy) -> Option<Band> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let median = quantile_sorted(&v, 0.5)?;
    let n = v.len();
    let (kind, low, high) = if n == 1 {
        (BandKind::Single, v[0], v[0])
    } else if policy == BandPolicy::Spread && n >= MIN_REPS_FOR_P10_P90 {
        (
            BandKind::P10P90,
            quantile_sorted(&v, 0.1)?,
            quantile_sorted(&v, 0.9)?,
        )
    } else {
        (BandKind::MinMax, v[0], v[n - 1])
    };
    Some(Band {
        median,
        low,
        high,
        n,
        kind,
    })
}

/// The `q` quantile of the merged histograms with p1 and p99 as the band.
/// `histograms` holds one histogram per repetition; None when they hold
/// no samples at all or cannot be merged.
pub fn band_of_histograms(histograms: &[Histogram<u64>], q: f64) -> Option<Band> {
    let first = histograms.first()?;
    let mut merged = Histogram::<u64>::new_from(first);
    for h in histograms {
        merged.add(h).ok()?;
    }
    if merged.is_empty() {
        return None;
    }
    Some(Band {
        median: merged.value_at_quantile(q) as f64,
        low: merged.value_at_quantile(0.01) as f64,
        high: merged.value_at_quantile(0.99) as f64,
        n: histograms.len(),
        kind: BandKind::HistP1P99,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_interpolates_between_ranks() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile_sorted(&v, 0.0), Some(1.0));
        assert_eq!(quantile_sorted(&v, 1.0), Some(4.0));
        assert_eq!(quantile_sorted(&v, 0.5), Some(2.5));
        // pos = 0.1 * 3 = 0.3: 1 + 0.3 * (2 - 1)
        let p10 = quantile_sorted(&v, 0.1).unwrap();
        assert!((p10 - 1.3).abs() < 1e-12, "{p10}");
        assert_eq!(quantile_sorted(&[], 0.5), None);
        assert_eq!(quantile_sorted(&v, 1.5), None);
        assert_eq!(quantile_sorted(&v, -0.1), None);
    }

    #[test]
    fn few_repetitions_give_min_max_and_say_so() {
        let b = band_of(&[30.0, 10.0, 20.0], BandPolicy::Spread).unwrap();
        assert_eq!(b.median, 20.0);
        assert_eq!((b.low, b.high), (10.0, 30.0));
        assert_eq!(b.kind, BandKind::MinMax);
        assert_eq!(b.n, 3);
    }

    #[test]
    fn enough_repetitions_give_p10_p90() {
        // 0..=10: p10 = 1, p90 = 9, median 5, whatever the input order.
        let values: Vec<f64> = (0..=10).rev().map(f64::from).collect();
        let b = band_of(&values, BandPolicy::Spread).unwrap();
        assert_eq!(b.kind, BandKind::P10P90);
        assert_eq!((b.low, b.median, b.high), (1.0, 5.0, 9.0));
        assert_eq!(b.n, 11);
        // The same values under the latency policy keep the extremes.
        let m = band_of(&values, BandPolicy::MinMax).unwrap();
        assert_eq!((m.kind, m.low, m.high), (BandKind::MinMax, 0.0, 10.0));
    }

    #[test]
    fn single_and_empty_and_non_finite() {
        let b = band_of(&[7.0], BandPolicy::Spread).unwrap();
        assert_eq!(
            (b.kind, b.low, b.median, b.high),
            (BandKind::Single, 7.0, 7.0, 7.0)
        );
        assert_eq!(band_of(&[], BandPolicy::Spread), None);
        assert_eq!(
            band_of(&[f64::NAN, f64::INFINITY], BandPolicy::Spread),
            None
        );
        let b = band_of(&[f64::NAN, 2.0, 4.0], BandPolicy::Spread).unwrap();
        assert_eq!((b.n, b.median), (2, 3.0));
    }

    #[test]
    fn scaling_keeps_kind_and_count() {
        let b = band_of(&[1000.0, 3000.0], BandPolicy::Spread)
            .unwrap()
            .scaled(1e-3);
        assert_eq!((b.low, b.median, b.high), (1.0, 2.0, 3.0));
        assert_eq!((b.n, b.kind), (2, BandKind::MinMax));
    }

    #[test]
    fn merged_histograms_give_p1_p99_of_all_samples() {
        let mut a = Histogram::<u64>::new(3).unwrap();
        let mut b = Histogram::<u64>::new(3).unwrap();
        // 1..=100 split over two repetitions: the merged distribution is
        // 1..=100, whatever the split.
        for v in 1..=50u64 {
            a.record(v).unwrap();
        }
        for v in 51..=100u64 {
            b.record(v).unwrap();
        }
        let band = band_of_histograms(&[a.clone(), b], 0.5).unwrap();
        assert_eq!(band.kind, BandKind::HistP1P99);
        assert_eq!(band.n, 2);
        assert_eq!(band.median, 50.0);
        assert_eq!(band.low, 1.0);
        assert_eq!(band.high, 99.0);
        // One repetition alone: its own p50.
        let only_a = band_of_histograms(&[a], 0.5).unwrap();
        assert_eq!(only_a.median, 25.0);
        assert_eq!(band_of_histograms(&[], 0.5), None);
        let empty = Histogram::<u64>::new(3).unwrap();
        assert_eq!(band_of_histograms(&[empty], 0.5), None);
    }
}
