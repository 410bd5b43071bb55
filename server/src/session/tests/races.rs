//! Stress tests for the races the centrifuge library keeps regression tests for
//! (`regression_test.go`, `client_test.go`, `client_map_test.go`), each named after the test it
//! answers, on a multi-threaded runtime so sessions, publishers and outside callers really run
//! at once. The loom models (`node::models`) prove the delivery path's interleavings
//! exhaustively within a bound; these run the whole session at scale.
//!
//! Spinwire's structure removes several of the library's races by construction (one task owns
//! a session's subscriptions, so a close can never race its own subscribe), so what these
//! assert is the outcome the library's tests assert: nothing left in the hub or in presence,
//! no deadlock (every test runs under a deadline), no panic, every publication once and in
//! order.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rand::Rng;

use super::*;
use crate::hub::{Control, ServerSubscribe};

/// Whole-test deadline: a deadlock shows as a timeout, never as a hung CI job.
const DEADLINE: Duration = Duration::from_secs(60);

fn race_node(patch: Value) -> Arc<Node> {
    let mut base = json!({"channel": {"namespaces": [{
        "name": "chat",
        "allow_subscribe_for_client": true,
        "allow_publish_for_subscriber": true,
        "allow_presence_for_subscriber": true,
        "allow_history_for_subscriber": true,
        "presence": true,
        "join_leave": true,
        "force_push_join_leave": true,
        "history_size": 10,
        "history_ttl": "60s",
        "force_recovery": true,
        "force_positioning": true
    }]}});
    merge(&mut base, patch);
    node_with(base)
}

/// Keeps a client's queue drained, as its writer task would, and collects what it got.
fn drain(client: &Client) -> tokio::task::JoinHandle<Vec<Value>> {
    let handle = client.handle.clone();
    tokio::spawn(async move {
        let mut got = Vec::new();
        loop {
            match handle.outbound.next_batch(1 << 16).await {
                Batch::Messages(messages) => {
                    got.extend(messages.iter().map(|m| serde_json::from_slice::<Value>(m).unwrap()))
                }
                Batch::Raw(_) => {}
                Batch::Close(_) => return got,
            }
        }
    })
}

async fn connect_with(client: &Client, claims: Value) {
    let token = mint_hs256(SECRET, &claims);
    offer(client, json!({"id": 1, "connect": {"token": token}})).await;
}

/// Sends a frame unless the session already ended (a racing close may have ended it).
async fn offer(client: &Client, frame: Value) {
    let _ = client.tx.send(Inbound::Frame(Bytes::from(frame.to_string()))).await;
}

/// Ends a client and waits until its session task has cleaned up.
async fn finish(client: Client) {
    client.handle.disconnect(Disconnect::shutdown());
    let _ = client.task.await;
}

/// Polls `check` until it holds or `within` passes.
async fn eventually(within: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let until = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(tokio::time::Instant::now() < until, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn assert_hub_empty(node: &Node) {
    assert_eq!(node.hub.stats(), (0, 0, 0, 0), "clients, users, channels, subscriptions left in the hub");
    assert_eq!(node.hub.num_connections(), 0);
}

/// Publishes to `channel` in a loop until `stop` (with history, as the library's publishers).
fn publisher(
    node: &Arc<Node>,
    channel: &'static str,
    stop: &Arc<AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    let (node, stop) = (node.clone(), stop.clone());
    tokio::spawn(async move {
        let resolved = node.resolve(channel).unwrap();
        let mut published = 0;
        while !stop.load(Ordering::Relaxed) {
            let publication =
                crate::proto::client::Publication { data: Bytes::from_static(b"{}"), ..Default::default() };
            node.publish(channel, &resolved, publication, Default::default()).await.unwrap();
            published += 1;
            tokio::task::yield_now().await;
        }
        published
    })
}

/// `TestClient_ConcurrentEntryPoints`: a client's frames (subscribe, unsubscribe, publish,
/// presence, history, refresh) race server API calls on it (server-side subscribe and
/// unsubscribe, refresh, publications) and, for some, a disconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_entry_points() {
    let node = race_node(json!({}));
    tokio::time::timeout(DEADLINE, async {
        for round in 0..20u64 {
            let client = start(&node);
            let drained = drain(&client);
            connect_with(&client, json!({"sub": format!("u{round}")})).await;
            let workers: Vec<_> =
                (0..8u64).map(|worker| entry_point_worker(&node, &client, round * 8 + worker)).collect();
            for worker in workers {
                worker.await.unwrap();
            }
            finish(client).await;
            drained.await.unwrap();
        }
        eventually(Duration::from_secs(5), "clients left", async || node.hub.num_connections() == 0).await;
    })
    .await
    .expect("deadlock: the entry points did not finish");
    assert_hub_empty(&node);
    assert_eq!(node.session_panics(), 0);
    for channel in ["chat:a", "chat:b", "chat:c", "chat:d"] {
        assert!(node.presence(channel).await.unwrap().is_empty(), "presence left in {channel}");
    }
}

fn entry_point_worker(node: &Arc<Node>, client: &Client, seed: u64) -> tokio::task::JoinHandle<()> {
    let (node, tx, handle) = (node.clone(), client.tx.clone(), client.handle.clone());
    tokio::spawn(async move {
        // A small seeded generator (xorshift): each worker's sequence is reproducible.
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n) as usize
        };
        for i in 0..40u32 {
            let channel = ["chat:a", "chat:b", "chat:c", "chat:d"][next(4)];
            let id = 100 + i;
            let frame = match next(10) {
                0 => json!({"id": id, "subscribe": {"channel": channel, "recover": true}}),
                1 => json!({"id": id, "unsubscribe": {"channel": channel}}),
                2 => json!({"id": id, "publish": {"channel": channel, "data": {"n": i}}}),
                3 => json!({"id": id, "presence": {"channel": channel}}),
                4 => json!({"id": id, "history": {"channel": channel, "limit": 5}}),
                5 => {
                    let subscribe = ServerSubscribe { channel: channel.into(), ..Default::default() };
                    handle.control(Control::Subscribe(Box::new(subscribe)));
                    continue;
                }
                6 => {
                    handle.control(Control::Unsubscribe { channel: channel.into() });
                    continue;
                }
                7 => {
                    handle.control(Control::Refresh { expired: false, expire_at: None, info: None });
                    continue;
                }
                8 => {
                    let resolved = node.resolve(channel).unwrap();
                    let publication = crate::proto::client::Publication {
                        data: Bytes::from_static(b"{}"),
                        ..Default::default()
                    };
                    let _ = node.publish(channel, &resolved, publication, Default::default()).await;
                    continue;
                }
                _ if seed.is_multiple_of(4) && i > 30 => {
                    handle.disconnect(Disconnect::shutdown());
                    continue;
                }
                _ => json!({"id": id, "presence_stats": {"channel": channel}}),
            };
            if tx.send(Inbound::Frame(Bytes::from(frame.to_string()))).await.is_err() {
                return;
            }
        }
    })
}

/// `TestConnect_ServerSideSubs_CloseRace`: connects with four server-side subscriptions
/// (the token's `channels`) while a close races the connect; nothing stays in the hub.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_side_subscriptions_racing_a_close_leave_nothing() {
    let node = race_node(json!({}));
    tokio::time::timeout(DEADLINE, async {
        let workers: Vec<_> = (0..8)
            .map(|worker| {
                let node = node.clone();
                tokio::spawn(async move {
                    for _ in 0..40 {
                        let client = start(&node);
                        let drained = drain(&client);
                        let handle = client.handle.clone();
                        let delay = rand::rng().random_range(0..300);
                        let closer = tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_micros(delay)).await;
                            handle.disconnect(Disconnect::shutdown());
                        });
                        let channels: Vec<String> = (0..4).map(|i| format!("chat:ss{worker}_{i}")).collect();
                        connect_with(&client, json!({"sub": format!("u{worker}"), "channels": channels}))
                            .await;
                        closer.await.unwrap();
                        finish(client).await;
                        drained.await.unwrap();
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.await.unwrap();
        }
    })
    .await
    .expect("deadlock: connect racing close");
    assert_hub_empty(&node);
}

/// `TestPresenceStress_UnsubscribeRace`: presence updates every 5 ms (shorter than a round)
/// race unsubscribes and closes; no presence entry outlives its subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn presence_does_not_come_back_after_unsubscribe() {
    let node = race_node(json!({"client": {"presence_update_interval": "5ms"}}));
    let stop = Arc::new(AtomicBool::new(false));
    let cycles = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..8)
        .map(|worker| {
            let (node, stop, cycles) = (node.clone(), stop.clone(), cycles.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let client = start(&node);
                    let drained = drain(&client);
                    connect_with(&client, json!({"sub": format!("u{worker}")})).await;
                    for i in 0..4 {
                        let channel = format!("chat:p{worker}_{i}");
                        offer(&client, json!({"id": 10 + i, "subscribe": {"channel": channel}})).await;
                    }
                    let pause = rand::rng().random_range(5..25);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    if rand::rng().random_bool(0.5) {
                        offer(
                            &client,
                            json!({"id": 20, "unsubscribe": {"channel": format!("chat:p{worker}_0")}}),
                        )
                        .await;
                    }
                    finish(client).await;
                    drained.await.unwrap();
                    cycles.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    tokio::time::timeout(DEADLINE, async {
        for worker in workers {
            worker.await.unwrap();
        }
    })
    .await
    .expect("deadlock under presence updates");
    assert!(cycles.load(Ordering::Relaxed) > 0);
    let channels: Vec<String> = (0..8).flat_map(|w| (0..4).map(move |i| format!("chat:p{w}_{i}"))).collect();
    eventually(Duration::from_secs(5), "presence entries outlived their subscriptions", async || {
        for channel in &channels {
            if !node.presence(channel).await.unwrap().is_empty() {
                return false;
            }
        }
        true
    })
    .await;
    assert_hub_empty(&node);
}

/// `TestSubConsistency_NoDeadlockRecoveryCloseBroadcast`: recovering subscribes race a close
/// while four publishers broadcast to the channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recovering_subscribe_racing_close_and_broadcast_does_not_deadlock() {
    let node = race_node(json!({}));
    let stop = Arc::new(AtomicBool::new(false));
    let publishers: Vec<_> = (0..4).map(|_| publisher(&node, "chat:b", &stop)).collect();
    tokio::time::timeout(DEADLINE, async {
        for _ in 0..300 {
            let client = start(&node);
            let drained = drain(&client);
            connect_with(&client, json!({"sub": "u"})).await;
            let handle = client.handle.clone();
            let closer = tokio::spawn(async move { handle.disconnect(Disconnect::shutdown()) });
            offer(&client, json!({"id": 2, "subscribe": {"channel": "chat:b", "recover": true}})).await;
            closer.await.unwrap();
            finish(client).await;
            drained.await.unwrap();
        }
    })
    .await
    .expect("deadlock: recovery, close and broadcast");
    stop.store(true, Ordering::Relaxed);
    for publisher in publishers {
        assert!(publisher.await.unwrap() > 0);
    }
    assert_hub_empty(&node);
}

/// `TestSubscribeRecovery_FirstPubEpochRace`: a stream's first publication races a
/// recovering subscribe on a fresh channel. The subscriber gets offset 1 exactly once (in the
/// reply's recovered publications or as a push after it) with the stream's epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn first_publication_racing_a_recovering_subscribe_arrives_once() {
    let node = race_node(json!({}));
    tokio::time::timeout(DEADLINE, async {
        for i in 0..300 {
            let channel = format!("chat:epochrace_{i}");
            let client = start(&node);
            let drained = drain(&client);
            connect_with(&client, json!({"sub": "u"})).await;
            let publishing = {
                let (node, channel) = (node.clone(), channel.clone());
                tokio::spawn(async move {
                    let resolved = node.resolve(&channel).unwrap();
                    let publication = crate::proto::client::Publication {
                        data: Bytes::from_static(b"{\"first\":true}"),
                        ..Default::default()
                    };
                    node.publish(&channel, &resolved, publication, Default::default()).await.unwrap()
                })
            };
            offer(&client, json!({"id": 2, "subscribe": {"channel": channel, "recover": true}})).await;
            let published = publishing.await.unwrap();
            // Let the subscribe and the push settle before closing.
            eventually(Duration::from_secs(5), "subscribe reply", async || {
                node.hub.channels().contains_key(&channel)
            })
            .await;
            tokio::time::sleep(Duration::from_millis(2)).await;
            finish(client).await;
            let got = drained.await.unwrap();
            assert_first_publication_once(&got, &published.position.epoch, &channel);
        }
    })
    .await
    .expect("deadlock: first publication and recovering subscribe");
    assert_hub_empty(&node);
}

fn assert_first_publication_once(got: &[Value], epoch: &str, channel: &str) {
    let reply = got.iter().find(|m| m["id"] == 2).unwrap_or_else(|| panic!("no subscribe reply: {got:?}"));
    let subscribe = &reply["subscribe"];
    assert!(subscribe.is_object(), "{channel}: subscribe failed: {reply}");
    let in_reply = subscribe["publications"].as_array().map_or(0, Vec::len);
    let pushed =
        got.iter().filter(|m| m["push"]["channel"] == channel && m["push"]["pub"].is_object()).count();
    let reply_epoch = subscribe["epoch"].as_str().unwrap_or("");
    let offset = subscribe["offset"].as_u64().unwrap_or(0);
    assert_eq!(in_reply + pushed, 1, "{channel}: offset 1 must arrive once: {got:?}");
    if offset == 1 && in_reply == 0 {
        // The reply's position already covers it: then it is not pushed again either.
        panic!("{channel}: the reply says offset 1 but the publication is missing: {got:?}");
    }
    if !reply_epoch.is_empty() {
        assert_eq!(reply_epoch, epoch, "{channel}: the reply's epoch is not the stream's");
    }
}

/// `TestSubscribeUnsubscribe_CloseRace`: subscribes and unsubscribes on three channels race a
/// close; once the session task has ended, the client is in no channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribe_and_unsubscribe_racing_close_leave_no_subscriber() {
    let node = race_node(json!({}));
    tokio::time::timeout(DEADLINE, async {
        for _ in 0..300 {
            let client = start(&node);
            let drained = drain(&client);
            connect_with(&client, json!({"sub": "u"})).await;
            let mut racers = Vec::new();
            for (i, channel) in ["chat:a", "chat:b", "chat:c"].into_iter().enumerate() {
                for frame in [
                    json!({"id": 10 + i, "subscribe": {"channel": channel}}),
                    json!({"id": 20 + i, "unsubscribe": {"channel": channel}}),
                ] {
                    let tx = client.tx.clone();
                    racers.push(tokio::spawn(async move {
                        let _ = tx.send(Inbound::Frame(Bytes::from(frame.to_string()))).await;
                    }));
                }
            }
            let handle = client.handle.clone();
            racers.push(tokio::spawn(async move { handle.disconnect(Disconnect::shutdown()) }));
            for racer in racers {
                racer.await.unwrap();
            }
            finish(client).await;
            drained.await.unwrap();
            // No wait: the session's cleanup finished before its task did.
            assert!(node.hub.channels().is_empty(), "a closed client is still routed");
        }
    })
    .await
    .expect("deadlock: subscribe, unsubscribe and close");
    assert_hub_empty(&node);
}

/// `TestSubConsistency_NoDeadlockUnderBroadcast`: server-side subscribes and unsubscribes of
/// one connected client race four publishers; afterwards the hub and the client agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_side_subscribe_churn_under_broadcast_stays_consistent() {
    let node = race_node(
        json!({"channel": {"namespaces": [{"name": "chat", "force_recovery": false, "force_positioning": false}]}}),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let publishers: Vec<_> = (0..4).map(|_| publisher(&node, "chat:b", &stop)).collect();
    let client = start(&node);
    let drained = drain(&client);
    connect_with(&client, json!({"sub": "u"})).await;
    eventually(Duration::from_secs(5), "connect", async || node.hub.num_connections() == 1).await;
    tokio::time::timeout(DEADLINE, async {
        for _ in 0..300 {
            for subscribe in [true, false, true, false, true, false] {
                let request = if subscribe {
                    Control::Subscribe(Box::new(ServerSubscribe {
                        channel: "chat:b".into(),
                        ..Default::default()
                    }))
                } else {
                    Control::Unsubscribe { channel: "chat:b".into() }
                };
                let handle = client.handle.clone();
                tokio::spawn(async move { handle.control(request) });
            }
            tokio::task::yield_now().await;
        }
        // Let the control queue run dry, then end subscribed and check both sides agree.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let subscribe = ServerSubscribe { channel: "chat:b".into(), ..Default::default() };
        assert!(client.handle.control(Control::Subscribe(Box::new(subscribe))));
        eventually(Duration::from_secs(5), "subscribed in the hub", async || {
            node.hub.channels().get("chat:b") == Some(&1)
        })
        .await;
        assert!(client.handle.control(Control::Unsubscribe { channel: "chat:b".into() }));
        eventually(Duration::from_secs(5), "unsubscribed in the hub", async || {
            node.hub.channels().is_empty()
        })
        .await;
    })
    .await
    .expect("deadlock: server-side churn under broadcast");
    stop.store(true, Ordering::Relaxed);
    for publisher in publishers {
        publisher.await.unwrap();
    }
    assert!(
        !client.handle.is_closed(),
        "the client lost its connection: {:?}",
        client.handle.outbound.closed_with()
    );
    finish(client).await;
    drained.await.unwrap();
    assert_hub_empty(&node);
}

/// `TestHubCounters_ConcurrentAddRemove`: the hub's counters match a walk of its maps after
/// concurrent adds and removes of connections and subscriptions on shared channels.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hub_counters_stay_exact_under_concurrent_add_and_remove() {
    let hub = Arc::new(crate::hub::Hub::new());
    let workers: Vec<_> = (0..8)
        .map(|worker| {
            let hub = hub.clone();
            tokio::spawn(async move {
                for i in 0..200 {
                    let handle = SessionHandle::new(
                        ProtocolType::Json,
                        1 << 20,
                        crate::metrics::TransportTraffic::detached(),
                    );
                    handle.set_user(format!("u{}", (worker + i) % 5));
                    hub.add_connection(&handle);
                    let channels: Vec<String> = (0..12).map(|c| format!("c{}", (worker + c) % 12)).collect();
                    for channel in &channels {
                        assert!(hub.add_subscriber(channel, &handle).changed());
                    }
                    tokio::task::yield_now().await;
                    for channel in &channels {
                        assert!(hub.remove_subscriber(channel, &handle).changed());
                    }
                    hub.remove_connection(&handle);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    assert_eq!(hub.stats(), (0, 0, 0, 0));
    assert_eq!(hub.num_connections(), 0);
}

/// `TestConcurrentSameChannelSubscribe`: ten recovering subscribes to one channel at once:
/// one succeeds, nine get 105 "already subscribed".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_subscribes_to_one_channel_succeed_once() {
    let node = race_node(json!({}));
    let client = start(&node);
    let drained = drain(&client);
    connect_with(&client, json!({"sub": "42"})).await;
    let racers: Vec<_> = (0..10)
        .map(|i| {
            let tx = client.tx.clone();
            let frame =
                json!({"id": 10 + i, "subscribe": {"channel": "chat:test1", "recover": true, "offset": 0}});
            tokio::spawn(
                async move { tx.send(Inbound::Frame(Bytes::from(frame.to_string()))).await.unwrap() },
            )
        })
        .collect();
    for racer in racers {
        racer.await.unwrap();
    }
    eventually(Duration::from_secs(5), "subscribed", async || node.hub.channels().contains_key("chat:test1"))
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    finish(client).await;
    let got = drained.await.unwrap();
    let replies: Vec<&Value> =
        got.iter().filter(|m| (10..20).contains(&m["id"].as_u64().unwrap_or(0))).collect();
    assert_eq!(replies.len(), 10, "{got:?}");
    assert_eq!(replies.iter().filter(|r| r["subscribe"].is_object()).count(), 1);
    assert_eq!(replies.iter().filter(|r| r["error"]["code"] == 105).count(), 9);
}

/// `TestMemoryBroker_PublishHistoryReadRace`: publishers and history readers on one channel;
/// every read is a run of consecutive offsets ending at the position it reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_reads_racing_publishes_see_consistent_streams() {
    let node = race_node(json!({}));
    let stop = Arc::new(AtomicBool::new(false));
    let publishers: Vec<_> = (0..4).map(|_| publisher(&node, "chat:hist", &stop)).collect();
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (node, stop) = (node.clone(), stop.clone());
            tokio::spawn(async move {
                let resolved = node.resolve("chat:hist").unwrap();
                let mut reads = 0;
                while !stop.load(Ordering::Relaxed) {
                    let filter = crate::common::HistoryFilter { limit: 10, ..Default::default() };
                    let history = node.history("chat:hist", &resolved, filter).await.unwrap();
                    let offsets: Vec<u64> = history.publications.iter().map(|p| p.offset).collect();
                    if let Some(last) = offsets.last() {
                        assert_eq!(*last, history.position.offset, "the last publication is the top");
                    }
                    assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "{offsets:?}");
                    reads += 1;
                    tokio::task::yield_now().await;
                }
                reads
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for publisher in publishers {
        assert!(publisher.await.unwrap() > 0);
    }
    for reader in readers {
        assert!(reader.await.unwrap() > 0);
    }
}

/// `TestMapSubscribe_DisconnectRace_NoGhostSubscription`: many clients subscribe to one map
/// channel while a disconnect lands at a random moment; no ghost subscriber remains.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn map_subscribe_racing_disconnect_leaves_no_ghost() {
    let node = node_with(json!({"channel": {"namespaces": [
        {"name": "maps", "subscription_type": "map", "allow_subscribe_for_client": true,
         "map": {"mode": "persistent", "min_page_size": 1}}
    ]}}));
    tokio::time::timeout(DEADLINE, async {
        let clients: Vec<_> = (0..150)
            .map(|i| {
                let node = node.clone();
                tokio::spawn(async move {
                    let client = start(&node);
                    let drained = drain(&client);
                    connect_with(&client, json!({"sub": format!("u{i}")})).await;
                    let handle = client.handle.clone();
                    let delay = rand::rng().random_range(0..2000);
                    let closer = tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_micros(delay)).await;
                        handle.disconnect(Disconnect::shutdown());
                    });
                    let subscribe = json!({"channel": "maps:race", "type": 1, "phase": 2, "limit": 100});
                    offer(&client, json!({"id": 2, "subscribe": subscribe})).await;
                    closer.await.unwrap();
                    finish(client).await;
                    drained.await.unwrap();
                })
            })
            .collect();
        for client in clients {
            client.await.unwrap();
        }
    })
    .await
    .expect("deadlock: map subscribe and disconnect");
    eventually(Duration::from_secs(5), "a ghost map subscription", async || node.hub.channels().is_empty())
        .await;
    assert_hub_empty(&node);
}
