//! The metrics as read at one moment ([`Family`]), rendered in Prometheus' text exposition
//! format 0.0.4 the way Centrifugo's Go client renders it: families sorted by name, series by
//! label values, label pairs by name, and numbers as Go's shortest `%g` (`1e-06`, `1e+06`), so
//! a dashboard that selects `le="0.005"` finds the same series.

use std::fmt::Write as _;

use super::primitives::{HistogramValue, SummaryValue};

/// What a series holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Counter(f64),
    Gauge(f64),
    Histogram(HistogramValue),
    Summary(SummaryValue),
}

impl Value {
    fn type_name(&self) -> &'static str {
        match self {
            Value::Counter(_) => "counter",
            Value::Gauge(_) => "gauge",
            Value::Histogram(_) => "histogram",
            Value::Summary(_) => "summary",
        }
    }
}

/// One series: its label pairs (sorted by name) and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: Vec<(&'static str, String)>,
    pub value: Value,
}

/// One metric family.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: String,
    pub help: &'static str,
    pub series: Vec<Series>,
}

impl Family {
    pub fn new(name: impl Into<String>, help: &'static str) -> Self {
        Self { name: name.into(), help, series: Vec::new() }
    }

    pub fn with(mut self, labels: Vec<(&'static str, String)>, value: Value) -> Self {
        self.series.push(Series { labels, value });
        self
    }

    /// A family of one unlabelled series.
    pub fn single(name: impl Into<String>, help: &'static str, value: Value) -> Self {
        Self::new(name, help).with(Vec::new(), value)
    }
}

/// The text exposition of `families` (sorted here).
pub fn render(families: &mut [Family]) -> String {
    families.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = String::with_capacity(families.len() * 256);
    for family in families.iter_mut() {
        let Some(first) = family.series.first() else { continue };
        let type_name = first.value.type_name();
        family.series.sort_by(|a, b| a.labels.iter().map(|(_, v)| v).cmp(b.labels.iter().map(|(_, v)| v)));
        let _ = writeln!(out, "# HELP {} {}", family.name, escape_help(family.help));
        let _ = writeln!(out, "# TYPE {} {type_name}", family.name);
        for series in &family.series {
            render_series(&mut out, &family.name, series);
        }
    }
    out
}

fn render_series(out: &mut String, name: &str, series: &Series) {
    let labels = &series.labels;
    match &series.value {
        Value::Counter(value) | Value::Gauge(value) => line(out, name, labels, None, *value),
        Value::Histogram(histogram) => {
            let bucket = format!("{name}_bucket");
            for (bound, count) in histogram.bounds.iter().zip(&histogram.cumulative) {
                line(out, &bucket, labels, Some(("le", go_float(*bound))), *count as f64);
            }
            line(out, &bucket, labels, Some(("le", "+Inf".into())), histogram.count as f64);
            line(out, &format!("{name}_sum"), labels, None, histogram.sum);
            line(out, &format!("{name}_count"), labels, None, histogram.count as f64);
        }
        Value::Summary(summary) => {
            for (q, value) in &summary.quantiles {
                line(out, name, labels, Some(("quantile", go_float(*q))), value.unwrap_or(f64::NAN));
            }
            line(out, &format!("{name}_sum"), labels, None, summary.sum);
            line(out, &format!("{name}_count"), labels, None, summary.count as f64);
        }
    }
}

fn line(out: &mut String, name: &str, labels: &[(&str, String)], extra: Option<(&str, String)>, value: f64) {
    out.push_str(name);
    let mut pairs =
        labels.iter().map(|(n, v)| (*n, v.as_str())).chain(extra.iter().map(|(n, v)| (*n, v.as_str())));
    if let Some((label, value)) = pairs.next() {
        let _ = write!(out, "{{{label}=\"{}\"", escape_label(value));
        for (label, value) in pairs {
            let _ = write!(out, ",{label}=\"{}\"", escape_label(value));
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(&go_float(value));
    out.push('\n');
}

fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

/// `value` as Go's `strconv.FormatFloat(value, 'g', -1, 64)`: the shortest digits that read
/// back exactly, in exponent form when the decimal exponent is below -4 or at least 6
/// (`1e+06`, `123456.5`, `1e-05`).
pub fn go_float(value: f64) -> String {
    if value.is_nan() {
        return "NaN".into();
    }
    if value.is_infinite() {
        return if value > 0.0 { "+Inf".into() } else { "-Inf".into() };
    }
    if value == 0.0 {
        return "0".into();
    }
    let scientific = format!("{value:e}");
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    if (-4..6).contains(&exponent) {
        return format!("{value}");
    }
    let sign = if exponent < 0 { '-' } else { '+' };
    format!("{mantissa}e{sign}{:02}", exponent.abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_read_as_go_writes_them() {
        let cases = [
            (0.0, "0"),
            (1.0, "1"),
            (999_999.0, "999999"),
            (1e6, "1e+06"),
            (9_666_456.0, "9.666456e+06"),
            (123_456.5, "123456.5"),
            (0.0001, "0.0001"),
            (1e-5, "1e-05"),
            (6.119e-6, "6.119e-06"),
            (20000.0, "20000"),
            (0.005, "0.005"),
            (2.5, "2.5"),
            (-3.0, "-3"),
            (f64::INFINITY, "+Inf"),
        ];
        for (value, text) in cases {
            assert_eq!(go_float(value), text, "{value}");
        }
        assert_eq!(go_float(f64::NAN), "NaN");
    }

    #[test]
    fn renders_sorted_families_series_and_histograms() {
        static BOUNDS: [f64; 2] = [0.001, 0.5];
        let histogram = HistogramValue { bounds: &BOUNDS, cumulative: vec![1, 2], count: 3, sum: 1.25 };
        let mut families = vec![
            Family::new("b_total", "B.")
                .with(vec![("code", "200".into())], Value::Counter(2.0))
                .with(vec![("code", "101".into())], Value::Counter(1.0)),
            Family::single("a_seconds", "A \\ with\nnewline.", Value::Histogram(histogram)),
        ];
        let text = render(&mut families);
        let expected = "# HELP a_seconds A \\\\ with\\nnewline.\n# TYPE a_seconds histogram\n\
            a_seconds_bucket{le=\"0.001\"} 1\na_seconds_bucket{le=\"0.5\"} 2\n\
            a_seconds_bucket{le=\"+Inf\"} 3\na_seconds_sum 1.25\na_seconds_count 3\n\
            # HELP b_total B.\n# TYPE b_total counter\nb_total{code=\"101\"} 1\nb_total{code=\"200\"} 2\n";
        assert_eq!(text, expected);
    }
}
