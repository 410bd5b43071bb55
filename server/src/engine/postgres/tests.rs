//! The PostgreSQL map broker against a real server: the shared map conformance suite, then
//! what only this broker promises (Centrifugo's functions usable from a backend's own
//! transaction, delivery across nodes through the outbox, the binary variant, NOTIFY wake-up,
//! refusal of a newer schema).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::config::{PostgresBroker, PostgresMapBroker as Section};
use crate::engine::map::conformance;
use crate::test_support::PostgresServer;

fn section(server: &PostgresServer, configure: impl FnOnce(&mut Section)) -> Section {
    let mut section = Section::default();
    section.postgres.dsn = server.dsn();
    section.postgres.pool_size = 4;
    section.postgres.num_shards = 4;
    section.ttl_check_interval = crate::config::ConfigDuration::millis(200);
    section.postgres.outbox.poll_interval = crate::config::ConfigDuration::millis(20);
    configure(&mut section);
    section
}

/// Channels named `…:ephemeral` are ephemeral maps, as the conformance suite names them.
fn modes() -> ChannelModes {
    Arc::new(|channel: &str| {
        channel.ends_with(":ephemeral").then(|| conformance::options(MapMode::Ephemeral))
    })
}

fn broker(section: &Section) -> Arc<PostgresMapBroker> {
    PostgresMapBroker::new(section, modes()).unwrap()
}

#[tokio::test]
async fn postgres_map_broker_conformance() {
    let Some(server) = PostgresServer::start().await else { return };
    let jsonb = section(&server, |_| {});
    conformance::run("postgres", || broker(&jsonb) as Arc<dyn MapBroker>).await;
    let binary = section(&server, |s| s.postgres.binary_data = true);
    conformance::run("postgres binary_data", || broker(&binary) as Arc<dyn MapBroker>).await;
}

#[derive(Default)]
struct Seen(Mutex<Vec<(String, Publication)>>);

impl BrokerEventHandler for Seen {
    fn handle_publication(
        &self,
        channel: &str,
        publication: Publication,
        _: StreamPosition,
        _: Option<Bytes>,
    ) {
        self.0.lock().unwrap().push((channel.to_owned(), publication));
    }
    fn handle_join(&self, _: &str, _: ClientInfo) {}
    fn handle_leave(&self, _: &str, _: ClientInfo) {}
    fn handle_control(&self, _: &[u8]) {}
}

impl Seen {
    async fn wait_for(&self, count: usize, within: Duration) -> Vec<(String, Publication)> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let seen = self.0.lock().unwrap().clone();
            if seen.len() >= count || tokio::time::Instant::now() >= deadline {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn persistent() -> MapChannelOptions {
    conformance::options(MapMode::Persistent)
}

async fn sql_client(server: &PostgresServer) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&server.dsn(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

#[tokio::test]
async fn a_backend_transaction_writes_through_the_publish_function() {
    let Some(server) = PostgresServer::start().await else { return };
    let broker = broker(&section(&server, |_| {}));
    let seen = Arc::new(Seen::default());
    broker.set_event_handler(seen.clone());
    broker.ready().await.unwrap();
    broker.subscribe("board").await.unwrap();

    let mut backend = sql_client(&server).await;
    let transaction = backend.transaction().await.unwrap();
    transaction.batch_execute("CREATE TABLE IF NOT EXISTS orders (id INT)").await.unwrap();
    transaction.batch_execute("INSERT INTO orders VALUES (1)").await.unwrap();
    let row = transaction
        .query_one(
            "SELECT channel_offset, epoch FROM cf_map_publish('board', 'card1', '{\"title\":\"a\"}'::jsonb)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(seen.0.lock().unwrap().is_empty(), "nothing is delivered before the backend commits");
    transaction.commit().await.unwrap();

    let delivered = seen.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(delivered.len(), 1);
    let (channel, publication) = &delivered[0];
    assert_eq!((channel.as_str(), publication.key.as_str(), publication.offset), ("board", "card1", 1));
    assert_eq!(&publication.data[..], br#"{"title":"a"}"#, "JSONB's rendering, compacted");

    let page = broker
        .read_state("board", &persistent(), &StateRead { limit: -1, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(page.position, StreamPosition { offset: 1, epoch: row.get(1) });
    assert_eq!(page.entries.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(), ["card1"]);

    // The strict variant raises instead of answering "suppressed", rolling the caller back.
    let refused = backend
        .query_one(
            "SELECT * FROM cf_map_publish_strict('board', 'card1', '{}'::jsonb, p_key_mode => 'if_new')",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION));
}

#[tokio::test]
async fn writes_on_one_node_reach_subscribers_on_another() {
    let Some(server) = PostgresServer::start().await else { return };
    let section = section(&server, |_| {});
    let (writer, reader) = (broker(&section), broker(&section));
    let seen = Arc::new(Seen::default());
    reader.set_event_handler(seen.clone());
    reader.ready().await.unwrap();
    reader.subscribe("scores").await.unwrap();
    reader.subscribe("ticker:ephemeral").await.unwrap();
    for (channel, key) in [("scores", "a"), ("elsewhere", "x"), ("scores", "b"), ("ticker:ephemeral", "t")] {
        let publication =
            Publication { key: key.into(), data: Bytes::from_static(b"1"), ..Default::default() };
        let options = modes()(channel).unwrap_or_else(persistent);
        writer.publish(channel, &options, publication, &MapWrite::default()).await.unwrap();
    }
    writer.remove("scores", &persistent(), "a", &MapRemoval::default()).await.unwrap();
    let delivered = seen.wait_for(4, Duration::from_secs(5)).await;
    let summary: Vec<(&str, &str, u64, bool)> =
        delivered.iter().map(|(c, p)| (c.as_str(), p.key.as_str(), p.offset, p.removed)).collect();
    let scores: Vec<_> = summary.iter().filter(|d| d.0 == "scores").cloned().collect();
    assert_eq!(scores, [("scores", "a", 1, false), ("scores", "b", 2, false), ("scores", "a", 3, true)]);
    assert!(
        summary.contains(&("ticker:ephemeral", "t", 0, false)),
        "ephemeral maps have no offsets: {summary:?}"
    );
    assert!(summary.iter().all(|d| d.0 != "elsewhere"), "only subscribed channels are delivered");
}

#[tokio::test]
async fn binary_data_uses_the_bytea_tables() {
    let Some(server) = PostgresServer::start().await else { return };
    let broker = broker(&section(&server, |s| s.postgres.binary_data = true));
    let data = Bytes::from_static(&[0, 159, 146, 150, 255]);
    let publication = Publication { key: "blob".into(), data: data.clone(), ..Default::default() };
    broker.publish("files", &persistent(), publication, &MapWrite::default()).await.unwrap();
    let page = broker
        .read_state("files", &persistent(), &StateRead { limit: -1, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(page.entries[0].data, data);
    let client = sql_client(&server).await;
    let row = client
        .query_one("SELECT count(*) FROM cf_binary_map_state WHERE channel = 'files'", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1);
    let jsonb = client.query_one("SELECT count(*) FROM cf_map_state", &[]).await.unwrap();
    assert_eq!(jsonb.get::<_, i64>(0), 0, "both variants exist; only the configured one is written");
}

#[tokio::test]
async fn notify_wakes_readers_before_the_poll_interval() {
    let Some(server) = PostgresServer::start().await else { return };
    let section = section(&server, |s| {
        s.postgres.use_notify = true;
        s.postgres.outbox.poll_interval = crate::config::ConfigDuration::secs(30);
    });
    let broker = broker(&section);
    let seen = Arc::new(Seen::default());
    broker.set_event_handler(seen.clone());
    broker.ready().await.unwrap();
    broker.subscribe("live").await.unwrap();
    // Let every reader go idle (and LISTEN take effect) before writing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let publication = Publication { key: "k".into(), data: Bytes::from_static(b"{}"), ..Default::default() };
    broker.publish("live", &persistent(), publication, &MapWrite::default()).await.unwrap();
    assert_eq!(seen.wait_for(1, Duration::from_secs(5)).await.len(), 1, "woken by NOTIFY, not the 30 s poll");
}

#[tokio::test]
async fn a_schema_from_a_newer_server_is_refused() {
    let Some(server) = PostgresServer::start().await else { return };
    let section = section(&server, |_| {});
    broker(&section).ready().await.unwrap();
    sql_client(&server)
        .await
        .batch_execute("UPDATE cf_map_schema_version SET schema_version = 2")
        .await
        .unwrap();
    let error = broker(&section).ready().await.unwrap_err().to_string();
    assert!(error.contains("cf_map_schema_version is at schema version 2"), "{error}");
    let skipped = broker(&Section {
        postgres: PostgresBroker { skip_schema_init: true, ..section.postgres.clone() },
        ..section
    });
    skipped.ready().await.unwrap();
}

#[tokio::test]
async fn an_unreachable_database_fails_readiness_with_the_section_named() {
    let Some(server) = PostgresServer::start().await else { return };
    let dsn =
        format!("postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable&connect_timeout=2", server.port);
    drop(server);
    let broker = broker(&{
        let mut section = Section::default();
        section.postgres.dsn = dsn;
        section
    });
    let error = broker.ready().await.unwrap_err().to_string();
    assert!(error.contains("map_broker.postgres"), "{error}");
    assert!(!broker.is_healthy());
}

#[test]
fn jsonb_text_is_compacted_outside_strings() {
    let text = br#"{"a": [1, 2], "b c": "x: y, \"z\" ", "d": {"e": null}}"#;
    assert_eq!(compact_json(text), br#"{"a":[1,2],"b c":"x: y, \"z\" ","d":{"e":null}}"#.to_vec());
}
