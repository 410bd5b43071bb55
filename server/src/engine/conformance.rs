//! One behaviour suite for every engine. Each check takes a fresh engine from a factory; the
//! memory engine runs it always, networked engines run it when their server is available.

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
    let b_count = deliveries.lock().unwrap().iter().filter(|d| d.0 == "b").count();
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
    let tail: Vec<String> = deliveries.lock().unwrap().iter().rev().take(2).map(|d| d.2.clone()).collect();
    assert_eq!(tail, vec!["leave:c1".to_string(), "join:c1".to_string()]);
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
