//! The Redis map broker: map channels' state and streams in Redis, shared by every node, with
//! changes delivered over the same PUB/SUB machinery (and payload format) as stream channels.
//!
//! It runs on a [`RedisEngine`] of its own (`map_broker.redis`: its own connections, prefix and
//! shards), whose event handler receives the changes. Expired keys are removed by a cleanup
//! task on every node (`cleanup_interval`, `cleanup_batch_size` keys per channel per round): a
//! per-shard zset of channels by their next expiry says which channels to look at, and the
//! expiry script re-checks each key, so several nodes cleaning at once remove a key once.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use prost::Message;
use redis::Value;
use tokio_util::sync::CancellationToken;

use super::map_scripts::{MAP_EXPIRE, MAP_PUBLISH, MAP_READ_STATE, MAP_READ_STREAM, MAP_REMOVE};
use super::wire::{self, Keys};
use super::{RedisEngine, ShardState, as_string, as_u64, protocol_error, stream_entry};
use crate::common::unix_millis;
use crate::config::RedisMapBroker as RedisMapSection;
use crate::engine::map::{
    DEFAULT_IDEMPOTENT_RESULT_TTL, MapBroker, MapChannelOptions, MapMode, MapRemoval, MapUpdate, MapWrite,
    StatePage, StateRead, Suppressed, idempotent_ttl,
};
use crate::engine::memory::new_epoch;
use crate::engine::{Broker, BrokerEventHandler, EngineError, HistoryFilter, HistoryResult, StreamPosition};
use crate::proto::client::Publication;

/// Channels examined per shard per cleanup round.
const CLEANUP_CHANNELS: isize = 100;

/// Map broker on Redis; share it as `Arc<RedisMapBroker>`.
pub struct RedisMapBroker {
    engine: Arc<RedisEngine>,
    skip_pub_sub: bool,
    /// `idempotent_result_ttl`: how long idempotent results are remembered.
    idempotent_result_ttl: Duration,
    stop: CancellationToken,
}

impl std::fmt::Debug for RedisMapBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisMapBroker").finish_non_exhaustive()
    }
}

impl Drop for RedisMapBroker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn mode_code(mode: MapMode) -> &'static str {
    match mode {
        MapMode::Ephemeral => "e",
        MapMode::Recoverable => "r",
        MapMode::Persistent => "p",
    }
}

fn millis(duration: Duration) -> u64 {
    if duration.is_zero() { 0 } else { (duration.as_millis() as u64).max(1) }
}

fn suppression(reason: &str) -> Option<Suppressed> {
    match reason {
        "idempotency" => Some(Suppressed::Idempotency),
        "version" => Some(Suppressed::Version),
        "key_exists" => Some(Suppressed::KeyExists),
        "key_not_found" => Some(Suppressed::KeyNotFound),
        _ => None,
    }
}

/// A stored state value, `<offset>:<Publication>`.
fn stored_entry(value: &[u8]) -> Option<Publication> {
    let colon = value.iter().position(|&b| b == b':')?;
    let offset = std::str::from_utf8(&value[..colon]).ok()?.parse().ok()?;
    wire::decode_stored(offset, &value[colon + 1..])
}

impl RedisMapBroker {
    /// Connects lazily (see [`RedisEngine::new`]) and starts the cleanup task unless
    /// `cleanup_interval` is negative.
    pub fn new(section: &RedisMapSection) -> Result<Arc<Self>, String> {
        let engine = RedisEngine::new(&section.redis, "map_broker.redis", None)?;
        let stop = CancellationToken::new();
        let broker = Arc::new(Self {
            engine,
            skip_pub_sub: section.skip_pub_sub,
            idempotent_result_ttl: idempotent_ttl(
                section.idempotent_result_ttl.0,
                DEFAULT_IDEMPOTENT_RESULT_TTL,
            ),
            stop: stop.clone(),
        });
        if !section.cleanup_interval.is_negative() {
            let interval = section.cleanup_interval.positive().unwrap_or(Duration::from_secs(1));
            let batch = section.cleanup_batch_size.max(1);
            tokio::spawn(cleanup_loop(Arc::downgrade(&broker), interval, batch, stop));
        }
        Ok(broker)
    }

    fn keys(&self) -> &Keys {
        &self.engine.keys
    }

    /// A script invocation with the six channel keys.
    fn invocation(&self, script: &'static redis::Script, channel: &str) -> redis::ScriptInvocation<'static> {
        let keys = self.keys();
        let mut invocation = script.prepare_invoke();
        for kind in ["state", "keys", "expire", "version", "stream", "meta"] {
            invocation.key(keys.map(kind, channel));
        }
        invocation
    }

    fn pubsub_channel(&self, channel: &str) -> String {
        if self.skip_pub_sub { String::new() } else { self.keys().pubsub(channel) }
    }

    fn update_of(reply: &[Value]) -> Result<MapUpdate, EngineError> {
        let [offset, epoch, reason] = reply else { return Err(protocol_error("map write")) };
        let offset = as_u64(offset).ok_or_else(|| protocol_error("map write"))?;
        let epoch = as_string(epoch).unwrap_or_default();
        let suppressed = suppression(&as_string(reason).unwrap_or_default());
        Ok(MapUpdate { position: StreamPosition { offset, epoch }, suppressed })
    }

    /// Tells the shard's cleanup zset when `channel` next has a key to expire.
    async fn schedule_cleanup(&self, channel: &str, at_ms: u64) -> Result<(), EngineError> {
        let (zset, member) = (self.keys().map_cleanup(), channel.to_owned());
        self.engine
            .shard_for(channel)
            .shard
            .run(|mut connection| async move {
                redis::cmd("ZADD")
                    .arg(zset)
                    .arg("LT")
                    .arg(at_ms)
                    .arg(member)
                    .query_async::<i64>(&mut connection)
                    .await
            })
            .await
            .map(drop)
    }

    /// One cleanup round on one shard: expire what is due on the channels whose time came.
    async fn clean_shard(&self, shard: &ShardState, batch: i64) -> Result<(), EngineError> {
        let zset = self.keys().map_cleanup();
        let now = unix_millis();
        let due: Vec<String> = {
            let zset = zset.clone();
            shard
                .shard
                .run(|mut connection| async move {
                    redis::cmd("ZRANGEBYSCORE")
                        .arg(zset)
                        .arg("-inf")
                        .arg(now)
                        .arg("LIMIT")
                        .arg(0)
                        .arg(CLEANUP_CHANNELS)
                        .query_async(&mut connection)
                        .await
                })
                .await?
        };
        for channel in due {
            let next: i64 = self.expire_channel(&channel, now, batch).await?;
            let (zset, member) = (zset.clone(), channel.clone());
            shard
                .shard
                .run(|mut connection| async move {
                    let mut command = if next == 0 { redis::cmd("ZREM") } else { redis::cmd("ZADD") };
                    if next != 0 {
                        command.arg(&zset).arg(next).arg(&member);
                    } else {
                        command.arg(&zset).arg(&member);
                    }
                    command.query_async::<i64>(&mut connection).await
                })
                .await?;
        }
        Ok(())
    }

    async fn expire_channel(&self, channel: &str, now: i64, batch: i64) -> Result<i64, EngineError> {
        let mut invocation = self.invocation(&MAP_EXPIRE, channel);
        invocation.arg(now).arg(batch).arg(self.pubsub_channel(channel)).arg(self.engine.publish_command);
        self.engine.invoke(channel, invocation).await
    }
}

async fn cleanup_loop(
    broker: std::sync::Weak<RedisMapBroker>,
    interval: Duration,
    batch: i64,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let Some(broker) = broker.upgrade() else { return };
        for shard in &broker.engine.shards {
            if let Err(error) = broker.clean_shard(shard, batch).await {
                tracing::debug!(%error, "map cleanup round failed; retried next round");
            }
        }
    }
}

/// The entries of a `MAP_READ_STATE` reply (`key, stored, …`).
fn state_entries(flat: &Value) -> Vec<Publication> {
    let Value::Array(items) = flat else { return Vec::new() };
    items
        .chunks(2)
        .filter_map(|pair| match pair {
            [_, Value::BulkString(stored)] => stored_entry(stored),
            _ => None,
        })
        .collect()
}

/// A `MAP_READ_*` reply that starts with `"unrecoverable"`.
fn unrecoverable(reply: &[Value]) -> bool {
    matches!(reply.first(), Some(first) if as_string(first).as_deref() == Some("unrecoverable"))
}

#[async_trait]
impl MapBroker for RedisMapBroker {
    fn set_event_handler(&self, handler: Arc<dyn BrokerEventHandler>) {
        self.engine.set_event_handler(handler);
    }

    async fn subscribe(&self, channel: &str) -> Result<(), EngineError> {
        Broker::subscribe(self.engine.as_ref(), channel).await
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), EngineError> {
        Broker::unsubscribe(self.engine.as_ref(), channel).await
    }

    async fn publish(
        &self,
        channel: &str,
        options: &MapChannelOptions,
        mut publication: Publication,
        write: &MapWrite,
    ) -> Result<MapUpdate, EngineError> {
        self.engine.check_channel(channel)?;
        if !options.mode.has_stream() && write.version > 0 {
            return Err(EngineError::Internal("versions need a map mode with a stream".into()));
        }
        let now = unix_millis();
        publication.time = now;
        publication.version = write.version;
        let mut invocation = self.invocation(&MAP_PUBLISH, channel);
        if let Some(key) = &write.idempotency_key {
            invocation.key(self.keys().map_result(channel, key));
        }
        invocation
            .arg(&publication.key)
            .arg(publication.encode_to_vec())
            .arg(mode_code(options.mode))
            .arg(millis(options.key_ttl))
            .arg(options.stream_size)
            .arg(millis(options.stream_ttl))
            .arg(options.meta_ttl.map_or(0, millis))
            .arg(new_epoch())
            .arg(self.pubsub_channel(channel))
            .arg(self.engine.publish_command)
            .arg(match write.key_mode {
                crate::engine::map::KeyMode::Replace => "",
                crate::engine::map::KeyMode::IfNew => "if_new",
                crate::engine::map::KeyMode::IfExists => "if_exists",
            })
            .arg(if write.refresh_ttl_on_suppress { "1" } else { "0" })
            .arg(write.version)
            .arg(&write.version_epoch)
            .arg(if write.use_delta { "1" } else { "0" })
            .arg(now)
            .arg(idempotent_ttl(write.idempotent_result_ttl, self.idempotent_result_ttl).as_secs().max(1));
        let reply: Vec<Value> = self.engine.invoke(channel, invocation).await?;
        let update = Self::update_of(&reply)?;
        if update.suppressed.is_none() && !options.key_ttl.is_zero() {
            self.schedule_cleanup(channel, now as u64 + millis(options.key_ttl)).await?;
        }
        Ok(update)
    }

    async fn remove(
        &self,
        channel: &str,
        options: &MapChannelOptions,
        key: &str,
        removal: &MapRemoval,
    ) -> Result<MapUpdate, EngineError> {
        self.engine.check_channel(channel)?;
        let replacement = match &removal.tags {
            Some(tags) => Publication {
                key: key.to_owned(),
                removed: true,
                tags: tags.clone(),
                time: unix_millis(),
                ..Default::default()
            }
            .encode_to_vec(),
            None => Vec::new(),
        };
        let mut invocation = self.invocation(&MAP_REMOVE, channel);
        if let Some(idempotency) = &removal.idempotency_key {
            invocation.key(self.keys().map_result(channel, idempotency));
        }
        invocation
            .arg(key)
            .arg(replacement)
            .arg(mode_code(options.mode))
            .arg(options.stream_size)
            .arg(millis(options.stream_ttl))
            .arg(options.meta_ttl.map_or(0, millis))
            .arg(new_epoch())
            .arg(self.pubsub_channel(channel))
            .arg(self.engine.publish_command)
            .arg(idempotent_ttl(removal.idempotent_result_ttl, self.idempotent_result_ttl).as_secs().max(1));
        let reply: Vec<Value> = self.engine.invoke(channel, invocation).await?;
        Self::update_of(&reply)
    }

    async fn read_state(
        &self,
        channel: &str,
        options: &MapChannelOptions,
        read: &StateRead,
    ) -> Result<StatePage, EngineError> {
        self.engine.check_channel(channel)?;
        let mut invocation = self.invocation(&MAP_READ_STATE, channel);
        invocation
            .arg(&read.cursor)
            .arg(read.limit)
            .arg(read.key.as_deref().unwrap_or(""))
            .arg(read.revision.as_ref().map_or("", |r| r.epoch.as_str()))
            .arg(new_epoch())
            .arg(options.meta_ttl.map_or(0, millis));
        let reply: Vec<Value> = self.engine.invoke(channel, invocation).await?;
        if unrecoverable(&reply) {
            return Err(EngineError::UnrecoverablePosition);
        }
        let [top, epoch, cursor, entries] = reply.as_slice() else { return Err(protocol_error("map state")) };
        let position = StreamPosition {
            offset: as_u64(top).ok_or_else(|| protocol_error("map state"))?,
            epoch: as_string(epoch).unwrap_or_default(),
        };
        Ok(StatePage {
            entries: state_entries(entries),
            position,
            cursor: as_string(cursor).unwrap_or_default(),
        })
    }

    async fn read_stream(
        &self,
        channel: &str,
        options: &MapChannelOptions,
        filter: &HistoryFilter,
    ) -> Result<HistoryResult, EngineError> {
        self.engine.check_channel(channel)?;
        let mut invocation = self.invocation(&MAP_READ_STREAM, channel);
        invocation
            .arg(filter.since.as_ref().map_or(String::new(), |s| s.offset.to_string()))
            .arg(if filter.reverse { "1" } else { "0" })
            .arg(filter.limit)
            .arg(filter.since.as_ref().map_or("", |s| s.epoch.as_str()))
            .arg(new_epoch())
            .arg(options.meta_ttl.map_or(0, millis));
        let reply: Vec<Value> = self.engine.invoke(channel, invocation).await?;
        if unrecoverable(&reply) {
            return Err(EngineError::UnrecoverablePosition);
        }
        let [top, epoch, entries] = reply.as_slice() else { return Err(protocol_error("map stream")) };
        let position = StreamPosition {
            offset: as_u64(top).ok_or_else(|| protocol_error("map stream"))?,
            epoch: as_string(epoch).unwrap_or_default(),
        };
        let publications = match entries {
            Value::Array(entries) => entries.iter().filter_map(stream_entry).collect(),
            _ => Vec::new(),
        };
        Ok(HistoryResult { publications, position })
    }

    async fn stats(&self, channel: &str) -> Result<u32, EngineError> {
        let key = self.keys().map("keys", channel);
        self.engine
            .shard_for(channel)
            .shard
            .run(|mut connection| async move {
                redis::cmd("ZCARD").arg(key).query_async::<u32>(&mut connection).await
            })
            .await
    }

    async fn clear(&self, channel: &str) -> Result<(), EngineError> {
        let keys: Vec<String> = ["state", "keys", "expire", "version", "stream", "meta"]
            .iter()
            .map(|k| self.keys().map(k, channel))
            .collect();
        self.engine
            .shard_for(channel)
            .shard
            .run(|mut connection| async move {
                redis::cmd("DEL").arg(keys).query_async::<i64>(&mut connection).await
            })
            .await
            .map(drop)
    }

    fn is_healthy(&self) -> bool {
        self.engine.is_healthy()
    }
}
