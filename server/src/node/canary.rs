//! The delivery canary (`health.canary`): proof that the broker still delivers to this node.
//!
//! A PUB/SUB connection can stay open and answer pings while delivering nothing (Centrifugo
//! #1189: after a Sentinel failover a node kept its clients, the API kept accepting
//! publishes, `/health` stayed green, and subscribers on that node received nothing). Checks
//! of the connection cannot see that; a delivery can. Every `interval` the node publishes a
//! small message through the broker, exactly as the server API would, to a channel only it
//! subscribes to, and notes when each comes back. `/health` turns red once no round trip has
//! completed for `timeout`, and green again with the next one that does.
//!
//! The canary observes; it repairs nothing (the Redis broker's own probe rebuilds a silent
//! connection). Its channel never reaches the hub: [`NodeEvents`](super::NodeEvents) hands
//! its publications here, and the node never unsubscribes the broker from it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::Node;
use crate::engine::PublishOptions;
use crate::proto::client::Publication;

/// The canary's state, shared by its loop, the broker's event handler and `/health`.
#[derive(Debug)]
pub struct Canary {
    /// `_spinwire.canary.<node uid>`: one channel per node, so nodes never see each
    /// other's canaries.
    pub channel: String,
    interval: Duration,
    timeout: Duration,
    /// What the timestamps below count from.
    epoch: Instant,
    /// One more than the milliseconds from `epoch` to the last round trip completed (0: none
    /// yet), so `fetch_max` keeps the latest.
    last_round_trip: AtomicU64,
    /// Whether the loop last saw the canary healthy, to log and count each change once.
    reported_healthy: AtomicBool,
}

/// The canary as `/metrics` reports it.
#[derive(Debug, Clone, Copy)]
pub struct CanaryStatus {
    pub healthy: bool,
    /// Since the last round trip completed (or since the node started, before the first).
    pub since_last_round_trip: Duration,
}

impl Canary {
    pub fn new(node_uid: &str, interval: Duration, timeout: Duration) -> Self {
        Self {
            channel: format!("_spinwire.canary.{node_uid}"),
            interval,
            timeout,
            epoch: Instant::now(),
            last_round_trip: AtomicU64::new(0),
            reported_healthy: AtomicBool::new(true),
        }
    }

    /// The canary `health.canary` asks for, if enabled.
    pub fn configured(config: &crate::config::Canary, node_uid: &str) -> Option<Arc<Self>> {
        config.enabled.then(|| Arc::new(Self::new(node_uid, config.interval.0, config.timeout.0)))
    }

    fn millis_now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Healthy while a round trip completed within `timeout`; the first one gets `timeout`
    /// from the start, so a node is not red while its broker connects.
    pub fn status(&self) -> CanaryStatus {
        let since = match self.last_round_trip.load(Ordering::Acquire) {
            0 => self.epoch.elapsed(),
            at => Duration::from_millis(self.millis_now().saturating_sub(at - 1)),
        };
        CanaryStatus { healthy: since <= self.timeout, since_last_round_trip: since }
    }

    /// A canary's payload: when it left, so its return gives the round trip time without the
    /// canary remembering anything.
    fn payload(&self) -> Bytes {
        Bytes::from(format!("{{\"sent_ms\":{}}}", self.millis_now()))
    }

    /// A canary publication came back (called by the broker's event handler); returns the
    /// round trip time, or `None` for a payload this canary did not send.
    pub fn returned(&self, publication: &Publication) -> Option<Duration> {
        let text = std::str::from_utf8(&publication.data).ok()?;
        let sent_ms: u64 = text.strip_prefix("{\"sent_ms\":")?.strip_suffix('}')?.parse().ok()?;
        let now = self.millis_now();
        if sent_ms > now {
            return None;
        }
        self.last_round_trip.fetch_max(now + 1, Ordering::AcqRel);
        Some(Duration::from_millis(now - sent_ms))
    }
}

/// Runs the canary until the node shuts down or is dropped: subscribe (again, until the broker
/// accepts), publish, and log each change of health.
pub(super) async fn run(node: Weak<Node>) {
    let Some((interval, shutdown)) = node.upgrade().and_then(|node| {
        let canary = node.canary.as_ref()?;
        Some((canary.interval, node.shutdown.clone()))
    }) else {
        return;
    };
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut subscribed = false;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let Some(node) = node.upgrade() else { return };
        let Some(canary) = node.canary.as_ref() else { return };
        report_change(&node, canary);
        if !subscribed {
            subscribed = subscribe(&node, canary).await;
        }
        if subscribed {
            send(&node, canary).await;
        }
    }
}

async fn subscribe(node: &Node, canary: &Canary) -> bool {
    match node.broker.subscribe(&canary.channel).await {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(%error, "delivery canary: broker subscribe failed, retrying");
            false
        }
    }
}

/// Publishes one canary, without history; a failed publish only delays the next round trip,
/// which is what health measures.
async fn send(node: &Node, canary: &Canary) {
    let publication = Publication { data: canary.payload(), ..Default::default() };
    let options = PublishOptions::default();
    if let Err(error) = node.broker.publish(&canary.channel, publication, &options).await {
        tracing::debug!(%error, "delivery canary: publish failed");
    }
}

/// Logs (and counts) the canary turning red or green, once per change.
fn report_change(node: &Node, canary: &Canary) {
    let status = canary.status();
    if canary.reported_healthy.swap(status.healthy, Ordering::AcqRel) == status.healthy {
        return;
    }
    let since_ms = status.since_last_round_trip.as_millis() as u64;
    if status.healthy {
        tracing::info!(since_ms, "delivery canary: round trips resumed, healthy again");
    } else {
        node.metrics.canary_failures.inc();
        tracing::warn!(since_ms, "delivery canary: no round trip through the broker, unhealthy");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canary() -> Canary {
        Canary::new("n1", Duration::from_millis(100), Duration::from_secs(1))
    }

    #[tokio::test(start_paused = true)]
    async fn healthy_for_timeout_from_the_start_then_red_without_round_trips() {
        let canary = canary();
        tokio::time::advance(Duration::from_millis(900)).await;
        assert!(canary.status().healthy);
        tokio::time::advance(Duration::from_millis(200)).await;
        let status = canary.status();
        assert!(!status.healthy);
        assert_eq!(status.since_last_round_trip, Duration::from_millis(1100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_returned_canary_gives_its_round_trip_and_turns_health_green() {
        let canary = canary();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!canary.status().healthy);
        let publication = Publication { data: canary.payload(), ..Default::default() };
        tokio::time::advance(Duration::from_millis(30)).await;
        assert_eq!(canary.returned(&publication), Some(Duration::from_millis(30)));
        let status = canary.status();
        assert!(status.healthy);
        assert_eq!(status.since_last_round_trip, Duration::ZERO);
        // A canary that arrives late still proves delivery: a long round trip, but green.
        let late = Publication { data: Bytes::from_static(b"{\"sent_ms\":1}"), ..Default::default() };
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(canary.returned(&late), Some(Duration::from_millis(5529)));
        assert_eq!(canary.status().since_last_round_trip, Duration::ZERO);
    }

    #[test]
    fn foreign_payloads_are_not_round_trips() {
        let canary = canary();
        for data in [&b"hello"[..], b"{\"sent_ms\":}", b"{\"sent_ms\":99999999}", b"\xff"] {
            let publication = Publication { data: Bytes::copy_from_slice(data), ..Default::default() };
            assert_eq!(canary.returned(&publication), None, "{data:?}");
        }
        assert!(canary.status().healthy, "nothing counted as a round trip, but still in the grace period");
    }
}
