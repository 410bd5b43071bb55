//! The `metrics` object of a node in the `info` API, built from the same families `/metrics`
//! exposes, the way Centrifugo builds it: only `centrifugo_*` families; the name split at its
//! first two underscores and joined with dots (`centrifugo_node_num_clients` →
//! `centrifugo.node.num_clients`); non-empty labels appended as `.name.value`; counters as the
//! change over the aggregation interval, gauges as they are, summaries as `sum` and `count`
//! changes plus `quantile.50/99/999`; histograms left out.

use std::collections::HashMap;

use super::text::{Family, Series, Value};

/// Keeps the previous interval's counter totals, to report changes.
#[derive(Debug, Default)]
pub struct InfoAggregator {
    previous: HashMap<String, f64>,
}

impl InfoAggregator {
    /// The `items` of one aggregation interval.
    pub fn items(&mut self, families: &[Family]) -> HashMap<String, f64> {
        let mut items = HashMap::new();
        let mut totals = HashMap::new();
        for family in families.iter().filter(|f| f.name.starts_with("centrifugo_")) {
            let mut parts = family.name.splitn(3, '_');
            let (Some(namespace), Some(subsystem), Some(name)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let base = format!("{namespace}.{subsystem}.{name}");
            for series in &family.series {
                self.add_series(&base, series, &mut items, &mut totals);
            }
        }
        self.previous = totals;
        items
    }

    fn add_series(
        &self,
        base: &str,
        series: &Series,
        items: &mut HashMap<String, f64>,
        totals: &mut HashMap<String, f64>,
    ) {
        let key = |value_name: Option<&str>| {
            let mut key = base.to_owned();
            if let Some(value_name) = value_name {
                key.push('.');
                key.push_str(value_name);
            }
            for (label, value) in series.labels.iter().filter(|(_, value)| !value.is_empty()) {
                key.push_str(&format!(".{label}.{value}"));
            }
            key
        };
        let mut delta = |key: String, total: f64| {
            let change = total - self.previous.get(&key).copied().unwrap_or(0.0);
            totals.insert(key.clone(), total);
            items.insert(key, change);
        };
        match &series.value {
            Value::Gauge(value) => {
                items.insert(key(None), *value);
            }
            Value::Counter(total) => delta(key(None), *total),
            Value::Summary(summary) => {
                delta(key(Some("sum")), summary.sum);
                delta(key(Some("count")), summary.count as f64);
                for (q, value) in &summary.quantiles {
                    let Some(value) = value else { continue };
                    let name = format!("quantile.{}", quantile_name(*q));
                    items.insert(key(Some(&name)), *value);
                }
            }
            Value::Histogram(_) => {}
        }
    }
}

/// 0.5 → `50`, 0.99 → `99`, 0.999 → `999`, as Centrifugo names them.
fn quantile_name(q: f64) -> String {
    let mut name = format!("{}", (q * 1000.0).round() as u64);
    if name.len() > 2 && name.ends_with('0') {
        name.pop();
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::primitives::SummaryValue;

    fn family(name: &str, labels: Vec<(&'static str, String)>, value: Value) -> Family {
        Family::new(name, "help").with(labels, value)
    }

    #[test]
    fn items_flatten_names_and_labels_and_report_counter_changes() {
        let summary = SummaryValue {
            quantiles: [(0.5, Some(0.25)), (0.99, None), (0.999, Some(1.0))],
            count: 4,
            sum: 2.0,
        };
        let families = |sent: f64| {
            vec![
                family("centrifugo_node_num_clients", vec![], Value::Gauge(3.0)),
                family(
                    "centrifugo_node_messages_sent_count",
                    vec![("channel_namespace", String::new()), ("type", "publication".into())],
                    Value::Counter(sent),
                ),
                family("centrifugo_map_broker_cleanup_removed_count", vec![], Value::Counter(1.0)),
                family(
                    "centrifugo_client_command_duration_seconds",
                    vec![("method", "connect".into())],
                    Value::Summary(summary.clone()),
                ),
                family("spinwire_outbound_queue_bytes", vec![], Value::Gauge(9.0)),
            ]
        };
        let mut aggregator = InfoAggregator::default();
        let first = aggregator.items(&families(10.0));
        assert_eq!(first["centrifugo.node.num_clients"], 3.0);
        assert_eq!(first["centrifugo.node.messages_sent_count.type.publication"], 10.0);
        assert_eq!(first["centrifugo.map.broker_cleanup_removed_count"], 1.0);
        assert_eq!(first["centrifugo.client.command_duration_seconds.quantile.50.method.connect"], 0.25);
        assert_eq!(first["centrifugo.client.command_duration_seconds.quantile.999.method.connect"], 1.0);
        assert_eq!(first["centrifugo.client.command_duration_seconds.count.method.connect"], 4.0);
        assert!(!first.contains_key("centrifugo.client.command_duration_seconds.quantile.99.method.connect"));
        assert!(!first.keys().any(|k| k.starts_with("spinwire")), "only centrifugo_ families");
        let second = aggregator.items(&families(15.0));
        assert_eq!(
            second["centrifugo.node.messages_sent_count.type.publication"], 5.0,
            "counters report changes"
        );
        assert_eq!(second["centrifugo.client.command_duration_seconds.count.method.connect"], 0.0);
        assert_eq!(second["centrifugo.node.num_clients"], 3.0, "gauges as they are");
    }

    #[test]
    fn quantile_names() {
        assert_eq!([0.5, 0.99, 0.999].map(quantile_name), ["50", "99", "999"]);
    }
}
