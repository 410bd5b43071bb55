//! The cheap, shareable side of a session: what the hub and the node hold.
//!
//! A [`SessionHandle`] owns the outbound queue and the per-channel delivery state that decides,
//! without awaiting, whether a fanned-out message goes into the queue: publications for a
//! subscription still being set up are buffered (and merged after the subscribe reply), stale
//! duplicates on positioned subscriptions are dropped, and a gap closes the connection with
//! 3010 so the SDK reconnects and recovers. Everything else about the session lives in its
//! task (the session layer's `Session`), which the [`Control`] queue reaches.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::Prepared;
use super::channel_map::ChannelMap;
use super::outbound::{Deferred, Outbound};
use super::prepared::Variant;
use crate::auth::SubscribeOverride;
use crate::common::StreamPosition;
use crate::errors::Disconnect;
use crate::metrics::{FrameType, TransportTraffic};
use crate::proto::client::{FilterNode, Reply};
use crate::protocol::{self, EncodeError, ProtocolType};
use crate::sync::{Mutex, Notify};

/// Maximum control requests waiting for one session; more are refused.
const MAX_CONTROL: usize = 64;

/// Maximum publications buffered for one subscription while its subscribe is in progress.
const MAX_PENDING_PER_SUBSCRIPTION: usize = 4096;

/// A server-side subscription requested through the server API.
#[derive(Debug, Clone, Default)]
pub struct ServerSubscribe {
    pub channel: String,
    pub info: Bytes,
    pub data: Bytes,
    /// Unix seconds; 0 = no expiration.
    pub expire_at: i64,
    pub recover_since: Option<StreamPosition>,
    pub override_options: SubscribeOverride,
}

/// Requests to a session's task from outside (server API calls).
#[derive(Debug)]
pub enum Control {
    /// Server-side subscribe (API `subscribe`).
    Subscribe(Box<ServerSubscribe>),
    /// Server-side unsubscribe (API `unsubscribe`), code 2000.
    Unsubscribe { channel: String },
    /// A client-side subscription missed messages: unsubscribe it with code 2500 so the SDK
    /// resubscribes and recovers.
    InsufficientState { channel: String },
    /// Connection refresh (API `refresh`).
    Refresh { expired: bool, expire_at: Option<i64>, info: Option<Bytes> },
}

/// Delivery state of one subscribed channel.
#[derive(Debug)]
pub enum Delivery {
    /// Subscribe in progress: live messages wait here until the reply is queued.
    Pending {
        buffer: Vec<Arc<Prepared>>,
        server_side: bool,
    },
    Live(LiveDelivery),
    /// A shared-poll subscription: updates come per tracked key, never by channel fan-out.
    Keyed(KeyedDelivery),
}

/// The keys a connection tracks in one shared-poll channel.
#[derive(Debug, Default)]
pub struct KeyedDelivery {
    /// Delta compression negotiated.
    pub delta: bool,
    keys: HashMap<String, TrackedKey>,
}

/// What a connection holds of one tracked key.
#[derive(Debug, Clone, Copy, Default)]
struct TrackedKey {
    /// Newest version sent (or the one the client said it has).
    version: u64,
    /// Its track signature expires then (unix seconds; 0: never).
    expires_at: i64,
    /// The connection holds the data of `version` (a patch against it can apply).
    delta_ready: bool,
}

/// State of a subscription that receives live messages.
#[derive(Debug, Clone, Default)]
pub struct LiveDelivery {
    /// Check offsets: drop duplicates, close on gaps.
    pub positioned: bool,
    /// Last offset delivered (or known) on this subscription.
    pub offset: u64,
    pub epoch: String,
    /// Deliver join/leave pushes.
    pub join_leave: bool,
    /// Tags filter: publications whose tags do not match are skipped (offsets still advance).
    pub filter: Option<Arc<FilterNode>>,
    /// Subscribed by the server: a gap needs a reconnect instead of a resubscribe.
    pub server_side: bool,
    /// Delta compression negotiated: publications go as [`Variant::DeltaFull`] or
    /// [`Variant::DeltaPatch`].
    pub delta: bool,
    /// The subscriber holds the previous publication of the stream, so the next positioned
    /// publication may go as a patch against it.
    pub delta_ready: bool,
    /// Map channels: a patch goes against the previous value of the publication's key, which
    /// the subscriber holds from the state it synchronised; ready once the messages buffered
    /// while it subscribed are out (they went whole).
    pub delta_per_key: bool,
}

/// What [`SessionHandle::admit`] decided for one message on a live subscription.
#[derive(Debug, PartialEq, Eq)]
enum Admission {
    Send(Variant),
    /// Already delivered (a duplicate on a positioned subscription), or a join/leave the
    /// subscriber does not want.
    Skip,
    /// Not wanted by the subscriber's tags filter (its offset still counts).
    Filtered,
    /// A gap or an epoch change: the subscription lost state.
    Lost,
}

/// Handle to one connection, shared with the hub.
#[derive(Debug)]
pub struct SessionHandle {
    /// Process-unique key for hub maps.
    pub key: u64,
    /// Client id (UUID) sent in the connect reply.
    pub client: String,
    pub protocol: ProtocolType,
    pub outbound: Outbound,
    /// The frame counters of this connection's transport (commands received; frames sent
    /// count in the outbound queue).
    pub traffic: Arc<TransportTraffic>,
    user: OnceLock<String>,
    deliveries: Mutex<ChannelMap<Delivery>>,
    /// Control requests waiting for the session task (bounded by [`MAX_CONTROL`]). A plain
    /// queue rather than a channel: a tokio mpsc pre-allocates a block per connection, which
    /// idle connections would pay for.
    control: Mutex<VecDeque<Control>>,
    control_ready: Notify,
    closed: CancellationToken,
}

static NEXT_KEY: AtomicU64 = AtomicU64::new(1);

impl SessionHandle {
    pub fn new(protocol: ProtocolType, queue_max_size: usize, traffic: Arc<TransportTraffic>) -> Arc<Self> {
        Arc::new(Self {
            key: NEXT_KEY.fetch_add(1, Ordering::Relaxed),
            client: uuid::Uuid::new_v4().to_string(),
            protocol,
            outbound: Outbound::new(queue_max_size, traffic.clone()),
            traffic,
            user: OnceLock::new(),
            deliveries: Mutex::new(ChannelMap::new()),
            control: Mutex::new(VecDeque::new()),
            control_ready: Notify::new(),
            closed: CancellationToken::new(),
        })
    }

    /// User id; empty before connect and for anonymous connections.
    pub fn user(&self) -> &str {
        self.user.get().map(String::as_str).unwrap_or("")
    }

    pub(crate) fn set_user(&self, user: String) {
        let _ = self.user.set(user);
    }

    /// Closes the connection: flushes what is queued, then the transport closes with `reason`.
    pub fn disconnect(&self, reason: Disconnect) {
        self.outbound.close(reason);
        self.closed.cancel();
    }

    /// Resolves once the connection is closing.
    pub async fn closed(&self) {
        self.closed.cancelled().await;
    }

    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Sends a control request to the session task without waiting. False when the session is
    /// gone or its control queue is full.
    pub fn control(&self, request: Control) -> bool {
        if self.is_closed() {
            return false;
        }
        let mut queue = self.control.locked();
        if queue.len() >= MAX_CONTROL {
            return false;
        }
        queue.push_back(request);
        drop(queue);
        self.control_ready.notify_one();
        true
    }

    /// Control requests waiting (for tests: a lost subscription asks for one).
    #[cfg(all(test, feature = "loom"))]
    pub(crate) fn pending_controls(&self) -> usize {
        self.control.locked().len()
    }

    /// Waits for the next control request (used by the session task only).
    pub(crate) async fn next_control(&self) -> Control {
        loop {
            if let Some(request) = self.control.locked().pop_front() {
                return request;
            }
            self.control_ready.notified().await;
        }
    }

    /// Queues `reply` for this connection; `method` names it in the metrics when the reply
    /// itself does not say what it answers (an error, the empty ping).
    pub fn send_reply(&self, reply: &Reply, method: FrameType) {
        let frame = protocol::reply_frame_type(reply).unwrap_or(method);
        self.send(frame, protocol::encode_reply(self.protocol, reply));
    }

    /// Queues one message for this connection; closes it when that is impossible.
    fn send(&self, frame: FrameType, message: Result<Bytes, EncodeError>) {
        match message {
            Ok(bytes) => {
                if !self.outbound.enqueue(frame, bytes) {
                    self.closed.cancel();
                }
            }
            Err(EncodeError::NotJson) => self.disconnect(Disconnect::inappropriate_protocol()),
        }
    }

    /// Delivers a fanned-out message according to the channel's delivery state. True means the
    /// message waits for [`Self::flush_deliveries`], which the caller must arrange once it
    /// holds no hub locks (the writer task was not woken).
    #[must_use = "a true result owes a flush_deliveries() call"]
    pub fn deliver(&self, channel: &str, prepared: &Arc<Prepared>) -> bool {
        let mut deliveries = self.deliveries.locked();
        let Some(delivery) = deliveries.get_mut(channel) else { return false };
        match delivery {
            Delivery::Pending { buffer, server_side } => {
                if buffer.len() >= MAX_PENDING_PER_SUBSCRIPTION {
                    let server_side = *server_side;
                    deliveries.remove(channel);
                    self.state_lost(channel, server_side);
                    return false;
                }
                buffer.push(prepared.clone());
                false
            }
            Delivery::Live(live) => match self.offer(live, prepared) {
                Ok(flush_owed) => flush_owed,
                Err(server_side) => {
                    deliveries.remove(channel);
                    self.state_lost(channel, server_side);
                    false
                }
            },
            // Shared-poll channels are not fanned out by channel.
            Delivery::Keyed(_) => false,
        }
    }

    /// Delivers a keyed update to this tracker: a removal always (the key is then no longer
    /// tracked), a new version only when newer than what it holds. True owes a flush.
    #[must_use = "a true result owes a flush_deliveries() call"]
    pub fn deliver_keyed(&self, channel: &str, key: &str, update: &super::KeyedUpdate) -> bool {
        let mut deliveries = self.deliveries.locked();
        let Some(Delivery::Keyed(keyed)) = deliveries.get_mut(channel) else { return false };
        let variant = if update.removed {
            if keyed.keys.remove(key).is_none() {
                return false;
            }
            Variant::Plain
        } else {
            let delta = keyed.delta;
            let Some(held) = keyed.keys.get_mut(key) else { return false };
            if update.version <= held.version {
                return false;
            }
            // The first delivery after (re)tracking goes whole.
            let patchable =
                delta && held.delta_ready && update.base_version != 0 && held.version == update.base_version;
            (held.version, held.delta_ready) = (update.version, true);
            match (delta, patchable) {
                (false, _) => Variant::Plain,
                (true, true) => Variant::DeltaPatch,
                (true, false) => Variant::DeltaFull,
            }
        };
        self.send_deferred(FrameType::PushPublication, update.prepared.encoded_as(self.protocol, variant))
    }

    /// Starts keyed delivery for a shared-poll subscription.
    pub(crate) fn begin_keyed(&self, channel: &str, delta: bool) {
        let keyed = KeyedDelivery { delta, keys: HashMap::new() };
        self.deliveries.locked().insert(channel.to_owned(), Delivery::Keyed(keyed));
    }

    /// Records tracked keys with the version the client has and their signature's expiry
    /// (re-tracking a key replaces both). Fails, changing nothing, when the keys tracked would
    /// exceed `limit`; returns the keys newly tracked.
    pub(crate) fn track_keys(
        &self,
        channel: &str,
        items: &[(String, u64, i64)],
        untracked: &[String],
        limit: usize,
    ) -> Result<Vec<String>, ()> {
        let mut deliveries = self.deliveries.locked();
        let Some(Delivery::Keyed(keyed)) = deliveries.get_mut(channel) else { return Err(()) };
        let leaving = untracked
            .iter()
            .filter(|k| keyed.keys.contains_key(*k) && !items.iter().any(|i| &i.0 == *k))
            .count();
        let arriving = items.iter().filter(|(k, _, _)| !keyed.keys.contains_key(k)).count();
        if keyed.keys.len() - leaving + arriving > limit {
            return Err(());
        }
        let mut new = Vec::new();
        for (key, version, expires_at) in items {
            let held = TrackedKey { version: *version, expires_at: *expires_at, delta_ready: false };
            if keyed.keys.insert(key.clone(), held).is_none() {
                new.push(key.clone());
            }
        }
        Ok(new)
    }

    /// Stops tracking `keys`; returns those that were tracked.
    pub(crate) fn untrack_keys(&self, channel: &str, keys: &[String]) -> Vec<String> {
        let mut deliveries = self.deliveries.locked();
        let Some(Delivery::Keyed(keyed)) = deliveries.get_mut(channel) else { return Vec::new() };
        keys.iter().filter(|key| keyed.keys.remove(*key).is_some()).cloned().collect()
    }

    /// Keys tracked in `channel` (for cleanup), and how many.
    pub(crate) fn tracked_keys(&self, channel: &str) -> Vec<String> {
        let deliveries = self.deliveries.locked();
        match deliveries.get(channel) {
            Some(Delivery::Keyed(keyed)) => keyed.keys.keys().cloned().collect(),
            _ => Vec::new(),
        }
    }

    /// Keys whose signature expired more than `grace` seconds before `now`.
    pub(crate) fn expired_keys(&self, channel: &str, now: i64, grace: i64) -> Vec<String> {
        let deliveries = self.deliveries.locked();
        let Some(Delivery::Keyed(keyed)) = deliveries.get(channel) else { return Vec::new() };
        keyed
            .keys
            .iter()
            .filter(|(_, held)| held.expires_at > 0 && now > held.expires_at.saturating_add(grace))
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// The earliest signature expiry among the given tracked keys (0: none expires).
    pub(crate) fn earliest_expiry(&self, channel: &str, keys: &[String]) -> i64 {
        let deliveries = self.deliveries.locked();
        let Some(Delivery::Keyed(keyed)) = deliveries.get(channel) else { return 0 };
        keys.iter()
            .filter_map(|key| keyed.keys.get(key))
            .map(|held| held.expires_at)
            .filter(|&at| at > 0)
            .min()
            .unwrap_or(0)
    }

    /// Writes deliveries queued by [`Self::deliver`] (directly when the transport can, else by
    /// waking its writer task).
    pub fn flush_deliveries(&self) {
        if !self.outbound.flush_direct() {
            self.closed.cancel();
        }
    }

    /// A subscription missed messages (its delivery entry is already removed, so nothing more
    /// goes out on it). A client-side one gets unsubscribe 2500 from the session task and its
    /// SDK resubscribes with recovery; a server-side one needs a reconnect (3010).
    fn state_lost(&self, channel: &str, server_side: bool) {
        if server_side || !self.control(Control::InsufficientState { channel: channel.to_owned() }) {
            self.disconnect(Disconnect::insufficient_state());
        }
    }

    /// Queues `prepared` on a live subscription if [`Self::admit`] lets it through; `Ok(true)`
    /// when a flush is owed. `Err` carries the subscription's `server_side` flag when it lost
    /// state and must be dropped.
    #[must_use = "Ok(true) owes a flush_deliveries() call"]
    fn offer(&self, live: &mut LiveDelivery, prepared: &Prepared) -> Result<bool, bool> {
        match Self::admit(live, prepared) {
            Admission::Skip | Admission::Filtered => Ok(false),
            Admission::Send(variant) => {
                Ok(self.send_deferred(prepared.frame_type(), prepared.encoded_as(self.protocol, variant)))
            }
            Admission::Lost => Err(live.server_side),
        }
    }

    /// [`Self::send`] for fan-out: true when the message waits for [`Self::flush_deliveries`].
    fn send_deferred(&self, frame: FrameType, message: Result<Bytes, EncodeError>) -> bool {
        match message {
            Ok(bytes) => match self.outbound.enqueue_deferred(frame, bytes) {
                Deferred::FlushOwed => true,
                Deferred::Queued => false,
                Deferred::Refused => {
                    self.closed.cancel();
                    false
                }
            },
            Err(EncodeError::NotJson) => {
                self.disconnect(Disconnect::inappropriate_protocol());
                false
            }
        }
    }

    /// Decides whether (and in which form) a message goes out on a live subscription.
    fn admit(live: &mut LiveDelivery, prepared: &Prepared) -> Admission {
        if prepared.is_join_leave() {
            return if live.join_leave { Admission::Send(Variant::Plain) } else { Admission::Skip };
        }
        let admission = Self::admit_position(live, prepared);
        if live.delta { Self::track_delta(live, prepared, admission) } else { admission }
    }

    /// The offset and tags rules: duplicates are skipped, gaps and epoch changes lose state.
    fn admit_position(live: &mut LiveDelivery, prepared: &Prepared) -> Admission {
        let wanted = match (&live.filter, prepared.publication_tags()) {
            (Some(filter), Some(tags)) => crate::filter::matches(filter, tags),
            _ => true,
        };
        let send = if wanted { Admission::Send(Variant::Plain) } else { Admission::Filtered };
        let Some((offset, epoch)) = prepared.position() else { return send };
        if !live.positioned {
            live.offset = offset;
            return send;
        }
        // Too far behind its publish (`client.channel_position_max_time_lag`): the subscriber
        // recovers rather than trusting a stream this slow.
        if prepared.is_late() {
            return Admission::Lost;
        }
        if !live.epoch.is_empty() && live.epoch != epoch {
            return Admission::Lost;
        }
        if live.epoch.is_empty() {
            live.epoch = epoch.to_owned();
        }
        if offset <= live.offset {
            return Admission::Skip;
        }
        if offset != live.offset + 1 {
            return Admission::Lost;
        }
        live.offset = offset;
        send
    }

    /// Picks the delta form for a delta subscriber: a patch only on a positioned subscription
    /// that holds the previous publication of the stream. Anything that leaves the subscriber
    /// without it (a publication outside the stream, one its filter hid) makes the next one
    /// whole again.
    fn track_delta(live: &mut LiveDelivery, prepared: &Prepared, admission: Admission) -> Admission {
        if live.delta_per_key {
            return match admission {
                Admission::Send(_) if live.delta_ready => Admission::Send(Variant::DeltaPatch),
                Admission::Send(_) => Admission::Send(Variant::DeltaFull),
                other => other,
            };
        }
        let in_stream = prepared.position().is_some() && live.positioned;
        match admission {
            Admission::Send(_) if in_stream && live.delta_ready => Admission::Send(Variant::DeltaPatch),
            Admission::Send(_) => {
                live.delta_ready = in_stream;
                Admission::Send(Variant::DeltaFull)
            }
            Admission::Filtered => {
                live.delta_ready = false;
                Admission::Filtered
            }
            other => other,
        }
    }

    /// Compares a positioned subscription with the stream's top: if the stream moved past
    /// what this subscription received (or to another epoch), deliveries were lost on the way
    /// and the subscription's state is gone.
    pub fn check_position(&self, channel: &str, top: &StreamPosition) {
        let mut deliveries = self.deliveries.locked();
        let Some(Delivery::Live(live)) = deliveries.get_mut(channel) else { return };
        if !live.positioned {
            return;
        }
        let other_epoch = !live.epoch.is_empty() && !top.epoch.is_empty() && live.epoch != top.epoch;
        if other_epoch || live.offset < top.offset {
            let server_side = live.server_side;
            deliveries.remove(channel);
            self.state_lost(channel, server_side);
        }
    }

    /// Starts buffering live messages for `channel` (subscribe in progress).
    pub(crate) fn begin_delivery(&self, channel: &str, server_side: bool) {
        self.deliveries
            .locked()
            .insert(channel.to_owned(), Delivery::Pending { buffer: Vec::new(), server_side });
    }

    /// Queues `replies` (the subscribe reply or push, recovered publications) and then the
    /// buffered live messages newer than `live.offset`, and switches the channel to live
    /// delivery, all under one lock so nothing can slip in between.
    pub(crate) fn complete_delivery(&self, channel: &str, replies: Vec<Reply>, live: LiveDelivery) {
        let mut deliveries = self.deliveries.locked();
        let buffered = match deliveries.insert(channel.to_owned(), Delivery::Live(live)) {
            Some(Delivery::Pending { buffer, .. }) => buffer,
            _ => Vec::new(),
        };
        for reply in &replies {
            self.send_reply(reply, FrameType::Subscribe);
        }
        let Some(Delivery::Live(live)) = deliveries.get_mut(channel) else { return };
        let mut flush_owed = false;
        for prepared in buffered {
            match self.offer(live, &prepared) {
                Ok(owed) => flush_owed |= owed,
                Err(server_side) => {
                    deliveries.remove(channel);
                    self.state_lost(channel, server_side);
                    break;
                }
            }
        }
        if let Some(Delivery::Live(live)) = deliveries.get_mut(channel) {
            live.delta_ready |= live.delta_per_key;
        }
        drop(deliveries);
        if flush_owed {
            self.flush_deliveries();
        }
    }

    /// Stops delivering `channel`.
    pub(crate) fn end_delivery(&self, channel: &str) {
        self.deliveries.locked().remove(channel);
    }
}
