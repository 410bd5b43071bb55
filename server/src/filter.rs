//! Publication tags filters (`SubscribeRequest.tf`): validation at subscribe time and
//! evaluation per delivered publication.
//!
//! A filter is a tree of `FilterNode`s: inner nodes combine children with `and`, `or` or `not`;
//! leaves compare one tag (`eq neq in nin ex nex sw ew ct lt lte gt gte`). Trees are bounded
//! ([`MAX_NODES`], [`MAX_DEPTH`]) so one subscriber cannot make fan-out expensive.

use std::collections::BTreeMap;

use crate::proto::client::FilterNode;

/// Most nodes a filter may have.
pub const MAX_NODES: usize = 64;
/// Deepest nesting a filter may have.
pub const MAX_DEPTH: usize = 8;

/// Checks that a filter is well formed and within bounds.
pub fn validate(node: &FilterNode) -> bool {
    let mut count = 0;
    validate_node(node, 1, &mut count)
}

fn validate_node(node: &FilterNode, depth: usize, count: &mut usize) -> bool {
    *count += 1;
    if *count > MAX_NODES || depth > MAX_DEPTH {
        return false;
    }
    match node.op.as_str() {
        "" => {
            !node.key.is_empty()
                && node.nodes.is_empty()
                && matches!(
                    node.cmp.as_str(),
                    "eq" | "neq"
                        | "in"
                        | "nin"
                        | "ex"
                        | "nex"
                        | "sw"
                        | "ew"
                        | "ct"
                        | "lt"
                        | "lte"
                        | "gt"
                        | "gte"
                )
        }
        "and" | "or" => {
            !node.nodes.is_empty() && node.nodes.iter().all(|child| validate_node(child, depth + 1, count))
        }
        "not" => node.nodes.len() == 1 && validate_node(&node.nodes[0], depth + 1, count),
        _ => false,
    }
}

/// Whether publication `tags` pass the (validated) filter.
pub fn matches(node: &FilterNode, tags: &BTreeMap<String, String>) -> bool {
    match node.op.as_str() {
        "and" => node.nodes.iter().all(|child| matches(child, tags)),
        "or" => node.nodes.iter().any(|child| matches(child, tags)),
        "not" => !node.nodes.first().is_some_and(|child| matches(child, tags)),
        _ => {
            let value = tags.get(&node.key);
            let number = |text: &str| text.parse::<f64>().ok();
            let compare =
                |check: fn(f64, f64) -> bool| match (value.and_then(|v| number(v)), number(&node.val)) {
                    (Some(a), Some(b)) => check(a, b),
                    _ => false,
                };
            match node.cmp.as_str() {
                "eq" => value.is_some_and(|v| *v == node.val),
                "neq" => value.is_none_or(|v| *v != node.val),
                "in" => value.is_some_and(|v| node.vals.contains(v)),
                "nin" => value.is_none_or(|v| !node.vals.contains(v)),
                "ex" => value.is_some(),
                "nex" => value.is_none(),
                "sw" => value.is_some_and(|v| v.starts_with(&node.val)),
                "ew" => value.is_some_and(|v| v.ends_with(&node.val)),
                "ct" => value.is_some_and(|v| v.contains(&node.val)),
                "lt" => compare(|a, b| a < b),
                "lte" => compare(|a, b| a <= b),
                "gt" => compare(|a, b| a > b),
                "gte" => compare(|a, b| a >= b),
                _ => false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(key: &str, cmp: &str, val: &str) -> FilterNode {
        FilterNode { key: key.into(), cmp: cmp.into(), val: val.into(), ..Default::default() }
    }

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn leaves() {
        let t = tags(&[("ticker", "BTC"), ("price", "101.5")]);
        assert!(matches(&leaf("ticker", "eq", "BTC"), &t));
        assert!(!matches(&leaf("ticker", "eq", "ETH"), &t));
        assert!(matches(&leaf("missing", "neq", "x"), &t));
        assert!(matches(&leaf("price", "gt", "100"), &t));
        assert!(!matches(&leaf("price", "lt", "100"), &t));
        assert!(matches(&leaf("ticker", "sw", "B"), &t));
        assert!(matches(&leaf("ticker", "ex", ""), &t));
        let mut within = leaf("ticker", "in", "");
        within.vals = vec!["ETH".into(), "BTC".into()];
        assert!(matches(&within, &t));
    }

    #[test]
    fn combinators_and_validation() {
        let t = tags(&[("a", "1")]);
        let and = FilterNode {
            op: "and".into(),
            nodes: vec![leaf("a", "eq", "1"), leaf("b", "nex", "")],
            ..Default::default()
        };
        assert!(validate(&and));
        assert!(matches(&and, &t));
        let not = FilterNode { op: "not".into(), nodes: vec![and], ..Default::default() };
        assert!(!matches(&not, &t));
        assert!(!validate(&leaf("a", "regex", "x")));
        assert!(!validate(&FilterNode { op: "not".into(), ..Default::default() }));
        let mut deep = leaf("a", "eq", "1");
        for _ in 0..MAX_DEPTH {
            deep = FilterNode { op: "not".into(), nodes: vec![deep], ..Default::default() };
        }
        assert!(!validate(&deep));
    }
}
