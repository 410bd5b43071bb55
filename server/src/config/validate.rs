//! Cross-field checks that serde cannot express, and refusals of settings this version does
//! not implement, each naming its key. Pure: reading PEM files is left to the listeners.

use regex::Regex;

use super::schema::*;
use super::{
    ConfigDuration, ConfigError, DEFAULT_PROXY_NAME, ProxyConfig, ProxyKind, invalid, proxy_uses,
    resolve_proxy,
};

/// Engine choice: `engine.type`, optionally overridden per part by `broker` and
/// `presence_manager` (each with `enabled: true`).
fn validate_engines(config: &Config) -> Result<(), ConfigError> {
    if !matches!(config.engine.kind.as_str(), "memory" | "redis") {
        return Err(invalid(
            "engine.type",
            format!("unsupported engine {:?} (supported: memory, redis)", config.engine.kind),
        ));
    }
    if config.broker.enabled && matches!(config.broker.kind.as_str(), "postgres" | "redisnats") {
        return Err(invalid(
            "broker.type",
            format!(
                "the {} broker is not supported by this version (supported: memory, redis, nats)",
                config.broker.kind
            ),
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
        validate_redis_section(key, redis)?;
    }
    if config.broker.enabled && config.broker.kind == "nats" {
        if config.broker.nats.url.is_empty() {
            return Err(invalid("broker.nats.url", "required"));
        }
        validate_client_tls("broker.nats.tls", &config.broker.nats.tls, false)?;
    }
    Ok(())
}

/// One Redis connection section: where to connect, and nothing this version refuses.
pub(super) fn validate_redis_section(key: &str, redis: &RedisEngine) -> Result<(), ConfigError> {
    let sentinel = !redis.sentinel_address.is_empty();
    if sentinel && redis.sentinel_master_name.is_empty() {
        return Err(invalid(format!("{key}.sentinel_master_name"), "required with sentinel_address"));
    }
    if sentinel && !redis.cluster_address.is_empty() {
        return Err(invalid(format!("{key}.cluster_address"), "cannot be combined with sentinel_address"));
    }
    if !sentinel && redis.cluster_address.is_empty() && redis.address.is_empty() {
        return Err(invalid(format!("{key}.address"), "at least one Redis address is required"));
    }
    if redis.io_timeout.0.is_zero() {
        return Err(invalid(format!("{key}.io_timeout"), "must be positive"));
    }
    let refusals = [
        ("client_name", !redis.client_name.is_empty()),
        // Lists give a map broker nothing (its streams are its own).
        ("history_use_lists", redis.history_use_lists && key == "map_broker.redis"),
        ("sentinel_client_name", sentinel && !redis.sentinel_client_name.is_empty()),
        // Commands already use RESP2; sharded PUB/SUB on a cluster needs RESP3 push messages.
        ("force_resp2", redis.force_resp2 && !redis.cluster_address.is_empty()),
        ("presence_hash_field_ttl", redis.presence_hash_field_ttl),
    ];
    if let Some((field, _)) = refusals.iter().find(|(_, refused)| *refused) {
        return Err(invalid(format!("{key}.{field}"), "not supported by this version yet"));
    }
    validate_client_tls(&format!("{key}.tls"), &redis.tls, true)?;
    if sentinel {
        validate_client_tls(&format!("{key}.sentinel_tls"), &redis.sentinel_tls, true)?;
    }
    if redis.tls.enabled && redis.tls.cert_pem.is_empty() != redis.tls.key_pem.is_empty() {
        return Err(invalid(format!("{key}.tls"), "cert_pem and key_pem go together (client certificate)"));
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
    if !options.channel_regex.is_empty() {
        Regex::new(&options.channel_regex)
            .map_err(|e| invalid(format!("{key}.channel_regex"), e.to_string()))?;
    }
    Ok(())
}

/// TLS needs its certificate and key; HTTP/3 needs TLS; WebTransport needs HTTP/3; h2c on the
/// external port needs a separate internal port and no TLS (Centrifugo's two checks). Reading
/// the PEM sources is left to the listeners (this module does no IO).
fn validate_tls(config: &Config) -> Result<(), ConfigError> {
    let server = &config.http_server;
    if server.h2c_external
        && (server.internal_port.is_empty() || server.internal_port == server.port.to_string())
    {
        return Err(invalid("http_server.h2c_external", "needs a separate http_server.internal_port"));
    }
    if server.h2c_external && (server.tls.enabled || server.tls_autocert.enabled) {
        return Err(invalid("http_server.h2c_external", "cannot be used with TLS on the external port"));
    }
    let listeners = [
        ("http_server.tls", &server.tls),
        ("http_server.internal_tls", &server.internal_tls),
        ("grpc_api.tls", &config.grpc_api.tls),
        ("uni_grpc.tls", &config.uni_grpc.tls),
        ("grpc_stream.tls", &config.grpc_stream.tls),
    ];
    for (key, tls) in listeners {
        if tls.enabled {
            for (field, value) in [("cert_pem", &tls.cert_pem), ("key_pem", &tls.key_pem)] {
                if value.trim().is_empty() {
                    return Err(invalid(format!("{key}.{field}"), "required when TLS is enabled"));
                }
            }
        }
    }
    let autocert = &server.tls_autocert;
    if autocert.enabled {
        if autocert.host_whitelist.is_empty() {
            return Err(invalid(
                "http_server.tls_autocert.host_whitelist",
                "the hosts to obtain certificates for",
            ));
        }
        if server.tls.enabled {
            return Err(invalid(
                "http_server.tls_autocert.enabled",
                "http_server.tls gives the certificate already",
            ));
        }
        if autocert.http && autocert.http_addr.is_empty() {
            return Err(invalid("http_server.tls_autocert.http_addr", "required with tls_autocert.http"));
        }
    }
    if server.http3.enabled && !server.tls.enabled && !autocert.enabled {
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
    super::unserved::refuse_switched_on(config)?;
    validate_transport_options(config)?;
    validate_tls(config)?;
    validate_proxies(config)?;
    validate_engines(config)?;
    validate_client(config)?;
    validate_channels(config)?;
    validate_canary(&config.health.canary)?;
    super::consumer::validate_consumers(&config.consumers)?;
    super::consumer::validate_lifecycle_events(config)?;
    validate_rpc_namespaces(config)
}

/// `health.canary`: a round trip needs an interval to happen in, and a timeout shorter than
/// the interval would call every canary late.
fn validate_canary(canary: &super::Canary) -> Result<(), ConfigError> {
    if !canary.enabled {
        return Ok(());
    }
    if canary.interval.0 < std::time::Duration::from_millis(10) {
        return Err(invalid("health.canary.interval", "must be at least 10ms"));
    }
    if canary.timeout.0 < canary.interval.0 {
        return Err(invalid("health.canary.timeout", "must be at least health.canary.interval"));
    }
    Ok(())
}

/// The uni HTTP transports' connect-code mappings and the WebSocket compression levels.
fn validate_transport_options(config: &Config) -> Result<(), ConfigError> {
    let http_responses = [
        ("uni_sse", &config.uni_sse.connect_code_to_http_response),
        ("uni_http_stream", &config.uni_http_stream.connect_code_to_http_response),
    ];
    for (section, mapping) in http_responses {
        for (i, transform) in mapping.transforms.iter().enumerate() {
            let key = format!("{section}.connect_code_to_http_response.transforms[{i}]");
            if transform.code == 0 {
                return Err(invalid(format!("{key}.code"), "required"));
            }
            if !(100..=599).contains(&transform.to.status_code) {
                return Err(invalid(format!("{key}.to.status_code"), "must be an HTTP status (100-599)"));
            }
        }
    }
    let levels = [
        ("websocket.compression_level", config.websocket.compression_level),
        ("uni_websocket.compression_level", config.uni_websocket.compression_level),
    ];
    match levels.into_iter().find(|(_, level)| !(-2..=9).contains(level)) {
        Some((key, level)) => Err(invalid(key, format!("{level} is not a deflate level (-2 to 9)"))),
        None => Ok(()),
    }
}

/// The client side of a TLS section: `client_ca_pem` only means something to a server, and
/// `server_name` / `insecure_skip_verify` where the client library cannot apply them.
pub(super) fn validate_client_tls(key: &str, tls: &Tls, insecure_supported: bool) -> Result<(), ConfigError> {
    if !tls.enabled {
        return Ok(());
    }
    if !tls.client_ca_pem.trim().is_empty() {
        return Err(invalid(
            format!("{key}.client_ca_pem"),
            "a client verifies its server with server_ca_pem",
        ));
    }
    if !tls.server_name.is_empty() {
        return Err(invalid(format!("{key}.server_name"), "not supported by this version yet"));
    }
    if tls.insecure_skip_verify && !insecure_supported {
        return Err(invalid(format!("{key}.insecure_skip_verify"), "not supported by this version yet"));
    }
    Ok(())
}

/// Proxies: every section's own options are checked under its own path, used or not; every
/// enabled use must name a proxy that exists and has a usable endpoint.
fn validate_proxies(config: &Config) -> Result<(), ConfigError> {
    let mut names = std::collections::HashSet::new();
    for (i, named) in config.proxies.iter().enumerate() {
        let key = format!("proxies[{i}]");
        if named.name.is_empty() || named.name == DEFAULT_PROXY_NAME {
            return Err(invalid(
                format!("{key}.name"),
                "a non-empty name other than \"default\" is required",
            ));
        }
        if !names.insert(named.name.as_str()) {
            return Err(invalid(format!("{key}.name"), format!("duplicate proxy name {:?}", named.name)));
        }
        validate_proxy_endpoint(&key, &named.proxy)?;
        validate_proxy_options(&key, &named.proxy)?;
    }
    let channel = &config.channel.proxy;
    let unnamed = [
        ("channel.proxy.subscribe", &channel.subscribe),
        ("channel.proxy.publish", &channel.publish),
        ("channel.proxy.sub_refresh", &channel.sub_refresh),
        ("channel.proxy.subscribe_stream", &channel.subscribe_stream),
        ("channel.proxy.map_publish", &channel.map_publish),
        ("channel.proxy.map_remove", &channel.map_remove),
        ("channel.proxy.shared_poll_refresh", &channel.shared_poll_refresh),
        ("rpc.proxy", &config.rpc.proxy),
        ("client.proxy.connect", &config.client.proxy.connect.proxy),
        ("client.proxy.refresh", &config.client.proxy.refresh.proxy),
    ];
    for (key, proxy) in unnamed {
        validate_proxy_options(key, proxy)?;
    }
    for kind in ["connect", "refresh"] {
        let switched =
            if kind == "connect" { &config.client.proxy.connect } else { &config.client.proxy.refresh };
        if switched.enabled {
            validate_proxy_endpoint(&format!("client.proxy.{kind}"), &switched.proxy)?;
        }
    }
    for used in proxy_uses(config) {
        let Some(proxy) = resolve_proxy(config, used.kind, used.proxy_name()) else {
            return Err(invalid(
                used.key.clone(),
                format!("no proxy named {:?} in proxies", used.proxy_name()),
            ));
        };
        if proxy.endpoint.is_empty() {
            return Err(invalid(
                used.key.clone(),
                format!("the {:?} proxy has no endpoint", used.proxy_name()),
            ));
        }
        if used.kind == ProxyKind::SubscribeStream && !proxy.endpoint.starts_with("grpc://") {
            return Err(invalid(used.key, "subscribe stream proxies need a grpc:// endpoint"));
        }
        validate_proxy_endpoint(&used.key, proxy)?;
    }
    Ok(())
}

/// Where a proxy sends its calls; `key` names where it is configured.
fn validate_proxy_endpoint(key: &str, proxy: &ProxyConfig) -> Result<(), ConfigError> {
    let endpoint = &proxy.endpoint;
    let scheme_ok = ["http://", "https://", "grpc://"].iter().any(|scheme| endpoint.starts_with(scheme));
    if !scheme_ok {
        return Err(invalid(
            format!("{key}.endpoint"),
            format!("{endpoint:?} is neither http(s):// nor grpc://"),
        ));
    }
    if proxy.timeout.is_zero() {
        return Err(invalid(format!("{key}.timeout"), "must be positive"));
    }
    Ok(())
}

/// A proxy's other settings, whether or not anything uses it yet.
fn validate_proxy_options(key: &str, proxy: &ProxyConfig) -> Result<(), ConfigError> {
    for (section, tls) in [("http", &proxy.http.tls), ("grpc", &proxy.grpc.tls)] {
        if !tls.client_ca_pem.is_empty() {
            return Err(invalid(
                format!("{key}.{section}.tls.client_ca_pem"),
                "a proxy is a TLS client: it verifies the backend with server_ca_pem and presents cert_pem",
            ));
        }
        if tls.enabled && tls.insecure_skip_verify {
            return Err(invalid(
                format!("{key}.{section}.tls.insecure_skip_verify"),
                "proxies always verify the backend's certificate; use server_ca_pem for a private CA",
            ));
        }
    }
    for transform in &proxy.http.status_to_code_transforms {
        if transform.to_error.code == 0 && transform.to_disconnect.code == 0 {
            return Err(invalid(
                format!("{key}.http.status_to_code_transforms"),
                format!("status {} maps to neither to_error nor to_disconnect", transform.status_code),
            ));
        }
    }
    Ok(())
}

/// Unidirectional disconnect transforms, ping/pong, queue and message limits, API
/// error modes.
fn validate_client(config: &Config) -> Result<(), ConfigError> {
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
    super::map::validate_map_options("channel.without_namespace", &channel.without_namespace, config)?;
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
        super::map::validate_map_options(&key, &namespace.options, config)?;
    }
    super::map::validate_map_broker(config)
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

/// Settings that open the server up, each with what it exposes: logged at startup so an
/// operator who copied a development config notices.
pub fn exposure_warnings(config: &Config) -> Vec<String> {
    let mut warnings = Vec::new();
    let wildcard = |origins: &[String]| origins.iter().any(|origin| origin.trim() == "*");
    if wildcard(&config.client.allowed_origins) {
        warnings.push(
            "client.allowed_origins contains \"*\": any web page can open connections as its visitors".into(),
        );
    }
    if config.grpc_web.enabled && wildcard(&config.grpc_web.allowed_origins) {
        warnings.push("grpc_web.allowed_origins contains \"*\": any web page can call gRPC-web".into());
    }
    if config.client.insecure {
        warnings.push("client.insecure: connections and subscriptions need no token".into());
    }
    if config.http_api.insecure {
        warnings.push("http_api.insecure: the HTTP API serves calls without a key".into());
    }
    if config.grpc_api.enabled && config.grpc_api.insecure {
        warnings.push("grpc_api.insecure: the gRPC API serves calls without a key".into());
    }
    if config.admin.enabled && config.admin.insecure {
        warnings.push("INSECURE admin mode enabled, make sure you understand risks".into());
    } else if config.admin.enabled && (config.admin.password.is_empty() || config.admin.secret.is_empty()) {
        warnings
            .push("admin.password and admin.secret must be set: nobody can log in to the admin UI".into());
    }
    if config.admin.enabled && config.admin.external {
        warnings.push("admin.external: the admin UI is served on the external port".into());
    }
    if config.grpc_api.enabled && !config.grpc_api.insecure && config.grpc_api.key.is_empty() {
        warnings.push(
            "grpc_api.key is empty: every gRPC API call is refused (set a key, or grpc_api.insecure)".into(),
        );
    }
    warnings
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn settings_that_open_the_server_are_named_at_startup() {
        let load = |file| super::super::build(Some(file), &|_| None).unwrap().config;
        assert!(super::exposure_warnings(&load(json!({}))).is_empty());
        let open = load(json!({
            "client": {"allowed_origins": ["*"], "insecure": true},
            "http_api": {"insecure": true},
            "grpc_api": {"enabled": true},
        }));
        let warnings = super::exposure_warnings(&open).join("\n");
        for named in
            ["client.allowed_origins", "client.insecure", "http_api.insecure", "grpc_api.key is empty"]
        {
            assert!(warnings.contains(named), "{named}: {warnings}");
        }
    }
}
