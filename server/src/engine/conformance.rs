//! One behaviour suite for every engine: the same checks run against the memory engine and
//! against Redis (single server, and several servers sharded by channel), each on a fresh
//! engine. Deliveries are awaited, not assumed synchronous, so networked engines pass the same
//! code.
//!
//! The Redis variants start their own `redis-server` on a free loopback port. Without the
//! binary they are skipped with a message, unless `SPINWIRE_REQUIRE_REDIS=1` (set by
//! `tests/run-all.sh`, so CI can never skip them silently).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use super::memory::MemoryEngine;
use super::*;

type Deliveries = Arc<Mutex<Vec<(String, u64, String)>>>;

struct Recorder(Deliveries);

impl BrokerEventHandler for Recorder {
    fn handle_publication(&self, channel: &str, publication: Publication, position: StreamPosition) {
        let text = String::from_utf8_lossy(&publication.data).into_owned();
        assert_eq!(publication.offset, position.offset);
        self.0.lock().unwrap().push((channel.to_owned(), position.offset, text));
    }
    fn handle_join(&self, channel: &str, info: ClientInfo) {
        self.0.lock().unwrap().push((channel.to_owned(), 0, format!("join:{}", info.client)));
    }
    fn handle_leave(&self, channel: &str, info: ClientInfo) {
        self.0.lock().unwrap().push((channel.to_owned(), 0, format!("leave:{}", info.client)));
    }
    fn handle_control(&self, payload: &[u8]) {
        let text = String::from_utf8_lossy(payload).into_owned();
        self.0.lock().unwrap().push(("control".to_owned(), 0, text));
    }
}

/// Waits (up to 5 s) until `done` holds for the deliveries so far.
async fn wait_until(deliveries: &Deliveries, what: &str, done: impl Fn(&[(String, u64, String)]) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if done(&deliveries.lock().unwrap()) {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}; got {:?}", deliveries.lock().unwrap());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
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

async fn check_broker<B: Broker + ?Sized>(broker: &B, deliveries: Deliveries) {
    broker.subscribe("a").await.unwrap();
    broker.subscribe("b").await.unwrap();
    // Offsets start at 1, grow by one, and survive trimming.
    let mut epoch = String::new();
    for i in 1..=5u64 {
        let outcome = broker.publish("a", publication(&format!("{i}")), &history_options(3)).await.unwrap();
        assert_eq!(outcome.position.offset, i);
        if epoch.is_empty() {
            epoch = outcome.position.epoch.clone();
        }
        assert_eq!(outcome.position.epoch, epoch, "epoch is stable");
    }
    wait_until(&deliveries, "5 publications", |d| d.len() >= 5).await;
    let got: Vec<u64> = deliveries.lock().unwrap().iter().map(|d| d.1).collect();
    assert_eq!(got, vec![1, 2, 3, 4, 5], "delivered in offset order");

    let all = HistoryFilter { limit: -1, ..Default::default() };
    let history = broker.history("a", &all).await.unwrap();
    let offsets: Vec<u64> = history.publications.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, vec![3, 4, 5], "trimmed to history_size");
    assert_eq!(history.position, StreamPosition { offset: 5, epoch: epoch.clone() });

    let since = HistoryFilter {
        since: Some(StreamPosition { offset: 3, epoch: epoch.clone() }),
        limit: -1,
        ..Default::default()
    };
    let offsets: Vec<u64> =
        broker.history("a", &since).await.unwrap().publications.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, vec![4, 5]);

    let reverse = HistoryFilter { limit: 2, reverse: true, ..Default::default() };
    let offsets: Vec<u64> =
        broker.history("a", &reverse).await.unwrap().publications.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, vec![5, 4]);

    let position_only = HistoryFilter { limit: 0, ..Default::default() };
    let history = broker.history("a", &position_only).await.unwrap();
    assert!(history.publications.is_empty());
    assert_eq!(history.position.offset, 5);

    let wrong_epoch = HistoryFilter {
        since: Some(StreamPosition { offset: 1, epoch: "other".into() }),
        limit: -1,
        ..Default::default()
    };
    assert_eq!(broker.history("a", &wrong_epoch).await, Err(EngineError::UnrecoverablePosition));

    // Idempotent publish returns the first result and delivers nothing new.
    let mut options = history_options(10);
    options.idempotency_key = Some("k1".into());
    options.idempotent_result_ttl = Duration::from_secs(60);
    let first = broker.publish("b", publication("x"), &options).await.unwrap();
    let second = broker.publish("b", publication("x"), &options).await.unwrap();
    assert!(!first.deduplicated);
    assert!(second.deduplicated);
    assert_eq!(first.position, second.position);
    // A marker published after both shows the second delivered nothing by the time it arrives.
    broker.publish("b", publication("marker"), &PublishOptions::default()).await.unwrap();
    wait_until(&deliveries, "the marker", |d| d.iter().any(|d| d.2 == "marker")).await;
    let b_count = deliveries.lock().unwrap().iter().filter(|d| d.0 == "b" && d.2 == "x").count();
    assert_eq!(b_count, 1);

    // Removing history keeps the position.
    broker.remove_history("a").await.unwrap();
    let history = broker.history("a", &all).await.unwrap();
    assert!(history.publications.is_empty());
    assert_eq!(history.position, StreamPosition { offset: 5, epoch: epoch.clone() });
    let next = broker.publish("a", publication("6"), &history_options(3)).await.unwrap();
    assert_eq!(next.position.offset, 6);

    // A fresh channel read before any publish has an epoch that the first publish keeps.
    let empty = broker.history("fresh", &all).await.unwrap();
    assert_eq!(empty.position.offset, 0);
    assert!(!empty.position.epoch.is_empty());
    let first = broker.publish("fresh", publication("1"), &history_options(3)).await.unwrap();
    assert_eq!(first.position, StreamPosition { offset: 1, epoch: empty.position.epoch });

    // Without history there is no position.
    let outcome = broker.publish("c", publication("n"), &PublishOptions::default()).await.unwrap();
    assert_eq!(outcome.position, StreamPosition::default());

    broker.publish_join("a", ClientInfo { client: "c1".into(), ..Default::default() }).await.unwrap();
    broker.publish_leave("a", ClientInfo { client: "c1".into(), ..Default::default() }).await.unwrap();
    wait_until(&deliveries, "join and leave", |d| d.iter().any(|d| d.2 == "leave:c1")).await;
    let tail: Vec<String> = deliveries.lock().unwrap().iter().rev().take(2).map(|d| d.2.clone()).collect();
    assert_eq!(tail, vec!["leave:c1".to_string(), "join:c1".to_string()]);

    if broker.is_networked() {
        // Subscriptions are counted: the channel stays until its last reference goes.
        broker.subscribe("b").await.unwrap();
        broker.unsubscribe("b").await.unwrap();
        broker.publish("b", publication("still"), &PublishOptions::default()).await.unwrap();
        wait_until(&deliveries, "a publication after one of two unsubscribes", |d| {
            d.iter().any(|d| d.2 == "still")
        })
        .await;
        broker.unsubscribe("b").await.unwrap();
        // The unsubscribe is applied by the PUB/SUB task; a subscribe round trip on another
        // channel orders this check after it.
        broker.subscribe("z").await.unwrap();
        broker.publish("b", publication("gone"), &PublishOptions::default()).await.unwrap();
        broker.publish("a", publication("after"), &PublishOptions::default()).await.unwrap();
        wait_until(&deliveries, "the marker on a", |d| d.iter().any(|d| d.2 == "after")).await;
        assert!(!deliveries.lock().unwrap().iter().any(|d| d.2 == "gone"), "unsubscribed channel delivered");
    }
}

async fn check_presence<P: PresenceManager + ?Sized>(presence: &P) {
    let ttl = Duration::from_secs(60);
    let info = |user: &str, client: &str| ClientInfo {
        user: user.into(),
        client: client.into(),
        ..Default::default()
    };
    presence.add_presence("p", "c1", info("u1", "c1"), ttl).await.unwrap();
    presence.add_presence("p", "c2", info("u1", "c2"), ttl).await.unwrap();
    presence.add_presence("p", "c3", info("u2", "c3"), ttl).await.unwrap();
    let stats = presence.presence_stats("p").await.unwrap();
    assert_eq!(stats, PresenceStats { num_clients: 3, num_users: 2 });
    presence.remove_presence("p", "c1").await.unwrap();
    let members = presence.presence("p").await.unwrap();
    assert_eq!(members.keys().cloned().collect::<Vec<_>>(), vec!["c2", "c3"]);
    assert_eq!(members["c3"].user, "u2");
    assert_eq!(presence.presence_stats("empty").await.unwrap(), PresenceStats::default());
}

#[tokio::test]
async fn memory_engine_conformance() {
    let engine = MemoryEngine::new();
    let deliveries = Deliveries::default();
    engine.set_event_handler(Arc::new(Recorder(deliveries.clone())));
    check_broker(engine.as_ref(), deliveries).await;
    check_presence(engine.as_ref()).await;
}

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

/// A `redis-server` on a free loopback port, killed on drop.
pub(crate) struct RedisServer {
    child: std::process::Child,
    pub port: u16,
    dir: Option<std::path::PathBuf>,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl RedisServer {
    /// Starts one, or returns `None` (after saying so) when `redis-server` is not installed and
    /// the run does not require it.
    pub(crate) async fn start() -> Option<Self> {
        Self::start_with(&[]).await
    }

    /// Same, with extra `redis-server` arguments; the server's files go to a fresh directory.
    pub(crate) async fn start_with(extra: &[&str]) -> Option<Self> {
        let required = std::env::var("SPINWIRE_REQUIRE_REDIS").is_ok_and(|v| v == "1");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = std::env::temp_dir().join(format!("spinwire-redis-{port}-{}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .args(extra)
            .stdout(std::process::Stdio::null())
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(error) if !required => {
                eprintln!(
                    "skipping: redis-server not available ({error}); install it or run tests/run-all.sh"
                );
                return None;
            }
            Err(error) => panic!("redis-server required (SPINWIRE_REQUIRE_REDIS=1) but not started: {error}"),
        };
        let server = Self { child, port, dir: Some(dir) };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "redis-server did not start on {port}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Some(server)
    }

    pub(crate) fn address(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

fn redis_section(addresses: Vec<String>) -> crate::config::RedisEngine {
    crate::config::RedisEngine {
        address: addresses,
        prefix: format!("test{}", rand::random::<u32>()),
        io_timeout: crate::config::ConfigDuration::secs(2),
        ..Default::default()
    }
}

#[tokio::test]
async fn redis_engine_conformance() {
    let Some(server) = RedisServer::start().await else { return };
    let engine =
        super::redis::RedisEngine::new(&redis_section(vec![server.address()]), "engine.redis", Some("n1"))
            .unwrap();
    let deliveries = Deliveries::default();
    engine.set_event_handler(Arc::new(Recorder(deliveries.clone())));
    check_broker(engine.as_ref(), deliveries).await;
    check_presence(engine.as_ref()).await;
}

#[tokio::test]
async fn sharded_redis_engine_conformance() {
    let (Some(first), Some(second)) = (RedisServer::start().await, RedisServer::start().await) else {
        return;
    };
    let section = redis_section(vec![first.address(), second.address()]);
    let engine = super::redis::RedisEngine::new(&section, "engine.redis", Some("n1")).unwrap();
    let deliveries = Deliveries::default();
    engine.set_event_handler(Arc::new(Recorder(deliveries.clone())));
    check_broker(engine.as_ref(), deliveries).await;
    check_presence(engine.as_ref()).await;
}

/// Two engines on one Redis behave as two nodes: each sees the other's publications, presence
/// and history, and control messages reach every node or just the one addressed.
#[tokio::test]
async fn redis_engines_share_state_between_nodes() {
    let Some(server) = RedisServer::start().await else { return };
    let section = redis_section(vec![server.address()]);
    let node_a = super::redis::RedisEngine::new(&section, "engine.redis", Some("a")).unwrap();
    let node_b = super::redis::RedisEngine::new(&section, "engine.redis", Some("b")).unwrap();
    let (seen_a, seen_b) = (Deliveries::default(), Deliveries::default());
    node_a.set_event_handler(Arc::new(Recorder(seen_a.clone())));
    node_b.set_event_handler(Arc::new(Recorder(seen_b.clone())));
    node_a.subscribe("room").await.unwrap();
    let outcome = node_b.publish("room", publication("hello"), &history_options(10)).await.unwrap();
    wait_until(&seen_a, "a publication from the other node", |d| d.iter().any(|d| d.2 == "hello")).await;
    let history = node_a.history("room", &HistoryFilter { limit: -1, ..Default::default() }).await.unwrap();
    assert_eq!(history.position, outcome.position);
    assert_eq!(history.publications.len(), 1);

    let info = ClientInfo { user: "u".into(), client: "c".into(), ..Default::default() };
    node_b.add_presence("room", "c", info, Duration::from_secs(60)).await.unwrap();
    assert_eq!(node_a.presence("room").await.unwrap().len(), 1);

    // Control: the control channels are subscribed once the PUB/SUB connection is up.
    wait_until(&seen_b, "b's PUB/SUB", |_| node_b.is_healthy()).await;
    wait_until(&seen_a, "a's PUB/SUB", |_| node_a.is_healthy()).await;
    node_a.publish_control(bytes::Bytes::from_static(b"to-all"), None).await.unwrap();
    node_a.publish_control(bytes::Bytes::from_static(b"to-b"), Some("b")).await.unwrap();
    node_b.publish_control(bytes::Bytes::from_static(b"to-a"), Some("a")).await.unwrap();
    wait_until(&seen_b, "broadcast and targeted control at b", |d| {
        d.iter().any(|d| d.2 == "to-all") && d.iter().any(|d| d.2 == "to-b")
    })
    .await;
    wait_until(&seen_a, "targeted control at a", |d| d.iter().any(|d| d.2 == "to-a")).await;
    assert!(!seen_a.lock().unwrap().iter().any(|d| d.2 == "to-b"), "a got b's message");
}

/// With Redis gone, calls fail within `io_timeout` instead of hanging, health turns false,
/// and everything works again (PUB/SUB resubscribed) once a server is back on the same port.
#[tokio::test]
async fn redis_outage_fails_fast_and_recovers() {
    let Some(server) = RedisServer::start().await else { return };
    let port = server.port;
    let section = redis_section(vec![server.address()]);
    let engine = super::redis::RedisEngine::new(&section, "engine.redis", Some("n")).unwrap();
    let deliveries = Deliveries::default();
    engine.set_event_handler(Arc::new(Recorder(deliveries.clone())));
    engine.subscribe("ch").await.unwrap();
    engine.publish("ch", publication("before"), &history_options(10)).await.unwrap();
    wait_until(&deliveries, "a first publication", |d| d.len() == 1).await;
    drop(server);

    let started = tokio::time::Instant::now();
    let failed = engine.publish("ch", publication("during"), &history_options(10)).await;
    assert!(matches!(failed, Err(EngineError::Internal(_))), "{failed:?}");
    assert!(started.elapsed() <= Duration::from_millis(2500), "took {:?}", started.elapsed());
    wait_until(&deliveries, "health to turn false", |_| !engine.is_healthy()).await;

    let child = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _restarted = RedisServer { child, port, dir: None };
    wait_until(&deliveries, "health to come back", |_| engine.is_healthy()).await;
    let outcome = engine.publish("ch", publication("after"), &history_options(10)).await.unwrap();
    assert_eq!(outcome.position.offset, 1, "a Redis without persistence starts a new epoch");
    wait_until(&deliveries, "delivery after the restart", |d| d.iter().any(|d| d.2 == "after")).await;
}

/// A three-master Redis Cluster (no replicas) on free loopback ports.
pub(crate) struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub(crate) async fn start() -> Option<Self> {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(
                RedisServer::start_with(&["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                    .await?,
            );
        }
        let mut create = std::process::Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let output = create.args(["--cluster-replicas", "0", "--cluster-yes"]).output().expect("redis-cli");
        assert!(output.status.success(), "cluster create: {}", String::from_utf8_lossy(&output.stdout));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let ok = nodes.iter().all(|node| {
                let info = std::process::Command::new("redis-cli")
                    .args(["-p", &node.port.to_string(), "cluster", "info"])
                    .output()
                    .expect("redis-cli");
                String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok")
            });
            if ok {
                return Some(Self { nodes });
            }
            assert!(tokio::time::Instant::now() < deadline, "cluster did not reach cluster_state:ok");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
async fn redis_cluster_engine_conformance() {
    let Some(cluster) = RedisCluster::start().await else { return };
    let mut section = redis_section(Vec::new());
    section.cluster_address = cluster.nodes.iter().map(RedisServer::address).collect();
    let engine = super::redis::RedisEngine::new(&section, "engine.redis", Some("n1")).unwrap();
    let deliveries = Deliveries::default();
    engine.set_event_handler(Arc::new(Recorder(deliveries.clone())));
    check_broker(engine.as_ref(), deliveries.clone()).await;
    check_presence(engine.as_ref()).await;

    // Channels spread over all three masters still deliver (sharded PUB/SUB per slot).
    let channels: Vec<String> = (0..12).map(|i| format!("spread-{i}")).collect();
    for channel in &channels {
        engine.subscribe(channel).await.unwrap();
    }
    for channel in &channels {
        engine.publish(channel, publication(channel), &history_options(5)).await.unwrap();
    }
    wait_until(&deliveries, "a publication on every channel", |d| {
        channels.iter().all(|c| d.iter().any(|d| &d.0 == c && &d.2 == c))
    })
    .await;
}
