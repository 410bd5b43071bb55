//! The embedded map broker: every map channel's state and stream in process memory (one node).
//!
//! Channels are sharded by name hash; a shard is a [`crate::sync::Mutex`] held only for short,
//! non-async sections. A write is applied and handed to the event handler under its shard lock,
//! which keeps offsets and delivery order in step (see [`super`]). A sweeper task removes
//! expired keys every second (each removal delivered like any other), drops stream content
//! after `stream_ttl` without writes, and forgets channels unused for `meta_ttl`.

use crate::sync::Mutex;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::Instant;

use super::{
    MapBroker, MapChannelOptions, MapRemoval, MapUpdate, MapWrite, StatePage, StateRead, Suppressed,
};
use crate::common::unix_millis;
use crate::engine::memory::new_epoch;
use crate::engine::{BrokerEventHandler, EngineError, HistoryFilter, HistoryResult, StreamPosition};
use crate::proto::client::Publication;

use super::KeyMode;

const SHARDS: usize = 64;
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

fn shard_of(channel: &str) -> usize {
    let mut hasher = DefaultHasher::new();
    channel.hash(&mut hasher);
    (hasher.finish() as usize) % SHARDS
}

/// One key's current value.
#[derive(Debug)]
struct Entry {
    publication: Publication,
    version_epoch: String,
    expires_at: Option<Instant>,
}

#[derive(Debug)]
struct Channel {
    options: MapChannelOptions,
    epoch: String,
    top: u64,
    entries: BTreeMap<String, Entry>,
    /// (expiry, key) of every expiring key, soonest first.
    expiries: BTreeSet<(Instant, String)>,
    stream: VecDeque<Publication>,
    /// The stream's content is dropped at this instant (its last write + `stream_ttl`).
    stream_expires_at: Option<Instant>,
    /// The channel is forgotten at this instant (its last use + `meta_ttl`).
    forget_at: Option<Instant>,
    /// Idempotency key → (position, expiry).
    idempotent: HashMap<String, (StreamPosition, Instant)>,
}

impl Channel {
    fn new(options: MapChannelOptions, now: Instant) -> Self {
        Self {
            options,
            epoch: new_epoch(),
            top: 0,
            entries: BTreeMap::new(),
            expiries: BTreeSet::new(),
            stream: VecDeque::new(),
            stream_expires_at: None,
            forget_at: options.meta_ttl.map(|ttl| now + ttl),
            idempotent: HashMap::new(),
        }
    }

    fn position(&self) -> StreamPosition {
        StreamPosition { offset: self.top, epoch: self.epoch.clone() }
    }

    /// Extends the channel's life after a read or a write.
    fn touch(&mut self, options: &MapChannelOptions, now: Instant) {
        self.options = *options;
        self.forget_at = options.meta_ttl.map(|ttl| now + ttl);
    }

    fn set_expiry(&mut self, key: &str, now: Instant) {
        let expires_at = (!self.options.key_ttl.is_zero()).then(|| now + self.options.key_ttl);
        let Some(entry) = self.entries.get_mut(key) else { return };
        if let Some(old) = entry.expires_at.take() {
            self.expiries.remove(&(old, key.to_owned()));
        }
        entry.expires_at = expires_at;
        if let Some(at) = expires_at {
            self.expiries.insert((at, key.to_owned()));
        }
    }

    /// Appends a change to the stream (stream modes) and returns its offset (0 otherwise).
    fn append(&mut self, publication: &mut Publication, now: Instant) -> u64 {
        if !self.options.mode.has_stream() {
            return 0;
        }
        self.top += 1;
        publication.offset = self.top;
        self.stream.push_back(publication.clone());
        while self.stream.len() > self.options.stream_size {
            self.stream.pop_front();
        }
        self.stream_expires_at = Some(now + self.options.stream_ttl);
        self.top
    }

    fn remember(&mut self, idempotency_key: &Option<String>, ttl: Duration, now: Instant) {
        if let Some(key) = idempotency_key {
            let ttl = super::idempotent_ttl(ttl, super::DEFAULT_IDEMPOTENT_RESULT_TTL);
            let expires = now + ttl.max(Duration::from_secs(1));
            self.idempotent.insert(key.clone(), (self.position(), expires));
        }
    }

    fn remembered(&self, idempotency_key: &Option<String>, now: Instant) -> Option<StreamPosition> {
        let (position, expires) = self.idempotent.get(idempotency_key.as_ref()?)?;
        (*expires > now).then(|| position.clone())
    }
}

/// A write decided under the shard lock, delivered before the lock is released.
struct Applied {
    publication: Publication,
    base: Option<Bytes>,
    update: MapUpdate,
}

/// Memory map broker; share it as `Arc<MemoryMapBroker>`.
pub struct MemoryMapBroker {
    shards: Vec<Mutex<HashMap<String, Channel>>>,
    handler: OnceLock<Arc<dyn BrokerEventHandler>>,
}

impl std::fmt::Debug for MemoryMapBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryMapBroker").finish_non_exhaustive()
    }
}

fn suppressed(position: StreamPosition, why: Suppressed) -> MapUpdate {
    MapUpdate { position, suppressed: Some(why) }
}

impl MemoryMapBroker {
    /// Creates the broker and, inside a tokio runtime, its sweeper (which ends with the broker).
    pub fn new() -> Arc<Self> {
        let broker = Arc::new(Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            handler: OnceLock::new(),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(sweep_loop(Arc::downgrade(&broker)));
        }
        broker
    }

    fn deliver(&self, channel: &str, applied: Applied) -> MapUpdate {
        if let Some(handler) = self.handler.get() {
            handler.handle_publication(
                channel,
                applied.publication,
                applied.update.position.clone(),
                applied.base,
            );
        }
        applied.update
    }

    /// The channel, created (or re-created after it was forgotten) as needed.
    fn channel<'a>(
        channels: &'a mut HashMap<String, Channel>,
        name: &str,
        options: &MapChannelOptions,
        now: Instant,
    ) -> &'a mut Channel {
        let channel = channels.entry(name.to_owned()).or_insert_with(|| Channel::new(*options, now));
        if channel.forget_at.is_some_and(|at| at <= now) {
            *channel = Channel::new(*options, now);
        }
        channel.touch(options, now);
        channel
    }

    fn apply_publish(
        channel: &mut Channel,
        mut publication: Publication,
        write: &MapWrite,
        now: Instant,
    ) -> Result<Result<Applied, MapUpdate>, EngineError> {
        let key = publication.key.clone();
        if !channel.options.mode.has_stream() && write.version > 0 {
            return Err(EngineError::Internal("versions need a map mode with a stream".into()));
        }
        if let Some(position) = channel.remembered(&write.idempotency_key, now) {
            return Ok(Err(suppressed(position, Suppressed::Idempotency)));
        }
        let existing = channel.entries.get(&key);
        if write.version > 0
            && let Some(entry) = existing
            && (write.version_epoch.is_empty() || write.version_epoch == entry.version_epoch)
            && write.version <= entry.publication.version
        {
            return Ok(Err(suppressed(channel.position(), Suppressed::Version)));
        }
        let miss = match write.key_mode {
            KeyMode::IfNew if existing.is_some() => Some(Suppressed::KeyExists),
            KeyMode::IfExists if existing.is_none() => Some(Suppressed::KeyNotFound),
            _ => None,
        };
        if let Some(why) = miss {
            if write.refresh_ttl_on_suppress && existing.is_some() {
                channel.set_expiry(&key, now);
            }
            return Ok(Err(suppressed(channel.position(), why)));
        }
        let previous = channel.entries.get(&key);
        let base = previous.filter(|_| write.use_delta).map(|entry| entry.publication.data.clone());
        publication.version = if write.version > 0 {
            write.version
        } else {
            previous.map_or(0, |entry| entry.publication.version)
        };
        let version_epoch = if write.version > 0 {
            write.version_epoch.clone()
        } else {
            previous.map(|e| e.version_epoch.clone()).unwrap_or_default()
        };
        publication.time = unix_millis();
        channel.append(&mut publication, now);
        let entry = Entry { publication: publication.clone(), version_epoch, expires_at: None };
        channel.entries.insert(key.clone(), entry);
        channel.set_expiry(&key, now);
        channel.remember(&write.idempotency_key, write.idempotent_result_ttl, now);
        Ok(Ok(Applied {
            publication,
            base,
            update: MapUpdate { position: channel.position(), suppressed: None },
        }))
    }

    fn apply_remove(
        channel: &mut Channel,
        key: &str,
        removal: &MapRemoval,
        now: Instant,
    ) -> Result<Applied, MapUpdate> {
        if let Some(position) = channel.remembered(&removal.idempotency_key, now) {
            return Err(suppressed(position, Suppressed::Idempotency));
        }
        let Some(entry) = channel.entries.remove(key) else {
            return Err(suppressed(channel.position(), Suppressed::KeyNotFound));
        };
        if let Some(at) = entry.expires_at {
            channel.expiries.remove(&(at, key.to_owned()));
        }
        let tags = removal.tags.clone().unwrap_or(entry.publication.tags);
        let mut publication = removal_of(key, tags);
        channel.append(&mut publication, now);
        channel.remember(&removal.idempotency_key, removal.idempotent_result_ttl, now);
        Ok(Applied {
            publication,
            base: None,
            update: MapUpdate { position: channel.position(), suppressed: None },
        })
    }

    /// Removes keys whose TTL ran out, delivering their removals; drops stale stream content
    /// and forgotten channels. Bounded by the live state.
    fn sweep(&self) {
        let now = Instant::now();
        for shard in &self.shards {
            let mut channels = shard.locked();
            channels.retain(|_, channel| channel.forget_at.is_none_or(|at| at > now));
            let names: Vec<String> = channels.keys().cloned().collect();
            for name in names {
                let Some(channel) = channels.get_mut(&name) else { continue };
                channel.idempotent.retain(|_, (_, expires)| *expires > now);
                if channel.stream_expires_at.is_some_and(|at| at <= now) {
                    channel.stream.clear();
                    channel.stream_expires_at = None;
                }
                for applied in Self::expire_keys(channel, now) {
                    self.deliver(&name, applied);
                }
            }
        }
    }

    fn expire_keys(channel: &mut Channel, now: Instant) -> Vec<Applied> {
        let mut applied = Vec::new();
        while let Some((at, key)) = channel.expiries.first().cloned() {
            if at > now {
                break;
            }
            channel.expiries.pop_first();
            let Some(entry) = channel.entries.remove(&key) else { continue };
            let mut publication = removal_of(&key, entry.publication.tags);
            channel.append(&mut publication, now);
            let update = MapUpdate { position: channel.position(), suppressed: None };
            applied.push(Applied { publication, base: None, update });
        }
        applied
    }
}

/// The publication announcing that `key` is gone.
fn removal_of(key: &str, tags: BTreeMap<String, String>) -> Publication {
    Publication { key: key.to_owned(), removed: true, tags, time: unix_millis(), ..Default::default() }
}

async fn sweep_loop(broker: Weak<MemoryMapBroker>) {
    let mut interval = tokio::time::interval(SWEEP_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(broker) = broker.upgrade() else { return };
        broker.sweep();
    }
}

/// The state page after `read.cursor` (or the one key asked for).
fn page_of(channel: &Channel, read: &StateRead) -> StatePage {
    let position = channel.position();
    if let Some(key) = &read.key {
        let entries = channel.entries.get(key).map(|e| e.publication.clone()).into_iter().collect();
        return StatePage { entries, position, cursor: String::new() };
    }
    if read.limit == 0 {
        return StatePage { entries: Vec::new(), position, cursor: String::new() };
    }
    let limit = if read.limit < 0 { usize::MAX } else { read.limit as usize };
    let after = (std::ops::Bound::Excluded(read.cursor.clone()), std::ops::Bound::Unbounded);
    let mut rest = if read.cursor.is_empty() {
        channel.entries.range::<String, _>(..)
    } else {
        channel.entries.range(after)
    };
    // Sized up front: a page is up to a thousand large structs, and growing the vector by
    // doubling would copy them again and again.
    let mut entries = Vec::with_capacity(limit.min(channel.entries.len()));
    entries.extend(rest.by_ref().take(limit).map(|(_, e)| e.publication.clone()));
    let cursor = match (rest.next(), entries.last()) {
        (Some(_), Some(last)) => last.key.clone(),
        _ => String::new(),
    };
    StatePage { entries, position, cursor }
}

/// The stream after (or, reversed, before) `filter.since`, as a history read.
fn stream_of(channel: &Channel, filter: &HistoryFilter) -> HistoryResult {
    let position = channel.position();
    let limit = if filter.limit < 0 { usize::MAX } else { filter.limit as usize };
    let publications = match (&filter.since, filter.reverse) {
        (None, false) => channel.stream.iter().take(limit).cloned().collect(),
        (None, true) => channel.stream.iter().rev().take(limit).cloned().collect(),
        (Some(since), false) => {
            channel.stream.iter().filter(|p| p.offset > since.offset).take(limit).cloned().collect()
        }
        (Some(since), true) => {
            channel.stream.iter().rev().filter(|p| p.offset < since.offset).take(limit).cloned().collect()
        }
    };
    HistoryResult { publications, position }
}

fn check_epoch(channel: &Channel, wanted: Option<&StreamPosition>) -> Result<(), EngineError> {
    match wanted {
        Some(position) if !position.epoch.is_empty() && position.epoch != channel.epoch => {
            Err(EngineError::UnrecoverablePosition)
        }
        _ => Ok(()),
    }
}

#[async_trait]
impl MapBroker for MemoryMapBroker {
    fn set_event_handler(&self, handler: Arc<dyn BrokerEventHandler>) {
        let _ = self.handler.set(handler);
    }

    async fn subscribe(&self, _channel: &str) -> Result<(), EngineError> {
        // One process: every write already reaches this node's handler.
        Ok(())
    }

    async fn unsubscribe(&self, _channel: &str) -> Result<(), EngineError> {
        Ok(())
    }

    async fn publish(
        &self,
        channel: &str,
        options: &MapChannelOptions,
        publication: Publication,
        write: &MapWrite,
    ) -> Result<MapUpdate, EngineError> {
        let now = Instant::now();
        let mut channels = self.shards[shard_of(channel)].locked();
        let state = Self::channel(&mut channels, channel, options, now);
        match Self::apply_publish(state, publication, write, now)? {
            // Delivered under the shard lock so that offsets reach subscribers in order.
            Ok(applied) => Ok(self.deliver(channel, applied)),
            Err(update) => Ok(update),
        }
    }

    async fn remove(
        &self,
        channel: &str,
        options: &MapChannelOptions,
        key: &str,
        removal: &MapRemoval,
    ) -> Result<MapUpdate, EngineError> {
        let now = Instant::now();
        let mut channels = self.shards[shard_of(channel)].locked();
        let state = Self::channel(&mut channels, channel, options, now);
        match Self::apply_remove(state, key, removal, now) {
            Ok(applied) => Ok(self.deliver(channel, applied)),
            Err(update) => Ok(update),
        }
    }

    async fn read_state(
        &self,
        channel: &str,
        options: &MapChannelOptions,
        read: &StateRead,
    ) -> Result<StatePage, EngineError> {
        let now = Instant::now();
        let mut channels = self.shards[shard_of(channel)].locked();
        let state = Self::channel(&mut channels, channel, options, now);
        check_epoch(state, read.revision.as_ref())?;
        Ok(page_of(state, read))
    }

    async fn read_stream(
        &self,
        channel: &str,
        options: &MapChannelOptions,
        filter: &HistoryFilter,
    ) -> Result<HistoryResult, EngineError> {
        let now = Instant::now();
        let mut channels = self.shards[shard_of(channel)].locked();
        let state = Self::channel(&mut channels, channel, options, now);
        check_epoch(state, filter.since.as_ref())?;
        Ok(stream_of(state, filter))
    }

    async fn stats(&self, channel: &str) -> Result<u32, EngineError> {
        let channels = self.shards[shard_of(channel)].locked();
        Ok(channels.get(channel).map_or(0, |state| state.entries.len() as u32))
    }

    async fn clear(&self, channel: &str) -> Result<(), EngineError> {
        self.shards[shard_of(channel)].locked().remove(channel);
        Ok(())
    }
}
