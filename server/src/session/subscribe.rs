//! The client's `subscribe` command: what it may subscribe to (namespace permissions,
//! subscription tokens, private and user-limited channels, limits) and what its subscription
//! gets (recovery, positioning, join/leave, presence), decided before the subscription is set
//! up in `subscriptions.rs`.

use super::Session;
use super::commands::{Access, Outcome};
use super::subscriptions::SubscribeSpec;
use crate::auth::{Expiry, SubscribeClaims, TokenError};
use crate::channel::ResolvedChannel;
use crate::common::{StreamPosition, unix_now};
use crate::config::{ChannelOptions, ProxyKind};
use crate::errors::{ClientError, Disconnect};
use crate::proto::client::{Reply, SubscribeRequest};

/// `SubscribeRequest.type` values.
const STREAM_TYPE: i32 = 0;
const MAP: i32 = 1;
const MAP_CLIENTS: i32 = 2;
const MAP_USERS: i32 = 3;
const SHARED_POLL: i32 = 4;

impl Session {
    pub(super) async fn subscribe(&mut self, id: u32, request: SubscribeRequest) -> Result<(), Disconnect> {
        if request.channel.is_empty() {
            return Err(Disconnect::bad_request());
        }
        if !request.delta.is_empty() && request.delta != "fossil" {
            return Err(Disconnect::bad_request());
        }
        match request.r#type {
            STREAM_TYPE => {}
            MAP | MAP_CLIENTS | MAP_USERS => return self.map_subscribe(id, request).await,
            SHARED_POLL => return self.shared_poll_subscribe(id, request).await,
            _ => {
                self.send_error(id, &ClientError::BAD_REQUEST);
                return Ok(());
            }
        }
        let channel = request.channel.clone();
        let spec = match self.authorize_subscribe(&request).await? {
            Ok(spec) => spec,
            Err(error) => {
                self.send_error(id, &error);
                return Ok(());
            }
        };
        let resolved = spec.resolved.clone();
        match self.subscribe_channel(&channel, resolved, spec).await {
            Ok((result, live)) => {
                let reply = Reply { id, subscribe: Some(result), ..Default::default() };
                self.handle.complete_delivery(&channel, vec![reply], live);
            }
            Err(error) => self.send_error(id, &error),
        }
        Ok(())
    }

    /// Namespace permission for a subscribe without a token: a user-limited channel (`#`)
    /// admits its users; otherwise `allow_subscribe_for_client` (and `_for_anonymous` for the
    /// anonymous user). `client.insecure` is checked by the caller where it applies.
    pub(super) fn tokenless_subscribe_allowed(
        &self,
        channel: &str,
        options: &ChannelOptions,
        user: &str,
    ) -> bool {
        if self.node.rules.is_user_limited(channel, options)
            && self.node.rules.user_limited_allows(channel, user).unwrap_or(false)
        {
            return true;
        }
        options.allow_subscribe_for_client && (!user.is_empty() || options.allow_subscribe_for_anonymous)
    }

    /// Whether the client may subscribe as it asks, and with what.
    pub(super) async fn authorize_subscribe(&self, request: &SubscribeRequest) -> Outcome<SubscribeSpec> {
        let resolved = match self.subscribable(request) {
            Ok(resolved) => resolved,
            Err(error) => return Ok(Err(error)),
        };
        let mut spec = if self.subscribe_streamed(request, &resolved) {
            match self.streamed_spec(request, &resolved).await? {
                Ok(spec) => spec,
                Err(error) => return Ok(Err(error)),
            }
        } else if self.subscribe_proxied(request, &resolved) {
            match self.proxied_spec(request, &resolved).await? {
                Ok(spec) => spec,
                Err(error) => return Ok(Err(error)),
            }
        } else {
            match self.permitted_spec(request, resolved.clone()).await? {
                Ok(spec) => spec,
                Err(error) => return Ok(Err(error)),
            }
        };
        spec.proxy_refresh = resolved.options.sub_refresh_proxy_enabled;
        Ok(Ok(spec))
    }

    /// A subscribe stream proxy takes the subscriptions the subscribe proxy would (when no
    /// subscribe proxy is enabled for the namespace).
    fn subscribe_streamed(&self, request: &SubscribeRequest, resolved: &ResolvedChannel) -> bool {
        let options = &resolved.options;
        options.subscribe_stream_proxy_enabled
            && !options.subscribe_proxy_enabled
            && request.token.is_empty()
            && !resolved.private
            && !self.node.rules.is_user_limited(&request.channel, options)
    }

    /// A subscription on a subscribe stream: the backend's answer is its first message; no
    /// positioning or recovery (the stream has no history).
    async fn streamed_spec(
        &self,
        request: &SubscribeRequest,
        resolved: &ResolvedChannel,
    ) -> Outcome<SubscribeSpec> {
        let options = &resolved.options;
        let name = &options.subscribe_stream_proxy_name;
        let Some(backend) = self.node.proxies.get(ProxyKind::SubscribeStream, name).cloned() else {
            return Ok(Err(ClientError::NOT_AVAILABLE));
        };
        let bidirectional = options.subscribe_stream_proxy_bidirectional;
        let (granted, stream) = match self.proxy_subscribe_stream(&backend, request, bidirectional).await? {
            Ok(opened) => opened,
            Err(error) => return Ok(Err(error)),
        };
        let expires_at = (granted.expire_at > 0).then_some(granted.expire_at);
        let mut no_history = resolved.clone();
        let options = std::sync::Arc::make_mut(&mut no_history.options);
        (options.force_recovery, options.force_positioning) = (false, false);
        let mut overrides = granted.override_options;
        (overrides.force_recovery, overrides.force_positioning) = (None, None);
        let mut spec =
            SubscribeSpec::server_side(&no_history, &overrides, granted.info, granted.data, None, expires_at);
        spec.resolved = resolved.clone();
        spec.server_side = false;
        spec.delta = super::subscriptions::delta_negotiated(&resolved.options, &request.delta);
        spec.stream = Some(stream);
        Ok(Ok(spec))
    }

    /// Centrifugo asks the subscribe proxy when the client sent no token, the channel is not
    /// private, and it is not a user-limited channel (those admit their users themselves).
    fn subscribe_proxied(&self, request: &SubscribeRequest, resolved: &ResolvedChannel) -> bool {
        let options = &resolved.options;
        options.subscribe_proxy_enabled
            && request.token.is_empty()
            && !resolved.private
            && !self.node.rules.is_user_limited(&request.channel, options)
    }

    /// The subscription the subscribe proxy grants: the namespace's options with the
    /// backend's overrides; the client's recover/position/join-leave flags are not consulted.
    async fn proxied_spec(
        &self,
        request: &SubscribeRequest,
        resolved: &ResolvedChannel,
    ) -> Outcome<SubscribeSpec> {
        let options = &resolved.options;
        let Some(backend) =
            self.node.proxies.get(ProxyKind::Subscribe, &options.subscribe_proxy_name).cloned()
        else {
            return Ok(Err(ClientError::NOT_AVAILABLE));
        };
        let granted = match self.proxy_subscribe(&backend, request).await? {
            Ok(granted) => granted,
            Err(error) => return Ok(Err(error)),
        };
        let expires_at = match granted.expire_at {
            0 => None,
            at if at <= unix_now() => return Ok(Err(ClientError::EXPIRED)),
            at => Some(at),
        };
        let recover =
            request.recover.then(|| StreamPosition { offset: request.offset, epoch: request.epoch.clone() });
        let mut spec = SubscribeSpec::server_side(
            resolved,
            &granted.override_options,
            granted.info,
            granted.data,
            recover,
            expires_at,
        );
        spec.server_side = false;
        spec.filter = request.tf.clone().map(std::sync::Arc::new);
        spec.delta = super::subscriptions::delta_negotiated(&resolved.options, &request.delta);
        spec.reject_unrecovered = request.flag & super::subscriptions::REJECT_UNRECOVERED != 0;
        Ok(Ok(spec))
    }

    /// The subscription the namespace permissions or a subscription token allow.
    async fn permitted_spec(
        &self,
        request: &SubscribeRequest,
        resolved: ResolvedChannel,
    ) -> Outcome<SubscribeSpec> {
        let now = unix_now();
        let claims = match self.subscribe_token(request, &resolved, now).await? {
            Ok(claims) => claims,
            Err(error) => return Ok(Err(error)),
        };
        let expires_at = match claims.as_ref().map(|c| c.expiry) {
            Some(Expiry::At(at)) if at <= now => return Ok(Err(ClientError::EXPIRED)),
            Some(Expiry::At(at)) => Some(at),
            _ => None,
        };
        let options = &resolved.options;
        let history_access = self.has_access(&Access::history(options), true);
        let presence_access = self.has_access(&Access::presence(options), true);
        let recover =
            request.recover.then(|| StreamPosition { offset: request.offset, epoch: request.epoch.clone() });
        Ok(Ok(SubscribeSpec::client_side(
            &resolved,
            request,
            claims,
            expires_at,
            history_access,
            presence_access,
            recover,
        )))
    }

    /// The checks that need no token: not subscribed yet, under `client.channel_limit`, a
    /// known channel of the stream type, and a tags filter only where the namespace allows.
    fn subscribable(&self, request: &SubscribeRequest) -> Result<ResolvedChannel, ClientError> {
        let channel = &request.channel;
        if self.subs.contains_key(channel) {
            return Err(ClientError::ALREADY_SUBSCRIBED);
        }
        if self.subscription_count() >= self.node.config.client.channel_limit as usize {
            return Err(ClientError::LIMIT_EXCEEDED);
        }
        let resolved = self.node.resolve(channel)?;
        if resolved.options.is_shared_poll() && request.r#type != SHARED_POLL {
            return Err(ClientError::BAD_REQUEST);
        }
        if resolved.options.subscription_type_number() != request.r#type {
            // A stream subscribe to a map channel, or a map_clients subscribe to a map one.
            return Err(ClientError::PERMISSION_DENIED);
        }
        if let Some(filter) = &request.tf
            && (!resolved.options.allow_tags_filter || !crate::filter::validate(filter))
        {
            return Err(ClientError::BAD_REQUEST);
        }
        Ok(resolved)
    }

    /// The subscription token's claims, when the client sent one; without one, whether the
    /// channel admits the client anyway (not private, and the namespace allows it).
    async fn subscribe_token(
        &self,
        request: &SubscribeRequest,
        resolved: &ResolvedChannel,
        now: i64,
    ) -> Outcome<Option<SubscribeClaims>> {
        let channel = &request.channel;
        let user = self.user();
        if request.token.is_empty() {
            let allowed = !resolved.private
                && (self.tokenless_subscribe_allowed(channel, &resolved.options, user)
                    || self.node.config.client.insecure);
            return Ok(if allowed { Ok(None) } else { Err(ClientError::PERMISSION_DENIED) });
        }
        match self.verify_subscribe_token(&request.token, now).await {
            Ok(claims) if claims.grants(channel, user, &self.handle.client) => Ok(Ok(Some(claims))),
            Ok(_) => Err(Disconnect::invalid_token()),
            Err(TokenError::Expired) => Ok(Err(ClientError::TOKEN_EXPIRED)),
            Err(TokenError::Invalid(reason)) => {
                tracing::info!(%channel, %reason, "invalid subscription token");
                Ok(Err(ClientError::PERMISSION_DENIED))
            }
        }
    }
}
