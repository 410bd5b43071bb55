//! The server API's map methods: `map_publish`, `map_remove`, `map_read_state`,
//! `map_read_stream`, `map_stats` and `map_clear`, on channels of a map namespace only.

use super::{ApiError, ApiResult, Executor, payload};
use crate::channel::ResolvedChannel;
use crate::common::{HistoryFilter, StreamPosition};
use crate::node::map::{KeyMode, MapRemoval, MapUpdate, MapWrite, StateRead};
use crate::proto::api::{
    MapClearRequest, MapClearResult, MapEntry, MapPublishRequest, MapPublishResult, MapReadStateRequest,
    MapReadStateResult, MapReadStreamRequest, MapReadStreamResult, MapRemoveRequest, MapRemoveResult,
    MapStatsRequest, MapStatsResult,
};
use crate::proto::client::Publication;

fn entry(publication: Publication) -> MapEntry {
    MapEntry {
        key: publication.key,
        data: publication.data,
        tags: publication.tags,
        offset: publication.offset,
        score: publication.score,
        removed: publication.removed,
        time: publication.time,
    }
}

fn published(update: MapUpdate) -> MapPublishResult {
    MapPublishResult {
        offset: update.position.offset,
        epoch: update.position.epoch,
        suppressed: update.suppressed.is_some(),
        suppress_reason: update.suppressed.map(|why| why.as_str().to_owned()).unwrap_or_default(),
    }
}

impl Executor {
    /// A channel of a map namespace; any other is 107, as in Centrifugo.
    fn map_target(&self, channel: &str) -> ApiResult<ResolvedChannel> {
        if channel.is_empty() {
            return Err(ApiError::BAD_REQUEST);
        }
        let resolved = self.node.resolve(channel)?;
        if !resolved.options.is_map() {
            return Err(ApiError::BAD_REQUEST);
        }
        Ok(resolved)
    }

    pub async fn map_publish(&self, request: MapPublishRequest) -> ApiResult<MapPublishResult> {
        crate::telemetry::annotate("centrifugo.channel", request.channel.as_str());
        if request.key.is_empty() {
            return Err(ApiError::BAD_REQUEST);
        }
        let resolved = self.map_target(&request.channel)?;
        let key_mode = KeyMode::parse(&request.key_mode).ok_or(ApiError::BAD_REQUEST)?;
        let data = payload(&request.b64data, request.data)?;
        let write = MapWrite {
            key_mode,
            idempotency_key: Some(request.idempotency_key),
            use_delta: request.delta || resolved.options.delta_publish,
            version: request.version,
            version_epoch: request.version_epoch,
            ..Default::default()
        };
        let publication = Publication { key: request.key, data, tags: request.tags, ..Default::default() };
        let update = self.node.map_publish(&request.channel, &resolved, publication, write).await?;
        Ok(published(update))
    }

    pub async fn map_remove(&self, request: MapRemoveRequest) -> ApiResult<MapRemoveResult> {
        crate::telemetry::annotate("centrifugo.channel", request.channel.as_str());
        if request.key.is_empty() {
            return Err(ApiError::BAD_REQUEST);
        }
        let resolved = self.map_target(&request.channel)?;
        let removal = MapRemoval { idempotency_key: Some(request.idempotency_key), ..Default::default() };
        let update = self.node.map_remove(&request.channel, &resolved, &request.key, removal).await?;
        let result = published(update);
        Ok(MapRemoveResult {
            offset: result.offset,
            epoch: result.epoch,
            suppressed: result.suppressed,
            suppress_reason: result.suppress_reason,
        })
    }

    pub async fn map_read_state(&self, request: MapReadStateRequest) -> ApiResult<MapReadStateResult> {
        crate::telemetry::annotate("centrifugo.channel", request.channel.as_str());
        let resolved = self.map_target(&request.channel)?;
        let revision = (request.revision_offset > 0 || !request.revision_epoch.is_empty())
            .then_some(StreamPosition { offset: request.revision_offset, epoch: request.revision_epoch });
        let read = StateRead {
            revision,
            cursor: request.cursor,
            limit: request.limit,
            key: Some(request.key).filter(|key| !key.is_empty()),
        };
        let page = self.node.map_read_state(&request.channel, &resolved, &read).await?;
        Ok(MapReadStateResult {
            entries: page.entries.into_iter().map(entry).collect(),
            offset: page.position.offset,
            epoch: page.position.epoch,
            cursor: page.cursor,
        })
    }

    pub async fn map_read_stream(&self, request: MapReadStreamRequest) -> ApiResult<MapReadStreamResult> {
        crate::telemetry::annotate("centrifugo.channel", request.channel.as_str());
        let resolved = self.map_target(&request.channel)?;
        let since = (request.since_offset > 0 || !request.since_epoch.is_empty())
            .then_some(StreamPosition { offset: request.since_offset, epoch: request.since_epoch });
        let filter =
            HistoryFilter { since, limit: request.limit, reverse: request.reverse, ..Default::default() };
        let stream = self.node.map_read_stream(&request.channel, &resolved, &filter).await?;
        Ok(MapReadStreamResult {
            entries: stream.publications.into_iter().map(entry).collect(),
            offset: stream.position.offset,
            epoch: stream.position.epoch,
        })
    }

    pub async fn map_stats(&self, request: MapStatsRequest) -> ApiResult<MapStatsResult> {
        crate::telemetry::annotate("centrifugo.channel", request.channel.as_str());
        self.map_target(&request.channel)?;
        let num_keys = self.node.map_stats(&request.channel).await?;
        Ok(MapStatsResult { num_keys: num_keys.min(i32::MAX as u32) as i32 })
    }

    /// `shared_poll_publish`: a new version of one key of a shared-poll channel whose namespace
    /// has `shared_poll.publish_enabled`, to every node that polls it.
    pub async fn shared_poll_publish(
        &self,
        request: crate::proto::api::SharedPollPublishRequest,
    ) -> ApiResult<crate::proto::api::SharedPollPublishResult> {
        crate::telemetry::annotate("centrifugo.channel", request.channel.as_str());
        if request.channel.is_empty() || request.key.is_empty() || request.version == 0 {
            return Err(ApiError::BAD_REQUEST);
        }
        let resolved = self.node.resolve(&request.channel)?;
        if !resolved.options.is_shared_poll() {
            return Err(ApiError::BAD_REQUEST);
        }
        if !resolved.options.shared_poll.publish_enabled {
            return Err(ApiError::NOT_AVAILABLE);
        }
        let data = payload(&request.b64data, request.data)?;
        let publication = Publication {
            key: request.key,
            data,
            version: request.version,
            epoch: request.epoch,
            ..Default::default()
        };
        self.node.shared_poll_publish(&request.channel, publication).await?;
        Ok(crate::proto::api::SharedPollPublishResult {})
    }

    pub async fn map_clear(&self, request: MapClearRequest) -> ApiResult<MapClearResult> {
        crate::telemetry::annotate("centrifugo.channel", request.channel.as_str());
        self.map_target(&request.channel)?;
        self.node.map_clear(&request.channel).await?;
        Ok(MapClearResult {})
    }
}
