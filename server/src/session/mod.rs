//! One client connection, independent of its transport (Centrifugo's `Client`).
//!
//! A session is an actor: [`Session::run`] is a single task that `select!`s over a closed set
//! of inputs — incoming frames from the transport, control requests from the server API,
//! its timers (stale, ping/pong, expiry, presence refresh) and being closed from outside — and
//! handles them one at a time, so its state needs no locks. What others must reach without
//! waiting (the outbound queue, per-channel delivery state) lives in the shared
//! [`SessionHandle`] (see [`crate::hub`]).
//!
//! - `connect.rs`: the connect handshake, step by step;
//! - `commands.rs`: dispatch, and the commands that need no file of their own;
//! - `subscribe.rs`: the subscribe command (permissions, tokens);
//! - `subscriptions.rs`: subscription set-up (positioning, recovery) and teardown;
//! - `control.rs`: requests from the server API, applied in the session task;
//! - `map.rs`: map subscriptions, paged through state and stream before they go live;
//! - `proxied.rs`: the calls to the application backend (connect, refresh, subscribe,
//!   publish, rpc and sub refresh proxies) and how their answers apply.
//!
//! A transport only builds a [`TransportInfo`], feeds frames in as [`Inbound`] and runs a
//! writer that drains [`SessionHandle::outbound`].

mod commands;
mod connect;
mod control;
mod map;
mod map_write;
mod proxied;
mod shared_poll;
mod subscribe;
mod subscriptions;
mod tokens;

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, Stream, StreamExt};
use rand::Rng;
use tokio::time::Instant;

use crate::common::unix_now;
use crate::errors::{ClientError, Disconnect};
use crate::hub::{ChannelMap, SessionHandle};
use crate::metrics::{FrameType, NodeAction};
use crate::node::Node;
use crate::proto::client::{Command, ConnectRequest, Reply};
use crate::protocol::{self, ProtocolType};
use crate::proxy::HeaderSource;

/// Queued reply bytes after which the session lets the writer run before the next command.
const YIELD_AFTER_PENDING_BYTES: usize = 64 * 1024;

/// What a transport tells the session.
#[derive(Debug)]
pub enum Inbound {
    /// One transport frame (may hold several commands).
    Frame(Bytes),
    /// One command already decoded by a transport that frames one message at a time.
    Command(Box<Command>),
    /// The transport could not decode what the peer sent (closes with 3501).
    Malformed,
    /// The peer sent a message over the size limit (close 1009).
    TooBig,
    /// The peer closed the connection or it failed.
    Closed,
}

impl Inbound {
    /// The one command a unidirectional client sends: its connect request.
    pub fn connect(request: ConnectRequest) -> Self {
        Self::Command(Box::new(Command { id: 1, connect: Some(request), ..Default::default() }))
    }

    /// [`Self::connect`] from a JSON connect request (an empty one is an empty request);
    /// anything else is malformed (3501).
    pub fn connect_json(json: &[u8]) -> Self {
        match protocol::decode_connect_request(json) {
            Some(request) => Self::connect(request),
            None => Self::Malformed,
        }
    }
}

/// Whether a transport carries commands both ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Bidirectional,
    /// Server-to-client only: the connect request arrives once as a command, the connect
    /// result goes out as a `connect` push, connect errors become disconnects, no pongs are
    /// expected (the transport writes pushes bare, see `protocol::reply_into_push`).
    Unidirectional,
}

/// Static facts about the transport a session runs on.
#[derive(Debug, Clone)]
pub struct TransportInfo {
    pub name: &'static str,
    pub protocol: ProtocolType,
    /// Application-level ping/pong (`{}` / `0x00`); off when the transport pings natively.
    pub app_ping: bool,
    /// See [`Direction::Unidirectional`].
    pub unidirectional: bool,
    /// Emulated bidirectional transports: the session id clients quote in their command
    /// requests, announced in the connect result with this node's id.
    pub emulation_session: Option<String>,
    /// The request headers (or the request metadata of a stream transport) of the connection that some proxy forwards;
    /// see `proxy::capture_headers`.
    pub headers: Vec<(String, String)>,
    pub header_source: HeaderSource,
}

impl TransportInfo {
    /// A transport with application-level pings.
    pub fn new(name: &'static str, protocol: ProtocolType, direction: Direction) -> Self {
        Self {
            name,
            protocol,
            app_ping: true,
            unidirectional: direction == Direction::Unidirectional,
            emulation_session: None,
            headers: Vec::new(),
            header_source: HeaderSource::Http,
        }
    }

    /// The connection's request headers the proxies forward, and where they came from.
    pub fn with_headers(mut self, headers: Vec<(String, String)>, source: HeaderSource) -> Self {
        self.headers = headers;
        self.header_source = source;
        self
    }

    /// The transport pings natively, so the protocol's pings are off.
    pub fn with_native_ping(mut self) -> Self {
        self.app_ping = false;
        self
    }

    /// An emulated session, known by `session_id` to the requests carrying its commands.
    pub fn emulated(mut self, session_id: String) -> Self {
        self.emulation_session = Some(session_id);
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the connect command.
    Connecting,
    Connected,
    /// Connect was answered with an error; any further command closes with 3501.
    Rejected,
}

/// One subscription as the session tracks it.
#[derive(Debug, Clone)]
struct Subscription {
    /// Subscribed by the server (token `channels`/`subs` or API), not by the client.
    server_side: bool,
    presence: bool,
    /// Publish join/leave for this subscriber.
    join_leave: bool,
    chan_info: Bytes,
    /// Unix seconds after which the subscription must have been refreshed.
    expires_at: Option<i64>,
    /// The sub refresh proxy extends it, not the client.
    proxy_refresh: bool,
    /// Its subscribe stream, for channels of a subscribe stream proxy.
    stream: Option<Arc<subscriptions::StreamGuard>>,
    /// What it does with map channels: a map channel itself, presence entries in map_clients
    /// and map_users channels (`None` when neither).
    map: Option<Arc<MapSide>>,
    /// A shared-poll subscription: its keys are in the node's keyed fan-out, not the channel's.
    keyed: bool,
}

/// A subscription's dealings with map channels besides its own delivery.
#[derive(Debug)]
struct MapSide {
    /// The subscription is to a map channel (the map broker delivers it).
    map_channel: bool,
    /// The map_clients channel listing this connection, and the map_users one listing its user.
    clients_presence: Option<String>,
    users_presence: Option<String>,
    /// Remove the key named by this connection's id when it unsubscribes.
    remove_client_key: bool,
}

impl MapSide {
    /// What a subscription to `channel` in the namespace of `resolved` does with maps.
    fn of(resolved: &crate::channel::ResolvedChannel, channel: &str, map_channel: bool) -> Self {
        let options = &resolved.options;
        let prefixed = |prefix: &str| (!prefix.is_empty()).then(|| format!("{prefix}{channel}"));
        Self {
            map_channel,
            clients_presence: prefixed(&options.map_clients_presence_channel_prefix),
            users_presence: prefixed(&options.map_users_presence_channel_prefix),
            remove_client_key: map_channel && options.map.remove_client_on_unsubscribe,
        }
    }

    /// `Some` when there is anything to do.
    fn needed(self) -> Option<Arc<Self>> {
        let needed = self.map_channel || self.clients_presence.is_some() || self.users_presence.is_some();
        needed.then(|| Arc::new(self))
    }
}

/// Connection-level timers.
#[derive(Debug)]
struct Timers {
    stale_at: Instant,
    next_ping: Option<Instant>,
    pong_deadline: Option<Instant>,
    next_presence: Option<Instant>,
}

/// A client session; see the module docs.
pub struct Session {
    node: Arc<Node>,
    handle: Arc<SessionHandle>,
    transport: TransportInfo,
    phase: Phase,
    info: Bytes,
    /// Unix seconds when the connection credentials expire.
    expires_at: Option<i64>,
    /// The client refreshes its token itself (JWT case); otherwise the refresh proxy does.
    client_refresh: bool,
    /// Connection meta from the token or the connect proxy; never sent to clients.
    meta: Bytes,
    /// The client's emulated headers, kept only when some proxy forwards them.
    emulated_headers: BTreeMap<String, String>,
    subs: ChannelMap<Subscription>,
    /// Map subscribes in progress (between their first request and going live).
    map_flows: ChannelMap<Box<map::MapFlow>>,
    timers: Timers,
    /// Server-side channels granted by the connection token (compared on refresh).
    token_channels: Vec<String>,
    /// Set once [`Session::cleanup`] ran; otherwise `Drop` cleans up.
    cleaned_up: bool,
    /// `client.concurrency` above 1: the slots of commands running beside the session.
    concurrency: Option<Arc<tokio::sync::Semaphore>>,
    /// Told how the connect ended, for a transport that answers only then.
    connect_report: Option<tokio::sync::oneshot::Sender<ConnectOutcome>>,
    /// The kind of command being handled: names the replies that do not say it themselves
    /// (errors) in the metrics.
    current_command: FrameType,
    /// This connection's `centrifugo_client_connections_inflight` series, once connected.
    connection_inflight: Option<Arc<crate::metrics::Gauge>>,
    /// The `client_name` label of this connection's metrics.
    client_name_label: &'static str,
}

/// How a connect ended, as the transport needs it to answer before it streams
/// (`connect_code_to_http_response`): the error's or disconnect's code and text, untransformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectOutcome {
    Connected,
    Refused { code: u32, text: String },
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("client", &self.handle.client).finish_non_exhaustive()
    }
}

impl Session {
    /// Creates a session; the transport runs a writer over the returned handle's outbound queue
    /// and passes frames to [`Session::run`].
    pub fn new(node: Arc<Node>, transport: TransportInfo) -> (Self, Arc<SessionHandle>) {
        let traffic = node.metrics.transport(transport.name);
        traffic.open.add(1);
        let handle = SessionHandle::new(transport.protocol, node.config.client.queue_max_size, traffic);
        let stale_at = Instant::now() + node.config.client.stale_close_delay.0;
        let node_concurrency = node.config.client.concurrency as usize;
        let session = Self {
            node,
            handle: handle.clone(),
            transport,
            phase: Phase::Connecting,
            info: Bytes::new(),
            expires_at: None,
            client_refresh: false,
            meta: Bytes::new(),
            emulated_headers: BTreeMap::new(),
            subs: ChannelMap::new(),
            map_flows: ChannelMap::new(),
            timers: Timers { stale_at, next_ping: None, pong_deadline: None, next_presence: None },
            token_channels: Vec::new(),
            cleaned_up: false,
            concurrency: (node_concurrency > 1)
                .then(|| Arc::new(tokio::sync::Semaphore::new(node_concurrency))),
            connect_report: None,
            current_command: FrameType::Unknown,
            connection_inflight: None,
            client_name_label: "unnamed",
        };
        (session, handle)
    }

    /// Has the session say how its connect ended (once, whatever the outcome).
    pub fn report_connect(&mut self) -> tokio::sync::oneshot::Receiver<ConnectOutcome> {
        let (report, outcome) = tokio::sync::oneshot::channel();
        self.connect_report = Some(report);
        outcome
    }

    /// A command's outcome, or a panic while handling it (S13): logged and counted, and only
    /// this session ends (3004); the locks it may have held do not poison (see
    /// [`crate::sync`]).
    fn survived(&self, handled: std::thread::Result<Result<(), Disconnect>>) -> Result<(), Disconnect> {
        handled.unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(client = %self.handle.client, %message, "session panicked; closing it with 3004");
            self.node.count_session_panic();
            Err(Disconnect::server_error())
        })
    }

    /// Runs the session until it is closed; returns why. Cleans up subscriptions, presence and
    /// the hub registration before returning.
    pub async fn run<S>(mut self, mut frames: S) -> Disconnect
    where
        S: Stream<Item = Inbound> + Unpin,
    {
        let handle = self.handle.clone();
        let shutdown = self.node.shutdown.clone();
        let disconnect = loop {
            let deadline = self.next_deadline();
            tokio::select! {
                biased;
                _ = handle.closed() => {
                    break handle.outbound.closed_with().unwrap_or_else(Disconnect::connection_closed);
                }
                _ = shutdown.cancelled() => break Disconnect::shutdown(),
                inbound = frames.next() => match inbound {
                    Some(Inbound::Frame(frame)) => {
                        // Boxed: command handling is a deep future; keeping it out of the loop's
                        // own state keeps an idle connection small.
                        let handled = AssertUnwindSafe(Box::pin(self.handle_frame(&frame))).catch_unwind().await;
                        if let Err(disconnect) = self.survived(handled) {
                            break disconnect;
                        }
                    }
                    Some(Inbound::Command(command)) => {
                        let handled = AssertUnwindSafe(Box::pin(self.handle_decoded(*command))).catch_unwind().await;
                        if let Err(disconnect) = self.survived(handled) {
                            break disconnect;
                        }
                    }
                    Some(Inbound::Malformed) => break Disconnect::bad_request(),
                    Some(Inbound::TooBig) => break Disconnect::custom(1009, "message too big"),
                    Some(Inbound::Closed) | None => break Disconnect::connection_closed(),
                },
                control = handle.next_control() => {
                    if let Err(disconnect) = Box::pin(self.handle_control(control)).await {
                        break disconnect;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    if let Err(disconnect) = Box::pin(self.on_timer()).await {
                        break disconnect;
                    }
                }
            }
        };
        self.handle.disconnect(disconnect.clone());
        if self.phase == Phase::Connected
            && let Some(lifecycle) = &self.node.lifecycle
        {
            // The close the client was given: an earlier one (a shutdown's 3001 racing the
            // client's goodbye) wins over the loop's.
            let given = self.handle.outbound.closed_with().unwrap_or_else(|| disconnect.clone());
            lifecycle.disconnected(&self.handle.client, self.user(), given.code, &given.reason);
        }
        // 3000 is the client going away, which Centrifugo does not count either.
        if disconnect.code != 3000 {
            self.node.metrics.server_disconnects.get(&[&disconnect.code.to_string()]).inc();
        }
        Box::pin(self.cleanup()).await;
        disconnect
    }

    /// Queues a reply to the command being handled.
    fn send_reply(&self, reply: &Reply) {
        if let Some(error) = &reply.error {
            self.node.metrics.reply_error(self.current_command, error.code);
        }
        self.handle.send_reply(reply, self.current_command);
    }

    fn send_error(&self, id: u32, error: &ClientError) {
        self.send_reply(&commands::error_reply(id, error));
    }

    fn user(&self) -> &str {
        self.handle.user()
    }

    async fn handle_frame(&mut self, frame: &[u8]) -> Result<(), Disconnect> {
        if self.phase == Phase::Rejected {
            return Err(Disconnect::bad_request());
        }
        let mut commands = Vec::new();
        // Like a stream decoder: commands before a malformed one still run, then 3501.
        let decoded = protocol::decode_commands(self.handle.protocol, frame, &mut commands);
        if let Err(error) = &decoded {
            tracing::debug!(transport = self.transport.name, client = %self.handle.client, %error, "bad frame");
        }
        let count = commands.len().max(1);
        for command in commands {
            // The size of each command of a batch, as near as the frame tells it.
            self.handle_counted(command, frame.len() / count).await?;
            if self.phase == Phase::Rejected {
                break;
            }
            // Let the writer drain when replies pile up: a long batch of commands must not
            // fill the queue faster than it can be written and get a prompt client closed as
            // slow. Yielding only past a threshold keeps the common case (a reply or two)
            // from rescheduling the session behind every other ready task.
            if self.handle.outbound.pending_bytes() > YIELD_AFTER_PENDING_BYTES {
                tokio::task::yield_now().await;
            }
        }
        decoded.map_err(|_| Disconnect::bad_request())
    }

    /// Handles one command of `size` bytes, counted and timed in the metrics.
    async fn handle_counted(&mut self, command: Command, size: usize) -> Result<(), Disconnect> {
        if !crate::metrics::COUNTING {
            return self.handle_command(command).await;
        }
        let kind = protocol::command_frame_type(&command);
        self.handle.traffic.received(kind, size);
        if kind == FrameType::ClientPong {
            return self.handle_command(command).await;
        }
        self.current_command = kind;
        let started = std::time::Instant::now();
        let handled = self.handle_command(command).await;
        self.node.metrics.client_command(kind, started);
        handled
    }

    /// One command decoded by the transport.
    async fn handle_decoded(&mut self, command: Command) -> Result<(), Disconnect> {
        if self.phase == Phase::Rejected {
            return Err(Disconnect::bad_request());
        }
        let size = if crate::metrics::COUNTING { prost::Message::encoded_len(&command) } else { 0 };
        self.handle_counted(command, size).await?;
        // Same reason as in `handle_frame`: a burst of commands must not outrun the writer.
        if self.handle.outbound.pending_bytes() > YIELD_AFTER_PENDING_BYTES {
            tokio::task::yield_now().await;
        }
        Ok(())
    }

    fn next_deadline(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        let mut deadline = far;
        let mut consider = |at: Option<Instant>| {
            if let Some(at) = at {
                deadline = deadline.min(at);
            }
        };
        if self.phase != Phase::Connected {
            consider(Some(self.timers.stale_at));
            return deadline;
        }
        consider(self.timers.next_ping);
        consider(self.timers.pong_deadline);
        consider(self.timers.next_presence);
        let client = &self.node.config.client;
        // A client refreshing itself gets a grace delay; the refresh proxy is asked on time.
        let close_delay = if self.client_refresh { client.expired_close_delay.0 } else { Duration::ZERO };
        consider(self.expires_at.map(|at| instant_at(at, close_delay)));
        for sub in self.subs.values() {
            let delay = if sub.proxy_refresh { Duration::ZERO } else { client.expired_sub_close_delay.0 };
            consider(sub.expires_at.map(|at| instant_at(at, delay)));
        }
        deadline
    }

    async fn on_timer(&mut self) -> Result<(), Disconnect> {
        let now = Instant::now();
        if self.phase != Phase::Connected {
            if now >= self.timers.stale_at {
                return Err(Disconnect::stale());
            }
            return Ok(());
        }
        if self.timers.pong_deadline.is_some_and(|at| now >= at) {
            return Err(Disconnect::no_pong());
        }
        if self.timers.next_ping.is_some_and(|at| now >= at) {
            self.handle.send_reply(&Reply::default(), FrameType::ServerPing);
            let client = &self.node.config.client;
            let expects_pong = !client.pong_timeout.is_zero() && !self.transport.unidirectional;
            if self.timers.pong_deadline.is_none() && expects_pong {
                self.timers.pong_deadline = Some(now + client.pong_timeout.0);
            }
            self.timers.next_ping = Some(now + client.ping_interval.0);
        }
        self.check_expiry().await?;
        self.check_subscription_expiry().await?;
        if self.timers.next_presence.is_some_and(|at| now >= at) {
            self.refresh_presence().await;
            self.timers.next_presence = Some(now + self.node.config.client.presence_update_interval.0);
        }
        Ok(())
    }

    /// Connection expiry: past the grace delay a self-refreshing client is closed (3005); on
    /// time, the refresh proxy decides.
    async fn check_expiry(&mut self) -> Result<(), Disconnect> {
        let Some(at) = self.expires_at else {
            return Ok(());
        };
        let unix = unix_now();
        if self.client_refresh {
            let delay = self.node.config.client.expired_close_delay.0.as_secs() as i64;
            return if unix >= at.saturating_add(delay) { Err(Disconnect::expired()) } else { Ok(()) };
        }
        if unix < at {
            return Ok(());
        }
        let Some(backend) = self.node.proxies.refresh.clone() else {
            return Err(Disconnect::expired());
        };
        match self.proxy_refresh(&backend).await {
            proxied::Refreshed::Expired => Err(Disconnect::expired()),
            proxied::Refreshed::Until(expires_at, info) => {
                self.expires_at = expires_at;
                if let Some(info) = info {
                    self.info = info;
                }
                Ok(())
            }
        }
    }

    /// Subscription expiry: past the grace delay (on time for those the sub refresh proxy
    /// extends) a client-side subscription is unsubscribed (2501), a server-side one closes
    /// the connection.
    async fn check_subscription_expiry(&mut self) -> Result<(), Disconnect> {
        let unix = unix_now();
        let delay = self.node.config.client.expired_sub_close_delay.0.as_secs() as i64;
        let expired: Vec<(String, bool, bool)> = self
            .subs
            .iter()
            .filter(|(_, sub)| {
                let grace = if sub.proxy_refresh { 0 } else { delay };
                sub.expires_at.is_some_and(|at| unix >= at.saturating_add(grace))
            })
            .map(|(channel, sub)| (channel.clone(), sub.server_side, sub.proxy_refresh))
            .collect();
        for (channel, server_side, proxy_refresh) in expired {
            if proxy_refresh && self.refresh_subscription(&channel).await {
                continue;
            }
            if server_side {
                return Err(Disconnect::subscription_expired());
            }
            self.unsubscribe_with_push(&channel, crate::errors::unsubscribe::EXPIRED).await;
        }
        Ok(())
    }

    /// Asks the sub refresh proxy to extend `channel`; whether it did.
    async fn refresh_subscription(&mut self, channel: &str) -> bool {
        let backend = self.node.resolve(channel).ok().and_then(|resolved| {
            let options = &resolved.options;
            self.node
                .proxies
                .get(crate::config::ProxyKind::SubRefresh, &options.sub_refresh_proxy_name)
                .cloned()
        });
        let Some(backend) = backend else {
            return false;
        };
        match self.proxy_sub_refresh(&backend, channel).await {
            proxied::Refreshed::Expired => false,
            proxied::Refreshed::Until(expires_at, info) => {
                if let Some(sub) = self.subs.get_mut(channel) {
                    sub.expires_at = expires_at;
                    if let Some(info) = info {
                        sub.chan_info = info;
                    }
                }
                true
            }
        }
    }

    /// Arms the ping timer: the first ping goes out at a random moment in
    /// [interval/2, interval) so that many clients connected at once do not ping in lockstep.
    fn start_connection_timers(&mut self) {
        let client = &self.node.config.client;
        let now = Instant::now();
        if self.transport.app_ping && !client.ping_interval.is_zero() {
            let interval = client.ping_interval.0;
            let half = interval / 2;
            let jitter = rand::rng().random_range(0..=half.as_millis().max(1) as u64);
            self.timers.next_ping = Some(now + half + Duration::from_millis(jitter).min(half));
        }
        self.timers.next_presence = Some(now + client.presence_update_interval.0);
    }

    /// Ping interval in seconds to announce, and whether pongs are expected.
    fn ping_settings(&self) -> (u32, bool) {
        let client = &self.node.config.client;
        if !self.transport.app_ping || client.ping_interval.is_zero() {
            return (0, false);
        }
        // A unidirectional client cannot answer.
        let pong = !client.pong_timeout.is_zero() && !self.transport.unidirectional;
        (client.ping_interval.0.as_secs() as u32, pong)
    }

    async fn refresh_presence(&self) {
        for (channel, sub) in &self.subs {
            if sub.presence {
                let info = self.client_info(sub);
                if let Err(error) = self.node.add_presence(channel, &info).await {
                    tracing::warn!(%channel, %error, "presence refresh failed");
                }
            }
            if let Some(map) = &sub.map {
                self.list_in_map_presence(map, sub).await;
            }
        }
        self.drop_expired_keys();
    }

    async fn cleanup(&mut self) {
        let flows: Vec<String> = self.map_flows.keys().cloned().collect();
        for channel in flows {
            self.drop_map_flow(&channel).await;
        }
        let channels: Vec<String> = self.subs.keys().cloned().collect();
        for channel in channels {
            self.remove_subscription(&channel).await;
        }
        if self.phase == Phase::Connected {
            self.node.hub.remove_connection(&self.handle);
            self.node.metrics.action(NodeAction::RemoveClient);
        }
        self.cleaned_up = true;
    }
}

/// A session task that ends without [`Session::cleanup`] (a panic, or its task being dropped)
/// must not leave the client in the hub or in presence: undo what is left in the background.
impl Drop for Session {
    fn drop(&mut self) {
        self.handle.traffic.open.add(-1);
        if let Some(inflight) = &self.connection_inflight {
            inflight.add(-1);
        }
        if self.cleaned_up {
            return;
        }
        self.handle.disconnect(Disconnect::server_error());
        let channels: Vec<String> = self.subs.keys().cloned().collect();
        let mut teardowns: Vec<_> = channels.iter().filter_map(|c| self.detach_subscription(c)).collect();
        for (channel, flow) in self.map_flows.iter() {
            if flow.registered() {
                self.handle.end_delivery(channel);
                teardowns.push(subscriptions::Teardown::registration(channel));
            }
        }
        if self.phase == Phase::Connected {
            self.node.hub.remove_connection(&self.handle);
            self.node.metrics.action(NodeAction::RemoveClient);
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (node, handle) = (self.node.clone(), self.handle.clone());
            runtime.spawn(async move {
                for teardown in teardowns {
                    teardown.run(&node, &handle).await;
                }
            });
        }
    }
}

/// The instant `delay` after unix time `at` (seconds).
fn instant_at(at: i64, delay: Duration) -> Instant {
    // Far-future expiries are capped so instant arithmetic cannot overflow.
    const MAX_AHEAD: u64 = 10 * 365 * 24 * 3600;
    let remaining = at.saturating_sub(unix_now()).clamp(0, MAX_AHEAD as i64) as u64;
    Instant::now() + Duration::from_secs(remaining) + delay.min(Duration::from_secs(MAX_AHEAD))
}

#[cfg(test)]
mod tests;
