//! Loading: a file (JSON, YAML or TOML) and the environment layered over the defaults, with
//! every unknown key reported by its path and every type error naming its key.

use std::path::Path;

use serde_json::Value;

use super::proxy::ProxyConfig;
use super::schema::*;
use super::{ConfigError, env, invalid, validate};

/// A validated config plus what the user should be told about it.
#[derive(Debug)]
pub struct LoadedConfig {
    pub config: Config,
    /// Unknown keys, as `key: explanation` lines.
    pub warnings: Vec<String>,
    /// Environment variable names that were looked up (to spot misspelled ones).
    pub env_names_read: std::collections::HashSet<String>,
}

/// Reads a config file into a JSON value; the format follows the extension (default JSON).
pub fn load_file(path: &Path) -> Result<Value, ConfigError> {
    let shown = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
    parse_text(&text, path.extension().and_then(|e| e.to_str()).unwrap_or("json"), &shown)
}

/// Parses config text of the given format (`json`, `yaml`/`yml`, `toml`) into a JSON value.
pub fn parse_text(text: &str, extension: &str, shown: &str) -> Result<Value, ConfigError> {
    let parse_error = |format: &'static str, message: String| ConfigError::Parse {
        path: shown.to_owned(),
        format,
        message,
    };
    let value = match extension.to_ascii_lowercase().as_str() {
        "yaml" | "yml" => {
            serde_yaml_ng::from_str::<Value>(text).map_err(|e| parse_error("YAML", e.to_string()))?
        }
        "toml" => toml::from_str::<Value>(text).map_err(|e| parse_error("TOML", e.to_string()))?,
        _ => serde_json::from_str::<Value>(text).map_err(|e| parse_error("JSON", e.to_string()))?,
    };
    match value {
        Value::Object(_) => Ok(value),
        Value::Null => Ok(Value::Object(Default::default())),
        _ => Err(parse_error("config", "the top level must be an object".into())),
    }
}

/// Builds the config from an optional file value and the environment, then validates it.
pub fn build(file: Option<Value>, env: &dyn Fn(&str) -> Option<String>) -> Result<LoadedConfig, ConfigError> {
    build_with(file, env, &[])
}

/// Like [`build`], with command-line overrides (`("http_server.port", 9000)`) applied last.
pub fn build_with(
    file: Option<Value>,
    env: &dyn Fn(&str) -> Option<String>,
    overrides: &[(String, Value)],
) -> Result<LoadedConfig, ConfigError> {
    let mut value = file.unwrap_or_else(|| Value::Object(Default::default()));
    remove_nulls(&mut value);
    let mut warnings = Vec::new();
    unknown_keys(&value, &mut warnings);
    let env_names_read = std::cell::RefCell::new(std::collections::HashSet::new());
    let recording_env = |name: &str| {
        env_names_read.borrow_mut().insert(name.to_owned());
        env(name)
    };
    env::apply(&mut value, &recording_env, &mut warnings)?;
    let defaults = &super::templates().config;
    for (path, override_value) in overrides {
        let template = path.split('.').try_fold(defaults, |v, k| v.get(k));
        let coerced = match (template, override_value) {
            (Some(template), Value::String(text)) => env::parse_scalar(path, text, template)?,
            (Some(Value::String(_)), Value::Number(_) | Value::Bool(_)) => {
                Value::String(override_value.to_string())
            }
            _ => override_value.clone(),
        };
        set_path(&mut value, path, coerced);
    }
    check_flattened(&value)?;
    let config: Config = serde_path_to_error::deserialize(value).map_err(|e| {
        let key = e.path().to_string();
        invalid(if key == "." { String::from("config") } else { key }, e.into_inner().to_string())
    })?;
    validate(&config)?;
    Ok(LoadedConfig { config, warnings, env_names_read: env_names_read.into_inner() })
}

/// Drops every `null` member: Centrifugo writes unset lists and maps as `null` (its own
/// `defaultconfig` does), and means the default by them.
fn remove_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, member| !member.is_null());
            map.values_mut().for_each(remove_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(remove_nulls),
        _ => {}
    }
}

/// Sections read through `#[serde(flatten)]` lose the key path in serde errors, so they are
/// checked on their own first to name the exact key (`channel.namespaces[0].presence`).
fn check_flattened(value: &Value) -> Result<(), ConfigError> {
    fn check<T: serde::de::DeserializeOwned>(
        item: &Value,
        strip: &str,
        prefix: &str,
    ) -> Result<(), ConfigError> {
        let Value::Object(map) = item else {
            return Err(invalid(prefix, "must be an object"));
        };
        if let Some(field) = map.get(strip)
            && !field.is_string()
            && !field.is_boolean()
        {
            return Err(invalid(format!("{prefix}.{strip}"), "invalid type"));
        }
        let mut rest = map.clone();
        rest.remove(strip);
        serde_path_to_error::deserialize::<_, T>(Value::Object(rest))
            .map(|_| ())
            .map_err(|e| invalid(format!("{prefix}.{}", e.path()), e.into_inner().to_string()))
    }
    type ItemCheck = fn(&Value, &str) -> Result<(), ConfigError>;
    let arrays: [(&str, &str, ItemCheck); 3] = [
        ("/channel/namespaces", "channel.namespaces", |item, prefix| {
            check::<ChannelOptions>(item, "name", prefix)
        }),
        ("/rpc/namespaces", "rpc.namespaces", |item, prefix| check::<RpcOptions>(item, "name", prefix)),
        ("/proxies", "proxies", |item, prefix| check::<ProxyConfig>(item, "name", prefix)),
    ];
    for (pointer, key, check_item) in arrays {
        if let Some(Value::Array(items)) = value.pointer(pointer) {
            for (i, item) in items.iter().enumerate() {
                check_item(item, &format!("{key}[{i}]"))?;
            }
        }
    }
    if let Some(section) = value.pointer("/client/subscription_token") {
        check::<TokenConfig>(section, "enabled", "client.subscription_token")?;
    }
    for kind in ["connect", "refresh"] {
        if let Some(section) = value.pointer(&format!("/client/proxy/{kind}")) {
            check::<ProxyConfig>(section, "enabled", &format!("client.proxy.{kind}"))?;
        }
    }
    Ok(())
}

/// Sets a dotted key path (`client.token.hmac_secret_key`) in a JSON object tree.
pub fn set_path(value: &mut Value, path: &str, new: Value) {
    let mut current = value;
    let mut segments = path.split('.').peekable();
    while let Some(segment) = segments.next() {
        if !current.is_object() {
            *current = Value::Object(Default::default());
        }
        let object = current.as_object_mut().expect("just made an object");
        if segments.peek().is_none() {
            object.insert(segment.to_owned(), new);
            return;
        }
        current = object.entry(segment.to_owned()).or_insert_with(|| Value::Object(Default::default()));
    }
}

/// Collects keys that appear in `value` but not in the default config (Centrifugo warns about
/// these; `checkconfig --strict` fails on them).
fn unknown_keys(value: &Value, warnings: &mut Vec<String>) {
    let templates = super::templates();
    fn walk(
        value: &Value,
        template: &Value,
        path: &str,
        items: &dyn Fn(&str) -> Option<&'static Value>,
        out: &mut Vec<String>,
    ) {
        let (Value::Object(map), Value::Object(known)) = (value, template) else {
            return;
        };
        for (key, child) in map {
            let child_path = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
            match known.get(key) {
                None => out.push(format!("{child_path}: unknown key")),
                // Opaque sections (accepted for later versions) are not checked key by key.
                Some(Value::Object(inner)) if inner.is_empty() => {}
                Some(template_child) => match (child, items(&child_path)) {
                    (Value::Array(elements), Some(item_template)) => {
                        for (i, element) in elements.iter().enumerate() {
                            walk(element, item_template, &format!("{child_path}[{i}]"), items, out);
                        }
                    }
                    _ => walk(child, template_child, &child_path, items, out),
                },
            }
        }
    }
    let items = |path: &str| match path {
        "channel.namespaces" => Some(&templates.namespace),
        "rpc.namespaces" => Some(&templates.rpc_namespace),
        "proxies" => Some(&templates.named_proxy),
        "consumers" => Some(&templates.consumer),
        _ => None,
    };
    walk(value, &templates.config, "", &items, warnings);
}
