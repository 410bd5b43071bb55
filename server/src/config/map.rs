//! Keys of map and shared-poll subscriptions: the namespace `map` and `shared_poll` objects,
//! the top-level `map_broker` and `shared_poll` sections, and their checks.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::schema::{ChannelOptions, Config, RedisEngine, Tls};
use super::{ConfigDuration, ConfigError, DEFAULT_PROXY_NAME, SignedDuration, invalid};

/// `map` in a namespace: how a map channel keeps its keyed state.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct MapOptions {
    /// `ephemeral`, `recoverable` or `persistent`.
    pub mode: String,
    pub key_ttl: ConfigDuration,
    pub stream_size: i64,
    pub stream_ttl: ConfigDuration,
    pub meta_ttl: ConfigDuration,
    pub remove_client_on_unsubscribe: bool,
    /// `""` (the client names the key), `client_id` or `user_id`.
    pub client_key: String,
    pub allow_publish_for_client: bool,
    pub allow_publish_for_subscriber: bool,
    pub allow_publish_for_anonymous: bool,
    pub allow_remove_for_client: bool,
    pub allow_remove_for_subscriber: bool,
    pub allow_remove_for_anonymous: bool,
    pub publish_proxy_enabled: bool,
    pub publish_proxy_name: String,
    pub remove_proxy_enabled: bool,
    pub remove_proxy_name: String,
    pub default_page_size: i64,
    pub min_page_size: i64,
    pub max_page_size: i64,
    pub live_transition_max_publication_limit: i64,
    /// Negative: no limit.
    pub subscribe_catch_up_timeout: SignedDuration,
}

/// A map channel's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapMode {
    /// Keyed state only: no stream, no positions; keys expire.
    Ephemeral,
    /// State plus a bounded stream of changes; keys expire (their removal is in the stream).
    Recoverable,
    /// State plus a stream; keys never expire.
    Persistent,
}

impl MapMode {
    pub fn parse(mode: &str) -> Option<Self> {
        match mode {
            "ephemeral" => Some(Self::Ephemeral),
            "recoverable" => Some(Self::Recoverable),
            "persistent" => Some(Self::Persistent),
            _ => None,
        }
    }

    /// Whether the channel keeps a stream of changes (and so positions and recovery).
    pub fn has_stream(self) -> bool {
        self != Self::Ephemeral
    }
}

/// Page sizes and limits of map subscriptions with Centrifugo's defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapPaging {
    pub default_page_size: usize,
    pub min_page_size: usize,
    pub max_page_size: usize,
    /// Most stream entries a subscription catches up on while going live.
    pub live_transition_limit: usize,
    /// How long a client may page before going live (`None`: no limit).
    pub catch_up_timeout: Option<Duration>,
}

fn positive_or(value: i64, default: usize) -> usize {
    if value > 0 { value as usize } else { default }
}

impl MapOptions {
    pub fn mode(&self) -> Option<MapMode> {
        MapMode::parse(&self.mode)
    }

    /// Stream entries kept (recoverable and persistent; default 100).
    pub fn effective_stream_size(&self) -> usize {
        positive_or(self.stream_size, 100)
    }

    /// The stream's content is dropped this long after the last write (default 1 minute).
    pub fn effective_stream_ttl(&self) -> Duration {
        if self.stream_ttl.is_zero() { Duration::from_secs(60) } else { self.stream_ttl.0 }
    }

    /// The whole channel is forgotten this long after its last use; `None` for never
    /// (persistent). Recoverable defaults to ten stream TTLs, at least the key TTL.
    pub fn effective_meta_ttl(&self) -> Option<Duration> {
        match self.mode()? {
            MapMode::Ephemeral | MapMode::Persistent => None,
            MapMode::Recoverable if !self.meta_ttl.is_zero() => Some(self.meta_ttl.0),
            MapMode::Recoverable => Some((self.effective_stream_ttl() * 10).max(self.key_ttl.0)),
        }
    }

    pub fn paging(&self) -> MapPaging {
        let max_page_size = positive_or(self.max_page_size, 1000);
        MapPaging {
            default_page_size: positive_or(self.default_page_size, 100),
            min_page_size: positive_or(self.min_page_size, 100),
            max_page_size,
            live_transition_limit: positive_or(self.live_transition_max_publication_limit, max_page_size),
            catch_up_timeout: match self.subscribe_catch_up_timeout {
                timeout if timeout.is_negative() => None,
                timeout => Some(timeout.positive().unwrap_or(Duration::from_secs(5))),
            },
        }
    }

    /// The proxy a map publish goes through, when enabled (`default` is `channel.proxy.map_publish`).
    pub fn publish_proxy(&self) -> Option<&str> {
        self.publish_proxy_enabled.then(|| proxy_name(&self.publish_proxy_name))
    }

    pub fn remove_proxy(&self) -> Option<&str> {
        self.remove_proxy_enabled.then(|| proxy_name(&self.remove_proxy_name))
    }
}

fn proxy_name(name: &str) -> &str {
    if name.is_empty() { DEFAULT_PROXY_NAME } else { name }
}

/// `shared_poll` in a namespace.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SharedPollOptions {
    pub proxy_name: String,
    /// `""`/`versionless` or `versioned`.
    pub mode: String,
    pub refresh_interval: ConfigDuration,
    pub refresh_batch_size: i64,
    pub max_keys_per_connection: i64,
    /// Negative: at once.
    pub channel_shutdown_delay: SignedDuration,
    pub track_expired_extra_delay: ConfigDuration,
    pub publish_enabled: bool,
}

impl SharedPollOptions {
    pub fn versioned(&self) -> bool {
        self.mode == "versioned"
    }

    pub fn effective_proxy_name(&self) -> &str {
        proxy_name(&self.proxy_name)
    }

    pub fn effective_refresh_interval(&self) -> Duration {
        if self.refresh_interval.0.is_zero() { Duration::from_secs(10) } else { self.refresh_interval.0 }
    }

    pub fn effective_batch_size(&self) -> usize {
        positive_or(self.refresh_batch_size, 1000)
    }

    pub fn effective_max_keys(&self) -> usize {
        positive_or(self.max_keys_per_connection, 5000)
    }

    /// Delay before a channel nobody tracks is dropped (default 1 s; negative: at once).
    pub fn effective_shutdown_delay(&self) -> Duration {
        match self.channel_shutdown_delay {
            delay if delay.is_negative() => Duration::ZERO,
            delay => delay.positive().unwrap_or(Duration::from_secs(1)),
        }
    }

    /// Grace after a track signature's expiry before its keys are dropped (default 25 s).
    pub fn effective_expired_delay(&self) -> Duration {
        if self.track_expired_extra_delay.0.is_zero() {
            Duration::from_secs(25)
        } else {
            self.track_expired_extra_delay.0
        }
    }
}

/// Top-level `shared_poll`: the track-signature secret and the refresh concurrency.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SharedPollSection {
    pub hmac_secret_key: String,
    pub hmac_previous_secret_key: String,
    /// Unix seconds; signatures issued later are not checked against the previous key (0: no limit).
    pub hmac_previous_secret_key_valid_until: i64,
    /// Refresh calls in flight on this node (0: 64).
    pub concurrency_limit: i64,
}

impl SharedPollSection {
    pub fn effective_concurrency(&self) -> usize {
        positive_or(self.concurrency_limit, 64)
    }
}

/// Top-level `map_broker`: where map channels keep their state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct MapBrokerSection {
    /// `memory`, `redis` or `postgres`.
    #[serde(rename = "type")]
    pub kind: String,
    pub redis: RedisMapBroker,
    pub postgres: PostgresMapBroker,
}

impl Default for MapBrokerSection {
    fn default() -> Self {
        Self {
            kind: "memory".into(),
            redis: RedisMapBroker::default(),
            postgres: PostgresMapBroker::default(),
        }
    }
}

/// `map_broker.redis`: a Redis connection of its own plus the map broker's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RedisMapBroker {
    #[serde(flatten)]
    pub redis: RedisEngine,
    /// How often expired keys are removed (and their removals published); negative: never.
    pub cleanup_interval: SignedDuration,
    pub cleanup_batch_size: i64,
    pub idempotent_result_ttl: ConfigDuration,
    /// Keep the data structures only; publications are not sent over PUB/SUB.
    pub skip_pub_sub: bool,
}

impl Default for RedisMapBroker {
    fn default() -> Self {
        Self {
            redis: RedisEngine::default(),
            cleanup_interval: SignedDuration { negative: false, magnitude: Duration::from_secs(1) },
            cleanup_batch_size: 100,
            idempotent_result_ttl: ConfigDuration::secs(300),
            skip_pub_sub: false,
        }
    }
}

/// `map_broker.postgres`: the PostgreSQL connection and tables (`broker.postgres`'s keys) plus
/// how often expired keys are looked for.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PostgresMapBroker {
    #[serde(flatten)]
    pub postgres: PostgresBroker,
    pub ttl_check_interval: ConfigDuration,
}

impl Default for PostgresMapBroker {
    fn default() -> Self {
        Self { postgres: PostgresBroker::default(), ttl_check_interval: ConfigDuration::secs(1) }
    }
}

/// `broker.postgres` (and the shared part of `map_broker.postgres`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PostgresBroker {
    pub dsn: String,
    pub tls: Tls,
    pub pool_size: i64,
    pub num_shards: i64,
    pub cleanup_interval: ConfigDuration,
    pub idempotent_result_ttl: ConfigDuration,
    pub binary_data: bool,
    pub stream_retention: ConfigDuration,
    pub use_notify: bool,
    pub notify_dsn: String,
    pub table_prefix: String,
    pub skip_schema_init: bool,
    pub outbox: PostgresOutbox,
    pub partition_lookahead_days: i64,
    pub partition_retention_days: i64,
}

impl Default for PostgresBroker {
    fn default() -> Self {
        Self {
            dsn: String::new(),
            tls: Tls::default(),
            pool_size: 16,
            num_shards: 8,
            cleanup_interval: ConfigDuration::secs(60),
            idempotent_result_ttl: ConfigDuration::secs(300),
            binary_data: false,
            stream_retention: ConfigDuration::secs(24 * 3600),
            use_notify: false,
            notify_dsn: String::new(),
            table_prefix: "cf".into(),
            skip_schema_init: false,
            outbox: PostgresOutbox::default(),
            partition_lookahead_days: 2,
            partition_retention_days: 7,
        }
    }
}

/// `map_broker.postgres.outbox`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct PostgresOutbox {
    pub poll_interval: ConfigDuration,
    pub batch_size: i64,
}

impl Default for PostgresOutbox {
    fn default() -> Self {
        Self { poll_interval: ConfigDuration::millis(100), batch_size: 1000 }
    }
}

/// The subscription types a namespace can have.
pub const SUBSCRIPTION_TYPES: &[&str] = &["", "stream", "map", "map_clients", "map_users", "shared_poll"];

/// Whether `subscription_type` names one of the map family.
pub fn is_map_type(subscription_type: &str) -> bool {
    matches!(subscription_type, "map" | "map_clients" | "map_users")
}

/// The checks Centrifugo makes on a namespace's map and shared-poll keys (plus the two
/// `meta_ttl` combinations its library only refuses at run time), in its order.
pub fn validate_map_options(key: &str, options: &ChannelOptions, config: &Config) -> Result<(), ConfigError> {
    let map = &options.map;
    validate_map_proxies(key, map, config)?;
    if !matches!(map.client_key.as_str(), "" | "client_id" | "user_id") {
        return Err(invalid(
            format!("{key}.map.client_key"),
            format!("unknown client key {:?} (expected client_id or user_id)", map.client_key),
        ));
    }
    if !map.client_key.is_empty() && (map.publish_proxy_enabled || map.remove_proxy_enabled) {
        return Err(invalid(
            format!("{key}.map.client_key"),
            "cannot be combined with map publish or remove proxies (the proxy decides the key)",
        ));
    }
    if !SUBSCRIPTION_TYPES.contains(&options.subscription_type.as_str()) {
        return Err(invalid(
            format!("{key}.subscription_type"),
            format!("unknown subscription type {:?}", options.subscription_type),
        ));
    }
    if options.subscription_type == "shared_poll" {
        validate_shared_poll(key, &options.shared_poll, config)?;
    }
    if !map.mode.is_empty() && map.mode().is_none() {
        return Err(invalid(
            format!("{key}.map.mode"),
            format!("unknown mode {:?} (expected ephemeral, recoverable or persistent)", map.mode),
        ));
    }
    if is_map_type(&options.subscription_type) {
        validate_map_mode(key, &options.subscription_type, map)?;
    }
    if map.remove_client_on_unsubscribe && !is_map_type(&options.subscription_type) {
        return Err(invalid(
            format!("{key}.map.remove_client_on_unsubscribe"),
            "only for map subscription types",
        ));
    }
    validate_presence_prefixes(key, options, config)?;
    validate_page_sizes(key, map)
}

fn validate_map_proxies(key: &str, map: &MapOptions, config: &Config) -> Result<(), ConfigError> {
    for (field, name, enabled) in [
        ("publish_proxy_name", &map.publish_proxy_name, map.publish_proxy_enabled),
        ("remove_proxy_name", &map.remove_proxy_name, map.remove_proxy_enabled),
    ] {
        let name = proxy_name(name);
        let named = config.proxies.iter().any(|p| p.name == name);
        if name != DEFAULT_PROXY_NAME && !named {
            return Err(invalid(format!("{key}.map.{field}"), format!("no proxy named {name:?} in proxies")));
        }
        let default = if field == "publish_proxy_name" {
            &config.channel.proxy.map_publish
        } else {
            &config.channel.proxy.map_remove
        };
        if enabled && name == DEFAULT_PROXY_NAME && !named && default.endpoint.is_empty() {
            let section = if field == "publish_proxy_name" { "map_publish" } else { "map_remove" };
            return Err(invalid(
                format!("channel.proxy.{section}.endpoint"),
                "required by the default proxy",
            ));
        }
    }
    Ok(())
}

fn validate_map_mode(key: &str, subscription_type: &str, map: &MapOptions) -> Result<(), ConfigError> {
    let mode_key = format!("{key}.map.mode");
    let Some(mode) = map.mode() else {
        return Err(invalid(mode_key, format!("required for subscription type {subscription_type:?}")));
    };
    let field = |name: &str| format!("{key}.map.{name}");
    match mode {
        MapMode::Ephemeral | MapMode::Recoverable if map.key_ttl.is_zero() => {
            return Err(invalid(field("key_ttl"), format!("required in {} mode", map.mode)));
        }
        MapMode::Persistent if !map.key_ttl.is_zero() => {
            return Err(invalid(field("key_ttl"), "persistent keys do not expire: leave key_ttl unset"));
        }
        MapMode::Persistent if subscription_type != "map" => {
            return Err(invalid(mode_key, "presence maps need expiring keys: use ephemeral or recoverable"));
        }
        _ => {}
    }
    if mode == MapMode::Ephemeral {
        for (name, set) in [
            ("stream_size", map.stream_size != 0),
            ("stream_ttl", !map.stream_ttl.is_zero()),
            ("meta_ttl", !map.meta_ttl.is_zero()),
        ] {
            if set {
                return Err(invalid(field(name), "ephemeral maps keep no stream"));
            }
        }
        return Ok(());
    }
    if map.stream_size < 0 {
        return Err(invalid(field("stream_size"), "must not be negative"));
    }
    if !map.meta_ttl.is_zero() {
        if mode == MapMode::Persistent {
            return Err(invalid(
                field("meta_ttl"),
                "persistent maps are never forgotten: leave meta_ttl unset",
            ));
        }
        if map.meta_ttl.0 < map.effective_stream_ttl() {
            return Err(invalid(field("meta_ttl"), "must not be less than stream_ttl"));
        }
        if map.meta_ttl.0 < map.key_ttl.0 {
            return Err(invalid(field("meta_ttl"), "must not be less than key_ttl"));
        }
    }
    Ok(())
}

/// A presence prefix must lead into a namespace of the matching map type.
fn validate_presence_prefixes(
    key: &str,
    options: &ChannelOptions,
    config: &Config,
) -> Result<(), ConfigError> {
    for (field, prefix, wanted) in [
        ("map_clients_presence_channel_prefix", &options.map_clients_presence_channel_prefix, "map_clients"),
        ("map_users_presence_channel_prefix", &options.map_users_presence_channel_prefix, "map_users"),
    ] {
        if prefix.is_empty() {
            continue;
        }
        let boundary = &config.channel.namespace_boundary;
        let target = match prefix.split_once(boundary.as_str()).filter(|_| !boundary.is_empty()) {
            Some((namespace, _)) => {
                config.channel.namespaces.iter().find(|ns| ns.name == namespace).map(|ns| &ns.options)
            }
            None => Some(&config.channel.without_namespace),
        };
        match target {
            None => {
                return Err(invalid(
                    format!("{key}.{field}"),
                    format!("{prefix:?} leads to no configured namespace"),
                ));
            }
            Some(target) if target.subscription_type != wanted => {
                return Err(invalid(
                    format!("{key}.{field}"),
                    format!("{prefix:?} leads to a namespace whose subscription_type is not {wanted:?}"),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn validate_page_sizes(key: &str, map: &MapOptions) -> Result<(), ConfigError> {
    let field = |name: &str| format!("{key}.map.{name}");
    for (name, value) in [
        ("min_page_size", map.min_page_size),
        ("max_page_size", map.max_page_size),
        ("default_page_size", map.default_page_size),
        ("live_transition_max_publication_limit", map.live_transition_max_publication_limit),
    ] {
        if value < 0 {
            return Err(invalid(field(name), "must not be negative"));
        }
    }
    let both = |a: i64, b: i64| a > 0 && b > 0;
    if both(map.min_page_size, map.max_page_size) && map.min_page_size > map.max_page_size {
        return Err(invalid(field("min_page_size"), "must not exceed max_page_size"));
    }
    if both(map.default_page_size, map.max_page_size) && map.default_page_size > map.max_page_size {
        return Err(invalid(field("default_page_size"), "must not exceed max_page_size"));
    }
    if both(map.default_page_size, map.min_page_size) && map.default_page_size < map.min_page_size {
        return Err(invalid(field("default_page_size"), "must not be less than min_page_size"));
    }
    Ok(())
}

fn validate_shared_poll(key: &str, poll: &SharedPollOptions, config: &Config) -> Result<(), ConfigError> {
    if config.shared_poll.hmac_secret_key.is_empty() {
        return Err(invalid("shared_poll.hmac_secret_key", "required by shared_poll subscriptions"));
    }
    let name = poll.effective_proxy_name();
    let named = config.proxies.iter().any(|p| p.name == name);
    if name != DEFAULT_PROXY_NAME && !named {
        return Err(invalid(
            format!("{key}.shared_poll.proxy_name"),
            format!("no proxy named {name:?} in proxies"),
        ));
    }
    if name == DEFAULT_PROXY_NAME && !named && config.channel.proxy.shared_poll_refresh.endpoint.is_empty() {
        return Err(invalid(
            "channel.proxy.shared_poll_refresh.endpoint",
            "required by shared_poll subscriptions",
        ));
    }
    if !matches!(poll.mode.as_str(), "" | "versionless" | "versioned") {
        return Err(invalid(
            format!("{key}.shared_poll.mode"),
            format!("unknown mode {:?} (expected versionless or versioned)", poll.mode),
        ));
    }
    if poll.publish_enabled && !poll.versioned() {
        return Err(invalid(
            format!("{key}.shared_poll.publish_enabled"),
            "needs versioned mode (publications carry explicit versions)",
        ));
    }
    Ok(())
}

/// `map_broker`: a known type, with what that type needs.
pub fn validate_map_broker(config: &Config) -> Result<(), ConfigError> {
    let broker = &config.map_broker;
    match broker.kind.as_str() {
        "memory" => Ok(()),
        "redis" => super::validate::validate_redis_section("map_broker.redis", &broker.redis.redis),
        "postgres" => validate_postgres_map_broker(&broker.postgres),
        other => Err(invalid(
            "map_broker.type",
            format!("unknown map broker {other:?} (expected memory, redis or postgres)"),
        )),
    }
}

/// `map_broker.postgres`: a DSN, a prefix usable in SQL names, client-side TLS only. Counts
/// and durations at zero take Centrifugo's defaults, as there.
fn validate_postgres_map_broker(section: &PostgresMapBroker) -> Result<(), ConfigError> {
    let pg = &section.postgres;
    if pg.dsn.trim().is_empty() {
        return Err(invalid("map_broker.postgres.dsn", "required for map_broker.type postgres"));
    }
    let prefix = pg.table_prefix.trim_end_matches('_');
    let identifier = prefix.chars().next().is_none_or(|c| c.is_ascii_alphabetic() || c == '_')
        && prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && prefix.len() <= 40;
    if !identifier {
        return Err(invalid(
            "map_broker.postgres.table_prefix",
            format!("{prefix:?} must be letters, digits and _ (at most 40), not starting with a digit"),
        ));
    }
    if pg.num_shards > i64::from(i16::MAX) {
        return Err(invalid("map_broker.postgres.num_shards", format!("at most {}", i16::MAX)));
    }
    super::validate::validate_client_tls("map_broker.postgres.tls", &pg.tls, false)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn load(namespaces: Value) -> Result<Config, ConfigError> {
        super::super::build(Some(json!({"channel": {"namespaces": namespaces}})), &|_| None).map(|l| l.config)
    }

    fn refused(namespace: Value) -> String {
        let mut namespaces = vec![namespace];
        namespaces.push(json!({"name": "pc", "subscription_type": "map_clients", "map": {"mode": "ephemeral", "key_ttl": "60s"}}));
        load(Value::Array(namespaces)).expect_err("refused").to_string()
    }

    #[test]
    fn the_sdk_integration_namespaces_load() {
        let config = load(json!([
            {"name": "streamless", "subscription_type": "map",
             "map": {"mode": "ephemeral", "key_ttl": "60s", "allow_publish_for_client": true}},
            {"name": "smallstream", "subscription_type": "map",
             "map": {"mode": "persistent", "stream_size": 2, "stream_ttl": "60s"}},
            {"name": "recov", "subscription_type": "map", "map": {"mode": "recoverable", "key_ttl": "10s"}},
            {"name": "prestest", "subscription_type": "map", "map_clients_presence_channel_prefix": "prescli:",
             "map": {"mode": "ephemeral", "key_ttl": "60s", "client_key": "client_id"}},
            {"name": "prescli", "subscription_type": "map_clients", "map": {"mode": "ephemeral", "key_ttl": "60s"}}
        ]))
        .unwrap();
        let recov = &config.channel.namespaces[2].options.map;
        assert_eq!(recov.mode(), Some(MapMode::Recoverable));
        assert_eq!(recov.effective_meta_ttl(), Some(Duration::from_secs(600)), "ten stream TTLs");
        assert_eq!(recov.paging().min_page_size, 100);
        assert_eq!(recov.paging().live_transition_limit, 1000);
        assert_eq!(recov.paging().catch_up_timeout, Some(Duration::from_secs(5)));
    }

    #[test]
    fn impossible_maps_are_refused_by_key() {
        let cases = [
            (json!({"name": "mm", "subscription_type": "map"}), "channel.namespaces[0].map.mode"),
            (
                json!({"name": "mm", "subscription_type": "map", "map": {"mode": "eternal"}}),
                "channel.namespaces[0].map.mode",
            ),
            (
                json!({"name": "mm", "subscription_type": "map", "map": {"mode": "ephemeral"}}),
                "channel.namespaces[0].map.key_ttl",
            ),
            (
                json!({"name": "mm", "subscription_type": "map", "map": {"mode": "persistent", "key_ttl": "1s"}}),
                "channel.namespaces[0].map.key_ttl",
            ),
            (
                json!({"name": "mm", "subscription_type": "map", "map": {"mode": "ephemeral", "key_ttl": "1s", "stream_size": 5}}),
                "channel.namespaces[0].map.stream_size",
            ),
            (
                json!({"name": "mm", "subscription_type": "map", "map": {"mode": "recoverable", "key_ttl": "10s", "meta_ttl": "5s", "stream_ttl": "1s"}}),
                "channel.namespaces[0].map.meta_ttl",
            ),
            (
                json!({"name": "mm", "subscription_type": "map", "map": {"mode": "persistent", "meta_ttl": "1h"}}),
                "channel.namespaces[0].map.meta_ttl",
            ),
            (
                json!({"name": "mm", "subscription_type": "map_users", "map": {"mode": "persistent"}}),
                "channel.namespaces[0].map.mode",
            ),
            (
                json!({"name": "mm", "subscription_type": "map", "map": {"mode": "persistent", "client_key": "ip"}}),
                "channel.namespaces[0].map.client_key",
            ),
            (
                json!({"name": "mm", "subscription_type": "map", "map": {"mode": "persistent", "min_page_size": 10, "max_page_size": 5}}),
                "channel.namespaces[0].map.min_page_size",
            ),
            (
                json!({"name": "mm", "map": {"remove_client_on_unsubscribe": true}}),
                "channel.namespaces[0].map.remove_client_on_unsubscribe",
            ),
            (
                json!({"name": "mm", "map_clients_presence_channel_prefix": "nowhere:"}),
                "channel.namespaces[0].map_clients_presence_channel_prefix",
            ),
            (
                json!({"name": "mm", "map_users_presence_channel_prefix": "pc:"}),
                "channel.namespaces[0].map_users_presence_channel_prefix",
            ),
            (json!({"name": "mm", "subscription_type": "queue"}), "channel.namespaces[0].subscription_type"),
            (
                json!({"name": "mm", "subscription_type": "map", "map": {"mode": "persistent", "subscribe_catch_up_timeout": "-1x"}}),
                "channel.namespaces[0].map.subscribe_catch_up_timeout",
            ),
        ];
        for (namespace, key) in cases {
            let error = refused(namespace.clone());
            assert!(error.starts_with(key), "{namespace}: {error}");
        }
    }

    #[test]
    fn a_negative_catch_up_timeout_means_no_limit() {
        let config = load(json!([{"name": "mm", "subscription_type": "map",
            "map": {"mode": "persistent", "subscribe_catch_up_timeout": "-1s"}}]))
        .unwrap();
        assert_eq!(config.channel.namespaces[0].options.map.paging().catch_up_timeout, None);
    }

    #[test]
    fn the_map_broker_type_is_checked() {
        let build = |broker: Value| super::super::build(Some(json!({"map_broker": broker})), &|_| None);
        assert!(build(json!({"type": "memory"})).is_ok());
        let error = build(json!({"type": "etcd"})).unwrap_err().to_string();
        assert!(error.starts_with("map_broker.type"), "{error}");
        assert!(
            build(json!({"type": "postgres", "postgres": {"dsn": "postgres://x", "table_prefix": "app_"}}))
                .is_ok()
        );
        let refusals = [
            (json!({"type": "postgres"}), "map_broker.postgres.dsn"),
            (
                json!({"type": "postgres", "postgres": {"dsn": "x", "table_prefix": "a;b"}}),
                "map_broker.postgres.table_prefix",
            ),
            (
                json!({"type": "postgres", "postgres": {"dsn": "x", "num_shards": 40000}}),
                "map_broker.postgres.num_shards",
            ),
            (
                json!({"type": "postgres", "postgres": {"dsn": "x", "tls": {"enabled": true, "server_name": "db"}}}),
                "map_broker.postgres.tls.server_name",
            ),
        ];
        for (section, key) in refusals {
            let error = build(section.clone()).unwrap_err().to_string();
            assert!(error.starts_with(key), "{section}: {error}");
        }
    }
}
