//! Command dispatch: one function per client command, each returning either a reply (queued
//! here) or a disconnect; `connect` and `subscribe` live in their own files. Semantics follow
//! Centrifugo's client protocol v2 exactly, including which violations are client errors (the
//! connection stays) and which are disconnects.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::{Phase, Session};
use crate::auth::{Expiry, TokenError};
use crate::channel::{ResolvedChannel, validate_data};
use crate::common::{HistoryFilter, StreamPosition, unix_now};
use crate::config::{ChannelOptions, ProxyKind, Rpc, RpcOptions};
use crate::errors::{ClientError, Disconnect};
use crate::node::{Node, PublishSpec};
use crate::proto::client::{
    Command, HistoryRequest, HistoryResult, PresenceResult, PresenceStatsResult, Publication, PublishRequest,
    PublishResult, RefreshRequest, RefreshResult, Reply, RpcRequest, RpcResult, SubRefreshRequest,
    SubRefreshResult, UnsubscribeRequest, UnsubscribeResult,
};

/// `SubRefreshRequest.type` values of shared-poll subscriptions.
const TRACK: i32 = 1;
const UNTRACK: i32 = 2;

/// A step that either closes the connection (`Err`) or answers the command: `Ok(Err(error))`
/// becomes an error reply and the connection stays.
pub(super) type Outcome<T> = Result<Result<T, ClientError>, Disconnect>;

/// Result of a command handler.
type CommandResult = Outcome<Reply>;

/// A command's remaining work once its checks passed: it needs no session state, so it may
/// run beside the session (see [`Session::run_step`]).
type Work = Pin<Box<dyn Future<Output = CommandResult> + Send>>;

/// Where a command stands after its checks.
enum Step {
    /// Boxed: a reply is large, and most steps are work.
    Answered(Box<CommandResult>),
    Work(Work),
}

impl Step {
    fn answered(outcome: CommandResult) -> Self {
        Self::Answered(Box::new(outcome))
    }
}

/// The error reply to command `id`.
pub(super) fn error_reply(id: u32, error: &ClientError) -> Reply {
    Reply {
        id,
        error: Some(crate::proto::client::Error {
            code: error.code,
            message: error.message.to_string(),
            temporary: error.temporary,
        }),
        ..Default::default()
    }
}

/// Which permission a request needs, for the shared client/subscriber/anonymous rule.
pub(super) struct Access {
    for_client: bool,
    for_subscriber: bool,
    for_anonymous: bool,
}

impl Access {
    pub(super) fn publish(options: &ChannelOptions) -> Self {
        Self {
            for_client: options.allow_publish_for_client,
            for_subscriber: options.allow_publish_for_subscriber,
            for_anonymous: options.allow_publish_for_anonymous,
        }
    }

    pub(super) fn presence(options: &ChannelOptions) -> Self {
        Self {
            for_client: options.allow_presence_for_client,
            for_subscriber: options.allow_presence_for_subscriber,
            for_anonymous: options.allow_presence_for_anonymous,
        }
    }

    pub(super) fn history(options: &ChannelOptions) -> Self {
        Self {
            for_client: options.allow_history_for_client,
            for_subscriber: options.allow_history_for_subscriber,
            for_anonymous: options.allow_history_for_anonymous,
        }
    }
}

/// Seconds from now until `expires_at` (unix seconds), 0 when past.
pub(super) fn ttl_of(expires_at: i64) -> u32 {
    expires_at.saturating_sub(unix_now()).clamp(0, u32::MAX as i64) as u32
}

impl Session {
    pub(super) async fn handle_command(&mut self, command: Command) -> Result<(), Disconnect> {
        // Any command with id 0 other than `send` is a pong.
        if command.id == 0 && command.send.is_none() {
            let Some(deadline) = self.timers.pong_deadline.take().filter(|_| self.phase == Phase::Connected)
            else {
                return Err(Disconnect::bad_request());
            };
            // The ping went out `pong_timeout` before the deadline.
            let pinged = deadline - self.node.config.client.pong_timeout.0;
            let label = [self.transport.name];
            self.node.metrics.ping_pong.get(&label).observe(pinged.elapsed().as_secs_f64());
            return Ok(());
        }
        if self.phase == Phase::Connecting && command.connect.is_none() {
            return Err(Disconnect::bad_request());
        }
        let id = command.id;
        let outcome = if let Some(request) = command.connect {
            self.connect(id, request).await?;
            return Ok(());
        } else if let Some(request) = command.subscribe {
            self.subscribe(id, request).await?;
            return Ok(());
        } else if let Some(request) = command.unsubscribe {
            self.unsubscribe(id, request).await
        } else if let Some(request) = command.publish {
            let step = self.publish(id, request).await;
            return self.run_step(id, step).await;
        } else if let Some(request) = command.presence {
            let step = self.presence(id, request.channel);
            return self.run_step(id, step).await;
        } else if let Some(request) = command.presence_stats {
            let step = self.presence_stats(id, request.channel);
            return self.run_step(id, step).await;
        } else if let Some(request) = command.history {
            let step = self.history(id, request);
            return self.run_step(id, step).await;
        } else if let Some(request) = command.rpc {
            let step = self.rpc(id, request);
            return self.run_step(id, step).await;
        } else if command.send.is_some() {
            // Centrifugo OSS has no handler for asynchronous messages.
            return Err(Disconnect::not_available());
        } else if let Some(request) = command.refresh {
            self.refresh(id, request).await
        } else if let Some(request) = command.sub_refresh {
            match request.r#type {
                TRACK => {
                    self.track(id, request).await?;
                    return Ok(());
                }
                UNTRACK => self.untrack(id, request),
                _ => self.sub_refresh(id, request).await,
            }
        } else {
            // Includes the v1 `ping` command, which protocol v2 does not support.
            return Err(Disconnect::bad_request());
        };
        self.answer(id, outcome)
    }

    /// Queues the answer to command `id`, or hands its disconnect back.
    fn answer(&self, id: u32, outcome: CommandResult) -> Result<(), Disconnect> {
        match outcome? {
            Ok(reply) => self.send_reply(&reply),
            Err(error) => self.send_error(id, &error),
        }
        Ok(())
    }

    /// Finishes a command whose checks are done: its work runs here, or, with
    /// `client.concurrency` above 1, in a task of its own holding one of the connection's
    /// slots (its reply may then overtake earlier ones; clients match replies by id). While
    /// every slot is taken, no further command is read, as in Centrifugo.
    async fn run_step(&mut self, id: u32, step: Step) -> Result<(), Disconnect> {
        let work = match step {
            Step::Answered(outcome) => return self.answer(id, *outcome),
            Step::Work(work) => work,
        };
        let Some(slots) = self.concurrency.clone() else {
            let outcome = work.await;
            return self.answer(id, outcome);
        };
        let Ok(slot) = slots.acquire_owned().await else { return Ok(()) };
        let (handle, metrics, method) =
            (self.handle.clone(), self.node.metrics.clone(), self.current_command);
        tokio::spawn(async move {
            let outcome = work.await;
            drop(slot);
            match outcome {
                Ok(Ok(reply)) => handle.send_reply(&reply, method),
                Ok(Err(error)) => {
                    metrics.reply_error(method, error.code);
                    handle.send_reply(&error_reply(id, &error), method)
                }
                Err(disconnect) => handle.disconnect(disconnect),
            }
        });
        Ok(())
    }

    /// First step of every channel command: an empty channel is a protocol violation (3501),
    /// an unknown or malformed one a client error.
    fn resolve_target(&self, channel: &str) -> Outcome<ResolvedChannel> {
        if channel.is_empty() {
            return Err(Disconnect::bad_request());
        }
        Ok(self.node.resolve(channel))
    }

    /// The client/subscriber/anonymous permission rule shared by publish, presence and history.
    pub(super) fn has_access(&self, access: &Access, subscribed: bool) -> bool {
        let user_ok = !self.user().is_empty() || access.for_anonymous;
        (access.for_client && user_ok)
            || (access.for_subscriber && subscribed && user_ok)
            || self.node.config.client.insecure
    }

    async fn unsubscribe(&mut self, id: u32, request: UnsubscribeRequest) -> CommandResult {
        if request.channel.is_empty() {
            return Err(Disconnect::bad_request());
        }
        self.drop_map_flow(&request.channel).await;
        if self.remove_subscription(&request.channel).await {
            self.record_unsubscribed(&request.channel, 0, "client unsubscribed");
        }
        Ok(Ok(Reply { id, unsubscribe: Some(UnsubscribeResult {}), ..Default::default() }))
    }

    async fn publish(&mut self, id: u32, request: PublishRequest) -> Step {
        if request.r#type == 1 {
            if request.channel.is_empty() {
                return Step::answered(Err(Disconnect::bad_request()));
            }
            return Step::answered(self.map_write(id, request).await);
        }
        let channel = request.channel;
        let resolved = match self.resolve_target(&channel) {
            Ok(Ok(resolved)) => resolved,
            Ok(Err(error)) => return Step::answered(Ok(Err(error))),
            Err(disconnect) => return Step::answered(Err(disconnect)),
        };
        let options = &resolved.options;
        if options.is_map() || options.is_shared_poll() {
            // Their publications are keyed (map writes use `type: 1`).
            return Step::answered(Ok(Err(ClientError::BAD_REQUEST)));
        }
        if options.publish_proxy_enabled {
            return Step::answered(self.publish_proxied(id, channel, resolved, request.data).await);
        }
        if options.subscribe_stream_proxy_enabled {
            return Step::answered(Ok(self.publish_to_stream(id, &channel, request.data)));
        }
        let subscription = self.subs.get(&channel);
        let allowed = self.has_access(&Access::publish(options), subscription.is_some());
        if !allowed {
            return Step::answered(Ok(Err(ClientError::PERMISSION_DENIED)));
        }
        if let Err(error) = validate_data(self.node.rules.data_format(options), &request.data) {
            return Step::answered(Ok(Err(error)));
        }
        let info = match subscription {
            Some(sub) => self.client_info(sub),
            None => self.connection_info(),
        };
        let publication = Publication { data: request.data, info: Some(info), ..Default::default() };
        let spec = PublishSpec { delta: options.delta_publish, ..Default::default() };
        let node = self.node.clone();
        Step::Work(Box::pin(async move {
            let published = node.publish(&channel, &resolved, publication, spec).await;
            Ok(published.map(|_| Reply { id, publish: Some(PublishResult {}), ..Default::default() }))
        }))
    }

    fn presence_access(&self, channel: &str) -> Result<ResolvedChannel, ClientError> {
        let resolved = self.node.resolve(channel)?;
        let options = &resolved.options;
        if !options.presence {
            return Err(ClientError::NOT_AVAILABLE);
        }
        let allowed = self.has_access(&Access::presence(options), self.subs.contains_key(channel));
        if !allowed {
            return Err(ClientError::PERMISSION_DENIED);
        }
        Ok(resolved)
    }

    /// The checks `presence` and `presence_stats` share: `Err` is the step that answers.
    fn presence_checked(&self, channel: &str) -> Result<Arc<Node>, Step> {
        if channel.is_empty() {
            return Err(Step::answered(Err(Disconnect::bad_request())));
        }
        match self.presence_access(channel) {
            Ok(_) => Ok(self.node.clone()),
            Err(error) => Err(Step::answered(Ok(Err(error)))),
        }
    }

    fn presence(&self, id: u32, channel: String) -> Step {
        let node = match self.presence_checked(&channel) {
            Ok(node) => node,
            Err(step) => return step,
        };
        Step::Work(Box::pin(async move {
            Ok(node.presence(&channel).await.map(|presence| Reply {
                id,
                presence: Some(PresenceResult { presence }),
                ..Default::default()
            }))
        }))
    }

    fn presence_stats(&self, id: u32, channel: String) -> Step {
        let node = match self.presence_checked(&channel) {
            Ok(node) => node,
            Err(step) => return step,
        };
        Step::Work(Box::pin(async move {
            Ok(node.presence_stats(&channel).await.map(|stats| Reply {
                id,
                presence_stats: Some(PresenceStatsResult {
                    num_clients: stats.num_clients,
                    num_users: stats.num_users,
                }),
                ..Default::default()
            }))
        }))
    }

    fn history(&self, id: u32, request: HistoryRequest) -> Step {
        let channel = request.channel;
        let resolved = match self.resolve_target(&channel) {
            Ok(Ok(resolved)) => resolved,
            Ok(Err(error)) => return Step::answered(Ok(Err(error))),
            Err(disconnect) => return Step::answered(Err(disconnect)),
        };
        let options = &resolved.options;
        if !options.history_enabled() {
            return Step::answered(Ok(Err(ClientError::NOT_AVAILABLE)));
        }
        let allowed = self.has_access(&Access::history(options), self.subs.contains_key(&channel));
        if !allowed {
            return Step::answered(Ok(Err(ClientError::PERMISSION_DENIED)));
        }
        if request.reverse && request.since.as_ref().is_some_and(|s| s.offset == 0) {
            return Step::answered(Ok(Err(ClientError::BAD_REQUEST)));
        }
        let cap = self.node.config.client.history_max_publication_limit as i32;
        let limit = if cap > 0 && (request.limit < 0 || request.limit > cap) { cap } else { request.limit };
        let filter = HistoryFilter {
            since: request.since.map(|s| StreamPosition { offset: s.offset, epoch: s.epoch }),
            limit,
            reverse: request.reverse,
            ..Default::default()
        };
        let node = self.node.clone();
        Step::Work(Box::pin(async move {
            Ok(node.history(&channel, &resolved, filter).await.map(|history| Reply {
                id,
                history: Some(HistoryResult {
                    publications: history.publications,
                    epoch: history.position.epoch,
                    offset: history.position.offset,
                }),
                ..Default::default()
            }))
        }))
    }

    /// A publication the publish proxy decides on (it may rewrite the data or skip history);
    /// the namespace's publish permissions do not apply.
    async fn publish_proxied(
        &mut self,
        id: u32,
        channel: String,
        resolved: ResolvedChannel,
        data: bytes::Bytes,
    ) -> CommandResult {
        let options = &resolved.options;
        if let Err(error) = validate_data(self.node.rules.data_format(options), &data) {
            return Ok(Err(error));
        }
        let Some(backend) = self.node.proxies.get(ProxyKind::Publish, &options.publish_proxy_name).cloned()
        else {
            return Ok(Err(ClientError::NOT_AVAILABLE));
        };
        let decided = match self.proxy_publish(&backend, &channel, &data).await? {
            Ok(decided) => decided,
            Err(error) => return Ok(Err(error)),
        };
        let info = match self.subs.get(&channel) {
            Some(sub) => self.client_info(sub),
            None => self.connection_info(),
        };
        let publication =
            Publication { data: decided.data, info: Some(info), tags: decided.tags, ..Default::default() };
        let spec = PublishSpec {
            skip_history: decided.skip_history,
            idempotency_key: Some(decided.idempotency_key),
            delta: decided.delta,
            version: decided.version,
            version_epoch: decided.version_epoch,
        };
        let published = self.node.publish(&channel, &resolved, publication, spec).await;
        Ok(published.map(|_| Reply { id, publish: Some(PublishResult {}), ..Default::default() }))
    }

    /// In a subscribe stream channel a publication goes to the backend on the client's own
    /// bidirectional stream (and nowhere else); unidirectional streams take none.
    fn publish_to_stream(&self, id: u32, channel: &str, data: bytes::Bytes) -> Result<Reply, ClientError> {
        let publisher = self.subs.get(channel).and_then(|sub| sub.stream.as_ref()?.publisher.clone());
        let Some(publisher) = publisher else {
            return Err(ClientError::NOT_AVAILABLE);
        };
        if !publisher.publish(data) {
            tracing::warn!(%channel, "subscribe stream backend is not reading: publication refused");
            return Err(ClientError::INTERNAL);
        }
        Ok(Reply { id, publish: Some(PublishResult {}), ..Default::default() })
    }

    /// `rpc.ping` answers itself; other methods go to their namespace's RPC proxy. As in
    /// Centrifugo: with no RPC proxy at all 108 (104 when only ping exists), an unknown RPC
    /// namespace 104, a namespace without its proxy enabled 108.
    fn rpc(&self, id: u32, request: RpcRequest) -> Step {
        #[cfg(test)]
        if request.method == "__panic_holding_a_hub_lock" {
            self.node.hub.panic_holding_a_lock();
        }
        let ping = &self.node.config.rpc.ping;
        if ping.enabled && request.method == ping.method {
            return Step::answered(Ok(Ok(Reply {
                id,
                rpc: Some(RpcResult::default()),
                ..Default::default()
            })));
        }
        if !self.node.proxies.has(ProxyKind::Rpc) {
            let error = if ping.enabled { ClientError::METHOD_NOT_FOUND } else { ClientError::NOT_AVAILABLE };
            return Step::answered(Ok(Err(error)));
        }
        let Some(options) = rpc_options(&self.node.config.rpc, &request.method) else {
            return Step::answered(Ok(Err(ClientError::METHOD_NOT_FOUND)));
        };
        let backend = self.node.proxies.get(ProxyKind::Rpc, &options.proxy_name).cloned();
        let Some(backend) = backend.filter(|_| options.proxy_enabled) else {
            return Step::answered(Ok(Err(ClientError::NOT_AVAILABLE)));
        };
        let call = self.proxy_rpc(backend, &request.method, &request.data);
        Step::Work(Box::pin(async move {
            Ok(call.await?.map(|data| Reply { id, rpc: Some(RpcResult { data }), ..Default::default() }))
        }))
    }

    async fn refresh(&mut self, id: u32, request: RefreshRequest) -> CommandResult {
        if !self.client_refresh || request.token.is_empty() {
            return Err(Disconnect::bad_request());
        }
        let now = unix_now();
        let claims = match self.verify_connect_token(&request.token, now).await {
            Ok(claims) => claims,
            Err(TokenError::Expired) => return Err(Disconnect::expired()),
            Err(TokenError::Invalid(_)) => return Err(Disconnect::invalid_token()),
        };
        if claims.user != self.user() {
            return Err(Disconnect::invalid_token());
        }
        // Server-side subscriptions come from the token; a token with a different set needs a
        // reconnect to apply it.
        if claims.subs.keys().ne(self.token_channels.iter()) {
            return Err(Disconnect::insufficient_state());
        }
        if !claims.info.is_empty() {
            self.info = claims.info;
        }
        self.expires_at = match claims.expiry {
            Expiry::Never => None,
            Expiry::At(at) if at <= now => return Err(Disconnect::expired()),
            Expiry::At(at) => Some(at),
        };
        Ok(Ok(Reply {
            id,
            refresh: Some(RefreshResult {
                expires: self.expires_at.is_some(),
                ttl: self.expires_at.map(ttl_of).unwrap_or(0),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn sub_refresh(&mut self, id: u32, request: SubRefreshRequest) -> CommandResult {
        if request.channel.is_empty() {
            return Err(Disconnect::bad_request());
        }
        let user = self.user().to_owned();
        let client_id = self.handle.client.clone();
        let Some(sub) = self.subs.get(&request.channel) else {
            return Ok(Err(ClientError::PERMISSION_DENIED));
        };
        if sub.server_side || sub.expires_at.is_none() {
            return Err(Disconnect::bad_request());
        }
        if request.token.is_empty() {
            return Ok(Err(ClientError::BAD_REQUEST));
        }
        let now = unix_now();
        let claims = match self.verify_subscribe_token(&request.token, now).await {
            Ok(claims) => claims,
            // Deliberate: an expired token gets 109 so the SDK fetches a fresh one (see the
            // protocol notes on Centrifugo's behaviour here).
            Err(TokenError::Expired) => return Ok(Err(ClientError::TOKEN_EXPIRED)),
            Err(TokenError::Invalid(_)) => return Err(Disconnect::invalid_token()),
        };
        if !claims.grants(&request.channel, &user, &client_id) {
            return Err(Disconnect::invalid_token());
        }
        // Still subscribed: the session task is the only one that changes its subscriptions.
        let Some(sub) = self.subs.get_mut(&request.channel) else {
            return Ok(Err(ClientError::PERMISSION_DENIED));
        };
        sub.expires_at = match claims.expiry {
            Expiry::Never => None,
            Expiry::At(at) if at <= now => return Ok(Err(ClientError::EXPIRED)),
            Expiry::At(at) => Some(at),
        };
        if !claims.info.is_empty() {
            sub.chan_info = claims.info;
        }
        Ok(Ok(Reply {
            id,
            sub_refresh: Some(SubRefreshResult {
                expires: sub.expires_at.is_some(),
                ttl: sub.expires_at.map(ttl_of).unwrap_or(0),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }
}

/// The options of the RPC namespace `method` belongs to (`ns:method`), or of methods without
/// a namespace; `None` for an unknown namespace.
fn rpc_options<'a>(rpc: &'a Rpc, method: &str) -> Option<&'a RpcOptions> {
    let boundary = &rpc.namespace_boundary;
    match method.split_once(boundary.as_str()).filter(|_| !boundary.is_empty()) {
        Some((namespace, _)) => rpc.namespaces.iter().find(|ns| ns.name == namespace).map(|ns| &ns.options),
        None => Some(&rpc.without_namespace),
    }
}
