//! The recording side of the metrics: counters, gauges, histograms, summaries and labelled
//! families of them. Recording is a relaxed atomic add (summaries take a short lock), so the
//! delivery path can count without slowing down; reading happens only when `/metrics` is
//! scraped or `info` samples the node.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::sync::RwLock;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        if super::COUNTING {
            self.0.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn add(&self, n: i64) {
        if super::COUNTING {
            self.0.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A float sum kept in an atomic (compare-and-swap on its bits).
#[derive(Debug, Default)]
struct AtomicF64(AtomicU64);

impl AtomicF64 {
    fn add(&self, value: f64) {
        let mut current = self.0.load(Ordering::Relaxed);
        loop {
            let next = (f64::from_bits(current) + value).to_bits();
            match self.0.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// A histogram with fixed upper bounds (`le`), Prometheus' classic kind.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per-bucket (not cumulative) counts; the last one is `+Inf`.
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum: AtomicF64,
}

/// A histogram read at one moment: cumulative bucket counts, as exposed.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramValue {
    pub bounds: &'static [f64],
    /// Cumulative counts per bound; `count` is the `+Inf` bucket.
    pub cumulative: Vec<u64>,
    pub count: u64,
    pub sum: f64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicF64::default(),
        }
    }

    pub fn observe(&self, value: f64) {
        if !super::COUNTING {
            return;
        }
        let bucket = self.bounds.partition_point(|bound| *bound < value);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.add(value);
    }

    pub fn value(&self) -> HistogramValue {
        let mut running = 0;
        let cumulative = self.buckets[..self.bounds.len()]
            .iter()
            .map(|bucket| {
                running += bucket.load(Ordering::Relaxed);
                running
            })
            .collect();
        HistogramValue {
            bounds: self.bounds,
            cumulative,
            count: self.count.load(Ordering::Relaxed),
            sum: self.sum.get(),
        }
    }
}

/// The quantiles a summary reports (Centrifugo's objectives).
pub const QUANTILES: [f64; 3] = [0.5, 0.99, 0.999];

/// How long an observation counts towards a summary's quantiles, in slices: 5 × 2 minutes,
/// the 10-minute window Centrifugo's summaries keep.
const SUMMARY_SLICES: usize = 5;
const SUMMARY_SLICE_SECS: u64 = 120;
/// Quantiles are estimated from logarithmic buckets, 16 per doubling (at most 6.25 % wide),
/// from 2^-20 s (about 1 µs) to 2^8 s: an estimate is within 3.2 % of the true value. A bucket
/// is found from the float's bits, without a logarithm.
const SUMMARY_SUB_BUCKETS: u64 = 16;
const SUMMARY_MIN_EXPONENT: i64 = -20;
const SUMMARY_BUCKETS: usize = 28 * SUMMARY_SUB_BUCKETS as usize;

/// A summary: `_sum`, `_count` and the [`QUANTILES`] of the last ten minutes. Recording is a
/// few relaxed atomic adds (no lock), as it happens once per client command.
#[derive(Debug)]
pub struct Summary {
    count: AtomicU64,
    sum: AtomicF64,
    slices: [SummarySlice; SUMMARY_SLICES],
}

#[derive(Debug)]
struct SummarySlice {
    /// Which 2-minute period the counts belong to (+1, so 0 means never used).
    period: AtomicU64,
    counts: Box<[AtomicU32]>,
}

impl Default for Summary {
    fn default() -> Self {
        let slice = || SummarySlice {
            period: AtomicU64::new(0),
            counts: (0..SUMMARY_BUCKETS).map(|_| AtomicU32::new(0)).collect(),
        };
        Self { count: AtomicU64::new(0), sum: AtomicF64::default(), slices: std::array::from_fn(|_| slice()) }
    }
}

/// A summary read at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryValue {
    /// `None`: no observation in the window (exposed as `NaN`).
    pub quantiles: [(f64, Option<f64>); 3],
    pub count: u64,
    pub sum: f64,
}

/// The 2-minute period `at` falls in, counted from the first use (+1).
fn summary_period(at: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    at.saturating_duration_since(epoch).as_secs() / SUMMARY_SLICE_SECS + 1
}

/// The bucket of `value`: its binary exponent and the top bits of its mantissa.
fn summary_bucket(value: f64) -> usize {
    if value.is_nan() || value <= 0.0 || value.is_infinite() {
        return 0;
    }
    let bits = value.to_bits();
    let exponent = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let sub = (bits >> (52 - SUMMARY_SUB_BUCKETS.trailing_zeros())) & (SUMMARY_SUB_BUCKETS - 1);
    let index = (exponent - SUMMARY_MIN_EXPONENT) * SUMMARY_SUB_BUCKETS as i64 + sub as i64;
    index.clamp(0, SUMMARY_BUCKETS as i64 - 1) as usize
}

/// The middle of bucket `index` (geometric): within half a bucket of every value in it.
fn summary_bucket_middle(index: usize) -> f64 {
    let octave = (index as i64 / SUMMARY_SUB_BUCKETS as i64 + SUMMARY_MIN_EXPONENT) as i32;
    let sub = (index as u64 % SUMMARY_SUB_BUCKETS) as f64;
    let low = 2f64.powi(octave) * (1.0 + sub / SUMMARY_SUB_BUCKETS as f64);
    let high = 2f64.powi(octave) * (1.0 + (sub + 1.0) / SUMMARY_SUB_BUCKETS as f64);
    (low * high).sqrt()
}

impl Summary {
    /// Records `value` observed at `at` (which picks its time slice).
    pub fn observe_at(&self, value: f64, at: Instant) {
        if !super::COUNTING {
            return;
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.add(value);
        let period = summary_period(at);
        let slice = &self.slices[(period % SUMMARY_SLICES as u64) as usize];
        let seen = slice.period.load(Ordering::Relaxed);
        // The first observation of a new period claims the slice and clears the old counts
        // (an observation racing it may be lost or kept: a summary is an estimate).
        if seen != period
            && slice.period.compare_exchange(seen, period, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            slice.counts.iter().for_each(|count| count.store(0, Ordering::Relaxed));
        }
        slice.counts[summary_bucket(value)].fetch_add(1, Ordering::Relaxed);
    }

    #[cfg(test)]
    fn observe(&self, value: f64) {
        self.observe_at(value, Instant::now());
    }

    pub fn value(&self) -> SummaryValue {
        let period = summary_period(Instant::now());
        let mut merged = vec![0u64; SUMMARY_BUCKETS];
        for slice in &self.slices {
            let slice_period = slice.period.load(Ordering::Relaxed);
            if slice_period == 0 || slice_period + (SUMMARY_SLICES as u64) <= period {
                continue;
            }
            for (total, count) in merged.iter_mut().zip(slice.counts.iter()) {
                *total += u64::from(count.load(Ordering::Relaxed));
            }
        }
        let observed: u64 = merged.iter().sum();
        let quantile = |q: f64| {
            (observed > 0).then(|| {
                let rank = ((q * observed as f64).ceil() as u64).max(1);
                let mut seen = 0;
                let bucket = merged.iter().position(|count| {
                    seen += count;
                    seen >= rank
                });
                summary_bucket_middle(bucket.unwrap_or(SUMMARY_BUCKETS - 1))
            })
        };
        SummaryValue {
            quantiles: QUANTILES.map(|q| (q, quantile(q))),
            count: self.count.load(Ordering::Relaxed),
            sum: self.sum.get(),
        }
    }
}

/// A duration recorded both ways Centrifugo exposes it: a summary under the metric's name and
/// a histogram under `<name>_histogram`.
#[derive(Debug)]
pub struct Timing {
    pub summary: Summary,
    pub histogram: Histogram,
}

impl Timing {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self { summary: Summary::default(), histogram: Histogram::new(bounds) }
    }

    /// Records the time from `started` to now (one clock read).
    pub fn observe_since(&self, started: Instant) {
        if !super::COUNTING {
            return;
        }
        let now = Instant::now();
        let seconds = now.saturating_duration_since(started).as_secs_f64();
        self.summary.observe_at(seconds, now);
        self.histogram.observe(seconds);
    }
}

/// Series beyond this many in one family share one series whose label values are all
/// `other`: label values that come from outside (error codes a proxy returns, API method
/// names) must not grow memory without bound.
pub const MAX_SERIES_PER_FAMILY: usize = 1000;

/// Label values that replace those of series past [`MAX_SERIES_PER_FAMILY`].
pub const OVERFLOW_LABEL: &str = "other";

/// Series by the hash of their label values (collisions share a bucket).
type SeriesMap<M> = HashMap<u64, Vec<(Box<[Box<str>]>, Arc<M>)>>;

/// A metric per combination of label values, created on first use. Looking a series up does
/// not allocate: series are found by a hash of the values, then compared.
#[derive(Debug)]
pub struct Family<M> {
    /// Label names, sorted (the order they are exposed in).
    pub names: &'static [&'static str],
    series: RwLock<SeriesMap<M>>,
    count: std::sync::atomic::AtomicUsize,
    make: fn() -> M,
}

fn hash_of<'a>(values: impl Iterator<Item = &'a str>) -> u64 {
    let mut hasher = DefaultHasher::new();
    values.for_each(|value| value.hash(&mut hasher));
    hasher.finish()
}

impl<M> Family<M> {
    pub fn new(names: &'static [&'static str], make: fn() -> M) -> Self {
        debug_assert!(names.is_sorted(), "label names are exposed sorted");
        Self { names, series: RwLock::default(), count: Default::default(), make }
    }

    fn find(map: &SeriesMap<M>, hash: u64, values: &[&str]) -> Option<Arc<M>> {
        let bucket = map.get(&hash)?;
        let same =
            |key: &[Box<str>]| key.len() == values.len() && key.iter().zip(values).all(|(a, b)| &**a == *b);
        bucket.iter().find(|(key, _)| same(key)).map(|(_, series)| series.clone())
    }

    /// The series for `values` (one per name in [`Self::names`]).
    pub fn get(&self, values: &[&str]) -> Arc<M> {
        debug_assert_eq!(values.len(), self.names.len());
        let hash = hash_of(values.iter().copied());
        if let Some(series) = Self::find(&self.series.read_locked(), hash, values) {
            return series;
        }
        let overflow = [OVERFLOW_LABEL; 8];
        let mut map = self.series.write_locked();
        let (hash, values) = if self.count.load(Ordering::Relaxed) < MAX_SERIES_PER_FAMILY {
            (hash, values)
        } else {
            let values = &overflow[..values.len()];
            (hash_of(values.iter().copied()), values)
        };
        if let Some(series) = Self::find(&map, hash, values) {
            return series;
        }
        let series = Arc::new((self.make)());
        let key = values.iter().map(|value| Box::from(*value)).collect();
        map.entry(hash).or_default().push((key, series.clone()));
        self.count.fetch_add(1, Ordering::Relaxed);
        series
    }

    /// Every series with its label values, sorted by them.
    pub fn series(&self) -> Vec<(Vec<String>, Arc<M>)> {
        let map = self.series.read_locked();
        let mut all: Vec<(Vec<String>, Arc<M>)> = map
            .values()
            .flatten()
            .map(|(key, series)| (key.iter().map(|value| value.to_string()).collect(), series.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_inclusive() {
        static BOUNDS: [f64; 3] = [0.1, 1.0, 10.0];
        let histogram = Histogram::new(&BOUNDS);
        for value in [0.05, 0.1, 0.5, 20.0] {
            histogram.observe(value);
        }
        let value = histogram.value();
        assert_eq!(value.cumulative, vec![2, 3, 3], "le is inclusive: 0.1 falls in le=0.1");
        assert_eq!(value.count, 4);
        assert!((value.sum - 20.65).abs() < 1e-9);
    }

    #[test]
    fn summary_quantiles_are_within_five_percent() {
        let summary = Summary::default();
        for i in 1..=1000 {
            summary.observe(f64::from(i) / 1000.0);
        }
        let value = summary.value();
        assert_eq!(value.count, 1000);
        for ((q, estimate), exact) in value.quantiles.iter().zip([0.5, 0.99, 0.999]) {
            let estimate = estimate.expect("observed");
            assert!((estimate - exact).abs() / exact < 0.05, "q{q}: {estimate} vs {exact}");
        }
        assert_eq!(Summary::default().value().quantiles[0].1, None, "no observation: NaN");
    }

    #[test]
    fn a_family_stops_growing_at_its_bound() {
        let family: Family<Counter> = Family::new(&["code"], Counter::default);
        for code in 0..MAX_SERIES_PER_FAMILY + 10 {
            family.get(&[&code.to_string()]).inc();
        }
        let series = family.series();
        assert_eq!(series.len(), MAX_SERIES_PER_FAMILY + 1);
        let other = series.iter().find(|(values, _)| values[0] == OVERFLOW_LABEL).expect("overflow series");
        assert_eq!(other.1.get(), 10);
        family.get(&["7"]).inc();
        assert_eq!(family.get(&["7"]).get(), 2, "existing series keep counting");
    }
}
