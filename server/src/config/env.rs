//! Environment overrides, named after Centrifugo's rules.
//!
//! A key path becomes a variable by upper-casing it and joining with `_`:
//! `client.token.hmac_secret_key` → `SPINWIRE_CLIENT_TOKEN_HMAC_SECRET_KEY`. The Centrifugo
//! spelling (`CENTRIFUGO_…`) is read too; the `SPINWIRE_` one wins when both are set.
//! * scalars are parsed by the type of the default value;
//! * lists of scalars are space-separated (or a JSON array);
//! * opaque sections take JSON;
//! * named arrays (`channel.namespaces`, `rpc.namespaces`, `proxies`, `consumers`) take a JSON array or a
//!   space-separated list of names, then per-item variables
//!   `…_CHANNEL_NAMESPACES_<NAME>_<OPTION>` (name upper-cased, `.`/`-` → `_`).
//!
//! Only keys that exist in the defaults are looked up, so the walk is bounded by the schema.

use serde_json::{Map, Value};

use super::{ConfigError, invalid};

/// Prefixes read, strongest first.
pub const PREFIXES: &[&str] = &["SPINWIRE_", "CENTRIFUGO_"];

/// Named arrays and the template of their items.
fn named_arrays() -> [(&'static [&'static str], &'static Value); 4] {
    let templates = super::templates();
    [
        (&["channel", "namespaces"], &templates.namespace),
        (&["rpc", "namespaces"], &templates.rpc_namespace),
        (&["proxies"], &templates.named_proxy),
        (&["consumers"], &templates.consumer),
    ]
}

fn lookup(env: &dyn Fn(&str) -> Option<String>, suffix: &str) -> Option<(String, String)> {
    PREFIXES.iter().find_map(|prefix| {
        let name = format!("{prefix}{suffix}");
        env(&name).map(|value| (name, value))
    })
}

fn env_suffix(path: &[String]) -> String {
    path.iter()
        .map(|segment| segment.to_ascii_uppercase().replace(['.', '-'], "_"))
        .collect::<Vec<_>>()
        .join("_")
}

/// Applies environment overrides on top of `value` (the file config as JSON).
pub fn apply(
    value: &mut Value,
    env: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    let _ = warnings;
    let defaults = &super::templates().config;
    let mut path = Vec::new();
    apply_tree(value, defaults, &mut path, env)?;

    for (array_path, template) in named_arrays() {
        let array_path: Vec<String> = array_path.iter().map(|s| (*s).to_owned()).collect();
        let suffix = env_suffix(&array_path);
        if let Some((name, text)) = lookup(env, &suffix) {
            let items = if text.trim_start().starts_with('[') {
                serde_json::from_str::<Value>(&text)
                    .map_err(|e| invalid(name.clone(), format!("invalid JSON array: {e}")))?
            } else {
                Value::Array(
                    text.split_whitespace()
                        .map(|item| {
                            let mut object = Map::new();
                            object.insert("name".into(), Value::String(item.into()));
                            Value::Object(object)
                        })
                        .collect(),
                )
            };
            set(value, &array_path, items);
        }
        // Per-item overrides for the items now present.
        let Some(Value::Array(items)) = get_mut(value, &array_path) else { continue };
        for item in items.iter_mut() {
            let Some(item_name) = item.get("name").and_then(Value::as_str).map(str::to_owned) else {
                continue;
            };
            let mut item_path = array_path.clone();
            item_path.push(item_name);
            let mut template = template.clone();
            if let Value::Object(map) = &mut template {
                map.remove("name");
            }
            apply_tree(item, &template, &mut item_path, env)?;
        }
    }
    Ok(())
}

fn apply_tree(
    value: &mut Value,
    template: &Value,
    path: &mut Vec<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    let Value::Object(fields) = template else { return Ok(()) };
    for (key, field_template) in fields {
        path.push(key.clone());
        let is_named_array = named_arrays()
            .iter()
            .any(|(p, _)| p.len() == path.len() && p.iter().zip(path.iter()).all(|(a, b)| a == b));
        match field_template {
            Value::Object(inner) if !inner.is_empty() => {
                apply_tree_child(value, key, field_template, path, env)?;
            }
            _ if is_named_array => {}
            _ => {
                if let Some((name, text)) = lookup(env, &env_suffix(path)) {
                    let parsed = parse_scalar(&name, &text, field_template)?;
                    object_mut(value).insert(key.clone(), parsed);
                }
            }
        }
        path.pop();
    }
    Ok(())
}

fn apply_tree_child(
    value: &mut Value,
    key: &str,
    template: &Value,
    path: &mut Vec<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    let object = object_mut(value);
    let child = object.entry(key.to_owned()).or_insert_with(|| Value::Object(Map::new()));
    if !child.is_object() {
        // A wrong type from the file: leave it for deserialization to report with its key.
        return Ok(());
    }
    apply_tree(child, template, path, env)?;
    if child.as_object().is_some_and(Map::is_empty) {
        object.remove(key);
    }
    Ok(())
}

fn object_mut(value: &mut Value) -> &mut Map<String, Value> {
    if !value.is_object() {
        *value = Value::Object(Map::new());
    }
    value.as_object_mut().expect("just made an object")
}

fn get_mut<'a>(value: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    path.iter().try_fold(value, |current, key| current.get_mut(key))
}

fn set(value: &mut Value, path: &[String], new: Value) {
    let (last, parents) = path.split_last().expect("non-empty path");
    let mut current = value;
    for key in parents {
        current = object_mut(current).entry(key.clone()).or_insert_with(|| Value::Object(Map::new()));
    }
    object_mut(current).insert(last.clone(), new);
}

pub(super) fn parse_scalar(name: &str, text: &str, template: &Value) -> Result<Value, ConfigError> {
    Ok(match template {
        Value::Bool(_) => Value::Bool(match text.trim() {
            "1" | "t" | "T" | "true" | "TRUE" | "True" => true,
            "0" | "f" | "F" | "false" | "FALSE" | "False" => false,
            other => return Err(invalid(name, format!("invalid boolean {other:?}"))),
        }),
        Value::Number(_) => serde_json::from_str::<serde_json::Number>(text.trim())
            .map(Value::Number)
            .map_err(|_| invalid(name, format!("invalid number {text:?}")))?,
        Value::Array(_) => {
            if text.trim_start().starts_with('[') {
                serde_json::from_str(text).map_err(|e| invalid(name, format!("invalid JSON array: {e}")))?
            } else {
                Value::Array(text.split_whitespace().map(|s| Value::String(s.into())).collect())
            }
        }
        Value::Object(_) => {
            serde_json::from_str(text).map_err(|e| invalid(name, format!("invalid JSON object: {e}")))?
        }
        _ => Value::String(text.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::super::{ConfigDuration, build};

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> =
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn both_prefixes_are_read_and_spinwire_wins() {
        let env = env_of(&[
            ("CENTRIFUGO_CLIENT_TOKEN_HMAC_SECRET_KEY", "old"),
            ("CENTRIFUGO_HTTP_API_KEY", "api"),
            ("SPINWIRE_CLIENT_TOKEN_HMAC_SECRET_KEY", "new"),
            ("SPINWIRE_CLIENT_PING_INTERVAL", "30s"),
            ("CENTRIFUGO_CLIENT_ALLOWED_ORIGINS", "https://a https://b"),
            ("SPINWIRE_CHANNEL_WITHOUT_NAMESPACE_PRESENCE", "true"),
        ]);
        let c = build(None, &env).unwrap().config;
        assert_eq!(c.client.token.hmac_secret_key, "new");
        assert_eq!(c.http_api.key, "api");
        assert_eq!(c.client.ping_interval, ConfigDuration::secs(30));
        assert_eq!(c.client.allowed_origins, vec!["https://a", "https://b"]);
        assert!(c.channel.without_namespace.presence);
    }

    #[test]
    fn namespaces_from_names_and_item_variables() {
        let env = env_of(&[
            ("CENTRIFUGO_CHANNEL_NAMESPACES", "chat news-feed"),
            ("CENTRIFUGO_CHANNEL_NAMESPACES_CHAT_PRESENCE", "true"),
            ("SPINWIRE_CHANNEL_NAMESPACES_NEWS_FEED_HISTORY_SIZE", "10"),
            ("SPINWIRE_CHANNEL_NAMESPACES_NEWS_FEED_HISTORY_TTL", "60s"),
        ]);
        let c = build(None, &env).unwrap().config;
        assert_eq!(c.channel.namespaces.len(), 2);
        assert!(c.channel.namespaces[0].options.presence);
        assert_eq!(c.channel.namespaces[1].name, "news-feed");
        assert_eq!(c.channel.namespaces[1].options.history_size, 10);
    }

    #[test]
    fn named_proxies_from_the_environment() {
        let env = env_of(&[
            ("CENTRIFUGO_PROXIES", "backend"),
            ("CENTRIFUGO_PROXIES_BACKEND_ENDPOINT", "grpc://127.0.0.1:9000"),
            ("CENTRIFUGO_PROXIES_BACKEND_TIMEOUT", "2s"),
        ]);
        let c = build(None, &env).unwrap().config;
        assert_eq!(c.proxies.len(), 1);
        assert_eq!(
            (c.proxies[0].name.as_str(), c.proxies[0].proxy.endpoint.as_str()),
            ("backend", "grpc://127.0.0.1:9000")
        );
        assert_eq!(c.proxies[0].proxy.timeout, ConfigDuration::secs(2));
    }

    #[test]
    fn bad_env_value_names_the_variable() {
        let env = env_of(&[("SPINWIRE_CLIENT_INSECURE", "maybe")]);
        let err = build(None, &env).unwrap_err();
        assert!(err.to_string().starts_with("SPINWIRE_CLIENT_INSECURE:"), "{err}");
    }
}
