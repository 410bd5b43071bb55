//! Typed configuration with Centrifugo v6 key names, defaults and validation. Pure: no IO
//! besides [`load_file`] reading the one file it is given (and [`read_pem_source`] the PEM
//! files a TLS section names).
//!
//! Sources are layered (later wins): defaults → config file (JSON, YAML or TOML) → environment
//! (`SPINWIRE_<PATH>`, with `CENTRIFUGO_<PATH>` accepted so existing deployments move over
//! unchanged; see [`env`]). Every error names the key it is about, e.g.
//! `client.channel_limit: invalid type: string "lots", expected u32`.
//!
//! Sections that a later version will implement (proxies, extra transports, Redis…) are accepted
//! as opaque values so existing Centrifugo configs load; [`LoadedConfig::warnings`] says which
//! keys are unknown or not implemented yet.
//!
//! - `schema.rs`: the sections, keys and defaults; `proxy.rs` those of the proxies;
//! - `load.rs`: files, environment and overrides into a [`Config`];
//! - `validate.rs`: cross-field checks and refusals;
//! - `duration.rs`, `env.rs`: Go durations, environment variables.

mod consumer;
mod duration;
pub mod env;
mod load;
mod map;
mod proxy;
mod schema;
mod unserved;
mod validate;

use base64::Engine as _;

pub use consumer::*;
pub use duration::{ConfigDuration, SignedDuration, format_go_duration, parse_go_duration};
pub use load::{LoadedConfig, build, build_with, load_file, parse_text, set_path};
pub use map::*;
pub use proxy::*;
pub use schema::*;
pub use unserved::*;
pub use validate::{exposure_warnings, validate};

/// A configuration problem, always naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read config file: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: cannot parse {format}: {message}")]
    Parse { path: String, format: &'static str, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

/// The defaults as JSON trees, made once: the templates that unknown keys, environment
/// variables and overrides are matched against.
pub(crate) struct Templates {
    pub config: serde_json::Value,
    pub namespace: serde_json::Value,
    pub rpc_namespace: serde_json::Value,
    pub named_proxy: serde_json::Value,
    pub consumer: serde_json::Value,
}

pub(crate) fn templates() -> &'static Templates {
    static TEMPLATES: std::sync::OnceLock<Templates> = std::sync::OnceLock::new();
    TEMPLATES.get_or_init(|| {
        let json = |value: Result<serde_json::Value, serde_json::Error>| value.expect("defaults serialize");
        Templates {
            config: json(serde_json::to_value(Config::default())),
            namespace: json(serde_json::to_value(Namespace::default())),
            rpc_namespace: json(serde_json::to_value(RpcNamespace::default())),
            named_proxy: json(serde_json::to_value(NamedProxy::default())),
            consumer: json(serde_json::to_value(ConsumerConfig::default())),
        }
    })
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), message: message.into() }
}

/// The bytes of a PEM source (Centrifugo's TLS fields): PEM text, base64 of PEM text, or a
/// file path, in that order.
pub fn read_pem_source(key: &str, source: &str) -> Result<Vec<u8>, ConfigError> {
    let trimmed = source.trim();
    if trimmed.starts_with("-----BEGIN") {
        return Ok(trimmed.as_bytes().to_vec());
    }
    if let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(trimmed)
        && decoded.trim_ascii_start().starts_with(b"-----BEGIN")
    {
        return Ok(decoded);
    }
    std::fs::read(trimmed).map_err(|error| {
        invalid(key, format!("not PEM text, not base64 PEM, and no readable file {trimmed:?}: {error}"))
    })
}

/// gRPC's default receive limit, used when a `max_receive_message_size` says 0.
const DEFAULT_GRPC_RECEIVE_LIMIT: usize = 4 * 1024 * 1024;

/// A `max_receive_message_size` setting in bytes; 0 means gRPC's default (4 MiB).
pub fn grpc_receive_limit(configured: usize) -> usize {
    if configured == 0 { DEFAULT_GRPC_RECEIVE_LIMIT } else { configured }
}

/// The receive limit of a client-facing gRPC stream (`uni_grpc`, `grpc_stream`): when not set,
/// the WebSocket one (`websocket.message_size_limit`), not gRPC's 4 MiB. A client's single
/// publication that large would overflow every subscriber's queue and close them all as slow.
pub fn client_stream_receive_limit(configured: usize, config: &Config) -> usize {
    match (configured, config.websocket.message_size_limit) {
        (0, 0) => DEFAULT_GRPC_RECEIVE_LIMIT,
        (0, websocket) => websocket,
        (configured, _) => configured,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn client_grpc_streams_take_the_websocket_limit_by_default() {
        let config = build(None, &no_env).unwrap().config;
        assert_eq!(client_stream_receive_limit(config.grpc_stream.max_receive_message_size, &config), 65536);
        assert_eq!(client_stream_receive_limit(1000, &config), 1000);
        assert_eq!(
            grpc_receive_limit(config.grpc_api.max_receive_message_size),
            4 * 1024 * 1024,
            "server API"
        );
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_match_centrifugo() {
        let loaded = build(None, &no_env).unwrap();
        let c = loaded.config;
        assert_eq!(c.http_server.port, 8000);
        assert_eq!(c.grpc_api.port, 10000);
        assert_eq!(c.client.ping_interval, ConfigDuration::secs(25));
        assert_eq!(c.client.pong_timeout, ConfigDuration::secs(8));
        assert_eq!(c.client.channel_limit, 128);
        assert_eq!(c.client.queue_max_size, 1_048_576);
        assert_eq!(c.websocket.message_size_limit, 65536);
        assert_eq!(c.channel.max_length, 255);
        assert_eq!(c.channel.history_meta_ttl, ConfigDuration::secs(720 * 3600));
    }

    #[test]
    fn bad_type_names_the_key() {
        let err = build(Some(json!({"client": {"channel_limit": "lots"}})), &no_env).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("client.channel_limit:"), "{text}");
    }

    #[test]
    fn bad_namespace_names_the_key() {
        let err = build(Some(json!({"channel": {"namespaces": [{"name": "x"}]}})), &no_env).unwrap_err();
        assert!(err.to_string().starts_with("channel.namespaces[0].name:"), "{err}");
        let err =
            build(Some(json!({"channel": {"namespaces": [{"name": "chat", "history_size": 10}]}})), &no_env)
                .unwrap_err();
        assert!(err.to_string().starts_with("channel.namespaces[0].history_size:"), "{err}");
    }

    #[test]
    fn type_errors_inside_flattened_sections_name_the_key() {
        let err =
            build(Some(json!({"channel": {"namespaces": [{"name": "chat", "presence": "yes"}]}})), &no_env)
                .unwrap_err();
        assert!(err.to_string().starts_with("channel.namespaces[0].presence:"), "{err}");
        let err =
            build(Some(json!({"client": {"subscription_token": {"enabled": true, "audience": 5}}})), &no_env)
                .unwrap_err();
        assert!(err.to_string().starts_with("client.subscription_token.audience:"), "{err}");
    }

    #[test]
    fn autocert_without_hosts_is_refused_by_the_missing_key() {
        let err =
            build(Some(json!({"http_server": {"tls_autocert": {"enabled": true}}})), &no_env).unwrap_err();
        assert!(err.to_string().starts_with("http_server.tls_autocert.host_whitelist:"), "{err}");
    }

    fn proxy_config(namespace: serde_json::Value) -> serde_json::Value {
        json!({
            "proxies": [{"name": "backend", "endpoint": "http://127.0.0.1:3000/subscribe", "timeout": "300ms"}],
            "channel": {"namespaces": [namespace]},
        })
    }

    #[test]
    fn proxies_are_read_with_centrifugo_keys() {
        let file = json!({
            "client": {"proxy": {
                "connect": {"enabled": true, "endpoint": "grpc://127.0.0.1:9000", "emulated_headers": ["X-Token"]},
                "refresh": {"enabled": true, "endpoint": "https://backend/refresh",
                            "http": {"static_headers": {"x-static": "1"},
                                     "status_to_code_transforms": [{"status_code": 403, "to_disconnect": {"code": 4403, "reason": "no"}}]}},
            }},
            "proxies": [{"name": "backend", "endpoint": "http://127.0.0.1:3000/subscribe", "timeout": "300ms",
                         "include_connection_meta": true, "binary_encoding": true}],
            "channel": {"proxy": {"publish": {"endpoint": "http://127.0.0.1:3000/publish"}},
                        "namespaces": [{"name": "chat", "subscribe_proxy_enabled": true, "subscribe_proxy_name": "backend",
                                        "publish_proxy_enabled": true}]},
            "rpc": {"without_namespace": {"proxy_enabled": true, "proxy_name": "backend"}},
        });
        let loaded = build(Some(file), &no_env).unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let c = loaded.config;
        assert_eq!(c.client.proxy.connect.proxy.endpoint, "grpc://127.0.0.1:9000");
        assert_eq!(c.client.proxy.connect.proxy.timeout, ConfigDuration::secs(1));
        assert_eq!(c.client.proxy.refresh.proxy.http.status_to_code_transforms[0].to_disconnect.code, 4403);
        assert_eq!(c.proxies[0].proxy.timeout, ConfigDuration(std::time::Duration::from_millis(300)));
        let uses = proxy_uses(&c);
        let names: Vec<_> = uses.iter().map(|u| (u.kind, u.proxy_name())).collect();
        assert_eq!(
            names,
            [(ProxyKind::Subscribe, "backend"), (ProxyKind::Publish, "default"), (ProxyKind::Rpc, "backend")]
        );
        let publish = resolve_proxy(&c, ProxyKind::Publish, "default").unwrap();
        assert_eq!(publish.endpoint, "http://127.0.0.1:3000/publish");
    }

    #[test]
    fn a_proxy_that_cannot_work_is_refused_by_its_key() {
        let cases = [
            (
                json!({"name": "chat", "subscribe_proxy_enabled": true, "subscribe_proxy_name": "nope"}),
                "no proxy named",
            ),
            (json!({"name": "chat", "subscribe_proxy_enabled": true}), "has no endpoint"),
            (
                json!({"name": "chat", "subscribe_stream_proxy_enabled": true, "subscribe_stream_proxy_name": "backend"}),
                "grpc:// endpoint",
            ),
        ];
        for (namespace, why) in cases {
            let err = build(Some(proxy_config(namespace)), &no_env).unwrap_err().to_string();
            assert!(err.starts_with("channel.namespaces[0].subscribe_"), "{err}");
            assert!(err.contains(why), "{err}");
        }
        let bad_endpoint =
            json!({"client": {"proxy": {"connect": {"enabled": true, "endpoint": "ftp://x"}}}});
        let err = build(Some(bad_endpoint), &no_env).unwrap_err().to_string();
        assert!(err.starts_with("client.proxy.connect.endpoint:"), "{err}");
        let client_ca = json!({"proxies": [{"name": "a", "endpoint": "https://x", "http": {"tls": {"client_ca_pem": "x"}}}]});
        let err = build(Some(client_ca), &no_env).unwrap_err().to_string();
        assert!(err.starts_with("proxies[0].http.tls.client_ca_pem:"), "{err}");
        let duplicate = json!({"proxies": [{"name": "a", "endpoint": "http://x"}, {"name": "a", "endpoint": "http://y"}]});
        let err = build(Some(duplicate), &no_env).unwrap_err().to_string();
        assert!(err.starts_with("proxies[1].name:"), "{err}");
        let typo = json!({"proxies": [{"name": "a", "endpoint": "http://x", "timeout": "soon"}]});
        let err = build(Some(typo), &no_env).unwrap_err().to_string();
        assert!(err.starts_with("proxies[0].timeout:"), "{err}");
        let unknown =
            build(Some(json!({"proxies": [{"name": "a", "endpoint": "http://x", "endpont": 1}]})), &no_env);
        assert!(unknown.unwrap().warnings.contains(&"proxies[0].endpont: unknown key".to_string()));
    }

    #[test]
    fn flag_overrides_are_typed_by_the_key() {
        let overrides = vec![
            ("http_server.internal_port".to_owned(), json!(18999)),
            ("client.token.hmac_secret_key".to_owned(), json!(12345)),
            ("client.channel_limit".to_owned(), json!("7")),
        ];
        let c = build_with(None, &no_env, &overrides).unwrap().config;
        assert_eq!(c.http_server.internal_port, "18999");
        assert_eq!(c.client.token.hmac_secret_key, "12345");
        assert_eq!(c.client.channel_limit, 7);
    }

    #[test]
    fn unknown_keys_are_reported_with_their_path() {
        let loaded = build(
            Some(json!({
                "client": {"tokn": {}},
                "channel": {"namespaces": [{"name": "chat", "presense": true}]},
                "prometheus": {"handler_prefix": "/m", "handler_prefx": "/m"}
            })),
            &no_env,
        )
        .unwrap();
        assert!(loaded.warnings.contains(&"client.tokn: unknown key".to_string()));
        assert!(loaded.warnings.contains(&"channel.namespaces[0].presense: unknown key".to_string()));
        assert!(loaded.warnings.contains(&"prometheus.handler_prefx: unknown key".to_string()));
        let error =
            build(Some(json!({"admin": {"enabled": true, "web_path": "/srv/ui"}})), &no_env).unwrap_err();
        assert!(error.to_string().starts_with("admin.web_path: not served"), "{error}");
        let error = build(Some(json!({"prometheus": {"enabled": true, "native_histograms": true}})), &no_env)
            .unwrap_err();
        assert!(error.to_string().starts_with("prometheus.native_histograms: not served"), "{error}");
        assert!(build(Some(json!({"prometheus": {"enabled": true}})), &no_env).is_ok());
    }

    #[test]
    fn yaml_and_toml_read_the_same_keys() {
        let yaml = parse_text("client:\n  channel_limit: 5\n  ping_interval: 10s\n", "yaml", "t").unwrap();
        let toml = parse_text("[client]\nchannel_limit = 5\nping_interval = \"10s\"\n", "toml", "t").unwrap();
        for value in [yaml, toml] {
            let c = build(Some(value), &no_env).unwrap().config;
            assert_eq!(c.client.channel_limit, 5);
            assert_eq!(c.client.ping_interval, ConfigDuration::secs(10));
        }
    }

    #[test]
    fn grpc_transport_sections_read_from_file_and_env() {
        let env = |name: &str| match name {
            "SPINWIRE_GRPC_STREAM_ENABLED" => Some("true".to_owned()),
            "CENTRIFUGO_UNI_GRPC_PORT" => Some("12000".to_owned()),
            _ => None,
        };
        let loaded = build(
            Some(json!({
                "uni_grpc": {"enabled": true, "max_receive_message_size": 65536},
                "grpc_web": {"enabled": true, "allowed_origins": ["https://app.example.com"]}
            })),
            &env,
        )
        .unwrap();
        let config = loaded.config;
        assert!(config.uni_grpc.enabled && config.grpc_stream.enabled);
        assert_eq!(config.uni_grpc.port, 12000);
        assert_eq!(config.grpc_stream.port, 11000);
        assert_eq!(config.uni_grpc.max_receive_message_size, 65536);
        assert_eq!(config.grpc_web.allowed_origins, ["https://app.example.com"]);
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let error = build(Some(json!({"uni_grpc": {"tls": {"enabled": true}}})), &no_env).unwrap_err();
        assert!(error.to_string().starts_with("uni_grpc.tls.cert_pem:"), "{error}");
    }

    #[test]
    fn tls_http3_and_webtransport_are_checked_together() {
        let err = build(Some(json!({"http_server": {"tls": {"enabled": true}}})), &no_env).unwrap_err();
        assert!(err.to_string().starts_with("http_server.tls.cert_pem:"), "{err}");
        let tls = json!({"enabled": true, "cert_pem": "cert.pem", "key_pem": "key.pem"});
        let err = build(Some(json!({"http_server": {"http3": {"enabled": true}}})), &no_env).unwrap_err();
        assert!(err.to_string().starts_with("http_server.http3.enabled:"), "{err}");
        let err = build(Some(json!({"webtransport": {"enabled": true}})), &no_env).unwrap_err();
        assert!(err.to_string().starts_with("webtransport.enabled:"), "{err}");
        let loaded = build(
            Some(json!({"http_server": {"tls": tls, "http3": {"enabled": true}}, "webtransport": {"enabled": true}})),
            &no_env,
        )
        .unwrap();
        assert!(loaded.config.webtransport.enabled);
        assert_eq!(loaded.config.webtransport.handler_prefix, "/connection/webtransport");
        assert_eq!(loaded.config.webtransport.message_size_limit, 65536);
        assert_eq!(loaded.config.http_server.tls.cert_pem, "cert.pem");
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        // The environment reaches the typed TLS object like any other key.
        let env = |name: &str| match name {
            "CENTRIFUGO_HTTP_SERVER_TLS_ENABLED" => Some("true".to_owned()),
            "CENTRIFUGO_HTTP_SERVER_TLS_CERT_PEM" => Some("/etc/cert.pem".to_owned()),
            "CENTRIFUGO_HTTP_SERVER_TLS_KEY_PEM" => Some("/etc/key.pem".to_owned()),
            _ => None,
        };
        let loaded = build(None, &env).unwrap();
        assert!(loaded.config.http_server.tls.enabled);
        assert_eq!(loaded.config.http_server.tls.key_pem, "/etc/key.pem");
    }

    #[test]
    fn http_transport_sections_keep_their_own_default_endpoints() {
        let config =
            build(Some(json!({"sse": {"enabled": true}, "uni_sse": {"max_request_body_size": 10}})), &no_env)
                .unwrap()
                .config;
        assert!(config.sse.enabled && !config.http_stream.enabled);
        assert_eq!(config.sse.handler_prefix, "/connection/sse");
        assert_eq!(config.http_stream.handler_prefix, "/connection/http_stream");
        assert_eq!(config.uni_sse.handler_prefix, "/connection/uni_sse");
        assert_eq!(config.uni_sse.max_request_body_size, 10);
        assert_eq!(config.uni_http_stream.handler_prefix, "/connection/uni_http_stream");
        assert_eq!(config.emulation.handler_prefix, "/emulation");
        let mapping = json!({"enabled": true, "transforms": [{"code": 3500, "to": {"status_code": 0}}]});
        let error =
            build(Some(json!({"uni_sse": {"connect_code_to_http_response": mapping}})), &no_env).unwrap_err();
        let key = "uni_sse.connect_code_to_http_response.transforms[0].to.status_code";
        assert!(error.to_string().starts_with(key), "{error}");
    }
}
