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
use crate::config::ChannelOptions;
use crate::errors::{ClientError, Disconnect};
use crate::proto::client::{Reply, SubscribeRequest};

/// `SubscribeRequest.flag` bit: answer 112 instead of `recovered: false`.
const REJECT_UNRECOVERED: i64 = 2;

impl Session {
    pub(super) async fn subscribe(&mut self, id: u32, request: SubscribeRequest) -> Result<(), Disconnect> {
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
    fn authorize_subscribe(&self, request: &SubscribeRequest) -> Outcome<SubscribeSpec> {
        let resolved = match self.subscribable(request) {
            Ok(resolved) => resolved,
            Err(error) => return Ok(Err(error)),
        };
        let now = unix_now();
        let claims = match self.subscribe_token(request, &resolved, now)? {
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
        if self.subs.len() >= self.node.config.client.channel_limit as usize {
            return Err(ClientError::LIMIT_EXCEEDED);
        }
        let resolved = self.node.resolve(channel)?;
        if request.r#type != 0 {
            // Map and shared-poll subscriptions are not served: the namespace type is stream.
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
    fn subscribe_token(
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
        match self.node.subscribe_tokens.verify_subscribe(&request.token, now) {
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
