//! Cross-field checks that serde cannot express, and refusals of settings this version does
//! not implement, each naming its key. Pure: reading PEM files is left to the listeners.

use regex::Regex;
use serde_json::Value;

use super::schema::*;
use super::{ConfigDuration, ConfigError, invalid};

/// Engine choice: `engine.type`, optionally overridden per part by `broker` and
/// `presence_manager` (each with `enabled: true`).
fn validate_engines(config: &Config) -> Result<(), ConfigError> {
    if !matches!(config.engine.kind.as_str(), "memory" | "redis") {
        return Err(invalid(
            "engine.type",
            format!("unsupported engine {:?} (supported: memory, redis)", config.engine.kind),
        ));
    }
    if config.broker.enabled && !matches!(config.broker.kind.as_str(), "memory" | "redis" | "nats") {
        return Err(invalid(
            "broker.type",
            format!("unsupported broker {:?} (supported: memory, redis, nats)", config.broker.kind),
        ));
    }
    if config.presence_manager.enabled && !matches!(config.presence_manager.kind.as_str(), "memory" | "redis")
    {
        return Err(invalid(
            "presence_manager.type",
            format!(
                "unsupported presence manager {:?} (supported: memory, redis)",
                config.presence_manager.kind
            ),
        ));
    }
    let mut redis_sections = Vec::new();
    if config.engine.kind == "redis" {
        redis_sections.push(("engine.redis", &config.engine.redis));
    }
    if config.broker.enabled && config.broker.kind == "redis" {
        redis_sections.push(("broker.redis", &config.broker.redis));
    }
    if config.presence_manager.enabled && config.presence_manager.kind == "redis" {
        redis_sections.push(("presence_manager.redis", &config.presence_manager.redis));
    }
    for (key, redis) in redis_sections {
        let sentinel = !redis.sentinel_address.is_empty();
        if sentinel && redis.sentinel_master_name.is_empty() {
            return Err(invalid(format!("{key}.sentinel_master_name"), "required with sentinel_address"));
        }
        if sentinel && !redis.cluster_address.is_empty() {
            return Err(invalid(
                format!("{key}.cluster_address"),
                "cannot be combined with sentinel_address",
            ));
        }
        if !sentinel && redis.cluster_address.is_empty() && redis.address.is_empty() {
            return Err(invalid(format!("{key}.address"), "at least one Redis address is required"));
        }
        if redis.io_timeout.0.is_zero() {
            return Err(invalid(format!("{key}.io_timeout"), "must be positive"));
        }
        if redis.history_use_lists {
            return Err(invalid(
                format!("{key}.history_use_lists"),
                "not supported: history uses Redis streams",
            ));
        }
        if redis.tls.enabled && redis.tls.cert_pem.is_empty() != redis.tls.key_pem.is_empty() {
            return Err(invalid(
                format!("{key}.tls"),
                "cert_pem and key_pem go together (client certificate)",
            ));
        }
    }
    if config.broker.enabled && config.broker.kind == "nats" && config.broker.nats.url.is_empty() {
        return Err(invalid("broker.nats.url", "required"));
    }
    Ok(())
}

fn valid_name(name: &str) -> bool {
    name.len() >= 2 && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn validate_channel_options(
    key: &str,
    options: &ChannelOptions,
    global_meta_ttl: ConfigDuration,
) -> Result<(), ConfigError> {
    if (options.history_size > 0) == options.history_ttl.is_zero() {
        return Err(invalid(
            format!("{key}.history_size"),
            "history_size and history_ttl must be set together",
        ));
    }
    if (options.force_recovery || options.allow_recovery) && !options.history_enabled() {
        return Err(invalid(
            format!("{key}.force_recovery"),
            "recovery requires history (history_size and history_ttl)",
        ));
    }
    let meta_ttl =
        if options.history_meta_ttl.is_zero() { global_meta_ttl } else { options.history_meta_ttl };
    if options.history_enabled() && meta_ttl < options.history_ttl {
        return Err(invalid(
            format!("{key}.history_meta_ttl"),
            "history_meta_ttl must not be less than history_ttl",
        ));
    }
    if !matches!(options.force_recovery_mode.as_str(), "" | "stream" | "cache") {
        return Err(invalid(
            format!("{key}.force_recovery_mode"),
            format!("unknown mode {:?} (expected stream or cache)", options.force_recovery_mode),
        ));
    }
    if !matches!(options.publication_data_format.as_str(), "" | "json" | "json_object" | "binary") {
        return Err(invalid(
            format!("{key}.publication_data_format"),
            format!(
                "unknown format {:?} (expected json, json_object or binary)",
                options.publication_data_format
            ),
        ));
    }
    if let Some(bad) = options.allowed_delta_types.iter().find(|t| t.as_str() != "fossil") {
        return Err(invalid(
            format!("{key}.allowed_delta_types"),
            format!("unknown delta type {bad:?} (only fossil)"),
        ));
    }
    if !matches!(options.subscription_type.as_str(), "" | "stream") {
        return Err(invalid(
            format!("{key}.subscription_type"),
            format!("{:?} subscriptions are not supported by this version", options.subscription_type),
        ));
    }
    if !options.channel_regex.is_empty() {
        Regex::new(&options.channel_regex)
            .map_err(|e| invalid(format!("{key}.channel_regex"), e.to_string()))?;
    }
    Ok(())
}

/// TLS needs its certificate and key; HTTP/3 needs TLS; WebTransport needs HTTP/3. Reading the
/// PEM sources is left to the listeners (this module does no IO).
fn validate_tls(config: &Config) -> Result<(), ConfigError> {
    let server = &config.http_server;
    for (key, tls) in [("http_server.tls", &server.tls), ("http_server.internal_tls", &server.internal_tls)] {
        if tls.enabled {
            for (field, value) in [("cert_pem", &tls.cert_pem), ("key_pem", &tls.key_pem)] {
                if value.trim().is_empty() {
                    return Err(invalid(format!("{key}.{field}"), "required when TLS is enabled"));
                }
            }
        }
    }
    if server.http3.enabled && !server.tls.enabled {
        return Err(invalid(
            "http_server.http3.enabled",
            "HTTP/3 runs over QUIC, which needs a certificate: enable http_server.tls",
        ));
    }
    if config.webtransport.enabled && !server.http3.enabled {
        return Err(invalid("webtransport.enabled", "WebTransport needs http_server.http3.enabled"));
    }
    if config.webtransport.message_size_limit == 0 {
        return Err(invalid("webtransport.message_size_limit", "must be positive"));
    }
    Ok(())
}

/// Cross-field checks that serde cannot express, in a fixed order (the first error wins).
pub fn validate(config: &Config) -> Result<(), ConfigError> {
    refuse_unsupported(config)?;
    validate_tls(config)?;
    refuse_proxies(config)?;
    validate_engines(config)?;
    validate_client(config)?;
    validate_channels(config)?;
    validate_rpc_namespaces(config)
}

/// Whether an opaque section has `enabled: true`.
fn enabled(value: &Value) -> bool {
    value.get("enabled").and_then(Value::as_bool).unwrap_or(false)
}

/// Settings this version cannot honour: refusing is safer than silently serving plaintext (or
/// ignoring a mapping).
fn refuse_unsupported(config: &Config) -> Result<(), ConfigError> {
    for (key, value) in [
        ("http_server.tls_autocert", &config.http_server.tls_autocert),
        ("grpc_api.tls", &config.grpc_api.tls),
        ("uni_grpc.tls", &config.uni_grpc.tls),
        ("uni_sse.connect_code_to_http_response", &config.uni_sse.connect_code_to_http_response),
        (
            "uni_http_stream.connect_code_to_http_response",
            &config.uni_http_stream.connect_code_to_http_response,
        ),
    ] {
        if enabled(value) {
            let what = if key.ends_with("connect_code_to_http_response") {
                "mapping connect codes to HTTP responses is not supported by this version yet"
            } else {
                "this TLS setting is not supported by this version yet"
            };
            return Err(invalid(format!("{key}.enabled"), what));
        }
    }
    Ok(())
}

/// Proxies are not implemented yet: every switch that turns one on is refused by its key.
fn refuse_proxies(config: &Config) -> Result<(), ConfigError> {
    for kind in ["connect", "refresh"] {
        if config.client.proxy.get(kind).is_some_and(enabled) {
            return Err(invalid(
                format!("client.proxy.{kind}.enabled"),
                "proxies are not supported by this version yet",
            ));
        }
    }
    let proxy_flags = |options: &ChannelOptions| {
        [
            ("subscribe_proxy_enabled", options.subscribe_proxy_enabled),
            ("publish_proxy_enabled", options.publish_proxy_enabled),
            ("sub_refresh_proxy_enabled", options.sub_refresh_proxy_enabled),
            ("subscribe_stream_proxy_enabled", options.subscribe_stream_proxy_enabled),
        ]
        .into_iter()
        .find(|(_, on)| *on)
        .map(|(name, _)| name)
    };
    let namespaces =
        std::iter::once(("channel.without_namespace".to_owned(), &config.channel.without_namespace)).chain(
            config
                .channel
                .namespaces
                .iter()
                .enumerate()
                .map(|(i, ns)| (format!("channel.namespaces[{i}]"), &ns.options)),
        );
    for (key, options) in namespaces {
        if let Some(flag) = proxy_flags(options) {
            return Err(invalid(format!("{key}.{flag}"), "proxies are not supported by this version yet"));
        }
    }
    let rpc = std::iter::once(("rpc.without_namespace".to_owned(), &config.rpc.without_namespace)).chain(
        config.rpc.namespaces.iter().enumerate().map(|(i, ns)| (format!("rpc.namespaces[{i}]"), &ns.options)),
    );
    for (key, options) in rpc {
        if options.proxy_enabled {
            return Err(invalid(
                format!("{key}.proxy_enabled"),
                "proxies are not supported by this version yet",
            ));
        }
    }
    Ok(())
}

/// Log level, unidirectional disconnect transforms, ping/pong, queue and message limits, API
/// error modes.
fn validate_client(config: &Config) -> Result<(), ConfigError> {
    if !matches!(config.log.level.as_str(), "trace" | "debug" | "info" | "warn" | "error" | "fatal" | "none")
    {
        return Err(invalid(
            "log.level",
            format!("unknown level {:?} (trace|debug|info|warn|error|fatal|none)", config.log.level),
        ));
    }
    let client = &config.client;
    for (i, transform) in client.connect_code_to_unidirectional_disconnect.transforms.iter().enumerate() {
        if !(3000..=4999).contains(&transform.to.code) {
            return Err(invalid(
                format!("client.connect_code_to_unidirectional_disconnect.transforms[{i}].to.code"),
                "must be a disconnect code in 3000..=4999",
            ));
        }
    }
    if !client.ping_interval.is_zero() && client.ping_interval <= client.pong_timeout {
        return Err(invalid("client.pong_timeout", "must be less than client.ping_interval"));
    }
    if client.queue_max_size == 0 {
        return Err(invalid("client.queue_max_size", "must be greater than zero"));
    }
    for (key, mode) in [
        ("http_api.error_mode", &config.http_api.error_mode),
        ("grpc_api.error_mode", &config.grpc_api.error_mode),
    ] {
        if !matches!(mode.as_str(), "" | "transport") {
            return Err(invalid(key, format!("unknown error mode {mode:?} (expected transport)")));
        }
    }
    if config.websocket.message_size_limit == 0 {
        return Err(invalid("websocket.message_size_limit", "must be greater than zero"));
    }
    Ok(())
}

/// Channel name rules and every namespace's options.
fn validate_channels(config: &Config) -> Result<(), ConfigError> {
    let channel = &config.channel;
    for (key, value) in [
        ("channel.namespace_boundary", &channel.namespace_boundary),
        ("channel.user_boundary", &channel.user_boundary),
        ("channel.user_separator", &channel.user_separator),
    ] {
        if value.is_empty() {
            return Err(invalid(key, "must not be empty"));
        }
    }
    validate_channel_options(
        "channel.without_namespace",
        &channel.without_namespace,
        channel.history_meta_ttl,
    )?;
    let mut seen = std::collections::HashSet::new();
    for (i, namespace) in channel.namespaces.iter().enumerate() {
        let key = format!("channel.namespaces[{i}]");
        if !valid_name(&namespace.name) {
            return Err(invalid(
                format!("{key}.name"),
                format!("invalid namespace name {:?} (must match ^[-a-zA-Z0-9_.]{{2,}}$)", namespace.name),
            ));
        }
        if !seen.insert(namespace.name.as_str()) {
            return Err(invalid(
                format!("{key}.name"),
                format!("duplicate namespace name {:?}", namespace.name),
            ));
        }
        validate_channel_options(&key, &namespace.options, channel.history_meta_ttl)?;
    }
    Ok(())
}

fn validate_rpc_namespaces(config: &Config) -> Result<(), ConfigError> {
    let mut seen = std::collections::HashSet::new();
    for (i, namespace) in config.rpc.namespaces.iter().enumerate() {
        let key = format!("rpc.namespaces[{i}].name");
        if !valid_name(&namespace.name) {
            return Err(invalid(key, format!("invalid rpc namespace name {:?}", namespace.name)));
        }
        if !seen.insert(namespace.name.as_str()) {
            return Err(invalid(key, format!("duplicate rpc namespace name {:?}", namespace.name)));
        }
    }
    Ok(())
}
