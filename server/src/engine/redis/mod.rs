//! The Redis engine: PUB/SUB between nodes, history streams and presence in Redis, so several
//! Spinwire nodes behind a load balancer act as one server.
//!
//! - `connection.rs`: one Redis (address or Sentinel), its shared pipelined command connection
//!   and the `io_timeout` on every call.
//! - `pubsub.rs`: one PUB/SUB connection per shard, reconciled with the wanted channel set,
//!   reconnected and probed.
//! - `scripts.rs`: the Lua that makes publish-and-append, history reads and presence atomic.
//! - `wire.rs`: key names and PUB/SUB payloads (Centrifugo's layout).
//!
//! Several addresses are independent shards: a channel lives on the shard its name hashes to
//! (jump consistent hash over FNV-1a, stable across processes and versions), which keeps each
//! channel's stream and its PUB/SUB on one server. Node control messages use the first shard.
//!
//! Delivery is asynchronous: a publish returns once Redis ran the script; the PUB/SUB reader
//! task hands the message to the event handler. Per-channel order holds because one script
//! both appends and publishes, and Redis delivers a channel's messages in order.

mod connection;
mod map;
mod map_scripts;
mod pubsub;
mod scripts;
pub mod wire;

pub use map::RedisMapBroker;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use prost::Message;
use redis::Value;
use tokio_util::sync::CancellationToken;

use self::connection::Shard;
use self::pubsub::{Dispatch, PubSub};
use self::wire::{BrokerMessage, Keys};
use super::memory::new_epoch;
use super::{
    Broker, BrokerEventHandler, EngineError, HistoryFilter, HistoryResult, PresenceManager, PresenceStats,
    PublishOptions, PublishOutcome, StreamPosition,
};
use crate::config::RedisEngine as RedisSection;
use crate::proto::client::{ClientInfo, Publication};

/// Meta TTL used when the caller gives none (Centrifugo's `history_meta_ttl` default).
const DEFAULT_META_TTL: Duration = Duration::from_secs(720 * 3600);
/// How often an idle PUB/SUB connection is asked to prove it still delivers.
const PROBE_INTERVAL: Duration = Duration::from_secs(3);

type HandlerSlot = Arc<OnceLock<Arc<dyn BrokerEventHandler>>>;

struct ShardState {
    shard: Arc<Shard>,
    pubsub: Arc<PubSub>,
}

/// Broker and presence manager on one or more Redis servers.
pub struct RedisEngine {
    shards: Vec<ShardState>,
    keys: Keys,
    handler: HandlerSlot,
    presence_ttl: Duration,
    /// `history_use_lists`: history in Redis lists (Centrifugo's `P.list.*` keys).
    history_use_lists: bool,
    /// `presence_user_mapping`: per-user connection counts kept beside presence, so
    /// `presence_stats` counts in Redis instead of loading every entry.
    presence_user_mapping: bool,
    /// `spublish` on a Cluster (sharded PUB/SUB: a message stays on its slot's shard),
    /// `publish` elsewhere.
    publish_command: &'static str,
    stop: CancellationToken,
}

impl std::fmt::Debug for RedisEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEngine").field("shards", &self.shards.len()).finish_non_exhaustive()
    }
}

impl Drop for RedisEngine {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// FNV-1a, 64 bit: a fixed function, so every node maps a channel to the same shard.
fn fnv1a(text: &str) -> u64 {
    text.bytes()
        .fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

/// Jump consistent hash (Lamping and Veach): adding a shard moves only 1/n of the channels.
fn jump_hash(mut key: u64, buckets: usize) -> usize {
    let (mut b, mut j) = (-1i64, 0i64);
    while j < buckets as i64 {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as usize
}

fn unix_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Whole seconds for Redis TTL arguments, never 0 for a positive duration (0 means "none").
fn ttl_seconds(duration: Duration) -> u64 {
    if duration.is_zero() { 0 } else { duration.as_secs().max(1) }
}

impl RedisEngine {
    /// Where `channel`'s history lives: a stream, or with `history_use_lists` a list.
    fn history_key(&self, channel: &str) -> String {
        if self.history_use_lists { self.keys.list(channel) } else { self.keys.stream(channel) }
    }

    fn history_meta_key(&self, channel: &str) -> String {
        if self.history_use_lists { self.keys.list_meta(channel) } else { self.keys.stream_meta(channel) }
    }

    /// History from a list: read whole (lists are short: `history_size`), then filtered here
    /// as the stream script filters (`since`, `limit`, and `reverse`, which Centrifugo's list
    /// history ignores).
    async fn list_history(
        &self,
        channel: &str,
        filter: &HistoryFilter,
    ) -> Result<HistoryResult, EngineError> {
        let meta_ttl = if filter.meta_ttl.is_zero() { DEFAULT_META_TTL } else { filter.meta_ttl };
        let mut invocation = scripts::HISTORY_LIST.prepare_invoke();
        invocation
            .key(self.keys.list(channel))
            .key(self.keys.list_meta(channel))
            .arg(if filter.limit == 0 { "0" } else { "1" })
            .arg(ttl_seconds(meta_ttl));
        let reply: Vec<Value> = self.invoke(channel, invocation).await?;
        let (position, entries) = history_reply(&reply, filter)?;
        let newest_first: Vec<Publication> = match entries {
            Value::Array(entries) => entries.iter().filter_map(list_entry).collect(),
            _ => Vec::new(),
        };
        let limit = if filter.limit < 0 { usize::MAX } else { filter.limit as usize };
        let since = filter.since.as_ref().map(|since| since.offset);
        let publications = if filter.reverse {
            let older = |p: &Publication| since.is_none_or(|since| p.offset < since);
            newest_first.into_iter().filter(older).take(limit).collect()
        } else {
            let newer = |p: &Publication| since.is_none_or(|since| p.offset > since);
            newest_first.into_iter().rev().filter(newer).take(limit).collect()
        };
        Ok(HistoryResult { publications, position })
    }

    /// The four presence keys of `channel`, in the scripts' order.
    fn presence_keys(&self, invocation: &mut redis::ScriptInvocation<'static>, channel: &str) {
        invocation
            .key(self.keys.presence_data(channel))
            .key(self.keys.presence_expire(channel))
            .key(self.keys.presence_user_clients(channel))
            .key(self.keys.presence_user_expire(channel));
    }

    fn mapping_flag(&self) -> &'static str {
        if self.presence_user_mapping { "1" } else { "0" }
    }
}

fn protocol_error(what: &str) -> EngineError {
    EngineError::Internal(format!("redis: unexpected reply to {what}"))
}

impl RedisEngine {
    /// Connects lazily: construction only validates the section and starts the PUB/SUB
    /// tasks, which keep retrying until Redis answers. `key` names the section in errors.
    /// `control_uid` is this node's uid when the engine is the node's broker (it then carries
    /// node control messages); a presence-only engine passes `None`.
    pub fn new(section: &RedisSection, key: &str, control_uid: Option<&str>) -> Result<Arc<Self>, String> {
        let cluster = !section.cluster_address.is_empty();
        let keys = Keys::new(&section.prefix, cluster);
        let shards: Vec<Shard> = if !section.sentinel_address.is_empty() {
            vec![Shard::sentinel(section, key)?]
        } else if cluster {
            vec![Shard::cluster(section, key)?]
        } else {
            section
                .address
                .iter()
                .map(|address| Shard::direct(section, address, key))
                .collect::<Result<_, _>>()?
        };
        let handler: HandlerSlot = Arc::default();
        let stop = CancellationToken::new();
        let mut states = Vec::with_capacity(shards.len());
        for (index, shard) in shards.into_iter().enumerate() {
            let shard = Arc::new(shard);
            let permanent = match control_uid {
                Some(uid) if index == 0 => vec![keys.control(), keys.node(uid)],
                _ => Vec::new(),
            };
            let pubsub = PubSub::new(permanent, PROBE_INTERVAL);
            let dispatch = dispatcher(keys.clone(), handler.clone());
            tokio::spawn(pubsub::run(shard.clone(), pubsub.clone(), dispatch, stop.clone()));
            states.push(ShardState { shard, pubsub });
        }
        let presence_ttl =
            if section.presence_ttl.0.is_zero() { Duration::from_secs(60) } else { section.presence_ttl.0 };
        let publish_command = if cluster { "spublish" } else { "publish" };
        let (presence_user_mapping, history_use_lists) =
            (section.presence_user_mapping, section.history_use_lists);
        Ok(Arc::new(Self {
            shards: states,
            keys,
            handler,
            presence_ttl,
            history_use_lists,
            presence_user_mapping,
            publish_command,
            stop,
        }))
    }

    /// On a Cluster the channel name becomes a hash tag; a brace in it would end the tag early
    /// (or leave it empty) and scatter the channel's keys over slots.
    fn check_channel(&self, channel: &str) -> Result<(), EngineError> {
        if self.publish_command == "spublish" && channel.contains(['{', '}']) {
            return Err(EngineError::InvalidChannel);
        }
        Ok(())
    }

    fn shard_for(&self, channel: &str) -> &ShardState {
        &self.shards[jump_hash(fnv1a(channel), self.shards.len())]
    }

    /// Every shard's PUB/SUB connection is up (used by `/health`).
    pub fn is_healthy(&self) -> bool {
        self.shards.iter().all(|state| state.pubsub.is_connected())
    }

    /// Runs a prepared script on the shard that owns `channel`.
    async fn invoke<T: redis::FromRedisValue + Send + 'static>(
        &self,
        channel: &str,
        invocation: redis::ScriptInvocation<'static>,
    ) -> Result<T, EngineError> {
        self.shard_for(channel)
            .shard
            .run(|mut connection| async move { invocation.invoke_async(&mut connection).await })
            .await
    }

    async fn publish_raw(&self, channel: &str, payload: Vec<u8>) -> Result<(), EngineError> {
        self.check_channel(channel)?;
        let name = self.keys.pubsub(channel);
        let command = self.publish_command;
        self.shard_for(channel)
            .shard
            .run(|mut connection| async move {
                redis::cmd(command).arg(name).arg(payload).query_async::<i64>(&mut connection).await
            })
            .await
            .map(|_| ())
    }
}

/// Routes each PUB/SUB message: publications, joins and leaves to the event handler, node
/// control to its handler. A payload we cannot read is logged and skipped, never fatal.
fn dispatcher(keys: Keys, handler: HandlerSlot) -> Dispatch {
    let control = keys.control();
    let node_prefix = keys.node("");
    Arc::new(move |name: &str, payload: &[u8]| {
        let Some(handler) = handler.get() else { return };
        if name == control || name.starts_with(&node_prefix) {
            handler.handle_control(payload);
            return;
        }
        let Some(channel) = keys.channel_of(name) else { return };
        match wire::decode(payload) {
            Ok(BrokerMessage::Publication(publication, position, base)) => {
                handler.handle_publication(channel, *publication, position, base)
            }
            Ok(BrokerMessage::Join(info)) => handler.handle_join(channel, info),
            Ok(BrokerMessage::Leave(info)) => handler.handle_leave(channel, info),
            Err(_) => {
                tracing::warn!(%channel, bytes = payload.len(), "undecodable message from redis skipped")
            }
        }
    })
}

fn as_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        _ => None,
    }
}

fn as_string(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    }
}

/// One XRANGE entry (`[id, [field, value, …]]`) as a publication; the offset is the id's first
/// part.
/// One `__p1:`-framed list entry.
fn list_entry(entry: &Value) -> Option<Publication> {
    let Value::BulkString(bytes) = entry else { return None };
    match wire::decode(bytes) {
        Ok(wire::BrokerMessage::Publication(publication, _, _)) => Some(*publication),
        _ => None,
    }
}

fn stream_entry(entry: &Value) -> Option<Publication> {
    let Value::Array(parts) = entry else { return None };
    let [id, Value::Array(fields)] = parts.as_slice() else { return None };
    let id = as_string(id)?;
    let offset: u64 = id.split('-').next()?.parse().ok()?;
    let mut fields = fields.chunks(2);
    let body = fields.find_map(|pair| match pair {
        [Value::BulkString(name), Value::BulkString(body)] if name == b"d" => Some(body),
        _ => None,
    })?;
    wire::decode_stored(offset, body)
}

#[async_trait]
impl Broker for RedisEngine {
    fn set_event_handler(&self, handler: Arc<dyn BrokerEventHandler>) {
        let _ = self.handler.set(handler);
    }

    async fn subscribe(&self, channel: &str) -> Result<(), EngineError> {
        self.check_channel(channel)?;
        let state = self.shard_for(channel);
        state.pubsub.subscribe(&self.keys.pubsub(channel), state.shard.io_timeout).await
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), EngineError> {
        self.shard_for(channel).pubsub.unsubscribe(&self.keys.pubsub(channel));
        Ok(())
    }

    async fn publish(
        &self,
        channel: &str,
        publication: Publication,
        options: &PublishOptions,
    ) -> Result<PublishOutcome, EngineError> {
        self.check_channel(channel)?;
        let history = options.has_history();
        let meta_ttl =
            if options.history_meta_ttl.is_zero() { DEFAULT_META_TTL } else { options.history_meta_ttl };
        let invocation = {
            let mut invocation = scripts::PUBLISH.prepare_invoke();
            invocation.key(self.history_key(channel)).key(self.history_meta_key(channel));
            if let Some(key) = &options.idempotency_key {
                invocation.key(self.keys.result(channel, key));
            }
            invocation
                .arg(publication.encode_to_vec())
                .arg(if history { options.history_size } else { 0 })
                .arg(ttl_seconds(options.history_ttl))
                .arg(self.keys.pubsub(channel))
                .arg(ttl_seconds(meta_ttl))
                .arg(new_epoch())
                .arg(self.publish_command)
                .arg(ttl_seconds(options.idempotent_result_ttl).max(1))
                .arg(if history && options.use_delta { "1" } else { "0" })
                .arg(options.version)
                .arg(&options.version_epoch)
                .arg(if self.history_use_lists { "1" } else { "0" });
            invocation
        };
        let reply: Vec<Value> = self.invoke(channel, invocation).await?;
        let [offset, epoch, deduplicated, suppressed] = reply.as_slice() else {
            return Err(protocol_error("publish"));
        };
        let offset = as_u64(offset).ok_or_else(|| protocol_error("publish"))?;
        let epoch = as_string(epoch).unwrap_or_default();
        let position = if offset == 0 { StreamPosition::default() } else { StreamPosition { offset, epoch } };
        Ok(PublishOutcome {
            position,
            deduplicated: as_u64(deduplicated) == Some(1),
            suppressed: as_u64(suppressed) == Some(1),
        })
    }

    async fn publish_join(&self, channel: &str, info: ClientInfo) -> Result<(), EngineError> {
        self.publish_raw(channel, wire::encode_join(&info)).await
    }

    async fn publish_leave(&self, channel: &str, info: ClientInfo) -> Result<(), EngineError> {
        self.publish_raw(channel, wire::encode_leave(&info)).await
    }

    async fn history(&self, channel: &str, filter: &HistoryFilter) -> Result<HistoryResult, EngineError> {
        self.check_channel(channel)?;
        if self.history_use_lists {
            return self.list_history(channel, filter).await;
        }
        let meta_ttl = if filter.meta_ttl.is_zero() { DEFAULT_META_TTL } else { filter.meta_ttl };
        let since = match (&filter.since, filter.reverse) {
            (Some(since), _) => since.offset.to_string(),
            (None, _) => String::new(),
        };
        let invocation = {
            let mut invocation = scripts::HISTORY.prepare_invoke();
            invocation
                .key(self.keys.stream(channel))
                .key(self.keys.stream_meta(channel))
                .arg(if filter.limit == 0 { "0" } else { "1" })
                .arg(since)
                .arg(if filter.reverse { "1" } else { "0" })
                .arg(if filter.limit < 0 { -1 } else { i64::from(filter.limit) })
                .arg(ttl_seconds(meta_ttl));
            invocation
        };
        let reply: Vec<Value> = self.invoke(channel, invocation).await?;
        let (position, entries) = history_reply(&reply, filter)?;
        let publications = match entries {
            Value::Array(entries) => entries.iter().filter_map(stream_entry).collect(),
            _ => Vec::new(),
        };
        Ok(HistoryResult { publications, position })
    }

    async fn remove_history(&self, channel: &str) -> Result<(), EngineError> {
        let key = self.history_key(channel);
        self.shard_for(channel)
            .shard
            .run(|mut connection| async move {
                redis::cmd("DEL").arg(key).query_async::<i64>(&mut connection).await
            })
            .await
            .map(|_| ())
    }

    async fn publish_control(&self, payload: Bytes, node: Option<&str>) -> Result<(), EngineError> {
        let name = match node {
            Some(uid) => self.keys.node(uid),
            None => self.keys.control(),
        };
        self.shards[0]
            .shard
            .run(|mut connection| async move {
                redis::cmd("PUBLISH")
                    .arg(name)
                    .arg(payload.as_ref())
                    .query_async::<i64>(&mut connection)
                    .await
            })
            .await
            .map(|_| ())
    }

    fn is_networked(&self) -> bool {
        true
    }

    fn is_healthy(&self) -> bool {
        RedisEngine::is_healthy(self)
    }
}

#[async_trait]
impl PresenceManager for RedisEngine {
    async fn add_presence(
        &self,
        channel: &str,
        client_id: &str,
        info: ClientInfo,
        _ttl: Duration,
    ) -> Result<(), EngineError> {
        // Redis presence lives `engine.redis.presence_ttl` without a refresh, whatever the
        // caller's local default: every node must agree on it.
        self.check_channel(channel)?;
        let ttl = ttl_seconds(self.presence_ttl);
        let mut invocation = scripts::ADD_PRESENCE.prepare_invoke();
        self.presence_keys(&mut invocation, channel);
        invocation
            .arg(client_id)
            .arg(info.encode_to_vec())
            .arg(ttl)
            .arg(unix_seconds() + ttl)
            .arg(info.user.as_str())
            .arg(self.mapping_flag());
        self.invoke::<i64>(channel, invocation).await.map(|_| ())
    }

    async fn remove_presence(&self, channel: &str, client_id: &str, user: &str) -> Result<(), EngineError> {
        let mut invocation = scripts::REMOVE_PRESENCE.prepare_invoke();
        self.presence_keys(&mut invocation, channel);
        invocation.arg(client_id).arg(user).arg(self.mapping_flag());
        self.invoke::<i64>(channel, invocation).await.map(|_| ())
    }

    async fn presence(&self, channel: &str) -> Result<BTreeMap<String, ClientInfo>, EngineError> {
        self.check_channel(channel)?;
        let mut invocation = scripts::PRESENCE.prepare_invoke();
        self.presence_keys(&mut invocation, channel);
        invocation.arg(unix_seconds());
        let flat: Vec<Vec<u8>> = self.invoke(channel, invocation).await?;
        let mut members = BTreeMap::new();
        for pair in flat.chunks(2) {
            if let [client, info] = pair
                && let (Ok(client), Some(info)) = (String::from_utf8(client.clone()), wire::decode_info(info))
            {
                members.insert(client, info);
            }
        }
        Ok(members)
    }

    async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, EngineError> {
        if self.presence_user_mapping {
            self.check_channel(channel)?;
            let mut invocation = scripts::PRESENCE_STATS.prepare_invoke();
            self.presence_keys(&mut invocation, channel);
            invocation.arg(unix_seconds());
            let (num_clients, num_users): (u32, u32) = self.invoke(channel, invocation).await?;
            return Ok(PresenceStats { num_clients, num_users });
        }
        let members = self.presence(channel).await?;
        let users: std::collections::HashSet<&str> =
            members.values().map(|info| info.user.as_str()).collect();
        Ok(PresenceStats { num_clients: members.len() as u32, num_users: users.len() as u32 })
    }

    fn is_healthy(&self) -> bool {
        RedisEngine::is_healthy(self)
    }
}

/// A history script's `{top offset, epoch, entries}`, with the reader's epoch checked (112 for a
/// position in another epoch; an empty one matches any).
fn history_reply<'a>(
    reply: &'a [Value],
    filter: &HistoryFilter,
) -> Result<(StreamPosition, &'a Value), EngineError> {
    let [top, epoch, entries] = reply else { return Err(protocol_error("history")) };
    let position = StreamPosition {
        offset: as_u64(top).ok_or_else(|| protocol_error("history"))?,
        epoch: as_string(epoch).ok_or_else(|| protocol_error("history"))?,
    };
    if let Some(since) = &filter.since
        && !since.epoch.is_empty()
        && since.epoch != position.epoch
    {
        return Err(EngineError::UnrecoverablePosition);
    }
    Ok((position, entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jump_hash_is_stable_and_spreads() {
        // Fixed values: a change here would re-shard every deployment.
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
        for channel in ["a", "news", "chat:index", "$private"] {
            assert_eq!(jump_hash(fnv1a(channel), 1), 0);
            let three = jump_hash(fnv1a(channel), 3);
            assert!(three < 3);
            assert_eq!(three, jump_hash(fnv1a(channel), 3));
        }
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[jump_hash(fnv1a(&format!("channel-{i}")), 4)] += 1;
        }
        assert!(counts.iter().all(|&n| (800..1200).contains(&n)), "{counts:?}");
        // Growing 4 → 5 shards moves about a fifth of the channels, never between old shards.
        let mut moved = 0;
        for i in 0..4000 {
            let key = fnv1a(&format!("channel-{i}"));
            let (before, after) = (jump_hash(key, 4), jump_hash(key, 5));
            if before != after {
                assert_eq!(after, 4);
                moved += 1;
            }
        }
        assert!((600..1000).contains(&moved), "{moved}");
    }
}
