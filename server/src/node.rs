//! The composition root: owns the config, channel rules, token verifiers, the [`Hub`] and the
//! engines, and offers the operations that sessions and the server API share (publish, history,
//! presence, subscriber bookkeeping).
//!
//! **Invariant:** the node is the only module that talks to the engines. Broker deliveries
//! arrive through [`BrokerEventHandler`] and go straight to the hub without awaiting.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{SubscribeOverride, TokenVerifier, VerifierConfigError};
use crate::channel::{ChannelRules, ResolvedChannel};
use crate::config::Config;
use crate::engine::memory::MemoryEngine;
use crate::engine::{
    Broker, BrokerEventHandler, EngineError, HistoryFilter, HistoryResult, PresenceManager, PresenceStats,
    PublishOptions, PublishOutcome, StreamPosition,
};
use crate::errors::{ClientError, Disconnect};
use crate::hub::{Hub, Prepared};
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
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("uid", &self.uid).field("name", &self.name).finish_non_exhaustive()
    }
}

struct HubEvents(Arc<Hub>);

impl BrokerEventHandler for HubEvents {
    fn handle_publication(&self, channel: &str, publication: Publication, position: StreamPosition) {
        self.0.broadcast(channel, Prepared::publication(channel, publication, &position.epoch));
    }
    fn handle_join(&self, channel: &str, info: ClientInfo) {
        self.0.broadcast(channel, Prepared::join(channel, info));
    }
    fn handle_leave(&self, channel: &str, info: ClientInfo) {
        self.0.broadcast(channel, Prepared::leave(channel, info));
    }
}

fn engine_error(error: EngineError) -> ClientError {
    match error {
        EngineError::UnrecoverablePosition => ClientError::UNRECOVERABLE_POSITION,
        EngineError::NotAvailable => ClientError::NOT_AVAILABLE,
        EngineError::Internal(message) => {
            tracing::error!(%message, "engine failure");
            ClientError::INTERNAL
        }
    }
}

impl Node {
    /// Builds a node on the memory engine (the only engine of this version).
    pub fn new(config: Config) -> Result<Arc<Self>, VerifierConfigError> {
        let skip = config.client.insecure_skip_token_signature_verify;
        let connect_tokens = TokenVerifier::new(&config.client.token, "client.token", skip)?;
        let subscribe_tokens = if config.client.subscription_token.enabled {
            TokenVerifier::new(&config.client.subscription_token.token, "client.subscription_token", skip)?
        } else {
            TokenVerifier::new(&config.client.token, "client.token", skip)?
        };
        let engine = MemoryEngine::new();
        let hub = Arc::new(Hub::new());
        engine.set_event_handler(Arc::new(HubEvents(hub.clone())));
        let uid = uuid::Uuid::new_v4().to_string();
        let name = if config.node.name.is_empty() {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "spinwire".into());
            format!("{host}_{}", config.http_server.port)
        } else {
            config.node.name.clone()
        };
        Ok(Arc::new(Self {
            rules: ChannelRules::new(&config.channel),
            config: Arc::new(config),
            hub,
            connect_tokens,
            subscribe_tokens,
            broker: engine.clone(),
            presence: engine,
            uid,
            name,
            started: Instant::now(),
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            emulation: Default::default(),
        }))
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
