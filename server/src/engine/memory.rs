//! The embedded single-node engine: broker, history streams and presence in process memory.
//!
//! State is sharded by channel hash; every shard is a [`crate::sync::Mutex`] held only for short,
//! non-async sections. A publication with history is appended and handed to the event handler
//! under its shard lock, which is what makes per-channel offsets and delivery order agree
//! (see the contracts in [`crate::engine`]). The handler therefore must not call back into the
//! broker. Expired streams, meta data, idempotency results and presence entries are dropped
//! lazily on access and by a sweeper task, so memory stays bounded by live data.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rand::Rng;
use tokio::time::Instant;

use super::{
    Broker, BrokerEventHandler, EngineError, HistoryFilter, HistoryResult, PresenceManager, PresenceStats,
    PublishOptions, PublishOutcome, StreamPosition,
};
use crate::proto::client::{ClientInfo, Publication};
use crate::sync::Mutex;

// Two under the model checker: every lock is one more object for it to track.
const SHARDS: usize = if cfg!(feature = "loom") { 2 } else { 64 };
/// Meta TTL used when the caller gives none.
const DEFAULT_META_TTL: Duration = Duration::from_secs(720 * 3600);
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

fn shard_of(channel: &str) -> usize {
    let mut hasher = DefaultHasher::new();
    channel.hash(&mut hasher);
    (hasher.finish() as usize) % SHARDS
}

/// A new random stream epoch (8 ASCII letters).
pub fn new_epoch() -> String {
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut rng = rand::rng();
    (0..8).map(|_| LETTERS[rng.random_range(0..LETTERS.len())] as char).collect()
}

#[derive(Debug)]
struct Stream {
    epoch: String,
    top: u64,
    items: VecDeque<Publication>,
    /// Publications are dropped after this instant (history TTL since the last publish).
    items_expire_at: Option<Instant>,
    /// Offset and epoch are forgotten after this instant.
    meta_expire_at: Instant,
    /// Latest version published with [`PublishOptions::version`], and its epoch.
    version: u64,
    version_epoch: String,
}

impl Stream {
    fn new(now: Instant, meta_ttl: Duration) -> Self {
        Self {
            epoch: new_epoch(),
            top: 0,
            items: VecDeque::new(),
            items_expire_at: None,
            meta_expire_at: now + meta_ttl,
            version: 0,
            version_epoch: String::new(),
        }
    }

    /// Whether a publication with this version is stale; records it when it is not.
    fn admit_version(&mut self, version: u64, epoch: &str) -> bool {
        if version == 0 {
            return true;
        }
        let same_epoch = epoch.is_empty() || epoch == self.version_epoch;
        if self.version > 0 && same_epoch && version <= self.version {
            return false;
        }
        self.version = version;
        self.version_epoch = epoch.to_owned();
        true
    }

    fn expire_items(&mut self, now: Instant) {
        if self.items_expire_at.is_some_and(|at| at <= now) {
            self.items.clear();
            self.items_expire_at = None;
        }
    }

    fn position(&self) -> StreamPosition {
        StreamPosition { offset: self.top, epoch: self.epoch.clone() }
    }
}

#[derive(Debug, Default)]
struct BrokerShard {
    streams: HashMap<String, Stream>,
    /// (channel, idempotency key) → result and its expiry.
    idempotent: HashMap<(String, String), (StreamPosition, Instant)>,
}

#[derive(Debug, Default)]
struct PresenceShard {
    /// channel → client id → (info, expires at)
    channels: HashMap<String, HashMap<String, (ClientInfo, Instant)>>,
}

/// Memory broker and presence manager in one value; share it as `Arc<MemoryEngine>`.
pub struct MemoryEngine {
    broker: Vec<Mutex<BrokerShard>>,
    presence: Vec<Mutex<PresenceShard>>,
    handler: OnceLock<Arc<dyn BrokerEventHandler>>,
}

impl std::fmt::Debug for MemoryEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryEngine").finish_non_exhaustive()
    }
}

impl MemoryEngine {
    /// Creates the engine and, when inside a tokio runtime, its sweeper task (which ends when
    /// the engine is dropped).
    pub fn new() -> Arc<Self> {
        let engine = Arc::new(Self {
            broker: (0..SHARDS).map(|_| Mutex::default()).collect(),
            presence: (0..SHARDS).map(|_| Mutex::default()).collect(),
            handler: OnceLock::new(),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            let weak = Arc::downgrade(&engine);
            tokio::spawn(sweep_loop(weak));
        }
        engine
    }

    fn deliver(
        &self,
        channel: &str,
        publication: Publication,
        position: StreamPosition,
        base: Option<Bytes>,
    ) {
        if let Some(handler) = self.handler.get() {
            handler.handle_publication(channel, publication, position, base);
        }
    }

    /// Drops everything that has expired. Bounded by the amount of live state.
    fn sweep(&self) {
        let now = Instant::now();
        for shard in &self.broker {
            let mut shard = shard.locked();
            shard.streams.retain(|_, stream| {
                stream.expire_items(now);
                stream.meta_expire_at > now
            });
            shard.idempotent.retain(|_, (_, expires)| *expires > now);
        }
        for shard in &self.presence {
            let mut shard = shard.locked();
            shard.channels.retain(|_, clients| {
                clients.retain(|_, (_, expires)| *expires > now);
                !clients.is_empty()
            });
        }
    }
}

async fn sweep_loop(engine: Weak<MemoryEngine>) {
    let mut interval = tokio::time::interval(SWEEP_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(engine) = engine.upgrade() else { return };
        engine.sweep();
    }
}

#[async_trait]
impl Broker for MemoryEngine {
    fn set_event_handler(&self, handler: Arc<dyn BrokerEventHandler>) {
        let _ = self.handler.set(handler);
    }

    async fn subscribe(&self, _channel: &str) -> Result<(), EngineError> {
        // One process: every publication already reaches this node's handler.
        Ok(())
    }

    async fn unsubscribe(&self, _channel: &str) -> Result<(), EngineError> {
        Ok(())
    }

    async fn publish(
        &self,
        channel: &str,
        mut publication: Publication,
        options: &PublishOptions,
    ) -> Result<PublishOutcome, EngineError> {
        let now = Instant::now();
        if !options.has_history() && options.idempotency_key.is_none() {
            self.deliver(channel, publication, StreamPosition::default(), None);
            return Ok(PublishOutcome::default());
        }
        let mut shard = self.broker[shard_of(channel)].locked();
        if let Some(key) = &options.idempotency_key {
            let cache_key = (channel.to_owned(), key.clone());
            if let Some((position, expires)) = shard.idempotent.get(&cache_key)
                && *expires > now
            {
                return Ok(PublishOutcome {
                    position: position.clone(),
                    deduplicated: true,
                    suppressed: false,
                });
            }
        }
        let (position, base) = if options.has_history() {
            let meta_ttl =
                if options.history_meta_ttl.is_zero() { DEFAULT_META_TTL } else { options.history_meta_ttl };
            let stream =
                shard.streams.entry(channel.to_owned()).or_insert_with(|| Stream::new(now, meta_ttl));
            if stream.meta_expire_at <= now {
                *stream = Stream::new(now, meta_ttl);
            }
            stream.expire_items(now);
            if !stream.admit_version(options.version, &options.version_epoch) {
                return Ok(PublishOutcome {
                    position: stream.position(),
                    deduplicated: false,
                    suppressed: true,
                });
            }
            let base = if options.use_delta { stream.items.back().map(|p| p.data.clone()) } else { None };
            stream.top += 1;
            publication.offset = stream.top;
            stream.items.push_back(publication.clone());
            while stream.items.len() > options.history_size {
                stream.items.pop_front();
            }
            stream.items_expire_at = Some(now + options.history_ttl);
            stream.meta_expire_at = now + meta_ttl;
            (stream.position(), base)
        } else {
            (StreamPosition::default(), None)
        };
        if let Some(key) = &options.idempotency_key {
            let ttl = options.idempotent_result_ttl.max(Duration::from_secs(1));
            shard.idempotent.insert((channel.to_owned(), key.clone()), (position.clone(), now + ttl));
        }
        // Delivered under the shard lock so that offsets reach subscribers in order.
        self.deliver(channel, publication, position.clone(), base);
        Ok(PublishOutcome { position, ..Default::default() })
    }

    async fn publish_join(&self, channel: &str, info: ClientInfo) -> Result<(), EngineError> {
        if let Some(handler) = self.handler.get() {
            handler.handle_join(channel, info);
        }
        Ok(())
    }

    async fn publish_leave(&self, channel: &str, info: ClientInfo) -> Result<(), EngineError> {
        if let Some(handler) = self.handler.get() {
            handler.handle_leave(channel, info);
        }
        Ok(())
    }

    async fn history(&self, channel: &str, filter: &HistoryFilter) -> Result<HistoryResult, EngineError> {
        let now = Instant::now();
        let meta_ttl = if filter.meta_ttl.is_zero() { DEFAULT_META_TTL } else { filter.meta_ttl };
        let mut shard = self.broker[shard_of(channel)].locked();
        // Reading creates nothing (see the Redis history script): an unknown or forgotten
        // stream is offset 0 in no epoch yet.
        let stream = match shard.streams.get_mut(channel) {
            Some(stream) if stream.meta_expire_at > now => stream,
            _ => return unknown_stream(filter),
        };
        stream.expire_items(now);
        stream.meta_expire_at = stream.meta_expire_at.max(now + meta_ttl);
        let position = stream.position();
        if let Some(since) = &filter.since
            && !since.epoch.is_empty()
            && since.epoch != stream.epoch
        {
            return Err(EngineError::UnrecoverablePosition);
        }
        let limit = if filter.limit < 0 { usize::MAX } else { filter.limit as usize };
        if limit == 0 {
            return Ok(HistoryResult { publications: Vec::new(), position });
        }
        let publications: Vec<Publication> = match (&filter.since, filter.reverse) {
            (None, false) => stream.items.iter().take(limit).cloned().collect(),
            (None, true) => stream.items.iter().rev().take(limit).cloned().collect(),
            (Some(since), false) => {
                stream.items.iter().filter(|p| p.offset > since.offset).take(limit).cloned().collect()
            }
            (Some(since), true) => {
                stream.items.iter().rev().filter(|p| p.offset < since.offset).take(limit).cloned().collect()
            }
        };
        Ok(HistoryResult { publications, position })
    }

    async fn remove_history(&self, channel: &str) -> Result<(), EngineError> {
        let mut shard = self.broker[shard_of(channel)].locked();
        if let Some(stream) = shard.streams.get_mut(channel) {
            stream.items.clear();
            stream.items_expire_at = None;
        }
        Ok(())
    }

    async fn publish_control(&self, _payload: bytes::Bytes, _node: Option<&str>) -> Result<(), EngineError> {
        Ok(())
    }
}

#[async_trait]
impl PresenceManager for MemoryEngine {
    async fn add_presence(
        &self,
        channel: &str,
        client_id: &str,
        info: ClientInfo,
        ttl: Duration,
    ) -> Result<(), EngineError> {
        let expires = Instant::now() + ttl;
        let mut shard = self.presence[shard_of(channel)].locked();
        shard.channels.entry(channel.to_owned()).or_default().insert(client_id.to_owned(), (info, expires));
        Ok(())
    }

    async fn remove_presence(&self, channel: &str, client_id: &str, _user: &str) -> Result<(), EngineError> {
        let mut shard = self.presence[shard_of(channel)].locked();
        if let Some(clients) = shard.channels.get_mut(channel) {
            clients.remove(client_id);
            if clients.is_empty() {
                shard.channels.remove(channel);
            }
        }
        Ok(())
    }

    async fn presence(&self, channel: &str) -> Result<BTreeMap<String, ClientInfo>, EngineError> {
        let now = Instant::now();
        let shard = self.presence[shard_of(channel)].locked();
        Ok(shard
            .channels
            .get(channel)
            .map(|clients| {
                clients
                    .iter()
                    .filter(|(_, (_, expires))| *expires > now)
                    .map(|(id, (info, _))| (id.clone(), info.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, EngineError> {
        let now = Instant::now();
        let shard = self.presence[shard_of(channel)].locked();
        let Some(clients) = shard.channels.get(channel) else {
            return Ok(PresenceStats::default());
        };
        let live: Vec<&ClientInfo> =
            clients.values().filter(|(_, expires)| *expires > now).map(|(info, _)| info).collect();
        let users: HashSet<&str> = live.iter().map(|info| info.user.as_str()).collect();
        Ok(PresenceStats { num_clients: live.len() as u32, num_users: users.len() as u32 })
    }
}

/// The answer for a stream that does not exist: nothing in no epoch, or 112 for a reader who
/// knew an epoch (it is gone).
fn unknown_stream(filter: &HistoryFilter) -> Result<HistoryResult, EngineError> {
    match &filter.since {
        Some(since) if !since.epoch.is_empty() => Err(EngineError::UnrecoverablePosition),
        _ => Ok(HistoryResult::default()),
    }
}
