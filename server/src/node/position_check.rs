//! The position check: how a subscriber notices a delivery lost on a quiet channel.
//!
//! With a networked broker, a publication can be lost on its way to this node (a PUB/SUB
//! reconnect, a frozen Redis). A gap is noticed by offsets at the next publication; this loop
//! covers channels that then go quiet. Every `client.channel_position_check_delay` it reads
//! the stream top of each local channel with history, and compares each positioned subscriber
//! with the top read one round *earlier*: a delivery still in flight after a whole round is
//! lost, while one merely slowed by load is not mistaken for a gap. Behind or on another
//! epoch means lost state, which the handle turns into unsubscribe 2500 (the SDK resubscribes
//! and recovers) or 3010.

use std::collections::HashMap;
use std::sync::Weak;

use futures_util::StreamExt;

use super::Node;
use crate::channel::ResolvedChannel;
use crate::common::{HistoryFilter, StreamPosition};

/// Stream tops read at once by the position check.
const CONCURRENCY: usize = 32;

/// Runs until the node shuts down or is dropped.
pub(super) async fn run(node: Weak<Node>) {
    let mut previous: HashMap<String, StreamPosition> = HashMap::new();
    loop {
        let (delay, shutdown) = match node.upgrade() {
            Some(node) => (node.config.client.channel_position_check_delay.0, node.shutdown.clone()),
            None => return,
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return,
        }
        let Some(node) = node.upgrade() else { return };
        let tops = stream_tops(&node).await;
        for (channel, top) in &previous {
            if tops.contains_key(channel) {
                node.hub.check_position(channel, top);
            }
        }
        previous = tops;
    }
}

/// The current top of every local channel that keeps history.
async fn stream_tops(node: &Node) -> HashMap<String, StreamPosition> {
    let channels: Vec<(String, ResolvedChannel)> = node
        .hub
        .channels()
        .into_keys()
        .filter_map(|channel| {
            let resolved = node.resolve(&channel).ok()?;
            resolved.options.history_enabled().then_some((channel, resolved))
        })
        .collect();
    futures_util::stream::iter(channels)
        .map(|(channel, resolved)| async move {
            let filter = HistoryFilter { limit: 0, ..Default::default() };
            let top = node.history(&channel, &resolved, filter).await.ok()?;
            Some((channel, top.position))
        })
        .buffer_unordered(CONCURRENCY)
        .filter_map(std::future::ready)
        .collect()
        .await
}
