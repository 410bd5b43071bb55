//! What the session asks the application backend, and how it applies the answers, as
//! Centrifugo does: connect (who is connecting), refresh (extend or end a connection when it
//! expires), subscribe, publish (the backend may rewrite the data), rpc and sub refresh.
//!
//! A backend's `disconnect` closes the connection with its code, its `error` answers the
//! command with its code; a call that fails (timeout, refused, non-200 status, undecodable
//! answer) is logged and answered with 100 (internal), except refreshes, which are tried
//! again a minute later, as Centrifugo does.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;

use super::Session;
use super::commands::Outcome;
use crate::auth::{BoolValue, ServerSubscription, SubscribeOverride};
use crate::common::{b64_or_raw, unix_now};
use crate::errors::{ClientError, Disconnect};
use crate::proto::client::{ConnectRequest, SubscribeRequest};
use crate::proto::proxy as pb;
use crate::protocol::ProtocolType;
use crate::proxy::{Backend, CallContext, ProxyCall, RequestBase, StreamPublications, StreamPublisher};

/// Seconds until a refresh is tried again after a failed refresh call.
const REFRESH_RETRY_SECS: i64 = 60;

/// A payload as a request carries it: raw JSON, or base64 under `binary_encoding`.
pub(super) fn payload(backend: &Backend, data: &Bytes) -> (Bytes, String) {
    if backend.binary() {
        (Bytes::new(), base64::engine::general_purpose::STANDARD.encode(data))
    } else {
        (data.clone(), String::new())
    }
}

/// A payload from a result: its base64 form wins when set; invalid base64 is 100.
pub(super) fn decoded(raw: Bytes, b64: &str) -> Result<Bytes, ClientError> {
    b64_or_raw(b64, raw).ok_or_else(|| {
        tracing::error!("backend sent invalid base64");
        ClientError::INTERNAL
    })
}

/// One call to the backend; a failure is logged and becomes 100 (internal).
async fn call_logged<C: ProxyCall>(
    backend: &Backend,
    what: &str,
    request: C,
    context: &CallContext<'_>,
    client: &str,
) -> Result<C::Response, ClientError> {
    backend.call(request, context).await.map_err(|error| {
        let protocol = backend.protocol();
        tracing::error!(%client, proxy = what, protocol, %error, "proxy call failed");
        ClientError::INTERNAL
    })
}

/// The backend's verdict: its disconnect closes the connection, its error answers the
/// command, otherwise its result (which may be absent).
fn verdict<R>(
    result: Option<R>,
    error: Option<pb::Error>,
    disconnect: Option<pb::Disconnect>,
) -> Outcome<Option<R>> {
    if let Some(disconnect) = disconnect {
        return Err(Disconnect::custom(disconnect.code, &disconnect.reason));
    }
    if let Some(error) = error {
        return Ok(Err(ClientError::custom(error.code, error.message, error.temporary)));
    }
    Ok(Ok(result))
}

fn override_of(proxied: Option<pb::SubscribeOptionOverride>) -> SubscribeOverride {
    let proxied = proxied.unwrap_or_default();
    let value = |v: Option<pb::BoolValue>| v.map(|v| BoolValue { value: v.value });
    SubscribeOverride {
        presence: value(proxied.presence),
        join_leave: value(proxied.join_leave),
        force_push_join_leave: value(proxied.force_push_join_leave),
        force_positioning: value(proxied.force_positioning),
        force_recovery: value(proxied.force_recovery),
    }
}

/// A connect proxy's answer, as the connect step uses it.
pub(super) struct ProxiedIdentity {
    pub user: String,
    pub expire_at: i64,
    pub info: Bytes,
    pub data: Bytes,
    pub meta: Bytes,
    pub subs: BTreeMap<String, ServerSubscription>,
}

impl TryFrom<pb::ConnectResult> for ProxiedIdentity {
    type Error = ClientError;

    fn try_from(result: pb::ConnectResult) -> Result<Self, ClientError> {
        let mut subs: BTreeMap<String, ServerSubscription> =
            result.channels.into_iter().map(|channel| (channel, ServerSubscription::default())).collect();
        for (channel, options) in result.subs {
            let sub = ServerSubscription {
                info: decoded(options.info, &options.b64info)?,
                data: decoded(options.data, &options.b64data)?,
                override_options: override_of(options.r#override),
            };
            subs.insert(channel, sub);
        }
        Ok(Self {
            user: result.user,
            expire_at: result.expire_at,
            info: decoded(result.info, &result.b64info)?,
            data: decoded(result.data, &result.b64data)?,
            meta: result.meta,
            subs,
        })
    }
}

/// A subscribe proxy's grant.
pub(super) struct ProxiedSubscription {
    pub expire_at: i64,
    pub info: Bytes,
    pub data: Bytes,
    pub override_options: SubscribeOverride,
}

impl TryFrom<pb::SubscribeResult> for ProxiedSubscription {
    type Error = ClientError;

    fn try_from(result: pb::SubscribeResult) -> Result<Self, ClientError> {
        Ok(Self {
            expire_at: result.expire_at,
            info: decoded(result.info, &result.b64info)?,
            data: decoded(result.data, &result.b64data)?,
            override_options: override_of(result.r#override),
        })
    }
}

/// What a publish proxy decided about the publication.
pub(super) struct ProxiedPublication {
    pub data: Bytes,
    pub skip_history: bool,
    pub idempotency_key: String,
    pub tags: BTreeMap<String, String>,
    /// The backend's own choice: the namespace's `delta_publish` does not apply here.
    pub delta: bool,
    pub version: u64,
    pub version_epoch: String,
}

/// The outcome of a server-side refresh.
pub(super) enum Refreshed {
    /// Valid until then (`None`: no expiry any more), with new info when the backend sent it.
    Until(Option<i64>, Option<Bytes>),
    Expired,
}

impl Refreshed {
    /// A failed refresh call: the connection (or subscription) stays, and is asked about
    /// again a minute later.
    fn retry_later() -> Self {
        Self::Until(Some(unix_now() + REFRESH_RETRY_SECS), None)
    }

    /// A refresh result's `expire_at` (0: no expiry any more; a time already past: expired, so
    /// a backend answering one cannot make the session ask again at once, forever) and `info`.
    fn until(expire_at: i64, info: Bytes, b64info: &str) -> Self {
        let Ok(info) = decoded(info, b64info) else {
            return Self::retry_later();
        };
        if expire_at > 0 && expire_at <= unix_now() {
            return Self::Expired;
        }
        Self::Until((expire_at > 0).then_some(expire_at), (!info.is_empty()).then_some(info))
    }
}

impl Session {
    fn call_context(&self) -> CallContext<'_> {
        CallContext {
            headers: &self.transport.headers,
            source: self.transport.header_source,
            emulated: &self.emulated_headers,
        }
    }

    fn request_base(&self, backend: &Backend) -> RequestBase {
        let protocol = match self.handle.protocol {
            ProtocolType::Json => "json",
            ProtocolType::Protobuf => "protobuf",
        };
        RequestBase {
            client: self.handle.client.clone(),
            transport: self.transport.name.to_owned(),
            protocol: protocol.to_owned(),
            encoding: backend.encoding().to_owned(),
        }
    }

    pub(super) fn meta_for(&self, backend: &Backend) -> Bytes {
        if backend.includes_meta() { self.meta.clone() } else { Bytes::new() }
    }

    /// A request of kind `C` with this connection's common fields.
    pub(super) fn request<C: ProxyCall>(&self, backend: &Backend) -> C {
        C::based(self.request_base(backend))
    }

    /// One call and the backend's verdict on it (see [`verdict`]).
    pub(super) async fn ask<C: ProxyCall>(
        &self,
        backend: &Backend,
        what: &str,
        request: C,
    ) -> Outcome<Option<C::Result>> {
        let response = match self.call_backend(backend, what, request).await {
            Ok(response) => response,
            Err(error) => return Ok(Err(error)),
        };
        let (result, error, disconnect) = C::into_verdict(response);
        verdict(result, error, disconnect)
    }

    /// The subscribe request for `request` (the subscribe proxy's and the stream's).
    fn subscribe_request(&self, backend: &Backend, request: &SubscribeRequest) -> pb::SubscribeRequest {
        let (data, b64data) = payload(backend, &request.data);
        pb::SubscribeRequest {
            user: self.user().to_owned(),
            channel: request.channel.clone(),
            token: request.token.clone(),
            meta: self.meta_for(backend),
            data,
            b64data,
            ..self.request(backend)
        }
    }

    /// One call; a failed one is logged and becomes 100 (internal).
    async fn call_backend<C: ProxyCall>(
        &self,
        backend: &Backend,
        what: &str,
        request: C,
    ) -> Result<C::Response, ClientError> {
        call_logged(backend, what, request, &self.call_context(), &self.handle.client).await
    }

    /// The connect proxy's identity for a client that sent no token; `None` when the backend
    /// answered without a result (then only an anonymous connect can go on).
    pub(super) async fn proxy_connect(
        &self,
        backend: &Backend,
        request: &ConnectRequest,
    ) -> Outcome<Option<ProxiedIdentity>> {
        let (data, b64data) = payload(backend, &request.data);
        let call = pb::ConnectRequest {
            data,
            b64data,
            name: request.name.clone(),
            version: request.version.clone(),
            channels: request.subs.keys().cloned().collect(),
            ..self.request(backend)
        };
        match self.ask(backend, "connect", call).await? {
            Ok(Some(result)) => Ok(ProxiedIdentity::try_from(result).map(Some)),
            Ok(None) => Ok(Ok(None)),
            Err(error) => Ok(Err(error)),
        }
    }

    /// The refresh proxy's decision when the connection expires. A disconnect or error in
    /// its answer counts as no result (expired), as in Centrifugo.
    pub(super) async fn proxy_refresh(&mut self, backend: &Backend) -> Refreshed {
        let call = pb::RefreshRequest {
            user: self.user().to_owned(),
            meta: self.meta_for(backend),
            ..self.request(backend)
        };
        let Ok(response) = self.call_backend(backend, "refresh", call).await else {
            return Refreshed::retry_later();
        };
        let Some(result) = response.result.filter(|result| !result.expired) else {
            return Refreshed::Expired;
        };
        if !result.meta.is_empty() {
            self.meta = result.meta;
        }
        Refreshed::until(result.expire_at, result.info, &result.b64info)
    }

    /// The subscribe proxy's decision on a client's subscribe.
    pub(super) async fn proxy_subscribe(
        &self,
        backend: &Backend,
        request: &SubscribeRequest,
    ) -> Outcome<ProxiedSubscription> {
        let call = self.subscribe_request(backend, request);
        Ok(match self.ask(backend, "subscribe", call).await? {
            Ok(result) => ProxiedSubscription::try_from(result.unwrap_or_default()),
            Err(error) => Err(error),
        })
    }

    /// Opens the subscribe stream for a client's subscribe; the backend's first message is
    /// its decision.
    pub(super) async fn proxy_subscribe_stream(
        &self,
        backend: &Backend,
        request: &SubscribeRequest,
        bidirectional: bool,
    ) -> Outcome<(ProxiedSubscription, (StreamPublications, Option<StreamPublisher>))> {
        let call = self.subscribe_request(backend, request);
        let opened = match backend.subscribe_stream(call, bidirectional, &self.call_context()).await {
            Ok(opened) => opened,
            Err(error) => {
                tracing::error!(client = %self.handle.client, %error, "subscribe stream proxy failed");
                return Ok(Err(ClientError::INTERNAL));
            }
        };
        let response = opened.response;
        Ok(match verdict(response.result, response.error, response.disconnect)? {
            Ok(result) => ProxiedSubscription::try_from(result.unwrap_or_default())
                .map(|granted| (granted, (opened.publications, opened.publisher))),
            Err(error) => Err(error),
        })
    }

    /// The publish proxy's decision on a client's publication.
    pub(super) async fn proxy_publish(
        &self,
        backend: &Backend,
        channel: &str,
        data: &Bytes,
    ) -> Outcome<ProxiedPublication> {
        let (raw, b64data) = payload(backend, data);
        let call = pb::PublishRequest {
            user: self.user().to_owned(),
            channel: channel.to_owned(),
            data: raw,
            b64data,
            meta: self.meta_for(backend),
            ..self.request(backend)
        };
        let result = match self.ask(backend, "publish", call).await? {
            Ok(result) => result.unwrap_or_default(),
            Err(error) => return Ok(Err(error)),
        };
        let rewritten = match decoded(result.data, &result.b64data) {
            Ok(rewritten) => rewritten,
            Err(error) => return Ok(Err(error)),
        };
        Ok(Ok(ProxiedPublication {
            data: if rewritten.is_empty() { data.clone() } else { rewritten },
            skip_history: result.skip_history,
            idempotency_key: result.idempotency_key,
            tags: result.tags,
            delta: result.delta,
            version: result.version,
            version_epoch: result.version_epoch,
        }))
    }

    /// An RPC the backend implements; its result data.
    /// The RPC proxy's answer, as work that owns what it needs: it may run beside the session
    /// (`client.concurrency`).
    pub(super) fn proxy_rpc(
        &self,
        backend: Arc<Backend>,
        method: &str,
        data: &Bytes,
    ) -> impl Future<Output = Outcome<Bytes>> + Send + 'static {
        let (raw, b64data) = payload(&backend, data);
        let call = pb::RpcRequest {
            user: self.user().to_owned(),
            method: method.to_owned(),
            data: raw,
            b64data,
            meta: self.meta_for(&backend),
            ..self.request(&backend)
        };
        let (headers, source, emulated) =
            (self.transport.headers.clone(), self.transport.header_source, self.emulated_headers.clone());
        let client = self.handle.client.clone();
        async move {
            let context = CallContext { headers: &headers, source, emulated: &emulated };
            let response = match call_logged(&backend, "rpc", call, &context, &client).await {
                Ok(response) => response,
                Err(error) => return Ok(Err(error)),
            };
            let (result, error, disconnect) = pb::RpcRequest::into_verdict(response);
            Ok(match verdict(result, error, disconnect)? {
                Ok(Some(result)) => decoded(result.data, &result.b64data),
                Ok(None) => Ok(Bytes::new()),
                Err(error) => Err(error),
            })
        }
    }

    /// The sub refresh proxy's decision when a subscription expires (same rules as
    /// [`Self::proxy_refresh`]).
    pub(super) async fn proxy_sub_refresh(&self, backend: &Backend, channel: &str) -> Refreshed {
        let call = pb::SubRefreshRequest {
            user: self.user().to_owned(),
            channel: channel.to_owned(),
            meta: self.meta_for(backend),
            ..self.request(backend)
        };
        let Ok(response) = self.call_backend(backend, "sub_refresh", call).await else {
            return Refreshed::retry_later();
        };
        let Some(result) = response.result.filter(|result| !result.expired) else {
            return Refreshed::Expired;
        };
        Refreshed::until(result.expire_at, result.info, &result.b64info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refresh_answer_already_past_is_an_expiry_not_a_retry_loop() {
        let now = unix_now();
        assert!(matches!(Refreshed::until(now - 1, Bytes::new(), ""), Refreshed::Expired));
        assert!(matches!(Refreshed::until(i64::MIN, Bytes::new(), ""), Refreshed::Until(None, None)));
        assert!(matches!(Refreshed::until(now + 60, Bytes::new(), ""), Refreshed::Until(Some(_), None)));
        assert!(matches!(Refreshed::until(0, Bytes::new(), ""), Refreshed::Until(None, None)));
    }

    #[test]
    fn ttls_saturate_instead_of_overflowing() {
        use super::super::commands::ttl_of;
        assert_eq!(ttl_of(i64::MIN), 0);
        assert_eq!(ttl_of(i64::MAX), u32::MAX);
    }
}
