//! The configuration's shape: every section and key with Centrifugo v6's names and defaults.
//! Plain data; loading is in `load.rs`, cross-field checks in `validate.rs`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ConfigDuration;
use super::map::{MapBrokerSection, MapOptions, PostgresBroker, SharedPollOptions, SharedPollSection};
use super::proxy::{ChannelProxies, ClientProxies, NamedProxy, ProxyConfig};
use super::unserved::*;

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
    /// Named proxies, referenced by `*_proxy_name` in channel and RPC namespaces.
    pub proxies: Vec<NamedProxy>,
    /// Where map channels keep their keyed state.
    pub map_broker: MapBrokerSection,
    /// Write the process id here while the server runs.
    pub pid_file: String,
    /// Track signatures and refresh concurrency of shared-poll subscriptions.
    pub shared_poll: SharedPollSection,
    /// `GET <handler_prefix>` answers `{}`: a cheap request that warms a connection (and
    /// passes a load balancer's health check) before the WebSocket upgrade.
    pub init: Init,
    /// Spinwire never sends usage statistics, which is what `disabled: true` asks for.
    pub usage_stats: UsageStats,
    /// Gates Centrifugo's unreleased features; the only one, the `redisnats` broker, is
    /// refused by its own key, so the switch changes nothing here.
    pub enable_unreleased_features: bool,
    pub admin: Admin,
    pub prometheus: Prometheus,
    pub swagger: Swagger,
    pub debug: Pprof,
    pub opentelemetry: OpenTelemetry,
    pub graphite: Graphite,
    pub controller: Controller,
    /// Asynchronous sources of server API commands (`consumer::`).
    pub consumers: Vec<super::consumer::ConsumerConfig>,
    /// Spinwire extension: clients' connects, disconnects, subscribes and unsubscribes sent
    /// to the backend (`node::lifecycle`).
    pub lifecycle_events: super::consumer::LifecycleEvents,
}

/// `init`: the connection initialisation endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Init {
    pub enabled: bool,
    pub handler_prefix: String,
}

impl Default for Init {
    fn default() -> Self {
        Self { enabled: false, handler_prefix: "/connection/init".into() }
    }
}

/// `usage_stats`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct UsageStats {
    pub disabled: bool,
}

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
    pub tls_autocert: TlsAutocert,
    /// With `tls`: only the external listener uses it; a separate internal one stays plain.
    pub tls_external: bool,
    /// TLS for a separate internal listener (overrides `tls` there).
    pub internal_tls: Tls,
    pub http3: Http3,
    pub h2c_external: bool,
    /// Spinwire: a client must send its request headers (and its first bytes on any TCP
    /// listener) within this; idle keep-alive connections close after it too.
    pub header_read_timeout: ConfigDuration,
    /// Spinwire: open TCP connections across every listener; more are refused (HTTP 503, or
    /// closed before TLS). 0: the process's open-file limit less a reserve.
    pub max_connections: i64,
    /// Spinwire: open TCP connections per client IP address; 0: no per-address limit.
    pub max_connections_per_ip: i64,
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
            tls_autocert: TlsAutocert::default(),
            tls_external: false,
            internal_tls: Tls::default(),
            http3: Http3::default(),
            h2c_external: false,
            header_read_timeout: ConfigDuration::secs(10),
            max_connections: 0,
            max_connections_per_ip: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Log {
    /// trace | debug | info | warn | error | fatal | none, in any case; anything else is info.
    pub level: String,
    /// Append JSON lines to this file instead of writing to stderr.
    pub file: String,
}

impl Log {
    /// The level as a `tracing` filter directive, and a warning when the configured one is
    /// unknown (Centrifugo then logs at info).
    pub fn filter_level(&self) -> (&'static str, Option<String>) {
        match self.level.to_ascii_lowercase().as_str() {
            "none" => ("off", None),
            "trace" => ("trace", None),
            "debug" => ("debug", None),
            "info" | "" => ("info", None),
            "warn" => ("warn", None),
            "error" | "fatal" => ("error", None),
            _ => ("info", Some(format!("unknown log level {}, defaulting to INFO", self.level))),
        }
    }
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
    /// `memory`, `redis` or `nats` (Centrifugo's `postgres` and `redisnats` are refused).
    #[serde(rename = "type")]
    pub kind: String,
    pub redis: RedisEngine,
    pub nats: NatsBroker,
    /// Read so the keys are checked; only used by `type: postgres`, which is refused.
    pub postgres: PostgresBroker,
    /// Read so the keys are checked; only used by `type: redisnats`, which is refused.
    pub redisnats: RedisNatsBroker,
}

impl Default for BrokerSection {
    fn default() -> Self {
        Self {
            enabled: false,
            kind: "memory".into(),
            redis: RedisEngine::default(),
            nats: NatsBroker::default(),
            postgres: PostgresBroker::default(),
            redisnats: RedisNatsBroker::default(),
        }
    }
}

/// `replica_client` of a Redis section.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ReplicaClient {
    pub enabled: bool,
}

/// `broker.redisnats`: Centrifugo's unreleased Redis-plus-NATS broker.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RedisNatsBroker {
    pub redis: RedisEngine,
    pub nats: NatsBroker,
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
    /// Inert, as in Centrifugo 6.9.1: nothing maps it onto the engine's shards.
    pub replica_client: ReplicaClient,
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
            replica_client: ReplicaClient::default(),
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
    /// Subscriptions to channels with `*`/`>` become NATS wildcard subscriptions.
    pub allow_wildcards: bool,
    pub raw_mode: NatsRawMode,
}

/// `broker.nats.raw_mode`: publications go to NATS as bare data on subjects derived from the
/// channel name, for integration with other NATS publishers and subscribers.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct NatsRawMode {
    pub enabled: bool,
    /// Substrings of the channel replaced in the subject (`":" → "."`, say).
    pub channel_replacements: BTreeMap<String, String>,
    /// Put before the (replaced) channel to make the subject.
    pub prefix: String,
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
            raw_mode: NatsRawMode::default(),
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
    /// Skips the startup check of a templated `jwks_public_endpoint` (insecure; Centrifugo's
    /// temporary escape hatch).
    pub insecure_skip_jwks_endpoint_safety_check: bool,
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
    pub proxy: ClientProxies,
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
            proxy: ClientProxies::default(),
        }
    }
}

/// Options of a channel namespace (and of `channel.without_namespace`).
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(default)]
pub struct ChannelOptions {
    /// Spinwire: the largest publication data accepted into the channel, from any source
    /// (client, API, proxy, map write), in bytes; 0: no limit beyond the transports' own.
    pub max_publication_size: usize,
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
    /// `stream` (default), `map`, `map_clients`, `map_users` or `shared_poll`.
    pub subscription_type: String,
    /// Keyed state of map subscriptions.
    pub map: MapOptions,
    /// Subscriptions to channels here are listed, by client id, in the map_clients channel
    /// `prefix + channel` (and by user id in the map_users one).
    pub map_clients_presence_channel_prefix: String,
    pub map_users_presence_channel_prefix: String,
    pub shared_poll: SharedPollOptions,
}

impl ChannelOptions {
    /// History is kept only when both size and TTL are set.
    pub fn history_enabled(&self) -> bool {
        self.history_size > 0 && !self.history_ttl.is_zero()
    }

    /// A map, map_clients or map_users channel.
    pub fn is_map(&self) -> bool {
        super::map::is_map_type(&self.subscription_type)
    }

    pub fn is_shared_poll(&self) -> bool {
        self.subscription_type == "shared_poll"
    }

    /// The client protocol's subscription type number of this namespace (0 stream, 1 map,
    /// 2 map_clients, 3 map_users, 4 shared_poll).
    pub fn subscription_type_number(&self) -> i32 {
        match self.subscription_type.as_str() {
            "map" => 1,
            "map_clients" => 2,
            "map_users" => 3,
            "shared_poll" => 4,
            _ => 0,
        }
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
    pub proxy: ChannelProxies,
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
            proxy: ChannelProxies::default(),
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
    pub proxy: ProxyConfig,
    pub without_namespace: RpcOptions,
    pub namespaces: Vec<RpcNamespace>,
    pub ping: RpcPing,
    pub namespace_boundary: String,
}

impl Default for Rpc {
    fn default() -> Self {
        Self {
            proxy: ProxyConfig::default(),
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
    /// Spinwire: serve calls without a key. Without it an empty `key` refuses every call (the
    /// HTTP API fails closed the same way); Centrifugo leaves such an API open.
    pub insecure: bool,
    pub tls: Tls,
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
            insecure: false,
            tls: Tls::default(),
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
    /// permessage-deflate, as `websocket.compression`.
    pub compression: bool,
    pub compression_min_size: usize,
    pub compression_level: i32,
    pub decompressed_message_size_limit: usize,
    /// Accepted for Go's buffer tuning; see `websocket.read_buffer_size`.
    pub read_buffer_size: usize,
    pub write_buffer_size: usize,
    pub use_write_buffer_pool: bool,
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
            compression: false,
            compression_min_size: 0,
            compression_level: 1,
            decompressed_message_size_limit: 0,
            read_buffer_size: 0,
            write_buffer_size: 0,
            use_write_buffer_pool: false,
        }
    }
}

/// A WebSocket section's permessage-deflate settings (`websocket`, `uni_websocket`).
#[derive(Debug, Clone, Copy)]
pub struct WsCompression {
    pub enabled: bool,
    pub level: i32,
    pub min_size: usize,
    pub message_size_limit: usize,
    pub decompressed_message_size_limit: usize,
}

/// `compression()` of the sections that share Centrifugo's compression keys.
macro_rules! ws_compression {
    ($($section:ty),*) => {$(
        impl $section {
            pub fn compression(&self) -> WsCompression {
                WsCompression {
                    enabled: self.compression,
                    level: self.compression_level,
                    min_size: self.compression_min_size,
                    message_size_limit: self.message_size_limit,
                    decompressed_message_size_limit: self.decompressed_message_size_limit,
                }
            }
        }
    )*};
}

ws_compression!(WebSocket, UniWebSocket);

/// `uni_sse` and `uni_http_stream`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, bound = "")]
pub struct UniHttpTransport<K: transport_kind::Kind> {
    pub enabled: bool,
    pub handler_prefix: String,
    pub max_request_body_size: usize,
    /// Answer a connect that fails with an HTTP status instead of an empty stream.
    pub connect_code_to_http_response: ConnectCodeToHttpResponse,
    #[serde(skip)]
    kind: K,
}

impl<K: transport_kind::Kind> Default for UniHttpTransport<K> {
    fn default() -> Self {
        Self {
            enabled: false,
            handler_prefix: K::DEFAULT_PREFIX.to_owned(),
            max_request_body_size: 65536,
            connect_code_to_http_response: ConnectCodeToHttpResponse::default(),
            kind: K::default(),
        }
    }
}

/// `connect_code_to_http_response` of `uni_sse` and `uni_http_stream`: with it, the connect runs
/// before the response starts, and a connect that fails (error or disconnect) is answered with
/// the transform for its code (the body defaulting to the error's message or the disconnect's
/// reason), or 500 when none matches.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ConnectCodeToHttpResponse {
    pub enabled: bool,
    pub transforms: Vec<ConnectCodeTransform>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ConnectCodeTransform {
    /// A connect error code or disconnect code.
    pub code: u32,
    pub to: HttpResponseTransform,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct HttpResponseTransform {
    pub status_code: u16,
    pub body: String,
}

/// `http_server.tls_autocert`: certificates from an ACME server (Let's Encrypt).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TlsAutocert {
    pub enabled: bool,
    /// Host names a certificate may be requested for.
    pub host_whitelist: Vec<String>,
    /// Where account keys and certificates are kept between restarts.
    pub cache_dir: String,
    pub email: String,
    /// Used when a client sends no SNI.
    pub server_name: String,
    /// Also serve HTTP-01 challenges on `http_addr` (TLS-ALPN-01 on the TLS port is always
    /// answered).
    pub http: bool,
    pub http_addr: String,
    /// Spinwire extension: the ACME directory (Centrifugo always uses Let's Encrypt's).
    pub directory_url: String,
}

impl Default for TlsAutocert {
    fn default() -> Self {
        Self {
            enabled: false,
            host_whitelist: Vec::new(),
            cache_dir: String::new(),
            email: String::new(),
            server_name: String::new(),
            http: false,
            http_addr: ":80".into(),
            directory_url: "https://acme-v02.api.letsencrypt.org/directory".into(),
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
    pub tls: Tls,
}

impl Default for UniGrpc {
    fn default() -> Self {
        Self {
            enabled: false,
            address: String::new(),
            port: 11000,
            max_receive_message_size: 0,
            tls: Tls::default(),
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
    /// Its own listener's TLS; a listener shared with `uni_grpc` uses `uni_grpc.tls`.
    pub tls: Tls,
}

impl Default for GrpcStream {
    fn default() -> Self {
        Self {
            enabled: false,
            address: String::new(),
            port: 11000,
            max_receive_message_size: 0,
            tls: Tls::default(),
        }
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
    /// permessage-deflate, offered to clients that ask (no context takeover either way).
    pub compression: bool,
    /// Payloads below this many bytes go out uncompressed.
    pub compression_min_size: usize,
    pub compression_level: i32,
    /// The connection's read buffer (0: 512 bytes, small for idle connections).
    pub read_buffer_size: usize,
    /// Inert by design, with `write_buffer_size`: Go's write buffers have no counterpart here,
    /// where each write assembles its frame and keeps no buffer between writes.
    pub use_write_buffer_pool: bool,
    pub write_buffer_size: usize,
    pub write_timeout: ConfigDuration,
    pub message_size_limit: usize,
    /// Bytes of a compressed message once inflated (0: ten times `message_size_limit`).
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
    /// Spinwire extension: prove delivery, not just connections (see [`Canary`]).
    pub canary: Canary,
}

impl Default for Health {
    fn default() -> Self {
        Self { enabled: false, handler_prefix: "/health".into(), canary: Canary::default() }
    }
}

/// `admin`: the web UI for operators (see `server/admin.rs`), on the internal port unless
/// `external`. `password` logs in; `secret` signs the tokens login hands out; `insecure`
/// needs neither.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Admin {
    pub enabled: bool,
    pub handler_prefix: String,
    pub password: String,
    pub secret: String,
    pub insecure: bool,
    pub web_path: String,
    pub web_proxy_address: String,
    pub external: bool,
}

/// `health.canary`: every `interval` the node publishes through its broker to a channel only
/// it subscribes to, and `/health` answers 500 once no round trip completed for `timeout`
/// (so at most `timeout` after the last delivery that worked). This is what catches a
/// PUB/SUB connection that stays open but delivers nothing, which connection checks miss.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Canary {
    pub enabled: bool,
    pub interval: ConfigDuration,
    pub timeout: ConfigDuration,
}

impl Default for Canary {
    fn default() -> Self {
        Self { enabled: false, interval: ConfigDuration::secs(1), timeout: ConfigDuration::secs(5) }
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
fn string_or_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    match Value::deserialize(deserializer)? {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        Value::Null => Ok(String::new()),
        other => Err(serde::de::Error::custom(format!("expected a string or a number, got {other}"))),
    }
}

/// Accepts a single string where Centrifugo takes a list (`"address": "redis://…"`).
pub(super) fn one_or_many<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
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

/// `prometheus`: the `/metrics` endpoint, on the internal port (`crate::metrics`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Prometheus {
    pub enabled: bool,
    pub handler_prefix: String,
    pub instrument_http_handlers: bool,
    pub recovered_publications_histogram: bool,
    pub native_histograms: bool,
}

impl Default for Prometheus {
    fn default() -> Self {
        Self {
            enabled: false,
            handler_prefix: "/metrics".into(),
            instrument_http_handlers: false,
            recovered_publications_histogram: false,
            native_histograms: false,
        }
    }
}
