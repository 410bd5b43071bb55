//! The connect handshake, in the order Centrifugo runs it: credentials (a token, the connect
//! proxy's answer, or anonymous),
//! connection limits, the server-side channels to join, registration in the hub, joining those
//! channels, the connect reply, then each server-side subscription's buffered live messages.
//!
//! Each step returns `Err(Disconnect)` for what closes the connection and `Ok(Err(error))` for
//! a connect error reply (which a unidirectional client gets as a disconnect instead).

use std::collections::BTreeMap;

use bytes::Bytes;

use super::commands::{Outcome, ttl_of};
use super::subscriptions::SubscribeSpec;
use super::{ConnectOutcome, Phase, Session};
use crate::auth::{Expiry, ServerSubscription, TokenError};
use crate::channel::ResolvedChannel;
use crate::common::{StreamPosition, unix_millis, unix_now};
use crate::errors::{ClientError, Disconnect};
use crate::hub::LiveDelivery;
use crate::proto::client::{Connect, ConnectRequest, ConnectResult, Push, Reply};

/// Who is connecting, once the credentials are checked.
struct Credentials {
    user: String,
    /// Unix seconds when the credentials expire.
    expires_at: Option<i64>,
    info: Bytes,
    /// Server-side subscriptions granted by the token or the connect proxy.
    subs: BTreeMap<String, ServerSubscription>,
    /// The connect proxy's `data` for the connect reply.
    data: Bytes,
    meta: Bytes,
    /// From the connect proxy: the client's requested channels are not joined (the backend
    /// chose the server-side channels).
    from_proxy: bool,
    /// From `client.user_id_http_header`: a bare user id, so no server-side channels at all
    /// (neither requested ones nor the personal channel), as in Centrifugo.
    from_header: bool,
}

/// A server-side channel to join at connect, resolved.
type ServerChannel = (String, ResolvedChannel, ServerSubscription);

impl Session {
    pub(super) async fn connect(&mut self, id: u32, request: ConnectRequest) -> Result<(), Disconnect> {
        if self.phase != Phase::Connecting {
            return Err(Disconnect::bad_request());
        }
        let outcome = self.authenticate(id, request).await;
        if let Some(report) = self.connect_report.take() {
            let _ = report.send(match &outcome {
                Ok(Ok(())) => ConnectOutcome::Connected,
                Ok(Err(error)) => {
                    ConnectOutcome::Refused { code: error.code, text: error.message.to_string() }
                }
                Err(disconnect) => {
                    ConnectOutcome::Refused { code: disconnect.code, text: disconnect.reason.clone() }
                }
            });
        }
        match outcome? {
            Ok(()) => Ok(()),
            // A unidirectional client cannot read an error reply: it gets a disconnect.
            Err(error) if self.transport.unidirectional => Err(self.uni_connect_error(&error)),
            Err(error) => {
                self.phase = Phase::Rejected;
                self.send_error(id, &error);
                Ok(())
            }
        }
    }

    async fn authenticate(&mut self, id: u32, request: ConnectRequest) -> Outcome<()> {
        // Kept for the proxies (this one and later ones) only when some proxy forwards them.
        if self.node.proxies.forwards_emulated() {
            self.emulated_headers = request.headers.clone();
        }
        let mut credentials = match self.credentials(&request).await? {
            Ok(credentials) => credentials,
            Err(error) => return Ok(Err(error)),
        };
        self.check_connection_limits(&credentials.user)?;
        let token_subs = std::mem::take(&mut credentials.subs);
        let token_channels: Vec<String> = token_subs.keys().cloned().collect();
        let channels = match self.server_channels(&request, &credentials, token_subs)? {
            Ok(channels) => channels,
            Err(error) => return Ok(Err(error)),
        };
        let data = std::mem::take(&mut credentials.data);
        self.register(credentials, token_channels);
        self.count_connection(&request);
        self.record_connected(&request);
        let mut result = self.connect_result();
        result.data = data;
        let (result, established) = self.join_server_channels(result, channels, &request).await?;
        self.send_connect_reply(id, result);
        // The connect reply goes out first; then each channel's buffered live messages.
        for (channel, live) in established {
            self.handle.complete_delivery(&channel, Vec::new(), live);
        }
        Ok(Ok(()))
    }

    /// Step 1: a valid connection token; without one the connect proxy's answer (when
    /// configured); else an anonymous connection where the config allows one (3501 if not).
    async fn credentials(&self, request: &ConnectRequest) -> Outcome<Credentials> {
        let client = &self.node.config.client;
        let now = unix_now();
        let anonymous = Credentials {
            user: String::new(),
            expires_at: None,
            info: Bytes::new(),
            subs: BTreeMap::new(),
            data: Bytes::new(),
            meta: Bytes::new(),
            from_proxy: false,
            from_header: false,
        };
        let (mut credentials, expiry) = if !request.token.is_empty() {
            match self.token_credentials(request, now).await? {
                Ok(found) => found,
                Err(error) => return Ok(Err(error)),
            }
        } else if let Some(backend) = self.node.proxies.connect.clone() {
            match self.proxy_connect(&backend, request).await? {
                Ok(Some(identity)) => proxied_credentials(identity),
                Ok(None) => (anonymous, Expiry::Never),
                Err(error) => return Ok(Err(error)),
            }
        } else {
            (anonymous, Expiry::Never)
        };
        let no_identity = request.token.is_empty() && !credentials.from_proxy;
        if no_identity && !client.allow_anonymous_connect_without_token && !client.insecure {
            // The last resort: a user id a trusted gateway put in a request header.
            let Some(user) = self.header_user() else {
                return Err(Disconnect::bad_request());
            };
            (credentials.user, credentials.from_header) = (user, true);
        }
        credentials.expires_at = match expiry {
            Expiry::Never => None,
            Expiry::At(at) if at <= now => return Ok(Err(ClientError::EXPIRED)),
            Expiry::At(at) => Some(at),
        };
        Ok(Ok(credentials))
    }

    /// The `client.user_id_http_header` of the connection's request (first value, non-empty);
    /// never from a stream transport's metadata.
    fn header_user(&self) -> Option<String> {
        let name = &self.node.config.client.user_id_http_header;
        if name.is_empty() || self.transport.header_source != crate::proxy::HeaderSource::Http {
            return None;
        }
        let name = name.to_ascii_lowercase();
        let (_, value) = self.transport.headers.iter().find(|(header, _)| *header == name)?;
        (!value.is_empty()).then(|| value.clone())
    }

    /// The connection token's credentials.
    async fn token_credentials(&self, request: &ConnectRequest, now: i64) -> Outcome<(Credentials, Expiry)> {
        let claims = match self.verify_connect_token(&request.token, now).await {
            Ok(claims) => claims,
            Err(TokenError::Expired) => return Ok(Err(ClientError::TOKEN_EXPIRED)),
            Err(TokenError::Invalid(reason)) => {
                tracing::info!(client = %self.handle.client, %reason, "invalid connection token");
                return Err(Disconnect::invalid_token());
            }
        };
        if claims.user.is_empty() && self.node.config.client.disallow_anonymous_connection_tokens {
            return Err(Disconnect::permission_denied());
        }
        let credentials = Credentials {
            user: claims.user,
            expires_at: None,
            info: claims.info,
            subs: claims.subs,
            data: Bytes::new(),
            meta: claims.meta,
            from_proxy: false,
            from_header: false,
        };
        Ok(Ok((credentials, claims.expiry)))
    }

    /// Step 2: `client.user_connection_limit` (`client.connection_limit` is checked before the
    /// connection starts, with a 503).
    fn check_connection_limits(&self, user: &str) -> Result<(), Disconnect> {
        let client = &self.node.config.client;
        let hub = &self.node.hub;
        if client.user_connection_limit > 0
            && !user.is_empty()
            && hub.user_connections(user).len() >= client.user_connection_limit as usize
        {
            return Err(Disconnect::connection_limit());
        }
        Ok(())
    }

    /// Step 3: the server-side channels to join: the token's, the user's personal channel,
    /// and the request's `subs` the user may join without a token; all resolved.
    fn server_channels(
        &self,
        request: &ConnectRequest,
        credentials: &Credentials,
        mut subs: BTreeMap<String, ServerSubscription>,
    ) -> Outcome<Vec<ServerChannel>> {
        let user = &credentials.user;
        if credentials.from_header {
            return Ok(Ok(Vec::new()));
        }
        self.add_personal_channel(user, &mut subs);
        if !credentials.from_proxy {
            self.add_requested_channels(request, user, &mut subs)?;
        }
        if subs.len() > self.node.config.client.channel_limit as usize {
            return Err(Disconnect::channel_limit());
        }
        let mut resolved = Vec::with_capacity(subs.len());
        for (channel, sub) in subs {
            match self.node.resolve(&channel) {
                // Map and shared-poll subscriptions are the client's to make (they page or
                // track); the server cannot subscribe a connection to one.
                Ok(rules) if rules.options.is_map() || rules.options.is_shared_poll() => {
                    tracing::warn!(%channel, "not a stream channel: skipped as a server-side subscription");
                }
                Ok(channel_rules) => resolved.push((channel, channel_rules, sub)),
                Err(error) => return Ok(Err(error)),
            }
        }
        Ok(Ok(resolved))
    }

    /// `client.subscribe_to_user_personal_channel`; with `single_connection` the user's other
    /// connections on this node are closed.
    fn add_personal_channel(&self, user: &str, subs: &mut BTreeMap<String, ServerSubscription>) {
        let personal = &self.node.config.client.subscribe_to_user_personal_channel;
        if !personal.enabled || user.is_empty() {
            return;
        }
        let channel = self.node.rules.personal_channel(&personal.personal_channel_namespace, user);
        subs.entry(channel).or_default();
        if personal.single_connection {
            for other in self.node.hub.user_connections(user) {
                other.disconnect(Disconnect::connection_limit());
            }
        }
    }

    /// `ConnectRequest.subs` lists server-side subscriptions the client had (with positions to
    /// recover) or, on unidirectional transports, channels it asks to join. As in Centrifugo,
    /// those the user may subscribe to without a token are joined, others are skipped, and a
    /// channel in an unknown namespace is a bad request.
    fn add_requested_channels(
        &self,
        request: &ConnectRequest,
        user: &str,
        subs: &mut BTreeMap<String, ServerSubscription>,
    ) -> Result<(), Disconnect> {
        for channel in request.subs.keys() {
            if subs.contains_key(channel) {
                continue;
            }
            match self.node.resolve(channel) {
                Ok(resolved) => {
                    if !resolved.private && self.tokenless_subscribe_allowed(channel, &resolved.options, user)
                    {
                        subs.insert(channel.clone(), Default::default());
                    }
                }
                Err(error) if error.code == ClientError::UNKNOWN_CHANNEL.code => {
                    return Err(Disconnect::bad_request());
                }
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// Step 4: the session is connected: it joins the hub and its timers start. With a
    /// refresh proxy the server refreshes the connection, not the client.
    fn register(&mut self, credentials: Credentials, token_channels: Vec<String>) {
        self.handle.set_user(credentials.user);
        self.token_channels = token_channels;
        self.info = credentials.info;
        self.meta = credentials.meta;
        self.expires_at = credentials.expires_at;
        self.client_refresh = credentials.expires_at.is_some() && self.node.proxies.refresh.is_none();

        self.phase = Phase::Connected;
        self.node.hub.add_connection(&self.handle);
        self.node.metrics.action(crate::metrics::NodeAction::AddClient);
        self.start_connection_timers();
    }

    /// Tells the lifecycle events (when on) that this client is connected.
    fn record_connected(&self, request: &ConnectRequest) {
        let Some(lifecycle) = &self.node.lifecycle else { return };
        let protocol = match self.handle.protocol {
            crate::protocol::ProtocolType::Json => "json",
            crate::protocol::ProtocolType::Protobuf => "protobuf",
        };
        let connected = crate::proto::lifecycle::Connected {
            transport: self.transport.name.to_owned(),
            protocol: protocol.to_owned(),
            name: request.name.clone(),
            version: request.version.clone(),
        };
        lifecycle.connected(&self.handle.client, self.user(), connected);
    }

    /// Counts the connection in `centrifugo_client_connections_accepted` and `_inflight` (the
    /// latter until it ends).
    fn count_connection(&mut self, request: &ConnectRequest) {
        self.client_name_label = crate::metrics::client_name_label(&request.name);
        let metrics = &self.node.metrics;
        let labels = [
            "",
            crate::metrics::client_name_label(&request.name),
            crate::metrics::client_version_label(&request.version),
            self.transport.name,
        ];
        metrics.connections_accepted.get(&labels).inc();
        let inflight = metrics.connections_inflight.get(&labels);
        inflight.add(1);
        self.connection_inflight = Some(inflight);
    }

    /// Step 5: the connect result, before its server-side subscriptions are added.
    fn connect_result(&self) -> ConnectResult {
        let (ping, pong) = self.ping_settings();
        let emulated = self.transport.emulation_session.is_some();
        ConnectResult {
            client: self.handle.client.clone(),
            version: crate::product_version(),
            expires: self.client_refresh,
            ttl: if self.client_refresh { self.expires_at.map(ttl_of).unwrap_or(0) } else { 0 },
            ping,
            pong,
            // Centrifugo gives unidirectional connections a session id too.
            session: match &self.transport.emulation_session {
                Some(id) => id.clone(),
                None if self.transport.unidirectional => uuid::Uuid::new_v4().to_string(),
                None => String::new(),
            },
            node: if emulated { self.node.uid.clone() } else { String::new() },
            time: if self.node.config.client.connect_include_server_time { unix_millis() } else { 0 },
            ..Default::default()
        }
    }

    /// Step 6: subscribes the server-side channels (recovering where the request asks). Any
    /// failure closes the connection: the client cannot retry one channel alone.
    async fn join_server_channels(
        &mut self,
        mut result: ConnectResult,
        channels: Vec<ServerChannel>,
        request: &ConnectRequest,
    ) -> Result<(ConnectResult, Vec<(String, LiveDelivery)>), Disconnect> {
        let mut established = Vec::with_capacity(channels.len());
        for (channel, resolved, sub) in channels {
            let asked = request.subs.get(&channel);
            let recover = asked
                .filter(|r| r.recover)
                .map(|r| StreamPosition { offset: r.offset, epoch: r.epoch.clone() });
            let delta =
                asked.is_some_and(|r| super::subscriptions::delta_negotiated(&resolved.options, &r.delta));
            let mut spec = SubscribeSpec::server_side(
                &resolved,
                &sub.override_options,
                sub.info,
                sub.data,
                recover,
                None,
            );
            spec.delta = delta;
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
        Ok((result, established))
    }

    /// Step 7: the reply, or on a unidirectional transport the `connect` push.
    fn send_connect_reply(&self, id: u32, result: ConnectResult) {
        if !self.transport.unidirectional {
            self.send_reply(&Reply { id, connect: Some(result), ..Default::default() });
            return;
        }
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
}

/// Credentials from the connect proxy's identity (its `expire_at` 0: no expiry).
fn proxied_credentials(identity: super::proxied::ProxiedIdentity) -> (Credentials, Expiry) {
    let expiry = if identity.expire_at > 0 { Expiry::At(identity.expire_at) } else { Expiry::Never };
    let credentials = Credentials {
        user: identity.user,
        expires_at: None,
        info: identity.info,
        subs: identity.subs,
        data: identity.data,
        meta: identity.meta,
        from_proxy: true,
        from_header: false,
    };
    (credentials, expiry)
}
