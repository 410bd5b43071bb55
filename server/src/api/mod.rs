//! The server API: one [`Executor`] maps API requests to node operations; `http` and `grpc`
//! are its two front ends and add only transport concerns (auth, envelopes, error modes).

pub mod grpc;
pub mod http;
mod map;

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::join_all;

use crate::common::{HistoryFilter, StreamPosition, b64_or_raw};
use crate::errors::ClientError;
use crate::node::{Node, PublishSpec, cluster};
use crate::proto::api::{
    self, BatchRequest, BatchResponse, BroadcastRequest, BroadcastResult, ChannelInfo, ChannelsRequest,
    ChannelsResult, DisconnectRequest, DisconnectResult, HistoryRemoveRequest, HistoryRemoveResult,
    HistoryRequest, HistoryResult, InfoResult, PresenceRequest, PresenceResult, PresenceStatsRequest,
    PresenceStatsResult, PublishRequest, PublishResponse, PublishResult, RefreshRequest, RefreshResult,
    RpcRequest, RpcResult, SubscribeRequest, SubscribeResult, UnsubscribeRequest, UnsubscribeResult,
};
use crate::proto::client;

/// A server API error (`{"code":N,"message":"…"}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: u32,
    pub message: &'static str,
}

impl ApiError {
    pub const INTERNAL: Self = Self { code: 100, message: "internal server error" };
    pub const UNKNOWN_CHANNEL: Self = Self { code: 102, message: "unknown channel" };
    pub const NOT_FOUND: Self = Self { code: 104, message: "not found" };
    pub const BAD_REQUEST: Self = Self { code: 107, message: "bad request" };
    pub const NOT_AVAILABLE: Self = Self { code: 108, message: "not available" };
    pub const UNRECOVERABLE_POSITION: Self = Self { code: 112, message: "unrecoverable position" };

    pub fn to_proto(&self) -> api::Error {
        api::Error { code: self.code, message: self.message.to_owned() }
    }
}

impl From<ClientError> for ApiError {
    fn from(error: ClientError) -> Self {
        match error.code {
            102 => Self::UNKNOWN_CHANNEL,
            104 => Self::NOT_FOUND,
            107 => Self::BAD_REQUEST,
            108 => Self::NOT_AVAILABLE,
            112 => Self::UNRECOVERABLE_POSITION,
            _ => Self::INTERNAL,
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Executes server API methods against the node.
#[derive(Debug, Clone)]
pub struct Executor {
    node: Arc<Node>,
    /// The `protocol` label of this front end's metrics (`http`, `grpc`).
    protocol: &'static str,
}

fn payload(b64: &str, raw: Bytes) -> ApiResult<Bytes> {
    b64_or_raw(b64, raw).ok_or(ApiError::BAD_REQUEST)
}

fn to_api_info(info: client::ClientInfo) -> api::ClientInfo {
    api::ClientInfo {
        user: info.user,
        client: info.client,
        conn_info: info.conn_info,
        chan_info: info.chan_info,
    }
}

impl Executor {
    /// The executor of the HTTP API.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node, protocol: "http" }
    }

    /// The same executor, counted in the metrics as the front end `protocol`.
    pub fn with_protocol(self, protocol: &'static str) -> Self {
        Self { protocol, ..self }
    }

    /// Records one API command in the metrics (duration, and its error code if it failed).
    pub fn observe<T>(&self, method: &str, started: std::time::Instant, outcome: &ApiResult<T>) {
        let error = outcome.as_ref().err();
        if let Some(error) = error {
            // The request's span (when traced) says why, as Centrifugo's: "107: bad request".
            crate::telemetry::fail(format!("{}: {}", error.code, error.message));
        }
        self.node.metrics.api_command(self.protocol, method, started, error.map(|error| error.code));
    }

    /// Records an API request that failed before any command ran (`unmarshal`, …).
    pub fn observe_failure(&self, method: &str, stage: &str) {
        self.node.metrics.api_error(self.protocol, method, stage);
    }

    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    pub async fn publish(&self, request: PublishRequest) -> ApiResult<PublishResult> {
        crate::telemetry::annotate("centrifugo.channel", request.channel.as_str());
        if request.channel.is_empty() {
            return Err(ApiError::BAD_REQUEST);
        }
        let data = payload(&request.b64data, request.data)?;
        let spec = PublishSpec {
            skip_history: request.skip_history,
            idempotency_key: Some(request.idempotency_key),
            delta: request.delta,
            version: request.version,
            version_epoch: request.version_epoch,
        };
        self.publish_one(&request.channel, data, request.tags, spec).await
    }

    /// One publication through the node; the namespace's `delta_publish` turns delta on.
    async fn publish_one(
        &self,
        channel: &str,
        data: Bytes,
        tags: std::collections::BTreeMap<String, String>,
        mut spec: PublishSpec,
    ) -> ApiResult<PublishResult> {
        let resolved = self.node.resolve(channel)?;
        if resolved.options.is_map() || resolved.options.is_shared_poll() {
            // Their publications are keyed: map_publish and shared_poll_publish.
            return Err(ApiError::BAD_REQUEST);
        }
        crate::channel::validate_data(self.node.rules.data_format(&resolved.options), &data)?;
        spec.delta |= resolved.options.delta_publish;
        let publication = client::Publication { data, tags, ..Default::default() };
        let outcome = self.node.publish(channel, &resolved, publication, spec).await?;
        Ok(PublishResult { offset: outcome.position.offset, epoch: outcome.position.epoch })
    }

    pub async fn broadcast(&self, request: BroadcastRequest) -> ApiResult<BroadcastResult> {
        crate::telemetry::annotate("centrifugo.num_channels", request.channels.len() as i64);
        if request.channels.is_empty() {
            return Err(ApiError::BAD_REQUEST);
        }
        let data = payload(&request.b64data, request.data)?;
        let publishes = request.channels.iter().map(|channel| {
            let data = data.clone();
            let tags = request.tags.clone();
            let spec = PublishSpec {
                skip_history: request.skip_history,
                idempotency_key: Some(request.idempotency_key.clone()),
                delta: request.delta,
                version: request.version,
                version_epoch: request.version_epoch.clone(),
            };
            async move {
                if channel.is_empty() {
                    return Err(ApiError::BAD_REQUEST);
                }
                self.publish_one(channel, data, tags, spec).await
            }
        });
        let responses = join_all(publishes)
            .await
            .into_iter()
            .map(|outcome| match outcome {
                Ok(result) => PublishResponse { error: None, result: Some(result) },
                Err(error) => PublishResponse { error: Some(error.to_proto()), result: None },
            })
            .collect();
        Ok(BroadcastResult { responses })
    }

    pub async fn subscribe(&self, request: SubscribeRequest) -> ApiResult<SubscribeResult> {
        if request.channel.is_empty() {
            return Err(ApiError::BAD_REQUEST);
        }
        self.node.subscribe_connections(request).await?;
        Ok(SubscribeResult {})
    }

    pub async fn unsubscribe(&self, request: UnsubscribeRequest) -> ApiResult<UnsubscribeResult> {
        if request.channel.is_empty() {
            return Ok(UnsubscribeResult {});
        }
        self.node.unsubscribe_connections(request).await?;
        Ok(UnsubscribeResult {})
    }

    pub async fn disconnect(&self, request: DisconnectRequest) -> ApiResult<DisconnectResult> {
        self.node.disconnect_connections(request).await?;
        Ok(DisconnectResult {})
    }

    pub async fn refresh(&self, request: RefreshRequest) -> ApiResult<RefreshResult> {
        self.node.refresh_connections(request).await?;
        Ok(RefreshResult {})
    }

    fn presence_channel(&self, channel: &str) -> ApiResult<()> {
        if channel.is_empty() {
            return Err(ApiError::BAD_REQUEST);
        }
        let resolved = self.node.resolve(channel)?;
        if !resolved.options.presence {
            return Err(ApiError::NOT_AVAILABLE);
        }
        Ok(())
    }

    pub async fn presence(&self, request: PresenceRequest) -> ApiResult<PresenceResult> {
        self.presence_channel(&request.channel)?;
        let presence = self.node.presence(&request.channel).await?;
        Ok(PresenceResult { presence: presence.into_iter().map(|(k, v)| (k, to_api_info(v))).collect() })
    }

    pub async fn presence_stats(&self, request: PresenceStatsRequest) -> ApiResult<PresenceStatsResult> {
        self.presence_channel(&request.channel)?;
        let stats = self.node.presence_stats(&request.channel).await?;
        Ok(PresenceStatsResult { num_clients: stats.num_clients, num_users: stats.num_users })
    }

    fn history_channel(&self, channel: &str) -> ApiResult<crate::channel::ResolvedChannel> {
        if channel.is_empty() {
            return Err(ApiError::BAD_REQUEST);
        }
        let resolved = self.node.resolve(channel)?;
        if !resolved.options.history_enabled() {
            return Err(ApiError::NOT_AVAILABLE);
        }
        Ok(resolved)
    }

    pub async fn history(&self, request: HistoryRequest) -> ApiResult<HistoryResult> {
        let resolved = self.history_channel(&request.channel)?;
        if request.reverse && request.since.as_ref().is_some_and(|s| s.offset == 0) {
            return Err(ApiError::BAD_REQUEST);
        }
        let filter = HistoryFilter {
            since: request.since.map(|s| StreamPosition { offset: s.offset, epoch: s.epoch }),
            limit: request.limit,
            reverse: request.reverse,
            ..Default::default()
        };
        let history = self.node.history(&request.channel, &resolved, filter).await?;
        Ok(HistoryResult {
            publications: history
                .publications
                .into_iter()
                .map(|p| api::Publication {
                    data: p.data,
                    info: p.info.map(to_api_info),
                    offset: p.offset,
                    tags: p.tags,
                })
                .collect(),
            epoch: history.position.epoch,
            offset: history.position.offset,
        })
    }

    pub async fn history_remove(&self, request: HistoryRemoveRequest) -> ApiResult<HistoryRemoveResult> {
        self.history_channel(&request.channel)?;
        self.node.remove_history(&request.channel).await?;
        Ok(HistoryRemoveResult {})
    }

    pub async fn channels(&self, request: ChannelsRequest) -> ApiResult<ChannelsResult> {
        let channels = cluster::channels(&self.node, &request.pattern)
            .await?
            .into_iter()
            .map(|(channel, num_clients)| (channel, ChannelInfo { num_clients }))
            .collect();
        Ok(ChannelsResult { channels })
    }

    /// This node first, then every other live node as last announced.
    pub async fn info(&self) -> ApiResult<InfoResult> {
        let mut nodes = vec![self.node.local_info()];
        let mut others = self.node.cluster.other_nodes();
        others.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.uid.cmp(&b.uid)));
        nodes.extend(others);
        Ok(InfoResult { nodes })
    }

    pub async fn rpc(&self, request: RpcRequest) -> ApiResult<RpcResult> {
        if request.method.is_empty() {
            return Err(ApiError::BAD_REQUEST);
        }
        // No server-side RPC extensions exist, as in Centrifugo OSS.
        Err(ApiError::NOT_FOUND)
    }

    /// Runs one batch command; a command with no known method gets 104.
    pub async fn command(&self, command: api::Command) -> api::Reply {
        macro_rules! run {
            ($field:ident, $method:ident, $request:expr) => {
                match {
                    let started = std::time::Instant::now();
                    let outcome = self.$method($request).await;
                    self.observe(stringify!($method), started, &outcome);
                    outcome
                } {
                    Ok(result) => api::Reply { $field: Some(result), ..Default::default() },
                    Err(error) => api::Reply { error: Some(error.to_proto()), ..Default::default() },
                }
            };
        }
        if let Some(r) = command.publish {
            run!(publish, publish, r)
        } else if let Some(r) = command.broadcast {
            run!(broadcast, broadcast, r)
        } else if let Some(r) = command.subscribe {
            run!(subscribe, subscribe, r)
        } else if let Some(r) = command.unsubscribe {
            run!(unsubscribe, unsubscribe, r)
        } else if let Some(r) = command.disconnect {
            run!(disconnect, disconnect, r)
        } else if let Some(r) = command.presence {
            run!(presence, presence, r)
        } else if let Some(r) = command.presence_stats {
            run!(presence_stats, presence_stats, r)
        } else if let Some(r) = command.history {
            run!(history, history, r)
        } else if let Some(r) = command.history_remove {
            run!(history_remove, history_remove, r)
        } else if command.info.is_some() {
            let started = std::time::Instant::now();
            let outcome = self.info().await;
            self.observe("info", started, &outcome);
            match outcome {
                Ok(result) => api::Reply { info: Some(result), ..Default::default() },
                Err(error) => api::Reply { error: Some(error.to_proto()), ..Default::default() },
            }
        } else if let Some(r) = command.rpc {
            run!(rpc, rpc, r)
        } else if let Some(r) = command.refresh {
            run!(refresh, refresh, r)
        } else if let Some(r) = command.channels {
            run!(channels, channels, r)
        } else if let Some(r) = command.map_publish {
            run!(map_publish, map_publish, r)
        } else if let Some(r) = command.map_remove {
            run!(map_remove, map_remove, r)
        } else if let Some(r) = command.map_read_state {
            run!(map_read_state, map_read_state, r)
        } else if let Some(r) = command.map_read_stream {
            run!(map_read_stream, map_read_stream, r)
        } else if let Some(r) = command.map_stats {
            run!(map_stats, map_stats, r)
        } else if let Some(r) = command.map_clear {
            run!(map_clear, map_clear, r)
        } else if let Some(r) = command.shared_poll_publish {
            run!(shared_poll_publish, shared_poll_publish, r)
        } else {
            api::Reply { error: Some(ApiError::NOT_FOUND.to_proto()), ..Default::default() }
        }
    }

    pub async fn batch(&self, request: BatchRequest) -> BatchResponse {
        self.batch_commands(request.commands.into_iter().map(Some).collect(), request.parallel).await
    }

    /// Runs batch commands in order (or concurrently with `parallel`, replies still in order);
    /// a `None` (a JSON `null` command) gets error 107.
    pub async fn batch_commands(&self, commands: Vec<Option<api::Command>>, parallel: bool) -> BatchResponse {
        let run = |command: Option<api::Command>| async move {
            match command {
                Some(command) => self.command(command).await,
                None => api::Reply { error: Some(ApiError::BAD_REQUEST.to_proto()), ..Default::default() },
            }
        };
        let replies = if parallel {
            join_all(commands.into_iter().map(run)).await
        } else {
            let mut replies = Vec::with_capacity(commands.len());
            for command in commands {
                replies.push(run(command).await);
            }
            replies
        };
        BatchResponse { replies }
    }
}
