//! Delta compression and publication versions as a subscriber sees them.

use super::*;
use crate::node::PublishSpec;
use crate::protocol::fossil;

fn delta_node() -> Arc<Node> {
    node_with(json!({"channel": {"namespaces": [{
        "name": "doc", "allow_subscribe_for_client": true, "history_size": 10, "history_ttl": "60s",
        "force_recovery": true, "allowed_delta_types": ["fossil"]
    }, {
        "name": "plain", "allow_subscribe_for_client": true, "history_size": 10, "history_ttl": "60s",
        "force_recovery": true
    }]}}))
}

fn document(revision: u32) -> String {
    let rows: Vec<String> = (0..40).map(|i| format!(r#"{{"row":{i},"label":"row number {i}"}}"#)).collect();
    format!(r#"{{"rows":[{}],"revision":{revision}}}"#, rows.join(","))
}

async fn publish(
    node: &Arc<Node>,
    channel: &str,
    data: String,
    spec: PublishSpec,
) -> crate::engine::PublishOutcome {
    let resolved = node.resolve(channel).unwrap();
    let publication = crate::proto::client::Publication { data: Bytes::from(data), ..Default::default() };
    node.publish(channel, &resolved, publication, spec).await.unwrap()
}

fn delta() -> PublishSpec {
    PublishSpec { delta: true, ..Default::default() }
}

/// Applies one pushed publication to what the subscriber holds, as the SDK does; returns
/// whether it was a patch.
fn apply(held: &mut Vec<u8>, publication: &Value) -> bool {
    let text = publication["data"].as_str().expect("delta subscribers get data as a JSON string");
    if publication["delta"] == true {
        *held = fossil::apply(held, text.as_bytes()).unwrap();
        true
    } else {
        *held = text.as_bytes().to_vec();
        false
    }
}

#[tokio::test(start_paused = true)]
async fn a_delta_subscriber_gets_the_first_publication_whole_then_patches() {
    let node = delta_node();
    let client = start(&node);
    client.connect().await;
    client.send(json!({"id": 2, "subscribe": {"channel": "doc:1", "delta": "fossil"}})).await;
    let reply = client.recv(Duration::from_secs(1)).await.unwrap();
    assert_eq!(reply["subscribe"]["delta"], true);
    let mut held = Vec::new();
    let mut patches = 0;
    for revision in 0..4 {
        publish(&node, "doc:1", document(revision), delta()).await;
        let pushed = client.recv(Duration::from_secs(1)).await.unwrap();
        let publication = &pushed["push"]["pub"];
        patches += apply(&mut held, publication) as usize;
        assert_eq!(held, document(revision).as_bytes(), "revision {revision} decodes exactly");
        if revision > 0 {
            assert!(publication["data"].as_str().unwrap().len() < 100, "a patch, not the document");
        }
    }
    assert_eq!(patches, 3, "every publication after the first is a patch");
}

#[tokio::test(start_paused = true)]
async fn delta_is_negotiated_only_where_the_namespace_allows_it() {
    let node = delta_node();
    let client = start(&node);
    client.connect().await;
    client.send(json!({"id": 2, "subscribe": {"channel": "plain:1", "delta": "fossil"}})).await;
    let reply = client.recv(Duration::from_secs(1)).await.unwrap();
    assert_eq!(reply["subscribe"]["delta"], Value::Null, "{reply}");
    publish(&node, "plain:1", document(1), delta()).await;
    let pushed = client.recv(Duration::from_secs(1)).await.unwrap();
    assert!(pushed["push"]["pub"]["data"].is_object(), "plain JSON for a plain subscriber");
    // An unknown delta type is a protocol violation.
    client.send(json!({"id": 3, "subscribe": {"channel": "doc:2", "delta": "xdelta"}})).await;
    assert_eq!(client.closed_with().await.code, 3501);
}

#[tokio::test(start_paused = true)]
async fn a_recovered_delta_subscriber_gets_a_chain_then_live_patches() {
    let node = delta_node();
    let first = publish(&node, "doc:r", document(0), delta()).await;
    for revision in 1..3 {
        publish(&node, "doc:r", document(revision), delta()).await;
    }
    let client = start(&node);
    client.connect().await;
    client
        .send(json!({"id": 2, "subscribe": {
            "channel": "doc:r", "delta": "fossil", "recover": true, "offset": 0, "epoch": first.position.epoch
        }}))
        .await;
    let result = client.recv(Duration::from_secs(1)).await.unwrap()["subscribe"].clone();
    assert_eq!(result["recovered"], true);
    let recovered = result["publications"].as_array().unwrap();
    let mut held = Vec::new();
    let kinds: Vec<bool> = recovered.iter().map(|p| apply(&mut held, p)).collect();
    assert_eq!(kinds, [false, true, true]);
    assert_eq!(held, document(2).as_bytes());
    publish(&node, "doc:r", document(3), delta()).await;
    let pushed = client.recv(Duration::from_secs(1)).await.unwrap();
    assert!(apply(&mut held, &pushed["push"]["pub"]), "the first live publication is already a patch");
    assert_eq!(held, document(3).as_bytes());
}

#[tokio::test(start_paused = true)]
async fn a_publication_outside_the_stream_makes_the_next_one_whole() {
    let node = delta_node();
    let client = start(&node);
    client.connect().await;
    client.send(json!({"id": 2, "subscribe": {"channel": "doc:s", "delta": "fossil"}})).await;
    client.recv(Duration::from_secs(1)).await.unwrap();
    let mut held = Vec::new();
    let mut kinds = Vec::new();
    for (revision, skip_history) in [(0, false), (1, false), (2, true), (3, false), (4, false)] {
        publish(&node, "doc:s", document(revision), PublishSpec { skip_history, ..delta() }).await;
        let pushed = client.recv(Duration::from_secs(1)).await.unwrap();
        kinds.push(apply(&mut held, &pushed["push"]["pub"]));
        assert_eq!(held, document(revision).as_bytes());
    }
    assert_eq!(kinds, [false, true, false, false, true]);
}

#[tokio::test(start_paused = true)]
async fn stale_versions_are_not_delivered() {
    let node = delta_node();
    let client = start(&node);
    client.connect().await;
    client.send(json!({"id": 2, "subscribe": {"channel": "plain:v"}})).await;
    client.recv(Duration::from_secs(1)).await.unwrap();
    let versioned = |version| PublishSpec { version, ..Default::default() };
    let accepted = publish(&node, "plain:v", "\"v2\"".into(), versioned(2)).await;
    let stale = publish(&node, "plain:v", "\"v1\"".into(), versioned(1)).await;
    assert!(stale.suppressed);
    assert_eq!(stale.position, accepted.position);
    publish(&node, "plain:v", "\"v3\"".into(), versioned(3)).await;
    let first = client.recv(Duration::from_secs(1)).await.unwrap();
    assert_eq!(
        (first["push"]["pub"]["data"].clone(), first["push"]["pub"]["version"].clone()),
        (json!("v2"), json!(2))
    );
    let second = client.recv(Duration::from_secs(1)).await.unwrap();
    assert_eq!(second["push"]["pub"]["data"], "v3");
}
