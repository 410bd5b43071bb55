//! The composition root: owns the config, channel rules, token verifiers, the [`Hub`] and the
//! engines, and offers the operations that sessions and the server API share (publish, history,
//! presence, subscriber bookkeeping).
//!
//! **Invariant:** the node is the only module that talks to the engines. Broker deliveries
//! arrive through [`BrokerEventHandler`] and go straight to the hub without awaiting.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{SubscribeOverride, TokenVerifier, VerifierConfigError};
use crate::channel::{ChannelRules, ResolvedChannel};
use crate::cluster::Cluster;
use crate::config::Config;
use crate::engine::memory::MemoryEngine;
use crate::engine::redis::RedisEngine;
use crate::engine::{
    Broker, BrokerEventHandler, EngineError, HistoryFilter, HistoryResult, PresenceManager, PresenceStats,
    PublishOptions, PublishOutcome, StreamPosition,
};
use crate::errors::{ClientError, Disconnect};
use crate::hub::{Hub, Prepared};
use crate::proto::api::NodeResult;
use crate::proto::client::{ClientInfo, Publication};
use crate::session::SessionHandle;

/// How long a publish result is remembered for an idempotency key.
pub const IDEMPOTENT_RESULT_TTL: Duration = Duration::from_secs(300);
/// Presence entries expire this long after their last refresh.
pub const PRESENCE_TTL: Duration = Duration::from_secs(60);

/// A server-side subscription requested through the server API.
#[derive(Debug, Clone, Default)]
pub struct ServerSubscribe {
    pub channel: String,
    pub info: Bytes,
    pub data: Bytes,
    /// Unix seconds; 0 = no expiration.
    pub expire_at: i64,
    pub recover_since: Option<StreamPosition>,
    pub override_options: SubscribeOverride,
}

/// Current unix time in seconds.
pub fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// The server node.
pub struct Node {
    pub config: Arc<Config>,
    pub rules: ChannelRules,
    pub hub: Arc<Hub>,
    /// Emulation (HTTP-streaming, SSE) sessions on this node, for `/emulation` requests.
    pub emulation: crate::transport::http_stream::EmulationSessions,
    pub connect_tokens: TokenVerifier,
    pub subscribe_tokens: TokenVerifier,
    broker: Arc<dyn Broker>,
    presence: Arc<dyn PresenceManager>,
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
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("uid", &self.uid).field("name", &self.name).finish_non_exhaustive()
    }
}

/// What the broker delivers to this node: publications, joins and leaves go to the hub, control
/// messages to [`crate::cluster`].
struct NodeEvents {
    hub: Arc<Hub>,
    node: Weak<Node>,
}

impl BrokerEventHandler for NodeEvents {
    fn handle_publication(&self, channel: &str, publication: Publication, position: StreamPosition) {
        self.hub.broadcast(channel, Prepared::publication(channel, publication, &position.epoch));
    }
    fn handle_join(&self, channel: &str, info: ClientInfo) {
        self.hub.broadcast(channel, Prepared::join(channel, info));
    }
    fn handle_leave(&self, channel: &str, info: ClientInfo) {
        self.hub.broadcast(channel, Prepared::leave(channel, info));
    }
    fn handle_control(&self, payload: &[u8]) {
        if let Some(node) = self.node.upgrade() {
            crate::cluster::handle(&node, payload);
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
}

/// The broker and presence manager `config` asks for: `engine.type`, with `broker` and
/// `presence_manager` sections overriding one part each.
type Engines = (Arc<dyn Broker>, Arc<dyn PresenceManager>);

fn build_engines(config: &Config, uid: &str) -> Result<Engines, String> {
    let mut memory: Option<Arc<MemoryEngine>> = None;
    let mut memory = move || memory.get_or_insert_with(MemoryEngine::new).clone();
    let (engine_broker, engine_presence): Engines = match config.engine.kind.as_str() {
        "redis" => {
            let redis = RedisEngine::new(&config.engine.redis, "engine.redis", Some(uid))?;
            (redis.clone(), redis)
        }
        _ => {
            let memory = memory();
            (memory.clone(), memory)
        }
    };
    let broker: Arc<dyn Broker> = match (config.broker.enabled, config.broker.kind.as_str()) {
        (false, _) => engine_broker,
        (true, "redis") => RedisEngine::new(&config.broker.redis, "broker.redis", Some(uid))?,
        (true, "nats") => crate::engine::nats::NatsBroker::new(&config.broker.nats, uid)?,
        (true, _) => memory(),
    };
    let presence: Arc<dyn PresenceManager> =
        match (config.presence_manager.enabled, config.presence_manager.kind.as_str()) {
            (false, _) => engine_presence,
            (true, "redis") => {
                RedisEngine::new(&config.presence_manager.redis, "presence_manager.redis", None)?
            }
            (true, _) => memory(),
        };
    Ok((broker, presence))
}

fn engine_error(error: EngineError) -> ClientError {
    match error {
        EngineError::UnrecoverablePosition => ClientError::UNRECOVERABLE_POSITION,
        EngineError::NotAvailable => ClientError::NOT_AVAILABLE,
        EngineError::InvalidChannel => ClientError::BAD_REQUEST,
        EngineError::Internal(message) => {
            tracing::error!(%message, "engine failure");
            ClientError::INTERNAL
        }
    }
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
        let uid = uuid::Uuid::new_v4().to_string();
        let (broker, presence) = build_engines(&config, &uid).map_err(NodeError::Engine)?;
        let hub = Arc::new(Hub::new());
        let name = if config.node.name.is_empty() {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "spinwire".into());
            format!("{host}_{}", config.http_server.port)
        } else {
            config.node.name.clone()
        };
        let node = Arc::new_cyclic(|weak: &Weak<Node>| {
            broker.set_event_handler(Arc::new(NodeEvents { hub: hub.clone(), node: weak.clone() }));
            Self {
                rules: ChannelRules::new(&config.channel),
                config: Arc::new(config),
                hub,
                connect_tokens,
                subscribe_tokens,
                broker,
                presence,
                uid,
                name,
                started: Instant::now(),
                tasks: TaskTracker::new(),
                shutdown: CancellationToken::new(),
                emulation: Default::default(),
                cluster: Default::default(),
            }
        });
        if node.broker.is_networked() {
            tokio::spawn(crate::cluster::announce_loop(Arc::downgrade(&node)));
            if !node.config.client.channel_position_check_delay.0.is_zero() {
                tokio::spawn(position_check_loop(Arc::downgrade(&node)));
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
            version: crate::VERSION.to_owned(),
            num_clients,
            num_users,
            num_channels,
            uptime: self.uptime().as_secs() as u32,
            metrics: None,
            process: None,
            num_subs,
        }
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
        problems
    }

    /// Sends a node control message through the broker (see [`crate::cluster`]).
    pub async fn publish_control(&self, payload: Bytes, target: Option<&str>) -> Result<(), ClientError> {
        self.broker.publish_control(payload, target).await.map_err(engine_error)
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn resolve(&self, channel: &str) -> Result<ResolvedChannel, ClientError> {
        self.rules.resolve(channel)
    }

    fn publish_options(
        &self,
        resolved: &ResolvedChannel,
        skip_history: bool,
        idempotency_key: Option<String>,
    ) -> PublishOptions {
        let options = &resolved.options;
        let history = options.history_enabled() && !skip_history;
        PublishOptions {
            history_size: if history { options.history_size as usize } else { 0 },
            history_ttl: if history { options.history_ttl.0 } else { Duration::ZERO },
            history_meta_ttl: self.rules.history_meta_ttl(options),
            idempotency_key: idempotency_key.filter(|k| !k.is_empty()),
            idempotent_result_ttl: IDEMPOTENT_RESULT_TTL,
        }
    }

    /// Publishes into a channel (already resolved and permission-checked by the caller).
    pub async fn publish(
        &self,
        channel: &str,
        resolved: &ResolvedChannel,
        publication: Publication,
        skip_history: bool,
        idempotency_key: Option<String>,
    ) -> Result<PublishOutcome, ClientError> {
        let options = self.publish_options(resolved, skip_history, idempotency_key);
        self.broker.publish(channel, publication, &options).await.map_err(engine_error)
    }

    pub async fn history(
        &self,
        channel: &str,
        resolved: &ResolvedChannel,
        mut filter: HistoryFilter,
    ) -> Result<HistoryResult, ClientError> {
        filter.meta_ttl = self.rules.history_meta_ttl(&resolved.options);
        self.broker.history(channel, &filter).await.map_err(engine_error)
    }

    pub async fn remove_history(&self, channel: &str) -> Result<(), ClientError> {
        self.broker.remove_history(channel).await.map_err(engine_error)
    }

    pub async fn presence(&self, channel: &str) -> Result<BTreeMap<String, ClientInfo>, ClientError> {
        self.presence.presence(channel).await.map_err(engine_error)
    }

    pub async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, ClientError> {
        self.presence.presence_stats(channel).await.map_err(engine_error)
    }

    pub async fn add_presence(&self, channel: &str, info: &ClientInfo) -> Result<(), ClientError> {
        self.presence
            .add_presence(channel, &info.client, info.clone(), PRESENCE_TTL)
            .await
            .map_err(engine_error)
    }

    pub async fn remove_presence(&self, channel: &str, client: &str) -> Result<(), ClientError> {
        self.presence.remove_presence(channel, client).await.map_err(engine_error)
    }

    pub async fn publish_join(&self, channel: &str, info: ClientInfo) -> Result<(), ClientError> {
        self.broker.publish_join(channel, info).await.map_err(engine_error)
    }

    pub async fn publish_leave(&self, channel: &str, info: ClientInfo) -> Result<(), ClientError> {
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
        if self.hub.add_subscriber(channel, handle)
            && let Err(error) = self.broker.subscribe(channel).await
        {
            self.hub.remove_subscriber(channel, handle);
            return Err(engine_error(error));
        }
        Ok(())
    }

    pub async fn remove_subscriber(&self, channel: &str, handle: &SessionHandle) {
        if self.hub.remove_subscriber(channel, handle)
            && let Err(error) = self.broker.unsubscribe(channel).await
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

/// Stream tops read at once by the position check.
const POSITION_CHECK_CONCURRENCY: usize = 32;

/// With a networked broker, a publication can be lost on its way to this node (a PUB/SUB
/// reconnect, a frozen Redis). A gap is noticed by offsets at the next publication; this loop
/// covers channels that then go quiet. Every `client.channel_position_check_delay` it reads
/// the stream top of each local channel with history, and compares each positioned subscriber
/// with the top read one round *earlier*: a delivery still in flight after a whole round is
/// lost, while one merely slowed by load is not mistaken for a gap. Behind or on another
/// epoch means lost state, which the handle turns into unsubscribe 2500 (the SDK resubscribes
/// and recovers) or 3010.
async fn position_check_loop(node: Weak<Node>) {
    use futures_util::StreamExt;
    let mut previous: std::collections::HashMap<String, StreamPosition> = Default::default();
    loop {
        let (delay, shutdown) = match node.upgrade() {
            Some(node) => (node.config.client.channel_position_check_delay.0, node.shutdown.clone()),
            None => return,
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return,
        }
        let Some(node) = node.upgrade() else { return };
        let channels: Vec<(String, ResolvedChannel)> = node
            .hub
            .channels()
            .into_keys()
            .filter_map(|channel| {
                let resolved = node.resolve(&channel).ok()?;
                resolved.options.history_enabled().then_some((channel, resolved))
            })
            .collect();
        let tops: std::collections::HashMap<String, StreamPosition> = futures_util::stream::iter(channels)
            .map(|(channel, resolved)| {
                let node = &node;
                async move {
                    let filter = HistoryFilter { limit: 0, ..Default::default() };
                    let top = node.history(&channel, &resolved, filter).await.ok()?;
                    Some((channel, top.position))
                }
            })
            .buffer_unordered(POSITION_CHECK_CONCURRENCY)
            .filter_map(std::future::ready)
            .collect()
            .await;
        for (channel, top) in &previous {
            if tops.contains_key(channel) {
                node.hub.check_position(channel, top);
            }
        }
        previous = tops;
    }
}
