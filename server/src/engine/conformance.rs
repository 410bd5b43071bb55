//! One behaviour suite for every engine backend, run by capability: the PUB/SUB and control
//! cases on every backend (memory, Redis single, sharded, Cluster and Sentinel, NATS), the
//! history and presence cases where the backend keeps them (memory and Redis), and "not
//! available" where it does not (NATS).
//!
//! A backend's servers start once (`test_support`); every case then gets fresh engines on them
//! (its own key prefix), one per node it asks for. Deliveries are awaited, never assumed
//! synchronous, so networked engines pass the same code. Cases that need several nodes to
//! share state run only where engines on the same servers are nodes of one cluster.

use crate::sync::Mutex;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;

use super::memory::MemoryEngine;
use super::nats::NatsBroker;
use super::redis::RedisEngine;
use super::*;
use crate::config::{ConfigDuration, NatsBroker as NatsSection, RedisEngine as RedisSection};
use crate::test_support::{NatsServer, RedisCluster, RedisSentinel, RedisServer};

/// What a node's broker delivered: (channel, offset, text), control messages on "control". A
/// publication delivered with a delta base reads `text<-base`.
type Deliveries = Arc<Mutex<Vec<(String, u64, String)>>>;

struct Recorder(Deliveries);

impl BrokerEventHandler for Recorder {
    fn handle_publication(
        &self,
        channel: &str,
        publication: Publication,
        position: StreamPosition,
        delta_base: Option<Bytes>,
    ) {
        let mut text = String::from_utf8_lossy(&publication.data).into_owned();
        if let Some(base) = delta_base {
            text = format!("{text}<-{}", String::from_utf8_lossy(&base));
        }
        assert_eq!(publication.offset, position.offset);
        self.0.locked().push((channel.to_owned(), position.offset, text));
    }
    fn handle_join(&self, channel: &str, info: ClientInfo) {
        self.0.locked().push((channel.to_owned(), 0, format!("join:{}", info.client)));
    }
    fn handle_leave(&self, channel: &str, info: ClientInfo) {
        self.0.locked().push((channel.to_owned(), 0, format!("leave:{}", info.client)));
    }
    fn handle_control(&self, payload: &[u8]) {
        let text = String::from_utf8_lossy(payload).into_owned();
        self.0.locked().push(("control".to_owned(), 0, text));
    }
}

/// The servers of one backend, started once for all its cases.
enum Backend {
    Memory,
    Redis(Vec<RedisServer>),
    /// One Redis with `presence_user_mapping` (per-user counts kept in Redis).
    RedisUserMapping(RedisServer),
    /// One Redis keeping history in lists (`history_use_lists`).
    RedisLists(RedisServer),
    RedisCluster(RedisCluster),
    RedisSentinel(RedisSentinel),
    Nats(NatsServer),
}

/// One node's engine and what its broker delivered.
struct TestNode {
    broker: Arc<dyn Broker>,
    presence: Option<Arc<dyn PresenceManager>>,
    deliveries: Deliveries,
}

impl TestNode {
    fn presence(&self) -> &dyn PresenceManager {
        self.presence.as_deref().expect("a backend with presence")
    }

    /// Waits (up to 5 s) until `done` holds for the deliveries so far.
    async fn wait_until(&self, what: &str, done: impl Fn(&[(String, u64, String)]) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            // A copy: `done` may look at the node again (`saw`, `texts`).
            let seen = self.deliveries.locked().clone();
            if done(&seen) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("timed out waiting for {what}; got {:?}", self.deliveries.locked());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits (up to 10 s) until the broker reports itself connected.
    async fn wait_healthy(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !self.broker.is_healthy() {
            assert!(tokio::time::Instant::now() < deadline, "the engine did not connect");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn saw(&self, text: &str) -> bool {
        self.deliveries.locked().iter().any(|d| d.2 == text)
    }

    /// Texts delivered on `channel`, in order.
    fn texts(&self, channel: &str) -> Vec<String> {
        self.deliveries.locked().iter().filter(|d| d.0 == channel).map(|d| d.2.clone()).collect()
    }
}

impl Backend {
    fn redis_section(&self, prefix: &str) -> RedisSection {
        let mut section = RedisSection {
            prefix: prefix.to_owned(),
            io_timeout: ConfigDuration::secs(2),
            ..Default::default()
        };
        match self {
            Backend::Redis(servers) => section.address = servers.iter().map(RedisServer::address).collect(),
            Backend::RedisUserMapping(server) => {
                section.address = vec![server.address()];
                section.presence_user_mapping = true;
            }
            Backend::RedisLists(server) => {
                section.address = vec![server.address()];
                section.history_use_lists = true;
            }
            Backend::RedisCluster(cluster) => section.cluster_address = cluster.addresses(),
            Backend::RedisSentinel(sentinel) => {
                section.sentinel_address = vec![sentinel.sentinel_address()];
                section.sentinel_master_name = RedisSentinel::MASTER_NAME.to_owned();
            }
            Backend::Memory | Backend::Nats(_) => unreachable!("not a Redis backend"),
        }
        section
    }

    /// A fresh engine as node `uid`, keys under `prefix`. Redis engines are used at once, while
    /// they still connect in the background (calls wait for the connection); the NATS broker
    /// refuses calls until connected, so its node is returned once it is.
    async fn node(&self, prefix: &str, uid: &str) -> TestNode {
        let (broker, presence): (Arc<dyn Broker>, Option<Arc<dyn PresenceManager>>) = match self {
            Backend::Memory => {
                let engine = MemoryEngine::new();
                (engine.clone(), Some(engine))
            }
            Backend::Nats(server) => {
                let section =
                    NatsSection { url: server.url(), prefix: prefix.to_owned(), ..Default::default() };
                (NatsBroker::new(&section, uid).unwrap(), None)
            }
            _ => {
                let engine =
                    RedisEngine::new(&self.redis_section(prefix), "engine.redis", Some(uid)).unwrap();
                (engine.clone(), Some(engine))
            }
        };
        let deliveries = Deliveries::default();
        broker.set_event_handler(Arc::new(Recorder(deliveries.clone())));
        let node = TestNode { broker, presence, deliveries };
        if matches!(self, Backend::Nats(_)) {
            node.wait_healthy().await;
        }
        node
    }

    /// Engines on the same servers are nodes of one cluster (not so for memory engines).
    fn shared(&self) -> bool {
        !matches!(self, Backend::Memory)
    }

    fn has_history(&self) -> bool {
        !matches!(self, Backend::Nats(_))
    }

    fn has_presence(&self) -> bool {
        !matches!(self, Backend::Nats(_))
    }
}

/// What one case gets: its backend and a key prefix of its own.
struct Fixture<'a> {
    backend: &'a Backend,
    prefix: String,
}

impl Fixture<'_> {
    async fn node(&self, uid: &str) -> TestNode {
        self.backend.node(&self.prefix, uid).await
    }
}

type Case = for<'a> fn(&'a Fixture<'a>) -> Pin<Box<dyn Future<Output = ()> + 'a>>;

/// `(name, case)` pairs from async fns taking a `&Fixture`.
macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        &[$((stringify!($case), { fn run<'a>(f: &'a Fixture<'a>) -> Pin<Box<dyn Future<Output = ()> + 'a>> { Box::pin($case(f)) } run as Case })),*]
    };
}

const PUBSUB: &[(&str, Case)] = cases![
    publications_arrive_in_channel_order,
    join_and_leave_arrive,
    subscriptions_are_counted,
    publications_reach_other_nodes,
    control_reaches_every_node_or_one,
];
const HISTORY: &[(&str, Case)] = cases![
    offsets_grow_by_one_and_survive_trimming,
    history_reads_by_position,
    idempotent_publish_delivers_once,
    removing_history_keeps_the_position,
    reading_an_unknown_stream_creates_nothing,
    history_is_shared_between_nodes,
    stale_versions_are_dropped,
    delta_publications_carry_the_previous_data,
];
const NO_HISTORY: &[(&str, Case)] = cases![history_is_not_available];
const PRESENCE: &[(&str, Case)] = cases![presence_counts_clients_and_users, presence_is_shared_between_nodes];

/// Runs every case `backend` has the capabilities for, each with fresh engines.
async fn run(name: &str, backend: Backend) {
    let mut suite: Vec<(&str, Case)> = PUBSUB.to_vec();
    suite.extend_from_slice(if backend.has_history() { HISTORY } else { NO_HISTORY });
    if backend.has_presence() {
        suite.extend_from_slice(PRESENCE);
    }
    for (case_name, case) in suite {
        let fixture = Fixture { backend: &backend, prefix: format!("conformance{}", rand::random::<u32>()) };
        if AssertUnwindSafe(case(&fixture)).catch_unwind().await.is_err() {
            panic!("{name}: conformance case {case_name} failed (see the panic above)");
        }
    }
}

fn publication(text: &str) -> Publication {
    Publication { data: Bytes::from(text.to_owned()), ..Default::default() }
}

fn history_options(size: usize) -> PublishOptions {
    PublishOptions {
        history_size: size,
        history_ttl: Duration::from_secs(60),
        history_meta_ttl: Duration::from_secs(3600),
        ..Default::default()
    }
}

fn client(user: &str, client: &str) -> ClientInfo {
    ClientInfo { user: user.into(), client: client.into(), ..Default::default() }
}

// PUB/SUB and control: every backend.

async fn publications_arrive_in_channel_order(f: &Fixture<'_>) {
    let node = f.node("a").await;
    node.broker.subscribe("a").await.unwrap();
    node.broker.subscribe("b").await.unwrap();
    let texts: Vec<String> = (1..=20).map(|i| i.to_string()).collect();
    for text in &texts {
        let outcome = node.broker.publish("a", publication(text), &PublishOptions::default()).await.unwrap();
        assert_eq!(outcome.position, StreamPosition::default(), "without history there is no position");
    }
    node.broker.publish("b", publication("on b"), &PublishOptions::default()).await.unwrap();
    node.wait_until("20 publications and one on b", |d| d.len() >= 21).await;
    assert_eq!(node.texts("a"), texts, "delivered once each, in publish order");
    assert_eq!(node.texts("b"), ["on b"]);
}

async fn join_and_leave_arrive(f: &Fixture<'_>) {
    let node = f.node("a").await;
    node.broker.subscribe("a").await.unwrap();
    node.broker.publish_join("a", client("u", "c1")).await.unwrap();
    node.broker.publish_leave("a", client("u", "c1")).await.unwrap();
    node.wait_until("join and leave", |d| d.len() >= 2).await;
    assert_eq!(node.texts("a"), ["join:c1", "leave:c1"]);
}

/// A networked broker keeps one reference per local subscriber: the channel stays until its
/// last one goes. (The memory engine delivers everything; the hub filters.)
async fn subscriptions_are_counted(f: &Fixture<'_>) {
    let node = f.node("a").await;
    if !node.broker.is_networked() {
        return;
    }
    let broker = &node.broker;
    broker.subscribe("a").await.unwrap();
    broker.subscribe("b").await.unwrap();
    broker.subscribe("b").await.unwrap();
    broker.unsubscribe("b").await.unwrap();
    broker.publish("b", publication("still"), &PublishOptions::default()).await.unwrap();
    node.wait_until("a publication after one of two unsubscribes", |_| node.saw("still")).await;
    broker.unsubscribe("b").await.unwrap();
    // The unsubscribe is applied by the PUB/SUB task; a subscribe round trip on another
    // channel orders this check after it.
    broker.subscribe("z").await.unwrap();
    broker.publish("b", publication("gone"), &PublishOptions::default()).await.unwrap();
    broker.publish("a", publication("after"), &PublishOptions::default()).await.unwrap();
    node.wait_until("the marker on a", |_| node.saw("after")).await;
    assert!(!node.saw("gone"), "an unsubscribed channel was delivered");
}

async fn publications_reach_other_nodes(f: &Fixture<'_>) {
    if !f.backend.shared() {
        return;
    }
    let (a, b) = (f.node("a").await, f.node("b").await);
    a.broker.subscribe("room").await.unwrap();
    b.broker.publish("room", publication("hello"), &PublishOptions::default()).await.unwrap();
    a.wait_until("a publication from the other node", |_| a.saw("hello")).await;
    assert!(!b.saw("hello"), "b did not subscribe");
}

/// Control messages reach every other node, or only the one addressed. A single-process
/// broker has no other nodes: sending succeeds and nothing arrives.
async fn control_reaches_every_node_or_one(f: &Fixture<'_>) {
    let (a, b) = (f.node("a").await, f.node("b").await);
    if !f.backend.shared() {
        a.broker.publish_control(Bytes::from_static(b"to-all"), None).await.unwrap();
        a.broker.publish_control(Bytes::from_static(b"to-b"), Some("b")).await.unwrap();
        a.broker.subscribe("marker").await.unwrap();
        a.broker.publish("marker", publication("marker"), &PublishOptions::default()).await.unwrap();
        a.wait_until("the marker", |_| a.saw("marker")).await;
        assert!(a.texts("control").is_empty() && b.texts("control").is_empty());
        return;
    }
    a.wait_healthy().await;
    b.wait_healthy().await;
    if matches!(f.backend, Backend::Nats(_)) {
        // The NATS broker reports itself healthy once connected; its control subscriptions
        // follow a moment later (on Redis, health waits for them). Probe until they are up.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !b.saw("probe") {
            assert!(tokio::time::Instant::now() < deadline, "b never got a control message");
            a.broker.publish_control(Bytes::from_static(b"probe"), Some("b")).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    a.broker.publish_control(Bytes::from_static(b"to-all"), None).await.unwrap();
    a.broker.publish_control(Bytes::from_static(b"to-b"), Some("b")).await.unwrap();
    b.broker.publish_control(Bytes::from_static(b"to-a"), Some("a")).await.unwrap();
    b.wait_until("broadcast and targeted control at b", |_| b.saw("to-all") && b.saw("to-b")).await;
    a.wait_until("targeted control at a", |_| a.saw("to-a")).await;
    assert!(!a.saw("to-b"), "a got b's message");
}

// History: backends with history streams.

async fn offsets_grow_by_one_and_survive_trimming(f: &Fixture<'_>) {
    let node = f.node("a").await;
    node.broker.subscribe("a").await.unwrap();
    let mut epoch = String::new();
    for i in 1..=5u64 {
        let outcome =
            node.broker.publish("a", publication(&i.to_string()), &history_options(3)).await.unwrap();
        assert_eq!(outcome.position.offset, i);
        if epoch.is_empty() {
            epoch = outcome.position.epoch.clone();
        }
        assert_eq!(outcome.position.epoch, epoch, "epoch is stable");
    }
    node.wait_until("5 publications", |d| d.len() >= 5).await;
    let offsets: Vec<u64> = node.deliveries.locked().iter().map(|d| d.1).collect();
    assert_eq!(offsets, vec![1, 2, 3, 4, 5], "delivered in offset order");
    let all = HistoryFilter { limit: -1, ..Default::default() };
    let history = node.broker.history("a", &all).await.unwrap();
    let offsets: Vec<u64> = history.publications.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, vec![3, 4, 5], "trimmed to history_size");
    assert_eq!(history.position, StreamPosition { offset: 5, epoch });
}

/// Reads from a stream trimmed to its last three publications.
async fn history_reads_by_position(f: &Fixture<'_>) {
    let node = f.node("a").await;
    let mut epoch = String::new();
    for i in 1..=5 {
        epoch = node
            .broker
            .publish("a", publication(&i.to_string()), &history_options(3))
            .await
            .unwrap()
            .position
            .epoch;
    }
    let offsets = |filter: HistoryFilter| {
        let broker = node.broker.clone();
        async move {
            let history = broker.history("a", &filter).await.unwrap();
            history.publications.iter().map(|p| p.offset).collect::<Vec<u64>>()
        }
    };
    let since = Some(StreamPosition { offset: 3, epoch: epoch.clone() });
    assert_eq!(offsets(HistoryFilter { since, limit: -1, ..Default::default() }).await, vec![4, 5]);
    assert_eq!(offsets(HistoryFilter { limit: 2, reverse: true, ..Default::default() }).await, vec![5, 4]);
    let position_only = node.broker.history("a", &HistoryFilter::default()).await.unwrap();
    assert!(position_only.publications.is_empty());
    assert_eq!(position_only.position.offset, 5);
    let wrong_epoch = HistoryFilter {
        since: Some(StreamPosition { offset: 1, epoch: "other".into() }),
        limit: -1,
        ..Default::default()
    };
    assert_eq!(node.broker.history("a", &wrong_epoch).await, Err(EngineError::UnrecoverablePosition));
}

async fn idempotent_publish_delivers_once(f: &Fixture<'_>) {
    let node = f.node("a").await;
    node.broker.subscribe("b").await.unwrap();
    let mut options = history_options(10);
    options.idempotency_key = Some("k1".into());
    options.idempotent_result_ttl = Duration::from_secs(60);
    let first = node.broker.publish("b", publication("x"), &options).await.unwrap();
    let second = node.broker.publish("b", publication("x"), &options).await.unwrap();
    assert!(!first.deduplicated);
    assert!(second.deduplicated);
    assert_eq!(first.position, second.position);
    // A marker published after both shows the second delivered nothing by the time it arrives.
    node.broker.publish("b", publication("marker"), &PublishOptions::default()).await.unwrap();
    node.wait_until("the marker", |_| node.saw("marker")).await;
    assert_eq!(node.texts("b"), ["x", "marker"]);
}

async fn stale_versions_are_dropped(f: &Fixture<'_>) {
    let node = f.node("a").await;
    node.broker.subscribe("v").await.unwrap();
    let publish = |text: &'static str, version: u64, epoch: &'static str| {
        let mut options = history_options(10);
        (options.version, options.version_epoch) = (version, epoch.to_owned());
        let broker = node.broker.clone();
        async move { broker.publish("v", publication(text), &options).await.unwrap() }
    };
    let first = publish("v1", 1, "").await;
    assert!(!first.suppressed);
    let again = publish("v1 again", 1, "").await;
    assert!(again.suppressed, "the same version is stale");
    assert_eq!(again.position, first.position, "a suppressed publish answers the current top");
    // An unversioned publication in between does not re-admit an old version.
    publish("plain", 0, "").await;
    assert!(publish("v0.5", 1, "").await.suppressed);
    assert!(!publish("v2", 2, "").await.suppressed);
    // Another version epoch starts over; an empty epoch compares with whatever is held.
    assert!(!publish("e1", 1, "epoch-b").await.suppressed);
    assert!(publish("e1 again", 1, "").await.suppressed);
    assert!(!publish("e2", 2, "epoch-b").await.suppressed);
    node.wait_until("the accepted publications", |_| node.saw("e2")).await;
    assert_eq!(node.texts("v"), ["v1", "plain", "v2", "e1", "e2"]);
    let history = node.broker.history("v", &HistoryFilter { limit: -1, ..Default::default() }).await.unwrap();
    assert_eq!(history.position.offset, 5, "suppressed publications take no offset");
}

async fn delta_publications_carry_the_previous_data(f: &Fixture<'_>) {
    let node = f.node("a").await;
    node.broker.subscribe("d").await.unwrap();
    let mut options = history_options(10);
    options.use_delta = true;
    for text in ["one", "two"] {
        node.broker.publish("d", publication(text), &options).await.unwrap();
    }
    node.broker.publish("d", publication("plain"), &history_options(10)).await.unwrap();
    node.broker.publish("d", publication("three"), &options).await.unwrap();
    node.wait_until("four publications", |_| node.texts("d").len() == 4).await;
    assert_eq!(node.texts("d"), ["one", "two<-one", "plain", "three<-plain"]);
}

async fn removing_history_keeps_the_position(f: &Fixture<'_>) {
    let node = f.node("a").await;
    let mut last = StreamPosition::default();
    for i in 1..=5 {
        last = node
            .broker
            .publish("a", publication(&i.to_string()), &history_options(3))
            .await
            .unwrap()
            .position;
    }
    node.broker.remove_history("a").await.unwrap();
    let history = node.broker.history("a", &HistoryFilter { limit: -1, ..Default::default() }).await.unwrap();
    assert!(history.publications.is_empty());
    assert_eq!(history.position, last);
    let next = node.broker.publish("a", publication("6"), &history_options(3)).await.unwrap();
    assert_eq!(next.position, StreamPosition { offset: 6, epoch: last.epoch });
}

/// A channel read before any publish has an epoch, which the first publish keeps.
/// Reading a stream that does not exist creates nothing (reads of random names must not grow
/// the engine): offset 0 in no epoch; a reader who knew an epoch gets 112; the first publish
/// starts the epoch, and a reader holding the empty one recovers it ("any epoch").
async fn reading_an_unknown_stream_creates_nothing(f: &Fixture<'_>) {
    let node = f.node("a").await;
    let all = HistoryFilter { limit: -1, ..Default::default() };
    for _ in 0..2 {
        let empty = node.broker.history("fresh", &all).await.unwrap();
        assert_eq!(empty.position, StreamPosition::default());
    }
    let known = |epoch: &str| HistoryFilter {
        since: Some(StreamPosition { offset: 3, epoch: epoch.into() }),
        limit: -1,
        ..Default::default()
    };
    let gone = node.broker.history("fresh", &known("was-here")).await;
    assert_eq!(gone.unwrap_err(), EngineError::UnrecoverablePosition);
    let first = node.broker.publish("fresh", publication("1"), &history_options(3)).await.unwrap();
    assert_eq!(first.position.offset, 1);
    assert!(!first.position.epoch.is_empty());
    let since_empty =
        HistoryFilter { since: Some(StreamPosition::default()), limit: -1, ..Default::default() };
    let recovered = node.broker.history("fresh", &since_empty).await.unwrap();
    assert_eq!((recovered.publications.len(), recovered.position), (1, first.position));
}

async fn history_is_shared_between_nodes(f: &Fixture<'_>) {
    if !f.backend.shared() {
        return;
    }
    let (a, b) = (f.node("a").await, f.node("b").await);
    let outcome = b.broker.publish("room", publication("hello"), &history_options(10)).await.unwrap();
    let history = a.broker.history("room", &HistoryFilter { limit: -1, ..Default::default() }).await.unwrap();
    assert_eq!(history.position, outcome.position);
    assert_eq!(history.publications.len(), 1);
}

/// A PUB/SUB-only broker refuses history with 108 rather than pretending to keep it.
async fn history_is_not_available(f: &Fixture<'_>) {
    let node = f.node("a").await;
    let published = node.broker.publish("a", publication("x"), &history_options(10)).await;
    assert_eq!(published, Err(EngineError::NotAvailable));
    let read = node.broker.history("a", &HistoryFilter { limit: -1, ..Default::default() }).await;
    assert_eq!(read, Err(EngineError::NotAvailable));
    let deduplicated = PublishOptions { idempotency_key: Some("k".into()), ..Default::default() };
    let published = node.broker.publish("a", publication("y"), &deduplicated).await;
    assert_eq!(published, Err(EngineError::NotAvailable), "nothing to deduplicate against");
}

// Presence: backends with a presence manager.

async fn presence_counts_clients_and_users(f: &Fixture<'_>) {
    let node = f.node("a").await;
    let presence = node.presence();
    let ttl = Duration::from_secs(60);
    presence.add_presence("p", "c1", client("u1", "c1"), ttl).await.unwrap();
    presence.add_presence("p", "c2", client("u1", "c2"), ttl).await.unwrap();
    presence.add_presence("p", "c3", client("u2", "c3"), ttl).await.unwrap();
    let stats = presence.presence_stats("p").await.unwrap();
    assert_eq!(stats, PresenceStats { num_clients: 3, num_users: 2 });
    presence.remove_presence("p", "c1", "u1").await.unwrap();
    assert_eq!(presence.presence_stats("p").await.unwrap(), PresenceStats { num_clients: 2, num_users: 2 });
    presence.remove_presence("p", "c3", "u2").await.unwrap();
    assert_eq!(presence.presence_stats("p").await.unwrap(), PresenceStats { num_clients: 1, num_users: 1 });
    presence.add_presence("p", "c3", client("u2", "c3"), ttl).await.unwrap();
    // A refresh of a connection already present counts nothing twice.
    presence.add_presence("p", "c3", client("u2", "c3"), ttl).await.unwrap();
    assert_eq!(presence.presence_stats("p").await.unwrap(), PresenceStats { num_clients: 2, num_users: 2 });
    let members = presence.presence("p").await.unwrap();
    assert_eq!(members.keys().cloned().collect::<Vec<_>>(), vec!["c2", "c3"]);
    assert_eq!(members["c3"].user, "u2");
    assert_eq!(presence.presence_stats("empty").await.unwrap(), PresenceStats::default());
}

async fn presence_is_shared_between_nodes(f: &Fixture<'_>) {
    if !f.backend.shared() {
        return;
    }
    let (a, b) = (f.node("a").await, f.node("b").await);
    b.presence().add_presence("room", "c", client("u", "c"), Duration::from_secs(60)).await.unwrap();
    assert_eq!(a.presence().presence("room").await.unwrap().len(), 1);
}

// The backends.

#[tokio::test]
async fn memory_engine_conformance() {
    run("memory", Backend::Memory).await;
}

#[tokio::test]
async fn redis_engine_conformance() {
    let Some(server) = RedisServer::start().await else { return };
    run("redis", Backend::Redis(vec![server])).await;
}

#[tokio::test]
async fn redis_engine_with_presence_user_mapping_conformance() {
    let Some(server) = RedisServer::start().await else { return };
    run("redis with presence_user_mapping", Backend::RedisUserMapping(server)).await;
}

#[tokio::test]
async fn redis_engine_with_history_lists_conformance() {
    let Some(server) = RedisServer::start().await else { return };
    run("redis with history_use_lists", Backend::RedisLists(server)).await;
}

#[tokio::test]
async fn sharded_redis_engine_conformance() {
    let (Some(first), Some(second)) = (RedisServer::start().await, RedisServer::start().await) else {
        return;
    };
    run("sharded redis", Backend::Redis(vec![first, second])).await;
}

#[tokio::test]
async fn redis_cluster_engine_conformance() {
    let Some(cluster) = RedisCluster::start().await else { return };
    run("redis cluster", Backend::RedisCluster(cluster)).await;
}

#[tokio::test]
async fn redis_sentinel_engine_conformance() {
    let Some(sentinel) = RedisSentinel::start().await else { return };
    run("redis sentinel", Backend::RedisSentinel(sentinel)).await;
}

#[tokio::test]
async fn nats_broker_conformance() {
    let Some(server) = NatsServer::start().await else { return };
    run("nats", Backend::Nats(server)).await;
}

// Backend-specific behaviour beyond the shared contract.

#[tokio::test(start_paused = true)]
async fn memory_engine_expiry() {
    let engine = MemoryEngine::new();
    let options = PublishOptions {
        history_size: 10,
        history_ttl: Duration::from_secs(5),
        history_meta_ttl: Duration::from_secs(20),
        ..Default::default()
    };
    let first = engine.publish("t", publication("1"), &options).await.unwrap();
    tokio::time::advance(Duration::from_secs(6)).await;
    let all = HistoryFilter { limit: -1, meta_ttl: Duration::from_secs(20), ..Default::default() };
    let history = engine.history("t", &all).await.unwrap();
    assert!(history.publications.is_empty(), "publications expire after history_ttl");
    assert_eq!(history.position, first.position, "meta outlives publications");
    tokio::time::advance(Duration::from_secs(21)).await;
    let next = engine.publish("t", publication("2"), &options).await.unwrap();
    assert_eq!(next.position.offset, 1, "lost meta starts a new epoch");
    assert_ne!(next.position.epoch, first.position.epoch);

    engine.add_presence("p", "c1", ClientInfo::default(), Duration::from_secs(3)).await.unwrap();
    tokio::time::advance(Duration::from_secs(4)).await;
    assert!(engine.presence("p").await.unwrap().is_empty(), "presence expires without refresh");
}

/// With Redis gone, calls fail within `io_timeout` instead of hanging, health turns false,
/// and everything works again (PUB/SUB resubscribed) once a server is back on the same port.
#[tokio::test]
async fn redis_outage_fails_fast_and_recovers() {
    let Some(server) = RedisServer::start().await else { return };
    let port = server.port;
    let backend = Backend::Redis(vec![server]);
    let node = backend.node("outage", "n").await;
    node.broker.subscribe("ch").await.unwrap();
    node.broker.publish("ch", publication("before"), &history_options(10)).await.unwrap();
    node.wait_until("a first publication", |d| d.len() == 1).await;
    drop(backend);

    let started = tokio::time::Instant::now();
    let failed = node.broker.publish("ch", publication("during"), &history_options(10)).await;
    assert!(matches!(failed, Err(EngineError::Internal(_))), "{failed:?}");
    assert!(started.elapsed() <= Duration::from_millis(2500), "took {:?}", started.elapsed());
    node.wait_until("health to turn false", |_| !node.broker.is_healthy()).await;

    let _restarted = RedisServer::start_on(port, &[]).await.expect("redis-server restarts");
    node.wait_until("health to come back", |_| node.broker.is_healthy()).await;
    let outcome = node.broker.publish("ch", publication("after"), &history_options(10)).await.unwrap();
    assert_eq!(outcome.position.offset, 1, "a Redis without persistence starts a new epoch");
    node.wait_until("delivery after the restart", |_| node.saw("after")).await;
}

/// Channels spread over all three masters still deliver (sharded PUB/SUB per slot).
#[tokio::test]
async fn redis_cluster_delivers_channels_on_every_master() {
    let Some(cluster) = RedisCluster::start().await else { return };
    let backend = Backend::RedisCluster(cluster);
    let node = backend.node("spread", "n1").await;
    let channels: Vec<String> = (0..12).map(|i| format!("spread-{i}")).collect();
    for channel in &channels {
        node.broker.subscribe(channel).await.unwrap();
    }
    for channel in &channels {
        node.broker.publish(channel, publication(channel), &history_options(5)).await.unwrap();
    }
    node.wait_until("a publication on every channel", |d| {
        channels.iter().all(|c| d.iter().any(|d| &d.0 == c && &d.2 == c))
    })
    .await;
}

/// `presence_user_mapping` keeps Centrifugo's per-user keys, so nodes of both agree on counts.
#[tokio::test]
async fn redis_user_mapping_keeps_per_user_counts_under_centrifugo_keys() {
    let Some(server) = RedisServer::start().await else { return };
    let address = server.address();
    let backend = Backend::RedisUserMapping(server);
    let node = backend.node("mapped", "n").await;
    let ttl = Duration::from_secs(60);
    node.presence().add_presence("room", "c1", client("u1", "c1"), ttl).await.unwrap();
    node.presence().add_presence("room", "c2", client("u1", "c2"), ttl).await.unwrap();
    let mut redis = ::redis::Client::open(address).unwrap().get_multiplexed_async_connection().await.unwrap();
    let counts: BTreeMap<String, i64> = ::redis::cmd("HGETALL")
        .arg("mapped.presence.user.clients.room")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(counts, BTreeMap::from([("u1".to_owned(), 2)]));
    let expiry: Option<f64> = ::redis::cmd("ZSCORE")
        .arg("mapped.presence.user.expire.room")
        .arg("u1")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(expiry.is_some());
    node.presence().remove_presence("room", "c1", "u1").await.unwrap();
    let counts: BTreeMap<String, i64> = ::redis::cmd("HGETALL")
        .arg("mapped.presence.user.clients.room")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(counts, BTreeMap::from([("u1".to_owned(), 1)]));
}

/// `history_use_lists` keeps history where Centrifugo does: `P.list.<channel>`, newest first,
/// each entry a `__p1:<offset>:<epoch>__` message, the top offset in `P.list.meta.<channel>`.
#[tokio::test]
async fn redis_history_lists_use_centrifugo_keys() {
    let Some(server) = RedisServer::start().await else { return };
    let address = server.address();
    let backend = Backend::RedisLists(server);
    let node = backend.node("listed", "n").await;
    for text in ["one", "two", "three"] {
        node.broker.publish("ch", publication(text), &history_options(2)).await.unwrap();
    }
    let mut redis = ::redis::Client::open(address).unwrap().get_multiplexed_async_connection().await.unwrap();
    let entries: Vec<Vec<u8>> =
        ::redis::cmd("LRANGE").arg("listed.list.ch").arg(0).arg(-1).query_async(&mut redis).await.unwrap();
    assert_eq!(entries.len(), 2, "trimmed to history_size");
    assert!(entries[0].starts_with(b"__p1:3:") && entries[1].starts_with(b"__p1:2:"), "newest first");
    let top: String =
        ::redis::cmd("HGET").arg("listed.list.meta.ch").arg("s").query_async(&mut redis).await.unwrap();
    assert_eq!(top, "3");
    let streams: i64 = ::redis::cmd("EXISTS").arg("listed.stream.ch").query_async(&mut redis).await.unwrap();
    assert_eq!(streams, 0, "no stream alongside");
}
