//! Lifecycle events (`lifecycle_events`, a Spinwire extension): what happens to this node's
//! clients, told to the application backend through a named proxy
//! (`proto/spinwire/lifecycle/v1/lifecycle.proto` has the messages and the guarantees).
//!
//! Sessions record events ([`Lifecycle::connected`] …) into a bounded queue and never wait:
//! a full queue drops the event and counts it (`spinwire_lifecycle_events_dropped_total`), and
//! the next batch says how many went. One sender task ([`Lifecycle::start`]) takes batches of up to
//! `batch_size` events (waiting up to `batch_delay` for one to fill) and delivers each until
//! the backend acknowledges it, with a capped backoff, so batches arrive in order and at
//! least once. On shutdown ([`Lifecycle::drain`]) what is queued, the sessions' 3001
//! disconnects included, is delivered until the drain's deadline.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::LifecycleEvents;
use crate::metrics::LifecycleFigures;
use crate::proto::lifecycle as pb;
use crate::proxy::Backend;
use crate::sync::Mutex;

/// Retries of a batch the backend did not acknowledge: from this, doubling…
const RETRY_MIN: Duration = Duration::from_millis(100);
/// …up to this.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The events waiting, and how many were dropped since the last batch.
#[derive(Default)]
struct Queue {
    events: VecDeque<pb::Event>,
    dropped: u64,
}

/// This node's lifecycle events on their way to the backend.
pub struct Lifecycle {
    node: String,
    backend: Arc<Backend>,
    queue: Mutex<Queue>,
    capacity: usize,
    batch_size: usize,
    batch_delay: Duration,
    /// Rung when a batch is full (or the queue gets its first event).
    filled: Notify,
    seq: AtomicU64,
    dropped: AtomicU64,
    sent: AtomicU64,
    failures: AtomicU64,
    sender: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle").field("node", &self.node).finish_non_exhaustive()
    }
}

impl Lifecycle {
    pub fn new(config: &LifecycleEvents, node: &str, backend: Arc<Backend>) -> Self {
        Self {
            node: node.to_owned(),
            backend,
            queue: Mutex::default(),
            capacity: config.queue_size,
            batch_size: config.batch_size,
            batch_delay: config.batch_delay.0,
            filled: Notify::new(),
            seq: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            sender: Mutex::default(),
        }
    }

    pub fn connected(&self, client: &str, user: &str, connected: pb::Connected) {
        self.record(client, user, |event| event.connected = Some(connected));
    }

    pub fn disconnected(&self, client: &str, user: &str, code: u32, reason: &str) {
        let disconnected = pb::Disconnected { code, reason: reason.to_owned() };
        self.record(client, user, |event| event.disconnected = Some(disconnected));
    }

    pub fn subscribed(&self, client: &str, user: &str, channel: &str) {
        let subscribed = pb::Subscribed { channel: channel.to_owned() };
        self.record(client, user, |event| event.subscribed = Some(subscribed));
    }

    pub fn unsubscribed(&self, client: &str, user: &str, channel: &str, code: u32, reason: &str) {
        let unsubscribed = pb::Unsubscribed { channel: channel.to_owned(), code, reason: reason.to_owned() };
        self.record(client, user, |event| event.unsubscribed = Some(unsubscribed));
    }

    /// `node` stopped without saying goodbye (seen by the cluster registry).
    pub fn node_lost(&self, node: &str) {
        let lost = pb::NodeLost { node: node.to_owned() };
        self.record("", "", |event| event.node_lost = Some(lost));
    }

    /// Queues one event, numbered whether or not it fits (a drop leaves a gap in `seq`).
    fn record(&self, client: &str, user: &str, fill: impl FnOnce(&mut pb::Event)) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let mut event = pb::Event {
            seq,
            time: crate::common::unix_millis(),
            client: client.to_owned(),
            user: user.to_owned(),
            ..Default::default()
        };
        fill(&mut event);
        let mut queue = self.queue.locked();
        if queue.events.len() >= self.capacity {
            queue.dropped += 1;
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        queue.events.push_back(event);
        let len = queue.events.len();
        drop(queue);
        if len == 1 || len == self.batch_size {
            self.filled.notify_one();
        }
    }

    pub fn figures(&self) -> LifecycleFigures {
        LifecycleFigures {
            queued: self.queue.locked().events.len() as u64,
            dropped: self.dropped.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
        }
    }

    /// The next batch, if anything is queued (the dropped count goes with it).
    fn take_batch(&self) -> Option<pb::DeliverRequest> {
        let mut queue = self.queue.locked();
        if queue.events.is_empty() && queue.dropped == 0 {
            return None;
        }
        let take = queue.events.len().min(self.batch_size);
        let events: Vec<pb::Event> = queue.events.drain(..take).collect();
        let dropped = std::mem::take(&mut queue.dropped);
        Some(pb::DeliverRequest { node: self.node.clone(), events, dropped })
    }

    fn is_full_batch(&self) -> bool {
        self.queue.locked().events.len() >= self.batch_size
    }

    /// Delivers `batch` until acknowledged; false when `stop` came first.
    async fn deliver(&self, batch: &pb::DeliverRequest, stop: &CancellationToken) -> bool {
        let mut delay = RETRY_MIN;
        loop {
            match self.backend.deliver_lifecycle(batch).await {
                Ok(()) => {
                    self.sent.fetch_add(batch.events.len() as u64, Ordering::Relaxed);
                    return true;
                }
                Err(error) => {
                    self.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, events = batch.events.len(), "lifecycle events not delivered; retrying");
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return false,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(RETRY_MAX);
        }
    }
}

impl Lifecycle {
    /// Starts the sender: batches go out until `stop`; then [`Lifecycle::drain`] sends the rest.
    pub fn start(self: &Arc<Self>, stop: CancellationToken) {
        let task = tokio::spawn(send_until(self.clone(), stop));
        *self.sender.locked() = Some(task);
    }

    /// After `stop`: waits for the sender, then delivers what is queued until `deadline`.
    pub async fn drain(&self, deadline: tokio::time::Instant) {
        let sender = self.sender.locked().take();
        if let Some(sender) = sender {
            let _ = sender.await;
        }
        let never = CancellationToken::new();
        let drained = tokio::time::timeout_at(deadline, async {
            while let Some(batch) = self.take_batch() {
                self.deliver(&batch, &never).await;
            }
        })
        .await;
        if drained.is_err() {
            let left = self.queue.locked().events.len();
            tracing::warn!(left, "shutdown: lifecycle events left undelivered at the deadline");
        }
    }
}

/// The sender task: waits for events, lets a batch fill for up to `batch_delay`, delivers it.
async fn send_until(lifecycle: Arc<Lifecycle>, stop: CancellationToken) {
    while !stop.is_cancelled() {
        if lifecycle.queue.locked().events.is_empty() {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = lifecycle.filled.notified() => {}
            }
        }
        if !lifecycle.is_full_batch() {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = lifecycle.filled.notified() => {}
                _ = tokio::time::sleep(lifecycle.batch_delay) => {}
            }
        }
        let Some(batch) = lifecycle.take_batch() else { continue };
        if !lifecycle.deliver(&batch, &stop).await {
            // Stopped while retrying: the batch goes first in the drain.
            let mut queue = lifecycle.queue.locked();
            queue.dropped += batch.dropped;
            for event in batch.events.into_iter().rev() {
                queue.events.push_front(event);
            }
            break;
        }
    }
}
