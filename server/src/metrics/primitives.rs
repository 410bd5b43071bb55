//! The recording side of the metrics: counters, gauges, histograms, summaries and labelled
//! families of them. Recording is a relaxed atomic add (summaries take a short lock), so the
//! delivery path can count without slowing down; reading happens only when `/metrics` is
//! scraped or `info` samples the node.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::sync::{Mutex, RwLock};

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
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
        self.0.fetch_add(n, Ordering::Relaxed);
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
/// Quantiles are estimated from logarithmic buckets: 10 % wide from 1 µs to about 3 minutes,
/// so an estimate is within 5 % of the true value.
const SUMMARY_MIN: f64 = 1e-6;
const SUMMARY_FACTOR: f64 = 1.1;
const SUMMARY_BUCKETS: usize = 200;

/// A summary: `_sum`, `_count` and the [`QUANTILES`] of the last ten minutes.
#[derive(Debug, Default)]
pub struct Summary {
    count: AtomicU64,
    sum: AtomicF64,
    window: Mutex<[SummarySlice; SUMMARY_SLICES]>,
}

#[derive(Debug, Default)]
struct SummarySlice {
    /// Which 2-minute period the counts belong to.
    period: u64,
    /// Empty until the slice is first used (most summaries see few periods).
    counts: Vec<u32>,
}

/// A summary read at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryValue {
    /// `None`: no observation in the window (exposed as `NaN`).
    pub quantiles: [(f64, Option<f64>); 3],
    pub count: u64,
    pub sum: f64,
}

fn summary_period() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / SUMMARY_SLICE_SECS
}

fn summary_bucket(value: f64) -> usize {
    if value <= SUMMARY_MIN {
        return 0;
    }
    let index = ((value / SUMMARY_MIN).ln() / SUMMARY_FACTOR.ln()).ceil();
    (index as usize).min(SUMMARY_BUCKETS - 1)
}

impl Summary {
    pub fn observe(&self, value: f64) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.add(value);
        let period = summary_period();
        let mut window = self.window.locked();
        let slice = &mut window[(period % SUMMARY_SLICES as u64) as usize];
        if slice.period != period || slice.counts.is_empty() {
            slice.period = period;
            slice.counts.clear();
            slice.counts.resize(SUMMARY_BUCKETS, 0);
        }
        let bucket = &mut slice.counts[summary_bucket(value)];
        *bucket = bucket.saturating_add(1);
    }

    pub fn value(&self) -> SummaryValue {
        let period = summary_period();
        let mut merged = vec![0u64; SUMMARY_BUCKETS];
        for slice in self.window.locked().iter() {
            if slice.counts.is_empty() || slice.period + (SUMMARY_SLICES as u64) <= period {
                continue;
            }
            for (total, count) in merged.iter_mut().zip(&slice.counts) {
                *total += u64::from(*count);
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
                // The bucket's geometric middle: within half a bucket of the true value.
                let index = bucket.unwrap_or(SUMMARY_BUCKETS - 1) as f64;
                SUMMARY_MIN * SUMMARY_FACTOR.powf((index - 0.5).max(0.0))
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

    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        self.summary.observe(seconds);
        self.histogram.observe(seconds);
    }
}

/// Series beyond this many in one family share one series whose label values are all
/// `other`: label values that come from outside (error codes a proxy returns, API method
/// names) must not grow memory without bound.
pub const MAX_SERIES_PER_FAMILY: usize = 1000;

/// Label values that replace those of series past [`MAX_SERIES_PER_FAMILY`].
pub const OVERFLOW_LABEL: &str = "other";

/// A metric per combination of label values, created on first use.
#[derive(Debug)]
pub struct Family<M> {
    /// Label names, sorted (the order they are exposed in).
    pub names: &'static [&'static str],
    series: RwLock<BTreeMap<Vec<String>, Arc<M>>>,
    make: fn() -> M,
}

impl<M> Family<M> {
    pub fn new(names: &'static [&'static str], make: fn() -> M) -> Self {
        debug_assert!(names.is_sorted(), "label names are exposed sorted");
        Self { names, series: RwLock::default(), make }
    }

    /// The series for `values` (one per name in [`Self::names`]).
    pub fn get(&self, values: &[&str]) -> Arc<M> {
        debug_assert_eq!(values.len(), self.names.len());
        let key: Vec<String> = values.iter().map(|value| (*value).to_owned()).collect();
        if let Some(series) = self.series.read_locked().get(&key) {
            return series.clone();
        }
        let mut series = self.series.write_locked();
        let key = if series.len() < MAX_SERIES_PER_FAMILY || series.contains_key(&key) {
            key
        } else {
            vec![OVERFLOW_LABEL.to_owned(); values.len()]
        };
        series.entry(key).or_insert_with(|| Arc::new((self.make)())).clone()
    }

    /// Every series with its label values, sorted by them.
    pub fn series(&self) -> Vec<(Vec<String>, Arc<M>)> {
        self.series.read_locked().iter().map(|(values, series)| (values.clone(), series.clone())).collect()
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
