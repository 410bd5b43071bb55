//! Acting on a user's (or one client's) connections wherever they are connected: the server
//! API's `subscribe`, `unsubscribe`, `disconnect` and `refresh`. Each runs on this node's
//! matching sessions and is sent to every other node, whose cluster dispatcher applies the same
//! request to its own connections ([`super::cluster`]).
//!
//! The local halves (`apply_*`) never await: they also run on the broker's reader task.

use std::sync::Arc;

use super::{Node, cluster};
use crate::auth::{BoolValue, SubscribeOverride};
use crate::common::{StreamPosition, b64_or_raw};
use crate::errors::{ClientError, Disconnect};
use crate::hub::{Control, ServerSubscribe, SessionHandle};
use crate::proto::api::{self, DisconnectRequest, RefreshRequest, SubscribeRequest, UnsubscribeRequest};
use crate::proto::cluster::control_message::Command;

/// The server-side subscription an API `subscribe` asks for (107 for malformed base64).
pub fn server_subscribe(request: &SubscribeRequest) -> Result<ServerSubscribe, ClientError> {
    let info = b64_or_raw(&request.b64info, request.info.clone()).ok_or(ClientError::BAD_REQUEST)?;
    let data = b64_or_raw(&request.b64data, request.data.clone()).ok_or(ClientError::BAD_REQUEST)?;
    let overrides = request.r#override.unwrap_or_default();
    let pick = |v: Option<api::BoolValue>| v.map(|v| BoolValue { value: v.value });
    Ok(ServerSubscribe {
        channel: request.channel.clone(),
        info,
        data,
        expire_at: request.expire_at,
        recover_since: request
            .recover_since
            .clone()
            .map(|p| StreamPosition { offset: p.offset, epoch: p.epoch }),
        override_options: SubscribeOverride {
            presence: pick(overrides.presence),
            join_leave: pick(overrides.join_leave),
            force_push_join_leave: pick(overrides.force_push_join_leave),
            force_positioning: pick(overrides.force_positioning),
            force_recovery: pick(overrides.force_recovery),
        },
    })
}

impl Node {
    /// This node's connections of `user`, narrowed to one client id and one session when
    /// those are given; without a user, the connection with that client id.
    fn targets(&self, user: &str, client: &str, session: &str) -> Vec<Arc<SessionHandle>> {
        let candidates = if user.is_empty() {
            if client.is_empty() {
                return Vec::new();
            }
            self.hub.client(client).into_iter().collect()
        } else {
            self.hub.user_connections(user)
        };
        candidates
            .into_iter()
            .filter(|h| client.is_empty() || h.client == client)
            // Sessions are the client ids on bidirectional transports.
            .filter(|h| session.is_empty() || h.client == session)
            .collect()
    }

    /// Server-side subscribe of the matching connections on every node. The channel must
    /// exist (102) and the request be well-formed (107).
    pub async fn subscribe_connections(&self, request: SubscribeRequest) -> Result<(), ClientError> {
        self.resolve(&request.channel)?;
        let subscribe = server_subscribe(&request)?;
        self.subscribe_local(&request, &subscribe);
        cluster::send(self, Command::Subscribe(request), None).await
    }

    pub async fn unsubscribe_connections(&self, request: UnsubscribeRequest) -> Result<(), ClientError> {
        self.resolve(&request.channel)?;
        self.apply_unsubscribe(&request);
        cluster::send(self, Command::Unsubscribe(request), None).await
    }

    pub async fn disconnect_connections(&self, request: DisconnectRequest) -> Result<(), ClientError> {
        self.apply_disconnect(&request);
        cluster::send(self, Command::Disconnect(request), None).await
    }

    pub async fn refresh_connections(&self, request: RefreshRequest) -> Result<(), ClientError> {
        self.apply_refresh(&request);
        cluster::send(self, Command::Refresh(request), None).await
    }

    /// [`Self::subscribe_connections`] on this node only.
    pub(super) fn apply_subscribe(&self, request: &SubscribeRequest) {
        if let Ok(subscribe) = server_subscribe(request) {
            self.subscribe_local(request, &subscribe);
        }
    }

    fn subscribe_local(&self, request: &SubscribeRequest, subscribe: &ServerSubscribe) {
        for handle in self.targets(&request.user, &request.client, &request.session) {
            if !handle.control(Control::Subscribe(Box::new(subscribe.clone()))) {
                tracing::warn!(client = %handle.client, "control queue full; subscribe dropped");
            }
        }
    }

    pub(super) fn apply_unsubscribe(&self, request: &UnsubscribeRequest) {
        for handle in self.targets(&request.user, &request.client, &request.session) {
            handle.control(Control::Unsubscribe { channel: request.channel.clone() });
        }
    }

    pub(super) fn apply_disconnect(&self, request: &DisconnectRequest) {
        let disconnect = match &request.disconnect {
            Some(d) if d.code > 0 => Disconnect::custom(d.code, &d.reason),
            _ => Disconnect::force_no_reconnect(),
        };
        for handle in self.targets(&request.user, &request.client, &request.session) {
            if !request.whitelist.contains(&handle.client) {
                handle.disconnect(disconnect.clone());
            }
        }
    }

    pub(super) fn apply_refresh(&self, request: &RefreshRequest) {
        for handle in self.targets(&request.user, &request.client, &request.session) {
            handle.control(Control::Refresh {
                expired: request.expired,
                expire_at: (request.expire_at > 0).then_some(request.expire_at),
                info: (!request.info.is_empty()).then(|| request.info.clone()),
            });
        }
    }
}
