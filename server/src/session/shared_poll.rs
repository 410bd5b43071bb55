//! Shared-poll subscriptions (`subscribe` with `type: 4`): the client subscribes once, then
//! tracks keys with `sub_refresh` `type: 1` (signed batches of keys with the versions it has)
//! and untracks them with `type: 2`. Updates arrive as publications carrying `key` and
//! `version` (or `removed`), only for keys it tracks and only when newer than what it has.
//!
//! The per-key versions live in the handle's keyed delivery state, so the node's fan-out can
//! filter without the session; the session checks signatures and limits and keeps the node's
//! item index in step.

use super::commands::{Outcome, ttl_of};
use super::{MapSide, Session, Subscription};
use crate::common::unix_now;
use crate::errors::{ClientError, Disconnect};
use crate::proto::client::{Reply, SubRefreshRequest, SubRefreshResult, SubscribeRequest, SubscribeResult};
use crate::track::{TrackError, TrackSecrets};

/// `SubscribeResult.type` of a shared-poll subscription.
const SHARED_POLL_TYPE: i32 = 4;

/// A track request's keys after flattening its batches: the last mention of a key wins.
struct Tracked {
    /// (key, version the client has, expiry of its batch's signature).
    items: Vec<(String, u64, i64)>,
}

impl Session {
    /// `subscribe` with `type: 4`.
    pub(super) async fn shared_poll_subscribe(
        &mut self,
        id: u32,
        request: SubscribeRequest,
    ) -> Result<(), Disconnect> {
        let channel = request.channel.clone();
        match self.node.resolve(&channel) {
            Ok(resolved) if resolved.options.is_shared_poll() => {}
            Ok(_) => {
                self.send_error(id, &ClientError::NOT_AVAILABLE);
                return Ok(());
            }
            Err(error) => {
                self.send_error(id, &error);
                return Ok(());
            }
        }
        let spec = match self.authorize_subscribe(&request).await? {
            Ok(spec) => spec,
            Err(error) => {
                self.send_error(id, &error);
                return Ok(());
            }
        };
        let resolved = spec.resolved.clone();
        self.handle.begin_keyed(&channel, spec.delta);
        let subscription = Subscription {
            server_side: false,
            presence: spec.presence,
            join_leave: spec.publish_join_leave,
            chan_info: spec.chan_info.clone(),
            expires_at: spec.expires_at,
            proxy_refresh: spec.proxy_refresh,
            stream: None,
            map: MapSide::of(&resolved, &channel, false).needed(),
            keyed: true,
        };
        self.install_subscription(channel.clone(), subscription);
        let versioned = resolved.options.shared_poll.versioned();
        let result = SubscribeResult {
            r#type: SHARED_POLL_TYPE,
            epoch: self.node.shared_poll_epoch(&channel, versioned),
            expires: spec.expires_at.is_some() && !spec.proxy_refresh,
            ttl: spec.expires_at.filter(|_| !spec.proxy_refresh).map(ttl_of).unwrap_or(0),
            delta: spec.delta,
            ..Default::default()
        };
        self.send_reply(&Reply { id, subscribe: Some(result), ..Default::default() });
        self.announce_subscription(&channel).await;
        Ok(())
    }

    /// `sub_refresh` with `type: 1`: track signed keys. Answers itself: the reply must be
    /// queued before the keys join the fan-out.
    pub(super) async fn track(&mut self, id: u32, request: SubRefreshRequest) -> Result<(), Disconnect> {
        if request.channel.is_empty() {
            return Err(Disconnect::bad_request());
        }
        if let Err(error) = self.track_keys(id, &request).await {
            self.send_error(id, &error);
        }
        Ok(())
    }

    async fn track_keys(&mut self, id: u32, request: &SubRefreshRequest) -> Result<(), ClientError> {
        let channel = &request.channel;
        let resolved = self.keyed_target(channel).ok_or(ClientError::PERMISSION_DENIED)?;
        let items = self.tracked_items(request, &resolved)?.items;
        let limit = resolved.options.shared_poll.effective_max_keys();
        if self.handle.track_keys(channel, &items, &request.untrack, limit).is_err() {
            return Err(ClientError::LIMIT_EXCEEDED);
        }
        let keys: Vec<(String, u64)> =
            items.iter().map(|(key, version, _)| (key.clone(), *version)).collect();
        let to_poll = match self.node.shared_poll_register(channel, &resolved, &keys).await {
            Ok(to_poll) => to_poll,
            Err(error) => {
                let names: Vec<String> = keys.into_iter().map(|(key, _)| key).collect();
                self.handle.untrack_keys(channel, &names);
                return Err(error);
            }
        };
        let names: Vec<String> = keys.into_iter().map(|(key, _)| key).collect();
        let earliest = self.handle.earliest_expiry(channel, &names);
        let ttl = if earliest > 0 { ttl_of(earliest) } else { 0 };
        let result = SubRefreshResult { expires: earliest > 0, ttl, ..Default::default() };
        // The reply goes out before any update for these keys can.
        self.send_reply(&Reply { id, sub_refresh: Some(result), ..Default::default() });
        self.node.shared_poll_activate(channel, &self.handle, &names, to_poll);
        self.untrack_now(channel, &request.untrack);
        Ok(())
    }

    /// `sub_refresh` with `type: 2`: untrack keys (unknown ones are ignored).
    pub(super) fn untrack(&mut self, id: u32, request: SubRefreshRequest) -> Outcome<Reply> {
        if request.channel.is_empty() {
            return Err(Disconnect::bad_request());
        }
        if self.keyed_target(&request.channel).is_none() {
            return Ok(Err(ClientError::PERMISSION_DENIED));
        }
        if request.untrack.is_empty() {
            return Ok(Err(ClientError::BAD_REQUEST));
        }
        self.untrack_now(&request.channel, &request.untrack);
        Ok(Ok(Reply { id, sub_refresh: Some(SubRefreshResult::default()), ..Default::default() }))
    }

    fn untrack_now(&self, channel: &str, keys: &[String]) {
        if keys.is_empty() {
            return;
        }
        let untracked = self.handle.untrack_keys(channel, keys);
        self.node.shared_poll_untrack(channel, &self.handle, &untracked);
    }

    /// The channel of a live shared-poll subscription of this connection.
    fn keyed_target(&self, channel: &str) -> Option<crate::channel::ResolvedChannel> {
        self.subs.get(channel).filter(|sub| sub.keyed)?;
        self.node.resolve(channel).ok()
    }

    /// The request's keys, each batch's signature checked; 106 (over the limit) comes before
    /// any signature check, as in Centrifugo.
    fn tracked_items(
        &self,
        request: &SubRefreshRequest,
        resolved: &crate::channel::ResolvedChannel,
    ) -> Result<Tracked, ClientError> {
        if request.track.is_empty() {
            return Err(ClientError::BAD_REQUEST);
        }
        let mut items: Vec<(String, u64, usize)> = Vec::new();
        for (batch, signed) in request.track.iter().enumerate() {
            for item in &signed.items {
                items.retain(|(key, _, _)| key != &item.key);
                items.push((item.key.clone(), item.version, batch));
            }
        }
        if items.is_empty() {
            return Err(ClientError::BAD_REQUEST);
        }
        self.check_track_limit(request, resolved, &items)?;
        let expiries = self.verify_batches(request)?;
        Ok(Tracked {
            items: items.into_iter().map(|(key, version, batch)| (key, version, expiries[batch])).collect(),
        })
    }

    fn check_track_limit(
        &self,
        request: &SubRefreshRequest,
        resolved: &crate::channel::ResolvedChannel,
        items: &[(String, u64, usize)],
    ) -> Result<(), ClientError> {
        let held = self.handle.tracked_keys(&request.channel);
        let leaving =
            held.iter().filter(|k| request.untrack.contains(k) && !items.iter().any(|i| &i.0 == *k)).count();
        let arriving = items.iter().filter(|(k, _, _)| !held.contains(k)).count();
        if held.len() - leaving + arriving > resolved.options.shared_poll.effective_max_keys() {
            return Err(ClientError::LIMIT_EXCEEDED);
        }
        Ok(())
    }

    /// Each batch's signature expiry (0: none).
    fn verify_batches(&self, request: &SubRefreshRequest) -> Result<Vec<i64>, ClientError> {
        let section = &self.node.config.shared_poll;
        let secrets = TrackSecrets {
            current: section.hmac_secret_key.clone(),
            previous: section.hmac_previous_secret_key.clone(),
            previous_valid_until: section.hmac_previous_secret_key_valid_until,
        };
        let now = unix_now();
        request
            .track
            .iter()
            .map(|batch| {
                let keys: Vec<&str> = batch.items.iter().map(|item| item.key.as_str()).collect();
                crate::track::verify(&secrets, &batch.signature, self.user(), &request.channel, &keys, now)
                    .map_err(|error| match error {
                        TrackError::Invalid => ClientError::PERMISSION_DENIED,
                        TrackError::Expired => ClientError::TOKEN_EXPIRED,
                    })
            })
            .collect()
    }

    /// Drops tracked keys whose signatures expired more than `track_expired_extra_delay` ago
    /// (the client failed to refresh them), on the presence tick.
    pub(super) fn drop_expired_keys(&self) {
        let now = unix_now();
        for (channel, sub) in &self.subs {
            if !sub.keyed {
                continue;
            }
            let Ok(resolved) = self.node.resolve(channel) else { continue };
            let grace = resolved.options.shared_poll.effective_expired_delay().as_secs() as i64;
            let expired = self.handle.expired_keys(channel, now, grace);
            if !expired.is_empty() {
                self.untrack_now(channel, &expired);
            }
        }
    }
}
