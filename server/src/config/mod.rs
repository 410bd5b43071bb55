//! Typed configuration with Centrifugo v6 key names, defaults and validation. Pure: no IO
//! besides [`load_file`] reading the one file it is given.
//!
//! Sources are layered (later wins): defaults → config file (JSON, YAML or TOML) → environment
//! (`SPINWIRE_<PATH>`, with `CENTRIFUGO_<PATH>` accepted so existing deployments move over
//! unchanged; see [`env`]). Every error names the key it is about, e.g.
//! `client.channel_limit: invalid type: string "lots", expected u32`.
//!
//! Sections that a later version will implement (proxies, extra transports, Redis…) are accepted
//! as opaque values so existing Centrifugo configs load; [`LoadedConfig::warnings`] says which
//! keys are unknown or not implemented yet.

mod duration;
pub mod env;

use std::collections::BTreeMap;
use std::path::Path;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use duration::{ConfigDuration, format_go_duration, parse_go_duration};

/// Full server configuration.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Config {
    pub http_server: HttpServer,
    pub log: Log,
    pub engine: Engine,
    pub broker: BrokerSection,
    pub presence_manager: PresenceManagerSection,
    pub client: Client,
    pub channel: Channel,
    pub rpc: Rpc,
    pub http_api: HttpApi,
    pub grpc_api: GrpcApi,
    pub uni_grpc: UniGrpc,
    /// Spinwire extension: the bidirectional client stream over gRPC.
    pub grpc_stream: GrpcStream,
    /// Spinwire extension: gRPC-web on the `grpc_api` and `uni_grpc` listeners.
    pub grpc_web: GrpcWeb,
    pub websocket: WebSocket,
    pub http_stream: HttpStreamTransport<transport_kind::HttpStream>,
    pub sse: HttpStreamTransport<transport_kind::Sse>,
    pub emulation: Emulation,
    pub uni_websocket: UniWebSocket,
    pub uni_sse: UniHttpTransport<transport_kind::UniSse>,
    pub uni_http_stream: UniHttpTransport<transport_kind::UniHttpStream>,
    pub webtransport: WebTransport,
    pub health: Health,
    pub shutdown: Shutdown,
    pub node: NodeSection,
    /// Sections accepted for compatibility but not implemented by this version.
    #[serde(flatten)]
    pub not_implemented: BTreeMap<String, Value>,
}

/// Top-level sections of Centrifugo's config that are accepted but not acted upon yet.
pub const NOT_IMPLEMENTED_SECTIONS: &[&str] = &[
    "map_broker",
    "admin",
    "prometheus",
    "swagger",
    "debug",
    "init",
    "opentelemetry",
    "graphite",
    "usage_stats",
    "consumers",
    "controller",
    "shared_poll",
    "proxies",
    "pid_file",
    "enable_unreleased_features",
];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpServer {
    pub address: String,
    pub port: u16,
    pub internal_address: String,
    #[serde(deserialize_with = "string_or_number")]
    pub internal_port: String,
    /// TLS for the HTTP listeners (HTTPS, WSS) and the certificate HTTP/3 uses.
    pub tls: Tls,
    pub tls_autocert: Value,
    /// With `tls`: only the external listener uses it; a separate internal one stays plain.
    pub tls_external: bool,
    /// TLS for a separate internal listener (overrides `tls` there).
    pub internal_tls: Tls,
    pub http3: Http3,
    pub h2c_external: bool,
}

/// Centrifugo's TLS object. Each `*_pem` field takes PEM text, that text base64-encoded, or the
/// path of a PEM file (checked in that order). The client-side fields (`server_ca_pem`,
/// `insecure_skip_verify`, `server_name`) are accepted for configs shared with outgoing
/// connections; the listeners do not use them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Tls {
    pub enabled: bool,
    pub cert_pem: String,
    pub key_pem: String,
    pub server_ca_pem: String,
    /// When set, clients must present a certificate signed by one of these CAs (mutual TLS).
    pub client_ca_pem: String,
    pub insecure_skip_verify: bool,
    pub server_name: String,
}

/// `http_server.http3`: QUIC on the external port's UDP side (used by WebTransport).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Http3 {
    pub enabled: bool,
}

/// `webtransport`: the bidirectional client protocol over a WebTransport session (HTTP/3).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct WebTransport {
    pub enabled: bool,
    pub handler_prefix: String,
    /// Bytes of one incoming command (or JSON line) on the session's stream.
    pub message_size_limit: usize,
}

impl Default for WebTransport {
    fn default() -> Self {
        Self { enabled: false, handler_prefix: "/connection/webtransport".into(), message_size_limit: 65536 }
    }
}

impl Default for HttpServer {
    fn default() -> Self {
        Self {
            address: String::new(),
            port: 8000,
            internal_address: String::new(),
            internal_port: String::new(),
            tls: Tls::default(),
            tls_autocert: Value::Object(Default::default()),
            tls_external: false,
            internal_tls: Tls::default(),
            http3: Http3::default(),
            h2c_external: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Log {
    /// trace | debug | info | warn | error | fatal | none
    pub level: String,
    pub file: String,
}

impl Default for Log {
    fn default() -> Self {
        Self { level: "info".into(), file: String::new() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Engine {
    /// `memory` (the embedded default) or `redis`.
    #[serde(rename = "type")]
    pub kind: String,
    pub redis: RedisEngine,
}

impl Default for Engine {
    fn default() -> Self {
        Self { kind: "memory".into(), redis: RedisEngine::default() }
    }
}

/// `broker`: a PUB/SUB and history back end chosen apart from `engine` (Centrifugo's mixing).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct BrokerSection {
    pub enabled: bool,
    /// `memory`, `redis` or `nats`.
    #[serde(rename = "type")]
    pub kind: String,
    pub redis: RedisEngine,
    pub nats: NatsBroker,
}

impl Default for BrokerSection {
    fn default() -> Self {
        Self {
            enabled: false,
            kind: "memory".into(),
            redis: RedisEngine::default(),
            nats: NatsBroker::default(),
        }
    }
}

/// `presence_manager`: where presence lives when chosen apart from `engine`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PresenceManagerSection {
    pub enabled: bool,
    /// `memory` or `redis`.
    #[serde(rename = "type")]
    pub kind: String,
    pub redis: RedisEngine,
}

impl Default for PresenceManagerSection {
    fn default() -> Self {
        Self { enabled: false, kind: "memory".into(), redis: RedisEngine::default() }
    }
}

/// Redis connection and layout settings (`engine.redis`, `broker.redis`, `presence_manager.redis`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RedisEngine {
    /// One address per shard (`redis://[user:pass@]host:port[/db]`, `rediss://` for TLS, or
    /// `host:port`); channels are spread over several shards by consistent hashing.
    #[serde(deserialize_with = "one_or_many")]
    pub address: Vec<String>,
    pub prefix: String,
    pub connect_timeout: ConfigDuration,
    /// Every command (and PUB/SUB probe) fails after this long.
    pub io_timeout: ConfigDuration,
    pub db: i64,
    pub user: String,
    pub password: String,
    pub client_name: String,
    pub force_resp2: bool,
    /// Redis Cluster seed nodes; when set, `address` is ignored.
    #[serde(deserialize_with = "one_or_many")]
    pub cluster_address: Vec<String>,
    pub tls: Tls,
    #[serde(deserialize_with = "one_or_many")]
    pub sentinel_address: Vec<String>,
    pub sentinel_user: String,
    pub sentinel_password: String,
    pub sentinel_master_name: String,
    pub sentinel_client_name: String,
    pub sentinel_tls: Tls,
    pub replica_client: Value,
    pub history_use_lists: bool,
    pub presence_ttl: ConfigDuration,
    pub presence_hash_field_ttl: bool,
    pub presence_user_mapping: bool,
}

impl Default for RedisEngine {
    fn default() -> Self {
        Self {
            address: vec!["redis://127.0.0.1:6379".into()],
            prefix: "centrifugo".into(),
            connect_timeout: ConfigDuration::secs(1),
            io_timeout: ConfigDuration::secs(4),
            db: 0,
            user: String::new(),
            password: String::new(),
            client_name: String::new(),
            force_resp2: false,
            cluster_address: Vec::new(),
            tls: Tls::default(),
            sentinel_address: Vec::new(),
            sentinel_user: String::new(),
            sentinel_password: String::new(),
            sentinel_master_name: String::new(),
            sentinel_client_name: String::new(),
            sentinel_tls: Tls::default(),
            replica_client: Value::Object(Default::default()),
            history_use_lists: false,
            presence_ttl: ConfigDuration::secs(60),
            presence_hash_field_ttl: false,
            presence_user_mapping: false,
        }
    }
}

/// `broker.nats`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct NatsBroker {
    pub url: String,
    pub prefix: String,
    pub dial_timeout: ConfigDuration,
    pub write_timeout: ConfigDuration,
    pub tls: Tls,
    pub allow_wildcards: bool,
    pub raw_mode: Value,
}

impl Default for NatsBroker {
    fn default() -> Self {
        Self {
            url: "nats://localhost:4222".into(),
            prefix: "centrifugo".into(),
            dial_timeout: ConfigDuration::secs(1),
            write_timeout: ConfigDuration::secs(1),
            tls: Tls::default(),
            allow_wildcards: false,
            raw_mode: Value::Object(Default::default()),
        }
    }
}

/// JWT verification settings (`client.token` and `client.subscription_token`).
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(default)]
pub struct TokenConfig {
    pub hmac_secret_key: String,
    pub hmac_previous_secret_key: String,
    pub hmac_previous_secret_key_valid_until: i64,
    pub rsa_public_key: String,
    pub ecdsa_public_key: String,
    pub jwks_public_endpoint: String,
    pub audience: String,
    pub audience_regex: String,
    pub issuer: String,
    pub issuer_regex: String,
    pub user_id_claim: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(default)]
pub struct SubscriptionTokenConfig {
    /// Use these settings for subscription tokens instead of `client.token`.
    pub enabled: bool,
    #[serde(flatten)]
    pub token: TokenConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct PersonalChannel {
    pub enabled: bool,
    pub personal_channel_namespace: String,
    pub single_connection: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Client {
    pub allowed_origins: Vec<String>,
    pub token: TokenConfig,
    pub subscription_token: SubscriptionTokenConfig,
    pub allow_anonymous_connect_without_token: bool,
    pub disallow_anonymous_connection_tokens: bool,
    pub ping_interval: ConfigDuration,
    pub pong_timeout: ConfigDuration,
    pub expired_close_delay: ConfigDuration,
    pub expired_sub_close_delay: ConfigDuration,
    pub stale_close_delay: ConfigDuration,
    pub channel_limit: u32,
    pub queue_max_size: usize,
    pub presence_update_interval: ConfigDuration,
    pub concurrency: u32,
    pub channel_position_check_delay: ConfigDuration,
    pub channel_position_max_time_lag: ConfigDuration,
    pub connection_limit: u32,
    pub user_connection_limit: u32,
    pub connection_rate_limit: u32,
    pub connect_include_server_time: bool,
    pub history_max_publication_limit: u32,
    pub recovery_max_publication_limit: u32,
    pub insecure_skip_token_signature_verify: bool,
    pub user_id_http_header: String,
    pub insecure: bool,
    pub subscribe_to_user_personal_channel: PersonalChannel,
    pub connect_code_to_unidirectional_disconnect: UniDisconnectTransforms,
    pub proxy: Value,
}

impl Default for Client {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            token: TokenConfig::default(),
            subscription_token: SubscriptionTokenConfig::default(),
            allow_anonymous_connect_without_token: false,
            disallow_anonymous_connection_tokens: false,
            ping_interval: ConfigDuration::secs(25),
            pong_timeout: ConfigDuration::secs(8),
            expired_close_delay: ConfigDuration::secs(25),
            expired_sub_close_delay: ConfigDuration::secs(25),
            stale_close_delay: ConfigDuration::secs(10),
            channel_limit: 128,
            queue_max_size: 1_048_576,
            presence_update_interval: ConfigDuration::secs(27),
            concurrency: 0,
            channel_position_check_delay: ConfigDuration::secs(40),
            channel_position_max_time_lag: ConfigDuration::secs(0),
            connection_limit: 0,
            user_connection_limit: 0,
            connection_rate_limit: 0,
            connect_include_server_time: false,
            history_max_publication_limit: 300,
            recovery_max_publication_limit: 300,
            insecure_skip_token_signature_verify: false,
            user_id_http_header: String::new(),
            insecure: false,
            subscribe_to_user_personal_channel: PersonalChannel::default(),
            connect_code_to_unidirectional_disconnect: UniDisconnectTransforms::default(),
            proxy: Value::Object(Default::default()),
        }
    }
}

/// Options of a channel namespace (and of `channel.without_namespace`).
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(default)]
pub struct ChannelOptions {
    pub presence: bool,
    pub join_leave: bool,
    pub force_push_join_leave: bool,
    pub history_size: u32,
    pub history_ttl: ConfigDuration,
    pub history_meta_ttl: ConfigDuration,
    pub force_positioning: bool,
    pub allow_positioning: bool,
    pub force_recovery: bool,
    pub allow_recovery: bool,
    /// `""`/`stream` or `cache`.
    pub force_recovery_mode: String,
    pub auto_cache_recover: bool,
    pub allowed_delta_types: Vec<String>,
    pub delta_publish: bool,
    pub allow_tags_filter: bool,
    pub allow_subscribe_for_client: bool,
    pub allow_subscribe_for_anonymous: bool,
    pub allow_publish_for_client: bool,
    pub allow_publish_for_subscriber: bool,
    pub allow_publish_for_anonymous: bool,
    pub allow_presence_for_client: bool,
    pub allow_presence_for_subscriber: bool,
    pub allow_presence_for_anonymous: bool,
    pub allow_history_for_client: bool,
    pub allow_history_for_subscriber: bool,
    pub allow_history_for_anonymous: bool,
    pub allow_user_limited_channels: bool,
    pub channel_regex: String,
    /// `""` (non-empty data), `json`, `json_object` or `binary`.
    pub publication_data_format: String,
    pub subscribe_proxy_enabled: bool,
    pub subscribe_proxy_name: String,
    pub publish_proxy_enabled: bool,
    pub publish_proxy_name: String,
    pub sub_refresh_proxy_enabled: bool,
    pub sub_refresh_proxy_name: String,
    pub subscribe_stream_proxy_enabled: bool,
    pub subscribe_stream_proxy_name: String,
    pub subscribe_stream_proxy_bidirectional: bool,
    /// `stream` (default); map and shared-poll types are not implemented.
    pub subscription_type: String,
}

impl ChannelOptions {
    /// History is kept only when both size and TTL are set.
    pub fn history_enabled(&self) -> bool {
        self.history_size > 0 && !self.history_ttl.is_zero()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(default)]
pub struct Namespace {
    pub name: String,
    #[serde(flatten)]
    pub options: ChannelOptions,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Channel {
    pub proxy: Value,
    pub without_namespace: ChannelOptions,
    pub namespaces: Vec<Namespace>,
    pub history_meta_ttl: ConfigDuration,
    pub publication_data_format: String,
    pub max_length: usize,
    pub private_prefix: String,
    pub namespace_boundary: String,
    pub user_boundary: String,
    pub user_separator: String,
}

impl Default for Channel {
    fn default() -> Self {
        Self {
            proxy: Value::Object(Default::default()),
            without_namespace: ChannelOptions::default(),
            namespaces: Vec::new(),
            history_meta_ttl: ConfigDuration::secs(720 * 3600),
            publication_data_format: String::new(),
            max_length: 255,
            private_prefix: "$".into(),
            namespace_boundary: ":".into(),
            user_boundary: "#".into(),
            user_separator: ",".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(default)]
pub struct RpcOptions {
    pub proxy_enabled: bool,
    pub proxy_name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(default)]
pub struct RpcNamespace {
    pub name: String,
    #[serde(flatten)]
    pub options: RpcOptions,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RpcPing {
    pub enabled: bool,
    pub method: String,
}

impl Default for RpcPing {
    fn default() -> Self {
        Self { enabled: false, method: "ping".into() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Rpc {
    pub proxy: Value,
    pub without_namespace: RpcOptions,
    pub namespaces: Vec<RpcNamespace>,
    pub ping: RpcPing,
    pub namespace_boundary: String,
}

impl Default for Rpc {
    fn default() -> Self {
        Self {
            proxy: Value::Object(Default::default()),
            without_namespace: RpcOptions::default(),
            namespaces: Vec::new(),
            ping: RpcPing::default(),
            namespace_boundary: ":".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpApi {
    pub disabled: bool,
    pub handler_prefix: String,
    pub key: String,
    /// `""` or `transport`.
    pub error_mode: String,
    pub external: bool,
    pub insecure: bool,
}

impl Default for HttpApi {
    fn default() -> Self {
        Self {
            disabled: false,
            handler_prefix: "/api".into(),
            key: String::new(),
            error_mode: String::new(),
            external: false,
            insecure: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct GrpcApi {
    pub enabled: bool,
    pub error_mode: String,
    pub address: String,
    pub port: u16,
    pub key: String,
    pub tls: Value,
    pub reflection: bool,
    /// Bytes; 0 means tonic's default (4 MiB).
    pub max_receive_message_size: usize,
}

impl Default for GrpcApi {
    fn default() -> Self {
        Self {
            enabled: false,
            error_mode: String::new(),
            address: String::new(),
            port: 10000,
            key: String::new(),
            tls: Value::Object(Default::default()),
            reflection: false,
            max_receive_message_size: 0,
        }
    }
}

/// Which HTTP transport a section configures; picks its default endpoint (the sections share
/// their shape but not their defaults).
pub mod transport_kind {
    /// A marker type naming one HTTP transport.
    pub trait Kind: std::fmt::Debug + Clone + Default {
        const DEFAULT_PREFIX: &'static str;
    }

    macro_rules! kinds {
        ($($name:ident => $prefix:literal),* $(,)?) => {$(
            #[derive(Debug, Clone, Default)]
            pub struct $name;
            impl Kind for $name {
                const DEFAULT_PREFIX: &'static str = $prefix;
            }
        )*};
    }

    kinds! {
        HttpStream => "/connection/http_stream",
        Sse => "/connection/sse",
        UniSse => "/connection/uni_sse",
        UniHttpStream => "/connection/uni_http_stream",
    }
}

/// `http_stream` and `sse`: bidirectional emulation over a streaming HTTP response, with client
/// commands arriving through `emulation.handler_prefix`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, bound = "")]
pub struct HttpStreamTransport<K: transport_kind::Kind> {
    pub enabled: bool,
    pub handler_prefix: String,
    /// Bytes of the request that opens the stream (the connect command).
    pub max_request_body_size: usize,
    #[serde(skip)]
    kind: K,
}

impl<K: transport_kind::Kind> Default for HttpStreamTransport<K> {
    fn default() -> Self {
        Self {
            enabled: false,
            handler_prefix: K::DEFAULT_PREFIX.to_owned(),
            max_request_body_size: 65536,
            kind: K::default(),
        }
    }
}

/// The endpoint that carries emulation clients' commands to their session.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Emulation {
    pub handler_prefix: String,
    pub max_request_body_size: usize,
}

impl Default for Emulation {
    fn default() -> Self {
        Self { handler_prefix: "/emulation".into(), max_request_body_size: 65536 }
    }
}

/// `uni_websocket`: server-to-client pushes over a WebSocket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct UniWebSocket {
    pub enabled: bool,
    pub handler_prefix: String,
    /// Bytes of an incoming message (only the connect request is read).
    pub message_size_limit: usize,
    pub write_timeout: ConfigDuration,
    /// Join the pushes of one write into a single frame, `\n`-separated.
    pub join_push_messages: bool,
    pub disable_disconnect_push: bool,
    pub disable_closing_handshake: bool,
}

impl Default for UniWebSocket {
    fn default() -> Self {
        Self {
            enabled: false,
            handler_prefix: "/connection/uni_websocket".into(),
            message_size_limit: 65536,
            write_timeout: ConfigDuration::secs(1),
            join_push_messages: false,
            disable_disconnect_push: false,
            disable_closing_handshake: false,
        }
    }
}

/// `uni_sse` and `uni_http_stream`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, bound = "")]
pub struct UniHttpTransport<K: transport_kind::Kind> {
    pub enabled: bool,
    pub handler_prefix: String,
    pub max_request_body_size: usize,
    /// Accepted; mapping connect errors to HTTP responses is not supported yet (refused when
    /// enabled).
    pub connect_code_to_http_response: Value,
    #[serde(skip)]
    kind: K,
}

impl<K: transport_kind::Kind> Default for UniHttpTransport<K> {
    fn default() -> Self {
        Self {
            enabled: false,
            handler_prefix: K::DEFAULT_PREFIX.to_owned(),
            max_request_body_size: 65536,
            connect_code_to_http_response: Value::Object(Default::default()),
            kind: K::default(),
        }
    }
}

/// `client.connect_code_to_unidirectional_disconnect`: which disconnect a unidirectional
/// client gets for a connect error code, overriding the default mapping.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct UniDisconnectTransforms {
    pub enabled: bool,
    pub transforms: Vec<UniDisconnectTransform>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct UniDisconnectTransform {
    /// Connect error code (client protocol error, e.g. 103).
    pub code: u32,
    pub to: TransformDisconnect,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct TransformDisconnect {
    pub code: u32,
    pub reason: String,
}

/// Unidirectional gRPC transport (`CentrifugoUniStream`), Centrifugo's keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct UniGrpc {
    pub enabled: bool,
    pub address: String,
    pub port: u16,
    /// Bytes; 0 means 4 MiB (gRPC's default).
    pub max_receive_message_size: usize,
    pub tls: Value,
}

impl Default for UniGrpc {
    fn default() -> Self {
        Self {
            enabled: false,
            address: String::new(),
            port: 11000,
            max_receive_message_size: 0,
            tls: Value::Object(Default::default()),
        }
    }
}

/// Bidirectional client stream (`spinwire.stream.v1.ClientStreamService`). Shares the
/// `uni_grpc` listener when both are enabled on the same address and port.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct GrpcStream {
    pub enabled: bool,
    pub address: String,
    pub port: u16,
    /// Bytes; 0 means 4 MiB (gRPC's default).
    pub max_receive_message_size: usize,
}

impl Default for GrpcStream {
    fn default() -> Self {
        Self { enabled: false, address: String::new(), port: 11000, max_receive_message_size: 0 }
    }
}

/// gRPC-web (for browsers, without a proxy) on the gRPC API and uni stream listeners (not on a
/// listener that serves only the bidirectional stream: gRPC-web cannot stream requests).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct GrpcWeb {
    pub enabled: bool,
    /// Origins allowed by CORS (same pattern rules as `client.allowed_origins`); empty means
    /// no cross-origin access.
    pub allowed_origins: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct WebSocket {
    pub disabled: bool,
    pub handler_prefix: String,
    pub compression: bool,
    pub compression_min_size: usize,
    pub compression_level: i32,
    pub read_buffer_size: usize,
    pub use_write_buffer_pool: bool,
    pub write_buffer_size: usize,
    pub write_timeout: ConfigDuration,
    pub message_size_limit: usize,
    pub decompressed_message_size_limit: usize,
}

impl Default for WebSocket {
    fn default() -> Self {
        Self {
            disabled: false,
            handler_prefix: "/connection/websocket".into(),
            compression: false,
            compression_min_size: 0,
            compression_level: 1,
            read_buffer_size: 0,
            use_write_buffer_pool: false,
            write_buffer_size: 0,
            write_timeout: ConfigDuration::secs(1),
            message_size_limit: 65536,
            decompressed_message_size_limit: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Health {
    pub enabled: bool,
    pub handler_prefix: String,
}

impl Default for Health {
    fn default() -> Self {
        Self { enabled: false, handler_prefix: "/health".into() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Shutdown {
    pub timeout: ConfigDuration,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self { timeout: ConfigDuration::secs(30) }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeSection {
    pub name: String,
    pub info_metrics_aggregate_interval: ConfigDuration,
}

impl Default for NodeSection {
    fn default() -> Self {
        Self { name: String::new(), info_metrics_aggregate_interval: ConfigDuration::secs(60) }
    }
}

/// Accepts `"8001"` or `8001` for keys Centrifugo declares as strings but users write as numbers.
/// Accepts a single string where Centrifugo takes a list (`"address": "redis://…"`).
fn one_or_many<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(text) if text.is_empty() => Vec::new(),
        OneOrMany::One(text) => vec![text],
        OneOrMany::Many(list) => list,
    })
}

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

fn string_or_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    match Value::deserialize(deserializer)? {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        Value::Null => Ok(String::new()),
        other => Err(serde::de::Error::custom(format!("expected a string or a number, got {other}"))),
    }
}

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

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), message: message.into() }
}

/// A validated config plus what the user should be told about it.
#[derive(Debug)]
pub struct LoadedConfig {
    pub config: Config,
    /// Unknown keys and accepted-but-not-implemented sections, as `key: explanation` lines.
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
    let mut warnings = Vec::new();
    unknown_keys(&value, &mut warnings);
    let env_names_read = std::cell::RefCell::new(std::collections::HashSet::new());
    let recording_env = |name: &str| {
        env_names_read.borrow_mut().insert(name.to_owned());
        env(name)
    };
    env::apply(&mut value, &recording_env, &mut warnings)?;
    let defaults = serde_json::to_value(Config::default()).expect("defaults serialize");
    for (path, override_value) in overrides {
        let template = path.split('.').try_fold(&defaults, |v, k| v.get(k));
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
    for section in config.not_implemented.keys() {
        if NOT_IMPLEMENTED_SECTIONS.contains(&section.as_str()) {
            warnings.push(format!("{section}: accepted, but not implemented by this version"));
        }
    }
    validate(&config)?;
    Ok(LoadedConfig { config, warnings, env_names_read: env_names_read.into_inner() })
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
    let arrays: [(&str, &str, ItemCheck); 2] = [
        ("/channel/namespaces", "channel.namespaces", |item, prefix| {
            check::<ChannelOptions>(item, "name", prefix)
        }),
        ("/rpc/namespaces", "rpc.namespaces", |item, prefix| check::<RpcOptions>(item, "name", prefix)),
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
    let defaults = serde_json::to_value(Config::default()).expect("defaults serialize");
    let namespace = serde_json::to_value(Namespace::default()).expect("defaults serialize");
    let rpc_namespace = serde_json::to_value(RpcNamespace::default()).expect("defaults serialize");
    fn walk(
        value: &Value,
        template: &Value,
        path: &str,
        items: &dyn Fn(&str) -> Option<Value>,
        out: &mut Vec<String>,
    ) {
        let (Value::Object(map), Value::Object(known)) = (value, template) else {
            return;
        };
        for (key, child) in map {
            let child_path = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
            match known.get(key) {
                None if path.is_empty() && NOT_IMPLEMENTED_SECTIONS.contains(&key.as_str()) => {}
                None => out.push(format!("{child_path}: unknown key")),
                // Opaque sections (accepted for later versions) are not checked key by key.
                Some(Value::Object(inner)) if inner.is_empty() => {}
                Some(template_child) => match (child, items(&child_path)) {
                    (Value::Array(elements), Some(item_template)) => {
                        for (i, element) in elements.iter().enumerate() {
                            walk(element, &item_template, &format!("{child_path}[{i}]"), items, out);
                        }
                    }
                    _ => walk(child, template_child, &child_path, items, out),
                },
            }
        }
    }
    let items = |path: &str| match path {
        "channel.namespaces" => Some(namespace.clone()),
        "rpc.namespaces" => Some(rpc_namespace.clone()),
        _ => None,
    };
    walk(value, &defaults, "", &items, warnings);
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

/// Cross-field checks that serde cannot express.
pub fn validate(config: &Config) -> Result<(), ConfigError> {
    let enabled = |value: &Value| value.get("enabled").and_then(Value::as_bool).unwrap_or(false);
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
            // Refusing is safer than silently serving plaintext (or ignoring a mapping).
            let what = if key.ends_with("connect_code_to_http_response") {
                "mapping connect codes to HTTP responses is not supported by this version yet"
            } else {
                "this TLS setting is not supported by this version yet"
            };
            return Err(invalid(format!("{key}.enabled"), what));
        }
    }
    validate_tls(config)?;
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
    validate_engines(config)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
    fn unsupported_security_features_are_refused_not_ignored() {
        let err =
            build(Some(json!({"http_server": {"tls_autocert": {"enabled": true}}})), &no_env).unwrap_err();
        assert!(err.to_string().starts_with("http_server.tls_autocert.enabled:"), "{err}");
        let err = build(
            Some(json!({"channel": {"namespaces": [{"name": "chat", "subscribe_proxy_enabled": true}]}})),
            &no_env,
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("channel.namespaces[0].subscribe_proxy_enabled:"), "{err}");
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
                "prometheus": {"enabled": true}
            })),
            &no_env,
        )
        .unwrap();
        assert!(loaded.warnings.contains(&"client.tokn: unknown key".to_string()));
        assert!(loaded.warnings.contains(&"channel.namespaces[0].presense: unknown key".to_string()));
        assert!(loaded.warnings.iter().any(|w| w.starts_with("prometheus: accepted")));
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
        assert!(error.to_string().contains("uni_grpc.tls.enabled"), "{error}");
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
        let error =
            build(Some(json!({"uni_sse": {"connect_code_to_http_response": {"enabled": true}}})), &no_env)
                .unwrap_err();
        assert!(error.to_string().contains("uni_sse.connect_code_to_http_response.enabled"), "{error}");
    }
}
