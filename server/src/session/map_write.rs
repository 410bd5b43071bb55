//! A client's writes to a map channel: `publish` with `type: 1` sets a key (or removes it with
//! `removed: true`). The namespace's `map.allow_publish_*`/`allow_remove_*` permissions and
//! `map.client_key` decide, unless a map publish/remove proxy does.

use bytes::Bytes;

use super::Session;
use super::commands::Outcome;
use crate::channel::ResolvedChannel;
use crate::config::ProxyKind;
use crate::errors::ClientError;
use crate::node::map::{KeyMode, MapRemoval, MapWrite, resolve_client_key};
use crate::proto::client::{Publication, PublishRequest, PublishResult, Reply};
use crate::proto::proxy as pb;
use crate::proxy::Backend;

/// A map write as the proxy (or the namespace) decided it.
struct DecidedWrite {
    key: String,
    data: Bytes,
    tags: std::collections::BTreeMap<String, String>,
    write: MapWrite,
}

impl Session {
    /// `publish` with `type: 1`.
    pub(super) async fn map_write(&mut self, id: u32, request: PublishRequest) -> Outcome<Reply> {
        let channel = &request.channel;
        let resolved = match self.node.resolve(channel) {
            Ok(resolved) => resolved,
            Err(error) => return Ok(Err(error)),
        };
        if !resolved.options.is_map() {
            return Ok(Err(ClientError::BAD_REQUEST));
        }
        let written = if request.removed {
            self.map_client_remove(&request, &resolved).await?
        } else {
            self.map_client_publish(&request, &resolved).await?
        };
        Ok(written.map(|()| Reply { id, publish: Some(PublishResult {}), ..Default::default() }))
    }

    /// The `allow_*_for_client`, `_for_subscriber` and `_for_anonymous` rule of map writes.
    fn may_write_map(
        &self,
        channel: &str,
        (for_client, for_subscriber, for_anonymous): (bool, bool, bool),
    ) -> bool {
        let user_ok = !self.user().is_empty() || for_anonymous;
        (for_client && user_ok)
            || (for_subscriber && self.subs.contains_key(channel) && user_ok)
            || self.node.config.client.insecure
    }

    async fn map_client_publish(
        &mut self,
        request: &PublishRequest,
        resolved: &ResolvedChannel,
    ) -> Outcome<()> {
        let channel = &request.channel;
        let map = &resolved.options.map;
        let decided = match map.publish_proxy() {
            Some(name) => match self.proxy_map_publish(name, request).await? {
                Ok(decided) => decided,
                Err(error) => return Ok(Err(error)),
            },
            None => {
                let allowed = (
                    map.allow_publish_for_client,
                    map.allow_publish_for_subscriber,
                    map.allow_publish_for_anonymous,
                );
                if !self.may_write_map(channel, allowed) {
                    return Ok(Err(ClientError::PERMISSION_DENIED));
                }
                let key = match self.client_map_key(&request.key, resolved) {
                    Ok(key) => key,
                    Err(error) => return Ok(Err(error)),
                };
                let write = MapWrite { use_delta: resolved.options.delta_publish, ..Default::default() };
                DecidedWrite { key, data: request.data.clone(), tags: Default::default(), write }
            }
        };
        let info = match self.subs.get(channel) {
            Some(sub) => self.client_info(sub),
            None => self.connection_info(),
        };
        let publication = Publication {
            key: decided.key,
            data: decided.data,
            tags: decided.tags,
            info: Some(info),
            ..Default::default()
        };
        Ok(self.node.map_publish(channel, resolved, publication, decided.write).await.map(drop))
    }

    async fn map_client_remove(
        &mut self,
        request: &PublishRequest,
        resolved: &ResolvedChannel,
    ) -> Outcome<()> {
        let channel = &request.channel;
        let map = &resolved.options.map;
        let (key, removal) = match map.remove_proxy() {
            Some(name) => match self.proxy_map_remove(name, request).await? {
                Ok(decided) => decided,
                Err(error) => return Ok(Err(error)),
            },
            None => {
                let allowed = (
                    map.allow_remove_for_client,
                    map.allow_remove_for_subscriber,
                    map.allow_remove_for_anonymous,
                );
                if !self.may_write_map(channel, allowed) {
                    return Ok(Err(ClientError::PERMISSION_DENIED));
                }
                match self.client_map_key(&request.key, resolved) {
                    Ok(key) => (key, MapRemoval::default()),
                    Err(error) => return Ok(Err(error)),
                }
            }
        };
        Ok(self.node.map_remove(channel, resolved, &key, removal).await.map(drop))
    }

    /// The key a client writes: its own id or user id where `map.client_key` says so, else the
    /// one it named (which must not be empty).
    fn client_map_key(&self, asked: &str, resolved: &ResolvedChannel) -> Result<String, ClientError> {
        let key = resolve_client_key(&resolved.options, asked, &self.handle.client, self.user())?;
        if key.is_empty() { Err(ClientError::BAD_REQUEST) } else { Ok(key) }
    }

    fn map_proxy(&self, kind: ProxyKind, name: &str) -> Result<std::sync::Arc<Backend>, ClientError> {
        self.node.proxies.get(kind, name).cloned().ok_or(ClientError::NOT_AVAILABLE)
    }

    /// The map publish proxy's decision: the key, data, tags and write options it returns
    /// (empty key and data keep the client's).
    async fn proxy_map_publish(&self, name: &str, request: &PublishRequest) -> Outcome<DecidedWrite> {
        let backend = match self.map_proxy(ProxyKind::MapPublish, name) {
            Ok(backend) => backend,
            Err(error) => return Ok(Err(error)),
        };
        let (raw, b64data) = super::proxied::payload(&backend, &request.data);
        let call = pb::MapPublishRequest {
            user: self.user().to_owned(),
            channel: request.channel.clone(),
            key: request.key.clone(),
            data: raw,
            b64data,
            meta: self.meta_for(&backend),
            ..self.request(&backend)
        };
        let result = match self.ask(&backend, "map_publish", call).await? {
            Ok(result) => result.unwrap_or_default(),
            Err(error) => return Ok(Err(error)),
        };
        let data = match super::proxied::decoded(result.data, &result.b64data) {
            Ok(data) if data.is_empty() => request.data.clone(),
            Ok(data) => data,
            Err(error) => return Ok(Err(error)),
        };
        let Some(key_mode) = KeyMode::parse(&result.key_mode) else {
            return Ok(Err(ClientError::BAD_REQUEST));
        };
        let write = MapWrite {
            key_mode,
            idempotency_key: Some(result.idempotency_key),
            use_delta: result.delta,
            version: result.version,
            version_epoch: result.version_epoch,
            ..Default::default()
        };
        let key = if result.key.is_empty() { request.key.clone() } else { result.key };
        Ok(Ok(DecidedWrite { key, data, tags: result.tags, write }))
    }

    /// The map remove proxy's decision: the key (empty keeps the client's), the removal's tags
    /// and idempotency key.
    async fn proxy_map_remove(&self, name: &str, request: &PublishRequest) -> Outcome<(String, MapRemoval)> {
        let backend = match self.map_proxy(ProxyKind::MapRemove, name) {
            Ok(backend) => backend,
            Err(error) => return Ok(Err(error)),
        };
        let call = pb::MapRemoveRequest {
            user: self.user().to_owned(),
            channel: request.channel.clone(),
            key: request.key.clone(),
            meta: self.meta_for(&backend),
            ..self.request(&backend)
        };
        let result = match self.ask(&backend, "map_remove", call).await? {
            Ok(result) => result.unwrap_or_default(),
            Err(error) => return Ok(Err(error)),
        };
        let key = if result.key.is_empty() { request.key.clone() } else { result.key };
        if key.is_empty() {
            return Ok(Err(ClientError::BAD_REQUEST));
        }
        let tags = (!result.tags.is_empty()).then_some(result.tags);
        let removal =
            MapRemoval { idempotency_key: Some(result.idempotency_key), tags, ..Default::default() };
        Ok(Ok((key, removal)))
    }
}
