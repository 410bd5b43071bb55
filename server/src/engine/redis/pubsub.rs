//! One shard's PUB/SUB connection: which channels it should carry, and the task that keeps it
//! carrying them.
//!
//! Callers change only the wanted set (a reference count per PUB/SUB channel, plus the set of
//! names that changed); the task reconciles the connection with it, so concurrent subscribe and
//! unsubscribe calls can never leave Redis in the wrong state, whatever order their commands
//! would have reached it in. A caller that needs a channel waits until Redis has confirmed the
//! SUBSCRIBE: only then may the node read the stream position, or a publication could fall
//! between the read and the subscription.
//!
//! The task reconnects by itself (backoff 50 ms doubling to 1 s), resubscribes everything, and
//! probes the connection with PING every few seconds: a connection that stays open but stops
//! delivering (a stuck proxy, a half-dead peer) is torn down and rebuilt instead of silently
//! dropping publications. Whatever was published while it was down is a gap that subscribers
//! detect by offsets or by the node's position check.

use crate::sync::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::PubSubSink;
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind};
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use super::connection::Shard;
use crate::engine::EngineError;

/// Channels per SUBSCRIBE/UNSUBSCRIBE command when many change at once.
const BATCH: usize = 512;
const RECONNECT_MIN: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(1);
/// Cluster (un)subscribes in flight at once.
const CLUSTER_CONCURRENCY: usize = 64;
/// Pending "subscription may be lost" notices from the cluster connection.
const LOST_QUEUE: usize = 1024;

/// Receives every message of the connection, in order, on the task.
pub type Dispatch = Arc<dyn Fn(&str, &[u8]) + Send + Sync>;

#[derive(Default)]
struct Entry {
    refs: usize,
    /// Redis has confirmed the subscription on the current connection.
    ready: bool,
    waiters: Vec<oneshot::Sender<()>>,
}

#[derive(Default)]
struct Wanted {
    channels: HashMap<String, Entry>,
    /// Names whose wanted state changed since the task last looked (bounded by the number of
    /// distinct channels).
    dirty: HashSet<String>,
}

/// The wanted set and health of one shard's PUB/SUB connection.
pub struct PubSub {
    wanted: Mutex<Wanted>,
    changed: Notify,
    connected: AtomicBool,
    /// Always subscribed (node control channels), never counted.
    permanent: Vec<String>,
    pub probe_interval: Duration,
}

impl PubSub {
    pub fn new(permanent: Vec<String>, probe_interval: Duration) -> Arc<Self> {
        Arc::new(Self {
            wanted: Mutex::default(),
            changed: Notify::new(),
            connected: AtomicBool::new(false),
            permanent,
            probe_interval,
        })
    }

    /// True while the connection is up and answered its last probe.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Adds one reference to `name` and waits (at most `timeout`) until Redis delivers it.
    pub async fn subscribe(&self, name: &str, timeout: Duration) -> Result<(), EngineError> {
        let ready = {
            let mut wanted = self.wanted.locked();
            let entry = wanted.channels.entry(name.to_owned()).or_default();
            entry.refs += 1;
            if entry.ready {
                return Ok(());
            }
            let (sender, receiver) = oneshot::channel();
            entry.waiters.push(sender);
            if entry.refs == 1 {
                wanted.dirty.insert(name.to_owned());
            }
            receiver
        };
        self.changed.notify_one();
        match tokio::time::timeout(timeout, ready).await {
            Ok(Ok(())) => Ok(()),
            _ => {
                self.unsubscribe(name);
                Err(EngineError::Internal(format!("redis: subscribing to {name} timed out")))
            }
        }
    }

    /// Drops one reference to `name`; the last one unsubscribes.
    pub fn unsubscribe(&self, name: &str) {
        let mut wanted = self.wanted.locked();
        let Some(entry) = wanted.channels.get_mut(name) else { return };
        entry.refs = entry.refs.saturating_sub(1);
        if entry.refs == 0 {
            wanted.channels.remove(name);
            wanted.dirty.insert(name.to_owned());
            drop(wanted);
            self.changed.notify_one();
        }
    }

    /// Takes the changed names, split into (to subscribe, to unsubscribe) against what the
    /// connection carries now. A name that went away and came back before the task looked is
    /// still subscribed: its new waiters are woken here.
    fn take_changes(&self, subscribed: &HashSet<String>) -> (Vec<String>, Vec<String>) {
        let mut wanted = self.wanted.locked();
        let dirty = std::mem::take(&mut wanted.dirty);
        let mut add = Vec::new();
        let mut remove = Vec::new();
        for name in dirty {
            match (wanted.channels.get_mut(&name), subscribed.contains(&name)) {
                (Some(_), false) => add.push(name),
                (None, true) => remove.push(name),
                (Some(entry), true) => {
                    entry.ready = true;
                    for waiter in entry.waiters.drain(..) {
                        let _ = waiter.send(());
                    }
                }
                (None, false) => {}
            }
        }
        (add, remove)
    }

    /// Marks `names` confirmed and wakes their waiters (names no longer wanted are skipped).
    fn confirm(&self, names: &[String]) {
        let mut wanted = self.wanted.locked();
        for name in names {
            if let Some(entry) = wanted.channels.get_mut(name) {
                entry.ready = true;
                for waiter in entry.waiters.drain(..) {
                    let _ = waiter.send(());
                }
            }
        }
    }

    /// The connection is gone: nothing is confirmed any more.
    fn reset(&self) {
        self.connected.store(false, Ordering::Relaxed);
        let mut wanted = self.wanted.locked();
        for entry in wanted.channels.values_mut() {
            entry.ready = false;
        }
        wanted.dirty.clear();
    }

    /// Everything wanted is subscribed on a new connection: wake the waiters, report healthy,
    /// and start the probe clock.
    fn in_service(
        &self,
        shard: &str,
        everything: &[String],
        ever_connected: &mut bool,
    ) -> tokio::time::Interval {
        self.confirm(everything);
        self.connected.store(true, Ordering::Relaxed);
        if *ever_connected {
            tracing::info!(%shard, channels = everything.len(), "redis PUB/SUB reconnected");
        }
        *ever_connected = true;
        let first = tokio::time::Instant::now() + self.probe_interval;
        let mut probe = tokio::time::interval_at(first, self.probe_interval);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        probe
    }

    fn all_wanted(&self) -> Vec<String> {
        let mut wanted = self.wanted.locked();
        wanted.dirty.clear();
        wanted.channels.keys().cloned().collect()
    }
}

async fn send_batches(
    sink: &mut PubSubSink,
    names: &[String],
    subscribe: bool,
    timeout: Duration,
) -> Result<(), String> {
    for batch in names.chunks(BATCH) {
        let call =
            async { if subscribe { sink.subscribe(batch).await } else { sink.unsubscribe(batch).await } };
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(error.to_string()),
            Err(_) => return Err("timed out".into()),
        }
    }
    Ok(())
}

/// Keeps `pubsub`'s connection to `shard` alive and in line with the wanted set until
/// `stop` is cancelled.
pub async fn run(shard: Arc<Shard>, pubsub: Arc<PubSub>, dispatch: Dispatch, stop: CancellationToken) {
    let mut backoff = RECONNECT_MIN;
    let mut ever_connected = false;
    while !stop.is_cancelled() {
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            outcome = async {
                if shard.is_cluster() {
                    serve_cluster_connection(&shard, &pubsub, &dispatch, &stop, &mut ever_connected).await
                } else {
                    serve_connection(&shard, &pubsub, &dispatch, &stop, &mut ever_connected).await
                }
            } => outcome,
        };
        // A connection that got as far as being in service starts the next one quickly; only
        // failures to get there back off.
        let was_serving = pubsub.is_connected();
        pubsub.reset();
        if was_serving {
            backoff = RECONNECT_MIN;
        }
        if let Err(error) = outcome {
            tracing::warn!(shard = %shard.name, %error, "redis PUB/SUB connection lost; reconnecting");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
}

/// One connection's life: connect, subscribe everything, then relay messages, apply changes
/// and probe until something fails (`Err`) or the engine stops (`Ok`).
async fn serve_connection(
    shard: &Shard,
    pubsub: &PubSub,
    dispatch: &Dispatch,
    stop: &CancellationToken,
    ever_connected: &mut bool,
) -> Result<(), String> {
    let timeout = shard.io_timeout;
    let connection = shard.pubsub().await.map_err(|e| e.to_string())?;
    let (mut sink, mut messages) = connection.split();
    send_batches(&mut sink, &pubsub.permanent, true, timeout).await?;
    let mut subscribed: HashSet<String> = HashSet::new();
    let everything = pubsub.all_wanted();
    send_batches(&mut sink, &everything, true, timeout).await?;
    subscribed.extend(everything.iter().cloned());
    let mut probe = pubsub.in_service(&shard.name, &everything, ever_connected);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            message = messages.next() => {
                let Some(message) = message else { return Err("connection closed".into()) };
                dispatch(message.get_channel_name(), message.get_payload_bytes());
            }
            _ = pubsub.changed.notified() => {
                let (add, remove) = pubsub.take_changes(&subscribed);
                if !remove.is_empty() {
                    send_batches(&mut sink, &remove, false, timeout).await?;
                    for name in &remove {
                        subscribed.remove(name);
                    }
                }
                if !add.is_empty() {
                    send_batches(&mut sink, &add, true, timeout).await?;
                    subscribed.extend(add.iter().cloned());
                    pubsub.confirm(&add);
                }
            }
            _ = probe.tick() => {
                let limit = timeout.min(pubsub.probe_interval);
                match tokio::time::timeout(limit, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => pubsub.connected.store(true, Ordering::Relaxed),
                    Ok(Err(error)) => return Err(format!("probe failed: {error}")),
                    Err(_) => return Err("probe timed out: the connection went silent".into()),
                }
            }
        }
    }
}

/// Runs one (un)subscribe-like call per channel on a cluster connection, a bounded number at
/// a time (each is routed to the channel's slot owner).
async fn cluster_batch(
    connection: &ClusterConnection,
    names: &[String],
    subscribe: bool,
    timeout: Duration,
) -> Result<(), String> {
    let calls = futures_util::stream::iter(names.iter().cloned())
        .map(|name| {
            let mut connection = connection.clone();
            async move {
                let call = async {
                    if subscribe {
                        connection.ssubscribe(&name).await
                    } else {
                        connection.sunsubscribe(&name).await
                    }
                };
                match tokio::time::timeout(timeout, call).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(error)) => Err(format!("{name}: {error}")),
                    Err(_) => Err(format!("{name}: timed out")),
                }
            }
        })
        .buffer_unordered(CLUSTER_CONCURRENCY);
    futures_util::pin_mut!(calls);
    while let Some(result) = calls.next().await {
        result?;
    }
    Ok(())
}

/// Notices from a cluster connection that a subscription may be gone: a node connection
/// dropped (`""`), or Redis moved a shard channel away (failover, resharding) and unsubscribed
/// us (its name). The task rebuilds the connection, or resubscribes the channel, for those.
struct LostNotices {
    notices: tokio::sync::mpsc::Receiver<String>,
    /// Our own SUNSUBSCRIBE confirmations come through here too; when they fill the queue, a
    /// real notice could be dropped, so an overflow forces a rebuild.
    overflow: Arc<AtomicBool>,
}

/// The push callback of a cluster connection: messages go to `dispatch`, subscription notices
/// to the returned [`LostNotices`].
fn cluster_push_handler(
    dispatch: &Dispatch,
) -> (impl Fn(PushInfo) -> Result<(), std::convert::Infallible> + Send + Sync + 'static, LostNotices) {
    let on_push = dispatch.clone();
    let (lost_sender, notices) = tokio::sync::mpsc::channel::<String>(LOST_QUEUE);
    let overflow = Arc::new(AtomicBool::new(false));
    let overflowed = overflow.clone();
    let push = move |info: PushInfo| -> Result<(), std::convert::Infallible> {
        let notice = match info.kind {
            PushKind::Message | PushKind::SMessage => {
                if let Some(message) = redis::Msg::from_push_info(info) {
                    on_push(message.get_channel_name(), message.get_payload_bytes());
                }
                None
            }
            PushKind::SUnsubscribe => match info.data.first() {
                Some(redis::Value::BulkString(name)) => Some(String::from_utf8_lossy(name).into_owned()),
                _ => None,
            },
            PushKind::Disconnection => Some(String::new()),
            _ => None,
        };
        if let Some(notice) = notice
            && lost_sender.try_send(notice).is_err()
        {
            overflowed.store(true, Ordering::Relaxed);
        }
        Ok(())
    };
    (push, LostNotices { notices, overflow })
}

/// The Cluster flavour of [`serve_connection`]: sharded SSUBSCRIBE per channel on a RESP3
/// cluster connection whose pushes reach the dispatcher through redis-rs's push callback.
/// redis-rs moves subscriptions after slot changes and node reconnects; what is published
/// meanwhile is a gap the offsets and the position check catch.
async fn serve_cluster_connection(
    shard: &Shard,
    pubsub: &PubSub,
    dispatch: &Dispatch,
    stop: &CancellationToken,
    ever_connected: &mut bool,
) -> Result<(), String> {
    let timeout = shard.io_timeout;
    let (push, mut lost) = cluster_push_handler(dispatch);
    let connection = shard.cluster_pubsub(push).await.map_err(|e| e.to_string())?;
    for name in &pubsub.permanent {
        let mut control = connection.clone();
        match tokio::time::timeout(timeout, control.subscribe(name)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(error.to_string()),
            Err(_) => return Err("subscribe timed out".into()),
        }
    }
    let mut subscribed: HashSet<String> = HashSet::new();
    let everything = pubsub.all_wanted();
    cluster_batch(&connection, &everything, true, timeout).await?;
    subscribed.extend(everything.iter().cloned());
    let mut probe = pubsub.in_service(&shard.name, &everything, ever_connected);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            notice = lost.notices.recv() => {
                on_lost_notice(&connection, &lost, notice, &subscribed, timeout).await?;
            }
            _ = pubsub.changed.notified() => {
                apply_cluster_changes(&connection, pubsub, &mut subscribed, timeout).await?;
            }
            _ = probe.tick() => probe_cluster(&connection, pubsub, timeout).await?,
        }
    }
}

/// A subscription may be gone: rebuild the connection, or resubscribe the one channel.
async fn on_lost_notice(
    connection: &ClusterConnection,
    lost: &LostNotices,
    notice: Option<String>,
    subscribed: &HashSet<String>,
    timeout: Duration,
) -> Result<(), String> {
    if lost.overflow.load(Ordering::Relaxed) {
        return Err("too many subscription notices; rebuilding".into());
    }
    match notice {
        None => Err("push channel closed".into()),
        Some(name) if name.is_empty() => Err("a cluster node connection dropped".into()),
        Some(name) if subscribed.contains(&name) => {
            // Either Redis moved the channel (failover, resharding) or this is the late
            // confirmation of our own unsubscribe of a channel wanted again. SSUBSCRIBE is
            // idempotent: subscribe again, and rebuild only if the slot's owner cannot be
            // reached.
            cluster_batch(connection, std::slice::from_ref(&name), true, timeout).await
        }
        Some(_) => Ok(()),
    }
}

/// Brings the connection's subscriptions in line with the wanted set.
async fn apply_cluster_changes(
    connection: &ClusterConnection,
    pubsub: &PubSub,
    subscribed: &mut HashSet<String>,
    timeout: Duration,
) -> Result<(), String> {
    let (add, remove) = pubsub.take_changes(subscribed);
    if !remove.is_empty() {
        // Forget them first, so the confirmations are not taken for Redis dropping
        // subscriptions we still want.
        for name in &remove {
            subscribed.remove(name);
        }
        cluster_batch(connection, &remove, false, timeout).await?;
    }
    if !add.is_empty() {
        cluster_batch(connection, &add, true, timeout).await?;
        subscribed.extend(add.iter().cloned());
        pubsub.confirm(&add);
    }
    Ok(())
}

/// PING through the cluster connection: a silent one is rebuilt.
async fn probe_cluster(
    connection: &ClusterConnection,
    pubsub: &PubSub,
    timeout: Duration,
) -> Result<(), String> {
    let limit = timeout.min(pubsub.probe_interval);
    let mut probing = connection.clone();
    let ping = async { redis::cmd("PING").query_async::<redis::Value>(&mut probing).await };
    match tokio::time::timeout(limit, ping).await {
        Ok(Ok(_)) => {
            pubsub.connected.store(true, Ordering::Relaxed);
            Ok(())
        }
        Ok(Err(error)) => Err(format!("probe failed: {error}")),
        Err(_) => Err("probe timed out".into()),
    }
}
