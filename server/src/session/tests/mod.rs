//! Session state machine tests over an in-memory transport with paused time: what a client
//! observes (replies, pings, close codes) for the timing and protocol rules.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::*;
use crate::auth::mint_hs256;
use crate::config::{self, Config};
use crate::hub::outbound::Batch;

const SECRET: &str = "test-secret";

struct Client {
    tx: mpsc::Sender<Inbound>,
    handle: Arc<SessionHandle>,
    task: tokio::task::JoinHandle<Disconnect>,
}

fn node_with(patch: Value) -> Arc<Node> {
    let mut file = json!({
        "client": {"token": {"hmac_secret_key": SECRET}},
        "channel": {"namespaces": [{
            "name": "chat",
            "allow_subscribe_for_client": true,
            "history_size": 10,
            "history_ttl": "60s",
            "force_recovery": true
        }]}
    });
    merge(&mut file, patch);
    let config: Config = config::build(Some(file), &|_| None).unwrap().config;
    Node::new(config).unwrap()
}

fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(base), Value::Object(patch)) => {
            for (k, v) in patch {
                merge(base.entry(k).or_insert(Value::Null), v);
            }
        }
        (base, patch) => *base = patch,
    }
}

fn start(node: &Arc<Node>) -> Client {
    start_transport(node, false)
}

fn start_transport(node: &Arc<Node>, unidirectional: bool) -> Client {
    let direction = if unidirectional { Direction::Unidirectional } else { Direction::Bidirectional };
    let info = TransportInfo::new("test", ProtocolType::Json, direction);
    let (session, handle) = Session::new(node.clone(), info);
    let (tx, mut rx) = mpsc::channel(16);
    let frames = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let task = tokio::spawn(session.run(Box::pin(frames)));
    Client { tx, handle, task }
}

impl Client {
    async fn send(&self, frame: Value) {
        self.tx.send(Inbound::Frame(Bytes::from(frame.to_string()))).await.unwrap();
    }

    /// Next queued message as JSON (waits, in paused time, up to `within`).
    async fn recv(&self, within: Duration) -> Result<Value, Disconnect> {
        match tokio::time::timeout(within, self.handle.outbound.next_batch(1)).await {
            Ok(Batch::Messages(messages)) => Ok(serde_json::from_slice(&messages[0]).unwrap()),
            Ok(Batch::Close(disconnect)) => Err(disconnect),
            Ok(Batch::Raw(raw)) => panic!("no transport queued a raw frame, got {raw:?}"),
            Err(_) => panic!("nothing received within {within:?}"),
        }
    }

    async fn connect(&self) -> Value {
        let token = mint_hs256(SECRET, &json!({"sub": "u1"}));
        self.send(json!({"id": 1, "connect": {"token": token}})).await;
        self.recv(Duration::from_secs(1)).await.unwrap()
    }

    async fn closed_with(self) -> Disconnect {
        tokio::time::timeout(Duration::from_secs(120), self.task).await.unwrap().unwrap()
    }
}

#[tokio::test(start_paused = true)]
async fn stale_connection_is_closed_with_3502() {
    let node = node_with(json!({}));
    let client = start(&node);
    assert_eq!(client.closed_with().await.code, 3502);
}

#[tokio::test(start_paused = true)]
async fn command_before_connect_is_3501() {
    let node = node_with(json!({}));
    let client = start(&node);
    client.send(json!({"id": 1, "subscribe": {"channel": "chat:x"}})).await;
    assert_eq!(client.closed_with().await.code, 3501);
}

#[tokio::test(start_paused = true)]
async fn ping_without_pong_closes_with_3012() {
    let node = node_with(json!({}));
    let client = start(&node);
    let reply = client.connect().await;
    assert_eq!(reply["connect"]["ping"], 25);
    assert_eq!(reply["connect"]["pong"], true);
    // The first ping arrives between 12.5 s and 25 s after connect.
    let ping = client.recv(Duration::from_secs(26)).await.unwrap();
    assert_eq!(ping, json!({}));
    assert_eq!(client.closed_with().await.code, 3012);
}

#[tokio::test(start_paused = true)]
async fn pong_keeps_the_connection_and_unexpected_pong_is_3501() {
    let node = node_with(json!({}));
    let client = start(&node);
    client.connect().await;
    for _ in 0..3 {
        assert_eq!(client.recv(Duration::from_secs(26)).await.unwrap(), json!({}));
        client.send(json!({})).await;
    }
    assert!(!client.handle.is_closed());
    // A second pong for the same ping is a protocol violation.
    client.send(json!({})).await;
    assert_eq!(client.closed_with().await.code, 3501);
}

#[tokio::test(start_paused = true)]
async fn slow_client_is_closed_with_3008_without_blocking_publishers() {
    let node = node_with(json!({"client": {"queue_max_size": 2048}}));
    let client = start(&node);
    client.connect().await;
    client.send(json!({"id": 2, "subscribe": {"channel": "chat:room"}})).await;
    let reply = client.recv(Duration::from_secs(1)).await.unwrap();
    assert_eq!(reply["id"], 2);
    let resolved = node.resolve("chat:room").unwrap();
    // Nobody drains the queue: publishing must still complete, and the client is cut off.
    for i in 0..100 {
        let publication = crate::proto::client::Publication {
            data: Bytes::from(format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(64))),
            ..Default::default()
        };
        node.publish("chat:room", &resolved, publication, Default::default()).await.unwrap();
    }
    assert_eq!(client.closed_with().await.code, 3008);
}

#[tokio::test(start_paused = true)]
async fn shutdown_closes_sessions_with_3001() {
    let node = node_with(json!({}));
    let client = start(&node);
    client.connect().await;
    node.disconnect_all();
    assert_eq!(client.closed_with().await.code, 3001);
}

#[tokio::test(start_paused = true)]
async fn positioned_subscription_reports_position_and_recovers() {
    let node = node_with(json!({}));
    let resolved = node.resolve("chat:r").unwrap();
    let publish = |text: &'static str| {
        let node = node.clone();
        let resolved = resolved.clone();
        async move {
            let publication = crate::proto::client::Publication {
                data: Bytes::from(format!("\"{text}\"")),
                ..Default::default()
            };
            node.publish("chat:r", &resolved, publication, Default::default()).await.unwrap()
        }
    };
    let first = publish("a").await;
    let client = start(&node);
    client.connect().await;
    client.send(json!({"id": 2, "subscribe": {"channel": "chat:r"}})).await;
    let reply = client.recv(Duration::from_secs(1)).await.unwrap();
    assert_eq!(reply["subscribe"]["recoverable"], true);
    assert_eq!(reply["subscribe"]["offset"], 1);
    assert_eq!(reply["subscribe"]["epoch"], json!(first.position.epoch));
    publish("b").await;
    publish("c").await;
    let pushed = client.recv(Duration::from_secs(1)).await.unwrap();
    assert_eq!(pushed["push"]["pub"]["offset"], 2);
    drop(client);

    // A new connection recovering from offset 1 gets exactly 2 and 3, in order.
    let client = start(&node);
    client.connect().await;
    client
        .send(json!({"id": 2, "subscribe": {
            "channel": "chat:r", "recover": true, "offset": 1, "epoch": first.position.epoch
        }}))
        .await;
    let reply = client.recv(Duration::from_secs(1)).await.unwrap();
    let result = &reply["subscribe"];
    assert_eq!(result["recovered"], true);
    assert_eq!(result["was_recovering"], true);
    let offsets: Vec<u64> =
        result["publications"].as_array().unwrap().iter().map(|p| p["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, vec![2, 3]);

    // With the wrong epoch recovery fails and reports the current top.
    let client = start(&node);
    client.connect().await;
    client
        .send(json!({"id": 2, "subscribe": {"channel": "chat:r", "recover": true, "offset": 1, "epoch": "zzz"}}))
        .await;
    let result = client.recv(Duration::from_secs(1)).await.unwrap()["subscribe"].clone();
    assert_eq!(result["recovered"], Value::Null);
    assert_eq!(result["was_recovering"], true);
    assert_eq!(result["offset"], 3);
    assert_eq!(result["publications"], Value::Null);
}

#[tokio::test(start_paused = true)]
async fn tags_filter_skips_non_matching_publications() {
    let node = node_with(json!({"channel": {"namespaces": [
        {"name": "chat", "allow_subscribe_for_client": true},
        {"name": "prices", "allow_subscribe_for_client": true, "allow_tags_filter": true}
    ]}}));
    let client = start(&node);
    client.connect().await;
    let filter = json!({"key": "ticker", "cmp": "eq", "val": "BTC"});
    // Not allowed in a namespace without allow_tags_filter.
    client.send(json!({"id": 2, "subscribe": {"channel": "chat:x", "tf": filter}})).await;
    assert_eq!(client.recv(Duration::from_secs(1)).await.unwrap()["error"]["code"], 107);
    client.send(json!({"id": 3, "subscribe": {"channel": "prices:x", "tf": filter}})).await;
    assert_eq!(client.recv(Duration::from_secs(1)).await.unwrap()["id"], 3);
    let resolved = node.resolve("prices:x").unwrap();
    for ticker in ["ETH", "BTC"] {
        let publication = crate::proto::client::Publication {
            data: Bytes::from(format!("\"{ticker}\"")),
            tags: [("ticker".to_owned(), ticker.to_owned())].into(),
            ..Default::default()
        };
        node.publish("prices:x", &resolved, publication, Default::default()).await.unwrap();
    }
    let pushed = client.recv(Duration::from_secs(1)).await.unwrap();
    assert_eq!(pushed["push"]["pub"]["data"], "BTC");
}

#[tokio::test(start_paused = true)]
async fn epoch_change_on_client_subscription_is_unsubscribe_2500_not_disconnect() {
    let node = node_with(json!({"channel": {"namespaces": [{
        "name": "gap", "allow_subscribe_for_client": true, "history_size": 10,
        "history_ttl": "2s", "history_meta_ttl": "2s", "force_recovery": true
    }]}}));
    let resolved = node.resolve("gap:x").unwrap();
    let publish = || {
        let (node, resolved) = (node.clone(), resolved.clone());
        async move {
            let publication =
                crate::proto::client::Publication { data: Bytes::from_static(b"1"), ..Default::default() };
            node.publish("gap:x", &resolved, publication, Default::default()).await.unwrap()
        }
    };
    let client = start(&node);
    client.connect().await;
    client.send(json!({"id": 2, "subscribe": {"channel": "gap:x"}})).await;
    client.recv(Duration::from_secs(1)).await.unwrap();
    publish().await;
    assert_eq!(client.recv(Duration::from_secs(1)).await.unwrap()["push"]["pub"]["offset"], 1);
    // Stream meta expires: the next publication starts a new epoch.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let next = publish().await;
    assert_eq!(next.position.offset, 1);
    let pushed = loop {
        let message = client.recv(Duration::from_secs(30)).await.unwrap();
        if message != json!({}) {
            break message;
        }
        client.send(json!({})).await; // answer pings while waiting
    };
    assert_eq!(pushed["push"]["unsubscribe"]["code"], 2500);
    assert!(!client.handle.is_closed(), "the connection survives");
    // The client can subscribe again (the SDK does this with recovery).
    client.send(json!({"id": 3, "subscribe": {"channel": "gap:x"}})).await;
    let reply = loop {
        let message = client.recv(Duration::from_secs(30)).await.unwrap();
        if message != json!({}) {
            break message;
        }
        client.send(json!({})).await;
    };
    assert_eq!(reply["id"], 3);
    assert_eq!(reply["subscribe"]["epoch"], json!(next.position.epoch));
}

/// Every idle connection holds its session future; command handling is boxed out of it so that
/// state stays small (it was 6.5 KB before, see tests/bench/RESULTS.md).
#[tokio::test]
async fn idle_session_future_stays_small() {
    let node = node_with(json!({}));
    let info = TransportInfo::new("test", ProtocolType::Json, Direction::Bidirectional);
    let (session, _handle) = Session::new(node, info);
    let run = session.run(futures_util::stream::empty::<Inbound>());
    let size = std::mem::size_of_val(&run);
    assert!(size <= 1536, "session future is {size} bytes");
}

/// A unidirectional session gets its connect request as the one decoded command.
async fn start_uni(node: &Arc<Node>, request: Value) -> Client {
    let client = start_transport(node, true);
    let request: crate::proto::client::ConnectRequest = serde_json::from_value(request).unwrap();
    client.tx.send(Inbound::connect(request)).await.unwrap();
    client
}

#[tokio::test(start_paused = true)]
async fn unidirectional_connect_is_a_push_and_pings_expect_no_pong() {
    let node = node_with(json!({}));
    let token = mint_hs256(SECRET, &json!({"sub": "u1", "channels": ["chat:server"]}));
    // `subs` names channels to join: allowed ones are joined, a forbidden one is skipped.
    let client =
        start_uni(&node, json!({"token": token, "subs": {"chat:asked": {}, "$chat:private": {}}})).await;
    let push = client.recv(Duration::from_secs(1)).await.unwrap();
    assert!(push.get("id").is_none(), "uni connect must not be a reply: {push}");
    let connect = &push["push"]["connect"];
    assert_eq!(connect["pong"], Value::Null, "no pong expected from a uni client");
    let mut subs: Vec<&str> = connect["subs"].as_object().unwrap().keys().map(String::as_str).collect();
    subs.sort();
    assert_eq!(subs, ["chat:asked", "chat:server"]);

    let resolved = node.resolve("chat:asked").unwrap();
    let publication =
        crate::proto::client::Publication { data: Bytes::from_static(b"{\"n\":1}"), ..Default::default() };
    node.publish("chat:asked", &resolved, publication, Default::default()).await.unwrap();
    let publication = client.recv(Duration::from_secs(1)).await.unwrap();
    assert_eq!(publication["push"]["channel"], "chat:asked");
    assert_eq!(publication["push"]["pub"]["data"], json!({"n": 1}));

    // Pings keep coming and an unanswered one does not close the session (no 3012).
    for _ in 0..3 {
        assert_eq!(client.recv(Duration::from_secs(26)).await.unwrap(), json!({}));
    }
    assert!(!client.handle.is_closed());
}

#[tokio::test(start_paused = true)]
async fn unidirectional_connect_errors_become_disconnects() {
    let node = node_with(json!({}));
    let expired = mint_hs256(SECRET, &json!({"sub": "u1", "exp": 1_000_000}));
    let client = start_uni(&node, json!({"token": expired})).await;
    assert_eq!(client.closed_with().await.code, 3005, "109 token expired maps to 3005");

    let unknown = mint_hs256(SECRET, &json!({"sub": "u1", "channels": ["nonamespace:x"]}));
    let client = start_uni(&node, json!({"token": unknown})).await;
    assert_eq!(client.closed_with().await.code, 3004, "102 unknown channel maps to 3004");

    // Asking to join a channel of an unknown namespace is a bad request, as in Centrifugo.
    let token = mint_hs256(SECRET, &json!({"sub": "u1"}));
    let client = start_uni(&node, json!({"token": token, "subs": {"nonamespace:y": {}}})).await;
    assert_eq!(client.closed_with().await.code, 3501);
}

#[tokio::test(start_paused = true)]
async fn decoded_commands_and_malformed_input_from_message_transports() {
    let node = node_with(json!({}));
    let client = start(&node);
    let token = mint_hs256(SECRET, &json!({"sub": "u1"}));
    let connect = Command {
        id: 1,
        connect: Some(crate::proto::client::ConnectRequest { token, ..Default::default() }),
        ..Default::default()
    };
    client.tx.send(Inbound::Command(Box::new(connect))).await.unwrap();
    let reply = client.recv(Duration::from_secs(1)).await.unwrap();
    assert_eq!(reply["id"], 1);
    assert!(reply["connect"]["client"].is_string());
    client.tx.send(Inbound::Malformed).await.unwrap();
    assert_eq!(client.closed_with().await.code, 3501);
}

#[tokio::test(start_paused = true)]
async fn configured_transforms_replace_the_uni_connect_error_mapping() {
    let node = node_with(json!({"client": {"connect_code_to_unidirectional_disconnect": {
        "enabled": true,
        "transforms": [{"code": 109, "to": {"code": 4109, "reason": "refresh your token"}}]
    }}}));
    let expired = mint_hs256(SECRET, &json!({"sub": "u1", "exp": 1_000_000}));
    let disconnect = start_uni(&node, json!({"token": expired})).await.closed_with().await;
    assert_eq!((disconnect.code, disconnect.reason.as_str()), (4109, "refresh your token"));
}

/// A session task that dies without its own cleanup (a panic, or the task dropped) still
/// leaves the hub and presence: `Drop for Session` undoes what is left.
#[tokio::test(start_paused = true)]
async fn a_session_task_that_dies_leaves_the_hub_and_presence() {
    let node = node_with(json!({"channel": {"namespaces": [{
        "name": "chat", "allow_subscribe_for_client": true, "presence": true
    }]}}));
    let client = start(&node);
    client.connect().await;
    client.send(json!({"id": 2, "subscribe": {"channel": "chat:room"}})).await;
    assert_eq!(client.recv(Duration::from_secs(1)).await.unwrap()["id"], 2);
    assert_eq!(node.hub.num_connections(), 1);
    assert_eq!(node.presence("chat:room").await.unwrap().len(), 1);
    client.task.abort();
    let _ = client.task.await;
    // The presence removal runs in a task the drop spawned.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(node.hub.num_connections(), 0);
    assert!(node.hub.channels().is_empty(), "the subscription left the hub");
    assert!(node.presence("chat:room").await.unwrap().is_empty());
    assert!(client.handle.is_closed());
}
mod delta;
mod map;
mod races;
mod recovery;

/// S13: a panic in one session's command handling, while it holds a hub lock, closes that
/// session only (3004), is counted, and leaves the hub usable for everyone else.
#[tokio::test(start_paused = true)]
async fn a_panicking_session_closes_alone_and_is_counted() {
    let node = node_with(json!({}));
    let (victim, bystander) = (start(&node), start(&node));
    victim.connect().await;
    bystander.connect().await;
    bystander.send(json!({"id": 2, "subscribe": {"channel": "chat:room"}})).await;
    assert_eq!(bystander.recv(Duration::from_secs(1)).await.unwrap()["id"], 2);

    victim.send(json!({"id": 2, "rpc": {"method": "__panic_holding_a_hub_lock"}})).await;
    let closed = victim.task.await.unwrap();
    assert_eq!(closed.code, 3004);
    assert_eq!(node.session_panics(), 1);
    let info = node.local_info();
    assert_eq!(info.metrics.unwrap().items[crate::node::SESSION_PANICS_METRIC], 1.0);

    // The lock it panicked under still works: new sessions join, publications flow.
    let late = start(&node);
    late.connect().await;
    assert_eq!(node.hub.num_connections(), 2, "the bystander and the late session");
    let publication =
        crate::proto::client::Publication { data: Bytes::from_static(b"{}"), ..Default::default() };
    let resolved = node.resolve("chat:room").unwrap();
    node.publish("chat:room", &resolved, publication, crate::node::PublishSpec::default()).await.unwrap();
    let pushed = bystander.recv(Duration::from_secs(1)).await.unwrap();
    assert_eq!(pushed["push"]["channel"], "chat:room", "{pushed}");
}
