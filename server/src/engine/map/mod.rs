//! The map broker: keyed state of map channels, synchronised to subscribers.
//!
//! A map channel holds *state* (key → the latest publication for that key) and, in the
//! recoverable and persistent modes, a bounded *stream* of changes (publish = upsert, remove =
//! `removed: true`) with offsets in an epoch, exactly like a history stream. Subscribers page
//! through the state, catch up on the stream, then receive changes live through the same
//! [`BrokerEventHandler`] as stream channels.
//!
//! Contracts every implementation keeps (checked by the conformance suite):
//! * **Per-channel atomicity.** A write changes the state, appends to the stream and hands the
//!   publication to the event handler as one step, so offsets reach subscribers in order and a
//!   state read at position P holds exactly the writes up to P.
//! * **Suppressed writes change nothing**: a duplicate idempotency key, a stale version, a key
//!   mode that does not apply or a removal of a missing key takes no offset and delivers
//!   nothing (a key-mode miss may refresh the key's TTL when asked).
//! * **Expiry is a write**: a key whose TTL ran out is removed with a removal publication (in
//!   the stream in recoverable mode), so subscribers learn about it like any removal.
//! * Reading state or the stream of an unknown channel creates it (fixing its epoch), so a
//!   position read before the first write stays valid.

#[cfg(test)]
pub(crate) mod conformance;
pub mod memory;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{BrokerEventHandler, EngineError, HistoryFilter, HistoryResult, StreamPosition};
use crate::proto::client::Publication;

pub use crate::config::MapMode;

/// How long idempotent results are remembered when neither the write nor the broker's
/// configuration says (Centrifugo's default).
pub const DEFAULT_IDEMPOTENT_RESULT_TTL: Duration = Duration::from_secs(300);

/// `ttl`, or `default` when zero.
pub fn idempotent_ttl(ttl: Duration, default: Duration) -> Duration {
    if ttl.is_zero() { default } else { ttl }
}

/// How one map channel keeps its state (from its namespace's `map` options).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapChannelOptions {
    pub mode: MapMode,
    /// Keys expire this long after their last write (zero: never).
    pub key_ttl: Duration,
    pub stream_size: usize,
    /// The stream's content is dropped this long after the last write.
    pub stream_ttl: Duration,
    /// The whole channel is forgotten this long after its last use (`None`: never).
    pub meta_ttl: Option<Duration>,
}

/// When a map publish applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyMode {
    /// Insert or replace.
    #[default]
    Replace,
    /// Only when the key is absent.
    IfNew,
    /// Only when the key is present.
    IfExists,
}

impl KeyMode {
    /// The API's spelling (`""`, `if_new`, `if_exists`).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "" => Some(Self::Replace),
            "if_new" => Some(Self::IfNew),
            "if_exists" => Some(Self::IfExists),
            _ => None,
        }
    }
}

/// How a map publish is applied.
#[derive(Debug, Clone, Default)]
pub struct MapWrite {
    pub key_mode: KeyMode,
    /// A write suppressed by its key mode still extends the key's TTL.
    pub refresh_ttl_on_suppress: bool,
    pub idempotency_key: Option<String>,
    /// How long the result is remembered; zero: the broker's `idempotent_result_ttl`.
    pub idempotent_result_ttl: Duration,
    /// Hand the key's previous value to the event handler for delta compression.
    pub use_delta: bool,
    /// Non-zero: suppressed when the key already holds this version or a newer one within the
    /// same `version_epoch` (an empty epoch matches any). Stream modes only.
    pub version: u64,
    pub version_epoch: String,
}

/// How a map removal is applied.
#[derive(Debug, Clone, Default)]
pub struct MapRemoval {
    pub idempotency_key: Option<String>,
    /// Zero: the broker's `idempotent_result_ttl`.
    pub idempotent_result_ttl: Duration,
    /// Tags of the removal publication; `None` keeps the removed entry's tags.
    pub tags: Option<BTreeMap<String, String>>,
}

/// Why a write changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suppressed {
    Idempotency,
    Version,
    KeyExists,
    KeyNotFound,
}

impl Suppressed {
    /// The server API's `suppress_reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idempotency => "idempotency",
            Self::Version => "version",
            Self::KeyExists => "key_exists",
            Self::KeyNotFound => "key_not_found",
        }
    }
}

/// The outcome of a map write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapUpdate {
    /// The write's position, or the channel's current one when suppressed.
    pub position: StreamPosition,
    pub suppressed: Option<Suppressed>,
}

/// A state read.
#[derive(Debug, Clone, Default)]
pub struct StateRead {
    /// Fail with [`EngineError::UnrecoverablePosition`] unless the channel is in this epoch
    /// (when non-empty).
    pub revision: Option<StreamPosition>,
    /// Continue after this key (`""`: from the start).
    pub cursor: String,
    /// Entries to return: -1 all, 0 none (position only), n a page.
    pub limit: i32,
    /// Read this one key only (cursor and limit are ignored).
    pub key: Option<String>,
}

/// One page of state, in key order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatePage {
    pub entries: Vec<Publication>,
    /// The channel's current stream position.
    pub position: StreamPosition,
    /// Where the next page starts; empty on the last page.
    pub cursor: String,
}

/// Keyed state channels.
#[async_trait]
pub trait MapBroker: Send + Sync {
    /// Installs the handler that receives writes on channels this node subscribed to.
    fn set_event_handler(&self, handler: Arc<dyn BrokerEventHandler>);
    async fn subscribe(&self, channel: &str) -> Result<(), EngineError>;
    async fn unsubscribe(&self, channel: &str) -> Result<(), EngineError>;
    /// Publishes `publication` (whose `key` is set) into the channel's state and stream.
    async fn publish(
        &self,
        channel: &str,
        options: &MapChannelOptions,
        publication: Publication,
        write: &MapWrite,
    ) -> Result<MapUpdate, EngineError>;
    async fn remove(
        &self,
        channel: &str,
        options: &MapChannelOptions,
        key: &str,
        removal: &MapRemoval,
    ) -> Result<MapUpdate, EngineError>;
    async fn read_state(
        &self,
        channel: &str,
        options: &MapChannelOptions,
        read: &StateRead,
    ) -> Result<StatePage, EngineError>;
    /// Reads the stream as history reads a history stream (`since`, `limit`, `reverse`).
    async fn read_stream(
        &self,
        channel: &str,
        options: &MapChannelOptions,
        filter: &HistoryFilter,
    ) -> Result<HistoryResult, EngineError>;
    /// Number of keys in the channel's state.
    async fn stats(&self, channel: &str) -> Result<u32, EngineError>;
    /// Forgets the channel: state, stream and epoch (the next use starts a new epoch).
    async fn clear(&self, channel: &str) -> Result<(), EngineError>;
    /// Waits until the broker can serve (its schema checked, for a database); an error means it
    /// never will with this configuration.
    async fn ready(&self) -> Result<(), EngineError> {
        Ok(())
    }
    fn is_healthy(&self) -> bool {
        true
    }
}
