//! Map subscriptions on the wire: phases, pages, going live, and the error for each misuse.

use super::*;
use crate::node::map::MapWrite;

fn map_node() -> Arc<Node> {
    node_with(json!({"channel": {"namespaces": [
        {"name": "eph", "subscription_type": "map", "allow_subscribe_for_client": true,
         "map": {"mode": "ephemeral", "key_ttl": "60s", "min_page_size": 1, "allow_publish_for_subscriber": true}},
        {"name": "pos", "subscription_type": "map", "allow_subscribe_for_client": true,
         "map": {"mode": "persistent", "min_page_size": 1, "subscribe_catch_up_timeout": "2s"}},
        {"name": "chat", "allow_subscribe_for_client": true}
    ]}}))
}

async fn write(node: &Arc<Node>, channel: &str, key: &str, value: u32) {
    let resolved = node.resolve(channel).unwrap();
    let publication = crate::proto::client::Publication {
        key: key.into(),
        data: Bytes::from(value.to_string()),
        ..Default::default()
    };
    node.map_publish(channel, &resolved, publication, MapWrite::default()).await.unwrap();
}

async fn ask(client: &Client, id: u32, subscribe: Value) -> Value {
    client.send(json!({"id": id, "subscribe": subscribe})).await;
    client.recv(Duration::from_secs(1)).await.unwrap()
}

fn error_code(reply: &Value) -> u64 {
    reply["error"]["code"].as_u64().unwrap_or(0)
}

#[tokio::test(start_paused = true)]
async fn misuses_get_centrifugos_errors() {
    let node = map_node();
    let client = start(&node);
    client.connect().await;
    let cases = [
        (json!({"channel": "pos:a"}), 103, "a stream subscribe to a map channel"),
        (json!({"channel": "chat:a", "type": 1, "phase": 2}), 103, "a map subscribe to a stream channel"),
        (
            json!({"channel": "eph:a", "type": 1, "phase": 1, "recover": true}),
            107,
            "a stream phase on an ephemeral map",
        ),
        (
            json!({"channel": "pos:a", "type": 1, "phase": 2, "cursor": "k"}),
            103,
            "a cursor without a subscribe",
        ),
        (json!({"channel": "pos:a", "type": 1, "phase": 1}), 103, "a stream phase without recovery"),
        (json!({"channel": "pos:a", "type": 1, "phase": 7}), 107, "an unknown phase"),
        (json!({"channel": "pos:a", "type": 9}), 107, "an unknown type"),
        (json!({"channel": "pos:a", "type": 4}), 108, "shared poll where none is configured"),
    ];
    for (id, (request, code, what)) in (2..).zip(cases) {
        let reply = ask(&client, id, request).await;
        assert_eq!(error_code(&reply), code, "{what}: {reply}");
    }
    // None of them left a subscribe in progress.
    let live = ask(&client, 20, json!({"channel": "pos:a", "type": 1, "phase": 2})).await;
    assert_eq!(live["subscribe"]["type"], 1, "{live}");
    let again = ask(&client, 21, json!({"channel": "pos:a", "type": 1, "phase": 2})).await;
    assert_eq!(error_code(&again), 105, "already subscribed");
}

#[tokio::test(start_paused = true)]
async fn state_pages_then_live_with_the_writes_made_meanwhile() {
    let node = map_node();
    for i in 0..5 {
        write(&node, "pos:p", &format!("k{i}"), i).await;
    }
    let client = start(&node);
    client.connect().await;
    let first = ask(&client, 2, json!({"channel": "pos:p", "type": 1, "phase": 2, "limit": 2})).await;
    let result = &first["subscribe"];
    assert_eq!(
        (result["phase"].clone(), result["cursor"].clone(), result["offset"].clone()),
        (json!(2), json!("k1"), json!(5))
    );
    let epoch = result["epoch"].clone();
    // Written between pages: k0 changes (already paged), k9 is new.
    write(&node, "pos:p", "k0", 100).await;
    write(&node, "pos:p", "k9", 9).await;
    let mut cursor = result["cursor"].clone();
    let mut pages = vec![first];
    while cursor != Value::Null {
        let page = ask(
            &client,
            3,
            json!({"channel": "pos:p", "type": 1, "phase": 2, "limit": 2,
            "cursor": cursor, "offset": 5, "epoch": epoch}),
        )
        .await;
        cursor = page["subscribe"]["cursor"].clone();
        pages.push(page);
    }
    let last = &pages.last().unwrap()["subscribe"];
    assert_eq!(last["phase"], Value::Null, "the last page goes live: {last}");
    assert_eq!(last["recoverable"], true);
    assert_eq!(last["offset"], 7);
    let state_keys: Vec<String> = pages
        .iter()
        .flat_map(|p| p["subscribe"]["state"].as_array().cloned().unwrap_or_default())
        .map(|e| e["key"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(state_keys, ["k0", "k1", "k2", "k3", "k4"], "k9 was written after the frozen position");
    let caught_up: Vec<(String, u64)> = last["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["key"].as_str().unwrap().to_owned(), p["offset"].as_u64().unwrap()))
        .collect();
    assert_eq!(caught_up, [("k0".to_owned(), 6), ("k9".to_owned(), 7)]);
    write(&node, "pos:p", "k2", 22).await;
    let pushed = client.recv(Duration::from_secs(1)).await.unwrap();
    assert_eq!(
        (pushed["push"]["pub"]["key"].clone(), pushed["push"]["pub"]["offset"].clone()),
        (json!("k2"), json!(8))
    );
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_paging_is_closed_as_slow() {
    let node = map_node();
    for i in 0..4 {
        write(&node, "pos:slow", &format!("k{i}"), i).await;
    }
    let client = start(&node);
    client.connect().await;
    let first = ask(&client, 2, json!({"channel": "pos:slow", "type": 1, "phase": 2, "limit": 2})).await;
    let cursor = first["subscribe"]["cursor"].clone();
    tokio::time::sleep(Duration::from_secs(3)).await;
    client.send(json!({"id": 3, "subscribe": {"channel": "pos:slow", "type": 1, "phase": 2, "limit": 2, "cursor": cursor}})).await;
    let closed = loop {
        match client.recv(Duration::from_secs(30)).await {
            Ok(ping) if ping == json!({}) => continue,
            Ok(other) => panic!("expected a close, got {other}"),
            Err(disconnect) => break disconnect,
        }
    };
    assert_eq!(closed.code, 3008);
}

#[tokio::test(start_paused = true)]
async fn client_writes_follow_the_map_permissions() {
    let node = map_node();
    let client = start(&node);
    client.connect().await;
    let publish = |id: u32, body: Value| {
        let client = &client;
        async move {
            client.send(json!({"id": id, "publish": body})).await;
            client.recv(Duration::from_secs(1)).await.unwrap()
        }
    };
    let denied = publish(2, json!({"channel": "eph:w", "type": 1, "key": "k", "data": 1})).await;
    assert_eq!(error_code(&denied), 103, "only subscribers may write here: {denied}");
    ask(&client, 3, json!({"channel": "eph:w", "type": 1, "phase": 2})).await;
    let keyless = publish(4, json!({"channel": "eph:w", "type": 1, "data": 1})).await;
    assert_eq!(error_code(&keyless), 107);
    let plain = publish(5, json!({"channel": "eph:w", "data": 1})).await;
    assert_eq!(error_code(&plain), 107, "a plain publication into a map channel");
    let written = publish(6, json!({"channel": "eph:w", "type": 1, "key": "k", "data": {"v": 1}})).await;
    // The push and the reply both arrive; the push may come first.
    let other = client.recv(Duration::from_secs(1)).await.unwrap();
    let (reply, push) = if written["id"] == 6 { (written, other) } else { (other, written) };
    assert_eq!(reply["publish"], json!({}));
    assert_eq!(push["push"]["pub"]["key"], "k");
    assert_eq!(push["push"]["pub"]["info"]["user"], "u1");
}

#[tokio::test(start_paused = true)]
async fn unsubscribing_during_a_subscribe_drops_it() {
    let node = map_node();
    for i in 0..4 {
        write(&node, "eph:u", &format!("k{i}"), i).await;
    }
    let client = start(&node);
    client.connect().await;
    let first = ask(&client, 2, json!({"channel": "eph:u", "type": 1, "phase": 2, "limit": 2})).await;
    assert_eq!(first["subscribe"]["phase"], 2);
    assert_eq!(node.hub.channels().get("eph:u"), Some(&1), "an ephemeral map registers at once");
    client.send(json!({"id": 3, "unsubscribe": {"channel": "eph:u"}})).await;
    client.recv(Duration::from_secs(1)).await.unwrap();
    assert_eq!(node.hub.channels().get("eph:u"), None);
    let fresh = ask(&client, 4, json!({"channel": "eph:u", "type": 1, "phase": 2})).await;
    assert_eq!(fresh["subscribe"]["state"].as_array().unwrap().len(), 4, "a fresh subscribe starts over");
}
