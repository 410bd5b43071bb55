//! Node-to-node control: what makes several nodes on one broker answer the server API as one
//! server.
//!
//! Messages (`spinwire.cluster.v1.ControlMessage`) travel through the broker's control
//! channels ([`crate::engine::Broker::publish_control`]): to every node, or to one node by uid.
//! This module owns
//! - the **registry** of live nodes, fed by each node's announcement every
//!   [`ANNOUNCE_INTERVAL`] (and answered at once, to the newcomer only, when a node is heard
//!   of for the first time); a node that stops announcing drops out after [`NODE_EXPIRY`];
//! - **surveys**: a question to every node (`channels`) whose answers come back to the asker's
//!   own channel, collected until every known node answered or [`SURVEY_TIMEOUT`];
//! - the **dispatcher** ([`handle`]): each incoming command becomes one node method call
//!   (disconnect, unsubscribe, subscribe, refresh, an emulation frame for a local session),
//!   without awaiting anything: the handler runs on the broker's reader task.
//!
//! With the memory engine there are no other nodes: broadcasts go nowhere and the registry
//! holds only this node.

use crate::sync::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Node;
use crate::common::glob_match;
use crate::errors::ClientError;
use crate::proto::api::NodeResult;
use crate::proto::cluster::control_message::Command;
use crate::proto::cluster::{
    ChannelsSurvey, ChannelsSurveyAnswer, ControlMessage, EmulationFrame, NodeLeaving,
};

/// How often a node announces itself.
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(3);
/// A node missing this long is gone (three announcements).
pub const NODE_EXPIRY: Duration = Duration::from_secs(10);
/// How long a survey waits for answers.
pub const SURVEY_TIMEOUT: Duration = Duration::from_secs(3);
/// Surveys in flight at once; more are refused rather than queued.
const MAX_SURVEYS: usize = 64;

/// Other nodes as last announced, and the surveys this node is waiting on.
#[derive(Debug, Default)]
pub struct Cluster {
    nodes: Mutex<HashMap<String, (NodeResult, Instant)>>,
    /// Nodes that stopped announcing without saying goodbye, not yet reported.
    lost: Mutex<Vec<String>>,
    /// Surveys in flight: answers go to the asker with the answering node's uid.
    surveys: Mutex<HashMap<u64, mpsc::Sender<(String, ChannelsSurveyAnswer)>>>,
    next_survey: AtomicU64,
}

impl Cluster {
    /// The registry with nodes that stopped announcing dropped.
    fn live(&self) -> crate::sync::MutexGuard<'_, HashMap<String, (NodeResult, Instant)>> {
        let now = Instant::now();
        let mut nodes = self.nodes.locked();
        let mut expired = Vec::new();
        nodes.retain(|uid, (_, seen)| {
            let alive = now.duration_since(*seen) < NODE_EXPIRY;
            if !alive {
                expired.push(uid.clone());
            }
            alive
        });
        if !expired.is_empty() {
            self.lost.locked().extend(expired);
        }
        nodes
    }

    /// Nodes lost since the last call, to report when this node is the one that reports for
    /// the cluster: the live node with the lowest uid, so one report goes out per loss.
    fn take_lost(&self, own_uid: &str) -> Vec<String> {
        let reporter = self.live().keys().all(|uid| own_uid < uid.as_str());
        let lost = std::mem::take(&mut *self.lost.locked());
        if reporter { lost } else { Vec::new() }
    }

    /// Uids of the other live nodes.
    fn other_uids(&self) -> std::collections::HashSet<String> {
        self.live().keys().cloned().collect()
    }

    /// Other live nodes (not this one), by uid.
    pub fn other_nodes(&self) -> Vec<NodeResult> {
        self.live().values().map(|(info, _)| info.clone()).collect()
    }

    /// True for a live node other than this one.
    pub fn knows(&self, uid: &str) -> bool {
        self.live().contains_key(uid)
    }

    fn forget(&self, uid: &str) {
        self.nodes.locked().remove(uid);
    }
}

/// Encodes a control message from `node`.
fn encode(node: &Node, command: Command) -> Bytes {
    Bytes::from(ControlMessage { origin: node.uid.clone(), command: Some(command) }.encode_to_vec())
}

/// Sends `command` to every other node (or to `target`). A failure is logged: the local part
/// of the operation has already happened and a node that missed it behaves as one that was
/// briefly partitioned.
pub async fn send(node: &Node, command: Command, target: Option<&str>) -> Result<(), ClientError> {
    node.publish_control(encode(node, command), target).await
}

/// Handles one control message (called on the broker's reader task: never blocks).
pub fn handle(node: &Arc<Node>, payload: &[u8]) {
    let Ok(message) = ControlMessage::decode(payload) else {
        tracing::warn!(bytes = payload.len(), "undecodable control message skipped");
        return;
    };
    if message.origin == node.uid {
        return;
    }
    let Some(command) = message.command else { return };
    match command {
        Command::Node(info) => {
            let known =
                node.cluster.nodes.locked().insert(message.origin.clone(), (info, Instant::now())).is_some();
            if !known {
                // A node we had not heard of (it just started): tell it about us right away
                // instead of letting it wait for our next announcement.
                let node = node.clone();
                tokio::spawn(async move {
                    let info = node.local_info();
                    let _ = send(&node, Command::Node(info), Some(&message.origin)).await;
                });
            }
        }
        Command::Leaving(NodeLeaving {}) => node.cluster.forget(&message.origin),
        Command::Disconnect(request) => node.apply_disconnect(&request),
        Command::Unsubscribe(request) => node.apply_unsubscribe(&request),
        Command::Subscribe(request) => node.apply_subscribe(&request),
        Command::Refresh(request) => node.apply_refresh(&request),
        Command::Emulation(EmulationFrame { session, data }) => {
            // Dropped when the session is gone or busy, as a lost HTTP request would be.
            if node.emulation.deliver(&session, data).is_err() {
                tracing::debug!(%session, "routed emulation frame dropped: session busy or gone");
            }
        }
        Command::ChannelsSurvey(ChannelsSurvey { id, pattern }) => {
            let answer = ChannelsSurveyAnswer { id, channels: local_channels(node, &pattern) };
            let node = node.clone();
            let origin = message.origin;
            // Answering publishes, which awaits: off the reader task.
            tokio::spawn(async move {
                let _ = send(&node, Command::ChannelsSurveyAnswer(answer), Some(&origin)).await;
            });
        }
        Command::ChannelsSurveyAnswer(answer) => {
            let surveys = node.cluster.surveys.locked();
            if let Some(sender) = surveys.get(&answer.id) {
                let _ = sender.try_send((message.origin, answer));
            }
        }
    }
}

/// This node's channels matching `pattern`, with their local subscriber counts.
pub fn local_channels(node: &Node, pattern: &str) -> BTreeMap<String, u32> {
    node.hub
        .channels()
        .into_iter()
        .filter(|(channel, _)| pattern.is_empty() || glob_match(pattern, channel))
        .collect()
}

/// Channels with subscribers on any node, with subscriber counts summed over nodes.
pub async fn channels(node: &Node, pattern: &str) -> Result<BTreeMap<String, u32>, ClientError> {
    let mut total = local_channels(node, pattern);
    let mut waiting = node.cluster.other_uids();
    if waiting.is_empty() {
        return Ok(total);
    }
    node.metrics.action(crate::metrics::NodeAction::Survey);
    let id = node.cluster.next_survey.fetch_add(1, Ordering::Relaxed);
    // Room for one answer per node we know of plus a few from nodes not yet announced.
    let (sender, mut answers) = mpsc::channel(waiting.len() + 8);
    {
        let mut surveys = node.cluster.surveys.locked();
        if surveys.len() >= MAX_SURVEYS {
            return Err(ClientError::INTERNAL);
        }
        surveys.insert(id, sender);
    }
    struct Unregister<'a>(&'a Cluster, u64);
    impl Drop for Unregister<'_> {
        fn drop(&mut self) {
            self.0.surveys.locked().remove(&self.1);
        }
    }
    let _unregister = Unregister(&node.cluster, id);
    send(node, Command::ChannelsSurvey(ChannelsSurvey { id, pattern: pattern.to_owned() }), None).await?;
    let deadline = Instant::now() + SURVEY_TIMEOUT;
    let mut answered = std::collections::HashSet::new();
    // Done when every node we knew of has answered; a node that dies meanwhile costs the
    // timeout, and its channels are missing from the result.
    while !waiting.is_empty() {
        match tokio::time::timeout_at(deadline, answers.recv()).await {
            Ok(Some((origin, answer))) => {
                if !answered.insert(origin.clone()) {
                    continue;
                }
                waiting.remove(&origin);
                for (channel, count) in answer.channels {
                    *total.entry(channel).or_default() += count;
                }
            }
            _ => {
                tracing::warn!(
                    survey = id,
                    missing = waiting.len(),
                    "channels survey: not every node answered in time"
                );
                break;
            }
        }
    }
    Ok(total)
}

/// Announces this node every [`ANNOUNCE_INTERVAL`] until it shuts down, then says goodbye; reports
/// nodes that vanished without a goodbye to the lifecycle events (see [`Cluster::take_lost`]).
pub async fn announce_loop(node: Weak<Node>) {
    // The first announcement waits until this node's control subscription is up, so the
    // immediate answers of the other nodes are not lost.
    loop {
        let Some(node) = node.upgrade() else { return };
        if node.shutdown.is_cancelled() {
            return;
        }
        if node.health_problems().is_empty() {
            break;
        }
        drop(node);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut tick = tokio::time::interval(ANNOUNCE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let shutdown = {
            let Some(node) = node.upgrade() else { return };
            node.shutdown.clone()
        };
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => {
                if let Some(node) = node.upgrade() {
                    let _ = send(&node, Command::Leaving(NodeLeaving {}), None).await;
                }
                return;
            }
        }
        let Some(node) = node.upgrade() else { return };
        let info = node.local_info();
        if let Err(error) = send(&node, Command::Node(info), None).await {
            tracing::debug!(?error, "node announcement failed");
        }
        for uid in node.cluster.take_lost(&node.uid) {
            tracing::warn!(node = %uid, "a node stopped announcing without saying goodbye");
            if let Some(lifecycle) = &node.lifecycle {
                lifecycle.node_lost(&uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(cluster: &Cluster, uid: &str, ago: Duration) {
        let at = Instant::now().checked_sub(ago).unwrap_or_else(Instant::now);
        cluster.nodes.locked().insert(uid.to_owned(), (NodeResult::default(), at));
    }

    #[test]
    fn a_lost_node_is_reported_once_by_the_live_node_with_the_lowest_uid() {
        let cluster = Cluster::default();
        seen(&cluster, "b", Duration::ZERO);
        seen(&cluster, "z", NODE_EXPIRY + Duration::from_secs(1));
        // "c" is not the lowest live uid ("b" is): it stays quiet.
        assert!(cluster.take_lost("c").is_empty());
        seen(&cluster, "y", NODE_EXPIRY + Duration::from_secs(1));
        assert_eq!(cluster.take_lost("a"), vec!["y".to_owned()]);
        assert!(cluster.take_lost("a").is_empty(), "reported once");
        // A goodbye is not a loss.
        seen(&cluster, "x", Duration::ZERO);
        cluster.forget("x");
        assert!(cluster.take_lost("a").is_empty());
    }
}
