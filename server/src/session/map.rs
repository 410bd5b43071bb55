//! Map subscriptions (types map, map_clients and map_users): the client pages through the
//! channel's state (phase STATE, with a cursor), catches up on its stream of changes (phase
//! STREAM) and goes live, where changes arrive as publications carrying `key` (and `removed`).
//!
//! Between the requests of one subscribe the session keeps a [`MapFlow`]: what the client was
//! authorised for and the position the state was read at ("frozen"), so later pages and the
//! catch-up line up with the first read. A flow counts towards `client.channel_limit` and must
//! go live within `map.subscribe_catch_up_timeout` (else 3008 on its next request).
//!
//! No change is lost between the last read and live delivery: positioned modes register with
//! the hub first and then read the stream since the frozen position (later duplicates are
//! dropped by offset); ephemeral maps have no stream, so they register before the first state
//! read and get everything written since as publications after the reply (re-applying a change
//! the state already had is harmless: the last write of a key wins).

use tokio::time::Instant;

use super::subscriptions::SubscribeSpec;
use super::{Session, Subscription};
use crate::channel::ResolvedChannel;
use crate::common::{HistoryFilter, StreamPosition};
use crate::config::MapPaging;
use crate::errors::{ClientError, Disconnect};
use crate::hub::LiveDelivery;
use crate::node::map::{MapMode, StateRead, map_mode};
use crate::proto::client::{FilterNode, Publication, Reply, SubscribeRequest, SubscribeResult};
use crate::protocol::{ProtocolType, delta};

/// `SubscribeRequest.phase` values.
const LIVE: i32 = 0;
const STREAM: i32 = 1;
const STATE: i32 = 2;
/// `SubscribeResult.type` of every map-family subscription.
const MAP_TYPE: i32 = 1;

/// A map subscribe in progress; see the module docs.
#[derive(Debug)]
pub(super) struct MapFlow {
    spec: SubscribeSpec,
    resolved: ResolvedChannel,
    mode: MapMode,
    paging: MapPaging,
    started: Instant,
    /// Epoch and offset of the first state read (or of the recovery request).
    epoch: String,
    frozen_offset: u64,
    /// The stream's top at the first STREAM request.
    stream_start: Option<u64>,
    /// Registered with the hub (ephemeral maps register at the start).
    registered: bool,
}

impl MapFlow {
    /// Whether the flow already joined the hub (to be undone if it never goes live).
    pub(super) fn registered(&self) -> bool {
        self.registered
    }

    fn expired(&self) -> bool {
        self.paging.catch_up_timeout.is_some_and(|timeout| self.started.elapsed() > timeout)
    }

    /// The page size for a requested limit, clamped to the namespace's bounds.
    fn page_size(&self, limit: i32) -> usize {
        let asked = if limit <= 0 { self.paging.default_page_size } else { limit as usize };
        asked.clamp(self.paging.min_page_size, self.paging.max_page_size.max(self.paging.min_page_size))
    }

    fn filter(&self) -> Option<&FilterNode> {
        self.spec.filter.as_deref()
    }
}

/// What a map subscribe request produced.
enum MapStep {
    /// A STATE or STREAM page; the flow goes on.
    Page(SubscribeResult),
    /// The subscription is live: the reply and its delivery state.
    Live(SubscribeResult, LiveDelivery),
}

type Step = Result<Result<MapStep, ClientError>, Disconnect>;

/// Publications as a client gets them in a reply: tags-filtered, without internal fields, and
/// for a delta subscriber whole in its delta form (JSON: data as a string).
fn for_client(
    mut publications: Vec<Publication>,
    flow: &MapFlow,
    protocol: ProtocolType,
) -> Result<Vec<Publication>, ClientError> {
    // In place: a state page is up to a thousand publications, each a large struct.
    if let Some(filter) = flow.filter() {
        publications.retain(|p| crate::filter::matches(filter, &p.tags));
    }
    for publication in &mut publications {
        publication.time = 0;
        publication.prev_data = Default::default();
    }
    if !flow.spec.delta {
        return Ok(publications);
    }
    publications.into_iter().map(|p| delta::full(p, protocol).map_err(|_| ClientError::INTERNAL)).collect()
}

impl Session {
    /// Handles one subscribe request of a map-family type.
    pub(super) async fn map_subscribe(
        &mut self,
        id: u32,
        request: SubscribeRequest,
    ) -> Result<(), Disconnect> {
        let channel = request.channel.clone();
        match self.map_step(&request).await? {
            Ok(MapStep::Page(result)) => {
                self.send_reply(&Reply { id, subscribe: Some(result), ..Default::default() });
            }
            Ok(MapStep::Live(result, live)) => {
                let reply = Reply { id, subscribe: Some(result), ..Default::default() };
                self.handle.complete_delivery(&channel, vec![reply], live);
                self.announce_subscription(&channel).await;
            }
            Err(error) => self.send_error(id, &error),
        }
        Ok(())
    }

    async fn map_step(&mut self, request: &SubscribeRequest) -> Step {
        let channel = &request.channel;
        let pending = self.map_flows.contains_key(channel);
        let continuing = pending && (!request.cursor.is_empty() || request.phase != STATE);
        if !continuing {
            if pending || self.subs.contains_key(channel) {
                return Ok(Err(ClientError::ALREADY_SUBSCRIBED));
            }
            if self.subscription_count() >= self.node.config.client.channel_limit as usize {
                return Ok(Err(ClientError::LIMIT_EXCEEDED));
            }
        }
        self.sweep_map_flows(channel).await;
        if continuing {
            if self.map_flows.get(channel).is_some_and(|flow| flow.expired()) {
                self.drop_map_flow(channel).await;
                return Err(Disconnect::slow());
            }
        } else if let Err(error) = self.start_map_flow(request).await? {
            return Ok(Err(error));
        }
        let step = match request.phase {
            STATE => self.map_state_phase(request).await,
            STREAM => self.map_stream_phase(request).await,
            LIVE => self.map_live_phase(request).await,
            _ => Ok(Err(ClientError::BAD_REQUEST)),
        };
        if !matches!(step, Ok(Ok(_))) {
            self.drop_map_flow(channel).await;
        }
        step
    }

    /// The first request of a subscribe: authorisation, then a new flow.
    async fn start_map_flow(
        &mut self,
        request: &SubscribeRequest,
    ) -> Result<Result<(), ClientError>, Disconnect> {
        if !request.cursor.is_empty() || (request.phase == STREAM && !request.recover) {
            return Ok(Err(ClientError::PERMISSION_DENIED));
        }
        let mut spec = match self.authorize_subscribe(request).await? {
            Ok(spec) => spec,
            Err(error) => return Ok(Err(error)),
        };
        let resolved = spec.resolved.clone();
        let Some(mode) = map_mode(&resolved.options) else {
            return Ok(Err(ClientError::INTERNAL));
        };
        // Patches go against each key's previous value, which a filtered subscriber may lack.
        spec.delta &= spec.filter.is_none();
        let flow = MapFlow {
            paging: resolved.options.map.paging(),
            spec,
            resolved,
            mode,
            started: Instant::now(),
            epoch: if request.phase == STATE { String::new() } else { request.epoch.clone() },
            frozen_offset: 0,
            stream_start: None,
            registered: false,
        };
        self.map_flows.insert(request.channel.clone(), Box::new(flow));
        Ok(Ok(()))
    }

    /// Drops another channel's flow that ran out of time (its client stopped paging).
    async fn sweep_map_flows(&mut self, current: &str) {
        let expired: Vec<String> = self
            .map_flows
            .iter()
            .filter(|(channel, flow)| channel.as_str() != current && flow.expired())
            .map(|(channel, _)| channel.clone())
            .collect();
        for channel in expired {
            self.drop_map_flow(&channel).await;
        }
    }

    /// Forgets a flow, undoing its early hub registration.
    pub(super) async fn drop_map_flow(&mut self, channel: &str) {
        let Some(flow) = self.map_flows.remove(channel) else { return };
        if flow.registered {
            self.handle.end_delivery(channel);
            self.node.remove_map_subscriber(channel, &self.handle).await;
        }
    }

    /// Registers the flow's channel with the hub, buffering live publications until the reply.
    async fn register_map_flow(&mut self, channel: &str) -> Result<(), ClientError> {
        let Some(flow) = self.map_flows.get_mut(channel) else { return Err(ClientError::INTERNAL) };
        if flow.registered {
            return Ok(());
        }
        flow.registered = true;
        self.handle.begin_delivery(channel, false);
        if let Err(error) = self.node.add_map_subscriber(channel, &self.handle).await {
            self.handle.end_delivery(channel);
            if let Some(flow) = self.map_flows.get_mut(channel) {
                flow.registered = false;
            }
            return Err(error);
        }
        Ok(())
    }

    /// One page of state; the last one goes live when the stream can be caught up at once.
    async fn map_state_phase(&mut self, request: &SubscribeRequest) -> Step {
        let channel = &request.channel;
        let flow = self.map_flows.get(channel).expect("a flow exists for its phases");
        let (resolved, mode, page_size) = (flow.resolved.clone(), flow.mode, flow.page_size(request.limit));
        if mode == MapMode::Ephemeral
            && let Err(error) = self.register_map_flow(channel).await
        {
            return Ok(Err(error));
        }
        let revision = (request.offset > 0 || !request.epoch.is_empty())
            .then(|| StreamPosition { offset: request.offset, epoch: request.epoch.clone() });
        let read = StateRead { revision, cursor: request.cursor.clone(), limit: page_size as i32, key: None };
        let page = match self.node.map_read_state(channel, &resolved, &read).await {
            Ok(page) => page,
            Err(error) => return Ok(Err(error)),
        };
        let flow = self.map_flows.get_mut(channel).expect("a flow exists for its phases");
        if request.cursor.is_empty() {
            (flow.epoch, flow.frozen_offset) = (page.position.epoch.clone(), page.position.offset);
        }
        let frozen = flow.frozen_offset;
        // Entries written after the frozen position come with the stream catch-up instead.
        let entries =
            page.entries.into_iter().filter(|e| read.revision.is_none() || e.offset <= frozen).collect();
        let state = match for_client(entries, flow, self.handle.protocol) {
            Ok(state) => state,
            Err(error) => return Ok(Err(error)),
        };
        if page.cursor.is_empty() && self.map_can_go_live(channel, &resolved, frozen, page_size).await? {
            let since = StreamPosition {
                offset: frozen,
                epoch: self.map_flows.get(channel).map(|f| f.epoch.clone()).unwrap_or_default(),
            };
            return self.map_go_live(request, since, state, false).await;
        }
        Ok(Ok(MapStep::Page(SubscribeResult {
            r#type: MAP_TYPE,
            phase: STATE,
            cursor: page.cursor,
            epoch: page.position.epoch,
            offset: frozen,
            state,
            ..Default::default()
        })))
    }

    /// After the last state page: live at once for ephemeral maps, and for positioned ones
    /// when the stream moved on by less than a page since the frozen position.
    async fn map_can_go_live(
        &mut self,
        channel: &str,
        resolved: &ResolvedChannel,
        frozen: u64,
        page_size: usize,
    ) -> Result<bool, Disconnect> {
        let Some(flow) = self.map_flows.get(channel) else { return Ok(false) };
        if flow.mode == MapMode::Ephemeral {
            return Ok(true);
        }
        Ok(match self.node.map_position(channel, resolved).await {
            Ok(top) => frozen + page_size as u64 >= top.offset,
            Err(_) => false,
        })
    }

    /// One page of the stream since the client's offset, or live once it is close enough.
    async fn map_stream_phase(&mut self, request: &SubscribeRequest) -> Step {
        let channel = &request.channel;
        let flow = self.map_flows.get(channel).expect("a flow exists for its phases");
        if flow.mode == MapMode::Ephemeral {
            return Ok(Err(ClientError::BAD_REQUEST));
        }
        if !request.epoch.is_empty() && !flow.epoch.is_empty() && request.epoch != flow.epoch {
            return Ok(Err(ClientError::UNRECOVERABLE_POSITION));
        }
        let (resolved, page_size) = (flow.resolved.clone(), flow.page_size(request.limit));
        let stream_start = match flow.stream_start {
            Some(start) => start,
            None => match self.node.map_position(channel, &resolved).await {
                Ok(top) => top.offset,
                Err(error) => return Ok(Err(error)),
            },
        };
        let flow = self.map_flows.get_mut(channel).expect("a flow exists for its phases");
        flow.stream_start = Some(stream_start);
        let since = StreamPosition { offset: request.offset, epoch: request.epoch.clone() };
        if request.offset + page_size as u64 >= stream_start {
            return self.map_go_live(request, since, Vec::new(), true).await;
        }
        let filter = HistoryFilter { since: Some(since), limit: page_size as i32, ..Default::default() };
        let stream = match self.node.map_read_stream(channel, &resolved, &filter).await {
            Ok(stream) => stream,
            Err(error) => return Ok(Err(error)),
        };
        let offset = stream.publications.last().map_or(request.offset, |p| p.offset);
        let flow = self.map_flows.get(channel).expect("a flow exists for its phases");
        let publications = match for_client(stream.publications, flow, self.handle.protocol) {
            Ok(publications) => publications,
            Err(error) => return Ok(Err(error)),
        };
        Ok(Ok(MapStep::Page(SubscribeResult {
            r#type: MAP_TYPE,
            phase: STREAM,
            epoch: stream.position.epoch,
            offset,
            publications,
            ..Default::default()
        })))
    }

    /// Live at once from the client's own position (no state): a recovery join.
    async fn map_live_phase(&mut self, request: &SubscribeRequest) -> Step {
        let since = StreamPosition { offset: request.offset, epoch: request.epoch.clone() };
        self.map_go_live(request, since, Vec::new(), true).await
    }
}

impl Session {
    /// Goes live: registers (if not yet), catches up on the stream since `since` in positioned
    /// modes, and installs the subscription. `recovery` marks a catch-up from the client's own
    /// position (STREAM or LIVE phase) rather than from a state read.
    async fn map_go_live(
        &mut self,
        request: &SubscribeRequest,
        since: StreamPosition,
        state: Vec<Publication>,
        recovery: bool,
    ) -> Step {
        let channel = &request.channel;
        if let Err(error) = self.register_map_flow(channel).await {
            return Ok(Err(error));
        }
        let flow = self.map_flows.get(channel).expect("a flow exists for its phases");
        let mut result =
            SubscribeResult { r#type: MAP_TYPE, state, delta: flow.spec.delta, ..Default::default() };
        let mut live = LiveDelivery {
            join_leave: flow.spec.push_join_leave,
            filter: flow.spec.filter.clone(),
            delta: flow.spec.delta,
            delta_per_key: true,
            ..Default::default()
        };
        if flow.mode == MapMode::Ephemeral {
            result.epoch = flow.epoch.clone();
        } else {
            match self.map_catch_up(channel, &since, recovery).await {
                Ok((publications, top)) => {
                    (result.offset, result.epoch, result.recoverable) = (top.offset, top.epoch.clone(), true);
                    result.publications = publications;
                    (live.positioned, live.offset, live.epoch) = (true, top.offset, top.epoch);
                }
                Err(error) => return Ok(Err(error)),
            }
        }
        if recovery {
            (result.was_recovering, result.recovered) = (request.recover, request.recover);
        }
        let flow = *self.map_flows.remove(channel).expect("a flow exists for its phases");
        if let Some(at) = flow.spec.expires_at {
            (result.expires, result.ttl) = (true, super::commands::ttl_of(at));
        }
        let subscription = Subscription::of_map(&flow.spec, &flow.resolved, channel);
        self.install_subscription(channel.clone(), subscription);
        Ok(Ok(MapStep::Live(result, live)))
    }

    /// The stream since `since` for a subscription going live: everything up to the top, or
    /// 112 when that is not possible (another epoch, trimmed past `since`, or more than the
    /// live-transition limit).
    async fn map_catch_up(
        &mut self,
        channel: &str,
        since: &StreamPosition,
        recovery: bool,
    ) -> Result<(Vec<Publication>, StreamPosition), ClientError> {
        let flow = self.map_flows.get(channel).expect("a flow exists for its phases");
        let (resolved, limit) = (flow.resolved.clone(), flow.paging.live_transition_limit);
        let filter =
            HistoryFilter { since: Some(since.clone()), limit: limit as i32 + 1, ..Default::default() };
        let stream = self.node.map_read_stream(channel, &resolved, &filter).await?;
        let top = stream.position;
        if (recovery || !since.epoch.is_empty()) && since.epoch != top.epoch {
            return Err(ClientError::UNRECOVERABLE_POSITION);
        }
        if stream.publications.len() > limit {
            return Err(ClientError::UNRECOVERABLE_POSITION);
        }
        let flow = self.map_flows.get(channel).expect("a flow exists for its phases");
        let offset = stream.publications.last().map_or(top.offset, |p| p.offset.max(top.offset));
        let publications = for_client(stream.publications, flow, self.handle.protocol)?;
        Ok((publications, StreamPosition { offset, epoch: top.epoch }))
    }

    /// Subscriptions and map subscribes in progress, which `client.channel_limit` bounds together.
    pub(super) fn subscription_count(&self) -> usize {
        self.subs.len() + self.map_flows.len()
    }
}

impl Subscription {
    /// A live map subscription as authorised by its flow.
    fn of_map(spec: &SubscribeSpec, resolved: &ResolvedChannel, channel: &str) -> Self {
        Subscription {
            server_side: false,
            presence: spec.presence,
            join_leave: spec.publish_join_leave,
            chan_info: spec.chan_info.clone(),
            expires_at: spec.expires_at,
            proxy_refresh: spec.proxy_refresh,
            stream: None,
            map: super::MapSide::of(resolved, channel, true).needed(),
            keyed: false,
        }
    }
}
