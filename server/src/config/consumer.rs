//! `consumers[]`: asynchronous sources of server API commands, with Centrifugo v6's keys and
//! defaults. Each entry names its `type` and carries the options of that type under a key of
//! the same name; the options of the other types are left at their defaults. And the way back:
//! `lifecycle_events`, what happens to clients told to the backend (a Spinwire extension).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::schema::{ReplicaClient, Tls, one_or_many};
use super::validate::validate_client_tls;
use super::{ConfigDuration, ConfigError, invalid};

/// The consumer types this version runs.
pub const SERVED_CONSUMER_TYPES: &[&str] = &["postgresql", "kafka", "nats_jetstream", "redis_stream"];

/// Cloud services that no emulator installable here can stand in for: refused by name.
pub const REFUSED_CONSUMER_TYPES: &[&str] = &["google_pub_sub", "aws_sqs", "azure_service_bus"];

/// One entry of `consumers`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ConsumerConfig {
    pub name: String,
    pub enabled: bool,
    #[serde(rename = "type")]
    pub kind: String,
    pub postgresql: PostgresConsumer,
    pub kafka: KafkaConsumer,
    pub nats_jetstream: NatsJetStreamConsumer,
    pub redis_stream: RedisStreamConsumer,
    /// Opaque: an enabled consumer of these types is refused (see [`REFUSED_CONSUMER_TYPES`]).
    pub google_pub_sub: serde_json::Map<String, Value>,
    pub aws_sqs: serde_json::Map<String, Value>,
    pub azure_service_bus: serde_json::Map<String, Value>,
}

/// `postgresql`: the transactional outbox table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PostgresConsumer {
    pub dsn: String,
    pub outbox_table_name: String,
    pub num_partitions: u32,
    pub partition_select_limit: u32,
    pub partition_poll_interval: ConfigDuration,
    /// LISTEN channel whose notifications (payload: the partition number) wake a partition.
    pub partition_notification_channel: String,
    /// A separate DSN for the LISTEN connection (when `dsn` goes through a pooler).
    pub partition_notification_dsn: String,
    pub tls: Tls,
    /// `pg_try_advisory_xact_lock` instead of waiting on the partition lock.
    pub use_try_lock: bool,
}

impl Default for PostgresConsumer {
    fn default() -> Self {
        Self {
            dsn: String::new(),
            outbox_table_name: String::new(),
            num_partitions: 1,
            partition_select_limit: 100,
            partition_poll_interval: ConfigDuration::millis(300),
            partition_notification_channel: String::new(),
            partition_notification_dsn: String::new(),
            tls: Tls::default(),
            use_try_lock: false,
        }
    }
}

/// `kafka`: a consumer group over `topics`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct KafkaConsumer {
    pub brokers: Vec<String>,
    pub topics: Vec<String>,
    pub consumer_group: String,
    pub max_poll_records: u32,
    pub fetch_max_bytes: i32,
    pub fetch_max_wait: ConfigDuration,
    pub fetch_read_uncommitted: bool,
    pub partition_queue_max_size: i64,
    pub dial_timeout: ConfigDuration,
    pub tls: Tls,
    pub sasl_mechanism: String,
    pub sasl_user: String,
    pub sasl_password: String,
    pub assume_role_arn: String,
    pub instance_id: String,
    pub method_header: String,
    pub publication_data_mode: HeaderPublicationDataMode,
}

impl Default for KafkaConsumer {
    fn default() -> Self {
        Self {
            brokers: Vec::new(),
            topics: Vec::new(),
            consumer_group: String::new(),
            max_poll_records: 100,
            fetch_max_bytes: 0,
            fetch_max_wait: ConfigDuration::millis(500),
            fetch_read_uncommitted: false,
            partition_queue_max_size: 1000,
            dial_timeout: ConfigDuration::secs(3),
            tls: Tls::default(),
            sasl_mechanism: String::new(),
            sasl_user: String::new(),
            sasl_password: String::new(),
            assume_role_arn: String::new(),
            instance_id: String::new(),
            method_header: "centrifugo-method".into(),
            publication_data_mode: HeaderPublicationDataMode::default(),
        }
    }
}

/// `nats_jetstream`: a durable pull consumer on a stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct NatsJetStreamConsumer {
    pub url: String,
    pub credentials_file: String,
    pub username: String,
    pub password: String,
    pub token: String,
    pub stream_name: String,
    pub use_existing_consumer: bool,
    pub subjects: Vec<String>,
    pub durable_consumer_name: String,
    pub deliver_policy: String,
    pub max_ack_pending: i64,
    pub method_header: String,
    pub publication_data_mode: HeaderPublicationDataMode,
    pub tls: Tls,
}

impl Default for NatsJetStreamConsumer {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            credentials_file: String::new(),
            username: String::new(),
            password: String::new(),
            token: String::new(),
            stream_name: String::new(),
            use_existing_consumer: false,
            subjects: Vec::new(),
            durable_consumer_name: String::new(),
            deliver_policy: "new".into(),
            max_ack_pending: 100,
            method_header: "centrifugo-method".into(),
            publication_data_mode: HeaderPublicationDataMode::default(),
            tls: Tls::default(),
        }
    }
}

/// `redis_stream`: a consumer group over `streams` on one Redis (Centrifugo's `Redis` keys).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RedisStreamConsumer {
    #[serde(deserialize_with = "one_or_many")]
    pub address: Vec<String>,
    pub connect_timeout: ConfigDuration,
    pub io_timeout: ConfigDuration,
    pub db: i64,
    pub user: String,
    pub password: String,
    pub client_name: String,
    pub force_resp2: bool,
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
    /// Inert, as in Centrifugo 6.9.1.
    pub replica_client: ReplicaClient,
    pub streams: Vec<String>,
    pub consumer_group: String,
    pub visibility_timeout: ConfigDuration,
    pub num_workers: u32,
    pub payload_value: String,
    pub method_value: String,
    pub publication_data_mode: ValuePublicationDataMode,
}

impl Default for RedisStreamConsumer {
    fn default() -> Self {
        Self {
            address: vec!["redis://127.0.0.1:6379".into()],
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
            streams: Vec::new(),
            consumer_group: String::new(),
            visibility_timeout: ConfigDuration::secs(30),
            num_workers: 1,
            payload_value: "payload".into(),
            method_value: "method".into(),
            publication_data_mode: ValuePublicationDataMode::default(),
        }
    }
}

/// Publication data mode of the header-carrying brokers (Kafka, NATS): the message body is
/// the data, the headers name the channels and the publication's fields.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct HeaderPublicationDataMode {
    pub enabled: bool,
    pub channels_header: String,
    pub idempotency_key_header: String,
    pub delta_header: String,
    pub version_header: String,
    pub version_epoch_header: String,
    pub tags_header_prefix: String,
}

impl Default for HeaderPublicationDataMode {
    fn default() -> Self {
        let names = PublicationFieldNames::default();
        Self {
            enabled: false,
            channels_header: names.channels,
            idempotency_key_header: names.idempotency_key,
            delta_header: names.delta,
            version_header: names.version,
            version_epoch_header: names.version_epoch,
            tags_header_prefix: names.tags_prefix,
        }
    }
}

impl HeaderPublicationDataMode {
    pub fn field_names(&self) -> PublicationFieldNames {
        PublicationFieldNames {
            channels: self.channels_header.clone(),
            idempotency_key: self.idempotency_key_header.clone(),
            delta: self.delta_header.clone(),
            version: self.version_header.clone(),
            version_epoch: self.version_epoch_header.clone(),
            tags_prefix: self.tags_header_prefix.clone(),
        }
    }
}

/// Publication data mode of Redis Streams: the same, in the entry's fields.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ValuePublicationDataMode {
    pub enabled: bool,
    pub channels_value: String,
    pub idempotency_key_value: String,
    pub delta_value: String,
    pub version_value: String,
    pub version_epoch_value: String,
    pub tags_value_prefix: String,
}

impl Default for ValuePublicationDataMode {
    fn default() -> Self {
        let names = PublicationFieldNames::default();
        Self {
            enabled: false,
            channels_value: names.channels,
            idempotency_key_value: names.idempotency_key,
            delta_value: names.delta,
            version_value: names.version,
            version_epoch_value: names.version_epoch,
            tags_value_prefix: names.tags_prefix,
        }
    }
}

impl ValuePublicationDataMode {
    pub fn field_names(&self) -> PublicationFieldNames {
        PublicationFieldNames {
            channels: self.channels_value.clone(),
            idempotency_key: self.idempotency_key_value.clone(),
            delta: self.delta_value.clone(),
            version: self.version_value.clone(),
            version_epoch: self.version_epoch_value.clone(),
            tags_prefix: self.tags_value_prefix.clone(),
        }
    }
}

/// Where a message in publication data mode keeps each field (header or entry field names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicationFieldNames {
    pub channels: String,
    pub idempotency_key: String,
    pub delta: String,
    pub version: String,
    pub version_epoch: String,
    pub tags_prefix: String,
}

impl Default for PublicationFieldNames {
    fn default() -> Self {
        Self {
            channels: "centrifugo-channels".into(),
            idempotency_key: "centrifugo-idempotency-key".into(),
            delta: "centrifugo-delta".into(),
            version: "centrifugo-version".into(),
            version_epoch: "centrifugo-version-epoch".into(),
            tags_prefix: "centrifugo-tag-".into(),
        }
    }
}

/// Checks every consumer as Centrifugo does: names (`^[a-zA-Z0-9_]{2,}$`, unique) and types
/// always, the keys a type requires only when the consumer is enabled.
pub fn validate_consumers(consumers: &[ConsumerConfig]) -> Result<(), ConfigError> {
    let mut names = std::collections::HashSet::new();
    for (i, consumer) in consumers.iter().enumerate() {
        let key = |field: &str| format!("consumers[{i}].{field}");
        let name_ok =
            consumer.name.len() >= 2 && consumer.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !name_ok {
            return Err(invalid(key("name"), "must match ^[a-zA-Z0-9_]{2,}$"));
        }
        if !names.insert(consumer.name.as_str()) {
            return Err(invalid(key("name"), format!("duplicate consumer name {:?}", consumer.name)));
        }
        let kind = consumer.kind.as_str();
        if !SERVED_CONSUMER_TYPES.contains(&kind) && !REFUSED_CONSUMER_TYPES.contains(&kind) {
            return Err(invalid(key("type"), format!("unknown consumer type {kind:?}")));
        }
        if !consumer.enabled {
            continue;
        }
        match kind {
            "postgresql" => validate_postgres(&consumer.postgresql, &|f| key(&format!("postgresql.{f}")))?,
            "kafka" => validate_kafka(&consumer.kafka, &|f| key(&format!("kafka.{f}")))?,
            "nats_jetstream" => {
                validate_nats(&consumer.nats_jetstream, &|f| key(&format!("nats_jetstream.{f}")))?
            }
            "redis_stream" => validate_redis(&consumer.redis_stream, &|f| key(&format!("redis_stream.{f}")))?,
            refused => {
                return Err(invalid(
                    key("type"),
                    format!(
                        "{refused} consumers are not served by this version (no emulator to test them against)"
                    ),
                ));
            }
        }
    }
    Ok(())
}

type KeyOf<'a> = &'a dyn Fn(&str) -> String;

fn validate_postgres(c: &PostgresConsumer, key: KeyOf<'_>) -> Result<(), ConfigError> {
    if c.dsn.is_empty() {
        return Err(invalid(key("dsn"), "required"));
    }
    if !is_sql_identifier(&c.outbox_table_name) {
        return Err(invalid(
            key("outbox_table_name"),
            "required: a table name ([schema.]name of letters, digits, '_')",
        ));
    }
    if !c.partition_notification_channel.is_empty() && !is_sql_identifier(&c.partition_notification_channel) {
        return Err(invalid(
            key("partition_notification_channel"),
            "must be an identifier (letters, digits, '_')",
        ));
    }
    if c.num_partitions == 0 || c.num_partitions > 1024 {
        return Err(invalid(key("num_partitions"), "must be between 1 and 1024"));
    }
    if c.partition_select_limit == 0 || c.partition_select_limit > 10_000 {
        return Err(invalid(key("partition_select_limit"), "must be between 1 and 10000"));
    }
    if c.partition_poll_interval.0.is_zero() {
        return Err(invalid(key("partition_poll_interval"), "must be positive"));
    }
    validate_client_tls(&key("tls"), &c.tls, false)
}

/// A plain or schema-qualified SQL name: it is written into queries, so nothing else passes.
fn is_sql_identifier(name: &str) -> bool {
    let part_ok = |part: &str| {
        !part.is_empty()
            && !part.starts_with(|c: char| c.is_ascii_digit())
            && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    let parts: Vec<&str> = name.split('.').collect();
    parts.len() <= 2 && parts.iter().all(|p| part_ok(p))
}

fn validate_kafka(c: &KafkaConsumer, key: KeyOf<'_>) -> Result<(), ConfigError> {
    if c.brokers.is_empty() {
        return Err(invalid(key("brokers"), "at least one broker is required"));
    }
    if c.topics.is_empty() {
        return Err(invalid(key("topics"), "at least one topic is required"));
    }
    if c.consumer_group.is_empty() {
        return Err(invalid(key("consumer_group"), "required"));
    }
    if c.publication_data_mode.enabled && c.publication_data_mode.channels_header.is_empty() {
        return Err(invalid(
            key("publication_data_mode.channels_header"),
            "required in publication data mode",
        ));
    }
    if !matches!(c.sasl_mechanism.as_str(), "" | "plain" | "scram-sha-256" | "scram-sha-512") {
        return Err(invalid(
            key("sasl_mechanism"),
            format!("{:?} is not served (served: plain, scram-sha-256, scram-sha-512)", c.sasl_mechanism),
        ));
    }
    if !c.assume_role_arn.is_empty() {
        return Err(invalid(key("assume_role_arn"), "AWS MSK IAM is not served by this version"));
    }
    if c.max_poll_records == 0 {
        return Err(invalid(key("max_poll_records"), "must be positive"));
    }
    validate_client_tls(&key("tls"), &c.tls, true)
}

fn validate_nats(c: &NatsJetStreamConsumer, key: KeyOf<'_>) -> Result<(), ConfigError> {
    if c.url.is_empty() {
        return Err(invalid(key("url"), "required"));
    }
    if c.stream_name.is_empty() {
        return Err(invalid(key("stream_name"), "required"));
    }
    if c.durable_consumer_name.is_empty() {
        return Err(invalid(key("durable_consumer_name"), "required"));
    }
    if !c.use_existing_consumer && !matches!(c.deliver_policy.as_str(), "new" | "all") {
        return Err(invalid(key("deliver_policy"), "must be \"new\" or \"all\""));
    }
    if c.max_ack_pending <= 0 && !c.use_existing_consumer {
        return Err(invalid(key("max_ack_pending"), "must be positive"));
    }
    if c.publication_data_mode.enabled && c.publication_data_mode.channels_header.is_empty() {
        return Err(invalid(
            key("publication_data_mode.channels_header"),
            "required in publication data mode",
        ));
    }
    validate_client_tls(&key("tls"), &c.tls, false)
}

fn validate_redis(c: &RedisStreamConsumer, key: KeyOf<'_>) -> Result<(), ConfigError> {
    if c.address.len() != 1 {
        return Err(invalid(key("address"), "exactly one Redis address is required"));
    }
    for (field, set) in [
        ("cluster_address", !c.cluster_address.is_empty()),
        ("sentinel_address", !c.sentinel_address.is_empty()),
        ("client_name", !c.client_name.is_empty()),
    ] {
        if set {
            return Err(invalid(key(field), "not served for redis_stream consumers by this version"));
        }
    }
    if c.streams.is_empty() {
        return Err(invalid(key("streams"), "at least one stream is required"));
    }
    if c.consumer_group.is_empty() {
        return Err(invalid(key("consumer_group"), "required"));
    }
    if c.io_timeout.0.is_zero() {
        return Err(invalid(key("io_timeout"), "must be positive"));
    }
    if c.num_workers == 0 || c.num_workers > 1024 {
        return Err(invalid(key("num_workers"), "must be between 1 and 1024"));
    }
    if c.publication_data_mode.enabled && c.publication_data_mode.channels_value.is_empty() {
        return Err(invalid(
            key("publication_data_mode.channels_value"),
            "required in publication data mode",
        ));
    }
    validate_client_tls(&key("tls"), &c.tls, true)
}

/// `lifecycle_events` (Spinwire extension): connects, disconnects, subscribes and unsubscribes
/// sent to the application backend in batches, at least once, through the named proxy
/// `proxy_name` (its endpoint, timeout, headers and TLS).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LifecycleEvents {
    pub enabled: bool,
    pub proxy_name: String,
    /// Events waiting to be sent; when full, new ones are dropped and counted, so a slow
    /// backend never slows the clients.
    pub queue_size: usize,
    /// Events per batch at most.
    pub batch_size: usize,
    /// How long an event may wait for its batch to fill.
    pub batch_delay: ConfigDuration,
}

impl Default for LifecycleEvents {
    fn default() -> Self {
        Self {
            enabled: false,
            proxy_name: String::new(),
            queue_size: 10_000,
            batch_size: 100,
            batch_delay: ConfigDuration::millis(100),
        }
    }
}

pub fn validate_lifecycle_events(config: &super::Config) -> Result<(), ConfigError> {
    let events = &config.lifecycle_events;
    if !events.enabled {
        return Ok(());
    }
    if !config.proxies.iter().any(|p| p.name == events.proxy_name) {
        return Err(invalid(
            "lifecycle_events.proxy_name",
            format!("no proxy named {:?} in proxies", events.proxy_name),
        ));
    }
    if events.queue_size == 0 || events.queue_size > 10_000_000 {
        return Err(invalid("lifecycle_events.queue_size", "must be between 1 and 10000000"));
    }
    if events.batch_size == 0 || events.batch_size > events.queue_size.min(100_000) {
        return Err(invalid(
            "lifecycle_events.batch_size",
            "must be between 1 and queue_size (at most 100000)",
        ));
    }
    Ok(())
}
