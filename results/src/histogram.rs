//! Latency histograms (HdrHistogram) and their recorded form.

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Values above this are clamped into the top bucket: one hour in ns.
const HIGHEST_TRACKABLE: u64 = 3_600_000_000_000;
/// Three significant digits: 0.1% relative error at any magnitude.
const SIGNIFICANT_DIGITS: u8 = 3;

/// A histogram of durations or sizes, with three significant digits.
#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    inner: Histogram<u64>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    /// An empty histogram tracking 1 to one hour's worth of nanoseconds.
    pub fn new() -> Self {
        // The bounds are constants within hdrhistogram's documented limits
        // (low >= 1, high >= 2 * low, sigfig <= 5), so construction cannot fail.
        let inner = Histogram::new_with_bounds(1, HIGHEST_TRACKABLE, SIGNIFICANT_DIGITS)
            .expect("constant histogram bounds are valid");
        Self { inner }
    }

    /// Wraps an existing histogram (for example one recorded by a library).
    pub fn from_histogram(inner: Histogram<u64>) -> Self {
        Self { inner }
    }

    /// Records one value; values past the top are clamped rather than lost.
    pub fn record(&mut self, value: u64) {
        self.inner.saturating_record(value.max(1));
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Histogram<u64>) {
        // Our histogram tracks up to an hour; a foreign one recorded with a
        // wider range is clamped value by value instead of failing.
        if self.inner.add(other).is_err() {
            for v in other.iter_recorded() {
                self.inner
                    .saturating_record_n(v.value_iterated_to().max(1), v.count_at_value());
            }
        }
    }

    /// How many values were recorded.
    pub fn len(&self) -> u64 {
        self.inner.len()
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// The underlying histogram.
    pub fn inner(&self) -> &Histogram<u64> {
        &self.inner
    }

    /// The percentile summary plus the full serialized histogram.
    pub fn to_record(&self, unit: &str) -> HistogramRecord {
        let h = &self.inner;
        let mut encoded = Vec::new();
        let serialized = V2Serializer::new().serialize(h, &mut encoded).is_ok();
        let empty = h.is_empty();
        let q = |q: f64| if empty { 0 } else { h.value_at_quantile(q) };
        HistogramRecord {
            unit: unit.to_owned(),
            count: h.len(),
            min: if empty { 0 } else { h.min() },
            mean: if empty { 0.0 } else { h.mean() },
            p50: q(0.50),
            p90: q(0.90),
            p99: q(0.99),
            p999: q(0.999),
            max: if empty { 0 } else { h.max() },
            hdr_v2_base64: serialized
                .then(|| base64::engine::general_purpose::STANDARD.encode(&encoded)),
        }
    }
}

/// A histogram as recorded in a cell: the usual percentiles and the whole
/// distribution (HdrHistogram V2 encoding, base64) for later re-analysis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistogramRecord {
    /// Unit of every value: "ns", "us", "bytes".
    pub unit: String,
    pub count: u64,
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    /// The full histogram; absent only if serialization failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hdr_v2_base64: Option<String>,
}

impl HistogramRecord {
    /// Decodes the full histogram, if it was recorded.
    pub fn decode(&self) -> Option<Histogram<u64>> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(self.hdr_v2_base64.as_ref()?)
            .ok()?;
        Deserializer::new()
            .deserialize(&mut std::io::Cursor::new(bytes))
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_through_encoding() {
        let mut h = LatencyHistogram::new();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let rec = h.to_record("ns");
        assert_eq!(rec.count, 1000);
        assert!(rec.p50 >= 499_000 && rec.p50 <= 501_000, "p50 {}", rec.p50);
        assert!(rec.max >= 999_000);
        let back = rec.decode().expect("decodes");
        assert_eq!(back.len(), 1000);
        assert_eq!(
            back.value_at_quantile(0.99),
            h.inner().value_at_quantile(0.99)
        );
    }

    #[test]
    fn empty_histogram_has_zero_summary() {
        let rec = LatencyHistogram::new().to_record("ns");
        assert_eq!(rec.count, 0);
        assert_eq!(rec.p99, 0);
        assert_eq!(rec.max, 0);
    }

    #[test]
    fn garbage_encoding_decodes_to_none() {
        let mut rec = LatencyHistogram::new().to_record("ns");
        rec.hdr_v2_base64 = Some("not base64 at all!".into());
        assert!(rec.decode().is_none());
        rec.hdr_v2_base64 = Some(base64::engine::general_purpose::STANDARD.encode([0u8; 7]));
        assert!(rec.decode().is_none());
    }
}
