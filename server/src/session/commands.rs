//! Command dispatch: one function per client command, each returning either a reply (queued
//! here) or a disconnect. Semantics follow Centrifugo's client protocol v2 exactly, including
//! which violations are client errors (the connection stays) and which are disconnects.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::subscriptions::SubscribeSpec;
use super::{Phase, Session};
use crate::auth::{Expiry, TokenError};
use crate::channel::validate_data;
use crate::config::ChannelOptions;
use crate::engine::{HistoryFilter, StreamPosition};
use crate::errors::{ClientError, Disconnect, unsubscribe};
use crate::node::unix_now;
use crate::proto::client::{
    Command, Connect, ConnectRequest, ConnectResult, HistoryRequest, HistoryResult, PresenceResult,
    PresenceStatsResult, Publication, PublishRequest, PublishResult, Push, RefreshRequest, RefreshResult,
    Reply, RpcRequest, RpcResult, SubRefreshRequest, SubRefreshResult, SubscribeRequest, UnsubscribeRequest,
    UnsubscribeResult,
};
use crate::session::Control;

/// `SubscribeRequest.flag` bit: answer 112 instead of `recovered: false`.
const REJECT_UNRECOVERED: i64 = 2;

/// Result of a command handler: `Err(ClientError)` becomes an error reply.
type CommandResult = Result<Result<Reply, ClientError>, Disconnect>;

/// Which permission a request needs, for the shared client/subscriber/anonymous rule.
struct Access {
    for_client: bool,
    for_subscriber: bool,
    for_anonymous: bool,
}

fn ttl_of(expires_at: i64) -> u32 {
    (expires_at - unix_now()).clamp(0, u32::MAX as i64) as u32
}

impl Session {
    pub(super) async fn handle_command(&mut self, command: Command) -> Result<(), Disconnect> {
        // Any command with id 0 other than `send` is a pong.
        if command.id == 0 && command.send.is_none() {
            if self.phase != Phase::Connected || self.timers.pong_deadline.take().is_none() {
                return Err(Disconnect::bad_request());
            }
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
            self.publish(id, request).await
        } else if let Some(request) = command.presence {
            self.presence(id, &request.channel).await
        } else if let Some(request) = command.presence_stats {
            self.presence_stats(id, &request.channel).await
        } else if let Some(request) = command.history {
            self.history(id, request).await
        } else if let Some(request) = command.rpc {
            self.rpc(id, request)
        } else if command.send.is_some() {
            // Centrifugo OSS has no handler for asynchronous messages.
            return Err(Disconnect::not_available());
        } else if let Some(request) = command.refresh {
            self.refresh(id, request)
        } else if let Some(request) = command.sub_refresh {
            self.sub_refresh(id, request)
        } else {
            // Includes the v1 `ping` command, which protocol v2 does not support.
            return Err(Disconnect::bad_request());
        };
        match outcome? {
            Ok(reply) => self.send_reply(&reply),
            Err(error) => self.send_error(id, &error),
        }
        Ok(())
    }

    async fn connect(&mut self, id: u32, request: ConnectRequest) -> Result<(), Disconnect> {
        if self.phase != Phase::Connecting {
            return Err(Disconnect::bad_request());
        }
        match self.authenticate(id, request).await? {
            Ok(()) => Ok(()),
            // A unidirectional client cannot read an error reply: it gets a disconnect.
            Err(error) if self.transport.unidirectional => Err(self.uni_connect_error(&error)),
            Err(error) => {
                self.phase = super::Phase::Rejected;
                self.send_error(id, &error);
                Ok(())
            }
        }
    }

    async fn authenticate(
        &mut self,
        id: u32,
        request: ConnectRequest,
    ) -> Result<Result<(), ClientError>, Disconnect> {
        let node = self.node.clone();
        let client = &node.config.client;
        let now = unix_now();
        let (user, expiry, info, mut server_subs) = if !request.token.is_empty() {
            match node.connect_tokens.verify_connect(&request.token, now) {
                Ok(claims) => (claims.user, claims.expiry, claims.info, claims.subs),
                Err(TokenError::Expired) => return Ok(Err(ClientError::TOKEN_EXPIRED)),
                Err(TokenError::Invalid(reason)) => {
                    tracing::info!(client = %self.handle.client, %reason, "invalid connection token");
                    return Err(Disconnect::invalid_token());
                }
            }
        } else if client.allow_anonymous_connect_without_token || client.insecure {
            (String::new(), Expiry::Never, Bytes::new(), BTreeMap::new())
        } else {
            return Err(Disconnect::bad_request());
        };
        if user.is_empty() && client.disallow_anonymous_connection_tokens && !request.token.is_empty() {
            return Err(Disconnect::permission_denied());
        }
        let expires_at = match expiry {
            Expiry::Never => None,
            Expiry::At(at) if at <= now => return Ok(Err(ClientError::EXPIRED)),
            Expiry::At(at) => Some(at),
        };
        if client.connection_limit > 0 && node.hub.num_connections() >= client.connection_limit as usize {
            return Err(Disconnect::connection_limit());
        }
        if client.user_connection_limit > 0
            && !user.is_empty()
            && node.hub.user_connections(&user).len() >= client.user_connection_limit as usize
        {
            return Err(Disconnect::connection_limit());
        }
        let token_channels: Vec<String> = server_subs.keys().cloned().collect();
        let personal = &client.subscribe_to_user_personal_channel;
        if personal.enabled && !user.is_empty() {
            let channel = node.rules.personal_channel(&personal.personal_channel_namespace, &user);
            server_subs.entry(channel).or_default();
            if personal.single_connection {
                for other in node.hub.user_connections(&user) {
                    other.disconnect(Disconnect::connection_limit());
                }
            }
        }
        // `subs` lists server-side subscriptions the client had (with positions to recover) or,
        // on unidirectional transports, channels it asks to join. As in Centrifugo, those the
        // user may subscribe to without a token are joined, others are skipped, and a channel
        // in an unknown namespace is a bad request.
        for channel in request.subs.keys() {
            if server_subs.contains_key(channel) {
                continue;
            }
            match node.resolve(channel) {
                Ok(resolved) => {
                    if !resolved.private
                        && self.tokenless_subscribe_allowed(channel, &resolved.options, &user)
                    {
                        server_subs.insert(channel.clone(), Default::default());
                    }
                }
                Err(error) if error.code == ClientError::UNKNOWN_CHANNEL.code => {
                    return Err(Disconnect::bad_request());
                }
                Err(_) => {}
            }
        }
        if server_subs.len() > client.channel_limit as usize {
            return Err(Disconnect::channel_limit());
        }
        let mut resolved_subs = Vec::with_capacity(server_subs.len());
        for (channel, sub) in server_subs {
            match node.resolve(&channel) {
                Ok(resolved) => resolved_subs.push((channel, resolved, sub)),
                Err(error) => return Ok(Err(error)),
            }
        }

        self.handle.set_user(user);
        self.token_channels = token_channels;
        self.info = info;
        self.expires_at = expires_at;
        self.client_refresh = expires_at.is_some();
        self.phase = Phase::Connected;
        node.hub.add_connection(&self.handle);
        self.start_connection_timers();

        let (ping, pong) = self.ping_settings();
        let mut result = ConnectResult {
            client: self.handle.client.clone(),
            version: crate::VERSION.to_owned(),
            expires: expires_at.is_some(),
            ttl: expires_at.map(ttl_of).unwrap_or(0),
            ping,
            pong,
            // Centrifugo gives unidirectional connections a session id too.
            session: match &self.transport.emulation_session {
                Some(id) => id.clone(),
                None if self.transport.unidirectional => uuid::Uuid::new_v4().to_string(),
                None => String::new(),
            },
            node: if self.transport.emulation_session.is_some() { node.uid.clone() } else { String::new() },
            time: if client.connect_include_server_time {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0)
            } else {
                0
            },
            ..Default::default()
        };
        let mut established = Vec::new();
        for (channel, resolved, sub) in resolved_subs {
            let recover = request
                .subs
                .get(&channel)
                .filter(|r| r.recover)
                .map(|r| StreamPosition { offset: r.offset, epoch: r.epoch.clone() });
            let spec = SubscribeSpec::server_side(
                &resolved,
                &sub.override_options,
                sub.info,
                sub.data,
                recover,
                None,
            );
            match self.subscribe_channel(&channel, resolved, spec).await {
                Ok((sub_result, live)) => {
                    result.subs.insert(channel.clone(), sub_result);
                    established.push((channel, live));
                }
                Err(error) => {
                    tracing::warn!(%channel, %error, "server-side subscription failed at connect");
                    return Err(Disconnect::server_error());
                }
            }
        }
        // The connect reply goes out first; then each channel's buffered live messages.
        if self.transport.unidirectional {
            let connect = Connect {
                client: result.client,
                version: result.version,
                data: result.data,
                subs: result.subs,
                expires: result.expires,
                ttl: result.ttl,
                ping: result.ping,
                pong: result.pong,
                session: result.session,
                node: result.node,
                time: result.time,
            };
            let push = Push { connect: Some(connect), ..Default::default() };
            self.send_reply(&Reply { push: Some(push), ..Default::default() });
        } else {
            self.send_reply(&Reply { id, connect: Some(result), ..Default::default() });
        }
        for (channel, live) in established {
            self.handle.complete_delivery(&channel, Vec::new(), live);
        }
        Ok(Ok(()))
    }

    async fn subscribe(&mut self, id: u32, request: SubscribeRequest) -> Result<(), Disconnect> {
        if request.channel.is_empty() {
            return Err(Disconnect::bad_request());
        }
        if !request.delta.is_empty() && request.delta != "fossil" {
            return Err(Disconnect::bad_request());
        }
        let channel = request.channel.clone();
        let spec = match self.authorize_subscribe(&request)? {
            Ok(spec) => spec,
            Err(error) => {
                self.send_error(id, &error);
                return Ok(());
            }
        };
        let resolved = spec.resolved.clone();
        match self.subscribe_channel(&channel, resolved, spec).await {
            Ok((result, _))
                if request.flag & REJECT_UNRECOVERED != 0 && result.was_recovering && !result.recovered =>
            {
                self.remove_subscription(&channel).await;
                self.send_error(id, &ClientError::UNRECOVERABLE_POSITION);
            }
            Ok((result, live)) => {
                let reply = Reply { id, subscribe: Some(result), ..Default::default() };
                let encoded = crate::protocol::encode_reply(self.handle.protocol, &reply);
                self.handle.complete_delivery(&channel, vec![encoded], live);
            }
            Err(error) => self.send_error(id, &error),
        }
        Ok(())
    }

    /// Namespace permission for a subscribe without a token: a user-limited channel (`#`)
    /// admits its users; otherwise `allow_subscribe_for_client` (and `_for_anonymous` for the
    /// anonymous user). `client.insecure` is checked by the caller where it applies.
    fn tokenless_subscribe_allowed(&self, channel: &str, options: &ChannelOptions, user: &str) -> bool {
        if self.node.rules.is_user_limited(channel, options)
            && self.node.rules.user_limited_allows(channel, user).unwrap_or(false)
        {
            return true;
        }
        options.allow_subscribe_for_client && (!user.is_empty() || options.allow_subscribe_for_anonymous)
    }

    /// The disconnect a unidirectional client gets for a connect error: the configured
    /// transform for its code, else Centrifugo's default mapping.
    fn uni_connect_error(&self, error: &ClientError) -> Disconnect {
        let transforms = &self.node.config.client.connect_code_to_unidirectional_disconnect;
        if transforms.enabled
            && let Some(transform) = transforms.transforms.iter().find(|t| t.code == error.code)
        {
            return Disconnect::custom(transform.to.code, &transform.to.reason);
        }
        match error.code {
            109 | 110 => Disconnect::expired(),
            111 => Disconnect::too_many_requests(),
            103 => Disconnect::permission_denied(),
            _ => Disconnect::server_error(),
        }
    }

    /// Permission checks of a client subscribe; returns how to subscribe.
    fn authorize_subscribe(
        &self,
        request: &SubscribeRequest,
    ) -> Result<Result<SubscribeSpec, ClientError>, Disconnect> {
        let channel = &request.channel;
        let client = &self.node.config.client;
        if self.subs.contains_key(channel) {
            return Ok(Err(ClientError::ALREADY_SUBSCRIBED));
        }
        if self.subs.len() >= client.channel_limit as usize {
            return Ok(Err(ClientError::LIMIT_EXCEEDED));
        }
        let resolved = match self.node.resolve(channel) {
            Ok(resolved) => resolved,
            Err(error) => return Ok(Err(error)),
        };
        if request.r#type != 0 {
            // Map and shared-poll subscriptions are not served: the namespace type is stream.
            return Ok(Err(ClientError::PERMISSION_DENIED));
        }
        if let Some(filter) = &request.tf
            && (!resolved.options.allow_tags_filter || !crate::filter::validate(filter))
        {
            return Ok(Err(ClientError::BAD_REQUEST));
        }
        let options = resolved.options.clone();
        let user = self.user();
        let now = unix_now();
        let mut token_claims = None;
        if !request.token.is_empty() {
            match self.node.subscribe_tokens.verify_subscribe(&request.token, now) {
                Ok(claims) => {
                    if !claims.grants(channel, user, &self.handle.client) {
                        return Err(Disconnect::invalid_token());
                    }
                    token_claims = Some(claims);
                }
                Err(TokenError::Expired) => return Ok(Err(ClientError::TOKEN_EXPIRED)),
                Err(TokenError::Invalid(reason)) => {
                    tracing::info!(%channel, %reason, "invalid subscription token");
                    return Ok(Err(ClientError::PERMISSION_DENIED));
                }
            }
        } else if resolved.private {
            return Ok(Err(ClientError::PERMISSION_DENIED));
        }
        if token_claims.is_none()
            && !self.tokenless_subscribe_allowed(channel, &options, user)
            && !client.insecure
        {
            return Ok(Err(ClientError::PERMISSION_DENIED));
        }
        let expires_at = match token_claims.as_ref().map(|c| c.expiry) {
            Some(Expiry::At(at)) if at <= now => return Ok(Err(ClientError::EXPIRED)),
            Some(Expiry::At(at)) => Some(at),
            _ => None,
        };
        let history_access = self.has_access(
            &Access {
                for_client: options.allow_history_for_client,
                for_subscriber: options.allow_history_for_subscriber,
                for_anonymous: options.allow_history_for_anonymous,
            },
            true,
        );
        let presence_access = self.has_access(
            &Access {
                for_client: options.allow_presence_for_client,
                for_subscriber: options.allow_presence_for_subscriber,
                for_anonymous: options.allow_presence_for_anonymous,
            },
            true,
        );
        let recover =
            request.recover.then(|| StreamPosition { offset: request.offset, epoch: request.epoch.clone() });
        Ok(Ok(SubscribeSpec::client_side(
            &resolved,
            request,
            token_claims,
            expires_at,
            history_access,
            presence_access,
            recover,
        )))
    }

    /// First step of every channel command: an empty channel is a protocol violation (3501),
    /// an unknown or malformed one a client error.
    fn resolve_target(
        &self,
        channel: &str,
    ) -> Result<Result<crate::channel::ResolvedChannel, ClientError>, Disconnect> {
        if channel.is_empty() {
            return Err(Disconnect::bad_request());
        }
        Ok(self.node.resolve(channel))
    }

    /// The client/subscriber/anonymous permission rule shared by publish, presence and history.
    fn has_access(&self, access: &Access, subscribed: bool) -> bool {
        let user_ok = !self.user().is_empty() || access.for_anonymous;
        (access.for_client && user_ok)
            || (access.for_subscriber && subscribed && user_ok)
            || self.node.config.client.insecure
    }

    async fn unsubscribe(&mut self, id: u32, request: UnsubscribeRequest) -> CommandResult {
        if request.channel.is_empty() {
            return Err(Disconnect::bad_request());
        }
        self.remove_subscription(&request.channel).await;
        Ok(Ok(Reply { id, unsubscribe: Some(UnsubscribeResult {}), ..Default::default() }))
    }

    async fn publish(&mut self, id: u32, request: PublishRequest) -> CommandResult {
        let channel = request.channel;
        let resolved = match self.resolve_target(&channel)? {
            Ok(resolved) => resolved,
            Err(error) => return Ok(Err(error)),
        };
        let options = &resolved.options;
        let subscription = self.subs.get(&channel);
        let allowed = self.has_access(
            &Access {
                for_client: options.allow_publish_for_client,
                for_subscriber: options.allow_publish_for_subscriber,
                for_anonymous: options.allow_publish_for_anonymous,
            },
            subscription.is_some(),
        );
        if !allowed {
            return Ok(Err(ClientError::PERMISSION_DENIED));
        }
        if let Err(error) = validate_data(self.node.rules.data_format(options), &request.data) {
            return Ok(Err(error));
        }
        let info = match subscription {
            Some(sub) => self.client_info(sub),
            None => self.connection_info(),
        };
        let publication = Publication { data: request.data, info: Some(info), ..Default::default() };
        Ok(self.node.publish(&channel, &resolved, publication, false, None).await.map(|_| Reply {
            id,
            publish: Some(PublishResult {}),
            ..Default::default()
        }))
    }

    fn presence_access(&self, channel: &str) -> Result<crate::channel::ResolvedChannel, ClientError> {
        let resolved = self.node.resolve(channel)?;
        let options = &resolved.options;
        if !options.presence {
            return Err(ClientError::NOT_AVAILABLE);
        }
        let allowed = self.has_access(
            &Access {
                for_client: options.allow_presence_for_client,
                for_subscriber: options.allow_presence_for_subscriber,
                for_anonymous: options.allow_presence_for_anonymous,
            },
            self.subs.contains_key(channel),
        );
        if !allowed {
            return Err(ClientError::PERMISSION_DENIED);
        }
        Ok(resolved)
    }

    async fn presence(&mut self, id: u32, channel: &str) -> CommandResult {
        if channel.is_empty() {
            return Err(Disconnect::bad_request());
        }
        if let Err(error) = self.presence_access(channel) {
            return Ok(Err(error));
        }
        Ok(self.node.presence(channel).await.map(|presence| Reply {
            id,
            presence: Some(PresenceResult { presence }),
            ..Default::default()
        }))
    }

    async fn presence_stats(&mut self, id: u32, channel: &str) -> CommandResult {
        if channel.is_empty() {
            return Err(Disconnect::bad_request());
        }
        if let Err(error) = self.presence_access(channel) {
            return Ok(Err(error));
        }
        Ok(self.node.presence_stats(channel).await.map(|stats| Reply {
            id,
            presence_stats: Some(PresenceStatsResult {
                num_clients: stats.num_clients,
                num_users: stats.num_users,
            }),
            ..Default::default()
        }))
    }

    async fn history(&mut self, id: u32, request: HistoryRequest) -> CommandResult {
        let channel = request.channel;
        let resolved = match self.resolve_target(&channel)? {
            Ok(resolved) => resolved,
            Err(error) => return Ok(Err(error)),
        };
        let options = &resolved.options;
        if !options.history_enabled() {
            return Ok(Err(ClientError::NOT_AVAILABLE));
        }
        let allowed = self.has_access(
            &Access {
                for_client: options.allow_history_for_client,
                for_subscriber: options.allow_history_for_subscriber,
                for_anonymous: options.allow_history_for_anonymous,
            },
            self.subs.contains_key(&channel),
        );
        if !allowed {
            return Ok(Err(ClientError::PERMISSION_DENIED));
        }
        if request.reverse && request.since.as_ref().is_some_and(|s| s.offset == 0) {
            return Ok(Err(ClientError::BAD_REQUEST));
        }
        let cap = self.node.config.client.history_max_publication_limit as i32;
        let limit = if cap > 0 && (request.limit < 0 || request.limit > cap) { cap } else { request.limit };
        let filter = HistoryFilter {
            since: request.since.map(|s| StreamPosition { offset: s.offset, epoch: s.epoch }),
            limit,
            reverse: request.reverse,
            ..Default::default()
        };
        Ok(self.node.history(&channel, &resolved, filter).await.map(|history| Reply {
            id,
            history: Some(HistoryResult {
                publications: history.publications,
                epoch: history.position.epoch,
                offset: history.position.offset,
            }),
            ..Default::default()
        }))
    }

    fn rpc(&mut self, id: u32, request: RpcRequest) -> CommandResult {
        let ping = &self.node.config.rpc.ping;
        if ping.enabled && request.method == ping.method {
            return Ok(Ok(Reply { id, rpc: Some(RpcResult::default()), ..Default::default() }));
        }
        // No RPC proxy exists in this version, so nothing can handle the call.
        Ok(Err(ClientError::NOT_AVAILABLE))
    }

    fn refresh(&mut self, id: u32, request: RefreshRequest) -> CommandResult {
        if !self.client_refresh || request.token.is_empty() {
            return Err(Disconnect::bad_request());
        }
        let now = unix_now();
        let claims = match self.node.connect_tokens.verify_connect(&request.token, now) {
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

    fn sub_refresh(&mut self, id: u32, request: SubRefreshRequest) -> CommandResult {
        if request.channel.is_empty() {
            return Err(Disconnect::bad_request());
        }
        let user = self.user().to_owned();
        let client_id = self.handle.client.clone();
        let Some(sub) = self.subs.get_mut(&request.channel) else {
            return Ok(Err(ClientError::PERMISSION_DENIED));
        };
        if sub.server_side || sub.expires_at.is_none() {
            return Err(Disconnect::bad_request());
        }
        if request.token.is_empty() {
            return Ok(Err(ClientError::BAD_REQUEST));
        }
        let now = unix_now();
        let claims = match self.node.subscribe_tokens.verify_subscribe(&request.token, now) {
            Ok(claims) => claims,
            // Deliberate: an expired token gets 109 so the SDK fetches a fresh one (see the
            // protocol notes on Centrifugo's behaviour here).
            Err(TokenError::Expired) => return Ok(Err(ClientError::TOKEN_EXPIRED)),
            Err(TokenError::Invalid(_)) => return Err(Disconnect::invalid_token()),
        };
        if !claims.grants(&request.channel, &user, &client_id) {
            return Err(Disconnect::invalid_token());
        }
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

    /// Requests from the server API, applied in the session task.
    pub(super) async fn handle_control(&mut self, control: Control) -> Result<(), Disconnect> {
        if self.phase != Phase::Connected {
            return Ok(());
        }
        match control {
            Control::Subscribe(request) => {
                let request = *request;
                let channel = request.channel.clone();
                if self.subs.contains_key(&channel) {
                    return Ok(());
                }
                let Ok(resolved) = self.node.resolve(&channel) else { return Ok(()) };
                let expires_at = (request.expire_at > 0).then_some(request.expire_at);
                let spec = SubscribeSpec::server_side(
                    &resolved,
                    &request.override_options,
                    request.info,
                    request.data.clone(),
                    request.recover_since,
                    expires_at,
                );
                match self.subscribe_channel(&channel, resolved, spec).await {
                    Ok((result, live)) => {
                        let mut messages = vec![crate::protocol::encode_reply(
                            self.handle.protocol,
                            &Reply {
                                push: Some(Push {
                                    channel: channel.clone(),
                                    subscribe: Some(crate::proto::client::Subscribe {
                                        recoverable: result.recoverable,
                                        epoch: result.epoch.clone(),
                                        offset: result.offset,
                                        positioned: result.positioned,
                                        data: request.data,
                                    }),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            },
                        )];
                        for publication in result.publications {
                            messages.push(crate::protocol::encode_reply(
                                self.handle.protocol,
                                &Reply {
                                    push: Some(Push {
                                        channel: channel.clone(),
                                        r#pub: Some(publication),
                                        ..Default::default()
                                    }),
                                    ..Default::default()
                                },
                            ));
                        }
                        self.handle.complete_delivery(&channel, messages, live);
                    }
                    Err(error) => tracing::warn!(%channel, %error, "server-side subscribe failed"),
                }
            }
            Control::Unsubscribe { channel } => {
                if self.subs.contains_key(&channel) {
                    self.unsubscribe_with_push(&channel, unsubscribe::SERVER).await;
                }
            }
            Control::InsufficientState { channel } => {
                if self.subs.contains_key(&channel) {
                    self.unsubscribe_with_push(&channel, unsubscribe::INSUFFICIENT_STATE).await;
                }
            }
            Control::Refresh { expired, expire_at, info } => {
                if expired {
                    return Err(Disconnect::expired());
                }
                if let Some(info) = info {
                    self.info = info;
                }
                if let Some(at) = expire_at {
                    self.expires_at = (at > 0).then_some(at);
                    self.send_reply(&Reply {
                        push: Some(Push {
                            refresh: Some(crate::proto::client::Refresh {
                                expires: self.expires_at.is_some(),
                                ttl: self.expires_at.map(ttl_of).unwrap_or(0),
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    });
                }
            }
        }
        Ok(())
    }
}
