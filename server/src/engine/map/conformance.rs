//! One behaviour suite for every map broker (memory, Redis, PostgreSQL): state pages, offsets, suppressed
//! writes, key expiry, streams, epochs and delta bases. Deliveries are awaited, never assumed
//! synchronous, so networked brokers pass the same code.

use crate::sync::Mutex;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::memory::MemoryMapBroker;
use super::*;
use crate::engine::BrokerEventHandler;
use crate::proto::client::ClientInfo;

/// Values are written as JSON strings (a JSONB column takes nothing else) and read back as text.
fn json_text(text: &str) -> Bytes {
    Bytes::from(serde_json::to_string(text).expect("strings serialise"))
}

/// The text a [`json_text`] value holds ("" for none).
fn text_of(data: &[u8]) -> String {
    serde_json::from_slice(data).unwrap_or_else(|_| String::from_utf8_lossy(data).into_owned())
}

/// One write as delivered: (channel, offset, key, removed, data, delta base).
#[derive(Debug, Clone, PartialEq)]
struct Delivered {
    channel: String,
    offset: u64,
    key: String,
    removed: bool,
    data: String,
    base: Option<String>,
}

#[derive(Default)]
struct Recorder(Mutex<Vec<Delivered>>);

impl BrokerEventHandler for Recorder {
    fn handle_publication(
        &self,
        channel: &str,
        publication: Publication,
        position: StreamPosition,
        base: Option<Bytes>,
    ) {
        assert_eq!(publication.offset, position.offset, "the publication carries its position");
        self.0.locked().push(Delivered {
            channel: channel.to_owned(),
            offset: position.offset,
            key: publication.key,
            removed: publication.removed,
            data: text_of(&publication.data),
            base: base.map(|b| text_of(&b)),
        });
    }
    fn handle_join(&self, _: &str, _: ClientInfo) {}
    fn handle_leave(&self, _: &str, _: ClientInfo) {}
    fn handle_control(&self, _: &[u8]) {}
}

/// A map broker under test and what it delivered.
pub(crate) struct Fixture {
    broker: Arc<dyn MapBroker>,
    recorder: Arc<Recorder>,
    prefix: String,
}

impl Fixture {
    pub(crate) fn new(broker: Arc<dyn MapBroker>) -> Self {
        let recorder = Arc::new(Recorder::default());
        broker.set_event_handler(recorder.clone());
        Self { broker, recorder, prefix: format!("m{}", rand::random::<u32>()) }
    }

    fn channel(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    fn delivered(&self, channel: &str) -> Vec<Delivered> {
        self.recorder.0.locked().iter().filter(|d| d.channel == channel).cloned().collect()
    }

    async fn wait_for(&self, channel: &str, count: usize) -> Vec<Delivered> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
        loop {
            let seen = self.delivered(channel);
            if seen.len() >= count {
                return seen;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {count} on {channel}: {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn set(
        &self,
        channel: &str,
        options: &MapChannelOptions,
        key: &str,
        data: &str,
        write: MapWrite,
    ) -> MapUpdate {
        let publication = Publication { key: key.into(), data: json_text(data), ..Default::default() };
        self.broker.publish(channel, options, publication, &write).await.unwrap()
    }

    async fn subscribe(&self, channel: &str) {
        self.broker.subscribe(channel).await.unwrap();
    }
}

pub(crate) fn options(mode: MapMode) -> MapChannelOptions {
    let expiring = mode != MapMode::Persistent;
    MapChannelOptions {
        mode,
        key_ttl: if expiring { Duration::from_secs(60) } else { Duration::ZERO },
        stream_size: 100,
        stream_ttl: Duration::from_secs(60),
        meta_ttl: (mode == MapMode::Recoverable).then_some(Duration::from_secs(600)),
    }
}

type Case = for<'a> fn(&'a Fixture) -> Pin<Box<dyn Future<Output = ()> + 'a>>;

macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        &[$((stringify!($case), { fn run<'a>(f: &'a Fixture) -> Pin<Box<dyn Future<Output = ()> + 'a>> { Box::pin($case(f)) } run as Case })),*]
    };
}

pub(crate) const CASES: &[(&str, Case)] = cases![
    state_reads_in_key_order_page_by_page,
    writes_take_offsets_and_reach_subscribers_in_order,
    suppressed_writes_change_nothing,
    versions_are_kept_per_key,
    ephemeral_maps_have_no_stream,
    stream_reads_follow_history_rules,
    clearing_starts_a_new_epoch,
    delta_bases_are_the_keys_previous_values,
    expired_keys_are_removed_like_any_key,
];

/// Runs every case, each on its own channels.
pub(crate) async fn run(name: &str, make: impl Fn() -> Arc<dyn MapBroker>) {
    use futures_util::FutureExt;
    for (case_name, case) in CASES {
        let fixture = Fixture::new(make());
        if std::panic::AssertUnwindSafe(case(&fixture)).catch_unwind().await.is_err() {
            panic!("{name}: map broker case {case_name} failed (see the panic above)");
        }
    }
}

async fn state_reads_in_key_order_page_by_page(f: &Fixture) {
    let channel = f.channel("pages");
    let opts = options(MapMode::Persistent);
    for key in ["k3", "k1", "k5", "k2", "k4"] {
        f.set(&channel, &opts, key, key, MapWrite::default()).await;
    }
    let read = |cursor: &str, limit| StateRead { cursor: cursor.into(), limit, ..Default::default() };
    let first = f.broker.read_state(&channel, &opts, &read("", 2)).await.unwrap();
    let keys = |page: &StatePage| page.entries.iter().map(|e| e.key.clone()).collect::<Vec<_>>();
    assert_eq!(keys(&first), ["k1", "k2"]);
    assert!(!first.cursor.is_empty());
    let second = f.broker.read_state(&channel, &opts, &read(&first.cursor, 2)).await.unwrap();
    assert_eq!(keys(&second), ["k3", "k4"]);
    let last = f.broker.read_state(&channel, &opts, &read(&second.cursor, 2)).await.unwrap();
    assert_eq!(keys(&last), ["k5"]);
    assert_eq!(last.cursor, "", "the last page has no cursor");
    assert_eq!(last.position.offset, 5);
    let all = f.broker.read_state(&channel, &opts, &read("", -1)).await.unwrap();
    assert_eq!(all.entries.len(), 5);
    assert_eq!(text_of(&all.entries[0].data), "k1");
    let none = f.broker.read_state(&channel, &opts, &read("", 0)).await.unwrap();
    assert!(none.entries.is_empty() && none.position.offset == 5);
    let one = StateRead { key: Some("k4".into()), ..Default::default() };
    assert_eq!(keys(&f.broker.read_state(&channel, &opts, &one).await.unwrap()), ["k4"]);
    assert_eq!(f.broker.stats(&channel).await.unwrap(), 5);
}

async fn writes_take_offsets_and_reach_subscribers_in_order(f: &Fixture) {
    let channel = f.channel("order");
    let opts = options(MapMode::Recoverable);
    f.subscribe(&channel).await;
    for i in 0..10 {
        let update =
            f.set(&channel, &opts, &format!("k{}", i % 3), &i.to_string(), MapWrite::default()).await;
        assert_eq!(update.position.offset, i + 1);
    }
    let removed = f.broker.remove(&channel, &opts, "k1", &MapRemoval::default()).await.unwrap();
    assert_eq!(removed.position.offset, 11);
    let seen = f.wait_for(&channel, 11).await;
    assert_eq!(seen.iter().map(|d| d.offset).collect::<Vec<_>>(), (1..=11).collect::<Vec<_>>());
    assert!(seen[10].removed && seen[10].key == "k1" && seen[10].data.is_empty());
    let page =
        f.broker.read_state(&channel, &opts, &StateRead { limit: -1, ..Default::default() }).await.unwrap();
    let state: Vec<(&str, String)> =
        page.entries.iter().map(|e| (e.key.as_str(), text_of(&e.data))).collect();
    assert_eq!(state, [("k0", "9".to_owned()), ("k2", "8".to_owned())]);
}

async fn suppressed_writes_change_nothing(f: &Fixture) {
    let channel = f.channel("suppressed");
    let opts = options(MapMode::Persistent);
    f.subscribe(&channel).await;
    let idempotent = MapWrite {
        idempotency_key: Some("once".into()),
        idempotent_result_ttl: Duration::from_secs(60),
        ..Default::default()
    };
    let first = f.set(&channel, &opts, "a", "1", idempotent.clone()).await;
    let again = f.set(&channel, &opts, "a", "2", idempotent).await;
    assert_eq!((again.suppressed, &again.position), (Some(Suppressed::Idempotency), &first.position));
    let if_new = MapWrite { key_mode: KeyMode::IfNew, ..Default::default() };
    assert_eq!(
        f.set(&channel, &opts, "a", "3", if_new.clone()).await.suppressed,
        Some(Suppressed::KeyExists)
    );
    assert_eq!(f.set(&channel, &opts, "b", "1", if_new).await.suppressed, None);
    let if_exists = MapWrite { key_mode: KeyMode::IfExists, ..Default::default() };
    assert_eq!(f.set(&channel, &opts, "c", "1", if_exists).await.suppressed, Some(Suppressed::KeyNotFound));
    let missing = f.broker.remove(&channel, &opts, "zzz", &MapRemoval::default()).await.unwrap();
    assert_eq!(missing.suppressed, Some(Suppressed::KeyNotFound));
    assert_eq!(missing.position.offset, 2, "suppressed writes take no offset");
    let marker = f.set(&channel, &opts, "marker", "m", MapWrite::default()).await;
    assert_eq!(marker.position.offset, 3);
    let seen = f.wait_for(&channel, 3).await;
    assert_eq!(seen.iter().map(|d| d.key.as_str()).collect::<Vec<_>>(), ["a", "b", "marker"]);
}

async fn versions_are_kept_per_key(f: &Fixture) {
    let channel = f.channel("versions");
    let opts = options(MapMode::Persistent);
    let versioned =
        |version, epoch: &str| MapWrite { version, version_epoch: epoch.into(), ..Default::default() };
    assert_eq!(f.set(&channel, &opts, "a", "v2", versioned(2, "")).await.suppressed, None);
    assert_eq!(
        f.set(&channel, &opts, "a", "v1", versioned(1, "")).await.suppressed,
        Some(Suppressed::Version)
    );
    assert_eq!(f.set(&channel, &opts, "b", "v1", versioned(1, "")).await.suppressed, None, "per key");
    assert_eq!(
        f.set(&channel, &opts, "a", "e1", versioned(1, "other")).await.suppressed,
        None,
        "another epoch"
    );
    assert_eq!(
        f.set(&channel, &opts, "a", "e1", versioned(1, "")).await.suppressed,
        Some(Suppressed::Version)
    );
    assert_eq!(f.set(&channel, &opts, "a", "e3", versioned(3, "")).await.suppressed, None);
}

async fn ephemeral_maps_have_no_stream(f: &Fixture) {
    let channel = f.channel("ephemeral");
    let opts = options(MapMode::Ephemeral);
    f.subscribe(&channel).await;
    let update = f.set(&channel, &opts, "a", "1", MapWrite::default()).await;
    assert_eq!(update.position.offset, 0);
    f.broker.remove(&channel, &opts, "a", &MapRemoval::default()).await.unwrap();
    let seen = f.wait_for(&channel, 2).await;
    assert!(seen.iter().all(|d| d.offset == 0));
    let page =
        f.broker.read_state(&channel, &opts, &StateRead { limit: -1, ..Default::default() }).await.unwrap();
    assert!(page.entries.is_empty());
}

async fn stream_reads_follow_history_rules(f: &Fixture) {
    let channel = f.channel("stream");
    let mut opts = options(MapMode::Persistent);
    opts.stream_size = 3;
    let position = f.broker.read_state(&channel, &opts, &StateRead::default()).await.unwrap().position;
    assert_eq!(position.offset, 0);
    assert!(!position.epoch.is_empty(), "reading fixes the epoch");
    for i in 0..5 {
        f.set(&channel, &opts, &format!("k{i}"), "x", MapWrite::default()).await;
    }
    let since = |offset, epoch: &str| HistoryFilter {
        since: Some(StreamPosition { offset, epoch: epoch.into() }),
        limit: -1,
        ..Default::default()
    };
    let read = f.broker.read_stream(&channel, &opts, &since(3, &position.epoch)).await.unwrap();
    assert_eq!(read.publications.iter().map(|p| p.offset).collect::<Vec<_>>(), [4, 5]);
    assert_eq!(read.position, StreamPosition { offset: 5, epoch: position.epoch.clone() }, "the epoch stays");
    let trimmed = f.broker.read_stream(&channel, &opts, &since(0, "")).await.unwrap();
    assert_eq!(trimmed.publications.first().map(|p| p.offset), Some(3), "trimmed to stream_size");
    let wrong = f.broker.read_stream(&channel, &opts, &since(3, "other")).await;
    assert_eq!(wrong.unwrap_err(), EngineError::UnrecoverablePosition);
    let revision = StateRead {
        revision: Some(StreamPosition { offset: 1, epoch: "other".into() }),
        ..Default::default()
    };
    assert_eq!(
        f.broker.read_state(&channel, &opts, &revision).await.unwrap_err(),
        EngineError::UnrecoverablePosition
    );
}

async fn clearing_starts_a_new_epoch(f: &Fixture) {
    let channel = f.channel("clear");
    let opts = options(MapMode::Persistent);
    let before = f.set(&channel, &opts, "a", "1", MapWrite::default()).await.position;
    f.broker.clear(&channel).await.unwrap();
    assert_eq!(f.broker.stats(&channel).await.unwrap(), 0);
    let after = f.set(&channel, &opts, "b", "1", MapWrite::default()).await.position;
    assert_eq!(after.offset, 1);
    assert_ne!(after.epoch, before.epoch);
}

async fn delta_bases_are_the_keys_previous_values(f: &Fixture) {
    let channel = f.channel("delta");
    let opts = options(MapMode::Persistent);
    f.subscribe(&channel).await;
    let delta = MapWrite { use_delta: true, ..Default::default() };
    f.set(&channel, &opts, "a", "a1", delta.clone()).await;
    f.set(&channel, &opts, "b", "b1", delta.clone()).await;
    f.set(&channel, &opts, "a", "a2", delta).await;
    let seen = f.wait_for(&channel, 3).await;
    let bases: Vec<Option<&str>> = seen.iter().map(|d| d.base.as_deref()).collect();
    assert_eq!(bases, [None, None, Some("a1")]);
}

async fn expired_keys_are_removed_like_any_key(f: &Fixture) {
    let channel = f.channel("expiry");
    let mut opts = options(MapMode::Recoverable);
    opts.key_ttl = Duration::from_secs(1);
    f.subscribe(&channel).await;
    f.set(&channel, &opts, "gone", "1", MapWrite::default()).await;
    let kept = MapWrite { key_mode: KeyMode::IfNew, refresh_ttl_on_suppress: true, ..Default::default() };
    f.set(&channel, &opts, "kept", "1", MapWrite::default()).await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        f.set(&channel, &opts, "kept", "again", kept.clone()).await;
    }
    let seen = f.wait_for(&channel, 3).await;
    assert_eq!((seen[2].key.as_str(), seen[2].removed, seen[2].offset), ("gone", true, 3));
    let page =
        f.broker.read_state(&channel, &opts, &StateRead { limit: -1, ..Default::default() }).await.unwrap();
    assert_eq!(
        page.entries.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
        ["kept"],
        "a refreshed key stays"
    );
    let stream = f
        .broker
        .read_stream(&channel, &opts, &HistoryFilter { limit: -1, ..Default::default() })
        .await
        .unwrap();
    assert!(stream.publications.last().unwrap().removed, "the expiry is in the stream");
}

#[tokio::test]
async fn memory_map_broker_conformance() {
    run("memory", || MemoryMapBroker::new() as Arc<dyn MapBroker>).await;
}

fn redis_section(configure: impl FnOnce(&mut crate::config::RedisEngine)) -> crate::config::RedisMapBroker {
    let mut section = crate::config::RedisMapBroker::default();
    section.redis.prefix = format!("mapconf{}", rand::random::<u32>());
    section.redis.io_timeout = crate::config::ConfigDuration::secs(2);
    section.cleanup_interval =
        crate::config::SignedDuration { negative: false, magnitude: Duration::from_millis(200) };
    configure(&mut section.redis);
    section
}

#[tokio::test]
async fn redis_map_broker_conformance() {
    use crate::test_support::RedisServer;
    let Some(server) = RedisServer::start().await else { return };
    let section = redis_section(|redis| redis.address = vec![server.address()]);
    run("redis", || crate::engine::redis::RedisMapBroker::new(&section).unwrap() as Arc<dyn MapBroker>).await;
}

#[tokio::test]
async fn redis_cluster_map_broker_conformance() {
    use crate::test_support::RedisCluster;
    let Some(cluster) = RedisCluster::start().await else { return };
    let section = redis_section(|redis| redis.cluster_address = cluster.addresses());
    run("redis cluster", || {
        crate::engine::redis::RedisMapBroker::new(&section).unwrap() as Arc<dyn MapBroker>
    })
    .await;
}
