//! Pluggable back ends: the [`Broker`] (PUB/SUB fan-out between nodes plus history streams) and
//! the [`PresenceManager`]. The memory engine implements both and is the embedded default; the
//! Redis engine implements both too, the NATS broker only the first. Every backend runs the
//! one conformance suite (`conformance.rs`), by capability: PUB/SUB and control everywhere,
//! history and presence where the backend keeps them.
//!
//! Contracts every implementation keeps:
//! * **Per-channel atomicity.** Appending to a channel's history and fanning the publication out
//!   happen as one step, so subscribers see publications in offset order and a history read
//!   never shows a publication that will later be delivered with a different offset.
//! * **At-most-once delivery** to the [`BrokerEventHandler`]; gaps are detected by offsets and
//!   repaired by recovery, not by the broker.
//! * Offsets start at 1 for a new epoch and grow by one per publication, also when old
//!   publications are trimmed; the epoch changes only when the stream's meta data is lost.
//! * **Versions** (`PublishOptions::version`) are kept per channel with the stream's meta data;
//!   only versioned publications update them, so an unversioned publish in between does not
//!   re-admit a stale version. A suppressed publication is neither stored nor delivered.

pub mod map;
pub mod memory;
pub mod nats;
pub mod postgres;
pub mod redis;

#[cfg(test)]
mod conformance;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

pub use crate::common::{HistoryFilter, HistoryResult, StreamPosition};
use crate::proto::client::{ClientInfo, Publication};

/// How a publication is stored.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// Keep at most this many publications (0 = no history).
    pub history_size: usize,
    /// Drop the stream this long after the last publication.
    pub history_ttl: Duration,
    /// Keep offset and epoch this long after the last publication or read.
    pub history_meta_ttl: Duration,
    /// Deduplicate publishes with the same key within `idempotent_result_ttl`.
    pub idempotency_key: Option<String>,
    pub idempotent_result_ttl: Duration,
    /// Hand the previous publication's data to the event handler along with this one, so
    /// subscribers that negotiated delta compression can get a patch against it (history only).
    pub use_delta: bool,
    /// Non-zero: drop this publication when the channel already holds this version or a newer
    /// one within the same `version_epoch` (an empty epoch matches any). History only.
    pub version: u64,
    pub version_epoch: String,
}

impl PublishOptions {
    pub fn has_history(&self) -> bool {
        self.history_size > 0 && !self.history_ttl.is_zero()
    }
}

/// Outcome of a publish.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishOutcome {
    /// Stream position of the publication (offset 0 without history).
    pub position: StreamPosition,
    /// True when an idempotency key matched and nothing was published.
    pub deduplicated: bool,
    /// True when the publication was dropped as stale by its version (the position is the
    /// stream's current top).
    pub suppressed: bool,
}

/// Presence counts of one channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PresenceStats {
    pub num_clients: u32,
    pub num_users: u32,
}

/// Engine failures. Sessions map them to error 100, the API to its internal error.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EngineError {
    /// `since` names an epoch that is not the stream's current one.
    #[error("unrecoverable position: epoch mismatch")]
    UnrecoverablePosition,
    /// The engine does not offer this (e.g. history on a PUB/SUB-only broker).
    #[error("not available")]
    NotAvailable,
    /// The broker cannot carry this channel name (e.g. a NATS wildcard).
    #[error("channel not supported by the broker")]
    InvalidChannel,
    #[error("engine failure: {0}")]
    Internal(String),
}

/// Receives what the broker delivers to this node. Implementations must not block: they run on
/// the publishing path (memory engine) or the broker's reader task (networked engines).
pub trait BrokerEventHandler: Send + Sync {
    /// `delta_base` is the data of the publication before this one in the stream, when the
    /// publish asked for delta and the broker still had it.
    fn handle_publication(
        &self,
        channel: &str,
        publication: Publication,
        position: StreamPosition,
        delta_base: Option<Bytes>,
    );
    fn handle_join(&self, channel: &str, info: ClientInfo);
    fn handle_leave(&self, channel: &str, info: ClientInfo);
    /// A node control message from [`Broker::publish_control`] (possibly this node's own).
    fn handle_control(&self, payload: &[u8]);
}

/// PUB/SUB between nodes plus per-channel history streams.
#[async_trait]
pub trait Broker: Send + Sync {
    /// Installs the handler that receives deliveries for channels this node subscribed to.
    fn set_event_handler(&self, handler: Arc<dyn BrokerEventHandler>);
    /// Starts delivering `channel` to this node.
    async fn subscribe(&self, channel: &str) -> Result<(), EngineError>;
    /// Stops delivering `channel` to this node.
    async fn unsubscribe(&self, channel: &str) -> Result<(), EngineError>;
    /// Publishes (and, with history options, appends to the stream) atomically per channel.
    async fn publish(
        &self,
        channel: &str,
        publication: Publication,
        options: &PublishOptions,
    ) -> Result<PublishOutcome, EngineError>;
    async fn publish_join(&self, channel: &str, info: ClientInfo) -> Result<(), EngineError>;
    async fn publish_leave(&self, channel: &str, info: ClientInfo) -> Result<(), EngineError>;
    /// Reads history. An unknown or expired stream reads as empty at its current position.
    async fn history(&self, channel: &str, filter: &HistoryFilter) -> Result<HistoryResult, EngineError>;
    /// Drops the publications but keeps offset and epoch.
    async fn remove_history(&self, channel: &str) -> Result<(), EngineError>;
    /// Sends a node control message to every node (`None`) or to one node by uid. A
    /// single-process broker has no other nodes and drops it.
    async fn publish_control(&self, payload: Bytes, node: Option<&str>) -> Result<(), EngineError>;
    /// Deliveries cross a network and can be lost (the node then runs position checks).
    fn is_networked(&self) -> bool {
        false
    }
    /// False while the back end is unreachable (reported by `/health`).
    fn is_healthy(&self) -> bool {
        true
    }
}

/// Who is subscribed to a channel, cluster-wide.
#[async_trait]
pub trait PresenceManager: Send + Sync {
    /// Adds or refreshes one connection's presence; it expires after `ttl` without refresh.
    async fn add_presence(
        &self,
        channel: &str,
        client_id: &str,
        info: ClientInfo,
        ttl: Duration,
    ) -> Result<(), EngineError>;
    /// Removes one connection's presence; `user` is its user (for per-user counts).
    async fn remove_presence(&self, channel: &str, client_id: &str, user: &str) -> Result<(), EngineError>;
    async fn presence(&self, channel: &str) -> Result<BTreeMap<String, ClientInfo>, EngineError>;
    async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, EngineError>;
    /// False while the back end is unreachable (reported by `/health`).
    fn is_healthy(&self) -> bool {
        true
    }
}
