//! Subscription set-up (with positioning and recovery) and teardown.
//!
//! Set-up order matters for gap-free delivery: the channel's delivery state starts as
//! *pending* (live messages are buffered), then the session joins the hub, then the stream
//! position or missed publications are read. The caller queues the reply and flushes the buffer
//! in one step ([`SessionHandle::complete_delivery`]), dropping buffered publications the reply
//! already covers.

use std::sync::Arc;

use bytes::Bytes;

use super::{MapSide, Session, Subscription};
use crate::auth::{SubscribeClaims, SubscribeOverride};
use crate::channel::ResolvedChannel;
use crate::common::{HistoryFilter, HistoryResult, StreamPosition, unix_now};
use crate::errors::ClientError;
use crate::hub::{Control, Prepared};
use crate::hub::{LiveDelivery, SessionHandle};
use crate::proto::client::{
    ClientInfo, FilterNode, Publication, Push, Reply, SubscribeRequest, SubscribeResult, Unsubscribe,
};
use crate::proxy::{StreamEvent, StreamPublications, StreamPublisher};

/// What a recovery attempt found.
#[derive(Debug)]
struct Recovery {
    recovered: bool,
    /// The missed publications (only when recovered), tags-filtered.
    publications: Vec<crate::proto::client::Publication>,
    /// The stream's current position.
    top: StreamPosition,
}

impl Recovery {
    fn failed(top: StreamPosition) -> Self {
        Self { recovered: false, publications: Vec::new(), top }
    }
}

/// A subscription's subscribe stream: the task forwarding its publications ends with it.
#[derive(Debug)]
pub(super) struct StreamGuard {
    /// Set for bidirectional streams: where the client's publications go.
    pub publisher: Option<StreamPublisher>,
    task: tokio::task::AbortHandle,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Delivers a subscribe stream's publications to its one subscriber (buffered like any live
/// message until the subscribe reply is out). When the backend ends the stream the client is
/// unsubscribed with 2000, when it breaks with 2500 (the SDK subscribes again), as Centrifugo.
async fn forward_stream(channel: String, mut publications: StreamPublications, handle: Arc<SessionHandle>) {
    loop {
        let publication = match publications.next().await {
            StreamEvent::Publication(publication) => publication,
            StreamEvent::Ended => {
                handle.control(Control::Unsubscribe { channel });
                return;
            }
            StreamEvent::Failed(error) => {
                tracing::warn!(%channel, %error, "subscribe stream failed");
                handle.control(Control::InsufficientState { channel });
                return;
            }
        };
        let publication =
            Publication { data: publication.data, tags: publication.tags, ..Default::default() };
        let prepared = Arc::new(Prepared::publication(&channel, publication, ""));
        if handle.deliver(&channel, &prepared) {
            handle.flush_deliveries();
        }
    }
}

/// The engine and hub side of removing one subscription; independent of the session so it
/// can also run after the session is gone (see `Drop for Session`).
#[derive(Debug)]
pub(super) struct Teardown {
    channel: String,
    presence: bool,
    /// Leave to publish, when join/leave is on for this subscriber.
    leave: Option<ClientInfo>,
    map: Option<Arc<MapSide>>,
    /// The keys a shared-poll subscription tracked (it is in the keyed fan-out, not the hub's).
    tracked: Option<Vec<String>>,
}

impl Teardown {
    /// Undoes only the hub registration of a map subscribe that never went live.
    pub(super) fn registration(channel: &str) -> Self {
        let map = MapSide {
            map_channel: true,
            clients_presence: None,
            users_presence: None,
            remove_client_key: false,
        };
        Self {
            channel: channel.to_owned(),
            presence: false,
            leave: None,
            map: Some(Arc::new(map)),
            tracked: None,
        }
    }

    pub(super) async fn run(self, node: &Arc<crate::node::Node>, handle: &SessionHandle) {
        let channel = &self.channel;
        match (&self.map, &self.tracked) {
            (_, Some(keys)) => node.shared_poll_untrack(channel, handle, keys),
            (Some(map), _) if map.map_channel => node.remove_map_subscriber(channel, handle).await,
            _ => node.remove_subscriber(channel, handle).await,
        }
        if self.presence
            && let Err(error) = node.remove_presence(channel, &handle.client, handle.user()).await
        {
            tracing::warn!(%channel, %error, "removing presence failed");
        }
        if let Some(map) = &self.map {
            if let Some(presence_channel) = &map.clients_presence {
                node.map_remove_key(presence_channel, &handle.client).await;
            }
            if map.remove_client_key {
                node.map_remove_key(channel, &handle.client).await;
            }
        }
        if let Some(info) = self.leave
            && let Err(error) = node.publish_leave(channel, info).await
        {
            tracing::warn!(%channel, %error, "publishing leave failed");
        }
    }
}

/// Everything decided about a subscription before it is set up.
#[derive(Debug)]
pub(super) struct SubscribeSpec {
    pub resolved: ResolvedChannel,
    pub server_side: bool,
    pub positioned: bool,
    pub recoverable: bool,
    /// Position the client asks to recover from.
    pub recover: Option<StreamPosition>,
    /// The client asked to recover (reported as `was_recovering` even where the channel
    /// cannot recover, as Centrifugo does).
    pub asked_recovery: bool,
    /// Refuse with 112 instead of answering `recovered: false` (subscribe flag 2; stream
    /// recovery only). Decided before presence and join, so a refused subscribe leaves no trace.
    pub reject_unrecovered: bool,
    /// Deliver join/leave pushes to this subscriber.
    pub push_join_leave: bool,
    /// Publish join/leave for this subscriber.
    pub publish_join_leave: bool,
    pub presence: bool,
    pub chan_info: Bytes,
    pub data: Bytes,
    pub expires_at: Option<i64>,
    /// The sub refresh proxy extends the subscription (the client is not told it expires).
    pub proxy_refresh: bool,
    /// Validated tags filter from the subscribe request.
    pub filter: Option<Arc<FilterNode>>,
    /// Fossil delta compression negotiated (asked for, and allowed by the namespace).
    pub delta: bool,
    /// A subscribe stream proxy's stream: its publications go to this subscriber alone.
    pub stream: Option<(StreamPublications, Option<StreamPublisher>)>,
}

/// `SubscribeRequest.flag` bit: answer 112 instead of `recovered: false`.
pub(super) const REJECT_UNRECOVERED: i64 = 2;

/// With `auto_cache_recover` in cache mode every subscribe recovers (from nothing when the
/// client sent no position), so the latest publication is delivered on subscribe.
fn auto_cache_recover(
    options: &crate::config::ChannelOptions,
    recoverable: bool,
    recover: Option<StreamPosition>,
) -> Option<StreamPosition> {
    if !recoverable {
        return None;
    }
    if recover.is_none() && options.force_recovery_mode == "cache" && options.auto_cache_recover {
        return Some(StreamPosition::default());
    }
    recover
}

/// Whether the subscriber gets delta compression: it asked for a type the namespace allows
/// (asking for one it does not allow is no error, as in Centrifugo: it just gets whole payloads).
pub(super) fn delta_negotiated(options: &crate::config::ChannelOptions, asked: &str) -> bool {
    !asked.is_empty() && options.allowed_delta_types.iter().any(|allowed| allowed == asked)
}

fn pick(override_value: Option<crate::auth::BoolValue>, default: bool) -> bool {
    override_value.map_or(default, |v| v.value)
}

impl SubscribeSpec {
    pub fn client_side(
        resolved: &ResolvedChannel,
        request: &SubscribeRequest,
        claims: Option<SubscribeClaims>,
        expires_at: Option<i64>,
        history_access: bool,
        presence_access: bool,
        recover: Option<StreamPosition>,
    ) -> Self {
        let options = &resolved.options;
        let overrides = claims.as_ref().map(|c| c.override_options).unwrap_or_default();
        let history = options.history_enabled();
        let recoverable = history
            && (pick(overrides.force_recovery, options.force_recovery)
                || (request.recoverable && (options.allow_recovery || history_access)));
        let positioned = history
            && (recoverable
                || pick(overrides.force_positioning, options.force_positioning)
                || (request.positioned && (options.allow_positioning || history_access)));
        let join_leave = pick(overrides.join_leave, options.join_leave);
        let (chan_info, data) = claims.map(|c| (c.info, c.data)).unwrap_or_default();
        Self {
            resolved: resolved.clone(),
            server_side: false,
            positioned,
            recoverable,
            asked_recovery: recover.is_some(),
            recover: auto_cache_recover(options, recoverable, recover),
            reject_unrecovered: request.flag & REJECT_UNRECOVERED != 0,
            push_join_leave: pick(overrides.force_push_join_leave, options.force_push_join_leave)
                || (join_leave && request.join_leave && presence_access),
            publish_join_leave: join_leave,
            presence: pick(overrides.presence, options.presence),
            chan_info,
            data,
            expires_at,
            proxy_refresh: false,
            filter: request.tf.clone().map(Arc::new),
            delta: delta_negotiated(options, &request.delta),
            stream: None,
        }
    }

    pub fn server_side(
        resolved: &ResolvedChannel,
        overrides: &SubscribeOverride,
        chan_info: Bytes,
        data: Bytes,
        recover: Option<StreamPosition>,
        expires_at: Option<i64>,
    ) -> Self {
        let options = &resolved.options;
        let history = options.history_enabled();
        let recoverable = history && pick(overrides.force_recovery, options.force_recovery);
        let positioned =
            history && (recoverable || pick(overrides.force_positioning, options.force_positioning));
        let join_leave = pick(overrides.join_leave, options.join_leave);
        Self {
            resolved: resolved.clone(),
            server_side: true,
            positioned,
            recoverable,
            asked_recovery: recover.is_some(),
            recover: auto_cache_recover(options, recoverable, recover),
            reject_unrecovered: false,
            push_join_leave: pick(overrides.force_push_join_leave, options.force_push_join_leave),
            publish_join_leave: join_leave,
            presence: pick(overrides.presence, options.presence),
            chan_info,
            data,
            expires_at,
            proxy_refresh: false,
            filter: None,
            delta: false,
            stream: None,
        }
    }
}

impl Session {
    /// Connection-level client info (no channel info).
    pub(super) fn connection_info(&self) -> ClientInfo {
        ClientInfo {
            user: self.user().to_owned(),
            client: self.handle.client.clone(),
            conn_info: self.info.clone(),
            chan_info: Bytes::new(),
        }
    }

    /// Client info as seen in one channel (publications, presence, join/leave).
    pub(super) fn client_info(&self, sub: &Subscription) -> ClientInfo {
        ClientInfo { chan_info: sub.chan_info.clone(), ..self.connection_info() }
    }

    /// Sets a subscription up. Returns the subscribe result and the live-delivery state the
    /// caller installs together with the reply.
    pub(super) async fn subscribe_channel(
        &mut self,
        channel: &str,
        resolved: ResolvedChannel,
        mut spec: SubscribeSpec,
    ) -> Result<(SubscribeResult, LiveDelivery), ClientError> {
        let stream = spec.stream.take();
        self.handle.begin_delivery(channel, spec.server_side);
        if let Err(error) = self.node.add_subscriber(channel, &self.handle).await {
            self.handle.end_delivery(channel);
            return Err(error);
        }
        let (result, live) = match self.position_subscription(channel, &resolved, &spec).await {
            Ok(done) => done,
            Err(error) => {
                self.handle.end_delivery(channel);
                self.node.remove_subscriber(channel, &self.handle).await;
                return Err(error);
            }
        };
        let subscription = Subscription {
            server_side: spec.server_side,
            presence: spec.presence,
            join_leave: spec.publish_join_leave,
            chan_info: spec.chan_info,
            expires_at: spec.expires_at,
            proxy_refresh: spec.proxy_refresh,
            stream: stream.map(|(publications, publisher)| {
                let task =
                    tokio::spawn(forward_stream(channel.to_owned(), publications, self.handle.clone()));
                Arc::new(StreamGuard { publisher, task: task.abort_handle() })
            }),
            map: MapSide::of(&resolved, channel, false).needed(),
            keyed: false,
        };
        self.install_subscription(channel.to_owned(), subscription);
        self.announce_subscription(channel).await;
        Ok((result, live))
    }

    /// Makes a new subscription known: presence, map presence entries, join.
    pub(super) async fn announce_subscription(&self, channel: &str) {
        let Some(sub) = self.subs.get(channel) else { return };
        let info = self.client_info(sub);
        if sub.presence
            && let Err(error) = self.node.add_presence(channel, &info).await
        {
            tracing::warn!(%channel, %error, "adding presence failed");
        }
        if let Some(map) = &sub.map {
            self.list_in_map_presence(map, sub).await;
        }
        if sub.join_leave
            && let Err(error) = self.node.publish_join(channel, info).await
        {
            tracing::warn!(%channel, %error, "publishing join failed");
        }
    }

    /// Lists this connection (and its user, unless anonymous) in the map presence channels of a
    /// subscription, or extends their entries.
    pub(super) async fn list_in_map_presence(&self, map: &MapSide, sub: &Subscription) {
        if let Some(presence_channel) = &map.clients_presence
            && let Err(error) = self.node.map_client_present(presence_channel, &self.client_info(sub)).await
        {
            tracing::warn!(channel = %presence_channel, %error, "map client presence failed");
        }
        if let Some(presence_channel) = &map.users_presence
            && !self.user().is_empty()
            && let Err(error) = self.node.map_user_present(presence_channel, self.user()).await
        {
            tracing::warn!(channel = %presence_channel, %error, "map user presence failed");
        }
    }

    /// Reads the stream position (and missed publications when recovering).
    async fn position_subscription(
        &self,
        channel: &str,
        resolved: &ResolvedChannel,
        spec: &SubscribeSpec,
    ) -> Result<(SubscribeResult, LiveDelivery), ClientError> {
        let ttl = spec.expires_at.map(|at| (at - unix_now()).clamp(0, u32::MAX as i64) as u32);
        let mut result = SubscribeResult {
            expires: spec.expires_at.is_some() && !spec.server_side && !spec.proxy_refresh,
            ttl: if spec.server_side || spec.proxy_refresh { 0 } else { ttl.unwrap_or(0) },
            data: spec.data.clone(),
            was_recovering: spec.asked_recovery || spec.recover.is_some(),
            delta: spec.delta,
            ..Default::default()
        };
        let mut live = LiveDelivery {
            join_leave: spec.push_join_leave,
            filter: spec.filter.clone(),
            server_side: spec.server_side,
            delta: spec.delta,
            ..Default::default()
        };
        if !spec.positioned {
            return Ok((result, live));
        }
        result.positioned = true;
        result.recoverable = spec.recoverable;
        live.positioned = true;
        let top = match &spec.recover {
            Some(since) => {
                let cache_mode = resolved.options.force_recovery_mode == "cache";
                self.node.metrics.action(if cache_mode {
                    crate::metrics::NodeAction::HistoryRecoverCache
                } else {
                    crate::metrics::NodeAction::HistoryRecover
                });
                let recovery = if cache_mode {
                    self.recover_cache(channel, resolved, since, spec.filter.as_deref()).await?
                } else {
                    self.recover_stream(channel, resolved, since, spec.filter.as_deref()).await?
                };
                if spec.reject_unrecovered && !cache_mode && !recovery.recovered {
                    return Err(ClientError::UNRECOVERABLE_POSITION);
                }
                let yes_no = |yes: bool| if yes { "yes" } else { "no" };
                let labels = ["", yes_no(!recovery.publications.is_empty()), yes_no(recovery.recovered)];
                self.node.metrics.recoveries.get(&labels).inc();
                result.recovered = recovery.recovered;
                live.offset = recovery.top.offset;
                if recovery.recovered {
                    // The SDK continues from its own offset through the recovered publications.
                    result.offset = since.offset;
                    result.publications = if spec.delta {
                        // The subscriber ends up holding the stream's latest publication
                        // (unless a tags filter hid some of them from it).
                        live.delta_ready = spec.filter.is_none();
                        crate::protocol::delta::chain(recovery.publications, self.handle.protocol)
                            .map_err(|_| ClientError::INTERNAL)?
                    } else {
                        recovery.publications
                    };
                } else {
                    result.offset = recovery.top.offset;
                }
                recovery.top
            }
            None => {
                let position = self.read_history(channel, resolved, HistoryFilter::default()).await?.position;
                result.offset = position.offset;
                live.offset = position.offset;
                position
            }
        };
        result.epoch = top.epoch.clone();
        live.epoch = top.epoch;
        Ok((result, live))
    }

    async fn read_history(
        &self,
        channel: &str,
        resolved: &ResolvedChannel,
        filter: HistoryFilter,
    ) -> Result<HistoryResult, ClientError> {
        self.node.history(channel, resolved, filter).await
    }

    /// Stream recovery: every publication after the client's offset, if the stream still has
    /// them all and there are at most `client.recovery_max_publication_limit` of them. An
    /// empty epoch stands for any epoch (the SDKs send none for a position they learned
    /// elsewhere, e.g. from `getState`).
    async fn recover_stream(
        &self,
        channel: &str,
        resolved: &ResolvedChannel,
        since: &StreamPosition,
        filter: Option<&FilterNode>,
    ) -> Result<Recovery, ClientError> {
        let max = self.node.config.client.recovery_max_publication_limit as i32;
        let history_filter = HistoryFilter {
            since: Some(since.clone()),
            limit: if max > 0 { max + 1 } else { -1 },
            ..Default::default()
        };
        let history = match self.read_history(channel, resolved, history_filter).await {
            Ok(history) => history,
            Err(ClientError { code: 112, .. }) => {
                let top = self.read_history(channel, resolved, HistoryFilter::default()).await?.position;
                tracing::debug!(%channel, since = ?since, top = ?top, "stream recovery: another epoch");
                return Ok(Recovery::failed(top));
            }
            Err(error) => return Err(error),
        };
        let top = history.position;
        let publications = history.publications;
        let complete = match (publications.first(), publications.last()) {
            (None, _) => top.offset == since.offset,
            (Some(first), Some(last)) => first.offset == since.offset + 1 && last.offset == top.offset,
            _ => false,
        };
        let within_limit = max <= 0 || publications.len() <= max as usize;
        let same_epoch = since.epoch.is_empty() || since.epoch == top.epoch;
        if !(same_epoch && complete && within_limit) {
            tracing::debug!(
                %channel, since = ?since, top = ?top, same_epoch, complete, within_limit,
                first = ?publications.first().map(|p| p.offset), got = publications.len(),
                "stream recovery not possible"
            );
            return Ok(Recovery::failed(top));
        }
        let publications = match filter {
            Some(filter) => {
                publications.into_iter().filter(|p| crate::filter::matches(filter, &p.tags)).collect()
            }
            None => publications,
        };
        Ok(Recovery { recovered: true, publications, top })
    }

    /// Cache recovery: only the latest publication matters (the latest one the tags filter
    /// lets through, looking back at most `client.recovery_max_publication_limit`). A client
    /// that already has it (same non-zero offset, same epoch) gets nothing.
    async fn recover_cache(
        &self,
        channel: &str,
        resolved: &ResolvedChannel,
        since: &StreamPosition,
        filter: Option<&FilterNode>,
    ) -> Result<Recovery, ClientError> {
        let limit = match filter {
            Some(_) => match self.node.config.client.recovery_max_publication_limit as i32 {
                max if max > 0 => max,
                _ => -1,
            },
            None => 1,
        };
        let history_filter = HistoryFilter { limit, reverse: true, ..Default::default() };
        let history = self.read_history(channel, resolved, history_filter).await?;
        let top = history.position;
        let up_to_date = since.offset > 0 && since.offset == top.offset && since.epoch == top.epoch;
        if history.publications.is_empty() {
            return Ok(Recovery { recovered: up_to_date, publications: Vec::new(), top });
        }
        let latest = history
            .publications
            .into_iter()
            .find(|p| filter.is_none_or(|filter| crate::filter::matches(filter, &p.tags)));
        let publications = match latest {
            Some(latest) if !up_to_date => vec![latest],
            _ => Vec::new(),
        };
        Ok(Recovery { recovered: true, publications, top })
    }

    /// Moves `centrifugo_client_subscriptions_inflight` by `change`.
    pub(super) fn count_subscriptions(&self, change: i64) {
        self.node.metrics.subscriptions_inflight.get(&["", self.client_name_label]).add(change);
    }

    /// The subscription is live: the session keeps it, and the metrics and the lifecycle
    /// events hear of it.
    pub(super) fn install_subscription(&mut self, channel: String, subscription: Subscription) {
        if let Some(lifecycle) = &self.node.lifecycle {
            lifecycle.subscribed(&self.handle.client, self.user(), &channel);
        }
        self.subs.insert(channel, subscription);
        self.count_subscriptions(1);
    }

    /// Tears a subscription down: hub, presence, leave. No push to the client. True when
    /// there was one.
    pub(super) async fn remove_subscription(&mut self, channel: &str) -> bool {
        let Some(teardown) = self.detach_subscription(channel) else { return false };
        teardown.run(&self.node, &self.handle).await;
        true
    }

    /// A subscription ended while the client stays connected (code 0: the client's own).
    pub(super) fn record_unsubscribed(&self, channel: &str, code: u32, reason: &str) {
        if let Some(lifecycle) = &self.node.lifecycle {
            lifecycle.unsubscribed(&self.handle.client, self.user(), channel, code, reason);
        }
    }

    /// Forgets a subscription in the session and returns what remains to be undone outside.
    pub(super) fn detach_subscription(&mut self, channel: &str) -> Option<Teardown> {
        let subscription = self.subs.remove(channel)?;
        self.count_subscriptions(-1);
        let tracked = subscription.keyed.then(|| self.handle.tracked_keys(channel));
        self.handle.end_delivery(channel);
        Some(Teardown {
            channel: channel.to_owned(),
            presence: subscription.presence,
            leave: subscription.join_leave.then(|| self.client_info(&subscription)),
            map: subscription.map.clone(),
            tracked,
        })
    }

    /// Removes a subscription and tells the client with an unsubscribe push.
    pub(super) async fn unsubscribe_with_push(&mut self, channel: &str, (code, reason): (u32, &str)) {
        if self.remove_subscription(channel).await {
            self.record_unsubscribed(channel, code, reason);
        }
        self.node.metrics.server_unsubscribes.get(&["", &code.to_string()]).inc();
        self.send_reply(&Reply {
            push: Some(Push {
                channel: channel.to_owned(),
                unsubscribe: Some(Unsubscribe { code, reason: reason.to_owned() }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
}
