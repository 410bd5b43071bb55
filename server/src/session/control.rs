//! Requests from outside the session ([`Control`]: the server API on any node, and the hub's
//! notice of lost state), applied in the session task like commands.

use bytes::Bytes;

use super::Session;
use super::commands::ttl_of;
use super::subscriptions::SubscribeSpec;
use crate::errors::{Disconnect, unsubscribe};
use crate::hub::{Control, ServerSubscribe};
use crate::proto::client::{Publication, Push, Refresh, Reply, Subscribe, SubscribeResult};

impl Session {
    pub(super) async fn handle_control(&mut self, control: Control) -> Result<(), Disconnect> {
        if self.phase != super::Phase::Connected {
            return Ok(());
        }
        match control {
            Control::Subscribe(request) => self.server_subscribe(*request).await,
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
            Control::Refresh { expired, expire_at, info } => self.server_refresh(expired, expire_at, info)?,
        }
        Ok(())
    }

    /// API `subscribe`: joins the channel (unless already subscribed) and tells the client
    /// with a `subscribe` push, followed by any recovered publications.
    async fn server_subscribe(&mut self, request: ServerSubscribe) {
        let channel = request.channel.clone();
        if self.subs.contains_key(&channel) {
            return;
        }
        let Ok(resolved) = self.node.resolve(&channel) else { return };
        if resolved.options.is_map() || resolved.options.is_shared_poll() {
            tracing::warn!(%channel, "not a stream channel: no server-side subscribe");
            return;
        }
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
                let messages = self.subscribe_pushes(&channel, result, request.data);
                self.handle.complete_delivery(&channel, messages, live);
            }
            Err(error) => tracing::warn!(%channel, %error, "server-side subscribe failed"),
        }
    }

    /// The `subscribe` push for a server-side subscription, then its recovered publications.
    fn subscribe_pushes(&self, channel: &str, result: SubscribeResult, data: Bytes) -> Vec<Reply> {
        let push = |push: Push| {
            let push = Push { channel: channel.to_owned(), ..push };
            Reply { push: Some(push), ..Default::default() }
        };
        let subscribe = Subscribe {
            recoverable: result.recoverable,
            epoch: result.epoch.clone(),
            offset: result.offset,
            positioned: result.positioned,
            data,
        };
        let mut messages = vec![push(Push { subscribe: Some(subscribe), ..Default::default() })];
        messages.extend(
            result.publications.into_iter().map(|publication: Publication| {
                push(Push { r#pub: Some(publication), ..Default::default() })
            }),
        );
        messages
    }

    /// API `refresh`: expire the connection now, or set its info and expiry (announced with a
    /// `refresh` push).
    fn server_refresh(
        &mut self,
        expired: bool,
        expire_at: Option<i64>,
        info: Option<Bytes>,
    ) -> Result<(), Disconnect> {
        if expired {
            return Err(Disconnect::expired());
        }
        if let Some(info) = info {
            self.info = info;
        }
        if let Some(at) = expire_at {
            if at > 0 && at <= crate::common::unix_now() {
                return Err(Disconnect::expired());
            }
            self.expires_at = (at > 0).then_some(at);
            let refresh =
                Refresh { expires: self.expires_at.is_some(), ttl: self.expires_at.map(ttl_of).unwrap_or(0) };
            let push = Push { refresh: Some(refresh), ..Default::default() };
            self.send_reply(&Reply { push: Some(push), ..Default::default() });
        }
        Ok(())
    }
}
