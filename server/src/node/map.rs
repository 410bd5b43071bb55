//! Map channels on the node: writes, reads and subscribers, shared by sessions and the server
//! API, over the configured [`MapBroker`].

use crate::metrics::NodeAction;
use std::sync::Arc;

use super::{Node, engine_error};
use crate::channel::ResolvedChannel;
use crate::common::{HistoryFilter, HistoryResult, StreamPosition};
use crate::config::ChannelOptions;
use crate::engine::map::MapChannelOptions;
use crate::errors::ClientError;
use crate::hub::SessionHandle;
use crate::proto::client::{ClientInfo, Publication};

pub use crate::engine::map::{
    KeyMode, MapMode, MapRemoval, MapUpdate, MapWrite, StatePage, StateRead, Suppressed,
};

/// The map broker options of a namespace; an internal error when it has no map mode (a map
/// operation on a channel that is not a map one).
pub fn map_channel_options(options: &ChannelOptions) -> Result<MapChannelOptions, ClientError> {
    let map = &options.map;
    let mode = map.mode().ok_or(ClientError::INTERNAL)?;
    Ok(MapChannelOptions {
        mode,
        key_ttl: map.key_ttl.0,
        stream_size: map.effective_stream_size(),
        stream_ttl: map.effective_stream_ttl(),
        meta_ttl: map.effective_meta_ttl(),
    })
}

impl Node {
    /// Waits until the map broker can serve (a database broker checks its schema first); an
    /// error means it never will with this configuration.
    pub async fn map_broker_ready(&self) -> Result<(), String> {
        self.map_broker.ready().await.map_err(|error| error.to_string())
    }

    /// Writes one key of a map channel; `publication.key` names it.
    pub async fn map_publish(
        &self,
        channel: &str,
        resolved: &ResolvedChannel,
        publication: Publication,
        mut write: MapWrite,
    ) -> Result<MapUpdate, ClientError> {
        if publication.key.is_empty() {
            return Err(ClientError::BAD_REQUEST);
        }
        super::check_publication_size(&resolved.options, &publication)?;
        let options = map_channel_options(&resolved.options)?;
        write.idempotency_key = write.idempotency_key.filter(|k| !k.is_empty());
        self.metrics.action(NodeAction::MapPublish);
        self.metrics.message_sent(crate::metrics::MessageType::MapPublication);
        self.map_broker.publish(channel, &options, publication, &write).await.map_err(engine_error)
    }

    pub async fn map_remove(
        &self,
        channel: &str,
        resolved: &ResolvedChannel,
        key: &str,
        mut removal: MapRemoval,
    ) -> Result<MapUpdate, ClientError> {
        if key.is_empty() {
            return Err(ClientError::BAD_REQUEST);
        }
        let options = map_channel_options(&resolved.options)?;
        removal.idempotency_key = removal.idempotency_key.filter(|k| !k.is_empty());
        self.metrics.action(NodeAction::MapRemove);
        self.metrics.message_sent(crate::metrics::MessageType::MapRemoval);
        self.map_broker.remove(channel, &options, key, &removal).await.map_err(engine_error)
    }

    pub async fn map_read_state(
        &self,
        channel: &str,
        resolved: &ResolvedChannel,
        read: &StateRead,
    ) -> Result<StatePage, ClientError> {
        let options = map_channel_options(&resolved.options)?;
        self.metrics.action(NodeAction::MapStateRead);
        self.map_broker.read_state(channel, &options, read).await.map_err(engine_error)
    }

    /// Reads the stream; a read from a position whose next publication is no longer there is
    /// [`ClientError::UNRECOVERABLE_POSITION`] (the stream was trimmed or dropped past it).
    pub async fn map_read_stream(
        &self,
        channel: &str,
        resolved: &ResolvedChannel,
        filter: &HistoryFilter,
    ) -> Result<HistoryResult, ClientError> {
        let options = map_channel_options(&resolved.options)?;
        let top_only = filter.limit == 0 && filter.since.is_none();
        self.metrics.action(if top_only { NodeAction::MapStreamPosition } else { NodeAction::MapStreamRead });
        let result = self.map_broker.read_stream(channel, &options, filter).await.map_err(engine_error)?;
        if let Some(since) = filter.since.as_ref().filter(|_| !filter.reverse && filter.limit != 0)
            && since.offset < result.position.offset
            && result.publications.first().is_none_or(|first| first.offset != since.offset + 1)
        {
            return Err(ClientError::UNRECOVERABLE_POSITION);
        }
        Ok(result)
    }

    /// The stream's current position (no entries).
    pub async fn map_position(
        &self,
        channel: &str,
        resolved: &ResolvedChannel,
    ) -> Result<StreamPosition, ClientError> {
        let filter = HistoryFilter { limit: 0, ..Default::default() };
        Ok(self.map_read_stream(channel, resolved, &filter).await?.position)
    }

    pub async fn map_stats(&self, channel: &str) -> Result<u32, ClientError> {
        self.metrics.action(NodeAction::MapStats);
        self.map_broker.stats(channel).await.map_err(engine_error)
    }

    pub async fn map_clear(&self, channel: &str) -> Result<(), ClientError> {
        self.metrics.action(NodeAction::MapClear);
        self.map_broker.clear(channel).await.map_err(engine_error)
    }

    /// Adds a local subscriber of a map channel (the map broker delivers the channel to this
    /// node from its first one).
    pub async fn add_map_subscriber(
        &self,
        channel: &str,
        handle: &Arc<SessionHandle>,
    ) -> Result<(), ClientError> {
        let subscribe = || self.map_broker.subscribe(channel);
        self.add_local_subscriber(channel, handle, NodeAction::MapBrokerSubscribe, subscribe).await
    }

    pub async fn remove_map_subscriber(&self, channel: &str, handle: &SessionHandle) {
        let unsubscribe = || self.map_broker.unsubscribe(channel);
        self.remove_local_subscriber(channel, handle, NodeAction::MapBrokerUnsubscribe, unsubscribe).await;
    }

    /// Lists a connection in a map_clients presence channel (key: its client id), or refreshes
    /// its entry's TTL when it is already there (no publication then).
    pub async fn map_client_present(
        &self,
        presence_channel: &str,
        info: &ClientInfo,
    ) -> Result<(), ClientError> {
        let publication =
            Publication { key: info.client.clone(), info: Some(info.clone()), ..Default::default() };
        self.map_present(presence_channel, publication).await
    }

    /// Lists a user in a map_users presence channel (key: the user id, no data).
    pub async fn map_user_present(&self, presence_channel: &str, user: &str) -> Result<(), ClientError> {
        let publication = Publication { key: user.to_owned(), ..Default::default() };
        self.map_present(presence_channel, publication).await
    }

    async fn map_present(&self, presence_channel: &str, publication: Publication) -> Result<(), ClientError> {
        let resolved = self.resolve(presence_channel)?;
        let write =
            MapWrite { key_mode: KeyMode::IfNew, refresh_ttl_on_suppress: true, ..Default::default() };
        self.map_publish(presence_channel, &resolved, publication, write).await.map(drop)
    }

    /// Removes one key (a client's presence entry, or its key on unsubscribe); a missing key or
    /// a channel that cannot be resolved is not an error worth more than a log line.
    pub async fn map_remove_key(&self, channel: &str, key: &str) {
        let removed = match self.resolve(channel) {
            Ok(resolved) => self.map_remove(channel, &resolved, key, MapRemoval::default()).await.map(drop),
            Err(error) => Err(error),
        };
        if let Err(error) = removed {
            tracing::warn!(%channel, %error, "removing a map key failed");
        }
    }

    /// The map broker's own health, for `/health`.
    pub(super) fn map_broker_healthy(&self) -> bool {
        self.map_broker.is_healthy()
    }
}

/// Whether a namespace keys by the client's id or user id instead of the key it names.
pub fn resolve_client_key(
    options: &ChannelOptions,
    asked: &str,
    client: &str,
    user: &str,
) -> Result<String, ClientError> {
    match options.map.client_key.as_str() {
        "client_id" => Ok(client.to_owned()),
        "user_id" if user.is_empty() => Err(ClientError::PERMISSION_DENIED),
        "user_id" => Ok(user.to_owned()),
        _ => Ok(asked.to_owned()),
    }
}

/// Namespace-level map mode of a channel, when it is a map one.
pub fn map_mode(options: &ChannelOptions) -> Option<MapMode> {
    options.is_map().then(|| options.map.mode()).flatten()
}
