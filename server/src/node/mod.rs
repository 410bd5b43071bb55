//! The composition root: owns the config, channel rules, token verifiers, the [`Hub`] and the
//! engines, and offers the operations that sessions and the server API share (publish, history,
//! presence, subscriber bookkeeping, acting on a user's connections on every node).
//!
//! **Invariant:** the node is the only module that talks to the engines. Broker deliveries
//! arrive through [`BrokerEventHandler`] and go straight to the hub without awaiting; control
//! messages go to [`cluster`], which turns each into a node method call.
//!
//! - `connections.rs`: disconnect, unsubscribe, subscribe and refresh of a user's sessions,
//!   here and on the other nodes;
//! - `cluster.rs`: the other nodes (registry, surveys) and the control-message dispatcher;
//! - `position_check.rs`: noticing deliveries lost on quiet channels (networked brokers);
//! - `engines.rs`: building the engines the config names;
//! - `canary.rs`: the delivery canary behind `health.canary`;
//! - `lifecycle.rs`: clients' events told to the backend (`lifecycle_events`).

mod admission;
pub mod canary;
pub mod cluster;
mod connections;
mod engines;
pub mod lifecycle;
pub mod map;
#[cfg(all(test, feature = "loom"))]
mod models;
mod position_check;
pub mod shared_poll;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use admission::Refused as AdmissionRefused;
pub use connections::server_subscribe;

use crate::auth::{TokenVerifier, VerifierConfigError};
use crate::channel::{ChannelRules, ResolvedChannel};
use crate::common::{HistoryFilter, HistoryResult, StreamPosition};
use crate::config::{ChannelOptions, Config};
use crate::engine::map::MapBroker;
use crate::engine::{
    Broker, BrokerEventHandler, PresenceManager, PresenceStats, PublishOptions, PublishOutcome,
};
use crate::errors::{ClientError, Disconnect};
use crate::hub::{EmulationSessions, Hub, Membership, Prepared, SessionHandle};
use crate::jwks::Jwks;
use crate::metrics::{InfoAggregator, MessageType, Metrics, NodeAction, NodeFigures};
use crate::proto::api::{Metrics as InfoMetrics, NodeResult};
use crate::proto::client::{ClientInfo, Publication};
use crate::proxy::Proxies;
use crate::telemetry::{Settings, Tracer};
use cluster::Cluster;
use engines::client_error as engine_error;

/// How one publication is published, beyond what its namespace says.
#[derive(Debug, Clone, Default)]
pub struct PublishSpec {
    /// Do not keep it in history (and so give it no offset).
    pub skip_history: bool,
    /// Publish at most once per key within [`IDEMPOTENT_RESULT_TTL`].
    pub idempotency_key: Option<String>,
    /// Let delta subscribers get it as a patch against the previous publication (the caller
    /// has already applied the namespace's `delta_publish`).
    pub delta: bool,
    /// Non-zero: drop it when the channel already has this version or a newer one within the
    /// same `version_epoch`.
    pub version: u64,
    pub version_epoch: String,
}

/// The namespace's `max_publication_size` (107 above it), on every publish path.
pub(crate) fn check_publication_size(
    options: &ChannelOptions,
    publication: &Publication,
) -> Result<(), ClientError> {
    match options.max_publication_size {
        0 => Ok(()),
        max if publication.data.len() > max => Err(ClientError::BAD_REQUEST),
        _ => Ok(()),
    }
}

/// How long a publish result is remembered for an idempotency key.
pub const IDEMPOTENT_RESULT_TTL: Duration = Duration::from_secs(300);
/// Presence entries expire this long after their last refresh.
pub const PRESENCE_TTL: Duration = Duration::from_secs(60);

/// The server node.
pub struct Node {
    pub config: Arc<Config>,
    pub rules: ChannelRules,
    pub hub: Arc<Hub>,
    /// Emulated sessions on this node, for command frames sent on separate requests.
    pub emulation: Arc<EmulationSessions>,
    pub connect_tokens: TokenVerifier,
    pub subscribe_tokens: TokenVerifier,
    /// Key sources of the two verifiers when they use a JWKS endpoint.
    pub connect_jwks: Option<Jwks>,
    pub subscribe_jwks: Option<Jwks>,
    broker: Arc<dyn Broker>,
    presence: Arc<dyn PresenceManager>,
    map_broker: Arc<dyn MapBroker>,
    /// Unique id of this process in a cluster.
    pub uid: String,
    pub name: String,
    started: Instant,
    /// Connection tasks (sessions), waited for on shutdown.
    pub tasks: TaskTracker,
    /// Cancelled when the node starts shutting down: sessions close with 3001, new
    /// connections and connects are refused.
    pub shutdown: CancellationToken,
    /// The other nodes on the same broker.
    pub cluster: Cluster,
    /// The application backends the sessions call (connect, subscribe, publish… proxies).
    pub proxies: Proxies,
    /// Shared-poll channels polled for this node's connections.
    pub shared_poll: shared_poll::SharedPoll,
    /// `client.connection_rate_limit` and `client.connection_limit`.
    admission: admission::Admission,
    /// What `/metrics` exposes and `info` samples.
    pub metrics: Arc<Metrics>,
    /// The latest `info` sample.
    info_sample: crate::sync::Mutex<MetricsSample>,
    /// `health.canary`, when enabled.
    pub canary: Option<Arc<canary::Canary>>,
    /// `opentelemetry.enabled`: the spans' exporter.
    pub tracer: Option<Arc<Tracer>>,
    /// `lifecycle_events.enabled`: clients' events on their way to the backend.
    pub lifecycle: Option<Arc<lifecycle::Lifecycle>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("uid", &self.uid).field("name", &self.name).finish_non_exhaustive()
    }
}

/// What the broker delivers to this node: publications, joins and leaves go to the hub, control
/// messages to [`cluster`].
struct NodeEvents {
    hub: Arc<Hub>,
    node: Weak<Node>,
    metrics: Arc<Metrics>,
    /// `client.channel_position_max_time_lag` in milliseconds (0: off).
    max_time_lag_ms: i64,
    canary: Option<Arc<canary::Canary>>,
}

impl BrokerEventHandler for NodeEvents {
    fn handle_publication(
        &self,
        channel: &str,
        publication: Publication,
        position: StreamPosition,
        delta_base: Option<Bytes>,
    ) {
        if let Some(canary) = &self.canary
            && channel == canary.channel
        {
            if let Some(round_trip) = canary.returned(&publication) {
                self.metrics.canary_round_trip.observe(round_trip.as_secs_f64());
            }
            return;
        }
        if !publication.key.is_empty()
            && let Some((poll_channel, _)) = shared_poll::parse_key_channel(channel)
            && let Some(node) = self.node.upgrade()
            && node.resolve(poll_channel).is_ok_and(|resolved| resolved.options.is_shared_poll())
        {
            // A shared_poll_publish on the key's own channel.
            node.apply_shared_poll_publication(poll_channel, publication);
            return;
        }
        self.metrics.message_received(MessageType::Publication);
        if crate::metrics::COUNTING && publication.time > 0 {
            let lag_ms = (crate::common::unix_millis() - publication.time).unsigned_abs();
            self.metrics.pub_sub_lag.observe(lag_ms as f64 / 1000.0);
        }
        let prepared =
            Prepared::publication_checked(channel, publication, &position.epoch, self.max_time_lag_ms)
                .with_delta_base(delta_base);
        let started = crate::metrics::COUNTING.then(Instant::now);
        if self.hub.broadcast(channel, prepared)
            && let Some(started) = started
        {
            self.metrics.broadcast_duration.observe(started.elapsed().as_secs_f64());
        }
    }
    fn handle_join(&self, channel: &str, info: ClientInfo) {
        self.metrics.message_received(MessageType::Join);
        self.hub.broadcast(channel, Prepared::join(channel, info));
    }
    fn handle_leave(&self, channel: &str, info: ClientInfo) {
        self.metrics.message_received(MessageType::Leave);
        self.hub.broadcast(channel, Prepared::leave(channel, info));
    }
    fn handle_control(&self, payload: &[u8]) {
        self.metrics.message_received(MessageType::Control);
        if let Some(node) = self.node.upgrade() {
            cluster::handle(&node, payload);
        }
    }
}

/// Why a node could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Verifier(#[from] VerifierConfigError),
    #[error("{0}")]
    Engine(String),
    #[error("{0:#}")]
    Proxy(anyhow::Error),
    #[error("error setting up opentelemetry tracing: {0:#}")]
    Telemetry(anyhow::Error),
}

/// Metric name of the tasks alive on this node's runtime (in `info`): connections, their
/// writers, subscribe streams and the node's own loops, so a leak shows as growth.
pub const ALIVE_TASKS_METRIC: &str = "spinwire_runtime_alive_tasks";
/// Sessions closed because handling one of their commands panicked.
pub const SESSION_PANICS_METRIC: &str = "spinwire_session_panics";

/// The node's figures in `info`, sampled at most every `node.info_metrics_aggregate_interval`
/// (counters report their change over it, as Centrifugo's do).
#[derive(Debug, Default)]
struct MetricsSample {
    taken: Option<Instant>,
    aggregator: InfoAggregator,
    metrics: InfoMetrics,
}

/// The node's name when `node.name` is not set: the kernel's hostname and the port, as
/// Centrifugo names its nodes.
fn default_node_name(port: u16) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "?".into());
    format!("{host}_{port}")
}

/// The JWKS clients of `client.token` and of the subscription token (its own section when
/// enabled, else `client.token`'s).
fn jwks_sources(client: &crate::config::Client) -> anyhow::Result<(Option<Jwks>, Option<Jwks>)> {
    let source = |key: &str, endpoint: &str| -> anyhow::Result<Option<Jwks>> {
        if endpoint.is_empty() { Ok(None) } else { Jwks::new(key, endpoint).map(Some) }
    };
    let connect = source("client.token.jwks_public_endpoint", &client.token.jwks_public_endpoint)?;
    let subscribe = if client.subscription_token.enabled {
        let endpoint = &client.subscription_token.token.jwks_public_endpoint;
        source("client.subscription_token.jwks_public_endpoint", endpoint)?
    } else {
        source("client.token.jwks_public_endpoint", &client.token.jwks_public_endpoint)?
    };
    Ok((connect, subscribe))
}

/// `opentelemetry.enabled`: the tracer, exporting where the `OTEL_*` variables say.
fn start_tracer(config: &Config, uid: &str) -> Result<Option<Arc<Tracer>>, NodeError> {
    if !config.opentelemetry.enabled {
        return Ok(None);
    }
    let settings = Settings::from_env(|name| std::env::var(name).ok()).map_err(NodeError::Telemetry)?;
    Tracer::start(settings, uid).map(Some).map_err(NodeError::Telemetry)
}

/// The lifecycle events' queue and its backend (the named proxy), when enabled.
fn lifecycle_events(
    config: &Config,
    uid: &str,
    metrics: &Arc<Metrics>,
    tracer: Option<&Arc<Tracer>>,
) -> Result<Option<Arc<lifecycle::Lifecycle>>, NodeError> {
    let events = &config.lifecycle_events;
    if !events.enabled {
        return Ok(None);
    }
    let Some(named) = config.proxies.iter().find(|p| p.name == events.proxy_name) else {
        return Err(NodeError::Proxy(anyhow::anyhow!("lifecycle_events.proxy_name: no such proxy")));
    };
    let backend = crate::proxy::Backend::new(
        "lifecycle_events",
        &named.name,
        &named.proxy,
        metrics.clone(),
        tracer.cloned(),
    )
    .map_err(NodeError::Proxy)?;
    Ok(Some(Arc::new(lifecycle::Lifecycle::new(events, uid, Arc::new(backend)))))
}

impl Node {
    /// Builds a node on the engines `config` names. Networked engines connect in the
    /// background, so this needs a tokio runtime but never waits for Redis or NATS.
    pub fn new(config: Config) -> Result<Arc<Self>, NodeError> {
        let skip = config.client.insecure_skip_token_signature_verify;
        let connect_tokens = TokenVerifier::new(&config.client.token, "client.token", skip)?;
        let subscribe_tokens = if config.client.subscription_token.enabled {
            TokenVerifier::new(&config.client.subscription_token.token, "client.subscription_token", skip)?
        } else {
            TokenVerifier::new(&config.client.token, "client.token", skip)?
        };
        let metrics = Arc::new(Metrics::new(crate::product_version()));
        let uid = uuid::Uuid::new_v4().to_string();
        let tracer = start_tracer(&config, &uid)?;
        let proxies = Proxies::from_config(&config, &metrics, tracer.as_ref()).map_err(NodeError::Proxy)?;
        let (connect_jwks, subscribe_jwks) = jwks_sources(&config.client).map_err(NodeError::Proxy)?;
        let (broker, presence) = engines::build(&config, &uid).map_err(NodeError::Engine)?;
        let map_broker = engines::build_map_broker(&config).map_err(NodeError::Engine)?;
        let hub = Arc::new(Hub::new());
        let config_concurrency = config.shared_poll.effective_concurrency();
        let connection_rate_limit = config.client.connection_rate_limit;
        let max_time_lag_ms = config.client.channel_position_max_time_lag.0.as_millis() as i64;
        let name = if config.node.name.is_empty() {
            default_node_name(config.http_server.port)
        } else {
            config.node.name.clone()
        };
        let canary = canary::Canary::configured(&config.health.canary, &uid);
        let lifecycle = lifecycle_events(&config, &uid, &metrics, tracer.as_ref())?;
        let node = Arc::new_cyclic(|weak: &Weak<Node>| {
            let events = Arc::new(NodeEvents {
                hub: hub.clone(),
                node: weak.clone(),
                metrics: metrics.clone(),
                max_time_lag_ms,
                canary: canary.clone(),
            });
            broker.set_event_handler(events.clone());
            map_broker.set_event_handler(events);
            Self {
                rules: ChannelRules::new(&config.channel),
                config: Arc::new(config),
                hub,
                connect_tokens,
                subscribe_tokens,
                connect_jwks,
                subscribe_jwks,
                broker,
                presence,
                map_broker,
                uid,
                name,
                started: Instant::now(),
                tasks: TaskTracker::new(),
                shutdown: CancellationToken::new(),
                emulation: Default::default(),
                cluster: Default::default(),
                shared_poll: shared_poll::SharedPoll::new(config_concurrency),
                admission: admission::Admission::new(connection_rate_limit),
                metrics,
                info_sample: Default::default(),
                proxies,
                canary,
                tracer,
                lifecycle,
            }
        });
        if let Some(lifecycle) = &node.lifecycle {
            lifecycle.start(node.shutdown.clone());
        }
        if node.canary.is_some() {
            tokio::spawn(canary::run(Arc::downgrade(&node)));
        }
        if node.broker.is_networked() {
            tokio::spawn(cluster::announce_loop(Arc::downgrade(&node)));
            if !node.config.client.channel_position_check_delay.0.is_zero() {
                tokio::spawn(position_check::run(Arc::downgrade(&node)));
            }
        }
        Ok(node)
    }

    /// This node's entry for the `info` API.
    pub fn local_info(&self) -> NodeResult {
        let (num_clients, num_users, num_channels, num_subs) = self.hub.stats();
        NodeResult {
            uid: self.uid.clone(),
            name: self.name.clone(),
            version: crate::product_version(),
            num_clients,
            num_users,
            num_channels,
            uptime: self.uptime().as_secs() as u32,
            metrics: Some(self.sampled_metrics()),
            process: None,
            num_subs,
        }
    }

    /// The latest sample of the node's metrics, taken anew once the interval passed.
    fn sampled_metrics(&self) -> InfoMetrics {
        let interval = match self.config.node.info_metrics_aggregate_interval.0 {
            zero if zero.is_zero() => Duration::from_secs(60),
            interval => interval,
        };
        let mut sample = self.info_sample.locked();
        if sample.taken.is_none_or(|taken| taken.elapsed() >= interval) {
            let figures = self.figures();
            let mut items = sample.aggregator.items(&self.metrics.families(&figures));
            items.insert(ALIVE_TASKS_METRIC.to_owned(), figures.alive_tasks as f64);
            items.insert(SESSION_PANICS_METRIC.to_owned(), self.session_panics() as f64);
            sample.metrics =
                InfoMetrics { interval: interval.as_secs_f64(), items: items.into_iter().collect() };
            sample.taken = Some(Instant::now());
        }
        sample.metrics.clone()
    }

    /// A session's command handling panicked (it was closed with 3004).
    pub fn count_session_panic(&self) {
        self.metrics.session_panics.inc();
    }

    pub fn session_panics(&self) -> u64 {
        self.metrics.session_panics.get()
    }

    /// The node's state as the metrics report it.
    pub fn figures(&self) -> NodeFigures {
        let (clients, users, channels, subscriptions) = self.hub.stats();
        let alive_tasks = tokio::runtime::Handle::try_current()
            .map(|handle| handle.metrics().num_alive_tasks() as u64)
            .unwrap_or(0);
        NodeFigures {
            clients,
            users,
            channels,
            subscriptions,
            nodes: self.cluster.other_nodes().len() as u32 + 1,
            outbound_bytes: self.hub.outbound_bytes(),
            alive_tasks,
            canary: self.canary.as_ref().map(|canary| {
                let status = canary.status();
                (status.healthy, status.since_last_round_trip.as_secs_f64())
            }),
            spans_dropped: self.tracer.as_ref().map(|tracer| tracer.dropped()),
            lifecycle: self.lifecycle.as_ref().map(|lifecycle| lifecycle.figures()),
        }
    }

    /// The `/metrics` exposition.
    pub fn metrics_exposition(&self) -> String {
        self.metrics.exposition(&self.figures())
    }

    /// What keeps this node from serving fully (empty when healthy), for `/health`.
    pub fn health_problems(&self) -> Vec<&'static str> {
        let mut problems = Vec::new();
        if !self.broker.is_healthy() {
            problems.push("broker unavailable");
        }
        if !self.presence.is_healthy() {
            problems.push("presence manager unavailable");
        }
        if !self.map_broker_healthy() {
            problems.push("map broker unavailable");
        }
        if self.canary.as_ref().is_some_and(|canary| !canary.status().healthy) {
            problems.push("delivery canary: no round trip through the broker within health.canary.timeout");
        }
        problems
    }

    /// Sends a node control message through the broker (see [`cluster`]).
    pub async fn publish_control(&self, payload: Bytes, target: Option<&str>) -> Result<(), ClientError> {
        self.metrics.message_sent(MessageType::Control);
        self.broker.publish_control(payload, target).await.map_err(engine_error)
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn resolve(&self, channel: &str) -> Result<ResolvedChannel, ClientError> {
        self.rules.resolve(channel)
    }

    /// The broker itself, for tests that need what `publish` would not send.
    #[cfg(test)]
    pub(crate) fn broker_for_tests(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    fn publish_options(&self, resolved: &ResolvedChannel, spec: PublishSpec) -> PublishOptions {
        let options = &resolved.options;
        let history = options.history_enabled() && !spec.skip_history;
        PublishOptions {
            history_size: if history { options.history_size as usize } else { 0 },
            history_ttl: if history { options.history_ttl.0 } else { Duration::ZERO },
            history_meta_ttl: self.rules.history_meta_ttl(options),
            idempotency_key: spec.idempotency_key.filter(|k| !k.is_empty()),
            idempotent_result_ttl: IDEMPOTENT_RESULT_TTL,
            use_delta: spec.delta,
            version: spec.version,
            version_epoch: spec.version_epoch,
        }
    }

    /// Publishes into a channel (already resolved and permission-checked by the caller).
    pub async fn publish(
        &self,
        channel: &str,
        resolved: &ResolvedChannel,
        mut publication: Publication,
        spec: PublishSpec,
    ) -> Result<PublishOutcome, ClientError> {
        check_publication_size(&resolved.options, &publication)?;
        publication.version = spec.version;
        // For `client.channel_position_max_time_lag` on the receiving nodes.
        publication.time = crate::common::unix_millis();
        let options = self.publish_options(resolved, spec);
        self.metrics.message_sent(MessageType::Publication);
        self.broker.publish(channel, publication, &options).await.map_err(engine_error)
    }

    pub async fn history(
        &self,
        channel: &str,
        resolved: &ResolvedChannel,
        mut filter: HistoryFilter,
    ) -> Result<HistoryResult, ClientError> {
        let top_only = filter.limit == 0 && filter.since.is_none();
        self.metrics.action(if top_only { NodeAction::HistoryStreamTop } else { NodeAction::History });
        filter.meta_ttl = self.rules.history_meta_ttl(&resolved.options);
        let mut result = self.broker.history(channel, &filter).await.map_err(engine_error)?;
        // Publish times are kept for the lag check only.
        result.publications.iter_mut().for_each(|publication| publication.time = 0);
        Ok(result)
    }

    pub async fn remove_history(&self, channel: &str) -> Result<(), ClientError> {
        self.metrics.action(NodeAction::HistoryRemove);
        self.broker.remove_history(channel).await.map_err(engine_error)
    }

    pub async fn presence(&self, channel: &str) -> Result<BTreeMap<String, ClientInfo>, ClientError> {
        self.metrics.action(NodeAction::Presence);
        self.presence.presence(channel).await.map_err(engine_error)
    }

    pub async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, ClientError> {
        self.metrics.action(NodeAction::PresenceStats);
        self.presence.presence_stats(channel).await.map_err(engine_error)
    }

    pub async fn add_presence(&self, channel: &str, info: &ClientInfo) -> Result<(), ClientError> {
        self.metrics.action(NodeAction::AddPresence);
        self.presence
            .add_presence(channel, &info.client, info.clone(), PRESENCE_TTL)
            .await
            .map_err(engine_error)
    }

    pub async fn remove_presence(&self, channel: &str, client: &str, user: &str) -> Result<(), ClientError> {
        self.metrics.action(NodeAction::RemovePresence);
        self.presence.remove_presence(channel, client, user).await.map_err(engine_error)
    }

    pub async fn publish_join(&self, channel: &str, info: ClientInfo) -> Result<(), ClientError> {
        self.metrics.message_sent(MessageType::Join);
        self.broker.publish_join(channel, info).await.map_err(engine_error)
    }

    pub async fn publish_leave(&self, channel: &str, info: ClientInfo) -> Result<(), ClientError> {
        self.metrics.message_sent(MessageType::Leave);
        self.broker.publish_leave(channel, info).await.map_err(engine_error)
    }

    /// Adds a local subscriber and makes sure the broker delivers the channel to this node.
    /// Returns once the broker confirmed, so a position read afterwards cannot miss a
    /// publication.
    pub async fn add_subscriber(
        &self,
        channel: &str,
        handle: &Arc<SessionHandle>,
    ) -> Result<(), ClientError> {
        let subscribe = || self.broker.subscribe(channel);
        self.add_local_subscriber(channel, handle, NodeAction::BrokerSubscribe, subscribe).await
    }

    pub async fn remove_subscriber(&self, channel: &str, handle: &SessionHandle) {
        if self.canary.as_ref().is_some_and(|canary| canary.channel == channel) {
            // The canary's own subscription outlives any client's.
            self.hub.remove_subscriber(channel, handle);
            return;
        }
        let unsubscribe = || self.broker.unsubscribe(channel);
        self.remove_local_subscriber(channel, handle, NodeAction::BrokerUnsubscribe, unsubscribe).await;
    }

    /// Adds a local subscriber, then takes one more broker reference to the channel with
    /// `subscribe` (the broker counts each subscriber; `centrifugo_node_action_count` counts
    /// `first` for the first one only, as Centrifugo does).
    async fn add_local_subscriber<F: Future<Output = Result<(), crate::engine::EngineError>>>(
        &self,
        channel: &str,
        handle: &Arc<SessionHandle>,
        first: NodeAction,
        subscribe: impl FnOnce() -> F,
    ) -> Result<(), ClientError> {
        self.metrics.action(NodeAction::AddSubscription);
        let membership = self.hub.add_subscriber(channel, handle);
        if membership == Membership::ChannelEdge {
            self.metrics.action(first);
        }
        if membership.changed()
            && let Err(error) = subscribe().await
        {
            self.hub.remove_subscriber(channel, handle);
            return Err(engine_error(error));
        }
        Ok(())
    }

    /// Removes a local subscriber and drops its broker reference with `unsubscribe`.
    async fn remove_local_subscriber<F: Future<Output = Result<(), crate::engine::EngineError>>>(
        &self,
        channel: &str,
        handle: &SessionHandle,
        last: NodeAction,
        unsubscribe: impl FnOnce() -> F,
    ) {
        self.metrics.action(NodeAction::RemoveSubscription);
        let membership = self.hub.remove_subscriber(channel, handle);
        if membership == Membership::ChannelEdge {
            self.metrics.action(last);
        }
        if membership.changed()
            && let Err(error) = unsubscribe().await
        {
            tracing::warn!(%channel, %error, "broker unsubscribe failed");
        }
    }

    /// Starts shutting down: every session (connected or not) closes with 3001 so clients
    /// reconnect elsewhere or later, and new connects are refused the same way.
    pub fn disconnect_all(&self) {
        self.shutdown.cancel();
        for handle in self.hub.all_connections() {
            handle.disconnect(Disconnect::shutdown());
        }
    }
}
