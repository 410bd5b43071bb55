//! Recovery on subscribe, as the centrifuge library's decision table has it (stream and cache
//! modes), plus the empty-epoch and reject-unrecovered rules: what the subscribe reply says and
//! which publications it carries.

use super::*;

/// One row: the channel's history, what was published, the client's position and the expected
/// answer.
struct Case {
    name: &'static str,
    cache: bool,
    history_size: u32,
    history_ttl_secs: u64,
    published: u64,
    since_offset: u64,
    sleep_secs: u64,
    limit: u32,
    expected_publications: usize,
    recovered: bool,
}

/// `(published, since offset, sleep s, limit)` is what happens before the subscribe.
const fn case(
    name: &'static str,
    cache: bool,
    (history_size, history_ttl_secs): (u32, u64),
    (published, since_offset, sleep_secs, limit): (u64, u64, u64, u32),
    (expected_publications, recovered): (usize, bool),
) -> Case {
    Case {
        name,
        cache,
        history_size,
        history_ttl_secs,
        published,
        since_offset,
        sleep_secs,
        limit,
        expected_publications,
        recovered,
    }
}

/// The rows of centrifuge's `clientRecoverTests` (limit 0 = no `recovery_max_publication_limit`).
const CASES: &[Case] = &[
    case("empty_stream", false, (10, 60), (0, 0, 0, 0), (0, true)),
    case("from_position", false, (10, 60), (10, 8, 0, 0), (2, true)),
    case("from_position_limited", false, (10, 60), (10, 5, 0, 2), (0, false)),
    case("from_position_with_server_limit", false, (10, 60), (10, 5, 0, 1), (0, false)),
    case("from_position_that_already_gone", false, (10, 60), (20, 8, 0, 0), (0, false)),
    case("from_position_that_not_exist_yet", false, (10, 60), (20, 108, 0, 0), (0, false)),
    case("same_position_no_pubs_expected", false, (10, 60), (7, 7, 0, 0), (0, true)),
    case("empty_position_recover_expected", false, (10, 60), (4, 0, 0, 0), (4, true)),
    case("from_position_in_expired_stream", false, (10, 1), (10, 8, 3, 0), (0, false)),
    case("from_same_position_in_expired_stream", false, (10, 1), (1, 1, 3, 0), (0, true)),
    case("cache_empty_stream", true, (10, 60), (0, 0, 0, 0), (0, false)),
    case("cache_from_position", true, (10, 60), (10, 8, 0, 0), (1, true)),
    case("cache_from_position_limited", true, (10, 60), (10, 5, 0, 2), (1, true)),
    case("cache_from_position_with_server_limit", true, (10, 60), (10, 5, 0, 1), (1, true)),
    case("cache_from_position_that_already_gone", true, (10, 60), (20, 8, 0, 0), (1, true)),
    case("cache_from_position_that_not_exist_yet", true, (10, 60), (20, 108, 0, 0), (1, true)),
    case("cache_same_position_no_pubs_expected", true, (10, 60), (7, 7, 0, 0), (0, true)),
    case("cache_empty_position_recover_expected", true, (10, 60), (4, 0, 0, 0), (1, true)),
    case("cache_from_position_in_expired_stream", true, (10, 1), (10, 8, 3, 0), (0, false)),
    case("cache_from_same_position_in_expired_stream", true, (10, 1), (1, 1, 3, 0), (0, true)),
];

fn recovery_node(case: &Case, engine: &Value) -> Arc<Node> {
    let mut patch = json!({
        "client": {"recovery_max_publication_limit": case.limit},
        "channel": {"namespaces": [{
            "name": "chat",
            "allow_subscribe_for_client": true,
            "history_size": case.history_size,
            "history_ttl": format!("{}s", case.history_ttl_secs),
            "force_recovery": true,
            "force_recovery_mode": if case.cache { "cache" } else { "stream" }
        }]}
    });
    merge(&mut patch, engine.clone());
    node_with(patch)
}

/// Publishes `count` publications into `channel`; returns the stream's epoch.
async fn publish_many(node: &Arc<Node>, channel: &str, count: u64) -> String {
    let resolved = node.resolve(channel).unwrap();
    for i in 0..count {
        let publication = crate::proto::client::Publication {
            data: Bytes::from(format!("{{\"n\":{i}}}")),
            ..Default::default()
        };
        node.publish(channel, &resolved, publication, Default::default()).await.unwrap();
    }
    let history = node.history(channel, &resolved, Default::default()).await.unwrap();
    history.position.epoch
}

/// Subscribes with recovery from `(offset, epoch)`; returns the subscribe result (or the error).
async fn recover(node: &Arc<Node>, channel: &str, offset: u64, epoch: &str, flag: i64) -> Value {
    let client = start(node);
    client.connect().await;
    client
        .send(json!({"id": 2, "subscribe": {
            "channel": channel, "recover": true, "offset": offset, "epoch": epoch, "flag": flag
        }}))
        .await;
    client.recv(Duration::from_secs(1)).await.unwrap()
}

fn publications(result: &Value) -> usize {
    result["publications"].as_array().map_or(0, Vec::len)
}

#[tokio::test(start_paused = true)]
async fn the_recovery_decision_table_holds_in_stream_and_cache_modes() {
    run_table(|_| json!({})).await;
}

/// R3 on Redis: the same table, in real time (Redis expires the short-TTL streams itself).
#[tokio::test]
async fn the_recovery_decision_table_holds_on_redis() {
    let Some(redis) = crate::test_support::RedisServer::start().await else { return };
    let address = redis.address();
    let prefix = format!("r3{}", rand::random::<u32>());
    let rows = std::sync::atomic::AtomicU32::new(0);
    run_table(|case| {
        let row = rows.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        json!({"engine": {"type": "redis", "redis": {
            "address": [address], "prefix": format!("{prefix}-{}-{row}", case.name)
        }}})
    })
    .await;
}

/// Every row, with and without the epoch, on the engine `engine` configures (a node per row).
async fn run_table(engine: impl Fn(&Case) -> Value) {
    for case in CASES {
        for empty_epoch in [false, true] {
            let node = recovery_node(case, &engine(case));
            let epoch = publish_many(&node, "chat:table", case.published).await;
            tokio::time::sleep(Duration::from_secs(case.sleep_secs)).await;
            let asked_epoch = if empty_epoch { "" } else { epoch.as_str() };
            let reply = recover(&node, "chat:table", case.since_offset, asked_epoch, 0).await;
            let result = &reply["subscribe"];
            let (mut expected_publications, mut recovered) = (case.expected_publications, case.recovered);
            // An empty epoch never counts as "the client is up to date" in cache mode, so it
            // gets the latest publication when history has one.
            if empty_epoch && case.cache && case.name == "cache_same_position_no_pubs_expected" {
                expected_publications = 1;
            }
            if empty_epoch && case.name == "cache_from_same_position_in_expired_stream" {
                recovered = false;
            }
            let label = format!("{} (empty epoch: {empty_epoch})", case.name);
            assert_eq!(publications(result), expected_publications, "{label}: {reply}");
            assert_eq!(result["recovered"].as_bool().unwrap_or(false), recovered, "{label}: {reply}");
            assert_eq!(result["was_recovering"], true, "{label}");
            if recovered {
                // The SDK continues from its own offset through the recovered publications.
                let expected_offset =
                    if case.since_offset == 0 { Value::Null } else { json!(case.since_offset) };
                assert_eq!(result["offset"], expected_offset, "{label}: {reply}");
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn an_empty_epoch_recovers_what_history_still_has() {
    let node = node_with(json!({}));
    publish_many(&node, "chat:e", 5).await;
    let result = recover(&node, "chat:e", 3, "", 2).await["subscribe"].clone();
    assert_eq!(result["recovered"], true);
    let offsets: Vec<u64> =
        result["publications"].as_array().unwrap().iter().map(|p| p["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, [4, 5]);
}

/// A subscription refused because its position cannot be recovered (flag 2) leaves no trace:
/// no presence entry, no join or leave for the channel's other subscribers.
#[tokio::test(start_paused = true)]
async fn a_refused_recovery_adds_no_presence_and_no_join_or_leave() {
    let node = node_with(json!({"channel": {"namespaces": [{
        "name": "room", "allow_subscribe_for_client": true, "history_size": 2, "history_ttl": "60s",
        "force_recovery": true, "presence": true, "join_leave": true, "force_push_join_leave": true
    }]}}));
    let epoch = publish_many(&node, "room:1", 5).await;
    let watcher = start(&node);
    watcher.connect().await;
    watcher.send(json!({"id": 2, "subscribe": {"channel": "room:1"}})).await;
    watcher.recv(Duration::from_secs(1)).await.unwrap();
    let _own_join = watcher.recv(Duration::from_secs(1)).await.unwrap();

    let reply = recover(&node, "room:1", 1, &epoch, 2).await;
    assert_eq!(reply["error"]["code"], 112, "{reply}");
    let presence = node.presence("room:1").await.unwrap();
    assert_eq!(presence.len(), 1, "only the watcher is present: {presence:?}");
    // The watcher hears nothing about the refused subscriber (a ping comes first otherwise).
    let next = tokio::time::timeout(Duration::from_secs(5), watcher.handle.outbound.next_batch(1)).await;
    assert!(next.is_err(), "no join or leave reached the watcher");
}

#[tokio::test(start_paused = true)]
async fn reject_unrecovered_applies_to_stream_recovery_only() {
    let node = node_with(json!({"channel": {"namespaces": [{
        "name": "cached", "allow_subscribe_for_client": true, "history_size": 2, "history_ttl": "60s",
        "force_recovery": true, "force_recovery_mode": "cache"
    }]}}));
    publish_many(&node, "cached:1", 5).await;
    let reply = recover(&node, "cached:1", 1, "other-epoch", 2).await;
    assert_eq!(reply["subscribe"]["recovered"], true, "{reply}");
    assert_eq!(publications(&reply["subscribe"]), 1);
}

#[tokio::test(start_paused = true)]
async fn cache_recovery_with_a_tags_filter_returns_the_latest_matching_publication() {
    let node = node_with(json!({"channel": {"namespaces": [{
        "name": "prices", "allow_subscribe_for_client": true, "history_size": 10, "history_ttl": "60s",
        "force_recovery": true, "force_recovery_mode": "cache", "allow_tags_filter": true
    }]}}));
    let resolved = node.resolve("prices:x").unwrap();
    for (n, ticker) in [(1, "BTC"), (2, "ETH"), (3, "BTC"), (4, "ETH")] {
        let publication = crate::proto::client::Publication {
            data: Bytes::from(format!("{n}")),
            tags: [("ticker".to_owned(), ticker.to_owned())].into_iter().collect(),
            ..Default::default()
        };
        node.publish("prices:x", &resolved, publication, Default::default()).await.unwrap();
    }
    let client = start(&node);
    client.connect().await;
    client
        .send(json!({"id": 2, "subscribe": {
            "channel": "prices:x", "recover": true, "tf": {"key": "ticker", "cmp": "eq", "val": "BTC"}
        }}))
        .await;
    let result = client.recv(Duration::from_secs(1)).await.unwrap()["subscribe"].clone();
    assert_eq!(result["recovered"], true);
    assert_eq!(result["publications"][0]["data"], 3, "{result}");
}

/// `client.channel_position_max_time_lag`: a publication that reaches the node too long after
/// its publish is not delivered to a positioned subscriber, which is unsubscribed with 2500 to
/// recover; one in time is delivered.
#[tokio::test(start_paused = true)]
async fn a_publication_later_than_the_max_time_lag_makes_positioned_subscribers_recover() {
    let node = node_with(json!({
        "client": {"channel_position_max_time_lag": "1s"},
        "channel": {"namespaces": [{
            "name": "pos", "allow_subscribe_for_client": true, "history_size": 10, "history_ttl": "60s",
            "force_positioning": true
        }]}
    }));
    let client = start(&node);
    client.connect().await;
    client.send(json!({"id": 2, "subscribe": {"channel": "pos:1"}})).await;
    assert!(client.recv(Duration::from_secs(1)).await.unwrap()["subscribe"].is_object());

    let options = crate::engine::PublishOptions {
        history_size: 10,
        history_ttl: Duration::from_secs(60),
        ..Default::default()
    };
    let publish_at = |time: i64| crate::proto::client::Publication {
        data: Bytes::from_static(b"{}"),
        time,
        ..Default::default()
    };
    let now = crate::common::unix_millis();
    node.broker_for_tests().publish("pos:1", publish_at(now), &options).await.unwrap();
    let push = client.recv(Duration::from_secs(1)).await.unwrap();
    assert_eq!(push["push"]["pub"]["offset"], 1, "{push}");
    assert!(push["push"]["pub"].get("time").is_none(), "publish times stay on the server: {push}");

    node.broker_for_tests().publish("pos:1", publish_at(now - 5_000), &options).await.unwrap();
    let push = client.recv(Duration::from_secs(1)).await.unwrap();
    assert_eq!(push["push"]["unsubscribe"]["code"], 2500, "{push}");
}
